// WarmTier: a store node's DRAM tier — the index of blocks, the slab arena holding their
// bytes, two-phase puts (reservations invisible until committed, expiring if never
// committed), lease-pinned reads, and eviction by a configurable policy (eviction_policy.h:
// lru, lfu, prefix, cost) when the arena is full or the demoter asks for victims. Every committed
// block carries the xxh3-64 checksum its writer sent, verified again whenever it is read.
//
// Thread-safe. One mutex guards the index; payload bytes are copied outside it while the
// block is pinned (a reservation for writes, a pin for reads), so large copies never
// serialize other calls.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "strata/common/block_key.h"
#include "strata/common/namespace.h"
#include "strata/storenode/eviction_policy.h"
#include "strata/storenode/slab_arena.h"
#include "strata/storenode/tombstones.h"

namespace strata::storenode {

struct WarmTierOptions {
  uint64_t capacity_bytes = 1ull << 30;
  uint64_t max_block_bytes = 16ull << 20;
  uint64_t max_namespaces = 1024;
  bool prefault = false;
  // Every block takes a slot of at least this many bytes (at most max_block_bytes), however
  // small: each block also costs its index entry in RAM (~0.6 KiB), so this bounds that memory
  // to capacity_bytes / min_slot_bytes entries. 0: the smallest slot that holds the block.
  uint64_t min_slot_bytes = 0;
  // Which blocks leave first (eviction and demotion). Page reclaim for a size class that has
  // no pages left still empties the page whose newest block is oldest.
  PolicyKind policy = PolicyKind::kLru;
  EvictionPolicyOptions policy_options;
  // Slab bytes (reserved and committed) a scope may take (0: no limit; unset: none for
  // any). Not applied to the shared scope. Over it, a put's block is TenantQuotaError
  // (tenant_quota.h). Called once per BeginPut, outside the tier's lock.
  std::function<uint64_t(const std::string& scope)> scope_quota;
  // Deletes by a writer (Delete with `tombstone`) are remembered this long, at most
  // tombstone_capacity of them: copies of those blocks (PutBlock::copy) are refused meanwhile
  // (tombstones.h). 0 for either: not remembered.
  int64_t tombstone_ttl_ms = 60'000;
  size_t tombstone_capacity = 262'144;
  // Leases that outlive their call (HoldLease: a BeginGet without payload) pin blocks that
  // neither eviction nor demotion may move: at most this many such leases, pinning at most
  // this many payload bytes in all (0: half of capacity_bytes). Past either, HoldLease is
  // RESOURCE_EXHAUSTED, so readers cannot pin the arena full and starve every writer.
  uint64_t max_held_leases = 65'536;
  uint64_t max_held_bytes = 0;
  // Monotonic milliseconds; tests substitute a manual clock.
  std::function<int64_t()> now_ms;
};

struct WarmTierStats {
  uint64_t blocks = 0;         // committed blocks
  uint64_t payload_bytes = 0;  // their payload bytes
  uint64_t used_bytes = 0;     // slab bytes taken by committed and reserved blocks
  uint64_t capacity_bytes = 0;
  uint64_t hits = 0;    // blocks found by Lookup/BeginGet
  uint64_t misses = 0;  // blocks asked for and not found
  uint64_t evictions = 0;
  uint64_t leases = 0;       // read leases held
  uint64_t held_leases = 0;  // of them, leases that outlive their call (HoldLease)
  uint64_t held_bytes = 0;   // payload bytes those pin
  uint64_t pinned_blocks = 0;
  uint64_t reservations = 0;  // open put reservations
  uint64_t namespaces = 0;
  uint64_t data_loss = 0;        // blocks dropped because their bytes failed the checksum
  uint64_t demotions = 0;        // blocks moved to a lower tier
  uint64_t prefetch_used = 0;    // prefetched blocks read while warm
  uint64_t prefetch_wasted = 0;  // prefetched blocks that left warm unread
  uint64_t tombstones = 0;       // writers' deletes remembered now
  uint64_t copies_refused = 0;   // copies of lately deleted blocks refused or aborted
};

class WarmTier {
 public:
  struct PutBlock {
    ChainHash hash;
    uint64_t size = 0;
    uint32_t depth = 0;       // index in its chain
    float importance = 0;     // writer's retention score, 0..1
    std::string session;      // "" = none
    bool prefetched = false;  // placed by Prefetch: counted as used or wasted later
    // PolicyHandle of the chain parent; kNoBlock = unknown, in which case BeginPut takes the
    // previous block of the same call when its depth is one less (callers put chains in order).
    uint64_t parent_handle = kNoBlock;
    // A copy of a block kept elsewhere (the rebalancer's, read-repair, a promotion), not a
    // writer's put: FAILED_PRECONDITION while a writer's delete of it is remembered. A
    // writer's put forgets that delete.
    bool copy = false;
  };
  // What a demoted block carries to the tier below.
  struct BlockAttrs {
    uint64_t checksum = 0;
    uint32_t depth = 0;
    float importance = 0;
    std::string session;
    uint64_t parent_handle = kNoBlock;
  };
  struct CommitBlock {
    ChainHash hash;
    uint64_t checksum = 0;
    std::span<const uint8_t> payload;
    // The payload was already written into the reserved slot (the UCX data plane): nothing is
    // copied; the checksum is verified over the slot's first `landed_size` bytes.
    bool landed = false;
    uint64_t landed_size = 0;
    // With `landed`: the caller already compared the slot's bytes with `checksum` (a node
    // verifies each block as it lands while the rest of its call is in flight); `intact` is
    // the outcome, and the slot is not read again.
    bool checked = false;
    bool intact = false;
  };
  struct BlockMeta {
    uint64_t size = 0;
    uint64_t checksum = 0;
    int tier = 2;  // strata.v1.Tier: 2 warm; a lower tier's Lookup fallback sets 3 or 4
    uint8_t* address = nullptr;  // BeginGet: the pinned block's bytes in the arena
    uint32_t depth = 0;          // BeginGet: the block's place in its chain, as put
    float importance = 0;        // BeginGet: as put
  };
  // Finds block `index` of a Lookup in a lower tier after a warm miss (called under the warm
  // lock: must not call back into WarmTier).
  using LowerTierProbe = std::function<std::optional<BlockMeta>(size_t index, const BlockKey&)>;
  // What became of a demotion victim: kept here (the tier below refused it), moved (it lives
  // elsewhere now), or dropped (it may leave, but went nowhere: counted as an eviction).
  enum class Demoted { kKept, kMoved, kDropped };
  // Receives a demotion victim's verified bytes (pinned, outside the lock) and says what
  // became of it.
  using DemoteFn = std::function<Demoted(const BlockKey& key, std::span<const uint8_t> bytes,
                                         const BlockAttrs& attrs)>;
  // Where BeginGet copies a block: returns a buffer of at least `size` bytes for block
  // `index`, or nullptr to leave that block pinned but uncopied.
  using CopySink = std::function<uint8_t*(size_t index, uint64_t size)>;
  struct GetResult {
    uint64_t lease_id = 0;             // 0 when nothing was pinned
    std::vector<absl::Status> status;  // per block: OK, NOT_FOUND, DATA_LOSS
    std::vector<BlockMeta> blocks;
  };
  struct ReserveResult {
    uint64_t reservation_id = 0;  // 0 when no block was reserved
    // Per block: OK reserved, ALREADY_EXISTS (present or being written), RESOURCE_EXHAUSTED.
    std::vector<absl::Status> status;
    // Per block: the reserved slot in the arena (nullptr unless reserved), where a writer may
    // place the payload before CommitPut with `landed`.
    std::vector<uint8_t*> addresses;
  };

