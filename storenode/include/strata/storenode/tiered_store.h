// TieredStore: a store node's tiers as one store — warm DRAM (WarmTier) above optional
// cool and cold RocksDB tiers (DiskTier). New blocks land warm. A background demoter keeps
// each tier under its high watermark by moving its least recently used blocks down
// (warm → cool → cold → dropped) until the low watermark. Lookups continue a prefix across
// tiers; a Get of a cool or cold block reads and verifies it from disk, serves it, and
// (promote_on_get) copies it back into the warm tier, keeping the disk copy (inclusive
// tiers: a restart loses no promoted block, and demoting it again writes nothing). Namespaces are
// persisted in the disk tiers, so a restarted node knows the namespaces of the blocks it still
// holds.
//
// Thread-safe. Disk I/O never runs under a tier's lock (only under a tombstone stripe: see
// TombstoneStripe).
#pragma once

#include <array>
#include <atomic>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/hash/hash.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "strata/common/timed_turn.h"
#include "strata/storenode/disk_tier.h"
#include "strata/storenode/warm_tier.h"

namespace strata::storenode {

struct TieredStoreOptions {
  WarmTierOptions warm;
  std::optional<DiskTierOptions> cool;
  std::optional<DiskTierOptions> cold;
  double warm_high_watermark = 0.90;
  double warm_low_watermark = 0.80;
  double disk_high_watermark = 0.95;
  double disk_low_watermark = 0.85;
  // How long a disk tier whose victim could not be deleted makes no room (MakeRoom). Short:
  // a paused cold tier makes no room for cool's victims either, and refuses them once full
  // (they leave the node), so a passing failure must not cost long.
  uint64_t disk_room_pause_ms = 1000;
  bool promote_on_get = true;
  uint64_t demote_interval_ms = 50;
  uint64_t session_idle_ms = 0;  // sessions without a put for this long pause on their own; 0 off
  // Sessions tracked for idle pausing at most (0: warm capacity / the smallest warm slot,
  // 1,024 to 65,536). Past it the eighth that put longest ago pause early (up to 4,096 waiting,
  // 64 a demoter tick; the rest are just let go): a client inventing a session per call cannot
  // grow the table without bound.
  uint64_t max_sessions = 0;
  // Blocks waiting for the prefetch thread at most (0: derived as max_sessions is). A Prefetch
  // past it schedules what fits; a block already waiting is not queued twice.
  uint64_t max_prefetch_queued = 0;
};

struct TieredStats {
  WarmTierStats warm;
  std::optional<DiskTierStats> cool;
  std::optional<DiskTierStats> cold;
  uint64_t cool_hits = 0;
  uint64_t cold_hits = 0;
  uint64_t promotions = 0;
  uint64_t cool_demotions = 0;  // cool → cold
  uint64_t disk_evictions = 0;  // dropped from the lowest tier, or by cool when cold refused
  uint64_t prefetched = 0;      // blocks promoted by Prefetch
  uint64_t sessions_paused = 0;
  uint64_t sessions_resumed = 0;
};

// What one scope (a tenant's, or `shared`) holds on one tier: warm slab bytes (reserved and
// committed), cool/cold stored bytes.
struct ScopeUse {
  std::string tier;
  std::string scope;
  uint64_t bytes = 0;
};

class TieredStore {
 public:
  static absl::StatusOr<std::unique_ptr<TieredStore>> Create(TieredStoreOptions options);
  ~TieredStore();

  // As WarmTier's; a lower tier records the spec too.
  absl::StatusOr<NamespaceId> RegisterNamespace(const NamespaceSpec& spec, bool* added = nullptr);
  absl::StatusOr<NamespaceSpec> GetNamespace(NamespaceId id) const;

  // Longest prefix present in any tier; each block's tier in BlockMeta::tier. `count`: as
  // WarmTier's.
  std::vector<WarmTier::BlockMeta> Lookup(NamespaceId ns, const std::string& scope,
                                          std::span<const ChainHash> hashes, bool count = true);
  // Every block on its own, any tier (nullopt where absent). `count`: as WarmTier's.
  std::vector<std::optional<WarmTier::BlockMeta>> LookupEach(NamespaceId ns,
                                                             const std::string& scope,
                                                             std::span<const ChainHash> hashes,
                                                             bool count = true);
  void CountLookups(uint64_t hits, uint64_t misses) { warm_->CountLookups(hits, misses); }
  // WarmTier::Touch.
  void Touch(NamespaceId ns, const std::string& scope, std::span<const ChainHash> hashes) {
    warm_->Touch(ns, scope, hashes);
  }

