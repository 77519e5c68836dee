#include "strata/storenode/eviction_policy.h"

#include <algorithm>
#include <cmath>
#include <deque>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "strata/common/checksum.h"

namespace strata::storenode {
namespace {

// A ranked block; the smallest rank is the next victim. `seq` is unique per touch, so ranks
// never tie and equal scores fall back to least recently touched first.
struct Rank {
  double score = 0;
  uint64_t seq = 0;
  uint64_t handle = 0;
  friend bool operator<(const Rank& a, const Rank& b) {
    if (a.score != b.score) return a.score < b.score;
    return a.seq < b.seq;
  }
};

// Shared bookkeeping: the resident index, chain links and the ordered set of candidates.
// Subclasses only say how a touch changes a block's score. With `leaves_only`, blocks with a
// resident child are kept out of the ordered set, so Victim never sees them.
class RankedPolicy : public EvictionPolicy {
 public:
  void Insert(uint64_t handle, const BlockTraits& traits, uint64_t now) final {
    if (blocks_.contains(handle)) {
      Access(handle, now);
      return;
    }
    Block& block = blocks_[handle];
    block.traits = traits;
    block.last_access = now;
    block.accesses = 1;
    if (HasParent(handle, traits)) {
      std::vector<uint64_t>& siblings = children_of_[traits.parent];
      block.sibling_index = siblings.size();
      siblings.push_back(handle);
      auto parent = blocks_.find(traits.parent);
      if (parent != blocks_.end() && Links(parent->second, block)) {
        block.linked = true;
        if (++parent->second.resident_children == 1 && leaves_only_) {
          Unrank(parent->second);
        }
      }
    }
    // Children admitted before their parent (e.g. demoted to this tier leaf first) count too.
    if (auto children = children_of_.find(handle); children != children_of_.end()) {
      for (uint64_t child_handle : children->second) {
        Block& child = blocks_.find(child_handle)->second;
        if (!child.linked && Links(block, child)) {
          child.linked = true;
          ++block.resident_children;
        }
      }
    }
    OnInsert(handle, block, now);
    Rerank(handle, block);
  }

  // O(1) while at most max_lazy_touches blocks are stale: the block's entry in ranked_ keeps
  // its old rank, which is lower than its new one (a touch never lowers a rank), and Victim
  // moves it when it reaches it. A block touched k times between two evictions is therefore
  // re-ranked once, and a lookup that touches a long prefix neither allocates nor walks the
  // ordered set. Past the limit a touch re-ranks its block at once (no allocation either),
  // so one Victim call re-ranks at most max_lazy_touches blocks.
  void Access(uint64_t handle, uint64_t now) final {
    auto it = blocks_.find(handle);
    if (it != blocks_.end()) Touch(it->second, now);
  }

  // The lookups first, then the touches in order: the lookups do not depend on each other,
  // so their cache misses overlap instead of each stalling its own touch.
  void AccessEach(std::span<const uint64_t> handles, uint64_t first_now) final {
    std::vector<Block*> found(handles.size(), nullptr);
    for (size_t k = 0; k < handles.size(); ++k) {
      auto it = blocks_.find(handles[k]);
      if (it != blocks_.end()) found[k] = &it->second;
    }
    for (size_t k = 0; k < found.size(); ++k) {
      if (found[k] != nullptr) Touch(*found[k], first_now + k);
    }
  }

  void Erase(uint64_t handle) final {
    auto it = blocks_.find(handle);
    if (it == blocks_.end()) return;
    Block& block = it->second;
    Unrank(block);
    OnErase(handle, block, handle == last_victim_);
    if (handle == last_victim_) last_victim_ = kNoBlock;
    if (HasParent(handle, block.traits)) {
      auto siblings = children_of_.find(block.traits.parent);
      std::vector<uint64_t>& list = siblings->second;
      const uint64_t moved = list.back();
      list[block.sibling_index] = moved;
      blocks_.find(moved)->second.sibling_index = block.sibling_index;
      list.pop_back();
      if (list.empty()) children_of_.erase(siblings);
      if (block.linked) {
        Block& parent = blocks_.find(block.traits.parent)->second;
        if (--parent.resident_children == 0 && leaves_only_) Enrank(block.traits.parent, parent);
      }
    }
    if (auto children = children_of_.find(handle); children != children_of_.end()) {
      for (uint64_t child_handle : children->second) {
        blocks_.find(child_handle)->second.linked = false;
      }
    }
    blocks_.erase(it);
  }