  static absl::StatusOr<std::unique_ptr<WarmTier>> Create(WarmTierOptions options);
  ~WarmTier();

  // Registers (idempotently) a namespace. INVALID_ARGUMENT for a bad spec,
  // RESOURCE_EXHAUSTED past max_namespaces. `*added` (if given): this call added it.
  absl::StatusOr<NamespaceId> RegisterNamespace(const NamespaceSpec& spec, bool* added = nullptr);
  // The spec of a registered namespace; NOT_FOUND otherwise.
  absl::StatusOr<NamespaceSpec> GetNamespace(NamespaceId id) const;

  // Metadata of the longest committed prefix of `hashes` (stops at the first miss).
  // Counts hits and misses (unless !count: an internal probe, which the caller counts, if at
  // all, with CountLookups); refreshes recency so ancestors stay newer than descendants.
  // With `lower`, a warm miss asks the lower tiers and the prefix continues if they have it.
  std::vector<BlockMeta> Lookup(NamespaceId ns, const std::string& scope,
                                std::span<const ChainHash> hashes,
                                const LowerTierProbe& lower = nullptr, bool count = true);
  // Every block on its own (nullopt where absent), under one lock, touched and counted as
  // Lookup does: a node's share of a prefix that the cluster striped over nodes.
  std::vector<std::optional<BlockMeta>> LookupEach(NamespaceId ns, const std::string& scope,
                                                   std::span<const ChainHash> hashes,
                                                   const LowerTierProbe& lower = nullptr,
                                                   bool count = true);
  // Makes the committed blocks of `hashes` (a run of one chain) the most recently used, the
  // first of them most of all, as Lookup does; absent ones are skipped, nothing is counted.
  void Touch(NamespaceId ns, const std::string& scope, std::span<const ChainHash> hashes);
  // Adds to the hit and miss counts (Stats) what uncounted probes found.
  void CountLookups(uint64_t hits, uint64_t misses) {
    hits_.fetch_add(hits, std::memory_order_relaxed);
    misses_.fetch_add(misses, std::memory_order_relaxed);
  }

