// EtcdClient against a real etcd (LocalEtcd on free loopback ports). Every wait is bounded:
// conditions are polled until a deadline, never timed.
#include "strata/cluster/etcd_client.h"

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "etcd_suite.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "strata/cluster/local_etcd.h"
#include "strata/testutil/status_matchers.h"

namespace strata::cluster {
namespace {

using ::strata::testutil::IsOk;
using ::strata::testutil::StatusIs;
using ::testing::AnyOf;
using ::testing::HasSubstr;

// Polls `condition` every 20 ms until it holds or `timeout` passes; returns whether it held.
bool Eventually(absl::Duration timeout, const std::function<bool()>& condition) {
  const absl::Time give_up = absl::Now() + timeout;
  while (!condition()) {
    if (absl::Now() > give_up) return false;
    absl::SleepFor(absl::Milliseconds(20));
  }
  return true;
}

// A loopback port nobody listens on: 1 (tcpmux), privileged and unused. Until 2026-11-29 a
// port bound and released, which a server of a parallel test could get meanwhile.
int DeadPort() { return 1; }

std::unique_ptr<EtcdClient> MustConnect(std::vector<std::string> endpoints,
                                        absl::Duration timeout = absl::Seconds(2)) {
  auto client = EtcdClient::Create({.endpoints = std::move(endpoints), .request_timeout = timeout});
  EXPECT_THAT(client, IsOk());
  return client.ok() ? std::move(*client) : nullptr;
}

// A loopback listener that takes connections and never answers (a wedged etcd member): the
// kernel accepts, nobody reads. endpoint() is empty if it could not be set up.
class HungListener {
 public:
  HungListener() {
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(addr);
    if (fd_ >= 0 && bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
        listen(fd_, 16) == 0 && getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
      endpoint_ = absl::StrCat("127.0.0.1:", ntohs(addr.sin_port));
    }
  }
  ~HungListener() {
    if (fd_ >= 0) close(fd_);
  }
  HungListener(const HungListener&) = delete;
  HungListener& operator=(const HungListener&) = delete;
  const std::string& endpoint() const { return endpoint_; }

 private:
  int fd_ = -1;
  std::string endpoint_;
};

// What a watch delivered, for the test thread to look at.
class WatchLog {
 public:
  std::function<void(std::span<const WatchEvent>)> OnEvents() {
    return [this](std::span<const WatchEvent> batch) {
      absl::MutexLock lock(&mu_);
      EXPECT_FALSE(closed_) << "event batch after the watch was destroyed";
      events_.insert(events_.end(), batch.begin(), batch.end());
    };
  }
  std::function<void(absl::Status)> OnError() {
    return [this](absl::Status s) {
      absl::MutexLock lock(&mu_);
      EXPECT_FALSE(closed_) << "on_error after the watch was destroyed";
      errors_.push_back(std::move(s));
    };
  }
  // Any callback from now on fails the test.
  void Close() {
    absl::MutexLock lock(&mu_);
    closed_ = true;
  }
  std::vector<WatchEvent> events() {
    absl::MutexLock lock(&mu_);
    return events_;
  }
  std::vector<absl::Status> errors() {
    absl::MutexLock lock(&mu_);
    return errors_;
  }