  // Like WarmTier::BeginPut, but blocks held by a lower tier are ALREADY_EXISTS too.
  WarmTier::ReserveResult BeginPut(NamespaceId ns, const std::string& scope,
                                   std::span<const WarmTier::PutBlock> blocks, uint64_t ttl_ms);
  absl::StatusOr<std::vector<absl::Status>> CommitPut(
      uint64_t reservation_id, std::span<const WarmTier::CommitBlock> blocks);
  absl::Status AbortPut(uint64_t reservation_id, int64_t quarantine_ms = 0);

  // Asked before each read of a block from disk: OK to read it, else the status that block
  // gets instead (the caller's deadline passed; no room for the read's buffers).
  using DiskReadGate = std::function<absl::Status()>;
  // Warm blocks as WarmTier::BeginGet; blocks found only on disk are read, verified and
  // copied through `sink` (not leased: they are served from the read buffer), and promoted.
  WarmTier::GetResult BeginGet(NamespaceId ns, const std::string& scope,
                               std::span<const ChainHash> hashes, uint64_t ttl_ms,
                               const WarmTier::CopySink& sink, uint64_t max_copy_bytes,
                               bool promote = true, bool count_warm = true,
                               const DiskReadGate& gate = nullptr);
  absl::Status EndGet(uint64_t lease_id);
  absl::Status JoinLease(uint64_t into, uint64_t from) { return warm_->JoinLease(into, from); }
  absl::Status HoldLease(uint64_t lease_id) { return warm_->HoldLease(lease_id); }

  // Removes blocks from every tier. `tombstone`: a writer's delete (the Delete call), which
  // the warm tier remembers so that copies still on their way, between nodes or between
  // tiers, do not bring the blocks back (WarmTier::Delete); a hand-over or a drop is not one.
  uint64_t Delete(NamespaceId ns, const std::string& scope, std::span<const ChainHash> hashes,
                  bool tombstone = false);
  // Whether a writer deleted the block within tombstone_ttl_ms (and no writer put it since).
  bool DeletedLately(const BlockKey& key) { return warm_->DeletedLately(key); }
  uint64_t ExpireNow();
  absl::Status CorruptForTest(const BlockKey& key, uint64_t offset);
  // Holds the writers' turn to make room in warm (as a writer demoting for its put does) for
  // as long as the result lives.
  std::unique_ptr<TimedTurn::Hold> HoldWritersRoomForTest() {
    return std::make_unique<TimedTurn::Hold>(writer_turn_);
  }

  // Sessions. PauseSession moves the session's warm blocks to cool (to_cold: and its cool
  // blocks on to cold) and returns how many moved; FAILED_PRECONDITION without a disk tier
  // (or without a cold tier for to_cold). ResumeSession promotes the session's disk blocks
  // back into the warm tier as far as it has room; returns how many.
  // Both stop at `deadline` (the calling RPC's), with what they moved by then: a session's
  // blocks may take many disk reads and writes. `room`, asked with a block's size before each
  // block is moved, holds the buffers its move needs (the node's max_inflight_bytes); one that
  // refuses ends the call with its status (what moved before stays moved: a retry goes on).
  using SessionRoom = std::function<absl::Status(uint64_t block_bytes)>;
  absl::StatusOr<uint64_t> PauseSession(const std::string& session, bool to_cold,
                                        absl::Time deadline = absl::InfiniteFuture(),
                                        const SessionRoom& room = nullptr);
  absl::StatusOr<uint64_t> ResumeSession(const std::string& session,
                                         absl::Time deadline = absl::InfiniteFuture(),
                                         const SessionRoom& room = nullptr);

  // Schedules promotion of the named blocks (or, with a session, of its disk blocks) into the
  // warm tier on the prefetch thread; returns how many blocks were scheduled (those already
  // waiting count; none past max_prefetch_queued waiting). Never blocks on disk I/O.
  uint64_t Prefetch(NamespaceId ns, const std::string& scope, std::span<const ChainHash> hashes,
                    const std::string& session);
  // Waits until the prefetch queue is empty (tests).
  void WaitForPrefetch();