  // Moves the policy's victims (unpinned blocks) whose slots take at least `bytes` out
  // through `fn` (pinned while it runs; a block whose bytes fail the checksum is dropped
  // instead). Returns the number of blocks moved.
  // With `session`, moves every unpinned block of that session instead (bytes ignored).
  uint64_t Demote(uint64_t bytes, const DemoteFn& fn, const std::string* session = nullptr);
  // Moves out through `fn` what BeginPut with may_evict would drop to fit `count` blocks of
  // `size`: the policy's victims of that slot class, then the blocks of as many pages as
  // reclaim would empty for the rest. For a tier below that takes them, so a put evicts
  // nothing it could keep (only what fn refused, or pinned pages). Returns how many moved.
  uint64_t DemoteFor(uint64_t size, size_t count, const DemoteFn& fn);

  // Reserves one slot per block, evicting the policy's unpinned victims as needed.
  // With may_evict false, only free space is used (promotions must not push out blocks that
  // exist nowhere else). With `into` (a reservation not being committed), the blocks join it
  // and its id is returned; else a new reservation is made.
  ReserveResult BeginPut(NamespaceId ns, const std::string& scope, std::span<const PutBlock> blocks,
                         uint64_t ttl_ms, bool may_evict = true, uint64_t into = 0);
  // Copies each block's payload into its reserved slot, verifies the checksum over the bytes
  // as they landed and publishes it. Reserved blocks not named are released.
  // Returns NOT_FOUND for an unknown or expired reservation; per block: OK, DATA_LOSS
  // (checksum mismatch: dropped), INVALID_ARGUMENT (size differs from the reservation),
  // FAILED_PRECONDITION (not part of this reservation).
  absl::StatusOr<std::vector<absl::Status>> CommitPut(uint64_t reservation_id,
                                                      std::span<const CommitBlock> blocks);
  // Releases a reservation. NOT_FOUND for an unknown or expired one. With `quarantine_ms`,
  // its blocks' keys are free at once (a retry may reserve them again, its scope's quota no
  // longer counts them) but their slots stay out of use, and counted in the tier's budget,
  // for that long: a transfer into them that could not be cancelled
  // (transport::RequestsAbandoned) may still write there. ExpireNow frees them after.
  absl::Status AbortPut(uint64_t reservation_id, int64_t quarantine_ms = 0);

  // Pins every present block under a lease of ttl_ms. If `sink` is set, copies each pinned
  // block (while it cannot move) and verifies the checksum over the copy; a mismatch
  // drops the block and reports DATA_LOSS — the copied bytes must then not be used.
  // Stops copying (RESOURCE_EXHAUSTED, not pinned) once more than max_copy_bytes would be.
  // `count` false: not counted as hits or misses (a read that asks again for blocks it
  // already counted, after staging them from disk).
  GetResult BeginGet(NamespaceId ns, const std::string& scope, std::span<const ChainHash> hashes,
                     uint64_t ttl_ms, const CopySink& sink, uint64_t max_copy_bytes,
                     bool count = true);
  // Unpins a lease. NOT_FOUND for an unknown or expired one.
  absl::Status EndGet(uint64_t lease_id);
  // Moves lease `from`'s pins into lease `into` (one id for a read served in two scopes).
  absl::Status JoinLease(uint64_t into, uint64_t from);
  // Marks a lease as one the caller keeps after its call (a BeginGet without payload; it ends
  // with EndGet or its ttl) and counts it against max_held_leases and max_held_bytes. Past
  // either the lease is ended and the answer is RESOURCE_EXHAUSTED; NOT_FOUND for an unknown
  // lease.
  absl::Status HoldLease(uint64_t lease_id);

