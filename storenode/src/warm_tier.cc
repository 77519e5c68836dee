#include "strata/storenode/warm_tier.h"

#include <xxhash.h>

#include <algorithm>
#include <chrono>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "strata/common/byte_size.h"
#include "strata/common/checksum.h"
#include "strata/common/random.h"
#include "strata/common/steady_clock.h"
#include "strata/storenode/tenant_quota.h"
#include "warm_tier_records.h"

namespace strata::storenode {

namespace {

// The tombstones' hash seed: random per process, so no client can choose keys that collide.
// A failing random source was refused at start (CheckRandomSource); a clock is what is left.
uint64_t RandomSeed() {
  absl::StatusOr<uint64_t> seed = RandomU64();
  if (seed.ok()) return *seed;
  return static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
}

}  // namespace

absl::StatusOr<std::unique_ptr<WarmTier>> WarmTier::Create(WarmTierOptions options) {
  absl::StatusOr<std::unique_ptr<SlabArena>> arena =
      SlabArena::Create(options.capacity_bytes, options.max_block_bytes, options.prefault);
  if (!arena.ok()) return arena.status();
  if (!options.now_ms) options.now_ms = SteadyNowMs;
  return std::unique_ptr<WarmTier>(new WarmTier(std::move(options), std::move(*arena)));
}

WarmTier::WarmTier(WarmTierOptions options, std::unique_ptr<SlabArena> arena)
    : options_(std::move(options)),
      arena_(std::move(arena)),
      policy_(MakeEvictionPolicy(options_.policy, options_.policy_options)),
      tombstones_(options_.tombstone_capacity, options_.tombstone_ttl_ms),
      tombstone_seed_(RandomSeed()) {
  slot_owner_.resize(arena_->num_pages());
}

WarmTier::~WarmTier() = default;

absl::StatusOr<NamespaceId> WarmTier::RegisterNamespace(const NamespaceSpec& spec, bool* added) {
  if (added != nullptr) *added = false;
  if (absl::Status s = ValidateNamespaceSpec(spec); !s.ok()) return s;
  if (spec.block_bytes > options_.max_block_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("spec.block_bytes: ", spec.block_bytes,
                                                   " exceeds this node's max_block_bytes ",
                                                   options_.max_block_bytes));
  }
  NamespaceId id = ComputeNamespaceId(spec);
  absl::MutexLock lock(&mu_);
  auto it = namespaces_.find(id);
  if (it != namespaces_.end()) {
    // Same identity; a writer with larger blocks widens the admission limit.
    NamespaceSpec& known = it->second;
    if (!spec.offload_quant.empty()) {
      KvQuantSpec want = OffloadQuantOf(spec), have = OffloadQuantOf(known);
      if (known.offload_quant.empty()) {
        known.offload_quant = spec.offload_quant;
        known.head_dim = spec.head_dim;
      } else if (want.method != have.method || want.head_dim != have.head_dim) {
        return absl::FailedPreconditionError(
            absl::StrCat("spec.offload_quant: namespace already registered with \"",
                         known.offload_quant, "\" (head_dim ", known.head_dim, "); asked for \"",
                         spec.offload_quant, "\" (head_dim ", spec.head_dim, ")"));
      }
    }
    known.block_bytes = std::max(known.block_bytes, spec.block_bytes);
    return id;
  }
  if (namespaces_.size() >= options_.max_namespaces) {
    return absl::ResourceExhaustedError(
        absl::StrCat("namespaces: node holds its maximum of ", options_.max_namespaces));
  }
  namespaces_.emplace(id, spec);
  if (added != nullptr) *added = true;
  return id;
}

absl::StatusOr<NamespaceSpec> WarmTier::GetNamespace(NamespaceId id) const {
  absl::MutexLock lock(&mu_);
  auto it = namespaces_.find(id);
  if (it == namespaces_.end()) {
    return absl::NotFoundError(
        absl::StrFormat("namespace_id 0x%016x: %s", id, kNamespaceNotRegistered));
  }
  return it->second;
}

void WarmTier::TouchLocked(Entry* e) {
  e->last_tick = ++tick_;
  policy_->Access(e->handle, tick_);
}

