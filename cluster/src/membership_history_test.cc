// Membership's earlier member sets (PreviousSets), against a real etcd (LocalEtcd): members
// are registered by hand under /strata/<cluster>/nodes/, as nodes register themselves.
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "etcd_suite.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "strata/cluster/membership.h"
#include "strata/testutil/status_matchers.h"

namespace strata::cluster {
namespace {

using ::strata::testutil::IsOk;

constexpr char kCluster[] = "history";

class MembershipHistoryTest : public EtcdSuite {
 protected:
  void SetUp() override {
    EtcdSuite::SetUp();
    if (HasFatalFailure()) return;
    // Members are read only from keys under a lease (as a node's registration is).
    absl::StatusOr<int64_t> lease = client_->GrantLease(absl::Minutes(2));
    ASSERT_THAT(lease, IsOk());
    lease_ = *lease;
  }

  static std::string Key(const std::string& id) {
    return absl::StrCat("/strata/", kCluster, "/nodes/", id);
  }
  void Register(const std::string& id, const std::string& address = "127.0.0.1:1") {
    ASSERT_THAT(client_->Put(Key(id), EncodeMember({.id = id, .address = address}), lease_),
                IsOk());
  }
  void Deregister(const std::string& id) { ASSERT_THAT(client_->Delete(Key(id)), IsOk()); }

  // The ids of a set, joined: "a,b,c".
  static std::string Ids(const MemberSet& set) {
    std::string out;
    for (const Member& m : set.members) absl::StrAppend(&out, out.empty() ? "" : ",", m.id);
    return out;
  }
  static std::vector<std::string> History(const Membership& m) {
    std::vector<std::string> out;
    for (const auto& s : m.PreviousSets()) out.push_back(Ids(*s));
    return out;
  }
  // Waits (bounded) until the watch delivered a set whose members are `ids` and whose first
  // member has `address`.
  static bool WaitFor(const Membership& m, const std::string& ids,
                      const std::string& address = "127.0.0.1:1") {
    for (absl::Time end = absl::Now() + absl::Seconds(10); absl::Now() < end;) {
      std::shared_ptr<const MemberSet> now = m.Current();
      if (Ids(*now) == ids && now->members[0].address == address) return true;
      absl::SleepFor(absl::Milliseconds(20));
    }
    return false;
  }

  int64_t lease_ = 0;
};

// Each set that places blocks otherwise is kept once, newest first, at most
// kPreviousSetsKept: a change of address moves no block and keeps no set; a node that
// leaves and comes back leaves one set (the one without it) and not a second copy of the
// set with it, which is the current one again. Before, every change pushed the set before it,
// and four were kept: a rolling restart of two nodes pushed out the set of four.
TEST_F(MembershipHistoryTest, KeepsEachSetThatPlacedOtherwiseOnce) {
  for (const char* id : {"a", "b", "c"}) Register(id);
  auto m = Membership::Start(
      {.mode = MembershipMode::kEtcd, .cluster = kCluster, .etcd_endpoints = {etcd_->endpoint()}});
  ASSERT_THAT(m, IsOk());
  Membership& members = **m;
  ASSERT_TRUE(WaitFor(members, "a,b,c"));
  EXPECT_THAT(History(members), ::testing::IsEmpty());
  Register("d");
  ASSERT_TRUE(WaitFor(members, "a,b,c,d"));
  EXPECT_THAT(History(members), ::testing::ElementsAre("a,b,c"));
  const absl::Time since = members.Current()->since;
  Register("a", "127.0.0.1:2");  // a moved: placement is the same
  ASSERT_TRUE(WaitFor(members, "a,b,c,d", "127.0.0.1:2"));
  EXPECT_THAT(History(members), ::testing::ElementsAre("a,b,c"));
  EXPECT_EQ(members.Current()->since, since) << "no block moved";
  // b and then c restart (leave, come back).
  Deregister("b");
  ASSERT_TRUE(WaitFor(members, "a,c,d", "127.0.0.1:2"));
  Register("b");
  ASSERT_TRUE(WaitFor(members, "a,b,c,d", "127.0.0.1:2"));
  Deregister("c");
  ASSERT_TRUE(WaitFor(members, "a,b,d", "127.0.0.1:2"));
  Register("c");
  ASSERT_TRUE(WaitFor(members, "a,b,c,d", "127.0.0.1:2"));
  EXPECT_THAT(History(members), ::testing::ElementsAre("a,b,d", "a,c,d", "a,b,c"));
  // Joins past the cap keep the newest kPreviousSetsKept.
  std::vector<std::string> ids = {"a", "b", "c", "d"};
  for (char id = 'e'; id <= 'm'; ++id) {
    Register(std::string(1, id));
    ids.push_back(std::string(1, id));
    std::string joined;
    for (const std::string& i : ids) absl::StrAppend(&joined, joined.empty() ? "" : ",", i);
    ASSERT_TRUE(WaitFor(members, joined, "127.0.0.1:2"));
  }
  const std::vector<std::string> history = History(members);
  ASSERT_EQ(history.size(), Membership::kPreviousSetsKept);
  EXPECT_EQ(history.front(), "a,b,c,d,e,f,g,h,i,j,k,l");
  EXPECT_EQ(Ids(*members.Previous()), history.front());
}

}  // namespace
}  // namespace strata::cluster