  // One pass of the demoter, making room for `incoming` more warm bytes (the background
  // thread calls it with 0; BeginPut with its batch size when it would overflow). Callers
  // with incoming bytes take turns, waiting for one until `wait_until` at most (then none is
  // made: a read staging a block waits behind a writer's disk moves no longer than its
  // call's deadline).
  void DemoteOnce(uint64_t incoming = 0, absl::Time wait_until = absl::InfiniteFuture());
  // Writes one warm victim to cool (Demote's fn): moved, kept (cool failed), or dropped
  // (its tenant holds its whole cool quota).
  WarmTier::Demoted DemoteToCool(const BlockKey& key, std::span<const uint8_t> bytes,
                                 const WarmTier::BlockAttrs& a);

  TieredStats Stats() const;
  // Sessions tracked for idle pausing now (at most max_sessions).
  size_t tracked_sessions();
  // Pauses sessions idle for session_idle_ms and those the cap let go of, at most
  // 2 x kDueSessionsPerTick (64) a call. The demoter calls it each tick.
  void PauseIdleSessions();
  // What each scope holds per tier; only scopes holding some (for /metrics).
  std::vector<ScopeUse> ScopeBytes() const;
  // A walk over the keys of every block held on any tier, for background passes (the
  // rebalancer), holding no list of them. Warm keys come first, a few slab pages at a time
  // (WarmTier::NextKeys: blocks committed before the walk began), then the cool and the cold
  // tier's keys in their order, read from RocksDB a few at a time (DiskTier::KeysAfter), so a
  // walk never copies an index. A disk key is skipped if warm has held the block since the
  // walk began (WarmTier::ResidentSince: warm gave it), and a cold key cool holds when its turn
  // comes. So each block comes once, also one promoted to warm during the walk; one stored
  // during the walk may or may not come, and one moved down a tier meanwhile may come twice.
  struct KeyWalk {
    int stage = 0;  // 0 start, 1 warm, 2 cool, 3 cold, 4 done
    WarmTier::KeyCursor warm;
    // Warm keys read and not given yet: fewer than a few times what a call gives, plus a page.
    std::vector<BlockKey> warm_keys;
    std::string disk_cursor;
  };
  // Appends the walk's next keys to *out: at most `max` (> 0), in runs of one namespace and
  // scope. False once the walk is over and nothing was appended.
  bool NextKeys(KeyWalk* walk, size_t max, std::vector<BlockKey>* out) const;
  // Every key at once, through a walk (tests and tools; a background pass walks instead).
  std::vector<BlockKey> Keys() const;

  // The warm arena, which the data plane registers once.
  uint8_t* arena_base() const { return warm_->arena_base(); }
  uint64_t arena_bytes() const { return warm_->arena_bytes(); }

  // Pins warm blocks only (no disk reads, no copies): per block OK with its arena address, or
  // NOT_FOUND. The data plane transfers straight from the pinned bytes.
  // `count` false: not counted as warm hits or misses (blocks a read already counted).
  WarmTier::GetResult PinWarm(NamespaceId ns, const std::string& scope,
                              std::span<const ChainHash> hashes, uint64_t ttl_ms,
                              bool count = true);
  // Copies a cool/cold block into the warm tier (demoting others to make room, unless that
  // waits past `deadline` for another caller making room) for a read: OK when it is now
  // warm, counted as a hit of its disk tier. DATA_LOSS when its disk copies failed their
  // checksum (dropped: no tier has the block now); NOT_FOUND when it is on no disk tier, or
  // warm has no room.
  absl::Status StageInWarm(const BlockKey& key, absl::Time deadline = absl::InfiniteFuture());
  // See WarmTier::DropCorrupt.
  void DropCorrupt(const BlockKey& key, const uint8_t* address = nullptr) {
    warm_->DropCorrupt(key, address);
  }
  bool promote_on_get() const { return options_.promote_on_get; }