WarmTier::Entry* WarmTier::EntryForHandleLocked(uint64_t handle) const {
  auto it = by_handle_.find(handle);
  return it == by_handle_.end() ? nullptr : it->second;
}

void WarmTier::AdmitLocked(Entry* e) {
  e->last_tick = ++tick_;
  BlockTraits traits;
  traits.size = e->size;
  traits.depth = e->depth;
  traits.parent = e->parent_handle;
  traits.importance = e->importance;
  policy_->Insert(e->handle, traits, tick_);
}

void WarmTier::FreeSlotLocked(Entry* e) {
  slot_owner_[e->slot.page][e->slot.index] = nullptr;
  arena_->Free(e->slot);
  used_bytes_ -= arena_->ClassBytes(e->slot.size_class);
  UnchargeScopeLocked(e);
}

void WarmTier::UnchargeScopeLocked(Entry* e) {
  if (e->uncharged) return;
  e->uncharged = true;
  if (auto it = scope_used_.find(e->key.scope); it != scope_used_.end()) {
    it->second -= std::min(it->second, arena_->ClassBytes(e->slot.size_class));
    if (it->second == 0) scope_used_.erase(it);
  }
}

void WarmTier::RemoveLocked(Entry* e) {
  if (e->prefetched) prefetch_wasted_.fetch_add(1, std::memory_order_relaxed);
  if (e->state == Entry::State::kCommitted) {
    policy_->Erase(e->handle);
    if (EntryForHandleLocked(e->handle) == e) by_handle_.erase(e->handle);
    if (auto it = by_session_.find(e->session); it != by_session_.end()) {
      it->second.erase(e);
      if (it->second.empty()) by_session_.erase(it);
    }
    --committed_;
    payload_bytes_ -= e->size;
  }
  auto node = index_.extract(e->key);
  if (e->pins == 0) {
    FreeSlotLocked(e);
    return;  // node (and the entry) destroyed here
  }
  doomed_.emplace(e, std::move(node.mapped()));
}

void WarmTier::ReleaseLeaseLocked(Lease& lease) {
  for (Entry* e : lease.entries) UnpinLocked(e);
  if (lease.held) {
    --held_leases_;
    held_bytes_ -= lease.bytes;
  }
}

void WarmTier::UnpinLocked(Entry* e) {
  if (--e->pins > 0) return;
  --pinned_;
  auto it = doomed_.find(e);
  if (it != doomed_.end()) {
    FreeSlotLocked(e);
    doomed_.erase(it);
  }
}

bool WarmTier::EvictOneLocked(uint16_t size_class) {
  std::optional<uint64_t> victim = policy_->Victim([&](uint64_t handle) {
    const Entry* e = EntryForHandleLocked(handle);
    return e != nullptr && e->pins == 0 && e->slot.size_class == size_class;
  });
  if (!victim) return false;
  RemoveLocked(EntryForHandleLocked(*victim));
  evictions_.fetch_add(1, std::memory_order_relaxed);
  return true;
}

int64_t WarmTier::ReclaimCandidateLocked() const {
  // The page whose newest block is oldest, among pages holding only unpinned committed
  // blocks: emptying it returns a whole page to the pool for any class.
  int64_t best = -1;
  uint64_t best_tick = UINT64_MAX;
  for (uint32_t page = 0; page < arena_->num_pages(); ++page) {
    if (arena_->PageClass(page) < 0) continue;
    uint64_t newest = 0;
    bool movable = true;
    for (const Entry* e : slot_owner_[page]) {
      if (e == nullptr) continue;
      if (e->state != Entry::State::kCommitted || e->pins > 0) {
        movable = false;
        break;
      }
      newest = std::max(newest, e->last_tick);
    }
    if (movable && newest < best_tick) {
      best_tick = newest;
      best = page;
    }
  }
  return best;
}

bool WarmTier::ReclaimPageLocked() {
  const int64_t best = ReclaimCandidateLocked();
  if (best < 0) return false;
  std::vector<Entry*> victims;
  for (Entry* e : slot_owner_[best]) {
    if (e != nullptr) victims.push_back(e);
  }
  for (Entry* e : victims) RemoveLocked(e);
  evictions_.fetch_add(victims.size(), std::memory_order_relaxed);
  return true;
}

