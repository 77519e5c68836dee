// DiskTier: a RocksDB-backed tier — cool (local NVMe, lz4) or cold (slower or network
// storage, zstd). Each block is one value in the default column family, stored with the
// versioned header of common/stored_block.h (format, codec, layout, sizes, checksum of the
// original bytes); large values live in RocksDB's integrated blob files so multi-MiB
// blocks skip compaction. A small record per block in the "meta" column family (size,
// checksum, depth, importance, session, access statistics) lets Open() rebuild the index
// without reading payloads, so blocks survive restarts and kill -9 (WAL on).
//
// The byte budget is enforced here, by the index, not by RocksDB. Every read verifies the
// checksum: a block whose bytes fail it (a flipped byte in a blob or SST file) is dropped
// and reported as DATA_LOSS, never returned.
//
// Which blocks leave first is the tier's eviction policy (options.policy); chain parents are
// known by handle, so a chain-aware policy keeps a block's ancestors while it holds the block.
//
// Thread-safe. The index has its own mutex, never held across RocksDB calls once Open has
// returned (its recovery steps hold it while nothing else can call). What changes a key's
// records (a put, a delete, a read dropping a damaged block) holds that key's stripe lock
// from its RocksDB write to its index change, so the two always agree.
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/btree_set.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "strata/common/block_key.h"
#include "strata/common/codec.h"
#include "strata/common/kv_quant.h"
#include "strata/common/namespace.h"
#include "strata/storenode/eviction_policy.h"

namespace rocksdb {
class DB;
class Env;
class ColumnFamilyHandle;
}  // namespace rocksdb

namespace strata::storenode {

struct DiskTierOptions {
  std::string name = "cool";  // for logs, metrics and errors
  std::string path;
  uint64_t capacity_bytes = 0;
  Codec codec = Codec::kLz4;
  bool sync_writes = false;              // fsync the WAL on every put (power-loss durability)
  PolicyKind policy = PolicyKind::kLru;  // which blocks Victims() gives up first
  EvictionPolicyOptions policy_options;
  // Every block takes at least this much of capacity_bytes, however small its stored value:
  // each block also costs its index entry in RAM (~0.5 KiB), so this bounds that memory to
  // capacity_bytes / min_block_charge entries. 0: blocks are charged their stored bytes.
  uint64_t min_block_charge = 0;
  rocksdb::Env* env = nullptr;  // nullptr: the default; tests pass a fault-injecting one
  // Bytes a scope may take here, as charged (0: no limit; unset: none for any). Not applied to the
  // shared scope. A put past it is TenantQuotaError (tenant_quota.h). Called once per Put,
  // outside the tier's lock.
  std::function<uint64_t(const std::string& scope)> scope_quota;
};

// What the tier knows of each block, persisted beside it.
struct DiskBlockMeta {
  uint64_t size = 0;          // original payload bytes
  uint64_t stored_bytes = 0;  // bytes of the RocksDB value (header + encoded payload)
  uint64_t checksum = 0;      // xxh3-64 of the block as this tier serves it (see quant)
  uint32_t depth = 0;
  float importance = 0;
  std::string session;
  uint32_t access_count = 0;
  uint64_t parent_handle = kNoBlock;  // PolicyHandle of the chain parent, if known
  KvQuant quant = KvQuant::kNone;     // lossy: checksum is then of the dequantized block
};

struct DiskTierStats {
  uint64_t blocks = 0;
  uint64_t payload_bytes = 0;
  uint64_t stored_bytes = 0;
  uint64_t capacity_bytes = 0;
  uint64_t data_loss = 0;
  uint64_t charged_bytes = 0;  // of capacity_bytes: stored bytes, min_block_charge a block at least
  uint64_t codec_bytes_in = 0;   // original bytes encoded by puts
  uint64_t codec_bytes_out = 0;  // stored bytes they became
};

class DiskTier {
 public:
  // Opens (creating if needed) the database at options.path and rebuilds the index.
  // UNAVAILABLE when RocksDB cannot open the path; INVALID_ARGUMENT for bad options.
  static absl::StatusOr<std::unique_ptr<DiskTier>> Open(DiskTierOptions options);
  ~DiskTier();

