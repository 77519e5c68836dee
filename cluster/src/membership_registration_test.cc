// Membership against a real etcd (LocalEtcd) when things go wrong under it: a node's id
// taken over while it was away, a member's record that no longer decodes, an etcd that
// refuses writes for a while.
#include <cstdlib>
#include <memory>
#include <string>

#include "absl/strings/numbers.h"
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

class MembershipRegistrationTest : public EtcdSuite {
 protected:
  static std::string Key(const std::string& cluster, const std::string& id) {
    return absl::StrCat("/strata/", cluster, "/nodes/", id);
  }
  // Waits (bounded) until `m`'s current set has exactly `count` members.
  static bool WaitForCount(const Membership& m, size_t count) {
    for (absl::Time end = absl::Now() + absl::Seconds(10); absl::Now() < end;) {
      if (m.Current()->members.size() == count) return true;
      absl::SleepFor(absl::Milliseconds(20));
    }
    return false;
  }
};

// A node that must register again (its lease lost: cut off from etcd past its TTL) finds its
// id held at another address under another live lease — a replacement started meanwhile —
// and leaves it there: it waits a lease TTL and gives up its membership. Before, only a
// node's first registration looked, and it took the key back without a word: the replacement
// kept serving as that id with nobody routing to it.
TEST_F(MembershipRegistrationTest, ANodeRegisteringAgainLeavesItsIdToALiveReplacement) {
  const std::string key = Key("twin", "x");
  auto node = Membership::Start({.mode = MembershipMode::kEtcd,
                                 .cluster = "twin",
                                 .self = Member{.id = "x", .address = "127.0.0.1:11"},
                                 .etcd_endpoints = {etcd_->endpoint()},
                                 .lease_ttl = absl::Seconds(1)});
  ASSERT_THAT(node, IsOk());
  absl::StatusOr<std::optional<KeyValue>> mine = client_->Get(key);
  ASSERT_THAT(mine, IsOk());
  ASSERT_TRUE(mine->has_value());
  // The replacement registers x at its own address under its own lease; then x's old lease
  // ends, as it would on the cut-off node's side.
  absl::StatusOr<int64_t> other = client_->GrantLease(absl::Minutes(2));
  ASSERT_THAT(other, IsOk());
  ASSERT_THAT(client_->Put(key, EncodeMember({.id = "x", .address = "127.0.0.1:22"}), *other),
              IsOk());
  ASSERT_THAT(client_->RevokeLease((*mine)->lease), IsOk());
  // Its lease TTL (1 s) and 2 s more for the wait, and some for the keepalive to notice.
  absl::SleepFor(absl::Seconds(6));
  absl::StatusOr<std::optional<KeyValue>> now = client_->Get(key);
  ASSERT_THAT(now, IsOk());
  ASSERT_TRUE(now->has_value());
  EXPECT_EQ((*now)->lease, *other) << "the node took its id back from the live replacement";
  EXPECT_THAT((*now)->value, ::testing::HasSubstr("127.0.0.1:22"));
  EXPECT_THAT(client_->RevokeLease(*other), IsOk());
}

// A member's record rewritten with a value that does not decode (no address) leaves the set
// seen through the watch, as it leaves a listing. Before, the watch kept the old record:
// watching nodes and clients placed blocks on the member, listing ones did not.
TEST_F(MembershipRegistrationTest, ARecordThatNoLongerDecodesLeavesTheWatchersSetToo) {
  absl::StatusOr<int64_t> lease = client_->GrantLease(absl::Minutes(2));
  ASSERT_THAT(lease, IsOk());
  for (const char* id : {"a", "b"}) {
    ASSERT_THAT(
        client_->Put(Key("odd", id), EncodeMember({.id = id, .address = "127.0.0.1:1"}), *lease),
        IsOk());
  }
  auto watcher = Membership::Start(
      {.mode = MembershipMode::kEtcd, .cluster = "odd", .etcd_endpoints = {etcd_->endpoint()}});
  ASSERT_THAT(watcher, IsOk());
  ASSERT_TRUE(WaitForCount(**watcher, 2));
  ASSERT_THAT(client_->Put(Key("odd", "b"), "zone=z9\n", *lease), IsOk());
  EXPECT_TRUE(WaitForCount(**watcher, 1)) << "the watch kept b";
  auto lister = Membership::Start({.mode = MembershipMode::kEtcd,
                                   .cluster = "odd",
                                   .etcd_endpoints = {etcd_->endpoint()},
                                   .watch = false});
  ASSERT_THAT(lister, IsOk());
  EXPECT_EQ((*lister)->Current()->members.size(), 1u);
  EXPECT_THAT(client_->RevokeLease(*lease), IsOk());
}