std::optional<Slot> WarmTier::AllocateLocked(uint16_t size_class, bool may_evict) {
  for (;;) {
    if (std::optional<Slot> s = arena_->Allocate(size_class)) return s;
    if (!may_evict) return std::nullopt;
    if (EvictOneLocked(size_class)) continue;
    if (ReclaimPageLocked()) continue;
    return std::nullopt;
  }
}

std::vector<WarmTier::BlockMeta> WarmTier::Lookup(NamespaceId ns, const std::string& scope,
                                                  std::span<const ChainHash> hashes,
                                                  const LowerTierProbe& lower, bool count) {
  std::vector<std::optional<BlockMeta>> each = Probe(ns, scope, hashes, lower, true, count);
  std::vector<BlockMeta> out;
  out.reserve(each.size());
  for (const std::optional<BlockMeta>& m : each) out.push_back(*m);
  return out;
}

std::vector<std::optional<WarmTier::BlockMeta>> WarmTier::LookupEach(
    NamespaceId ns, const std::string& scope, std::span<const ChainHash> hashes,
    const LowerTierProbe& lower, bool count) {
  return Probe(ns, scope, hashes, lower, false, count);
}

std::vector<std::optional<WarmTier::BlockMeta>> WarmTier::Probe(NamespaceId ns,
                                                                const std::string& scope,
                                                                std::span<const ChainHash> hashes,
                                                                const LowerTierProbe& lower,
                                                                bool prefix, bool count) {
  std::vector<std::optional<BlockMeta>> out;
  out.reserve(hashes.size());
  std::vector<Entry*> found;
  found.reserve(hashes.size());
  absl::MutexLock lock(&mu_);
  BlockKey key{ns, scope, {}};
  for (size_t i = 0; i < hashes.size(); ++i) {
    key.hash = hashes[i];
    auto it = index_.find(key);
    if (it == index_.end() || it->second->state != Entry::State::kCommitted) {
      std::optional<BlockMeta> below = lower ? lower(i, key) : std::nullopt;
      if (!below && prefix) break;
      out.push_back(below);
      continue;
    }
    found.push_back(it->second.get());
    out.push_back(BlockMeta{it->second->size, it->second->checksum});
  }
  TouchChainLocked(found);
  if (count) CountLookups(found.size(), hashes.size() - found.size());
  return out;
}

void WarmTier::TouchChainLocked(std::span<Entry* const> chain) {
  // Descendants first so a chain's ancestors are its most recently used blocks: plain LRU
  // then evicts from the tail of a prefix, never orphaning its descendants. (TouchLocked for
  // each, in one call to the policy.)
  std::vector<uint64_t> touched;
  touched.reserve(chain.size());
  for (auto it = chain.rbegin(); it != chain.rend(); ++it) {
    (*it)->last_tick = ++tick_;
    touched.push_back((*it)->handle);
  }
  policy_->AccessEach(touched, tick_ + 1 - touched.size());
}

void WarmTier::Touch(NamespaceId ns, const std::string& scope, std::span<const ChainHash> hashes) {
  std::vector<Entry*> found;
  found.reserve(hashes.size());
  absl::MutexLock lock(&mu_);
  BlockKey key{ns, scope, {}};
  for (const ChainHash& h : hashes) {
    key.hash = h;
    auto it = index_.find(key);
    if (it != index_.end() && it->second->state == Entry::State::kCommitted) {
      found.push_back(it->second.get());
    }
  }
  TouchChainLocked(found);
}

void WarmTier::TakeForDemotionLocked(Entry* e, std::vector<DemoteVictim>* victims) {
  // Out of the policy while it moves, so its parent can become the next victim; a block that
  // does not move is admitted again in MoveOut.
  policy_->Erase(e->handle);
  if (e->pins++ == 0) ++pinned_;
  victims->push_back(
      {e, e->size, BlockAttrs{e->checksum, e->depth, e->importance, e->session, e->parent_handle}});
}