  const std::string& name() const { return options_.name; }

  // Stores a block (replacing any older copy). With a quant spec the block is stored
  // quantized when it can be (an fp16/bf16 block of whole head_dim vectors, all finite;
  // otherwise losslessly), and reads return the dequantized block (meta.quant says so).
  // RESOURCE_EXHAUSTED if it would exceed the budget: the caller makes room first (Victims).
  // UNAVAILABLE on a RocksDB write error. meta.checksum, when not 0, is the payload's
  // checksum as the caller verified it: bytes that changed since are DATA_LOSS, not stored.
  absl::Status Put(const BlockKey& key, std::span<const uint8_t> payload, DiskBlockMeta meta,
                   const KvQuantSpec& quant = {});

  // Reads and verifies a block into *out. NOT_FOUND if absent; DATA_LOSS if its bytes fail
  // the checksum (the block is then deleted). Blocks on disk I/O.
  absl::Status Read(const BlockKey& key, std::vector<uint8_t>* out);

  // Removes a block; NOT_FOUND if absent.
  absl::Status Delete(const BlockKey& key);

  // Index probe (no I/O). Refreshes recency when touch is set.
  std::optional<DiskBlockMeta> Find(const BlockKey& key, bool touch);

  // The policy's next victims, whose charges (Charge) add up to at least `bytes`. They leave the
  // policy's ranking now (so a chain-aware policy can offer their parents next): the caller
  // must move or Delete them; one it keeps ranks again after its next Put.
  std::vector<BlockKey> Victims(uint64_t bytes);
  // Victims the caller keeps without a Put (it stopped moving them): they rank again, as
  // blocks just stored. Keys no longer stored are skipped.
  void Rank(std::span<const BlockKey> keys);

  // Keys of the blocks carrying `session`, at most `max` of them. With a cursor, in the order
  // of their policy handles from where it is, which it moves past the last one given: calls
  // in turn give each block the session held throughout once, a chunk at a time, without
  // copying a large session's keys at once under the lock.
  struct SessionCursor {
    uint64_t next = 0;  // the least handle still to give
    bool done = false;  // every handle given
  };
  std::vector<BlockKey> SessionBlocks(const std::string& session, size_t max = SIZE_MAX,
                                      SessionCursor* cursor = nullptr);

  // Namespaces persisted with the data so a restarted node knows them.
  absl::Status SaveNamespace(NamespaceId id, const NamespaceSpec& spec);
  absl::StatusOr<std::vector<NamespaceSpec>> LoadNamespaces();

  // Bytes each scope takes here (stored bytes, each block charged at least min_block_charge:
  // what scope_quota counts), `shared` included; only scopes holding some.
  std::vector<std::pair<std::string, uint64_t>> ScopeBytes() const;
  DiskTierStats Stats() const;
  // Appends to *out up to `max` keys of stored blocks that come after `*cursor` in the tier's
  // key order (namespace, scope, hash: each namespace and scope in one run) and moves *cursor
  // past them; false once nothing is left after them. A walk over every block that keeps at
  // most `max` keys and holds the index lock only to check them: it reads the keys from
  // RocksDB's meta records, not from a copy of the index. Start with an empty cursor. Every
  // block stored before a walk and still stored after it is given once; one stored or
  // deleted meanwhile may or may not be.
  bool KeysAfter(std::string* cursor, size_t max, std::vector<BlockKey>* out) const;
  // What the blocks take of capacity_bytes: each its stored bytes, at least min_block_charge.
  uint64_t charged_bytes() const;
  // What a block of `stored` bytes takes of capacity_bytes.
  uint64_t Charge(uint64_t stored) const { return std::max(stored, options_.min_block_charge); }
  uint64_t capacity_bytes() const { return options_.capacity_bytes; }

 private:
  struct Entry {
    DiskBlockMeta meta;
    uint64_t handle = 0;   // PolicyHandle(key)
    uint64_t version = 0;  // which put of the key this is (next_version_)
  };
  // Serializes the puts, deletes and drops of keys hashing to one stripe (taken before mu_).
  absl::Mutex& KeyStripe(const BlockKey& key) const;
  // Read's attempt at the copy indexed now; *changed when a put or delete of the key came
  // between its index lookup and its read (nothing dropped, the caller reads again).
  absl::Status ReadOnce(const BlockKey& key, std::vector<uint8_t>* out, bool* changed);

