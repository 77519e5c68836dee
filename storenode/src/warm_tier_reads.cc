// WarmTier's reads: BeginGet pins (and may copy) blocks under a lease; EndGet, JoinLease and
// HoldLease manage leases; Keys and the key walk list what it holds. The rest of the tier is
// in warm_tier.cc.
#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "strata/common/byte_size.h"
#include "strata/common/checksum.h"
#include "strata/common/random.h"
#include "strata/storenode/warm_tier.h"
#include "warm_tier_records.h"

namespace strata::storenode {

WarmTier::GetResult WarmTier::BeginGet(NamespaceId ns, const std::string& scope,
                                       std::span<const ChainHash> hashes, uint64_t ttl_ms,
                                       const CopySink& sink, uint64_t max_copy_bytes, bool count) {
  GetResult result;
  result.status.resize(hashes.size());
  result.blocks.resize(hashes.size());
  std::vector<Entry*> pinned(hashes.size(), nullptr);
  {
    absl::MutexLock lock(&mu_);
    uint64_t copy_bytes = 0;
    uint64_t found = 0;
    BlockKey key{ns, scope, {}};
    for (size_t i = 0; i < hashes.size(); ++i) {
      key.hash = hashes[i];
      auto it = index_.find(key);
      if (it == index_.end() || it->second->state != Entry::State::kCommitted) {
        result.status[i] = absl::NotFoundError("not present");
        continue;
      }
      Entry* e = it->second.get();
      ++found;
      if (sink && copy_bytes + e->size > max_copy_bytes) {
        result.status[i] = absl::ResourceExhaustedError(
            absl::StrCat("inline limit of ", max_copy_bytes, " bytes per call reached; ask again"));
        continue;
      }
      copy_bytes += e->size;
      if (e->prefetched) {
        e->prefetched = false;
        prefetch_used_.fetch_add(1, std::memory_order_relaxed);
      }
      if (e->pins++ == 0) ++pinned_;
      pinned[i] = e;
      result.blocks[i] = {e->size,  e->checksum,  2, arena_->Address(e->slot),
                          e->depth, e->importance};
    }
    for (size_t i = hashes.size(); i > 0; --i) {
      if (pinned[i - 1] != nullptr) TouchLocked(pinned[i - 1]);
    }
    if (count) {
      hits_.fetch_add(found, std::memory_order_relaxed);
      misses_.fetch_add(hashes.size() - found, std::memory_order_relaxed);
    }
  }
  // Pinned blocks cannot move or be freed; copy them without the lock. The checksum is
  // taken over the copy, so what is verified is exactly what the caller receives.
  std::vector<bool> corrupt(hashes.size(), false);
  if (sink) {
    for (size_t i = 0; i < hashes.size(); ++i) {
      if (pinned[i] == nullptr) continue;
      uint8_t* dst = sink(i, result.blocks[i].size);
      if (dst == nullptr) continue;
      std::memcpy(dst, arena_->Address(pinned[i]->slot), result.blocks[i].size);
      corrupt[i] = BlockChecksum(dst, result.blocks[i].size) != result.blocks[i].checksum;
    }
  }
  absl::MutexLock lock(&mu_);
  auto lease = std::make_unique<Lease>();
  for (size_t i = 0; i < hashes.size(); ++i) {
    Entry* e = pinned[i];
    if (e == nullptr) continue;
    if (corrupt[i]) {
      result.status[i] =
          absl::DataLossError("stored bytes fail their checksum; block dropped (never served)");
      data_loss_.fetch_add(1, std::memory_order_relaxed);
      auto it = index_.find(e->key);
      if (it != index_.end() && it->second.get() == e) RemoveLocked(e);
      UnpinLocked(e);
      continue;
    }
    lease->entries.push_back(e);
    // What the pin holds of the arena: the block's whole slot (min_slot_bytes or more), not
    // its payload, so that max_lease_bytes bounds the arena that held leases take.
    lease->bytes += arena_->ClassBytes(e->slot.size_class);
  }
  if (lease->entries.empty()) return result;
  absl::StatusOr<uint64_t> id = NewIdLocked();
  if (!id.ok()) {
    // No id that another tenant cannot guess: serve nothing.
    for (size_t i = 0; i < hashes.size(); ++i) {
      if (pinned[i] == nullptr || corrupt[i]) continue;
      UnpinLocked(pinned[i]);
      result.status[i] = id.status();
      result.blocks[i] = {};
    }
    return result;
  }
  lease->expires_ms = options_.now_ms() + static_cast<int64_t>(ttl_ms);
  result.lease_id = *id;
  leases_.emplace(result.lease_id, std::move(lease));
  return result;
}

absl::StatusOr<uint64_t> WarmTier::NewIdLocked() {
  // Random, not counted: a lease or reservation id is a capability (whoever names it may end
  // the lease or commit into the reservation), so another tenant must not guess one.
  uint64_t id = 0;
  while (id == 0 || leases_.contains(id) || reservations_.contains(id)) {
    absl::StatusOr<uint64_t> drawn = RandomU64();
    if (!drawn.ok()) return drawn.status();
    id = *drawn;
  }
  return id;
}

absl::Status WarmTier::JoinLease(uint64_t into, uint64_t from) {
  absl::MutexLock lock(&mu_);
  auto to = leases_.find(into);
  auto it = leases_.find(from);
  if (to == leases_.end() || it == leases_.end() || into == from) {
    return absl::NotFoundError(absl::StrCat("lease_id ", into, " or ", from, ": unknown"));
  }
  Lease& a = *to->second;
  Lease& b = *it->second;
  for (Entry* e : b.entries) a.entries.push_back(e);
  a.expires_ms = std::max(a.expires_ms, b.expires_ms);
  // A held lease stays held, and counts the bytes it gains (one held lease fewer if both were).
  if (a.held != b.held) held_bytes_ += a.held ? b.bytes : a.bytes;
  if (a.held && b.held) --held_leases_;
  a.held = a.held || b.held;
  a.bytes += b.bytes;
  leases_.erase(it);
  return absl::OkStatus();
}

absl::Status WarmTier::HoldLease(uint64_t lease_id) {
  absl::MutexLock lock(&mu_);
  auto it = leases_.find(lease_id);
  if (it == leases_.end()) {
    return absl::NotFoundError(absl::StrCat("lease_id ", lease_id, ": unknown or expired"));
  }
  Lease& lease = *it->second;
  if (lease.held) return absl::OkStatus();
  const uint64_t max_bytes =
      options_.max_held_bytes != 0 ? options_.max_held_bytes : arena_->capacity_bytes() / 2;
  absl::Status refused;
  if (held_leases_ >= options_.max_held_leases) {
    refused = absl::ResourceExhaustedError(
        absl::StrCat("read leases: the node holds ", held_leases_,
                     " leases, its max_leases; end leases (EndGet) or read with the payload"));
  } else if (held_bytes_ + lease.bytes > max_bytes) {
    refused = absl::ResourceExhaustedError(
        absl::StrCat("read leases: held leases pin ", FormatByteSize(held_bytes_), "; this one's ",
                     FormatByteSize(lease.bytes), " would pass max_lease_bytes ",
                     FormatByteSize(max_bytes), "; end leases (EndGet) or read with the payload"));
  }
  if (!refused.ok()) {
    ReleaseLeaseLocked(lease);
    leases_.erase(it);
    return refused;
  }
  lease.held = true;
  ++held_leases_;
  held_bytes_ += lease.bytes;
  return absl::OkStatus();
}

absl::Status WarmTier::EndGet(uint64_t lease_id) {
  absl::MutexLock lock(&mu_);
  auto it = leases_.find(lease_id);
  if (it == leases_.end()) {
    return absl::NotFoundError(absl::StrCat("lease_id ", lease_id, ": unknown or expired"));
  }
  ReleaseLeaseLocked(*it->second);
  leases_.erase(it);
  return absl::OkStatus();
}

std::vector<BlockKey> WarmTier::Keys() const {
  std::vector<BlockKey> keys;
  KeyCursor all{.page = 0, .before = UINT64_MAX};
  while (NextKeys(&all, SIZE_MAX, &keys)) {
  }
  return keys;
}

WarmTier::KeyCursor WarmTier::BeginKeys() const {
  absl::MutexLock lock(&mu_);
  return KeyCursor{.page = 0, .before = commits_ + 1};
}

bool WarmTier::NextKeys(KeyCursor* cursor, size_t min, std::vector<BlockKey>* out) const {
  // A page at a time under the lock, so that a walk over millions of blocks (the rebalancer's,
  // every rebalance_interval) holds it for one page's slots at most, and puts and gets go on
  // between pages. A block keeps its slot while it is resident, so each block resident for
  // the whole walk is listed once; one removed and stored again has a later commit, and is not.
  // (The list grows outside the lock: moving a million keys to a larger vector takes long.)
  const size_t first = out->size();
  std::vector<BlockKey> page_keys;
  bool read = false;
  while (out->size() - first < min) {
    page_keys.clear();
    {
      absl::MutexLock lock(&mu_);
      if (cursor->page >= slot_owner_.size()) break;
      for (Entry* e : slot_owner_[cursor->page]) {
        if (e == nullptr || e->state != Entry::State::kCommitted) continue;
        if (e->commit_seq >= cursor->before) continue;
        if (!doomed_.empty() && doomed_.contains(e)) continue;  // deleted, still pinned
        page_keys.push_back(e->key);
      }
    }
    ++cursor->page;
    read = true;
    out->insert(out->end(), std::make_move_iterator(page_keys.begin()),
                std::make_move_iterator(page_keys.end()));
  }
  return read;
}

bool WarmTier::ResidentSince(const BlockKey& key, uint64_t before) const {
  return ResidentSinceEach({&key, 1}, before)[0];
}

std::vector<bool> WarmTier::ResidentSinceEach(std::span<const BlockKey> keys,
                                              uint64_t before) const {
  std::vector<bool> out(keys.size());
  absl::MutexLock lock(&mu_);
  for (size_t i = 0; i < keys.size(); ++i) {
    auto it = index_.find(keys[i]);
    out[i] = it != index_.end() && it->second->state == Entry::State::kCommitted &&
             it->second->commit_seq < before;
  }
  return out;
}

}  // namespace strata::storenode