uint64_t WarmTier::Demote(uint64_t bytes, const DemoteFn& fn, const std::string* session) {
  std::vector<DemoteVictim> victims;
  {
    absl::MutexLock lock(&mu_);
    if (session != nullptr) {
      // The session's own blocks (by_session_), not a pass over the whole index: idle sessions
      // pause up to 64 a tick, and that pass held the lock 26-51 ms at 500,000 blocks.
      std::vector<Entry*> members;
      if (auto it = by_session_.find(*session); it != by_session_.end()) {
        for (Entry* e : it->second) {
          if (e->pins == 0) members.push_back(e);
        }
      }
      for (Entry* e : members) TakeForDemotionLocked(e, &victims);
    } else {
      uint64_t sum = 0;
      while (sum < bytes) {
        std::optional<uint64_t> victim = policy_->Victim([&](uint64_t handle) {
          const Entry* e = EntryForHandleLocked(handle);
          return e != nullptr && e->pins == 0;
        });
        if (!victim) break;
        Entry* e = EntryForHandleLocked(*victim);
        sum += arena_->ClassBytes(e->slot.size_class);  // `bytes` counts slots, as used_bytes
        TakeForDemotionLocked(e, &victims);
      }
    }
  }
  return MoveOut(victims, fn);
}

uint64_t WarmTier::DemoteFor(uint64_t size, size_t count, const DemoteFn& fn) {
  std::vector<DemoteVictim> victims;
  {
    absl::MutexLock lock(&mu_);
    const uint16_t size_class = SlotClass(size);
    size_t slots = 0;  // of the class, freed once the victims are gone
    while (slots < count) {
      std::optional<uint64_t> victim = policy_->Victim([&](uint64_t handle) {
        const Entry* e = EntryForHandleLocked(handle);
        return e != nullptr && e->pins == 0 && e->slot.size_class == size_class;
      });
      if (!victim) break;
      TakeForDemotionLocked(EntryForHandleLocked(*victim), &victims);
      ++slots;
    }
    // The rest from whole pages, each as reclaim would pick it (a page whose blocks were taken
    // is pinned now, so the next pick is another).
    while (slots < count) {
      const int64_t page = ReclaimCandidateLocked();
      if (page < 0) break;
      std::vector<Entry*> on_page;
      for (Entry* e : slot_owner_[page]) {
        if (e != nullptr) on_page.push_back(e);
      }
      for (Entry* e : on_page) TakeForDemotionLocked(e, &victims);
      slots += arena_->SlotsPerPage(size_class);
    }
  }
  return MoveOut(victims, fn);
}

uint64_t WarmTier::MoveOut(std::vector<DemoteVictim>& victims, const DemoteFn& fn) {
  // Pinned: the bytes cannot move while they are verified and written elsewhere.
  std::vector<Demoted> done(victims.size(), Demoted::kKept);
  std::vector<bool> corrupt(victims.size(), false);
  for (size_t i = 0; i < victims.size(); ++i) {
    const uint8_t* data = arena_->Address(victims[i].entry->slot);
    if (BlockChecksum(data, victims[i].size) != victims[i].attrs.checksum) {
      corrupt[i] = true;
      continue;
    }
    done[i] = fn(victims[i].entry->key, {data, victims[i].size}, victims[i].attrs);
  }
  uint64_t n = 0, dropped = 0;
  absl::MutexLock lock(&mu_);
  for (size_t i = 0; i < victims.size(); ++i) {
    Entry* e = victims[i].entry;
    if (done[i] != Demoted::kKept || corrupt[i]) {
      auto it = index_.find(e->key);
      if (it != index_.end() && it->second.get() == e) RemoveLocked(e);
      if (corrupt[i]) data_loss_.fetch_add(1, std::memory_order_relaxed);
      n += done[i] == Demoted::kMoved ? 1 : 0;
      dropped += done[i] == Demoted::kDropped ? 1 : 0;
    } else if (auto it = index_.find(e->key); e->state == Entry::State::kCommitted &&
                                              it != index_.end() && it->second.get() == e) {
      AdmitLocked(e);  // still this entry: not one a writer put after deleting this one
    }
    UnpinLocked(e);
  }
  demotions_.fetch_add(n, std::memory_order_relaxed);
  evictions_.fetch_add(dropped, std::memory_order_relaxed);
  return n;
}