 private:
  absl::Mutex mu_;
  std::vector<WatchEvent> events_ ABSL_GUARDED_BY(mu_);
  std::vector<absl::Status> errors_ ABSL_GUARDED_BY(mu_);
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
};

Compare NumberIs(Compare::Target target, Compare::Op op, std::string key, int64_t number) {
  Compare c;
  c.target = target;
  c.op = op;
  c.key = std::move(key);
  c.number = number;
  return c;
}

Compare ValueIs(std::string key, std::string value) {
  Compare c;
  c.target = Compare::Target::kValue;
  c.key = std::move(key);
  c.value = std::move(value);
  return c;
}

TxnOp PutOp(std::string key, std::string value) {
  TxnOp op;
  op.key = std::move(key);
  op.value = std::move(value);
  return op;
}

TxnOp DeleteOp(std::string key) {
  TxnOp op;
  op.kind = TxnOp::Kind::kDelete;
  op.key = std::move(key);
  return op;
}

MATCHER_P(IsOkAndHolds, matcher, "is OK and holds a matching value") {
  if (!arg.ok()) {
    *result_listener << "status is " << arg.status();
    return false;
  }
  return ::testing::ExplainMatchResult(matcher, *arg, result_listener);
}

MATCHER_P4(IsEvent, type, key, value, mod_revision, "") {
  return arg.type == type && arg.kv.key == key && arg.kv.value == value &&
         arg.kv.mod_revision == mod_revision;
}

TEST(PrefixRangeEndTest, IncrementsTheLastByteBelowFF) {
  EXPECT_EQ(PrefixRangeEnd("a"), "b");
  EXPECT_EQ(PrefixRangeEnd("/nodes/"), "/nodes0");
  EXPECT_EQ(PrefixRangeEnd(std::string("a\xff", 2)), "b");
  EXPECT_EQ(PrefixRangeEnd(std::string("a\xfe\xff", 3)), std::string("a\xff", 2));
  EXPECT_EQ(PrefixRangeEnd(std::string("\xff\xff", 2)), std::string(1, '\0'));
  EXPECT_EQ(PrefixRangeEnd(""), std::string(1, '\0'));
}

TEST(EtcdClientCreateTest, RejectsMissingOrGarbledEndpoints) {
  EXPECT_THAT(EtcdClient::Create({}), StatusIs(absl::StatusCode::kInvalidArgument));
  for (const char* bad : {"", "localhost", "localhost:", ":2379", "host:0", "host:65536",
                          "host:12a", "http://host:2379", "a b:1", "[::1:2379", "h:1:2"}) {
    EXPECT_THAT(EtcdClient::Create({.endpoints = {"127.0.0.1:2379", bad}}),
                StatusIs(absl::StatusCode::kInvalidArgument))
        << "endpoint \"" << bad << "\"";
  }
  EXPECT_THAT(EtcdClient::Create(
                  {.endpoints = {"127.0.0.1:2379"}, .request_timeout = absl::ZeroDuration()}),
              StatusIs(absl::StatusCode::kInvalidArgument));
  // Valid ones need no etcd to be up.
  EXPECT_THAT(EtcdClient::Create({.endpoints = {"localhost:2379", "[::1]:2379", "10.0.0.1:1"}}),
              IsOk());
}

TEST(EtcdClientUnreachableTest, DeadEndpointFailsWithinTheDeadline) {
  const std::string endpoint = absl::StrCat("127.0.0.1:", DeadPort());
  std::unique_ptr<EtcdClient> client = MustConnect({endpoint}, absl::Seconds(1));
  ASSERT_NE(client, nullptr);
  const auto down = AnyOf(StatusIs(absl::StatusCode::kUnavailable),
                          StatusIs(absl::StatusCode::kDeadlineExceeded));
  const absl::Time start = absl::Now();
  absl::StatusOr<std::optional<KeyValue>> got = client->Get("k");
  EXPECT_THAT(got, down);
  EXPECT_THAT(got.status().message(), HasSubstr(endpoint));
  EXPECT_THAT(got.status().message(), HasSubstr("Get"));
  EXPECT_THAT(client->Put("k", "v"), down);
  EXPECT_THAT(client->GrantLease(absl::Seconds(5)), down);
  WatchLog log;
  EXPECT_THAT(client->WatchPrefix("k", 0, log.OnEvents(), log.OnError()), down);
  EXPECT_LT(absl::Now() - start, absl::Seconds(8));  // four calls of at most 1 s each
  EXPECT_TRUE(log.errors().empty());
}

TEST(EtcdClientUnreachableTest, BlackholedEndpointFailsWithinTheDeadline) {
  // TEST-NET-1: never routed; connecting hangs or fails at once, depending on the network.
  std::unique_ptr<EtcdClient> client = MustConnect({"192.0.2.1:2379"}, absl::Seconds(1));
  ASSERT_NE(client, nullptr);
  const absl::Time start = absl::Now();
  EXPECT_THAT(client->Get("k"), AnyOf(StatusIs(absl::StatusCode::kUnavailable),
                                      StatusIs(absl::StatusCode::kDeadlineExceeded)));
  EXPECT_LT(absl::Now() - start, absl::Seconds(3));
}

class EtcdClientTest : public EtcdSuite {
 protected:
  // A key prefix of this test's own.
  static std::string Prefix() {
    return absl::StrCat("/test/", ::testing::UnitTest::GetInstance()->current_test_info()->name(),
                        "/");
  }
};

TEST_F(EtcdClientTest, PutGetDeleteRoundTrip) {
  const std::string key = Prefix() + "k";
  const std::string bytes("v\0\xff\n", 4);
  absl::StatusOr<int64_t> first = client_->Put(key, bytes);
  ASSERT_THAT(first, IsOk());
  EXPECT_GT(*first, 0);
  absl::StatusOr<std::optional<KeyValue>> got = client_->Get(key);
  ASSERT_THAT(got, IsOk());
  ASSERT_TRUE(got->has_value());
  EXPECT_EQ(**got, (KeyValue{.key = key,
                             .value = bytes,
                             .create_revision = *first,
                             .mod_revision = *first,
                             .version = 1}));

  absl::StatusOr<int64_t> second = client_->Put(key, "v2");
  ASSERT_THAT(second, IsOk());
  EXPECT_EQ(*second, *first + 1);
  got = client_->Get(key);
  ASSERT_THAT(got, IsOk());
  ASSERT_TRUE(got->has_value());
  EXPECT_EQ(**got, (KeyValue{.key = key,
                             .value = "v2",
                             .create_revision = *first,
                             .mod_revision = *second,
                             .version = 2}));

  EXPECT_THAT(client_->Delete(key), IsOkAndHolds(1));
  got = client_->Get(key);
  ASSERT_THAT(got, IsOk());
  EXPECT_FALSE(got->has_value());
  EXPECT_THAT(client_->Delete(key), IsOkAndHolds(0));
}

TEST_F(EtcdClientTest, GetPrefixListsExactlyThePrefix) {
  const std::string p = Prefix();  // "/test/GetPrefixListsExactlyThePrefix/"
  const std::string q = p + "q\xff";
  // PrefixRangeEnd(q) is p + "r": in p, just past q.
  for (const std::string& key : {p + "a", p + "b/c", q, q + "\x01", PrefixRangeEnd(q)}) {
    ASSERT_THAT(client_->Put(key, "in:" + key), IsOk());
  }
  // p's range end itself, just past p.
  absl::StatusOr<int64_t> last = client_->Put(PrefixRangeEnd(p), "out");
  ASSERT_THAT(last, IsOk());

  absl::StatusOr<RangeResult> all = client_->GetPrefix(p);
  ASSERT_THAT(all, IsOk());
  std::vector<std::string> keys;
  for (const KeyValue& kv : all->kvs) {
    keys.push_back(kv.key);
    EXPECT_EQ(kv.value, "in:" + kv.key);
  }
  EXPECT_THAT(keys, ::testing::ElementsAre(p + "a", p + "b/c", q, q + "\x01", p + "r"));
  EXPECT_EQ(all->revision, *last);

  absl::StatusOr<RangeResult> ff = client_->GetPrefix(q);
  ASSERT_THAT(ff, IsOk());
  ASSERT_EQ(ff->kvs.size(), 2u);
  EXPECT_EQ(ff->kvs[0].key, q);
  EXPECT_EQ(ff->kvs[1].key, q + "\x01");

  absl::StatusOr<RangeResult> none = client_->GetPrefix(p + "zzz");
  ASSERT_THAT(none, IsOk());
  EXPECT_TRUE(none->kvs.empty());
  EXPECT_EQ(none->revision, *last);
}

TEST_F(EtcdClientTest, TxnCompareAndSetAppliesTheCompare) {
  const std::string key = Prefix() + "leader";
  const std::string lost = Prefix() + "lost";
  const Compare absent = NumberIs(Compare::Target::kCreateRevision, Compare::Op::kEqual, key, 0);
  const TxnOp mark_lost = PutOp(lost, "1");

  const TxnOp claim_a = PutOp(key, "a");
  EXPECT_THAT(client_->Txn({&absent, 1}, {&claim_a, 1}, {&mark_lost, 1}), IsOkAndHolds(true));
  EXPECT_THAT(client_->Get(key),
              IsOkAndHolds(::testing::Optional(::testing::Field(&KeyValue::value, "a"))));
  EXPECT_THAT(client_->Get(lost), IsOkAndHolds(std::optional<KeyValue>()));

  const TxnOp claim_b = PutOp(key, "b");
  EXPECT_THAT(client_->Txn({&absent, 1}, {&claim_b, 1}, {&mark_lost, 1}), IsOkAndHolds(false));
  absl::StatusOr<std::optional<KeyValue>> held = client_->Get(key);
  ASSERT_THAT(held, IsOk());
  ASSERT_TRUE(held->has_value());
  EXPECT_EQ((*held)->value, "a");
  EXPECT_THAT(client_->Get(lost),
              IsOkAndHolds(::testing::Optional(::testing::Field(&KeyValue::value, "1"))));

  // Value and mod-revision compares; several compares must all hold.
  const int64_t mod = (*held)->mod_revision;
  const std::vector<Compare> is_a = {
      ValueIs(key, "a"), NumberIs(Compare::Target::kModRevision, Compare::Op::kEqual, key, mod)};
  const std::vector<Compare> stale = {
      ValueIs(key, "a"), NumberIs(Compare::Target::kModRevision, Compare::Op::kLess, key, mod)};
  const TxnOp remove = DeleteOp(key);
  EXPECT_THAT(client_->Txn(stale, {&remove, 1}, {}), IsOkAndHolds(false));
  EXPECT_THAT(client_->Txn(is_a, {&remove, 1}, {}), IsOkAndHolds(true));
  EXPECT_THAT(client_->Get(key), IsOkAndHolds(std::optional<KeyValue>()));
  EXPECT_THAT(client_->Txn(is_a, {&remove, 1}, {}), IsOkAndHolds(false));
}

TEST_F(EtcdClientTest, RevokedLeaseTakesItsKeys) {
  const std::string key = Prefix() + "k";
  absl::StatusOr<int64_t> lease = client_->GrantLease(absl::Seconds(30));
  ASSERT_THAT(lease, IsOk());
  EXPECT_GT(*lease, 0);
  ASSERT_THAT(client_->Put(key, "v", *lease), IsOk());
  EXPECT_THAT(client_->Get(key),
              IsOkAndHolds(::testing::Optional(::testing::Field(&KeyValue::lease, *lease))));

  EXPECT_THAT(client_->RevokeLease(*lease), IsOk());
  EXPECT_THAT(client_->Get(key), IsOkAndHolds(std::optional<KeyValue>()));
  EXPECT_THAT(client_->RevokeLease(*lease), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(client_->Put(key, "v", *lease), StatusIs(absl::StatusCode::kNotFound));
}

TEST_F(EtcdClientTest, KeepAliveHoldsALeaseThatWouldExpire) {
  const std::string kept_key = Prefix() + "kept";
  const std::string unkept_key = Prefix() + "unkept";
  const absl::Time granted = absl::Now();
  // 4 s leases, refreshed every 1.3 s: a stall of a second on a busy machine does not lose one.
  absl::StatusOr<int64_t> kept = client_->GrantLease(absl::Seconds(4));
  absl::StatusOr<int64_t> unkept = client_->GrantLease(absl::Seconds(4));
  ASSERT_THAT(kept, IsOk());
  ASSERT_THAT(unkept, IsOk());
  ASSERT_THAT(client_->Put(kept_key, "1", *kept), IsOk());
  ASSERT_THAT(client_->Put(unkept_key, "1", *unkept), IsOk());
  std::atomic<int> lost{0};
  ASSERT_THAT(client_->KeepAlive(*kept, absl::Seconds(4), [&](absl::Status) { ++lost; }), IsOk());
  EXPECT_THAT(client_->KeepAlive(*kept, absl::Seconds(4), nullptr),
              StatusIs(absl::StatusCode::kAlreadyExists));
  EXPECT_THAT(client_->KeepAlive(0, absl::Seconds(4), nullptr),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(client_->KeepAlive(*unkept, absl::Milliseconds(500), nullptr),
              StatusIs(absl::StatusCode::kInvalidArgument));

  auto absent = [&](const std::string& key) {
    absl::StatusOr<std::optional<KeyValue>> got = client_->Get(key);
    return got.ok() && !got->has_value();
  };
  EXPECT_TRUE(Eventually(absl::Seconds(15), [&] { return absent(unkept_key); }));
  absl::SleepFor(granted + absl::Seconds(9) - absl::Now());  // past two lifetimes
  absl::StatusOr<std::optional<KeyValue>> still = client_->Get(kept_key);
  ASSERT_THAT(still, IsOk());
  EXPECT_TRUE(still->has_value()) << "kept lease expired";
  EXPECT_EQ(lost.load(), 0);

  client_->StopKeepAlive(*kept);
  client_->StopKeepAlive(*kept);  // idempotent
  EXPECT_TRUE(Eventually(absl::Seconds(15), [&] { return absent(kept_key); }));
  EXPECT_EQ(lost.load(), 0);
}

TEST_F(EtcdClientTest, KeepAliveReportsARevokedLeaseOnce) {
  absl::StatusOr<int64_t> lease = client_->GrantLease(absl::Seconds(3));
  ASSERT_THAT(lease, IsOk());
  absl::Mutex mu;
  std::vector<absl::Status> lost;
  ASSERT_THAT(client_->KeepAlive(*lease, absl::Seconds(3),
                                 [&](absl::Status s) {
                                   absl::MutexLock lock(&mu);
                                   lost.push_back(std::move(s));
                                 }),
              IsOk());
  ASSERT_THAT(client_->RevokeLease(*lease), IsOk());
  auto lost_count = [&] {
    absl::MutexLock lock(&mu);
    return lost.size();
  };
  ASSERT_TRUE(Eventually(absl::Seconds(10), [&] { return lost_count() > 0; }));
  absl::SleepFor(absl::Milliseconds(1500));  // more than one refresh period (ttl/3)
  absl::MutexLock lock(&mu);
  ASSERT_EQ(lost.size(), 1u);
  EXPECT_THAT(lost[0], StatusIs(absl::StatusCode::kNotFound));
  // Dropped after it was lost: may be kept alive again (and is then lost again).
}

TEST_F(EtcdClientTest, WatchSeesPutsAndDeletesInRevisionOrder) {
  const std::string p = Prefix();
  WatchLog live;
  absl::StatusOr<std::unique_ptr<EtcdClient::Watch>> watch =
      client_->WatchPrefix(p, 0, live.OnEvents(), live.OnError());
  ASSERT_THAT(watch, IsOk());

  absl::StatusOr<int64_t> put_a = client_->Put(p + "a", "1");
  absl::StatusOr<int64_t> put_b = client_->Put(p + "b", "2");
  ASSERT_THAT(put_a, IsOk());
  ASSERT_THAT(put_b, IsOk());
  ASSERT_THAT(client_->Delete(p + "a"), IsOkAndHolds(1));
  ASSERT_THAT(client_->Put(PrefixRangeEnd(p), "outside"), IsOk());
  absl::StatusOr<int64_t> put_z = client_->Put(p + "z", "3");
  ASSERT_THAT(put_z, IsOk());

  using Type = WatchEvent::Type;
  const auto expected = ::testing::ElementsAre(
      IsEvent(Type::kPut, p + "a", "1", *put_a), IsEvent(Type::kPut, p + "b", "2", *put_b),
      IsEvent(Type::kDelete, p + "a", "", *put_b + 1), IsEvent(Type::kPut, p + "z", "3", *put_z));
  ASSERT_TRUE(Eventually(absl::Seconds(10), [&] { return live.events().size() >= 4; }));
  EXPECT_THAT(live.events(), expected);
  EXPECT_EQ(live.events()[0].kv.create_revision, *put_a);
  EXPECT_EQ(live.events()[0].kv.version, 1);

  // From a past revision: the same history, replayed.
  WatchLog replay;
  absl::StatusOr<std::unique_ptr<EtcdClient::Watch>> replaying =
      client_->WatchPrefix(p, *put_a, replay.OnEvents(), replay.OnError());
  ASSERT_THAT(replaying, IsOk());
  ASSERT_TRUE(Eventually(absl::Seconds(10), [&] { return replay.events().size() >= 4; }));
  EXPECT_THAT(replay.events(), expected);

  // Destroyed watches deliver nothing more.
  watch->reset();
  replaying->reset();
  live.Close();
  replay.Close();
  ASSERT_THAT(client_->Put(p + "after", "x"), IsOk());
  absl::SleepFor(absl::Milliseconds(300));
  EXPECT_EQ(live.events().size(), 4u);
  EXPECT_TRUE(live.errors().empty());
  EXPECT_TRUE(replay.errors().empty());
}

TEST_F(EtcdClientTest, FailsOverFromADeadEndpoint) {
  std::unique_ptr<EtcdClient> client =
      MustConnect({absl::StrCat("127.0.0.1:", DeadPort()), etcd_->endpoint()});
  ASSERT_NE(client, nullptr);
  const std::string key = Prefix() + "k";
  EXPECT_THAT(client->Get(key), IsOk());  // a read moves on to the next endpoint
  EXPECT_THAT(client->Put(key, "v"), IsOk());
  WatchLog log;
  absl::StatusOr<std::unique_ptr<EtcdClient::Watch>> watch =
      client->WatchPrefix(key, 0, log.OnEvents(), log.OnError());
  EXPECT_THAT(watch, IsOk());
}

// An endpoint that takes connections and never answers (a wedged member, one cut off from
// its leader): a call that timed out there sends the next one to another endpoint. Before,
// only UNAVAILABLE moved on, and every call went on timing out at the first endpoint.
TEST_F(EtcdClientTest, ACallThatTimedOutSendsTheNextToAnotherEndpoint) {
  HungListener hung;
  ASSERT_FALSE(hung.endpoint().empty());
  std::unique_ptr<EtcdClient> client =
      MustConnect({hung.endpoint(), etcd_->endpoint()}, absl::Seconds(3));
  ASSERT_NE(client, nullptr);
  const std::string key = Prefix() + "k";
  EXPECT_THAT(client->Get(key), StatusIs(absl::StatusCode::kDeadlineExceeded));
  EXPECT_THAT(client->Get(key), IsOk());
  EXPECT_THAT(client->Put(key, "v"), IsOk());
}

// The same for keepalives: a lease kept through a client whose first endpoint never answers
// is refreshed at the other one and lives on. Before, every refresh timed out at the first
// endpoint and the lease lapsed, its keys deleted by a healthy etcd.
TEST_F(EtcdClientTest, KeepalivesMoveOffAnEndpointThatStoppedAnswering) {
  HungListener hung;
  ASSERT_FALSE(hung.endpoint().empty());
  // A 6 s lease refreshed every 2 s, each refresh given 1 s (with 3 s and 500 ms, one slow
  // answer from the healthy etcd cost the lease on a busy machine).
  absl::StatusOr<int64_t> lease = client_->GrantLease(absl::Seconds(6));
  ASSERT_THAT(lease, IsOk());
  const std::string key = Prefix() + "kept";
  ASSERT_THAT(client_->Put(key, "v", *lease), IsOk());
  std::unique_ptr<EtcdClient> keeper =
      MustConnect({hung.endpoint(), etcd_->endpoint()}, absl::Seconds(1));
  ASSERT_NE(keeper, nullptr);
  ASSERT_THAT(keeper->KeepAlive(*lease, absl::Seconds(6), [](absl::Status) {}), IsOk());
  absl::SleepFor(absl::Seconds(13));  // past two lease lifetimes
  auto got = client_->Get(key);
  ASSERT_THAT(got, IsOk());
  EXPECT_TRUE(got->has_value()) << "the lease lapsed";
  keeper.reset();
  EXPECT_THAT(client_->RevokeLease(*lease), IsOk());
}

TEST_F(EtcdClientTest, ClientDestructionStopsWatchesAndKeepAlives) {
  const std::string p = Prefix();
  std::unique_ptr<EtcdClient> client = MustConnect({etcd_->endpoint()});
  ASSERT_NE(client, nullptr);
  WatchLog log;
  absl::StatusOr<std::unique_ptr<EtcdClient::Watch>> watch =
      client->WatchPrefix(p, 0, log.OnEvents(), log.OnError());
  ASSERT_THAT(watch, IsOk());
  absl::StatusOr<int64_t> lease = client->GrantLease(absl::Seconds(10));
  ASSERT_THAT(lease, IsOk());
  ASSERT_THAT(client->KeepAlive(*lease, absl::Seconds(10), [](absl::Status) {}), IsOk());

  const absl::Time start = absl::Now();
  client.reset();
  EXPECT_LT(absl::Now() - start, absl::Seconds(3));
  log.Close();
  ASSERT_THAT(client_->Put(p + "k", "v"), IsOk());
  absl::SleepFor(absl::Milliseconds(300));
  EXPECT_TRUE(log.events().empty());
  EXPECT_TRUE(log.errors().empty());
  watch->reset();  // a handle that outlived its client is inert
  EXPECT_THAT(client_->RevokeLease(*lease), IsOk());
}

// Its own etcd, which it stops and restarts.
TEST(EtcdOutageTest, FailsFastWhileDownAndRecoversAfterRestart) {
  absl::StatusOr<std::unique_ptr<LocalEtcd>> etcd = LocalEtcd::Start({});
  ASSERT_THAT(etcd, IsOk());
  const std::string endpoint = (*etcd)->endpoint();
  EXPECT_GT((*etcd)->pid(), 0);
  std::unique_ptr<EtcdClient> client = MustConnect({endpoint}, absl::Seconds(1));
  ASSERT_NE(client, nullptr);
  ASSERT_THAT(client->Put("/outage/before", "1"), IsOk());

  WatchLog log;
  absl::StatusOr<std::unique_ptr<EtcdClient::Watch>> watch =
      client->WatchPrefix("/outage/", 0, log.OnEvents(), log.OnError());
  ASSERT_THAT(watch, IsOk());
  // A watch whose on_error destroys it, as a caller that re-watches would.
  absl::Mutex mu;
  std::unique_ptr<EtcdClient::Watch> self_destroying;
  std::atomic<bool> self_destroyed{false};
  absl::StatusOr<std::unique_ptr<EtcdClient::Watch>> w2 = client->WatchPrefix(
      "/outage/", 0, [](std::span<const WatchEvent>) {},
      [&](absl::Status) {
        std::unique_ptr<EtcdClient::Watch> mine;
        {
          absl::MutexLock lock(&mu);
          mine = std::move(self_destroying);
        }
        mine.reset();
        self_destroyed = true;
      });
  ASSERT_THAT(w2, IsOk());
  {
    absl::MutexLock lock(&mu);
    self_destroying = std::move(*w2);
  }
  absl::StatusOr<int64_t> lease = client->GrantLease(absl::Seconds(10));
  ASSERT_THAT(lease, IsOk());
  std::atomic<int> lost{0};
  ASSERT_THAT(client->KeepAlive(*lease, absl::Seconds(10), [&](absl::Status) { ++lost; }), IsOk());

  ASSERT_THAT((*etcd)->Stop(), IsOk());
  EXPECT_EQ((*etcd)->pid(), -1);
  EXPECT_THAT((*etcd)->Stop(), StatusIs(absl::StatusCode::kFailedPrecondition));

  const absl::Time start = absl::Now();
  EXPECT_THAT(client->Get("/outage/before"), AnyOf(StatusIs(absl::StatusCode::kUnavailable),
                                                   StatusIs(absl::StatusCode::kDeadlineExceeded)));
  EXPECT_LT(absl::Now() - start, absl::Seconds(3));
  ASSERT_TRUE(Eventually(absl::Seconds(5), [&] { return !log.errors().empty(); }));
  EXPECT_THAT(log.errors()[0], StatusIs(absl::StatusCode::kUnavailable, HasSubstr(endpoint)));
  EXPECT_TRUE(Eventually(absl::Seconds(5), [&] { return self_destroyed.load(); }));

  ASSERT_THAT((*etcd)->Restart(), IsOk());
  EXPECT_EQ((*etcd)->endpoint(), endpoint);
  EXPECT_GT((*etcd)->pid(), 0);
  // The client's channel reconnects within its backoff (at most 1 s).
  absl::StatusOr<std::optional<KeyValue>> before;
  EXPECT_TRUE(Eventually(absl::Seconds(10), [&] {
    before = client->Get("/outage/before");
    return before.ok();
  }));
  ASSERT_THAT(before, IsOk());
  ASSERT_TRUE(before->has_value());
  EXPECT_EQ((*before)->value, "1");

  WatchLog again;
  absl::StatusOr<std::unique_ptr<EtcdClient::Watch>> rewatch =
      client->WatchPrefix("/outage/", 0, again.OnEvents(), again.OnError());
  ASSERT_THAT(rewatch, IsOk());
  absl::StatusOr<int64_t> after = client->Put("/outage/after", "2");
  ASSERT_THAT(after, IsOk());
  ASSERT_TRUE(Eventually(absl::Seconds(10), [&] { return !again.events().empty(); }));
  EXPECT_THAT(again.events()[0], IsEvent(WatchEvent::Type::kPut, "/outage/after", "2", *after));
  EXPECT_EQ(log.errors().size(), 1u);  // once
  EXPECT_TRUE(log.events().empty());
  // etcd renews every lease when it comes back, and the keepalive carried on.
  EXPECT_EQ(lost.load(), 0);
  EXPECT_THAT(client->Put("/outage/leased", "x", *lease), IsOk());
}

}  // namespace
}  // namespace strata::cluster
