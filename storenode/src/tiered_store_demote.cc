// TieredStore's moves down: warm victims to cool (DemoteOnce, DemoteToCool), disk victims to
// the tier below or out (MakeRoom), and the demoter thread that runs both (DemoteLoop).
#include <algorithm>
#include <atomic>
#include <optional>
#include <span>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "spdlog/spdlog.h"
#include "strata/common/logging.h"
#include "strata/common/steady_clock.h"
#include "strata/storenode/tenant_quota.h"
#include "strata/storenode/tiered_store.h"

namespace strata::storenode {
namespace {

// What one MakeRoom call moves out at most beyond its incoming block.
constexpr uint64_t kMakeRoomStepBytes = 64ull << 20;

}  // namespace

void TieredStore::MakeRoom(DiskTier* tier, DiskTier* below, uint64_t bytes) {
  if (tier == nullptr) return;
  // One caller at a time; another arriving meanwhile goes on without waiting (the room is
  // being made, and the tier's high watermark leaves headroom below its budget), so a read
  // staging a block never waits behind another caller's disk moves.
  absl::Mutex& one = tier == cool_.get() ? cool_room_mu_ : cold_room_mu_;
  std::atomic<int64_t>& paused_until_ms =
      tier == cool_.get() ? cool_room_paused_until_ms_ : cold_room_paused_until_ms_;
  if (SteadyNowMs() < paused_until_ms.load(std::memory_order_relaxed)) return;
  if (!one.TryLock()) return;
  absl::Cleanup unlock = [&one]() ABSL_NO_THREAD_SAFETY_ANALYSIS { one.Unlock(); };
  const uint64_t cap = tier->capacity_bytes();
  const uint64_t used = tier->charged_bytes();
  const uint64_t incoming = tier->Charge(bytes);
  const uint64_t high = static_cast<uint64_t>(cap * options_.disk_high_watermark);
  if (used + incoming <= high) return;
  // A tier far over its budget (a smaller capacity or a larger min_block_charge after a
  // restart) drains a step at a time, over demoter ticks (DemoteLoop), rather than in the put
  // that found it so.
  const uint64_t target =
      std::min(used + incoming - static_cast<uint64_t>(cap * options_.disk_low_watermark),
               incoming + kMakeRoomStepBytes);
  std::vector<uint8_t> buf;
  uint64_t failed_moves = 0;
  absl::Status last_failure;
  const std::vector<BlockKey> victims = tier->Victims(target);
  for (size_t i = 0; i < victims.size(); ++i) {
    const BlockKey& key = victims[i];
    bool refused = false, copied = false;
    if (below != nullptr) {
      std::optional<DiskBlockMeta> meta = tier->Find(key, false);
      absl::Status put = absl::NotFoundError("gone meanwhile");
      if (meta) put = tier->Read(key, &buf);
      if (put.ok()) {
        MakeRoom(below, nullptr, meta->stored_bytes);
        put = below->Put(key, buf, *meta, OffloadQuant(key.namespace_id));
      }
      refused = !put.ok() && meta.has_value();
      if (refused) last_failure = put;
      copied = put.ok() && KeptUnlessDeleted(below, key);
    }
    // A victim the tier below did not take (its own budget, quota or I/O, or this tier could
    // not read it) leaves the node: it is evicted, and counted so, like a victim of the lowest
    // tier.
    const absl::Status deleted = tier->Delete(key);
    if (deleted.ok()) {
      if (copied) cool_demotions_.fetch_add(1, std::memory_order_relaxed);
      if (below == nullptr || refused) disk_evictions_.fetch_add(1, std::memory_order_relaxed);
      failed_moves += refused ? 1 : 0;
    } else if (deleted.code() != absl::StatusCode::kNotFound) {
      // The tier cannot write (read-only after an I/O error, a full disk): every later victim
      // would be copied below and kept here too, every demoter tick, the same victims each
      // time. It keeps the rest, which rank again, and makes no room for a while.
      tier->Rank(std::span(victims).subspan(i + 1));
      paused_until_ms.store(SteadyNowMs() + static_cast<int64_t>(options_.disk_room_pause_ms),
                            std::memory_order_relaxed);
      static std::atomic<int64_t> last_pause_warning_s{0};
      if (DueForWarning(last_pause_warning_s)) {
        spdlog::warn("{}: cannot delete its victims ({}); making no room for {} ms", tier->name(),
                     deleted.ToString(), options_.disk_room_pause_ms);
      }
      break;
    }
  }
  if (failed_moves == 0) return;
  // A cold tier that is down refuses every move.
  static std::atomic<int64_t> last_warning_s{0};
  if (DueForWarning(last_warning_s)) {
    spdlog::warn("{}: {} blocks evicted that {} did not take (last: {})", tier->name(),
                 failed_moves, below->name(), last_failure.ToString());
  }
}

void TieredStore::DemoteOnce(uint64_t incoming, absl::Time wait_until) {
  if (!cool_) return;
  // Writers make room one at a time, each after the one before has freed its victims' slots:
  // one that arrived meanwhile then finds the room made (victims count in used_bytes until
  // they are written), rather than moving the same gap again. The demoter thread's pass does
  // not hold writers up.
  std::optional<TimedTurn::Hold> turn;
  if (incoming > 0) {
    turn.emplace(writer_turn_, wait_until);
    // A read out of time: the room another caller is making may do, or not.
    if (!turn->taken()) return;
  }
  WarmTierStats s = warm_->Stats();
  uint64_t used = s.used_bytes + incoming;
  uint64_t high = static_cast<uint64_t>(s.capacity_bytes * options_.warm_high_watermark);
  if (used <= high) return;
  uint64_t target = used - static_cast<uint64_t>(s.capacity_bytes * options_.warm_low_watermark);
  // A writer waits for what it brings (a step at least); the demoter thread takes the rest
  // down to the low watermark.
  if (incoming > 0) target = std::min(target, std::max(incoming, kMakeRoomStepBytes));
  warm_->Demote(target,
                [this](const BlockKey& key, std::span<const uint8_t> bytes,
                       const WarmTier::BlockAttrs& a) { return DemoteToCool(key, bytes, a); });
}

WarmTier::Demoted TieredStore::DemoteToCool(const BlockKey& key, std::span<const uint8_t> bytes,
                                            const WarmTier::BlockAttrs& a) {
  using Demoted = WarmTier::Demoted;
  // A block promoted earlier may still have its disk copy: nothing to write then.
  if (cool_->Find(key, true) || (cold_ && cold_->Find(key, true))) return Demoted::kMoved;
  MakeRoom(cool_.get(), cold_.get(), bytes.size());
  absl::Status st = cool_->Put(key, bytes, DiskMetaOf(a), OffloadQuant(key.namespace_id));
  // The tenant holds its whole cool quota: its coldest warm block leaves the node instead of
  // waiting in the warm tier (where it would hold up demotion for everyone). The warm tier
  // counts it evicted, not demoted.
  if (IsTenantQuotaError(st)) return Demoted::kDropped;
  if (!st.ok()) {
    // A cool tier that refuses writes (full, read-only after an I/O error) refuses every
    // victim of every demoter tick: thousands of lines a second, onto that same disk perhaps.
    static std::atomic<int64_t> last_warning_s{0};
    static std::atomic<uint64_t> failed{0};
    const uint64_t n = failed.fetch_add(1, std::memory_order_relaxed) + 1;
    if (DueForWarning(last_warning_s)) {
      failed.fetch_sub(n, std::memory_order_relaxed);
      spdlog::warn("demotion to {} failed ({} blocks since the last warning): {}", cool_->name(), n,
                   st.ToString());
    }
  }
  return st.ok() && KeptUnlessDeleted(cool_.get(), key) ? Demoted::kMoved : Demoted::kKept;
}

void TieredStore::DemoteLoop() {
  while (!stop_.WaitForNotificationWithTimeout(absl::Milliseconds(options_.demote_interval_ms))) {
    DemoteOnce();
    // Disk tiers over their high watermark with nothing coming from above (after a restart
    // with a smaller budget) make room too.
    MakeRoom(cool_.get(), cold_.get(), 0);
    if (cold_) MakeRoom(cold_.get(), nullptr, 0);
    PauseIdleSessions();
  }
}

}  // namespace strata::storenode