WarmTier::ReserveResult WarmTier::BeginPut(NamespaceId ns, const std::string& scope,
                                           std::span<const PutBlock> blocks, uint64_t ttl_ms,
                                           bool may_evict, uint64_t into) {
  ReserveResult result;
  result.status.reserve(blocks.size());
  result.addresses.assign(blocks.size(), nullptr);
  auto fresh = std::make_unique<Reservation>();
  const uint64_t quota =
      scope != kSharedScope && options_.scope_quota ? options_.scope_quota(scope) : 0;
  absl::MutexLock lock(&mu_);
  Reservation* reservation = fresh.get();
  if (auto it = reservations_.find(into);
      into != 0 && it != reservations_.end() && !it->second->committing) {
    reservation = it->second.get();
    result.reservation_id = into;
  }
  for (size_t i = 0; i < blocks.size(); ++i) {
    const PutBlock& b = blocks[i];
    BlockKey key{ns, scope, b.hash};
    uint64_t parent_handle = b.parent_handle;
    // Copies (the rebalancer's come in key order, not chain order) get no guessed parent.
    if (parent_handle == kNoBlock && !b.copy && i > 0 && b.depth > 0 &&
        blocks[i - 1].depth + 1 == b.depth) {
      parent_handle = PolicyHandle(BlockKey{ns, scope, blocks[i - 1].hash});
    }
    if (b.size == 0 || b.size > options_.max_block_bytes) {
      // Callers check sizes first; a block that slipped through (a disk block stored under a
      // larger max_block_bytes) must not get a slot it would overrun.
      result.status.push_back(absl::InvalidArgumentError(absl::StrCat(
          "block of ", b.size, " bytes: want 1 .. max_block_bytes ", options_.max_block_bytes)));
      continue;
    }
    const uint64_t handle = PolicyHandle(key);
    if (absl::Status gone = CheckTombstoneLocked(key, b.copy); !gone.ok()) {
      result.status.push_back(std::move(gone));
      continue;
    }
    auto it = index_.find(key);
    if (it != index_.end()) {
      // A put of the same block still being written, which a writer's Delete doomed: this
      // writer wants the block again, so that commit stores it after all (the hash names
      // the same bytes), rather than this put being told it exists while it never will.
      if (!b.copy) it->second->deleted = false;
      result.status.push_back(absl::AlreadyExistsError(
          it->second->state == Entry::State::kCommitted ? "present" : kBlockBeingWritten));
      continue;
    }
    uint16_t cls = SlotClass(b.size);
    if (quota > 0) {
      auto held = scope_used_.find(scope);
      const uint64_t used = held == scope_used_.end() ? 0 : held->second;
      if (used + arena_->ClassBytes(cls) > quota) {
        result.status.push_back(TenantQuotaError(scope, used, "warm", quota));
        continue;
      }
    }
    std::optional<Slot> slot = AllocateLocked(cls, may_evict);
    if (!slot) {
      result.status.push_back(absl::ResourceExhaustedError(absl::StrCat(
          "warm tier full: ", FormatByteSize(arena_->capacity_bytes()),
          " all pinned or reserved; no room for a ", FormatByteSize(b.size), " block")));
      continue;
    }
    auto entry = std::make_unique<Entry>();
    entry->key = key;
    entry->slot = *slot;
    entry->size = b.size;
    entry->depth = b.depth;
    entry->importance = b.importance;
    entry->session = b.session;
    entry->prefetched = b.prefetched;
    entry->handle = handle;
    entry->parent_handle = parent_handle;
    std::vector<Entry*>& owners = slot_owner_[slot->page];
    uint32_t slots = arena_->SlotsPerPage(cls);
    if (owners.size() != slots) owners.assign(slots, nullptr);
    owners[slot->index] = entry.get();
    used_bytes_ += arena_->ClassBytes(cls);
    scope_used_[scope] += arena_->ClassBytes(cls);
    reservation->entries.push_back(entry.get());
    index_.emplace(std::move(key), std::move(entry));
    result.status.push_back(absl::OkStatus());
    result.addresses[i] = arena_->Address(*slot);
  }
  if (reservation == fresh.get() && !fresh->entries.empty()) {
    absl::StatusOr<uint64_t> id = NewIdLocked();
    if (!id.ok()) {
      // No id that another tenant cannot guess: reserve nothing.
      ReleaseReservationLocked(*fresh);
      for (size_t i = 0; i < blocks.size(); ++i) {
        if (result.addresses[i] == nullptr) continue;
        result.status[i] = id.status();
        result.addresses[i] = nullptr;
      }
      return result;
    }
    fresh->expires_ms = options_.now_ms() + static_cast<int64_t>(ttl_ms);
    result.reservation_id = *id;
    reservations_.emplace(result.reservation_id, std::move(fresh));
  }
  return result;
}

