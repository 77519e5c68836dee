// Tombstones: which blocks a writer deleted lately, so that a copy of one still on its way
// (the rebalancer's, a reader's read-repair, a promotion from a lower tier) does not bring it
// back (docs/design/cluster.md, "Deletes"). A tombstone lives `ttl_ms`, longer than any copy
// may take; at most `capacity` live at once, the oldest going first. Keys are held as a 64-bit
// hash under a random seed (WarmTier::TombstoneId), which no caller can aim at another
// scope's block: a chance collision refuses one copy too many (the block stays
// under-replicated until a writer puts it again), never keeps a deleted block.
//
// Not thread-safe: the warm tier keeps its tombstones under its own lock.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <utility>

#include "absl/container/flat_hash_map.h"

namespace strata::storenode {

class Tombstones {
 public:
  Tombstones(size_t capacity, int64_t ttl_ms) : capacity_(capacity), ttl_ms_(ttl_ms) {}

  // Block `handle` was deleted at `now_ms`. A no-op with capacity or ttl 0.
  void Add(uint64_t handle, int64_t now_ms);
  // Whether `handle` was deleted within ttl_ms of `now_ms`, and how long ago (ms).
  bool Live(uint64_t handle, int64_t now_ms, int64_t* age_ms = nullptr);
  // A writer stored the block again: copies are welcome from now on.
  void Clear(uint64_t handle) { deleted_at_.erase(handle); }

  size_t size() const { return deleted_at_.size(); }
  int64_t ttl_ms() const { return ttl_ms_; }

 private:
  // Drops what expired by `now_ms`, then the oldest beyond capacity_.
  void Prune(int64_t now_ms);

  const size_t capacity_;
  const int64_t ttl_ms_;
  absl::flat_hash_map<uint64_t, int64_t> deleted_at_;
  // Every Add in time order; an entry whose map value differs (cleared, deleted again) is stale.
  std::deque<std::pair<uint64_t, int64_t>> order_;
};

}  // namespace strata::storenode
