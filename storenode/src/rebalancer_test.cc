// The rebalancer's timing of passes against a static member set, on a node that holds no
// block (a pass then examines nothing and asks no peer): which member sets call for a pass,
// and that sets which keep changing hold passes off for a while only.
#include "rebalancer.h"

#include <memory>
#include <vector>

#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "strata/testutil/status_matchers.h"

namespace strata::storenode {
namespace {

using ::strata::testutil::IsOk;

class RebalancerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    TieredStoreOptions o;
    o.warm.capacity_bytes = 1 << 20;
    o.warm.max_block_bytes = 4096;
    auto store = TieredStore::Create(std::move(o));
    ASSERT_THAT(store.status(), IsOk());
    store_ = std::move(*store);
    cluster::MembershipOptions m;
    m.mode = cluster::MembershipMode::kStatic;
    m.static_members = {{.id = "node-0", .address = "127.0.0.1:1"},
                        {.id = "node-1", .address = "127.0.0.1:2"}};
    auto membership = cluster::Membership::Start(std::move(m));
    ASSERT_THAT(membership.status(), IsOk());
    membership_ = std::move(*membership);
  }

  std::unique_ptr<Rebalancer> Start(absl::Duration settle, absl::Duration interval) {
    return std::make_unique<Rebalancer>(
        RebalancerOptions{.replicas = 1, .settle = settle, .interval = interval}, store_.get(),
        membership_.get(), "node-0");
  }

  // Waits (bounded: a minute) until `r` has completed `passes` passes.
  static bool WaitForPasses(const Rebalancer& r, uint64_t passes) {
    for (absl::Time end = absl::Now() + absl::Minutes(1); absl::Now() < end;) {
      if (r.progress().passes >= passes) return true;
      absl::SleepFor(absl::Milliseconds(20));
    }
    return false;
  }

  std::unique_ptr<TieredStore> store_;
  std::unique_ptr<cluster::Membership> membership_;
};

// Sets that place every block alike (a new epoch, a member's new capacities) call for no
// pass; a member's zone or placement scheme, a member joining, or a larger count of copies
// recorded by a member each do, counted once as a change of placement. A member's new address
// places nothing otherwise but calls for a pass too: one under way would go on calling the old
// address. (No settle, no periodic pass: each kick is a pass of its own.)
TEST_F(RebalancerTest, OnlySetsThatPlaceOtherwiseOrMoveAMemberCallForAPass) {
  std::unique_ptr<Rebalancer> r = Start(absl::ZeroDuration(), absl::Hours(1));
  ASSERT_TRUE(WaitForPasses(*r, 1)) << "no first pass";
  cluster::MemberSet s = *membership_->Current();
  auto changes = [&] { return r->progress().placement_changes; };
  uint64_t passes = r->progress().passes;
  // `s` calls for a pass: one comes.
  auto passes_after = [&](const cluster::MemberSet& set) {
    r->OnMemberSet(set);
    return WaitForPasses(*r, ++passes);
  };
  ASSERT_EQ(changes(), 0u) << "the set at start is no change";
  s.epoch += 5;
  r->OnMemberSet(s);
  s.members[1].warm_bytes = 99;
  r->OnMemberSet(s);
  EXPECT_EQ(changes(), 0u);
  s.members[1].address = "127.0.0.1:3";
  EXPECT_TRUE(passes_after(s)) << "a member's new address";
  EXPECT_EQ(changes(), 0u);
  s.members[1].zone = "b";
  EXPECT_TRUE(passes_after(s)) << "a zone";
  EXPECT_EQ(changes(), 1u);
  s.members[1].placement = cluster::kPlacementScheme + 1;
  EXPECT_TRUE(passes_after(s)) << "a placement scheme";
  EXPECT_EQ(changes(), 2u);
  s.members.push_back({.id = "node-2", .address = "127.0.0.1:4"});
  EXPECT_TRUE(passes_after(s)) << "a join";
  EXPECT_EQ(changes(), 3u);
  s.members[2].replicas = 3;  // more copies than this node's own 1
  EXPECT_TRUE(passes_after(s)) << "more copies";
  EXPECT_EQ(changes(), 4u);
  r->OnMemberSet(s);
  EXPECT_EQ(changes(), 4u) << "the same set again";
}

// Member sets that change faster than rebalance_settle (a member flapping) would never let a
// pass start: passes start at most max(interval, settle) after the first change not yet
// passed (here 1 s), so copies lost with a dead node still come back. Changes every 10 ms
// for up to a minute; without that bound no pass came at all.
TEST_F(RebalancerTest, SetsThatKeepChangingHoldPassesOffForAWhileOnly) {
  std::unique_ptr<Rebalancer> r = Start(absl::Milliseconds(300), absl::Seconds(1));
  ASSERT_TRUE(WaitForPasses(*r, 1)) << "no first pass";
  const uint64_t base = r->progress().passes;
  cluster::MemberSet a = *membership_->Current();
  cluster::MemberSet b = a;
  b.members.push_back({.id = "node-2", .address = "127.0.0.1:4"});
  bool passed = false;
  for (absl::Time end = absl::Now() + absl::Minutes(1); !passed && absl::Now() < end;) {
    r->OnMemberSet(b);
    absl::SleepFor(absl::Milliseconds(10));
    r->OnMemberSet(a);
    absl::SleepFor(absl::Milliseconds(10));
    passed = r->progress().passes >= base + 2;
  }
  EXPECT_TRUE(passed) << "passes " << r->progress().passes << ", changes "
                      << r->progress().placement_changes;
  EXPECT_GT(r->progress().placement_changes, 2u);
}

}  // namespace
}  // namespace strata::storenode
