#include "strata/storenode/eviction_policy.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <iterator>
#include <optional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "strata/testutil/status_matchers.h"

namespace strata::storenode {
namespace {

using ::strata::testutil::StatusIs;
using ::testing::HasSubstr;
using ::testing::Optional;

const auto kAny = [](uint64_t) { return true; };

BlockTraits Root() { return BlockTraits{.size = 1}; }
BlockTraits Child(uint64_t parent, uint32_t depth) {
  return BlockTraits{.size = 1, .depth = depth, .parent = parent};
}

TEST(ParsePolicyKindTest, ParsesEveryName) {
  for (PolicyKind kind :
       {PolicyKind::kLru, PolicyKind::kLfu, PolicyKind::kPrefix, PolicyKind::kCost}) {
    absl::StatusOr<PolicyKind> parsed = ParsePolicyKind(PolicyKindName(kind));
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    EXPECT_EQ(*parsed, kind);
    EXPECT_EQ(MakeEvictionPolicy(kind)->name(), PolicyKindName(kind));
  }
}

TEST(ParsePolicyKindTest, RejectsUnknownNamesListingTheValidOnes) {
  EXPECT_THAT(ParsePolicyKind("LRU"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("lru, lfu, prefix or cost")));
  EXPECT_THAT(ParsePolicyKind(""), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(ParsePolicyKind("min"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("\"min\"")));
}

TEST(EvictionPolicyTest, EmptyPolicyHasNoVictim) {
  for (PolicyKind kind :
       {PolicyKind::kLru, PolicyKind::kLfu, PolicyKind::kPrefix, PolicyKind::kCost}) {
    auto policy = MakeEvictionPolicy(kind);
    EXPECT_EQ(policy->Victim(kAny), std::nullopt);
    EXPECT_EQ(policy->size(), 0u);
    policy->Access(7, 1);  // not resident: ignored
    policy->Erase(7);
    EXPECT_EQ(policy->size(), 0u);
  }
}

TEST(LruPolicyTest, EvictsLeastRecentlyUsedFirst) {
  auto lru = MakeEvictionPolicy(PolicyKind::kLru);
  lru->Insert(1, Root(), 1);
  lru->Insert(2, Root(), 2);
  lru->Insert(3, Root(), 3);
  lru->Access(1, 4);
  EXPECT_THAT(lru->Victim(kAny), Optional(2u));
  lru->Erase(2);
  EXPECT_THAT(lru->Victim(kAny), Optional(3u));
  lru->Erase(3);
  EXPECT_THAT(lru->Victim(kAny), Optional(1u));
  EXPECT_EQ(lru->size(), 1u);
}

TEST(LruPolicyTest, EqualTimesFallBackToTouchOrder) {
  auto lru = MakeEvictionPolicy(PolicyKind::kLru);
  lru->Insert(5, Root(), 7);
  lru->Insert(6, Root(), 7);
  lru->Access(5, 7);
  EXPECT_THAT(lru->Victim(kAny), Optional(6u));
}

TEST(LruPolicyTest, InsertingAResidentBlockIsAnAccess) {
  auto lru = MakeEvictionPolicy(PolicyKind::kLru);
  lru->Insert(1, Root(), 1);
  lru->Insert(2, Root(), 2);
  lru->Insert(1, Root(), 3);
  EXPECT_EQ(lru->size(), 2u);
  EXPECT_THAT(lru->Victim(kAny), Optional(2u));
}

TEST(LruPolicyTest, RejectedBlocksAreSkippedButKept) {
  auto lru = MakeEvictionPolicy(PolicyKind::kLru);
  lru->Insert(1, Root(), 1);
  lru->Insert(2, Root(), 2);
  lru->Insert(3, Root(), 3);
  EXPECT_THAT(lru->Victim([](uint64_t h) { return h != 1; }), Optional(2u));
  EXPECT_THAT(lru->Victim(kAny), Optional(1u));  // still first in line once unpinned
  EXPECT_EQ(lru->Victim([](uint64_t) { return false; }), std::nullopt);
  EXPECT_EQ(lru->size(), 3u);
}

// A touch is re-ranked only when Victim's walk reaches the block's old rank; the block must
// then be considered again at its new rank, here still ahead of block 2.
TEST(LruPolicyTest, TouchedBlockStillFirstInLineIsTheVictim) {
  auto lru = MakeEvictionPolicy(PolicyKind::kLru);
  lru->Insert(1, Root(), 1);
  lru->Insert(2, Root(), 5);
  lru->Access(1, 3);
  EXPECT_THAT(lru->Victim(kAny), Optional(1u));
  lru->Access(1, 9);
  EXPECT_THAT(lru->Victim(kAny), Optional(2u));
}

// Many touches between evictions: blocks leave in the order of their latest touch.
TEST(LruPolicyTest, DrainsInOrderOfLatestTouch) {
  auto lru = MakeEvictionPolicy(PolicyKind::kLru);
  std::mt19937_64 rng(7);
  constexpr uint64_t kBlocks = 200;
  std::vector<uint64_t> last(kBlocks + 1, 0);
  uint64_t now = 0;
  for (uint64_t h = 1; h <= kBlocks; ++h) lru->Insert(h, Root(), last[h] = ++now);
  for (int i = 0; i < 3000; ++i) {
    const uint64_t h = 1 + rng() % kBlocks;
    lru->Access(h, last[h] = ++now);
  }
  std::vector<uint64_t> order(kBlocks);
  for (uint64_t h = 1; h <= kBlocks; ++h) order[h - 1] = h;
  std::sort(order.begin(), order.end(), [&](uint64_t a, uint64_t b) { return last[a] < last[b]; });
  for (uint64_t want : order) {
    ASSERT_THAT(lru->Victim(kAny), Optional(want));
    lru->Erase(want);
  }
  EXPECT_EQ(lru->Victim(kAny), std::nullopt);
}

TEST(LfuPolicyTest, EvictsLeastFrequentlyUsedAndAgesOutOldPopularity) {
  auto lfu = MakeEvictionPolicy(PolicyKind::kLfu);
  lfu->Insert(1, Root(), 1);
  lfu->Insert(2, Root(), 2);
  lfu->Insert(3, Root(), 3);
  lfu->Access(1, 4);
  lfu->Access(1, 5);  // 1: 3 uses
  lfu->Access(3, 6);  // 3: 2 uses, 2: 1 use
  EXPECT_THAT(lfu->Victim(kAny), Optional(2u));
  lfu->Erase(2);  // age becomes 1
  EXPECT_THAT(lfu->Victim(kAny), Optional(3u));
  lfu->Erase(3);  // age becomes 2
  // A newcomer now ranks 2 + 1 = 3, level with block 1's three old uses; the tie goes to the
  // least recently touched, so old popularity does not protect 1 forever.
  lfu->Insert(4, Root(), 7);
  EXPECT_THAT(lfu->Victim(kAny), Optional(1u));
}

TEST(PrefixPolicyTest, EvictsLeastRecentlyUsedLeafOnly) {
  auto prefix = MakeEvictionPolicy(PolicyKind::kPrefix);
  prefix->Insert(10, Root(), 0);
  prefix->Insert(1, Root(), 1);
  prefix->Insert(2, Child(1, 1), 2);
  prefix->Insert(3, Child(2, 2), 3);
  prefix->Access(1, 10);
  EXPECT_THAT(prefix->Victim(kAny), Optional(10u));
  prefix->Erase(10);
  // 2 is older than 3 but has a resident child; 1 was used last but is next once 2 is gone.
  EXPECT_THAT(prefix->Victim(kAny), Optional(3u));
  prefix->Erase(3);
  EXPECT_THAT(prefix->Victim(kAny), Optional(2u));
  prefix->Erase(2);
  EXPECT_THAT(prefix->Victim(kAny), Optional(1u));
}

TEST(PrefixPolicyTest, PinnedLeafDoesNotExposeItsAncestors) {
  auto prefix = MakeEvictionPolicy(PolicyKind::kPrefix);
  prefix->Insert(1, Root(), 1);
  prefix->Insert(2, Child(1, 1), 2);
  prefix->Insert(3, Root(), 3);
  EXPECT_THAT(prefix->Victim([](uint64_t h) { return h != 2; }), Optional(3u));
  EXPECT_EQ(prefix->Victim([](uint64_t h) { return h == 1; }), std::nullopt);
  EXPECT_THAT(prefix->Victim(kAny), Optional(2u));
}

TEST(PrefixPolicyTest, ErasingTheLastChildMakesTheParentALeaf) {
  auto prefix = MakeEvictionPolicy(PolicyKind::kPrefix);
  prefix->Insert(1, Root(), 1);
  prefix->Insert(2, Child(1, 1), 2);
  prefix->Insert(3, Child(1, 1), 3);
  prefix->Insert(9, Root(), 9);
  prefix->Erase(2);
  EXPECT_THAT(prefix->Victim(kAny), Optional(3u));  // 1 still has child 3
  prefix->Erase(3);
  EXPECT_THAT(prefix->Victim(kAny), Optional(1u));
  prefix->Erase(42);  // not resident: ignored
  EXPECT_EQ(prefix->size(), 2u);
}

TEST(PrefixPolicyTest, ParentAdmittedAfterItsChildStillWaitsForIt) {
  auto prefix = MakeEvictionPolicy(PolicyKind::kPrefix);
  prefix->Insert(2, Child(1, 1), 1);  // e.g. demoted to this tier before its parent
  prefix->Insert(1, Root(), 2);
  EXPECT_THAT(prefix->Victim(kAny), Optional(2u));
  // Erasing the parent explicitly leaves the child resident and a leaf.
  prefix->Erase(1);
  EXPECT_THAT(prefix->Victim(kAny), Optional(2u));
  prefix->Insert(1, Root(), 3);  // re-admitted: linked again
  EXPECT_THAT(prefix->Victim([](uint64_t h) { return h != 2; }), std::nullopt);
}

TEST(PrefixPolicyTest, InconsistentParentsCannotMakeEveryBlockUnevictable) {
  auto prefix = MakeEvictionPolicy(PolicyKind::kPrefix);
  // Each claims the other as parent at the same depth: links need a shallower parent.
  prefix->Insert(1, Child(2, 0), 1);
  prefix->Insert(2, Child(1, 0), 2);
  EXPECT_THAT(prefix->Victim(kAny), Optional(1u));
}

TEST(CostPolicyTest, FrequencyOutranksRecency) {
  auto cost = MakeEvictionPolicy(PolicyKind::kCost);
  cost->Insert(1, Root(), 1);
  for (int i = 0; i < 3; ++i) cost->Access(1, 2 + i);
  cost->Insert(2, Root(), 10);
  EXPECT_THAT(cost->Victim(kAny), Optional(2u));
}

TEST(CostPolicyTest, OldFrequencyDecays) {
  auto cost = MakeEvictionPolicy(PolicyKind::kCost, {.cost_half_life = 10});
  cost->Insert(1, Root(), 1);
  for (int i = 0; i < 3; ++i) cost->Access(1, 2 + i);
  cost->Insert(2, Root(), 5);
  for (int i = 0; i < 100; ++i) cost->Access(2, 6 + i);
  cost->Insert(3, Root(), 200);  // one use, ~100 half-lives after block 1's last
  EXPECT_THAT(cost->Victim(kAny), Optional(1u));
}

TEST(CostPolicyTest, RemembersEvictedBlocks) {
  for (bool remember : {true, false}) {
    SCOPED_TRACE(remember);
    EvictionPolicyOptions options;
    options.cost_history_per_block = remember ? 8 : 0;
    auto cost = MakeEvictionPolicy(PolicyKind::kCost, options);
    cost->Insert(1, Root(), 1);
    for (int i = 0; i < 4; ++i) cost->Access(1, 2 + i);
    cost->Erase(1);
    cost->Insert(1, Root(), 6);
    cost->Insert(2, Root(), 7);
    EXPECT_THAT(cost->Victim(kAny), Optional(remember ? 2u : 1u));
  }
}

TEST(CostPolicyTest, ImportanceAndRecomputeCostRaiseValue) {
  auto cost = MakeEvictionPolicy(PolicyKind::kCost);
  cost->Insert(1, BlockTraits{.size = 1, .importance = 1}, 1);
  cost->Insert(2, BlockTraits{.size = 1, .recompute_cost = 4}, 2);
  cost->Insert(3, Root(), 3);  // newest, but neither important nor costly
  EXPECT_THAT(cost->Victim(kAny), Optional(3u));
  cost->Erase(3);
  EXPECT_THAT(cost->Victim(kAny), Optional(1u));  // x2 for importance < x4 for cost
  // Nonsense costs rank lowest instead of corrupting the order.
  cost->Insert(4, BlockTraits{.size = 1, .recompute_cost = -1}, 4);
  cost->Insert(5, BlockTraits{.size = 1, .recompute_cost = std::nanf("")}, 5);
  EXPECT_THAT(cost->Victim([](uint64_t h) { return h != 4; }), Optional(5u));
  EXPECT_THAT(cost->Victim(kAny), Optional(4u));
}

TEST(CostPolicyTest, EvictsLeavesOnly) {
  auto cost = MakeEvictionPolicy(PolicyKind::kCost);
  cost->Insert(1, Root(), 1);
  cost->Insert(2, Child(1, 1), 2);
  for (int i = 0; i < 5; ++i) cost->Access(2, 3 + i);  // the child is hotter than nothing else
  EXPECT_THAT(cost->Victim(kAny), Optional(2u));
  EXPECT_EQ(cost->Victim([](uint64_t h) { return h != 2; }), std::nullopt);
}

// Random chains, touches, pins and evictions: a chain-aware policy must never pick a block
// with a resident child, nor a block `evictable` rejects, nor lose a block.
TEST(ChainAwarePolicyTest, NeverEvictsABlockWithResidentChildren) {
  for (PolicyKind kind : {PolicyKind::kPrefix, PolicyKind::kCost}) {
    SCOPED_TRACE(PolicyKindName(kind));
    auto policy = MakeEvictionPolicy(kind);
    std::mt19937_64 rng(42);
    absl::flat_hash_map<uint64_t, BlockTraits> resident;
    absl::flat_hash_map<uint64_t, int> children;  // resident children per resident parent
    std::vector<uint64_t> leaves_of_chains;       // candidates to extend
    uint64_t next_handle = 1;
    for (uint64_t now = 1; now < 4000; ++now) {
      const int op = static_cast<int>(rng() % 10);
      if (op < 5 || resident.empty()) {
        BlockTraits traits = Root();
        if (!leaves_of_chains.empty() && rng() % 4 != 0) {
          const uint64_t parent = leaves_of_chains[rng() % leaves_of_chains.size()];
          if (resident.contains(parent)) traits = Child(parent, resident[parent].depth + 1);
        }
        const uint64_t handle = next_handle++;
        policy->Insert(handle, traits, now);
        resident[handle] = traits;
        if (traits.parent != kNoBlock) ++children[traits.parent];
        leaves_of_chains.push_back(handle);
      } else if (op < 8) {
        auto it = resident.begin();
        std::advance(it, static_cast<long>(rng() % resident.size()));
        policy->Access(it->first, now);
      } else {
        const uint64_t pinned = rng() % next_handle;
        std::optional<uint64_t> victim = policy->Victim([&](uint64_t h) { return h != pinned; });
        ASSERT_TRUE(victim.has_value());
        ASSERT_NE(*victim, pinned);
        ASSERT_TRUE(resident.contains(*victim));
        ASSERT_EQ(children[*victim], 0) << "victim " << *victim << " has resident children";
        policy->Erase(*victim);
        const uint64_t parent = resident[*victim].parent;
        if (parent != kNoBlock) --children[parent];
        resident.erase(*victim);
        children.erase(*victim);
      }
      ASSERT_EQ(policy->size(), resident.size());
    }
    // Draining evicts every block, always from the chains' ends.
    while (std::optional<uint64_t> victim = policy->Victim(kAny)) {
      ASSERT_EQ(children[*victim], 0);
      const uint64_t parent = resident[*victim].parent;
      if (parent != kNoBlock) --children[parent];
      policy->Erase(*victim);
      resident.erase(*victim);
    }
    EXPECT_TRUE(resident.empty());
    EXPECT_EQ(policy->size(), 0u);
  }
}

// Touches are re-ranked lazily, when Victim walks past them. A twin policy that re-ranks
// every touch at once (a Victim call that rejects every block walks the whole order) must
// pick the same victims through random chains, touches, pins and evictions.
// With max_lazy_touches small, touches past the limit are re-ranked at once instead.
TEST(EvictionPolicyTest, VictimsDoNotDependOnWhenTouchesAreReranked) {
  const auto none = [](uint64_t) { return false; };
  for (auto [kind, lazy_touches] :
       std::vector<std::pair<PolicyKind, size_t>>{{PolicyKind::kLru, 4096},
                                                  {PolicyKind::kLfu, 4096},
                                                  {PolicyKind::kPrefix, 4096},
                                                  {PolicyKind::kCost, 4096},
                                                  {PolicyKind::kLru, 3},
                                                  {PolicyKind::kCost, 3},
                                                  {PolicyKind::kPrefix, 0}}) {
    SCOPED_TRACE(
        absl::StrCat(std::string(PolicyKindName(kind)), " max_lazy_touches ", lazy_touches));
    EvictionPolicyOptions options;
    options.max_lazy_touches = lazy_touches;
    auto lazy = MakeEvictionPolicy(kind, options);
    auto eager = MakeEvictionPolicy(kind);
    std::mt19937_64 rng(11);
    std::vector<uint64_t> resident;
    uint64_t next_handle = 1;
    size_t evictions = 0;
    for (uint64_t now = 1; now < 6000; ++now) {
      const int op = static_cast<int>(rng() % 10);
      if (op < 3 || resident.size() < 2) {
        BlockTraits traits = Root();
        if (!resident.empty() && rng() % 2 == 0) {
          traits = Child(resident[rng() % resident.size()], static_cast<uint32_t>(1 + rng() % 8));
        }
        lazy->Insert(next_handle, traits, now);
        eager->Insert(next_handle, traits, now);
        resident.push_back(next_handle++);
      } else if (op < 6) {
        const uint64_t h = resident[rng() % resident.size()];
        lazy->Access(h, now);
        eager->Access(h, now);
        ASSERT_EQ(eager->Victim(none), std::nullopt);
      } else if (op < 8) {  // a lookup's touches: one AccessEach against Access one by one
        std::vector<uint64_t> batch(1 + rng() % 6);
        for (uint64_t& h : batch)
          h = rng() % 3 == 0 ? next_handle : resident[rng() % resident.size()];
        lazy->AccessEach(batch, now);
        for (uint64_t h : batch) eager->Access(h, now++);
        --now;
        ASSERT_EQ(eager->Victim(none), std::nullopt);
      } else {
        const uint64_t pinned = resident[rng() % resident.size()];
        auto evictable = [&](uint64_t h) { return h != pinned; };
        std::optional<uint64_t> victim = lazy->Victim(evictable);
        ASSERT_EQ(victim, eager->Victim(evictable)) << "eviction " << evictions;
        if (!victim) continue;
        lazy->Erase(*victim);
        eager->Erase(*victim);
        resident.erase(std::find(resident.begin(), resident.end(), *victim));
        ++evictions;
      }
    }
    EXPECT_GT(evictions, 500u);
    while (std::optional<uint64_t> victim = lazy->Victim(kAny)) {
      ASSERT_EQ(victim, eager->Victim(kAny));
      lazy->Erase(*victim);
      eager->Erase(*victim);
    }
    EXPECT_EQ(eager->size(), 0u);
  }
}

}  // namespace
}  // namespace strata::storenode