  // Walks ranks from the lowest. A stale entry (filed before its block's latest touch) is
  // moved to the block's current rank, which is higher, and the walk goes on: every entry
  // not yet reached is filed at or below its current rank, so the first current entry that
  // `evictable` accepts is the victim an eagerly re-ranked set would give.
  std::optional<uint64_t> Victim(const std::function<bool(uint64_t)>& evictable) final {
    for (auto it = ranked_.begin(); it != ranked_.end();) {
      Block& block = blocks_.find(it->handle)->second;
      if (block.stale) {
        auto next = std::next(it);
        Refile(block);
        // It may now sit just before `next`; then it is the next one to look at.
        it = next == ranked_.end() || *block.rank < *next ? block.rank : next;
        continue;
      }
      if (evictable(it->handle)) {
        last_victim_ = it->handle;
        return it->handle;
      }
      ++it;
    }
    return std::nullopt;
  }

  size_t size() const final { return blocks_.size(); }

 protected:
  struct Block {
    BlockTraits traits;
    bool linked = false;       // counted in its resident parent's resident_children
    size_t sibling_index = 0;  // position in children_of_[traits.parent]
    uint32_t resident_children = 0;
    uint64_t accesses = 0;     // Insert + Access calls since admission
    uint64_t last_access = 0;  // `now` of the latest touch
    uint64_t tick = 0;         // policy clock at the latest touch (cost policy)
    double log_freq = 0;       // ln of the decayed frequency at `tick` (cost policy)
    double log_value = 0;      // ln of the value multiplier (cost policy)
    double score = 0;          // current rank (score, seq); ranked_ may still hold an older one
    uint64_t seq = 0;
    bool ranked = false;
    bool stale = false;             // ranked under an older (score, seq) than its current one
    std::set<Rank>::iterator rank;  // the block's entry in ranked_, while `ranked`
  };

  RankedPolicy(bool leaves_only, const EvictionPolicyOptions& options)
      : leaves_only_(leaves_only), max_stale_(options.max_lazy_touches) {}

  // Set block.score for a block just admitted or touched at `now`.
  virtual void OnInsert(uint64_t handle, Block& block, uint64_t now) = 0;
  virtual void OnAccess(Block& block, uint64_t now) = 0;
  // `was_victim`: the block is the one Victim returned last, i.e. it is being evicted.
  virtual void OnErase(uint64_t handle, const Block& block, bool was_victim) {}

  // Re-sorts every ranked block after the subclass changed how scores are computed.
  template <typename F>
  void RescoreAll(F&& score) {
    ranked_.clear();
    stale_ = 0;
    for (auto& [handle, block] : blocks_) {
      block.score = score(block);
      block.stale = false;
      if (block.ranked) block.rank = ranked_.insert(Rank{block.score, block.seq, handle}).first;
    }
  }

  absl::flat_hash_map<uint64_t, Block> blocks_;

 private:
  void Touch(Block& block, uint64_t now) {
    const double before = block.score;
    block.last_access = std::max(block.last_access, now);
    ++block.accesses;
    OnAccess(block, now);
    // Every policy's score rises with a touch; this only absorbs rounding, so that the
    // filed rank is never above the current one.
    block.score = std::max(block.score, before);
    block.seq = ++seq_;
    if (!block.ranked || block.stale) return;
    if (stale_ < max_stale_) {
      block.stale = true;
      ++stale_;
    } else {
      Refile(block);
    }
  }

  // Moves a ranked block's entry to its current rank; the set node is re-linked, not
  // reallocated.
  void Refile(Block& block) {
    auto node = ranked_.extract(block.rank);
    node.value().score = block.score;
    node.value().seq = block.seq;
    block.rank = ranked_.insert(std::move(node)).position;
    if (block.stale) {
      block.stale = false;
      --stale_;
    }
  }

  static bool HasParent(uint64_t handle, const BlockTraits& traits) {
    return traits.parent != kNoBlock && traits.parent != handle;
  }
  // Depth strictly decreases along links, so even inconsistent traits cannot form a cycle,
  // which would leave blocks that are never a leaf and thus never evicted.
  static bool Links(const Block& parent, const Block& child) {
    return parent.traits.depth < child.traits.depth;
  }

  // Ranks a block just admitted (not ranked yet).
  void Rerank(uint64_t handle, Block& block) {
    block.seq = ++seq_;
    if (!leaves_only_ || block.resident_children == 0) Enrank(handle, block);
  }
  void Enrank(uint64_t handle, Block& block) {
    block.rank = ranked_.insert(Rank{block.score, block.seq, handle}).first;
    block.ranked = true;
  }
  void Unrank(Block& block) {
    if (!block.ranked) return;
    ranked_.erase(block.rank);
    block.ranked = false;
    if (block.stale) {
      block.stale = false;
      --stale_;
    }
  }