  // Removes blocks; a pinned one disappears from lookups now and frees when unpinned. With
  // `tombstone` (a writer's delete, not a hand-over or a drop) every named block is remembered
  // as deleted, present or not, and a put of one still being written is aborted at its commit.
  // Returns how many it removed; `removed`, when given, says which.
  uint64_t Delete(NamespaceId ns, const std::string& scope, std::span<const ChainHash> hashes,
                  bool tombstone = false, std::vector<bool>* removed = nullptr);
  // Whether a writer deleted the block within tombstone_ttl_ms.
  bool DeletedLately(const BlockKey& key);
  // A writer put the block again where the warm tier is not asked (a lower tier holds it):
  // copies of it are welcome again.
  void ForgetDelete(const BlockKey& key);

  // Drops a committed block whose bytes were found not to match its checksum (by a reader of
  // pinned bytes) and counts it as data loss. Pinned copies free when their leases end.
  // With `address` (where the reader found the bad bytes), only the entry still there.
  void DropCorrupt(const BlockKey& key, const uint8_t* address = nullptr);

  // Releases leases and reservations whose time is up, and slots whose quarantine ended
  // (AbortPut). Returns how many leases and reservations.
  uint64_t ExpireNow();

  // XORs 0xff into one stored byte (fault injection). NOT_FOUND / OUT_OF_RANGE.
  absl::Status CorruptForTest(const BlockKey& key, uint64_t offset);

  // Slab bytes (reserved and committed) each scope holds, `shared` included; only scopes
  // holding some.
  std::vector<std::pair<std::string, uint64_t>> ScopeBytes() const;
  WarmTierStats Stats() const;
  // Keys of the committed blocks, read a page at a time: each block resident throughout is
  // listed once; one stored or dropped meanwhile may be listed or not (or twice: dropped and
  // stored again in a page not read yet).
  std::vector<BlockKey> Keys() const;
  // A walk over the committed blocks a few pages at a time, holding no list of them (the
  // rebalancer's, through TieredStore::NextKeys). It lists the blocks committed before it
  // began that are resident when their page is read: each block resident throughout once,
  // none committed since.
  struct KeyCursor {
    uint32_t page = 0;    // the next page to read
    uint64_t before = 0;  // lists blocks whose commit came before this one
  };
  KeyCursor BeginKeys() const;
  // Appends the keys the walk lists on its next pages, reading pages until at least `min`
  // keys came or none is left (a page's blocks are all appended). False when no page was left.
  bool NextKeys(KeyCursor* cursor, size_t min, std::vector<BlockKey>* out) const;
  // Whether the block is resident and was committed before `before`: resident since a walk
  // begun at `before` began, so that walk lists it.
  bool ResidentSince(const BlockKey& key, uint64_t before) const;
  // The same for each of `keys`, under one lock.
  std::vector<bool> ResidentSinceEach(std::span<const BlockKey> keys, uint64_t before) const;
  // Arena bytes a block of `size` takes: its slot, min_slot_bytes or more (`size` itself for a
  // size BeginPut refuses).
  uint64_t SlotBytes(uint64_t size) const {
    return size == 0 || size > options_.max_block_bytes ? size
                                                        : arena_->ClassBytes(SlotClass(size));
  }
  std::string_view policy_name() const { return PolicyKindName(options_.policy); }
  // The arena's bytes, for registering them with the data plane once at start.
  uint8_t* arena_base() const { return arena_->base(); }
  uint64_t arena_bytes() const { return arena_->capacity_bytes(); }

 private:
  struct Entry;
  struct Reservation;
  struct Lease;
  struct DemoteVictim;

  explicit WarmTier(WarmTierOptions options, std::unique_ptr<SlabArena> arena);

