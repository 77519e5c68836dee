#include "strata/storenode/tombstones.h"

#include <deque>

namespace strata::storenode {

void Tombstones::Add(uint64_t handle, int64_t now_ms) {
  if (capacity_ == 0 || ttl_ms_ <= 0) return;
  auto [it, fresh] = deleted_at_.try_emplace(handle, now_ms);
  // One queue entry per tombstone: the same delete again in the same millisecond adds none.
  if (fresh || it->second != now_ms) {
    it->second = now_ms;
    order_.emplace_back(handle, now_ms);
  }
  Prune(now_ms);
}

bool Tombstones::Live(uint64_t handle, int64_t now_ms, int64_t* age_ms) {
  Prune(now_ms);
  auto it = deleted_at_.find(handle);
  if (it == deleted_at_.end()) return false;
  if (age_ms != nullptr) *age_ms = now_ms - it->second;
  return true;
}

void Tombstones::Prune(int64_t now_ms) {
  // The oldest tombstone goes once it expired, or while there are too many; stale entries
  // (cleared, or deleted again since) go as they reach the front.
  while (!order_.empty()) {
    const auto [handle, at] = order_.front();
    auto it = deleted_at_.find(handle);
    if (it != deleted_at_.end() && it->second == at) {
      if (at + ttl_ms_ > now_ms && deleted_at_.size() <= capacity_) break;
      deleted_at_.erase(it);
    }
    order_.pop_front();
  }
  // Stale entries behind a live one (many deletes and puts of the same blocks) are dropped
  // in one sweep once they outnumber the live ones: the queue stays within 2 x capacity.
  if (order_.size() > 2 * capacity_ + 16) {
    std::deque<std::pair<uint64_t, int64_t>> live;
    for (const auto& [handle, at] : order_) {
      auto it = deleted_at_.find(handle);
      if (it != deleted_at_.end() && it->second == at) live.emplace_back(handle, at);
    }
    order_.swap(live);
  }
}

}  // namespace strata::storenode