 private:
  TieredStore(TieredStoreOptions options, std::unique_ptr<WarmTier> warm,
              std::unique_ptr<DiskTier> cool, std::unique_ptr<DiskTier> cold);
  // After a block was written to `tier` from the tier above: false, and that copy deleted,
  // when a writer deleted the block meanwhile (its Delete may have passed `tier` first).
  bool KeptUnlessDeleted(DiskTier* tier, const BlockKey& key);
  // Makes room in `tier` for `bytes` more, moving victims to `below` (or dropping them).
  void MakeRoom(DiskTier* tier, DiskTier* below, uint64_t bytes);
  void DemoteLoop();
  // Asks the cool and cold tiers after a warm miss (null without disk tiers).
  WarmTier::LowerTierProbe DiskProbe();
  void PrefetchLoop();
  // How a copy into warm finds room: only free room, or made by demoting others (waiting for
  // another caller making room until `wait_until` at most: DemoteOnce).
  struct Room {
    bool make = true;
    absl::Time wait_until = absl::InfiniteFuture();
  };
  // Reads a disk block and copies it into the warm tier without evicting anything.
  // `from`: set to the tier (kTierCool, kTierCold) the block was read from.
  // `read_error`: set to why a disk copy could not be read (DATA_LOSS: corrupt, dropped) when
  // no tier's copy could.
  bool Promote(const BlockKey& key, bool prefetched, int* from, Room room,
               absl::Status* read_error = nullptr);
  // Copies verified disk bytes into the warm tier without evicting.
  bool InsertWarm(const BlockKey& key, std::span<const uint8_t> bytes, const DiskBlockMeta& meta,
                  bool prefetched, Room room);
  void NoteSession(const std::string& session);
  // The lossy quantization namespace `id` opted into for offloaded blocks (none if unknown).
  KvQuantSpec OffloadQuant(NamespaceId id) const;
  // The disk record of a warm block's attributes.
  static DiskBlockMeta DiskMetaOf(const WarmTier::BlockAttrs& a);

  const TieredStoreOptions options_;
  std::unique_ptr<WarmTier> warm_;
  std::unique_ptr<DiskTier> cool_;
  std::unique_ptr<DiskTier> cold_;
  std::atomic<uint64_t> cool_hits_{0};
  std::atomic<uint64_t> cold_hits_{0};
  std::atomic<uint64_t> promotions_{0};
  std::atomic<uint64_t> cool_demotions_{0};
  std::atomic<uint64_t> disk_evictions_{0};
  std::atomic<uint64_t> prefetched_{0};
  TimedTurn writer_turn_;  // DemoteOnce for a writer (incoming > 0): one at a time
  // A block's tombstone check and delete in KeptUnlessDeleted, and a writer's put that finds
  // the block on disk and forgets its tombstone (BeginPut), one at a time per key stripe:
  // between the check and the delete, a writer told ALREADY_EXISTS lost the block. Held only
  // around those steps (a disk Find or Delete, the warm tier's tombstones), which take no room
  // lock, turn or other stripe; taken under a room lock or the writers' turn.
  static constexpr size_t kTombstoneStripes = 64;
  std::array<absl::Mutex, kTombstoneStripes> tombstone_stripes_;
  absl::Mutex& TombstoneStripe(const BlockKey& key) {
    return tombstone_stripes_[absl::HashOf(key) % kTombstoneStripes];
  }
  // One MakeRoom at a time per disk tier (cool, then cold when cool's victims move down; a
  // second caller skips it): two at once read the same charged bytes and each took the whole
  // step, evicting blocks that need not have gone (the demoter thread, a writer, PauseSession
  // and the prefetcher).
  absl::Mutex cool_room_mu_ ABSL_ACQUIRED_BEFORE(cold_room_mu_);
  absl::Mutex cold_room_mu_;
  // Until when (SteadyNowMs) MakeRoom leaves each tier alone after a victim's delete failed.
  std::atomic<int64_t> cool_room_paused_until_ms_{0};
  std::atomic<int64_t> cold_room_paused_until_ms_{0};
  std::atomic<uint64_t> sessions_paused_{0};
  std::atomic<uint64_t> sessions_resumed_{0};

  size_t max_sessions_ = 1024;  // options_.max_sessions, or derived (set once by the constructor)
  absl::Mutex sessions_mu_;
  absl::flat_hash_map<std::string, int64_t> session_last_put_ms_ ABSL_GUARDED_BY(sessions_mu_);
  // Sessions let go of by the max_sessions cap, paused by the next PauseIdleSessions.
  std::vector<std::string> sessions_due_ ABSL_GUARDED_BY(sessions_mu_);

  absl::Mutex prefetch_mu_;
  size_t max_prefetch_queued_ = 1024;  // as max_sessions_
  std::deque<BlockKey> prefetch_queue_ ABSL_GUARDED_BY(prefetch_mu_);
  absl::flat_hash_set<BlockKey> prefetch_waiting_ ABSL_GUARDED_BY(prefetch_mu_);  // the queue's
  bool prefetch_busy_ ABSL_GUARDED_BY(prefetch_mu_) = false;
  bool stopping_ ABSL_GUARDED_BY(prefetch_mu_) = false;

  absl::Notification stop_;
  std::thread demoter_;
  std::thread prefetcher_;
};

}  // namespace strata::storenode
