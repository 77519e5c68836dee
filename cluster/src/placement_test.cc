#include "strata/cluster/placement.h"

#include <algorithm>
#include <cstring>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace strata::cluster {
namespace {

ChainHash HashOf(uint64_t i) {
  ChainHash h;
  for (int b = 0; b < 8; ++b) h.bytes[b] = static_cast<uint8_t>(i >> (8 * b));
  h.bytes[31] = 0x5a;
  return h;
}

std::vector<Member> Nodes(int n, int zones = 0) {
  std::vector<Member> m;
  for (int i = 0; i < n; ++i) {
    m.push_back({.id = "node-" + std::to_string(i),
                 .address = "127.0.0.1:" + std::to_string(7000 + i),
                 .zone = zones > 0 ? "zone-" + std::to_string(i % zones) : ""});
  }
  Normalize(&m);
  return m;
}

TEST(PlacementTest, OwnersAreDistinctAndCapped) {
  std::vector<Member> m = Nodes(3);
  for (uint64_t i = 0; i < 100; ++i) {
    std::vector<int> o = Owners(m, HashOf(i), 2);
    ASSERT_EQ(o.size(), 2u);
    EXPECT_NE(o[0], o[1]);
  }
  EXPECT_EQ(Owners(m, HashOf(1), 5).size(), 3u);
  EXPECT_TRUE(Owners({}, HashOf(1), 2).empty());
}

TEST(PlacementTest, SpreadsBlocksEvenly) {
  std::vector<Member> m = Nodes(4);
  std::map<int, int> count;
  const int blocks = 20000;
  for (int i = 0; i < blocks; ++i) ++count[Owners(m, HashOf(i), 1)[0]];
  ASSERT_EQ(count.size(), 4u);
  for (const auto& [node, c] : count) {
    EXPECT_GT(c, blocks / 4 * 0.9) << node;
    EXPECT_LT(c, blocks / 4 * 1.1) << node;
  }
}

TEST(PlacementTest, ResultDependsOnIdsNotOnOrderOrAddresses) {
  std::vector<Member> a = Nodes(5);
  std::vector<Member> b(a.rbegin(), a.rend());
  for (Member& x : b) x.address = "10.0.0.1:1";
  for (int i = 0; i < 200; ++i) {
    std::vector<int> oa = Owners(a, HashOf(i), 3), ob = Owners(b, HashOf(i), 3);
    for (int k = 0; k < 3; ++k) EXPECT_EQ(a[oa[k]].id, b[ob[k]].id);
  }
}

TEST(PlacementTest, AJoinMovesOnlyTheBlocksTheNewNodeTakes) {
  std::vector<Member> before = Nodes(3);
  std::vector<Member> after = Nodes(4);
  int moved = 0;
  const int blocks = 10000;
  for (int i = 0; i < blocks; ++i) {
    const std::string old_owner = before[Owners(before, HashOf(i), 1)[0]].id;
    const std::string new_owner = after[Owners(after, HashOf(i), 1)[0]].id;
    if (old_owner != new_owner) {
      ++moved;
      EXPECT_EQ(new_owner, "node-3");  // nothing moves between the old nodes
    }
  }
  EXPECT_GT(moved, blocks / 4 * 0.85);
  EXPECT_LT(moved, blocks / 4 * 1.15);
}

TEST(PlacementTest, ALeaveKeepsTheSurvivingReplica) {
  std::vector<Member> all = Nodes(4);
  for (int i = 0; i < 500; ++i) {
    std::vector<int> o = Owners(all, HashOf(i), 2);
    std::vector<Member> rest;
    for (int k = 0; k < 4; ++k) {
      if (k != o[0]) rest.push_back(all[k]);
    }
    // The second replica becomes the first owner once the first is gone.
    EXPECT_EQ(rest[Owners(rest, HashOf(i), 2)[0]].id, all[o[1]].id);
  }
}

TEST(PlacementTest, ReplicasGoToDistinctZones) {
  std::vector<Member> m = Nodes(6, 3);
  for (int i = 0; i < 500; ++i) {
    std::vector<int> o = Owners(m, HashOf(i), 3);
    std::set<std::string> zones;
    for (int idx : o) zones.insert(m[idx].zone);
    EXPECT_EQ(zones.size(), 3u);
  }
  // With fewer zones than replicas, every zone is used and the rest fill by score.
  std::vector<Member> two = Nodes(4, 2);
  std::vector<int> o = Owners(two, HashOf(7), 3);
  std::set<std::string> zones;
  for (int idx : o) zones.insert(two[idx].zone);
  EXPECT_EQ(o.size(), 3u);
  EXPECT_EQ(zones.size(), 2u);
}

TEST(PlacementTest, WithoutZonesTheTopScoresWin) {
  std::vector<Member> m = Nodes(5);
  ChainHash h = HashOf(42);
  std::vector<int> o = Owners(m, h, 5);
  for (size_t k = 1; k < o.size(); ++k) {
    EXPECT_GT(RendezvousScore(m[o[k - 1]].id, h), RendezvousScore(m[o[k]].id, h));
  }
}

// The seeded form (the cluster client's lookups score with it) is the same score, and a
// member's seed is its own: other members, other blocks, other scores.
TEST(PlacementTest, SeededScoresAreTheScores) {
  std::vector<Member> m = Nodes(3);
  for (uint64_t b = 0; b < 64; ++b) {
    const ChainHash h = HashOf(b);
    for (const Member& x : m) {
      EXPECT_EQ(RendezvousScore(RendezvousSeed(x.id), h), RendezvousScore(x.id, h));
    }
    EXPECT_NE(RendezvousScore(RendezvousSeed(m[0].id), h),
              RendezvousScore(RendezvousSeed(m[1].id), h));
  }
  EXPECT_NE(RendezvousSeed(m[0].id), RendezvousSeed(m[1].id));
  const std::vector<uint64_t> seeds = RendezvousSeeds(m);
  for (uint64_t b = 0; b < 64; ++b)
    EXPECT_EQ(Owners(m, seeds, HashOf(b), 2), Owners(m, HashOf(b), 2));
}

// FirstOwner is Owners(...)[0]; a reader asks the owners, then the first owner under each
// previous set (newest first) if it is another member, and after a change walks that list
// twice.
TEST(PlacementTest, ReadersAskTheOwnersThenThePreviousOwners) {
  std::vector<Member> five = Nodes(5);
  const std::vector<uint64_t> seeds = RendezvousSeeds(five);
  auto first_of = [](const std::vector<Member>& members, const ChainHash& h) {
    return members[Owners(members, h, 1)[0]].id;
  };
  // Two joins in a row: three members, then four, then five.
  MemberSet now{.epoch = 3, .members = five};
  auto four = std::make_shared<const MemberSet>(
      MemberSet{.epoch = 2, .members = std::vector<Member>(five.begin(), five.begin() + 4)});
  auto three = std::make_shared<const MemberSet>(
      MemberSet{.epoch = 1, .members = std::vector<Member>(five.begin(), five.begin() + 3)});
  const std::vector<std::shared_ptr<const MemberSet>> before = {four, three};
  const ReadPlan plan = PlanReads(now, before);
  int moved = 0, moved_twice = 0;
  for (uint64_t b = 0; b < 256; ++b) {
    const ChainHash h = HashOf(b);
    const std::vector<int> owners = Owners(five, h, 2);
    EXPECT_EQ(FirstOwner(seeds, h), owners[0]);
    EXPECT_EQ(ReadCandidates(PlanReads(now, {}), h, 2), owners);
    // With one copy each join takes over about a share of the blocks: those have an extra
    // candidate per set they moved in.
    const std::vector<int> c = ReadCandidates(plan, h, 1);
    std::vector<int> once = Owners(five, h, 1);
    for (const std::string& id : {first_of(four->members, h), first_of(three->members, h)}) {
      const int old = now.Find(id);
      if (std::find(once.begin(), once.end(), old) == once.end()) once.push_back(old);
    }
    moved += once.size() > 1;
    moved_twice += once.size() > 2;
    std::vector<int> twice = once;
    twice.insert(twice.end(), once.begin(), once.end());
    EXPECT_EQ(c, twice) << b;
    if (once.size() > 2) {
      EXPECT_EQ(c[2], now.Find(first_of(three->members, h))) << "the oldest set's owner last";
    }
  }
  EXPECT_GT(moved, 0);
  EXPECT_GT(moved_twice, 0) << "no block moved at both joins: the test shows nothing";
  EXPECT_EQ(FirstOwner({}, HashOf(1)), -1);
}

// Random chain hashes (as real ones are): every member owns its share, and the second owner
// is independent of the first (each ordered pair equally likely).
TEST(PlacementTest, RandomHashesSpreadEvenlyAndIndependently) {
  std::vector<Member> m = Nodes(3);
  std::mt19937_64 rng(7);
  std::map<int, int> first;
  std::map<std::pair<int, int>, int> pairs;
  const int blocks = 30000;
  for (int i = 0; i < blocks; ++i) {
    ChainHash h;
    for (size_t b = 0; b < kChainHashBytes; b += 8) {
      const uint64_t v = rng();
      std::memcpy(h.bytes.data() + b, &v, 8);
    }
    std::vector<int> o = Owners(m, h, 2);
    ++first[o[0]];
    ++pairs[{o[0], o[1]}];
  }
  ASSERT_EQ(first.size(), 3u);
  for (const auto& [node, c] : first) {
    EXPECT_NEAR(c, blocks / 3, blocks / 3 * 0.05) << node;
  }
  ASSERT_EQ(pairs.size(), 6u);
  for (const auto& [pair, c] : pairs) {
    EXPECT_NEAR(c, blocks / 6, blocks / 6 * 0.08) << pair.first << "," << pair.second;
  }
}

// Placement is a contract between every node and client of a cluster (and across versions:
// blocks stay where older nodes put them): these scores must never change by accident.
TEST(PlacementTest, ScoresArePinned) {
  ChainHash h;
  for (size_t b = 0; b < kChainHashBytes; ++b) h.bytes[b] = static_cast<uint8_t>(b * 37 + 11);
  EXPECT_EQ(RendezvousSeed("node-0"), 0x982acdf804e97d99ULL);
  EXPECT_EQ(RendezvousKey(h), 0x800860d84048e038ULL);
  EXPECT_EQ(RendezvousScore("node-0", h), 0x2b1b5e3d435c47f1ULL);
  EXPECT_EQ(RendezvousScore("node-1", h), 0x6df2a2f080bec5f2ULL);
  EXPECT_EQ(RendezvousScore("store-a", HashOf(12345)), 0xc75c905646cca6dfULL);
}

TEST(PlacementTest, FindAndNormalize) {
  std::vector<Member> m = {{.id = "b"}, {.id = "a"}, {.id = "b", .address = "dup"}};
  Normalize(&m);
  ASSERT_EQ(m.size(), 2u);
  EXPECT_EQ(m[0].id, "a");
  EXPECT_EQ(m[1].address, "");
  MemberSet set{.epoch = 3, .members = m};
  EXPECT_EQ(set.Find("b"), 1);
  EXPECT_EQ(set.Find("c"), -1);
}

// Every node keeps the largest replication factor any member records, so nodes part-way
// through a change of cluster_replicas agree on who owns a block.
TEST(PlacementTest, NodesKeepTheLargestReplicasAnyMemberRecords) {
  std::vector<Member> members = {{.id = "a", .replicas = 2},
                                 {.id = "b", .replicas = 3},
                                 {.id = "c", .replicas = 0}};  // unknown: counts for nothing
  EXPECT_EQ(ReplicasKept(members, 1), 3);
  EXPECT_EQ(ReplicasKept(members, 4), 4);
  EXPECT_THAT(MembersKeepingOtherReplicas(members, 1), ::testing::ElementsAre("a=2"));
  EXPECT_THAT(MembersKeepingOtherReplicas(members, 4), ::testing::ElementsAre("a=2", "b=3"));
  members[0].replicas = 3;
  EXPECT_THAT(MembersKeepingOtherReplicas(members, 3), ::testing::IsEmpty());
  EXPECT_EQ(ReplicasKept({}, 2), 2);
}

}  // namespace
}  // namespace strata::cluster