  const bool leaves_only_;
  std::set<Rank> ranked_;
  // Resident blocks by the parent handle they declare, resident or not.
  absl::flat_hash_map<uint64_t, std::vector<uint64_t>> children_of_;
  uint64_t seq_ = 0;
  uint64_t last_victim_ = kNoBlock;
  const size_t max_stale_;
  size_t stale_ = 0;  // blocks with `stale` set
};

class LruPolicy final : public RankedPolicy {
 public:
  explicit LruPolicy(const EvictionPolicyOptions& options)
      : RankedPolicy(/*leaves_only=*/false, options) {}
  std::string_view name() const override { return "lru"; }

 private:
  void OnInsert(uint64_t, Block& block, uint64_t now) override {
    block.score = static_cast<double>(now);
  }
  void OnAccess(Block& block, uint64_t) override {
    block.score = static_cast<double>(block.last_access);
  }
};

// LFU with dynamic aging: a newcomer starts at the rank of the last victim plus one, so a
// block that was popular long ago is eventually outranked by ones being read now.
class LfuPolicy final : public RankedPolicy {
 public:
  explicit LfuPolicy(const EvictionPolicyOptions& options)
      : RankedPolicy(/*leaves_only=*/false, options) {}
  std::string_view name() const override { return "lfu"; }

 private:
  void OnInsert(uint64_t, Block& block, uint64_t) override { block.score = age_ + 1; }
  void OnAccess(Block& block, uint64_t) override { block.score += 1; }
  void OnErase(uint64_t, const Block& block, bool was_victim) override {
    if (was_victim) age_ = std::max(age_, block.score);
  }
  double age_ = 0;
};

// Chain-aware LRU: the least recently used leaf.
class PrefixPolicy final : public RankedPolicy {
 public:
  explicit PrefixPolicy(const EvictionPolicyOptions& options)
      : RankedPolicy(/*leaves_only=*/true, options) {}
  std::string_view name() const override { return "prefix"; }

 private:
  void OnInsert(uint64_t, Block& block, uint64_t now) override {
    block.score = static_cast<double>(now);
  }
  void OnAccess(Block& block, uint64_t) override {
    block.score = static_cast<double>(block.last_access);
  }
};

// Chain-aware expected value. A block's frequency F decays by half every half-life of policy
// ticks (one tick per Insert/Access) and gains 1 per touch; its score is
//   ln F(now) + ln value  =  ln F(tick) − λ·(now − tick) + ln value,
// and since λ·now is common to all blocks, ranking by ln F(tick) + λ·tick + ln value orders
// them exactly as their current F·value without ever re-scoring untouched blocks. Frequency
// carries recency (a block not read decays), and the bounded history of evicted blocks lets
// a block that returns (re-admitted, or promoted from a lower tier) keep its popularity.
class CostPolicy final : public RankedPolicy {
 public:
  explicit CostPolicy(const EvictionPolicyOptions& options)
      : RankedPolicy(/*leaves_only=*/true, options), options_(options) {
    if (options_.cost_half_life > 0) lambda_ = std::log(2.0) / options_.cost_half_life;
  }
  std::string_view name() const override { return "cost"; }

 private:
  struct Remembered {
    double log_freq = 0;
    uint64_t tick = 0;
    uint64_t generation = 0;
  };
  static constexpr size_t kMinCalibrationBlocks = 16;

  void OnInsert(uint64_t handle, Block& block, uint64_t) override {
    MaybeCalibrate();
    ++tick_;
    const BlockTraits& t = block.traits;
    const double importance = std::clamp(static_cast<double>(t.importance), 0.0, 1.0);
    // NaN and non-positive costs rank as the cheapest block rather than poisoning the order.
    const double cost = t.recompute_cost > 1e-3f ? static_cast<double>(t.recompute_cost) : 1e-3;
    block.log_value = std::log(cost) + std::log1p(options_.cost_importance_weight * importance) +
                      options_.cost_depth_exponent * std::log1p(static_cast<double>(t.depth));
    auto it = history_.find(handle);
    if (it != history_.end()) {
      block.log_freq = Touched(it->second.log_freq, it->second.tick);
      history_.erase(it);
    } else {
      block.log_freq = std::log(std::max(options_.cost_new_block_weight, 1e-9));
    }
    block.tick = tick_;
    block.score = Score(block);
  }

