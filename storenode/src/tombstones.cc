#include "strata/storenode/tombstones.h"

namespace strata::storenode {

void Tombstones::Add(uint64_t handle, int64_t now_ms) {
  if (capacity_ == 0 || ttl_ms_ <= 0) return;
  deleted_at_[handle] = now_ms;
  order_.emplace_back(handle, now_ms);
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
  while (!order_.empty()) {
    const auto [handle, at] = order_.front();
    auto it = deleted_at_.find(handle);
    if (it != deleted_at_.end() && it->second == at) {
      // The oldest tombstone goes once it expired, or when there are too many (the queue's
      // bound counts the stale entries that Clear and repeated deletes leave behind).
      const bool expired = at + ttl_ms_ <= now_ms;
      const bool over = deleted_at_.size() > capacity_ || order_.size() > 2 * capacity_ + 16;
      if (!expired && !over) break;
      deleted_at_.erase(it);
    }
    order_.pop_front();
  }
}

}  // namespace strata::storenode