void WarmTier::ReleaseReservationLocked(Reservation& r) {
  for (Entry* e : r.entries) {
    if (e->state != Entry::State::kCommitted) RemoveLocked(e);
  }
  r.entries.clear();
}

absl::StatusOr<std::vector<absl::Status>> WarmTier::CommitPut(uint64_t reservation_id,
                                                              std::span<const CommitBlock> blocks) {
  std::vector<absl::Status> results(blocks.size());
  std::vector<Entry*> targets(blocks.size(), nullptr);
  {
    absl::MutexLock lock(&mu_);
    auto it = reservations_.find(reservation_id);
    if (it == reservations_.end()) {
      return absl::NotFoundError(
          absl::StrCat("reservation_id ", reservation_id, ": unknown or expired"));
    }
    Reservation& r = *it->second;
    if (r.committing) {
      return absl::FailedPreconditionError(
          absl::StrCat("reservation_id ", reservation_id, ": a commit is already in progress"));
    }
    r.committing = true;  // the reaper leaves it alone while bytes are copied
    absl::flat_hash_map<ChainHash, Entry*> by_hash;
    for (Entry* e : r.entries) by_hash.emplace(e->key.hash, e);
    for (size_t i = 0; i < blocks.size(); ++i) {
      auto e = by_hash.find(blocks[i].hash);
      if (e == by_hash.end()) {
        results[i] = absl::FailedPreconditionError(absl::StrCat(
            "blocks[", i, "].chain_hash: not reserved by reservation ", reservation_id));
      } else if (e->second->state != Entry::State::kReserved) {
        results[i] = absl::InvalidArgumentError(
            absl::StrCat("blocks[", i, "].chain_hash: named twice in one commit"));
      } else if (e->second->deleted) {
        results[i] = DeletedWhileWritten(i);
      } else if ((blocks[i].landed ? blocks[i].landed_size : blocks[i].payload.size()) !=
                 e->second->size) {
        results[i] = absl::InvalidArgumentError(
            absl::StrCat("blocks[", i, "].payload: ", blocks[i].payload.size(), " bytes, reserved ",
                         e->second->size));
      } else {
        e->second->state = Entry::State::kCommitting;
        targets[i] = e->second;
      }
    }
  }
  // Copy and verify outside the lock: the slots belong to this reservation alone.
  std::vector<bool> intact(blocks.size(), false);
  for (size_t i = 0; i < blocks.size(); ++i) {
    if (targets[i] == nullptr) continue;
    if (blocks[i].landed && blocks[i].checked) {
      intact[i] = blocks[i].intact;
      continue;
    }
    uint8_t* dst = arena_->Address(targets[i]->slot);
    if (!blocks[i].landed) std::memcpy(dst, blocks[i].payload.data(), blocks[i].payload.size());
    intact[i] = BlockChecksum(dst, targets[i]->size) == blocks[i].checksum;
  }
  absl::MutexLock lock(&mu_);
  auto it = reservations_.find(reservation_id);
  Reservation& r = *it->second;
  for (size_t i = blocks.size(); i > 0; --i) {
    Entry* e = targets[i - 1];
    if (e == nullptr) continue;
    if (e->deleted) {  // a writer's Delete came while the bytes were copied
      results[i - 1] = DeletedWhileWritten(i - 1);
      continue;
    }
    if (!intact[i - 1]) {
      results[i - 1] = absl::DataLossError(
          absl::StrFormat("blocks[%d]: checksum of the bytes that landed differs from 0x%016x",
                          i - 1, blocks[i - 1].checksum));
      data_loss_.fetch_add(1, std::memory_order_relaxed);
      continue;  // released below with the rest of the reservation
    }
    e->checksum = blocks[i - 1].checksum;
    e->state = Entry::State::kCommitted;
    e->commit_seq = ++commits_;
    if (!e->session.empty()) by_session_[e->session].insert(e);
    by_handle_[e->handle] = e;
    AdmitLocked(e);
    ++committed_;
    payload_bytes_ += e->size;
  }
  ReleaseReservationLocked(r);
  reservations_.erase(it);
  return results;
}

