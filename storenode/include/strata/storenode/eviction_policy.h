// EvictionPolicy: decides which resident block a tier gives up next. A tier tells its policy
// about every block it admits (Insert), reads (Access) and drops (Erase), and asks it for a
// victim when it is over budget (Victim). The policy only ranks handles; it never owns or
// frees block bytes, and it never erases a block by itself: the tier erases the victim.
//
// Four policies (see docs/design/eviction-policies.md for their measured hit ratios):
//   lru     least recently used.
//   lfu     least frequently used with dynamic aging (LFU-DA): rank = L + accesses since
//           insertion, where L is the rank of the last victim, so old popular blocks age out.
//   prefix  chain-aware LRU: only leaves (blocks with no resident child) are victims, so a
//           prefix chain is always cut from its end and never keeps a descendant of an
//           evicted block.
//   cost    chain-aware (leaves only) and ranked by expected value: an exponentially decayed
//           access frequency (which carries recency) that survives eviction in a bounded
//           history, scaled by the block's importance, recompute cost and depth.
//
// Not thread-safe: the owning tier serializes calls (it already holds its index lock).
// Access is O(1) and allocation-free while at most max_lazy_touches blocks wait for a
// re-rank: a touched block is re-ranked when Victim's walk reaches its old rank, so a block
// touched many times between evictions is re-ranked once; past that many, a touch re-ranks
// its block at once (O(log n)). Every other method runs in O(log n) amortized for n
// resident blocks, plus O(children) when a block with resident children is admitted or
// erased; Victim also steps over the blocks that `evictable` rejects and re-ranks, once
// each, the waiting blocks ranked below its answer (at most max_lazy_touches). Victims are
// the same as if every touch were re-ranked at once.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string_view>

#include "absl/status/statusor.h"
#include "strata/common/block_key.h"

namespace strata::storenode {

inline constexpr uint64_t kNoBlock = ~0ull;

// What a tier knows about a block when it admits it.
struct BlockTraits {
  uint64_t size = 0;           // bytes
  uint32_t depth = 0;          // index of the block in its chain (0 = first)
  uint64_t parent = kNoBlock;  // handle of the chain parent, if the owner knows it
  float importance = 0;  // 0..1 attention-weighted retention score sent by the writer; 0 = unknown
  float recompute_cost = 1;  // relative cost to recompute the block vs reloading it
};

class EvictionPolicy {  // not thread-safe; the owning tier serializes calls
 public:
  virtual ~EvictionPolicy() = default;

  // Admits `handle` at time `now` (any non-decreasing clock the owner likes: ms, a counter).
  // While traits.parent is resident (admitted before or after this block) and has a smaller
  // depth, the block is its resident child, and chain-aware policies do not pick the parent.
  // Inserting a resident handle acts as Access(handle, now); its traits are then ignored.
  virtual void Insert(uint64_t handle, const BlockTraits& traits, uint64_t now) = 0;
  // Records a read (or rewrite) of `handle` at `now`. No effect if `handle` is not resident.
  virtual void Access(uint64_t handle, uint64_t now) = 0;
  // Access(handles[k], first_now + k) for k = 0, 1, ... in that order: a lookup's touches,
  // which a policy may look up all at once before applying them in order.
  virtual void AccessEach(std::span<const uint64_t> handles, uint64_t first_now) {
    for (uint64_t h : handles) Access(h, first_now++);
  }
  // Forgets `handle` (evicted, deleted or moved to another tier). No effect if not resident.
  // Its parent becomes a leaf again once its last resident child is erased.
  virtual void Erase(uint64_t handle) = 0;
  // Best victim among resident blocks for which evictable(handle) is true; nullopt if none.
  // Does not remove it: the caller erases it (or not, e.g. if its eviction then fails).
  // `evictable` may reject pinned blocks; they keep their rank for later calls.
  virtual std::optional<uint64_t> Victim(const std::function<bool(uint64_t)>& evictable) = 0;
  virtual std::string_view name() const = 0;
  // Resident blocks.
  virtual size_t size() const = 0;
};

enum class PolicyKind { kLru, kLfu, kPrefix, kCost };

// Knobs of the policies; the cost policy's defaults are what the trace simulator measured
// best (docs/design/eviction-policies.md).
struct EvictionPolicyOptions {
  // A block's access frequency halves every `cost_half_life` Insert/Access calls. 0 means
  // cost_half_life_per_block × the largest number of resident blocks seen so far, so the
  // memory of the policy scales with the tier's capacity without configuration.
  double cost_half_life = 0;
  double cost_half_life_per_block = 2;
  // Frequency credited to a block inserted with no history: below 1 so that a block seen
  // once ranks under one that was read again.
  double cost_new_block_weight = 0.25;
  // Evicted blocks whose frequency is remembered, as a multiple of the largest number of
  // resident blocks seen (bounded memory: 0 disables the history).
  double cost_history_per_block = 8;
  // Value multiplier (1 + cost_importance_weight × importance).
  double cost_importance_weight = 1;
  // Value multiplier (1 + depth)^cost_depth_exponent.
  double cost_depth_exponent = 0;
  // Every policy: touched blocks whose re-rank may wait for the next Victim (which then
  // re-ranks those ranked below its answer, ~0.3 µs each); 0 re-ranks every touch at once.
  size_t max_lazy_touches = 4096;
};

// Parses "lru", "lfu", "prefix" or "cost". INVALID_ARGUMENT (listing them) otherwise.
absl::StatusOr<PolicyKind> ParsePolicyKind(std::string_view name);
std::string_view PolicyKindName(PolicyKind kind);

// The handle a tier gives `key` in its policy: a 64-bit hash of the key, so a tier can name a
// block's chain parent (same namespace and scope) without holding it. Two keys sharing a
// handle (odds ~n²/2^65 for n blocks, but a caller can forge one: it is unkeyed) would only
// mis-rank them, never mix their bytes: tiers map a victim handle back to a key through their
// own index. Tombstones, which must not be forgeable, use a keyed hash of PolicyKeyBytes.
uint64_t PolicyHandle(const BlockKey& key);
// The bytes PolicyHandle hashes: namespace, scope length, scope, chain hash (one key's, and
// no other key's).
std::string PolicyKeyBytes(const BlockKey& key);

// A new, empty policy. Never fails.
std::unique_ptr<EvictionPolicy> MakeEvictionPolicy(PolicyKind kind,
                                                   const EvictionPolicyOptions& options = {});

}  // namespace strata::storenode
