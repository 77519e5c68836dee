#include "strata/storenode/tiered_store.h"

#include <algorithm>
#include <cstring>
#include <functional>
#include <iterator>
#include <map>
#include <optional>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "spdlog/spdlog.h"
#include "strata/common/checksum.h"
#include "strata/common/steady_clock.h"
#include "strata/storenode/tenant_quota.h"

namespace strata::storenode {
namespace {

// Sessions tracked for idle pausing when max_sessions is 0, and blocks waiting for the
// prefetch thread when max_prefetch_queued is 0: warm capacity / smallest slot (what warm
// can hold), within these bounds (a pass over the session table runs under a lock puts take).
constexpr uint64_t kMinSessions = 1024, kMaxDerivedSessions = 65536;
// Keys of a session's disk blocks a pause or resume takes from its tier at a time.
constexpr size_t kSessionChunk = 1024;

// Calls `each` with the key of every block of `session` on `tier`, taking kSessionChunk keys
// at a time (a session may hold millions), until `each` returns false or `deadline` passes.
void ForEachSessionBlock(DiskTier& tier, const std::string& session, absl::Time deadline,
                         const std::function<bool(const BlockKey&)>& each) {
  DiskTier::SessionCursor at;
  while (!at.done && absl::Now() < deadline) {
    for (const BlockKey& key : tier.SessionBlocks(session, kSessionChunk, &at)) {
      if (absl::Now() >= deadline || !each(key)) return;
    }
  }
}
// Sessions let go of by the cap waiting for an early pause, and how many pause per tick.
constexpr size_t kMaxDueSessions = 4096, kDueSessionsPerTick = 64;

constexpr int kTierCool = 3;
constexpr int kTierCold = 4;

}  // namespace

DiskBlockMeta TieredStore::DiskMetaOf(const WarmTier::BlockAttrs& a) {
  DiskBlockMeta m;
  m.checksum = a.checksum;
  m.depth = a.depth;
  m.importance = a.importance;
  m.session = a.session;
  m.parent_handle = a.parent_handle;
  return m;
}

absl::StatusOr<std::unique_ptr<TieredStore>> TieredStore::Create(TieredStoreOptions options) {
  if (options.cold && !options.cool) {
    return absl::InvalidArgumentError("cold_path: a cold tier needs a cool tier above it");
  }
  absl::StatusOr<std::unique_ptr<WarmTier>> warm = WarmTier::Create(options.warm);
  if (!warm.ok()) return warm.status();
  std::unique_ptr<DiskTier> cool, cold;
  for (auto [opts, out] : {std::pair{&options.cool, &cool}, std::pair{&options.cold, &cold}}) {
    if (!opts->has_value()) continue;
    absl::StatusOr<std::unique_ptr<DiskTier>> t = DiskTier::Open(**opts);
    if (!t.ok()) return t.status();
    *out = std::move(*t);
    absl::StatusOr<std::vector<NamespaceSpec>> specs = (*out)->LoadNamespaces();
    if (!specs.ok()) return specs.status();
    for (const NamespaceSpec& spec : *specs) {
      if (absl::StatusOr<NamespaceId> id = (*warm)->RegisterNamespace(spec); !id.ok()) {
        spdlog::error("persisted namespace {} not restored: {}", spec.model_id,
                      id.status().ToString());
      }
    }
  }
  return std::unique_ptr<TieredStore>(
      new TieredStore(std::move(options), std::move(*warm), std::move(cool), std::move(cold)));
}

TieredStore::TieredStore(TieredStoreOptions options, std::unique_ptr<WarmTier> warm,
                         std::unique_ptr<DiskTier> cool, std::unique_ptr<DiskTier> cold)
    : options_(std::move(options)),
      warm_(std::move(warm)),
      cool_(std::move(cool)),
      cold_(std::move(cold)) {
  const uint64_t warm_blocks = std::clamp<uint64_t>(warm_->arena_bytes() / warm_->SlotBytes(1),
                                                    kMinSessions, kMaxDerivedSessions);
  max_sessions_ = options_.max_sessions != 0 ? options_.max_sessions : warm_blocks;
  max_prefetch_queued_ =
      options_.max_prefetch_queued != 0 ? options_.max_prefetch_queued : warm_blocks;
  if (cool_) {
    demoter_ = std::thread([this] { DemoteLoop(); });
    prefetcher_ = std::thread([this] { PrefetchLoop(); });
  }
}

TieredStore::~TieredStore() {
  stop_.Notify();
  {
    absl::MutexLock lock(&prefetch_mu_);
    stopping_ = true;
  }
  if (demoter_.joinable()) demoter_.join();
  if (prefetcher_.joinable()) prefetcher_.join();
}

void TieredStore::NoteSession(const std::string& session) {
  if (session.empty() || options_.session_idle_ms == 0) return;
  absl::MutexLock lock(&sessions_mu_);
  session_last_put_ms_[session] = SteadyNowMs();
  if (session_last_put_ms_.size() <= max_sessions_) return;
  // Over the cap: the eighth that put longest ago is due now (one O(n) pass per n/8 new
  // sessions), never the one just noted. Due sessions beyond kMaxDueSessions are let go
  // without a pause: pausing early is a courtesy, not a duty.
  std::vector<std::pair<int64_t, std::string>> by_age;
  by_age.reserve(session_last_put_ms_.size());
  for (const auto& [name, at] : session_last_put_ms_) {
    if (name != session) by_age.emplace_back(at, name);
  }
  const size_t drop = std::clamp<size_t>(by_age.size() / 8, 1, by_age.size());
  std::nth_element(by_age.begin(), by_age.begin() + static_cast<std::ptrdiff_t>(drop - 1),
                   by_age.end());
  for (size_t i = 0; i < drop; ++i) {
    session_last_put_ms_.erase(by_age[i].second);
    if (sessions_due_.size() < kMaxDueSessions)
      sessions_due_.push_back(std::move(by_age[i].second));
  }
}

size_t TieredStore::tracked_sessions() {
  absl::MutexLock lock(&sessions_mu_);
  return session_last_put_ms_.size();
}

void TieredStore::PauseIdleSessions() {
  if (options_.session_idle_ms == 0) return;
  std::vector<std::string> idle;
  {
    absl::MutexLock lock(&sessions_mu_);
    // Sessions let go of by the cap, a few per tick (each pause scans the warm index); one
    // that put again since is tracked anew and left alone.
    const size_t n = std::min(sessions_due_.size(), kDueSessionsPerTick);
    for (size_t i = 0; i < n; ++i) {
      std::string& due = sessions_due_[sessions_due_.size() - 1 - i];
      if (!session_last_put_ms_.contains(due)) idle.push_back(std::move(due));
    }
    sessions_due_.resize(sessions_due_.size() - n);
    // Idle ones too, up to twice that a tick all told: sessions that went idle together (a
    // burst of chats, then quiet) are paused over several ticks, not in one long stall.
    int64_t cutoff = SteadyNowMs() - static_cast<int64_t>(options_.session_idle_ms);
    for (auto it = session_last_put_ms_.begin();
         it != session_last_put_ms_.end() && idle.size() < 2 * kDueSessionsPerTick;) {
      if (it->second <= cutoff) {
        idle.push_back(it->first);
        session_last_put_ms_.erase(it++);
      } else {
        ++it;
      }
    }
  }
  for (const std::string& s : idle) {
    absl::StatusOr<uint64_t> n = PauseSession(s, false);
    if (n.ok()) spdlog::info("session idle: {} blocks demoted", *n);
  }
}

absl::StatusOr<uint64_t> TieredStore::PauseSession(const std::string& session, bool to_cold,
                                                   absl::Time deadline, const SessionRoom& room) {
  if (!cool_) return absl::FailedPreconditionError("PauseSession: node has no cool tier");
  if (to_cold && !cold_) return absl::FailedPreconditionError("PauseSession: no cold tier");
  DiskTier* target = to_cold ? cold_.get() : cool_.get();
  DiskTier* below = to_cold ? nullptr : cold_.get();
  // Out of time already: nothing is taken out of warm (blocks taken and then kept go back
  // as just used, the opposite of a pause).
  if (absl::Now() >= deadline) return 0;
  absl::Status refused;  // by `room`: the rest stays where it is
  auto roomy = [&](uint64_t bytes) {
    if (refused.ok() && room) refused = room(bytes);
    return refused.ok();
  };
  uint64_t moved = warm_->Demote(
      0,
      [&](const BlockKey& key, std::span<const uint8_t> bytes, const WarmTier::BlockAttrs& a) {
        using Demoted = WarmTier::Demoted;
        if (absl::Now() >= deadline) return Demoted::kKept;
        if (target->Find(key, false)) return Demoted::kMoved;  // inclusive copy already there
        if (!roomy(bytes.size())) return Demoted::kKept;
        MakeRoom(target, below, bytes.size());
        return target->Put(key, bytes, DiskMetaOf(a), OffloadQuant(key.namespace_id)).ok() &&
                       KeptUnlessDeleted(target, key)
                   ? Demoted::kMoved
                   : Demoted::kKept;
      },
      &session);
  if (to_cold) {
    std::vector<uint8_t> buf;
    ForEachSessionBlock(*cool_, session, deadline, [&](const BlockKey& key) {
      std::optional<DiskBlockMeta> meta = cool_->Find(key, false);
      if (!meta) return true;
      if (!roomy(meta->size)) return false;
      if (!cool_->Read(key, &buf).ok()) return true;
      MakeRoom(cold_.get(), nullptr, meta->stored_bytes);
      if (cold_->Put(key, buf, *meta, OffloadQuant(key.namespace_id)).ok() &&
          KeptUnlessDeleted(cold_.get(), key) && cool_->Delete(key).ok())
        ++moved;
      return true;
    });
  }
  if (!refused.ok()) return refused;
  sessions_paused_.fetch_add(1, std::memory_order_relaxed);
  return moved;
}

bool TieredStore::InsertWarm(const BlockKey& key, std::span<const uint8_t> bytes,
                             const DiskBlockMeta& meta, bool prefetched, Room room) {
  // Room first when asked: a promotion never evicts a block that exists nowhere else.
  if (room.make) DemoteOnce(warm_->SlotBytes(bytes.size()), room.wait_until);
  WarmTier::PutBlock pb{key.hash,     bytes.size(), meta.depth,        meta.importance,
                        meta.session, prefetched,   meta.parent_handle};
  pb.copy = true;  // of a disk block a writer may be deleting right now
  WarmTier::ReserveResult res = warm_->BeginPut(key.namespace_id, key.scope, {&pb, 1}, 10000,
                                                /*may_evict=*/false);
  if (res.reservation_id == 0 || !res.status[0].ok()) return false;
  WarmTier::CommitBlock cb{key.hash, meta.checksum, bytes};
  auto done = warm_->CommitPut(res.reservation_id, {&cb, 1});
  // The disk copy stays (inclusive tiers): a restart or a later demotion of the warm copy
  // then costs no write.
  bool ok = done.ok() && (*done)[0].ok();
  if (ok) promotions_.fetch_add(1, std::memory_order_relaxed);
  return ok;
}

bool TieredStore::Promote(const BlockKey& key, bool prefetched, int* from, Room room,
                          absl::Status* read_error) {
  std::vector<uint8_t> buf;
  for (auto [tier, code] : {std::pair{cool_.get(), kTierCool}, std::pair{cold_.get(), kTierCold}}) {
    if (tier == nullptr) continue;
    std::optional<DiskBlockMeta> meta = tier->Find(key, false);
    if (!meta) continue;
    if (absl::Status s = tier->Read(key, &buf); !s.ok()) {
      // Corrupt (dropped there) or moved meanwhile: a colder copy may still be intact.
      if (read_error != nullptr && s.code() != absl::StatusCode::kNotFound) *read_error = s;
      if (s.code() == absl::StatusCode::kDataLoss || s.code() == absl::StatusCode::kNotFound) {
        continue;
      }
      return false;
    }
    if (from != nullptr) *from = code;
    // A colder copy read whole: the block is not lost, whatever a warmer copy was.
    if (read_error != nullptr) *read_error = absl::OkStatus();
    return InsertWarm(key, buf, *meta, prefetched, room);
  }
  return false;
}

absl::StatusOr<uint64_t> TieredStore::ResumeSession(const std::string& session, absl::Time deadline,
                                                    const SessionRoom& room) {
  if (!cool_) return absl::FailedPreconditionError("ResumeSession: node has no cool tier");
  // At most what warm holds below its low watermark: past that each promotion would only
  // demote one made before it (a session larger than warm churned through all of it, and
  // pushed every other block out on the way).
  const uint64_t budget =
      static_cast<uint64_t>(warm_->Stats().capacity_bytes * options_.warm_low_watermark);
  uint64_t promoted = 0, bytes = 0;
  absl::Status refused;  // by `room`
  for (DiskTier* tier : {cool_.get(), cold_.get()}) {
    if (tier == nullptr || !refused.ok()) continue;
    // A tier's walk ends at the first block past the budget (a colder one may still fit).
    ForEachSessionBlock(*tier, session, deadline, [&](const BlockKey& key) {
      std::optional<DiskBlockMeta> meta = tier->Find(key, false);
      if (!meta) return true;
      if (bytes + warm_->SlotBytes(meta->size) > budget) return false;
      if (room && refused.ok()) refused = room(meta->size);
      if (!refused.ok()) return false;
      // Behind a writer making room no longer than the call's deadline.
      if (Promote(key, false, nullptr, Room{.wait_until = deadline})) {
        ++promoted;
        bytes += warm_->SlotBytes(meta->size);
      }
      return true;
    });
  }
  NoteSession(session);
  if (!refused.ok()) return refused;
  sessions_resumed_.fetch_add(1, std::memory_order_relaxed);
  return promoted;
}

uint64_t TieredStore::Prefetch(NamespaceId ns, const std::string& scope,
                               std::span<const ChainHash> hashes, const std::string& session) {
  if (!cool_) return 0;
  std::vector<BlockKey> keys;
  if (!session.empty()) {
    // No more of a session's keys than the queue has room for (a session may hold millions).
    size_t room = 0;
    {
      absl::MutexLock lock(&prefetch_mu_);
      room = max_prefetch_queued_ - std::min(max_prefetch_queued_, prefetch_queue_.size());
    }
    for (DiskTier* tier : {cool_.get(), cold_.get()}) {
      if (tier == nullptr || keys.size() >= room) continue;
      std::vector<BlockKey> k = tier->SessionBlocks(session, room - keys.size());
      keys.insert(keys.end(), k.begin(), k.end());
    }
  }
  for (const ChainHash& h : hashes) {
    BlockKey key{ns, scope, h};
    if (cool_->Find(key, false) || (cold_ && cold_->Find(key, false))) keys.push_back(key);
  }
  uint64_t scheduled = 0;
  absl::MutexLock lock(&prefetch_mu_);
  for (BlockKey& k : keys) {
    if (prefetch_waiting_.contains(k)) {
      ++scheduled;
    } else if (prefetch_queue_.size() < max_prefetch_queued_) {
      prefetch_waiting_.insert(k);
      prefetch_queue_.push_back(std::move(k));
      ++scheduled;
    }
  }
  return scheduled;
}

void TieredStore::PrefetchLoop() {
  for (;;) {
    BlockKey key;
    {
      absl::MutexLock lock(&prefetch_mu_);
      prefetch_mu_.Await(absl::Condition(
          +[](TieredStore* t) ABSL_NO_THREAD_SAFETY_ANALYSIS {
            return t->stopping_ || !t->prefetch_queue_.empty();
          },
          this));
      if (stopping_) return;
      key = std::move(prefetch_queue_.front());
      prefetch_queue_.pop_front();
      prefetch_waiting_.erase(key);
      prefetch_busy_ = true;
    }
    // Already warm (a Get got there first): nothing to do.
    bool warm =
        !warm_->Lookup(key.namespace_id, key.scope, {&key.hash, 1}, nullptr, /*count=*/false)
             .empty();
    if (!warm && Promote(key, true, nullptr, Room{})) {
      prefetched_.fetch_add(1, std::memory_order_relaxed);
    }
    absl::MutexLock lock(&prefetch_mu_);
    prefetch_busy_ = false;
  }
}

void TieredStore::WaitForPrefetch() {
  absl::MutexLock lock(&prefetch_mu_);
  prefetch_mu_.Await(absl::Condition(
      +[](TieredStore* t) ABSL_NO_THREAD_SAFETY_ANALYSIS {
        return t->stopping_ || (t->prefetch_queue_.empty() && !t->prefetch_busy_);
      },
      this));
}

absl::StatusOr<NamespaceId> TieredStore::RegisterNamespace(const NamespaceSpec& spec, bool* added) {
  absl::StatusOr<NamespaceId> id = warm_->RegisterNamespace(spec, added);
  if (!id.ok()) return id.status();
  for (DiskTier* t : {cool_.get(), cold_.get()}) {
    if (t == nullptr) continue;
    absl::StatusOr<NamespaceSpec> merged = warm_->GetNamespace(*id);
    if (absl::Status s = t->SaveNamespace(*id, merged.ok() ? *merged : spec); !s.ok()) return s;
  }
  return id;
}

absl::StatusOr<NamespaceSpec> TieredStore::GetNamespace(NamespaceId id) const {
  return warm_->GetNamespace(id);
}

KvQuantSpec TieredStore::OffloadQuant(NamespaceId id) const {
  absl::StatusOr<NamespaceSpec> spec = warm_->GetNamespace(id);
  return spec.ok() ? OffloadQuantOf(*spec) : KvQuantSpec{};
}

WarmTier::LowerTierProbe TieredStore::DiskProbe() {
  if (!cool_) return nullptr;
  return [this](size_t, const BlockKey& key) -> std::optional<WarmTier::BlockMeta> {
    for (auto [tier, code] :
         {std::pair{cool_.get(), kTierCool}, std::pair{cold_.get(), kTierCold}}) {
      if (tier == nullptr) continue;
      if (std::optional<DiskBlockMeta> m = tier->Find(key, true)) {
        return WarmTier::BlockMeta{m->size, m->checksum, code};
      }
    }
    return std::nullopt;
  };
}

std::vector<WarmTier::BlockMeta> TieredStore::Lookup(NamespaceId ns, const std::string& scope,
                                                     std::span<const ChainHash> hashes,
                                                     bool count) {
  return warm_->Lookup(ns, scope, hashes, DiskProbe(), count);
}

std::vector<std::optional<WarmTier::BlockMeta>> TieredStore::LookupEach(
    NamespaceId ns, const std::string& scope, std::span<const ChainHash> hashes, bool count) {
  return warm_->LookupEach(ns, scope, hashes, DiskProbe(), count);
}

WarmTier::ReserveResult TieredStore::BeginPut(NamespaceId ns, const std::string& scope,
                                              std::span<const WarmTier::PutBlock> blocks,
                                              uint64_t ttl_ms) {
  if (!cool_) return warm_->BeginPut(ns, scope, blocks, ttl_ms);
  if (!blocks.empty()) NoteSession(blocks[0].session);
  // Blocks a lower tier holds are duplicates; reserve the rest in the warm tier.
  std::vector<WarmTier::PutBlock> fresh;
  std::vector<int> where(blocks.size(), -1);
  for (size_t i = 0; i < blocks.size(); ++i) {
    BlockKey key{ns, scope, blocks[i].hash};
    bool below = cool_->Find(key, false) || (cold_ && cold_->Find(key, false));
    if (below && !blocks[i].copy) {
      // ALREADY_EXISTS: wanted again. Unless a tombstone's check is deleting that copy now
      // (KeptUnlessDeleted): then it is gone, and the block is reserved as new.
      absl::MutexLock stripe(&TombstoneStripe(key));
      below = cool_->Find(key, false) || (cold_ && cold_->Find(key, false));
      if (below) warm_->ForgetDelete(key);
    }
    if (!below) {
      where[i] = static_cast<int>(fresh.size());
      fresh.push_back(blocks[i]);
    }
  }
  WarmTier::ReserveResult r;
  if (!fresh.empty()) {
    // Backpressure instead of loss: when the writer outruns the demoter, demote in this
    // caller's thread (disk I/O, outside every lock) so eviction has nothing to drop.
    uint64_t incoming = 0;
    for (const WarmTier::PutBlock& b : fresh) incoming += warm_->SlotBytes(b.size);
    WarmTierStats ws = warm_->Stats();
    if (ws.used_bytes + incoming >
        static_cast<uint64_t>(ws.capacity_bytes * options_.warm_high_watermark)) {
      DemoteOnce(incoming);
    }
    r = warm_->BeginPut(ns, scope, fresh, ttl_ms, /*may_evict=*/false);
    // Under the watermark a slot class can still be out of slots and free pages (blocks of
    // mixed sizes): eviction would drop blocks that exist nowhere else while cool has room.
    // Move those out first; evict only what could not move.
    std::map<uint64_t, size_t> short_of;  // block size → blocks refused for want of a slot
    for (size_t k = 0; k < fresh.size(); ++k) {
      if (r.status[k].code() == absl::StatusCode::kResourceExhausted &&
          !IsTenantQuotaError(r.status[k])) {
        ++short_of[fresh[k].size];
      }
    }
    if (!short_of.empty()) {
      for (const auto& [size, count] : short_of) {
        warm_->DemoteFor(
            size, count,
            [this](const BlockKey& key, std::span<const uint8_t> bytes,
                   const WarmTier::BlockAttrs& a) { return DemoteToCool(key, bytes, a); });
      }
      // Those blocks again, into the same reservation (what was reserved stays as it is).
      std::vector<size_t> refused;
      std::vector<WarmTier::PutBlock> again;
      for (size_t k = 0; k < fresh.size(); ++k) {
        if (r.status[k].code() == absl::StatusCode::kResourceExhausted &&
            !IsTenantQuotaError(r.status[k])) {
          refused.push_back(k);
          again.push_back(fresh[k]);
        }
      }
      WarmTier::ReserveResult more =
          warm_->BeginPut(ns, scope, again, ttl_ms, /*may_evict=*/true, r.reservation_id);
      if (r.reservation_id == 0) r.reservation_id = more.reservation_id;
      // The same id: `into` was still open (BeginPut answers its id), or neither call reserved.
      if (more.reservation_id == r.reservation_id) {
        for (size_t j = 0; j < refused.size(); ++j) {
          r.status[refused[j]] = more.status[j];
          r.addresses[refused[j]] = more.addresses[j];
        }
      } else {
        // The first reservation lapsed while blocks were moved down (a very short ttl): its
        // slots are free again, so nothing of this put may be written (also when the second
        // call reserved nothing, leaving that id answered as if still open).
        if (more.reservation_id != 0) warm_->AbortPut(more.reservation_id).IgnoreError();
        for (size_t k = 0; k < fresh.size(); ++k) {
          if (r.status[k].ok())
            r.status[k] = absl::UnavailableError("reservation expired; put again");
          r.addresses[k] = nullptr;
        }
        r.reservation_id = 0;
      }
    }
  }
  WarmTier::ReserveResult out;
  out.reservation_id = r.reservation_id;
  out.addresses.assign(blocks.size(), nullptr);
  for (size_t i = 0; i < blocks.size(); ++i) {
    out.status.push_back(where[i] < 0 ? absl::AlreadyExistsError("present in a lower tier")
                                      : r.status[where[i]]);
    if (where[i] >= 0) out.addresses[i] = r.addresses[where[i]];
  }
  return out;
}

absl::StatusOr<std::vector<absl::Status>> TieredStore::CommitPut(
    uint64_t reservation_id, std::span<const WarmTier::CommitBlock> blocks) {
  return warm_->CommitPut(reservation_id, blocks);
}

absl::Status TieredStore::AbortPut(uint64_t reservation_id, int64_t quarantine_ms) {
  return warm_->AbortPut(reservation_id, quarantine_ms);
}

namespace {

absl::Status InlineLimitReached(uint64_t max_copy_bytes) {
  return absl::ResourceExhaustedError(
      absl::StrCat("inline limit of ", max_copy_bytes, " bytes per call reached; ask again"));
}

}  // namespace

WarmTier::GetResult TieredStore::BeginGet(NamespaceId ns, const std::string& scope,
                                          std::span<const ChainHash> hashes, uint64_t ttl_ms,
                                          const WarmTier::CopySink& sink, uint64_t max_copy_bytes,
                                          bool promote, bool count_warm, const DiskReadGate& gate) {
  WarmTier::GetResult r =
      warm_->BeginGet(ns, scope, hashes, ttl_ms, sink, max_copy_bytes, count_warm);
  if (!cool_) return r;
  uint64_t copied = 0;
  for (size_t i = 0; i < hashes.size(); ++i) {
    if (r.status[i].ok()) copied += r.blocks[i].size;
  }
  std::vector<uint8_t> buf;
  for (size_t i = 0; i < hashes.size(); ++i) {
    // Not warm, or warm but corrupt (dropped there): a disk copy may still be intact.
    if (r.status[i].code() != absl::StatusCode::kNotFound &&
        r.status[i].code() != absl::StatusCode::kDataLoss) {
      continue;
    }
    BlockKey key{ns, scope, hashes[i]};
    for (auto [tier, code] :
         {std::pair{cool_.get(), kTierCool}, std::pair{cold_.get(), kTierCold}}) {
      std::optional<DiskBlockMeta> found = tier != nullptr ? tier->Find(key, true) : std::nullopt;
      if (!found) continue;
      if (sink && copied + found->size > max_copy_bytes) {
        r.status[i] = InlineLimitReached(max_copy_bytes);  // known before reading it
        break;
      }
      if (absl::Status open = gate ? gate() : absl::OkStatus(); !open.ok()) {
        r.status[i] = open;
        break;
      }
      absl::Status s = tier->Read(key, &buf);  // verifies the checksum; drops a corrupt block
      if (s.code() == absl::StatusCode::kNotFound) continue;  // moved meanwhile: try below
      if (!s.ok()) {
        r.status[i] = s;
        // Corrupt here (dropped): a colder copy may still be intact.
        if (s.code() == absl::StatusCode::kDataLoss) continue;
        break;
      }
      uint64_t checksum = BlockChecksum(buf.data(), buf.size());
      if (sink) {
        if (copied + buf.size() > max_copy_bytes) {
          r.status[i] = InlineLimitReached(max_copy_bytes);
          break;
        }
        if (uint8_t* dst = sink(i, buf.size()); dst != nullptr) {
          std::memcpy(dst, buf.data(), buf.size());
          copied += buf.size();
        }
      }
      r.status[i] = absl::OkStatus();
      r.blocks[i] = {buf.size(), checksum, code, nullptr, found->depth, found->importance};
      (code == kTierCool ? cool_hits_ : cold_hits_).fetch_add(1, std::memory_order_relaxed);
      if (options_.promote_on_get && promote) {
        // Best effort and without disk writes on the read path: a full warm tier simply
        // keeps serving the block from disk.
        std::optional<DiskBlockMeta> meta = tier->Find(key, false);
        if (meta) InsertWarm(key, buf, *meta, false, Room{.make = false});
      }
      break;
    }
  }
  return r;
}

absl::Status TieredStore::EndGet(uint64_t lease_id) { return warm_->EndGet(lease_id); }

WarmTier::GetResult TieredStore::PinWarm(NamespaceId ns, const std::string& scope,
                                         std::span<const ChainHash> hashes, uint64_t ttl_ms,
                                         bool count) {
  return warm_->BeginGet(ns, scope, hashes, ttl_ms, nullptr, 0, count);
}

absl::Status TieredStore::StageInWarm(const BlockKey& key, absl::Time deadline) {
  int from = 0;
  absl::Status read_error;
  // Room is made for it, behind a writer's disk moves no longer than the read's deadline.
  if (Promote(key, false, &from, Room{.wait_until = deadline}, &read_error)) {
    // A read served from disk, as BeginGet counts one (the warm miss came before).
    (from == kTierCool ? cool_hits_ : cold_hits_).fetch_add(1, std::memory_order_relaxed);
    return absl::OkStatus();
  }
  if (read_error.code() == absl::StatusCode::kDataLoss) return read_error;
  return absl::NotFoundError("not staged: on no disk tier, or no room in warm");
}

uint64_t TieredStore::Delete(NamespaceId ns, const std::string& scope,
                             std::span<const ChainHash> hashes, bool tombstone) {
  // Warm first: its tombstones are in place before the disk copies go (KeptUnlessDeleted).
  // A block is counted once, however many tiers held a copy.
  std::vector<bool> removed;
  warm_->Delete(ns, scope, hashes, tombstone, &removed);
  for (DiskTier* t : {cool_.get(), cold_.get()}) {
    if (t == nullptr) continue;
    for (size_t i = 0; i < hashes.size(); ++i) {
      if (t->Delete(BlockKey{ns, scope, hashes[i]}).ok()) removed[i] = true;
    }
  }
  return static_cast<uint64_t>(std::count(removed.begin(), removed.end(), true));
}

bool TieredStore::KeptUnlessDeleted(DiskTier* tier, const BlockKey& key) {
  absl::MutexLock stripe(&TombstoneStripe(key));
  if (!warm_->DeletedLately(key)) return true;
  tier->Delete(key).IgnoreError();
  return false;
}

uint64_t TieredStore::ExpireNow() { return warm_->ExpireNow(); }

absl::Status TieredStore::CorruptForTest(const BlockKey& key, uint64_t offset) {
  return warm_->CorruptForTest(key, offset);
}

namespace {

// A key walk reads warm pages until it holds this many times what a call gives.
constexpr size_t kWarmReadAhead = 4;

bool KeyOrder(const BlockKey& a, const BlockKey& b) {
  return std::tie(a.namespace_id, a.scope, a.hash.bytes) <
         std::tie(b.namespace_id, b.scope, b.hash.bytes);
}

}  // namespace

bool TieredStore::NextKeys(KeyWalk* walk, size_t max, std::vector<BlockKey>* out) const {
  const size_t first = out->size();
  while (out->size() == first) {
    switch (walk->stage) {
      case 0:
        walk->warm = warm_->BeginKeys();
        walk->warm_keys.clear();
        walk->stage = 1;
        break;
      case 1: {
        // A few pages at a time: a walk holds no list of the warm blocks (a million keys on an
        // arena of small blocks would be ~100 MB outside every budget).
        // Read ahead a few times `max`: blocks of many namespaces and scopes share pages, and
        // sorted over more keys the runs of each (the rebalancer's batches) are longer.
        std::vector<BlockKey>& keys = walk->warm_keys;
        if (keys.size() < max &&
            !warm_->NextKeys(&walk->warm, kWarmReadAhead * max - keys.size(), &keys) &&
            keys.empty()) {
          walk->stage = 2;  // no page left, every key given
          break;
        }
        std::sort(keys.begin(), keys.end(), KeyOrder);
        const auto n = static_cast<std::ptrdiff_t>(std::min(max, keys.size()));
        out->insert(out->end(), std::make_move_iterator(keys.begin()),
                    std::make_move_iterator(keys.begin() + n));
        keys.erase(keys.begin(), keys.begin() + n);
        break;
      }
      case 2:
      case 3: {
        DiskTier* tier = walk->stage == 2 ? cool_.get() : cold_.get();
        const bool more = tier != nullptr && tier->KeysAfter(&walk->disk_cursor, max, out);
        // Blocks warm has held since the walk began came from there (a promoted block keeps
        // its disk copy); one promoted since the walk began came not, and comes here. Cold
        // blocks cool holds come from cool.
        const size_t got = out->size() - first;
        const std::vector<bool> warm_gave = warm_->ResidentSinceEach(
            std::span<const BlockKey>(out->data() + first, got), walk->warm.before);
        size_t kept = first;
        for (size_t i = 0; i < got; ++i) {
          const BlockKey& k = (*out)[first + i];
          if (warm_gave[i] ||
              (walk->stage == 3 && cool_ != nullptr && cool_->Find(k, /*touch=*/false)))
            continue;
          if (kept != first + i) (*out)[kept] = std::move((*out)[first + i]);
          ++kept;
        }
        out->resize(kept);
        if (!more) {
          walk->disk_cursor.clear();
          ++walk->stage;
        }
        break;
      }
      default:
        return false;
    }
  }
  return true;
}

std::vector<BlockKey> TieredStore::Keys() const {
  std::vector<BlockKey> keys;
  KeyWalk walk;
  while (NextKeys(&walk, 4096, &keys)) {
  }
  return keys;
}

TieredStats TieredStore::Stats() const {
  TieredStats s;
  s.warm = warm_->Stats();
  if (cool_) s.cool = cool_->Stats();
  if (cold_) s.cold = cold_->Stats();
  s.cool_hits = cool_hits_.load(std::memory_order_relaxed);
  s.cold_hits = cold_hits_.load(std::memory_order_relaxed);
  // The warm tier counted lower-tier hits as its misses.
  s.warm.misses -= std::min(s.warm.misses, s.cool_hits + s.cold_hits);
  s.promotions = promotions_.load(std::memory_order_relaxed);
  s.cool_demotions = cool_demotions_.load(std::memory_order_relaxed);
  s.disk_evictions = disk_evictions_.load(std::memory_order_relaxed);
  s.prefetched = prefetched_.load(std::memory_order_relaxed);
  s.sessions_paused = sessions_paused_.load(std::memory_order_relaxed);
  s.sessions_resumed = sessions_resumed_.load(std::memory_order_relaxed);
  return s;
}

std::vector<ScopeUse> TieredStore::ScopeBytes() const {
  std::vector<ScopeUse> out;
  for (auto& [scope, bytes] : warm_->ScopeBytes()) out.push_back({"warm", scope, bytes});
  for (const auto& [tier, disk] :
       {std::pair{"cool", cool_.get()}, std::pair{"cold", cold_.get()}}) {
    if (disk == nullptr) continue;
    for (auto& [scope, bytes] : disk->ScopeBytes()) out.push_back({tier, scope, bytes});
  }
  return out;
}

}  // namespace strata::storenode