absl::Status WarmTier::AbortPut(uint64_t reservation_id, int64_t quarantine_ms) {
  const int64_t until = quarantine_ms > 0 ? options_.now_ms() + quarantine_ms : 0;
  absl::MutexLock lock(&mu_);
  auto it = reservations_.find(reservation_id);
  if (it == reservations_.end()) {
    return absl::NotFoundError(
        absl::StrCat("reservation_id ", reservation_id, ": unknown or expired"));
  }
  if (it->second->committing) {
    return absl::FailedPreconditionError(
        absl::StrCat("reservation_id ", reservation_id, ": a commit is in progress"));
  }
  if (until != 0) {
    // Pinned, the entries leave the index for doomed_ with their slots (RemoveLocked). The
    // node's budget still counts the slots; the writer's quota does not (its retry fits).
    for (Entry* e : it->second->entries) {
      if (e->state == Entry::State::kCommitted) continue;
      if (e->pins++ == 0) ++pinned_;
      UnchargeScopeLocked(e);
      quarantined_.emplace_back(e, until);
    }
  }
  ReleaseReservationLocked(*it->second);
  reservations_.erase(it);
  return absl::OkStatus();
}

uint64_t WarmTier::Delete(NamespaceId ns, const std::string& scope,
                          std::span<const ChainHash> hashes, bool tombstone,
                          std::vector<bool>* removed) {
  uint64_t deleted = 0;
  if (removed != nullptr) removed->assign(hashes.size(), false);
  absl::MutexLock lock(&mu_);
  const int64_t now = tombstone ? options_.now_ms() : 0;
  // Tombstones are owned by the deleting scope: past capacity, the largest owner's go first.
  const uint64_t owner = XXH3_64bits_withSeed(scope.data(), scope.size(), tombstone_seed_);
  BlockKey key{ns, scope, {}};
  for (size_t i = 0; i < hashes.size(); ++i) {
    key.hash = hashes[i];
    if (tombstone) tombstones_.Add(TombstoneId(key), now, owner);
    auto it = index_.find(key);
    if (it == index_.end()) continue;
    if (it->second->state != Entry::State::kCommitted) {
      if (tombstone) it->second->deleted = true;
      continue;
    }
    RemoveLocked(it->second.get());
    ++deleted;
    if (removed != nullptr) (*removed)[i] = true;
  }
  return deleted;
}

bool WarmTier::DeletedLately(const BlockKey& key) {
  absl::MutexLock lock(&mu_);
  return tombstones_.Live(TombstoneId(key), options_.now_ms());
}

void WarmTier::ForgetDelete(const BlockKey& key) {
  absl::MutexLock lock(&mu_);
  tombstones_.Clear(TombstoneId(key));
}

uint64_t WarmTier::TombstoneId(const BlockKey& key) const {
  const std::string bytes = PolicyKeyBytes(key);
  return XXH3_64bits_withSeed(bytes.data(), bytes.size(), tombstone_seed_);
}

absl::Status WarmTier::CheckTombstoneLocked(const BlockKey& key, bool copy) {
  const uint64_t handle = TombstoneId(key);
  if (!copy) {
    tombstones_.Clear(handle);
    return absl::OkStatus();
  }
  int64_t age_ms = 0;
  if (!tombstones_.Live(handle, options_.now_ms(), &age_ms)) return absl::OkStatus();
  copies_refused_.fetch_add(1, std::memory_order_relaxed);
  return absl::FailedPreconditionError(
      absl::StrCat("block ", key.hash.ToHex(), ": deleted by a writer ", age_ms,
                   " ms ago; copies of it are refused for ", tombstones_.ttl_ms(), " ms"));
}

