// Refusals in a cluster. A node that refuses a request the other replicas take is passed
// over, not the end of the cluster call. Here a node whose namespace table is full (max_namespaces)
// cannot register the namespace the client uses: it answers INVALID_ARGUMENT ("namespace unknown")
// for every call. Before, that one answer failed every cluster Put, Get and Lookup that touched it,
// though the other replica held every block. And a stale epoch's refusal is retried within
// the call's deadline, etcd or no etcd.
#include "cluster_fixture.h"

namespace strata::cluster_test {
namespace {

// A node of cluster `cluster` on `etcd`, data plane off.
absl::StatusOr<std::unique_ptr<LocalNode>> StartMember(const cluster::LocalEtcd& etcd,
                                                       const std::string& cluster,
                                                       const std::string& id,
                                                       std::vector<std::string> extra = {}) {
  std::vector<std::string> args = {
      "--node-id",      id,      "--cluster-mode", "etcd",  "--etcd-endpoints", etcd.endpoint(),
      "--cluster-name", cluster, "--warm-bytes",   "64MiB", "--ucx-tls",        ""};
  args.insert(args.end(), extra.begin(), extra.end());
  return testutil::StartNode(args);
}

TEST(ClusterRefusalTest, ANodeThatCannotRegisterTheNamespaceIsPassedOver) {
  auto etcd = cluster::LocalEtcd::Start({});
  ASSERT_TRUE(etcd.ok()) << etcd.status();
  auto start = [&](const std::string& id, std::vector<std::string> extra) {
    return StartMember(**etcd, "refusal", id, std::move(extra));
  };
  // The full node first in member order (ids sort), so it is asked first.
  auto a = start("b-ok", {});
  ASSERT_THAT(a, IsOk());
  auto full = start("a-full", {"--max-namespaces", "1"});
  ASSERT_THAT(full, IsOk());
  // Its one namespace slot taken by another model.
  auto direct = StoreClient::Connect({.address = (*full)->address()});
  ASSERT_THAT(direct, IsOk());
  ASSERT_THAT((*direct)->RegisterNamespace(testutil::RawSpec("other-model", kBlock)), IsOk());

  ClientOptions o;
  o.etcd_endpoints = (*etcd)->endpoint();
  o.cluster_name = "refusal";
  o.replicas = 2;
  o.write_quorum = 1;  // a put is acknowledged once one owner has the block
  o.default_deadline = absl::Seconds(10);
  auto connected = StoreClient::Connect(o);
  ASSERT_THAT(connected, IsOk());
  std::unique_ptr<StoreClient> c = std::move(*connected);
  WaitForMembers(*c, 2);
  auto ns = c->RegisterNamespace(Spec());  // taken by the node with room
  ASSERT_THAT(ns, IsOk());
  const std::vector<ChainHash> chain = testutil::PromptChain(*ns, 5, 16);
  std::vector<std::vector<uint8_t>> data;
  const std::vector<BlockWrite> writes = PayloadWrites(chain, &data);
  // Every block is written to the other node; the full node's refusal is each block's
  // outcome there, and one copy meets the quorum.
  auto put = c->Put(*ns, "", writes);
  ASSERT_THAT(put, IsOk());
  EXPECT_EQ(put->stored, chain.size());
  std::vector<std::vector<uint8_t>> out(chain.size(), std::vector<uint8_t>(kBlock));
  std::vector<BlockRead> reads;
  for (size_t i = 0; i < chain.size(); ++i) reads.push_back({chain[i], out[i].data(), kBlock});
  auto got = c->Get(*ns, "", reads);
  ASSERT_THAT(got, IsOk());
  for (size_t i = 0; i < chain.size(); ++i) {
    EXPECT_THAT(got->blocks[i], IsOk()) << i;
    EXPECT_EQ(out[i], data[i]) << i;
  }
  auto found = c->Lookup(*ns, "", chain);
  ASSERT_THAT(found, IsOk());
  EXPECT_EQ(found->matched_blocks, chain.size());
  EXPECT_THAT(c->LookupEach(*ns, "", chain), IsOk());
  // The caller's own mistakes fail the whole call before any node is asked (one node's
  // refusal of its share would otherwise pass for that node's).
  std::vector<uint8_t> big(kBlock + 1);
  BlockWrite oversized{chain[0], big.data(), big.size()};
  EXPECT_THAT(c->Put(*ns, "", {&oversized, 1}),
              StatusIs(absl::StatusCode::kInvalidArgument, ::testing::HasSubstr("block_bytes")));
  BlockRead nowhere{chain[1], nullptr, kBlock};
  EXPECT_THAT(c->Get(*ns, "", {&nowhere, 1}), StatusIs(absl::StatusCode::kInvalidArgument));
  // Bad input that every node refuses still fails the whole call.
  EXPECT_THAT(c->Lookup(*ns, "Not A Scope", chain), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(c->Get(*ns, "Not A Scope", reads), StatusIs(absl::StatusCode::kInvalidArgument));
}

// A node refuses a client's stale epoch while etcd hangs (SIGSTOP: its socket stays open and
// nothing answers): the client's re-read of the member set keeps to the call's deadline.
// Before, it waited out the etcd client's own 2 s request timeout whatever the call's deadline.
TEST(ClusterRefusalTest, AStaleEpochKeepsTheCallsDeadlineWhileEtcdHangs) {
  auto etcd = cluster::LocalEtcd::Start({});
  ASSERT_TRUE(etcd.ok()) << etcd.status();
  auto a = StartMember(**etcd, "stale", "a", {"--etcd-lease", "30000"});
  ASSERT_THAT(a, IsOk());
  ClientOptions o;
  o.etcd_endpoints = (*etcd)->endpoint();
  o.cluster_name = "stale";
  o.watch_members = false;  // learns of the join below only from a node's refusal
  o.default_deadline = absl::Seconds(10);
  auto lazy = StoreClient::Connect(o);
  ASSERT_THAT(lazy, IsOk());
  auto ns = (*lazy)->RegisterNamespace(Spec());
  ASSERT_THAT(ns, IsOk());
  const std::vector<ChainHash> chain = testutil::PromptChain(*ns, 7, 8);
  auto b = StartMember(**etcd, "stale", "b", {"--etcd-lease", "30000"});
  ASSERT_THAT(b, IsOk());
  // Until node a knows the join, it would serve the client's old epoch.
  auto stats = (*lazy)->Stats();
  ASSERT_THAT(stats, IsOk());
  auto stub = v1::StoreService::NewStub(
      grpc::CreateChannel((*a)->address(), grpc::InsecureChannelCredentials()));
  bool refused = false;
  for (absl::Time end = absl::Now() + absl::Seconds(20); !refused && absl::Now() < end;) {
    v1::LookupRequest req;
    req.set_namespace_id(ns->id);
    req.add_chain_hashes(std::string(32, 'x'));
    req.set_epoch(stats->epoch);
    v1::LookupResponse resp;
    grpc::ClientContext ctx;
    refused = stub->Lookup(&ctx, req, &resp).error_code() == grpc::StatusCode::FAILED_PRECONDITION;
    if (!refused) absl::SleepFor(absl::Milliseconds(50));
  }
  ASSERT_TRUE(refused) << "node a never learnt of node b";

  {
    testutil::Freeze hung((*etcd)->pid());
    ASSERT_TRUE(hung.stopped());
    const absl::Time t0 = absl::Now();
    // 1 s: room for the call to node a and its refusal on a slow machine, under the etcd
    // client's 2 s request timeout checked below.
    auto late = (*lazy)->Lookup(*ns, "", chain, {.deadline = absl::Seconds(1)});
    const absl::Duration took = absl::Now() - t0;
    EXPECT_THAT(late,
                StatusIs(absl::StatusCode::kDeadlineExceeded, ::testing::HasSubstr("member set")));
    // Not a speed check: the re-read waited out the etcd client's own request timeout.
    EXPECT_LT(took, cluster::EtcdOptions{}.request_timeout) << "a 1 s call";
  }
  // etcd answers again: the same call re-reads the set and goes through.
  auto found = (*lazy)->Lookup(*ns, "", chain);
  ASSERT_THAT(found, IsOk());
  EXPECT_EQ(found->matched_blocks, 0u);
  auto after = (*lazy)->Stats();
  ASSERT_THAT(after, IsOk());
  EXPECT_EQ(after->members, 2u);
}

// A member whose record changes how blocks are placed (here its zone) without a join or a
// leave raises the epoch: a client that does not watch is refused and re-reads the set. Before,
// only joins, leaves and a new address did, and such a client placed by the old zone.
TEST(ClusterRefusalTest, AMembersNewZoneRaisesTheEpoch) {
  auto etcd = cluster::LocalEtcd::Start({});
  ASSERT_TRUE(etcd.ok()) << etcd.status();
  auto a = StartMember(**etcd, "zones", "a", {"--etcd-lease", "30000"});
  ASSERT_THAT(a, IsOk());
  auto kv = cluster::EtcdClient::Create({.endpoints = {(*etcd)->endpoint()}});
  ASSERT_THAT(kv, IsOk());
  absl::StatusOr<int64_t> lease = (*kv)->GrantLease(absl::Seconds(30));
  ASSERT_THAT(lease, IsOk());
  cluster::Member other{.id = "zz", .address = "127.0.0.1:9", .zone = "z1", .replicas = 1};
  const std::string key = "/strata/zones/nodes/zz";
  ASSERT_THAT((*kv)->Put(key, cluster::EncodeMember(other), *lease), IsOk());
  auto direct = StoreClient::Connect({.address = (*a)->address()});
  ASSERT_THAT(direct, IsOk());
  auto node_stats = [&]() -> absl::StatusOr<client::NodeStats> { return (*direct)->Stats(); };
  uint64_t before = 0;
  for (absl::Time end = absl::Now() + absl::Seconds(10); absl::Now() < end;) {
    auto st = node_stats();
    if (st.ok() && st->members == 2) {
      before = st->epoch;
      break;
    }
    absl::SleepFor(absl::Milliseconds(50));
  }
  ASSERT_NE(before, 0u) << "node a never saw the other member";
  other.zone = "z2";
  ASSERT_THAT((*kv)->Put(key, cluster::EncodeMember(other), *lease), IsOk());
  uint64_t after = before;
  for (absl::Time end = absl::Now() + absl::Seconds(10); absl::Now() < end && after == before;) {
    absl::SleepFor(absl::Milliseconds(50));
    auto st = node_stats();
    if (st.ok()) after = st->epoch;
  }
  EXPECT_GT(after, before) << "a new zone left the epoch where it was";
  EXPECT_THAT((*kv)->RevokeLease(*lease), IsOk());
}

// A namespace some node refuses is no reason to refuse that node. The client registered
// three namespaces before node b joined: `cluster-test` (b takes it), `other` (b, at
// max_namespaces 1, refuses it) and `too-big` (blocks over every node's max_block_bytes: no
// node took it). b still stores its copies of `cluster-test`. Before, every spec the client
// was ever asked for was registered at each connect, and one refusal marked the node down
// at every attempt: b never served this client, and a put with W=2 stored nothing.
TEST(ClusterRefusalTest, ANamespaceANodeRefusesLeavesTheNodeServingTheOthers) {
  auto etcd = cluster::LocalEtcd::Start({});
  ASSERT_TRUE(etcd.ok()) << etcd.status();
  auto a = StartMember(**etcd, "late", "a");
  ASSERT_THAT(a, IsOk());
  std::unique_ptr<StoreClient> c = ConnectToCluster((*etcd)->endpoint(), "late", 1, 2, 2);
  ASSERT_NE(c, nullptr);
  auto ns = c->RegisterNamespace(Spec());
  ASSERT_THAT(ns, IsOk());
  ASSERT_THAT(c->RegisterNamespace(testutil::RawSpec("other", kBlock)), IsOk());
  EXPECT_THAT(
      c->RegisterNamespace(testutil::RawSpec("too-big", 512 << 20)),
      StatusIs(absl::StatusCode::kInvalidArgument, ::testing::HasSubstr("max_block_bytes")));

  auto b = StartMember(**etcd, "late", "b", {"--max-namespaces", "1"});
  ASSERT_THAT(b, IsOk());
  ASSERT_TRUE(WaitForMembers(*c, 2));
  const std::vector<ChainHash> chain = testutil::PromptChain(*ns, 6, 8);
  std::vector<std::vector<uint8_t>> data;
  auto put = c->Put(*ns, "", PayloadWrites(chain, &data));
  ASSERT_THAT(put, IsOk());
  EXPECT_EQ(put->stored, chain.size()) << put->blocks[0];
  EXPECT_THAT(c->DataPlaneDescription(), ::testing::HasSubstr("2 connected"));
  auto on_b = StoreClient::Connect({.address = (*b)->address()});
  ASSERT_THAT(on_b, IsOk());
  auto found = (*on_b)->Lookup(*ns, "", chain);
  ASSERT_THAT(found, IsOk());
  EXPECT_EQ(found->matched_blocks, chain.size()) << "node b holds no copy";
}

// A lookup that no owner answered fails instead of reporting the blocks absent: "not cached"
// (recompute) and "the cluster could not be asked" are different answers. Before, Lookup
// answered OK with 0 blocks matched and LookupEach OK with every block absent.
TEST(ClusterRefusalTest, ALookupNoOwnerAnsweredFailsInsteadOfFindingNothing) {
  auto etcd = cluster::LocalEtcd::Start({});
  ASSERT_TRUE(etcd.ok()) << etcd.status();
  // Its membership outlives the freeze below.
  auto a = StartMember(**etcd, "hung", "a", {"--etcd-lease", "30000"});
  ASSERT_THAT(a, IsOk());
  std::unique_ptr<StoreClient> c = ConnectToCluster((*etcd)->endpoint(), "hung", 1);
  ASSERT_NE(c, nullptr);
  auto ns = c->RegisterNamespace(Spec());
  ASSERT_THAT(ns, IsOk());
  const std::vector<ChainHash> chain = testutil::PromptChain(*ns, 7, 4);
  std::vector<std::vector<uint8_t>> data;
  ASSERT_THAT(c->Put(*ns, "", PayloadWrites(chain, &data)), IsOk());
  auto answered = c->Lookup(*ns, "", chain);
  ASSERT_THAT(answered, IsOk());
  EXPECT_EQ(answered->matched_blocks, chain.size());

  testutil::Freeze hung((*a)->pid());
  ASSERT_TRUE(hung.stopped());
  const client::CallOptions brief{.deadline = absl::Seconds(1)};
  EXPECT_THAT(c->Lookup(*ns, "", chain, brief), StatusIs(absl::StatusCode::kDeadlineExceeded));
  EXPECT_THAT(c->LookupEach(*ns, "", chain, brief), StatusIs(absl::StatusCode::kDeadlineExceeded));
}

}  // namespace
}  // namespace strata::cluster_test
