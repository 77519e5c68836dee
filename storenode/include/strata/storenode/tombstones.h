// Tombstones: which blocks a writer deleted lately, so that a copy of one still on its way
// (the rebalancer's, a reader's read-repair, a promotion from a lower tier) does not bring it
// back (docs/design/cluster.md, "Deletes"). A tombstone lives `ttl_ms`, longer than any copy
// may take; at most `capacity` live at once. Keys are held as a 64-bit hash under a random
// seed (WarmTier::TombstoneId), which no caller can aim at another scope's block: a chance
// collision refuses one copy too many (the block stays under-replicated until a writer puts
// it again), never keeps a deleted block.
//
// Each tombstone has an owner (the deleting scope, as a hash). Past capacity, the oldest of
// the owner holding the most goes: a tenant deleting without end pushes out its own
// tombstones, not another's (an owner holding at most capacity / owners is never pushed out).
//
// Not thread-safe: the warm tier keeps its tombstones under its own lock.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <optional>
#include <set>
#include <utility>

#include "absl/container/flat_hash_map.h"

namespace strata::storenode {

class Tombstones {
 public:
  Tombstones(size_t capacity, int64_t ttl_ms) : capacity_(capacity), ttl_ms_(ttl_ms) {}

  // Block `handle` was deleted by `owner` at `now_ms`. A no-op with capacity or ttl 0.
  void Add(uint64_t handle, int64_t now_ms, uint64_t owner = 0);
  // Whether `handle` was deleted within ttl_ms of `now_ms`, and how long ago (ms).
  bool Live(uint64_t handle, int64_t now_ms, int64_t* age_ms = nullptr);
  // A writer stored the block again: copies are welcome from now on.
  void Clear(uint64_t handle);

  size_t size() const { return deleted_.size(); }
  // Owners holding live tombstones now.
  size_t owners() const { return owners_.size(); }
  int64_t ttl_ms() const { return ttl_ms_; }

 private:
  struct Mark {
    int64_t at;
    uint64_t owner;
  };
  using Queue = std::deque<std::pair<uint64_t, int64_t>>;  // (handle, at) in time order
  struct Owner {
    Queue order;  // this owner's Adds; an entry whose Mark differs is stale
    size_t live = 0;
  };
  // Whether a queue entry is still the tombstone it was added as (and still `owner`'s).
  bool Current(const std::pair<uint64_t, int64_t>& entry,
               std::optional<uint64_t> owner = std::nullopt) const;
  void Erase(uint64_t handle);
  // Drops what expired by `now_ms`, then beyond capacity_ the oldest of the largest owner.
  void Prune(int64_t now_ms);
  // Sweeps the stale entries out of `q` (`owner`'s queue, or the time order) once they
  // outnumber the live ones (`live`).
  void Compact(Queue& q, size_t live, std::optional<uint64_t> owner = std::nullopt) const;

  const size_t capacity_;
  const int64_t ttl_ms_;
  absl::flat_hash_map<uint64_t, Mark> deleted_;
  Queue order_;  // every Add in time order, for the ttl
  absl::flat_hash_map<uint64_t, Owner> owners_;
  std::set<std::pair<size_t, uint64_t>> by_live_;  // (live, owner): the largest last
};

}  // namespace strata::storenode
