#include "strata/storenode/tombstones.h"

namespace strata::storenode {

void Tombstones::Add(uint64_t handle, int64_t now_ms, uint64_t owner) {
  if (capacity_ == 0 || ttl_ms_ <= 0) return;
  auto it = deleted_.find(handle);
  // One queue entry per tombstone: the same delete again in the same millisecond adds none.
  if (it != deleted_.end() && it->second.at == now_ms && it->second.owner == owner) return;
  if (it != deleted_.end() && it->second.owner != owner) {
    Erase(handle);  // another owner's (a chance collision): the newer delete holds it now
    it = deleted_.end();
  }
  Owner& o = owners_[owner];
  if (it == deleted_.end()) {
    by_live_.erase({o.live, owner});
    by_live_.insert({++o.live, owner});
    deleted_[handle] = Mark{now_ms, owner};
  } else {
    it->second.at = now_ms;  // deleted again: its older queue entries are stale now
  }
  order_.emplace_back(handle, now_ms);
  o.order.emplace_back(handle, now_ms);
  Compact(o.order, o.live, owner);
  Prune(now_ms);
}

bool Tombstones::Live(uint64_t handle, int64_t now_ms, int64_t* age_ms) {
  Prune(now_ms);
  auto it = deleted_.find(handle);
  if (it == deleted_.end()) return false;
  if (age_ms != nullptr) *age_ms = now_ms - it->second.at;
  return true;
}

void Tombstones::Clear(uint64_t handle) {
  if (deleted_.contains(handle)) Erase(handle);
}

bool Tombstones::Current(const std::pair<uint64_t, int64_t>& entry,
                         std::optional<uint64_t> owner) const {
  auto it = deleted_.find(entry.first);
  return it != deleted_.end() && it->second.at == entry.second &&
         (!owner || it->second.owner == *owner);
}

void Tombstones::Erase(uint64_t handle) {
  auto it = deleted_.find(handle);
  const uint64_t owner = it->second.owner;
  deleted_.erase(it);
  auto o = owners_.find(owner);
  by_live_.erase({o->second.live, owner});
  if (--o->second.live == 0) {
    owners_.erase(o);  // with its queue, whose entries are all stale now
  } else {
    by_live_.insert({o->second.live, owner});
  }
}

void Tombstones::Prune(int64_t now_ms) {
  // Expired ones go from the front of the time order; stale entries (cleared, deleted again,
  // pushed out) go as they reach it.
  while (!order_.empty()) {
    if (Current(order_.front())) {
      if (order_.front().second + ttl_ms_ > now_ms) break;
      Erase(order_.front().first);
    }
    order_.pop_front();
  }
  // Past capacity: the oldest of the owner holding the most.
  while (deleted_.size() > capacity_) {
    const uint64_t owner = by_live_.rbegin()->second;
    Queue& q = owners_.find(owner)->second.order;
    while (!Current(q.front(), owner)) q.pop_front();
    const uint64_t handle = q.front().first;
    q.pop_front();
    Erase(handle);  // may erase the owner and its queue
  }
  Compact(order_, deleted_.size());
}

void Tombstones::Compact(Queue& q, size_t live, std::optional<uint64_t> owner) const {
  // Stale entries behind a live one (many deletes and puts of the same blocks) are dropped in
  // one sweep once they outnumber the live ones: a queue stays within 2 x its live entries.
  if (q.size() <= 2 * live + 16) return;
  Queue kept;
  for (const auto& entry : q) {
    if (Current(entry, owner)) kept.push_back(entry);
  }
  q.swap(kept);
}

}  // namespace strata::storenode