// The epoch of a change is raised even when etcd refused the first raise. An etcd out of
// space (its quota reached: NOSPACE) takes deletes and keepalives but refuses puts and
// transactions: a member leaves, the node sees it in its watch, and its raise fails. Once
// space is freed, the node raises the epoch on its own. Before, a failed raise was never
// tried again (the change was already applied, so no listing or event brought it up), and
// clients that do not watch routed by the set with the departed member until some other
// change.
TEST(MembershipEpochTest, AnEpochRaiseEtcdRefusedIsMadeOnceItTakesWritesAgain) {
  auto etcd = LocalEtcd::Start({.extra_args = {"--quota-backend-bytes=4194304"}});
  ASSERT_THAT(etcd, IsOk());
  auto client = EtcdClient::Create({.endpoints = {(*etcd)->endpoint()}});
  ASSERT_THAT(client, IsOk());
  EtcdClient& kv = **client;
  auto node = Membership::Start({.mode = MembershipMode::kEtcd,
                                 .cluster = "full",
                                 .self = Member{.id = "a", .address = "127.0.0.1:11"},
                                 .etcd_endpoints = {(*etcd)->endpoint()}});
  ASSERT_THAT(node, IsOk());
  absl::StatusOr<int64_t> lease = kv.GrantLease(absl::Minutes(2));
  ASSERT_THAT(lease, IsOk());
  const std::string b = "/strata/full/nodes/b";
  ASSERT_THAT(kv.Put(b, EncodeMember({.id = "b", .address = "127.0.0.1:12"}), *lease), IsOk());
  for (absl::Time end = absl::Now() + absl::Seconds(10);
       absl::Now() < end && (*node)->Current()->members.size() < 2;) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  ASSERT_EQ((*node)->Current()->members.size(), 2u);
  auto epoch = [&]() -> uint64_t {
    absl::StatusOr<std::optional<KeyValue>> e = kv.Get("/strata/full/epoch");
    uint64_t v = 0;
    if (e.ok() && e->has_value() && !absl::SimpleAtoi((*e)->value, &v)) v = 0;
    return v;
  };
  // Fill etcd until it refuses writes.
  const std::string filler(96 << 10, 'f');
  int filled = 0;
  for (; filled < 200 && kv.Put(absl::StrCat("/fill/", filled), filler, 0).ok(); ++filled) {
  }
  ASSERT_LT(filled, 200) << "etcd never reached its quota";
  const uint64_t before = epoch();
  ASSERT_THAT(kv.Delete(b), IsOk());  // deletes still go through
  absl::StatusOr<RangeResult> deleted = kv.GetPrefix("/strata/full/");
  ASSERT_THAT(deleted, IsOk());
  const uint64_t left = deleted->revision;  // the departure's (nothing else is written)
  for (absl::Time end = absl::Now() + absl::Seconds(10);
       absl::Now() < end && (*node)->Current()->members.size() > 1;) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  ASSERT_EQ((*node)->Current()->members.size(), 1u);
  absl::SleepFor(absl::Seconds(1));
  ASSERT_EQ(epoch(), before) << "etcd took the raise while out of space";
  // Space back: the fillers deleted, compacted, defragmented, the alarm disarmed.
  for (int i = 0; i < filled; ++i) ASSERT_THAT(kv.Delete(absl::StrCat("/fill/", i)), IsOk());
  absl::StatusOr<RangeResult> now = kv.GetPrefix("/strata/");
  ASSERT_THAT(now, IsOk());
  const std::string etcdctl = absl::StrCat("etcdctl --endpoints ", (*etcd)->endpoint());
  for (const std::string& step : {absl::StrCat(" compact ", now->revision), std::string(" defrag"),
                                  std::string(" alarm disarm")}) {
    ASSERT_EQ(std::system((etcdctl + step + " > /dev/null 2>&1").c_str()), 0) << step;
  }
  uint64_t after = epoch();
  for (absl::Time end = absl::Now() + absl::Seconds(10); absl::Now() < end && after < left;) {
    absl::SleepFor(absl::Milliseconds(50));
    after = epoch();
  }
  EXPECT_GE(after, left) << "the departure's epoch was never raised";
  EXPECT_THAT(kv.RevokeLease(*lease), IsOk());
}

}  // namespace
}  // namespace strata::cluster
