#include "strata/cluster/membership.h"

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace strata::cluster {
namespace {

TEST(MembershipTest, ParsesStaticMembers) {
  auto m = ParseStaticMembers(" b=10.0.0.2:7070@z1, a=10.0.0.1:7070 ");
  ASSERT_TRUE(m.ok()) << m.status();
  ASSERT_EQ(m->size(), 2u);
  EXPECT_EQ((*m)[0].id, "a");
  EXPECT_EQ((*m)[0].zone, "");
  EXPECT_EQ((*m)[1].address, "10.0.0.2:7070");
  EXPECT_EQ((*m)[1].zone, "z1");
  EXPECT_EQ(ParseStaticMembers("a=1:1,a=2:2").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseStaticMembers("=1:1").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseStaticMembers("a").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(MembershipTest, MemberValuesRoundTripAndTolerateNewFields) {
  Member m{.id = "n1",
           .address = "h:1",
           .zone = "z",
           .warm_bytes = 5,
           .cool_bytes = 6,
           .cold_bytes = 7,
           .replicas = 2};
  auto back = DecodeMember("n1", EncodeMember(m) + "future_field=1\n");
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(*back, m);
  EXPECT_EQ(DecodeMember("n1", "zone=z\n").status().code(), absl::StatusCode::kInvalidArgument);
}

// A member records the placement scheme it routes by; one written before the key existed
// places by scheme 1, and is what MembersPlacingOtherwise names.
TEST(MembershipTest, MembersRecordTheirPlacementScheme) {
  Member m{.id = "n1", .address = "h:1"};
  EXPECT_EQ(m.placement, kPlacementScheme);
  EXPECT_THAT(EncodeMember(m), ::testing::HasSubstr(absl::StrCat("placement=", kPlacementScheme)));
  auto old = DecodeMember("n0", "address=h:0\nzone=\nreplicas=1\n");
  ASSERT_TRUE(old.ok()) << old.status();
  EXPECT_EQ(old->placement, 1u);
  auto next = DecodeMember("n2", "address=h:2\nplacement=3\n");
  ASSERT_TRUE(next.ok()) << next.status();
  EXPECT_EQ(next->placement, 3u);
  const std::vector<Member> members = {*old, m, *next};
  EXPECT_THAT(MembersPlacingOtherwise(members), ::testing::ElementsAre("n0", "n2"));
  EXPECT_THAT(MembersPlacingOtherwise(std::vector<Member>{m}), ::testing::IsEmpty());
}

TEST(MembershipTest, ModesOutsideEtcdAreFixedSets) {
  auto single = Membership::Start(
      {.mode = MembershipMode::kSingle, .self = Member{.id = "me", .address = "127.0.0.1:1"}});
  ASSERT_TRUE(single.ok()) << single.status();
  EXPECT_EQ((*single)->Current()->members.size(), 1u);
  EXPECT_EQ((*single)->epoch(), 1u);
  EXPECT_TRUE((*single)->connected());
  EXPECT_EQ((*single)->Previous(), nullptr);

  auto fixed = Membership::Start(
      {.mode = MembershipMode::kStatic,
       .static_members = {{.id = "b", .address = "x:2"}, {.id = "a", .address = "x:1"}}});
  ASSERT_TRUE(fixed.ok());
  EXPECT_EQ((*fixed)->Current()->members[0].id, "a");  // sorted by id
  EXPECT_TRUE((*fixed)->Refresh().ok());

  EXPECT_EQ(Membership::Start({.mode = MembershipMode::kStatic}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Membership::Start({.mode = MembershipMode::kEtcd}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseMembershipMode("raft").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(MembershipTest, EtcdModeWithoutEtcdIsUnavailableWithinTheStartupTimeout) {
  // Port 1 on loopback: nothing listens there.
  auto m = Membership::Start({.mode = MembershipMode::kEtcd,
                              .etcd_endpoints = {"127.0.0.1:1"},
                              .startup_timeout = absl::Seconds(2)});
  EXPECT_EQ(m.status().code(), absl::StatusCode::kUnavailable) << m.status();
}

}  // namespace
}  // namespace strata::cluster