  void OnAccess(Block& block, uint64_t) override {
    ++tick_;
    block.log_freq = Touched(block.log_freq, block.tick);
    block.tick = tick_;
    block.score = Score(block);
  }

  void OnErase(uint64_t handle, const Block& block, bool) override {
    if (history_limit_ == 0) return;
    const uint64_t generation = ++generations_;
    history_[handle] = Remembered{block.log_freq, block.tick, generation};
    history_order_.emplace_back(handle, generation);
    while (history_order_.size() > history_limit_) {
      auto [old, old_generation] = history_order_.front();
      history_order_.pop_front();
      auto it = history_.find(old);
      if (it != history_.end() && it->second.generation == old_generation) history_.erase(it);
    }
  }

  // ln(F decayed from `since` to now + 1).
  double Touched(double log_freq, uint64_t since) const {
    const double decayed = log_freq - lambda_ * static_cast<double>(tick_ - since);
    return std::log1p(std::exp(decayed));
  }
  double Score(const Block& block) const {
    return block.log_freq + lambda_ * static_cast<double>(block.tick) + block.log_value;
  }

  // With an automatic half-life, λ follows the largest resident count seen; it is re-derived
  // each time that count grows by a quarter, so re-sorting costs O(n log n) amortized over
  // the n admissions that grew it.
  void MaybeCalibrate() {
    const size_t blocks = std::max(blocks_.size(), kMinCalibrationBlocks);
    if (blocks * 4 <= calibrated_blocks_ * 5) return;
    calibrated_blocks_ = blocks;
    history_limit_ =
        static_cast<size_t>(options_.cost_history_per_block * static_cast<double>(blocks));
    if (options_.cost_half_life > 0) return;
    lambda_ = std::log(2.0) /
              (std::max(options_.cost_half_life_per_block, 1e-3) * static_cast<double>(blocks));
    RescoreAll([this](const Block& b) { return Score(b); });
  }

  const EvictionPolicyOptions options_;
  double lambda_ = 0;
  uint64_t tick_ = 0;
  size_t calibrated_blocks_ = 0;
  size_t history_limit_ = 0;
  uint64_t generations_ = 0;
  absl::flat_hash_map<uint64_t, Remembered> history_;
  std::deque<std::pair<uint64_t, uint64_t>> history_order_;  // (handle, generation), oldest first
};

}  // namespace

absl::StatusOr<PolicyKind> ParsePolicyKind(std::string_view name) {
  if (name == "lru") return PolicyKind::kLru;
  if (name == "lfu") return PolicyKind::kLfu;
  if (name == "prefix") return PolicyKind::kPrefix;
  if (name == "cost") return PolicyKind::kCost;
  return absl::InvalidArgumentError(absl::StrCat("unknown eviction policy \"",
                                                 absl::string_view(name.data(), name.size()),
                                                 "\": expected lru, lfu, prefix or cost"));
}

std::string_view PolicyKindName(PolicyKind kind) {
  switch (kind) {
    case PolicyKind::kLru:
      return "lru";
    case PolicyKind::kLfu:
      return "lfu";
    case PolicyKind::kPrefix:
      return "prefix";
    case PolicyKind::kCost:
      return "cost";
  }
  return "unknown";
}

std::string PolicyKeyBytes(const BlockKey& key) {
  std::string bytes;
  bytes.reserve(8 + 1 + key.scope.size() + kChainHashBytes);
  bytes.append(reinterpret_cast<const char*>(&key.namespace_id), sizeof(key.namespace_id));
  bytes.push_back(static_cast<char>(key.scope.size()));
  bytes += key.scope;
  bytes.append(key.hash.AsStringView());
  return bytes;
}

uint64_t PolicyHandle(const BlockKey& key) {
  const std::string bytes = PolicyKeyBytes(key);
  uint64_t h = BlockChecksum(bytes.data(), bytes.size());
  return h == kNoBlock ? 0 : h;  // kNoBlock means "no parent"
}

std::unique_ptr<EvictionPolicy> MakeEvictionPolicy(PolicyKind kind,
                                                   const EvictionPolicyOptions& options) {
  switch (kind) {
    case PolicyKind::kLru:
      return std::make_unique<LruPolicy>(options);
    case PolicyKind::kLfu:
      return std::make_unique<LfuPolicy>(options);
    case PolicyKind::kPrefix:
      return std::make_unique<PrefixPolicy>(options);
    case PolicyKind::kCost:
      return std::make_unique<CostPolicy>(options);
  }
  return std::make_unique<LruPolicy>(options);
}

}  // namespace strata::storenode