absl::Status WarmTier::DeletedWhileWritten(size_t index) {
  copies_refused_.fetch_add(1, std::memory_order_relaxed);
  return absl::AbortedError(
      absl::StrCat("blocks[", index, "]: deleted by a writer while being written; not stored"));
}

void WarmTier::DropCorrupt(const BlockKey& key, const uint8_t* address) {
  absl::MutexLock lock(&mu_);
  auto it = index_.find(key);
  if (it == index_.end() || it->second->state != Entry::State::kCommitted) return;
  // The entry read may have been deleted and the block put again meanwhile: the new copy is
  // another slot, and good.
  if (address != nullptr && arena_->Address(it->second->slot) != address) return;
  RemoveLocked(it->second.get());
  data_loss_.fetch_add(1, std::memory_order_relaxed);
}

uint64_t WarmTier::ExpireNow() {
  int64_t now = options_.now_ms();
  uint64_t expired = 0;
  absl::MutexLock lock(&mu_);
  for (auto it = reservations_.begin(); it != reservations_.end();) {
    if (!it->second->committing && it->second->expires_ms <= now) {
      ReleaseReservationLocked(*it->second);
      reservations_.erase(it++);
      ++expired;
    } else {
      ++it;
    }
  }
  for (size_t i = 0; i < quarantined_.size();) {
    if (quarantined_[i].second > now) {
      ++i;
      continue;
    }
    UnpinLocked(quarantined_[i].first);  // frees the slot
    quarantined_[i] = quarantined_.back();
    quarantined_.pop_back();
  }
  for (auto it = leases_.begin(); it != leases_.end();) {
    if (it->second->expires_ms <= now) {
      ReleaseLeaseLocked(*it->second);
      leases_.erase(it++);
      ++expired;
    } else {
      ++it;
    }
  }
  return expired;
}

absl::Status WarmTier::CorruptForTest(const BlockKey& key, uint64_t offset) {
  absl::MutexLock lock(&mu_);
  auto it = index_.find(key);
  if (it == index_.end() || it->second->state != Entry::State::kCommitted) {
    return absl::NotFoundError("block not present");
  }
  if (offset >= it->second->size) {
    return absl::OutOfRangeError(
        absl::StrCat("flip_byte_offset ", offset, " >= block size ", it->second->size));
  }
  arena_->Address(it->second->slot)[offset] ^= 0xff;
  return absl::OkStatus();
}

std::vector<std::pair<std::string, uint64_t>> WarmTier::ScopeBytes() const {
  absl::MutexLock lock(&mu_);
  return {scope_used_.begin(), scope_used_.end()};
}

WarmTierStats WarmTier::Stats() const {
  WarmTierStats s;
  absl::MutexLock lock(&mu_);
  s.blocks = committed_;
  s.payload_bytes = payload_bytes_;
  s.used_bytes = used_bytes_;
  s.capacity_bytes = arena_->capacity_bytes();
  s.leases = leases_.size();
  s.held_leases = held_leases_;
  s.held_bytes = held_bytes_;
  s.pinned_blocks = pinned_;
  s.reservations = reservations_.size();
  s.namespaces = namespaces_.size();
  s.hits = hits_.load(std::memory_order_relaxed);
  s.misses = misses_.load(std::memory_order_relaxed);
  s.evictions = evictions_.load(std::memory_order_relaxed);
  s.data_loss = data_loss_.load(std::memory_order_relaxed);
  s.demotions = demotions_.load(std::memory_order_relaxed);
  s.prefetch_used = prefetch_used_.load(std::memory_order_relaxed);
  s.prefetch_wasted = prefetch_wasted_.load(std::memory_order_relaxed);
  s.tombstones = tombstones_.size();
  s.copies_refused = copies_refused_.load(std::memory_order_relaxed);
  return s;
}

}  // namespace strata::storenode