  std::optional<Slot> AllocateLocked(uint16_t size_class, bool may_evict)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool EvictOneLocked(uint16_t size_class) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool ReclaimPageLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The page ReclaimPageLocked would empty (-1: none may be).
  int64_t ReclaimCandidateLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Demote's steps: pins a victim and takes it out of the policy; then moves the victims
  // through fn outside the lock, and drops those that moved (or fail their checksum).
  void TakeForDemotionLocked(Entry* e, std::vector<DemoteVictim>* victims)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  uint64_t MoveOut(std::vector<DemoteVictim>& victims, const DemoteFn& fn);
  // Size class of a block of `size` (1 ≤ size ≤ max_block_bytes): raised to min_slot_bytes,
  // never past the largest class.
  uint16_t SlotClass(uint64_t size) const {
    return arena_->ClassFor(
        std::max(size, std::min(options_.min_slot_bytes, options_.max_block_bytes)));
  }
  void TouchLocked(Entry* e) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Touches a chain's entries, the last first (Lookup, Touch).
  void TouchChainLocked(std::span<Entry* const> chain) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<uint64_t> NewIdLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Lookup and LookupEach: stops at the first miss when `prefix`.
  std::vector<std::optional<BlockMeta>> Probe(NamespaceId ns, const std::string& scope,
                                              std::span<const ChainHash> hashes,
                                              const LowerTierProbe& lower, bool prefix, bool count);
  // Hands a committed entry to the policy (again, after a demotion that did not move it).
  void AdmitLocked(Entry* e) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  Entry* EntryForHandleLocked(uint64_t handle) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Removes an indexed entry: freed now if unpinned, else when the last pin drops.
  void RemoveLocked(Entry* e) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void FreeSlotLocked(Entry* e) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Takes e's slot out of its scope's scope_used_ (once).
  void UnchargeScopeLocked(Entry* e) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void UnpinLocked(Entry* e) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Unpins a lease's blocks and takes a held one off the caps' counts (not off leases_).
  void ReleaseLeaseLocked(Lease& lease) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ReleaseReservationLocked(Reservation& r) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A put of `key` (PolicyHandle `handle`): FAILED_PRECONDITION for a copy of a block a
  // writer deleted lately; a writer's put clears the tombstone.
  absl::Status CheckTombstoneLocked(const BlockKey& key, bool copy)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // What a tombstone is held as: a 64-bit hash of the key under this tier's random seed. Not
  // the PolicyHandle: that one is unkeyed, so a tenant could craft a hash of its own scope
  // whose handle is another scope's block, and plant a tombstone on that block.
  uint64_t TombstoneId(const BlockKey& key) const;
  // ABORTED for block `index` of a commit whose reservation a writer's Delete overtook.
  absl::Status DeletedWhileWritten(size_t index);

  const WarmTierOptions options_;
  const std::unique_ptr<SlabArena> arena_;

  mutable absl::Mutex mu_;
  absl::flat_hash_map<NamespaceId, NamespaceSpec> namespaces_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<BlockKey, std::unique_ptr<Entry>> index_ ABSL_GUARDED_BY(mu_);
  // Deleted or corrupt entries still pinned by a lease: freed when the last pin drops.
  absl::flat_hash_map<Entry*, std::unique_ptr<Entry>> doomed_ ABSL_GUARDED_BY(mu_);
  // Aborted reservations' entries (among doomed_, pinned once each) and when ExpireNow may
  // unpin them (AbortPut's quarantine).
  std::vector<std::pair<Entry*, int64_t>> quarantined_ ABSL_GUARDED_BY(mu_);
  // Ranks committed blocks by PolicyHandle; by_handle_ maps a victim back to its entry.
  std::unique_ptr<EvictionPolicy> policy_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<uint64_t, Entry*> by_handle_ ABSL_GUARDED_BY(mu_);
  // The committed entries of each session ("" not kept): what Demote of a session takes.
  absl::flat_hash_map<std::string, absl::flat_hash_set<Entry*>> by_session_ ABSL_GUARDED_BY(mu_);
  // Which entry holds each slot of each page: [page][slot], for page reclaim.
  std::vector<std::vector<Entry*>> slot_owner_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<uint64_t, std::unique_ptr<Reservation>> reservations_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<uint64_t, std::unique_ptr<Lease>> leases_ ABSL_GUARDED_BY(mu_);
  uint64_t tick_ ABSL_GUARDED_BY(mu_) = 0;  // logical recency clock
  uint64_t payload_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t used_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  // Slab bytes (reserved and committed) per scope, shared included; scopes at zero are dropped.
  absl::flat_hash_map<std::string, uint64_t> scope_used_ ABSL_GUARDED_BY(mu_);
  uint64_t committed_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t commits_ ABSL_GUARDED_BY(mu_) = 0;  // commits so far: Entry::commit_seq's clock
  uint64_t pinned_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t held_leases_ ABSL_GUARDED_BY(mu_) = 0;  // leases marked by HoldLease
  uint64_t held_bytes_ ABSL_GUARDED_BY(mu_) = 0;   // their Lease::bytes
  Tombstones tombstones_ ABSL_GUARDED_BY(mu_);
  const uint64_t tombstone_seed_;  // random per process: tombstones are held in RAM only

  std::atomic<uint64_t> hits_{0};
  std::atomic<uint64_t> misses_{0};
  std::atomic<uint64_t> evictions_{0};
  std::atomic<uint64_t> data_loss_{0};
  std::atomic<uint64_t> demotions_{0};
  std::atomic<uint64_t> prefetch_used_{0};
  std::atomic<uint64_t> prefetch_wasted_{0};
  std::atomic<uint64_t> copies_refused_{0};
};

}  // namespace strata::storenode