  DiskTier(DiskTierOptions options, std::shared_ptr<rocksdb::Env> env, rocksdb::DB* db,
           std::vector<rocksdb::ColumnFamilyHandle*> handles);
  absl::Status Rebuild();
  // After a best-efforts recovery, or a Rebuild that could not read the whole index
  // (index_incomplete_): indexes the payloads without an index record from their own headers
  // (reindex_orphans) or deletes them, and drops the index records without a payload.
  absl::Status Reconcile(bool reindex_orphans);
  // The index record of a payload `value`, from its header (checksums verified).
  absl::StatusOr<DiskBlockMeta> MetaFromPayload(std::string_view value) const;
  // Replaces the index column family with one holding exactly index_ (index_incomplete_).
  absl::Status RewriteIndex();
  std::string ReindexMarker() const;
  bool index_incomplete_ = false;         // set by Rebuild, before the tier is shared
  bool reindex_marker_ = false;           // Rebuild found RewriteIndex's marker
  bool payload_scan_incomplete_ = false;  // set by Reconcile
  // Blocks whose index record Rebuild could not decode (counted lost unless Reconcile indexes
  // them again from their headers).
  absl::flat_hash_set<BlockKey> unreadable_records_ ABSL_GUARDED_BY(mu_);
  void DropLocked(const BlockKey& key) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Indexes a block on disk (not indexed now): counted, and handed to the policy.
  void IndexLocked(const BlockKey& key, DiskBlockMeta meta) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void AdmitLocked(const BlockKey& key, Entry& entry) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const DiskTierOptions options_;
  std::shared_ptr<rocksdb::Env> env_;  // db_'s (RetryableTransientErrors over options_.env's)
  rocksdb::DB* db_;
  rocksdb::ColumnFamilyHandle* data_cf_;
  rocksdb::ColumnFamilyHandle* meta_cf_;
  rocksdb::ColumnFamilyHandle* ns_cf_;
  std::vector<rocksdb::ColumnFamilyHandle*> handles_;

  static constexpr size_t kKeyStripes = 64;
  mutable absl::Mutex key_stripes_[kKeyStripes];
  mutable absl::Mutex mu_;
  absl::flat_hash_map<BlockKey, Entry> index_ ABSL_GUARDED_BY(mu_);
  uint64_t next_version_ ABSL_GUARDED_BY(mu_) = 0;
  std::unique_ptr<EvictionPolicy> policy_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<uint64_t, BlockKey> by_handle_ ABSL_GUARDED_BY(mu_);
  // Charges of puts between their budget check and their index entry, in all and per scope.
  uint64_t pending_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  absl::flat_hash_map<std::string, uint64_t> pending_scope_bytes_ ABSL_GUARDED_BY(mu_);
  // The handles of each session's blocks: SessionBlocks without a pass over the whole index
  // under mu_ (which every warm-tier probe of this tier waits for).
  absl::flat_hash_map<std::string, absl::btree_set<uint64_t>> by_session_ ABSL_GUARDED_BY(mu_);
  uint64_t tick_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t stored_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t charged_bytes_ ABSL_GUARDED_BY(mu_) = 0;  // Charge() of every block
  // Charged bytes per scope (as charged_bytes_), shared included; scopes at zero are dropped.
  absl::flat_hash_map<std::string, uint64_t> scope_bytes_ ABSL_GUARDED_BY(mu_);
  uint64_t payload_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t data_loss_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t codec_in_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t codec_out_ ABSL_GUARDED_BY(mu_) = 0;
};

// Key and meta encodings, exposed for tests and fuzzers.
std::string EncodeDiskKey(const BlockKey& key);
absl::StatusOr<BlockKey> DecodeDiskKey(std::string_view raw);
std::string EncodeDiskMeta(const DiskBlockMeta& meta);
absl::StatusOr<DiskBlockMeta> DecodeDiskMeta(std::string_view raw);

}  // namespace strata::storenode
