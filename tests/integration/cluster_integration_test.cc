// A Strata cluster: a real etcd (cluster::LocalEtcd) and real strata-storenode processes on
// loopback, coordinated through etcd membership; clients place blocks by rendezvous hashing.
// Prefixes written by one process are found and fetched by another, a batch costs one call
// per node, stale epochs are refused and retried, a killed node's blocks are read from their
// replicas, and the store keeps serving while etcd is down (rebalancing:
// cluster_rebalance_test.cc; starting and stopping: cluster_start_test.cc).
#include <set>
#include <string>

#include "cluster_fixture.h"
#include "strata/common/checksum.h"

namespace strata::cluster_test {
namespace {

TEST_F(ClusterTest, NodesRegisterAndEveryoneSeesTheSameEpoch) {
  std::unique_ptr<StoreClient> c = Connect(Options());
  ASSERT_NE(c, nullptr);
  ASSERT_TRUE(WaitForMembers(*c, 3));
  // Each node raises the epoch as it sees the others join, on its own time (an etcd write
  // slow to sync can land between two nodes' answers): read until they agree, for 15 s.
  std::vector<std::unique_ptr<StoreClient>> each;
  for (auto& [i, node] : nodes_) {
    auto one = StoreClient::Connect({.address = node->address()});
    ASSERT_TRUE(one.ok()) << one.status();
    each.push_back(std::move(*one));
  }
  std::vector<client::NodeStats> seen;
  std::vector<uint64_t> epochs;
  for (absl::Time end = absl::Now() + absl::Seconds(15);; absl::SleepFor(absl::Milliseconds(50))) {
    seen.clear();
    epochs.clear();
    bool settled = true;
    for (auto& one : each) {
      auto s = one->Stats();
      ASSERT_TRUE(s.ok()) << s.status();
      settled &= s->cluster_mode == "etcd" && s->etcd_connected && s->members == 3 &&
                 (epochs.empty() || s->epoch == epochs[0]);
      epochs.push_back(s->epoch);
      seen.push_back(*s);
    }
    if (settled || absl::Now() > end) break;
  }
  for (const client::NodeStats& s : seen) {
    EXPECT_EQ(s.cluster_mode, "etcd");
    EXPECT_TRUE(s.etcd_connected);
    EXPECT_EQ(s.members, 3u);
  }
  EXPECT_GT(epochs[0], 0u);
  for (auto& [i, node] : nodes_) {
    EXPECT_EQ(Gauge(*node, "strata_cluster_members"), 3) << i;
    EXPECT_EQ(Gauge(*node, "strata_etcd_connected"), 1) << i;
  }
  EXPECT_EQ(epochs[0], epochs[1]);
  EXPECT_EQ(epochs[1], epochs[2]);
  auto cs = c->Stats();
  ASSERT_TRUE(cs.ok());
  EXPECT_EQ(cs->epoch, epochs[0]);
  // Registrations are under a lease, one key per node.
  auto etcd = cluster::EtcdClient::Create({.endpoints = {etcd_->endpoint()}});
  ASSERT_TRUE(etcd.ok());
  auto listed = (*etcd)->GetPrefix("/strata/it/nodes/");
  ASSERT_TRUE(listed.ok()) << listed.status();
  ASSERT_EQ(listed->kvs.size(), 3u);
  for (const cluster::KeyValue& kv : listed->kvs) EXPECT_NE(kv.lease, 0) << kv.key;
  // The operator's view lists the same members and epoch.
  auto [exit_status, text] = StrataStatus();
  EXPECT_EQ(exit_status, 0);
  EXPECT_THAT(text, ::testing::HasSubstr(absl::StrCat("3 members, 0 zones, epoch ", epochs[0])));
  for (int i = 0; i < 3; ++i) EXPECT_THAT(text, ::testing::HasSubstr(absl::StrCat("node-", i)));
  EXPECT_THAT(text, ::testing::HasSubstr("under-replicated blocks"));
  // A node key without a lease (an `etcdctl put` by hand) is no member: it would own blocks
  // that no node stores, for ever.
  ASSERT_TRUE((*etcd)->Put("/strata/it/nodes/ghost", "address=127.0.0.1:9\n").ok());
  absl::SleepFor(absl::Milliseconds(500));
  auto with_ghost = c->Stats();
  ASSERT_TRUE(with_ghost.ok());
  EXPECT_EQ(with_ghost->members, 3u);
  auto [ghost_exit, ghost_text] = StrataStatus();
  EXPECT_EQ(ghost_exit, 0) << ghost_text;
  EXPECT_THAT(ghost_text, ::testing::HasSubstr("3 members"));
  // A cluster name nobody registered under (a typo) is no healthy cluster of 0 members.
  auto [typo_exit, typo_text] = StrataStatus("ti");
  EXPECT_NE(typo_exit, 0) << typo_text;
  EXPECT_THAT(typo_text, ::testing::HasSubstr("no member registered under /strata/ti/"));
  ASSERT_TRUE((*etcd)->Delete("/strata/it/nodes/ghost").ok());
  // A second node given node-1's id (two hosts started alike) refuses to start, after one
  // lease TTL, and node-1 stays a member at its own address. Before, the newcomer took the key
  // over: node-1 went on serving, and no client asked it any more.
  auto twin =
      testutil::StartNode({"--node-id", "node-1", "--cluster-mode", "etcd", "--etcd-endpoints",
                           etcd_->endpoint(), "--cluster-name", "it", "--ucx-tls", ""});
  EXPECT_FALSE(twin.ok()) << "a second node-1 started";
  auto held = (*etcd)->Get("/strata/it/nodes/node-1");
  ASSERT_TRUE(held.ok() && held->has_value());
  EXPECT_THAT((*held)->value, ::testing::HasSubstr(nodes_[1]->address()));
  // A node's key deleted under it while its lease lives (an operator's `etcdctl del`, a
  // stray process with its id): the node registers again. Before, its keepalives went on
  // succeeding and it stayed out of the cluster.
  ASSERT_TRUE((*etcd)->Delete("/strata/it/nodes/node-1").ok());
  bool back = false;
  for (absl::Time end = absl::Now() + absl::Seconds(15); !back && absl::Now() < end;) {
    absl::SleepFor(absl::Milliseconds(100));
    auto again = (*etcd)->GetPrefix("/strata/it/nodes/node-1");
    back = again.ok() && again->kvs.size() == 1;
  }
  EXPECT_TRUE(back) << "node-1 did not register again";
  EXPECT_TRUE(WaitForMembers(*c, 3));
  EXPECT_TRUE(WaitRebalanced());  // settled before the suite's next test
}

TEST_F(ClusterTest, APrefixWrittenByOneProcessIsFetchedByAnother) {
  // Writer and reader are separate `strata` processes; neither talks to a node by address.
  const std::string strata = testutil::ProjectBinary("strata");
  const std::string common = absl::StrCat(" --etcd ", etcd_->endpoint(),
                                          " --cluster it --model-id cli-prefix --block-bytes "
                                          "64KiB --tokens 0..1024 --deadline 20 > /dev/null");
  ASSERT_EQ(std::system((strata + " put" + common).c_str()), 0);
  ASSERT_EQ(std::system((strata + " get --verify-generated --max-block 64KiB" + common).c_str()),
            0);
  // Blocks of the prefix are spread over the nodes: every node holds some.
  for (auto& [i, node] : nodes_) {
    auto one = StoreClient::Connect({.address = node->address()});
    ASSERT_TRUE(one.ok());
    auto s = (*one)->Stats();
    ASSERT_TRUE(s.ok());
    EXPECT_GT(s->warm_blocks, 0u) << "node-" << i;
  }
}

TEST_F(ClusterTest, ALookupOfAPrefixCallsEachNodeOnce) {
  std::unique_ptr<StoreClient> c = Connect(Options());
  ASSERT_NE(c, nullptr);
  auto ns = c->RegisterNamespace(Spec());
  ASSERT_TRUE(ns.ok()) << ns.status();
  std::vector<ChainHash> chain = testutil::PromptChain(*ns, 1, 96);
  ASSERT_EQ(PutAll(*c, *ns, chain), chain.size());
  std::map<int, uint64_t> before;
  for (auto& [i, node] : nodes_) before[i] = testutil::OpCount(*node, "lookup");
  auto r = c->Lookup(*ns, "", chain);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->matched_blocks, chain.size());
  for (auto& [i, node] : nodes_) EXPECT_EQ(testutil::OpCount(*node, "lookup") - before[i], 1u) << i;
  // A prefix stored only in part matches up to its first missing block.
  std::vector<ChainHash> longer = testutil::PromptChain(*ns, 1, 128);
  auto partial = c->Lookup(*ns, "", longer);
  ASSERT_TRUE(partial.ok());
  EXPECT_EQ(partial->matched_blocks, 96u);
  EXPECT_EQ(GetAll(*c, *ns, chain), chain.size());
}

// The directory of GPU-resident blocks, with a test client in a GPU agent's role.
TEST_F(ClusterTest, BlocksPublishedByAnAgentAreFoundUntilRemovedOrExpired) {
  std::unique_ptr<StoreClient> agent = Connect(Options());
  std::unique_ptr<StoreClient> decode = Connect(Options());
  ASSERT_NE(agent, nullptr);
  ASSERT_NE(decode, nullptr);
  auto ns = agent->RegisterNamespace(Spec());
  auto dns = decode->RegisterNamespace(Spec());
  ASSERT_TRUE(ns.ok() && dns.ok());
  std::vector<ChainHash> chain = testutil::PromptChain(*ns, 8, 32);
  // The store holds the first 8 blocks; the prefill agent holds all 32 in GPU memory.
  std::vector<ChainHash> stored(chain.begin(), chain.begin() + 8);
  ASSERT_EQ(PutAll(*agent, *ns, stored), stored.size());
  const client::PeerLocation where{"agent-a@127.0.0.1:9100", "tok.A-1"};
  std::vector<uint64_t> sizes(chain.size(), kBlock);
  auto pub = agent->Publish(*ns, "", chain, sizes, where, absl::Seconds(3));
  ASSERT_TRUE(pub.ok()) << pub.status();
  for (const absl::Status& st : *pub) EXPECT_THAT(st, IsOk());
  auto r = decode->Lookup(*dns, "", chain);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->matched_blocks, chain.size());
  for (size_t i = 0; i < chain.size(); ++i) {
    EXPECT_EQ(r->blocks[i].tier, i < 8 ? client::Tier::kWarm : client::Tier::kHot) << i;
    EXPECT_EQ(r->blocks[i].size, kBlock);
    EXPECT_THAT(r->blocks[i].peers, ::testing::ElementsAre(where)) << i;
  }
  // The agent restarts at the same address with a new token: its entries carry the new one.
  const client::PeerLocation restarted{where.address, "tok.A-2"};
  ASSERT_TRUE(
      agent->Publish(*ns, "", {&chain[0], 1}, {&sizes[0], 1}, restarted, absl::Seconds(3)).ok());
  r = decode->Lookup(*dns, "", {&chain[0], 1});
  ASSERT_TRUE(r.ok() && r->matched_blocks == 1) << r.status();
  EXPECT_THAT(r->blocks[0].peers, ::testing::ElementsAre(restarted));
  // The agent frees blocks 16..31: they are unpublished, the prefix ends at 16.
  std::vector<ChainHash> freed(chain.begin() + 16, chain.end());
  ASSERT_TRUE(agent->Publish(*ns, "", freed, {}, where, absl::ZeroDuration()).ok());
  r = decode->Lookup(*dns, "", chain);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->matched_blocks, 16u);
  // Without a refresh the rest lapse with their TTL; the stored blocks remain, without peers.
  absl::SleepFor(absl::Milliseconds(3500));
  r = decode->Lookup(*dns, "", chain);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->matched_blocks, 8u);
  ASSERT_FALSE(r->blocks.empty());
  EXPECT_TRUE(r->blocks[0].peers.empty());
  // Bad input is refused with the field named.
  auto bad = agent->Publish(*ns, "", chain, sizes, {std::string(300, 'x'), ""}, absl::Seconds(1));
  EXPECT_THAT(bad.status(), StatusIs(absl::StatusCode::kInvalidArgument));
  bad = agent->Publish(*ns, "", chain, sizes, {where.address, "two words"}, absl::Seconds(1));
  EXPECT_THAT(bad.status(), StatusIs(absl::StatusCode::kInvalidArgument,
                                     ::testing::HasSubstr("location_token: character 3")));
  bad = agent->Publish(*ns, "", chain, sizes, {where.address, std::string(129, 'a')},
                       absl::Seconds(1));
  EXPECT_THAT(bad.status(), StatusIs(absl::StatusCode::kInvalidArgument,
                                     ::testing::HasSubstr("location_token: 129 characters")));
  std::vector<uint64_t> huge = sizes;
  huge[3] = kBlock + 1;  // refused before any node is asked
  bad = agent->Publish(*ns, "", chain, huge, where, absl::Seconds(1));
  EXPECT_THAT(bad.status(), StatusIs(absl::StatusCode::kInvalidArgument,
                                     ::testing::HasSubstr("65537 bytes, want at most 65536")));
  // However many agents publish one block, a Lookup names at most 8 of them: the newest.
  for (int a = 0; a < 20; ++a) {
    const client::PeerLocation agent_a{absl::StrCat("agent-", a, "@127.0.0.1:9200"), ""};
    ASSERT_TRUE(agent
                    ->Publish(*ns, "", {&chain[0], 1}, {&sizes[0], 1}, agent_a,
                              absl::Seconds(10) + absl::Milliseconds(a))
                    .ok());
  }
  r = decode->Lookup(*dns, "", {&chain[0], 1});
  ASSERT_TRUE(r.ok() && r->matched_blocks == 1) << r.status();
  ASSERT_EQ(r->blocks[0].peers.size(), 8u);
  std::set<std::string> named;
  for (const client::PeerLocation& p : r->blocks[0].peers) named.insert(p.address);
  EXPECT_TRUE(named.contains("agent-19@127.0.0.1:9200"));
  EXPECT_FALSE(named.contains("agent-0@127.0.0.1:9200")) << "the first to lapse made way";
}

TEST_F(ClusterTest, AStaleEpochIsRefusedAndTheClientRetries) {
  // A node refuses a request routed by an older epoch than it knows...
  auto channel = grpc::CreateChannel(nodes_[0]->address(), grpc::InsecureChannelCredentials());
  auto stub = v1::StoreService::NewStub(channel);
  v1::LookupRequest req;
  req.set_namespace_id(1);
  req.add_chain_hashes(std::string(32, 'x'));
  req.set_epoch(1);
  v1::LookupResponse resp;
  grpc::ClientContext ctx;
  grpc::Status st = stub->Lookup(&ctx, req, &resp);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(st.error_message(), ::testing::HasSubstr("epoch"));

  // ... and a client that does not watch etcd learns of a join only through that answer.
  std::unique_ptr<StoreClient> lazy = Connect(NotWatching());
  ASSERT_NE(lazy, nullptr);
  auto ns = lazy->RegisterNamespace(Spec());
  ASSERT_TRUE(ns.ok());
  auto before = lazy->Stats();
  ASSERT_TRUE(before.ok());
  ASSERT_EQ(before->members, 3u);
  std::unique_ptr<LocalNode> fourth = StartNode(3);
  ASSERT_NE(fourth, nullptr);
  std::unique_ptr<StoreClient> watcher = Connect(Options());
  ASSERT_TRUE(WaitForMembers(*watcher, 4));
  std::vector<ChainHash> chain = testutil::PromptChain(*ns, 2, 64);
  EXPECT_EQ(PutAll(*lazy, *ns, chain), chain.size());  // refused once, refreshed, retried
  auto after = lazy->Stats();
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(after->members, 4u);
  EXPECT_GT(after->epoch, before->epoch);
  EXPECT_EQ(GetAll(*watcher, *ns, chain), chain.size());
  // The fourth node leaves cleanly (SIGTERM revokes its lease): back to three at once.
  ASSERT_TRUE(fourth->Stop(absl::Seconds(20)).ok());
  EXPECT_TRUE(WaitForMembers(*watcher, 3));
  // A fifth joins: the fourth is in neither the set nor the one before it, and the watcher,
  // which had a connection to each of the five, lets it go. Before, it kept one per node it
  // ever saw.
  std::unique_ptr<LocalNode> fifth = StartNode(4);
  ASSERT_NE(fifth, nullptr);
  ASSERT_TRUE(WaitForMembers(*watcher, 4));  // Stats: connected to every member
  bool let_go = false;
  for (absl::Time end = absl::Now() + absl::Seconds(10); !let_go && absl::Now() < end;) {
    let_go = absl::StrContains(watcher->DataPlaneDescription(), "4 nodes, 4 connected");
    if (!let_go) absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_TRUE(let_go) << watcher->DataPlaneDescription();
  ASSERT_TRUE(fifth->Stop(absl::Seconds(20)).ok());
  EXPECT_TRUE(WaitForMembers(*watcher, 3));
}

// A node back within its lease at another address (a pod that came back with a new IP
// before its key lapsed): it waits for the old lease to lapse (it cannot tell its dead self
// from a live node with its id before), then joins, and the epoch rises, so a client that
// does not watch re-reads the set and reaches the node at its new address. Before, the epoch
// stayed, and that client kept dialling the old address: the node's blocks failed
// UNAVAILABLE until some other change.
TEST_F(ClusterTest, ANodeBackWithinItsLeaseAtANewAddressIsReachedByClientsThatDoNotWatch) {
  const std::vector<std::string> args = {"--node-id",
                                         "node-3",
                                         "--cluster-mode",
                                         "etcd",
                                         "--etcd-endpoints",
                                         etcd_->endpoint(),
                                         "--cluster-name",
                                         "it",
                                         "--etcd-lease",
                                         "3000",
                                         "--warm-bytes",
                                         "64MiB",
                                         "--max-block-bytes",
                                         "1MiB",
                                         "--ucx-tls",
                                         "",
                                         "--rebalance-interval",
                                         "500"};
  auto fourth = testutil::StartNode(args);
  ASSERT_TRUE(fourth.ok()) << fourth.status();
  std::unique_ptr<StoreClient> watcher = Connect(Options());
  ASSERT_NE(watcher, nullptr);
  ASSERT_TRUE(WaitForMembers(*watcher, 4));
  std::unique_ptr<StoreClient> lazy = Connect(NotWatching());
  ASSERT_NE(lazy, nullptr);
  auto ns = lazy->RegisterNamespace(Spec());
  ASSERT_TRUE(ns.ok());
  std::vector<ChainHash> first = testutil::PromptChain(*ns, 41, 64);
  ASSERT_EQ(PutAll(*lazy, *ns, first), first.size());
  const std::string old_address = (*fourth)->address();
  ASSERT_TRUE((*fourth)->Stop(absl::Seconds(10), SIGKILL).ok());
  fourth = testutil::StartNode(args);  // within its 3 s lease, on new ports
  ASSERT_TRUE(fourth.ok()) << fourth.status();
  ASSERT_NE((*fourth)->address(), old_address);
  // One block a call, twice over: a call that reached the old address before the client
  // re-read the set (its first refusal as stale) is tried again.
  std::vector<ChainHash> left = testutil::PromptChain(*ns, 42, 64);
  for (int pass = 0; pass < 2 && !left.empty(); ++pass) {
    std::vector<ChainHash> failed;
    for (const ChainHash& h : left) {
      auto r = PutEach(*lazy, *ns, {h});
      if (!r.ok() || r->stored + r->already_present != 1) failed.push_back(h);
    }
    left = std::move(failed);
  }
  EXPECT_TRUE(left.empty()) << left.size() << " blocks of node-3 went to its old address";
  ASSERT_THAT((*fourth)->Stop(absl::Seconds(20)), IsOk());
  EXPECT_TRUE(WaitForMembers(*watcher, 3));
}

TEST_F(ClusterTest, TheStoreKeepsServingWhileEtcdIsDown) {
  std::unique_ptr<StoreClient> c = Connect(Options());
  ASSERT_NE(c, nullptr);
  auto ns = c->RegisterNamespace(Spec());
  ASSERT_TRUE(ns.ok());
  std::vector<ChainHash> before = testutil::PromptChain(*ns, 6, 48);
  ASSERT_EQ(PutAll(*c, *ns, before), before.size());
  ASSERT_THAT(etcd_->Stop(), IsOk());
  // 30 s without etcd, longer than any node's lease: writes and reads go on with the last
  // known member set.
  std::vector<ChainHash> during = testutil::PromptChain(*ns, 7, 48);
  const absl::Time until = absl::Now() + absl::Seconds(30);
  size_t rounds = 0;
  while (absl::Now() < until) {
    EXPECT_EQ(GetAll(*c, *ns, before), before.size());
    ++rounds;
    absl::SleepFor(absl::Seconds(3));
  }
  EXPECT_EQ(PutAll(*c, *ns, during), during.size());
  EXPECT_EQ(GetAll(*c, *ns, during), during.size());
  EXPECT_GE(rounds, 5u);
  auto stats = c->Stats();
  ASSERT_TRUE(stats.ok());
  EXPECT_FALSE(stats->etcd_connected);
  EXPECT_EQ(stats->members, 3u);
  for (auto& [i, node] : nodes_) EXPECT_EQ(Gauge(*node, "strata_etcd_connected"), 0) << i;
  // etcd back: the nodes are registered again, each exactly once.
  ASSERT_THAT(etcd_->Restart(), IsOk());
  auto etcd = cluster::EtcdClient::Create({.endpoints = {etcd_->endpoint()}});
  ASSERT_TRUE(etcd.ok());
  size_t listed = 0;
  for (absl::Time end = absl::Now() + absl::Seconds(20); absl::Now() < end;) {
    auto r = (*etcd)->GetPrefix("/strata/it/nodes/");
    listed = r.ok() ? r->kvs.size() : 0;
    auto s = c->Stats();
    if (listed == 3 && s.ok() && s->etcd_connected) break;
    absl::SleepFor(absl::Milliseconds(200));
  }
  EXPECT_EQ(listed, 3u);
  EXPECT_EQ(GetAll(*c, *ns, during), during.size());
}

// etcd comes back without its data (a lost volume, a restore from an old snapshot): its
// revisions, and with them the epoch, start again from 1. The nodes register again and take
// the new, smaller epoch, so a client that reads it is served. Before, they kept the old,
// larger one and refused every call of such a client as stale, however often it re-read.
TEST_F(ClusterTest, AfterEtcdLostItsDataNewClientsAreServed) {
  std::unique_ptr<StoreClient> c = Connect(Options());
  ASSERT_NE(c, nullptr);
  // Revisions well above what a fresh etcd reaches: 200 writes, then a join (node-1's key
  // deleted: it registers again) raises the epoch past them.
  auto etcd = cluster::EtcdClient::Create({.endpoints = {etcd_->endpoint()}});
  ASSERT_TRUE(etcd.ok());
  for (int i = 0; i < 200; ++i) ASSERT_TRUE((*etcd)->Put("/junk/k", absl::StrCat(i)).ok());
  ASSERT_TRUE((*etcd)->Delete("/strata/it/nodes/node-1").ok());
  uint64_t high = 0;
  for (absl::Time end = absl::Now() + absl::Seconds(15); high < 200 && absl::Now() < end;) {
    absl::SleepFor(absl::Milliseconds(100));
    auto s = c->Stats();
    high = s.ok() && s->members == 3 ? s->epoch : 0;
  }
  ASSERT_GE(high, 200u);
  ASSERT_THAT(etcd_->Stop(), IsOk());
  std::filesystem::remove_all(std::filesystem::path(etcd_->dir()) / "data");
  ASSERT_THAT(etcd_->Restart(), IsOk());
  etcd = cluster::EtcdClient::Create({.endpoints = {etcd_->endpoint()}});
  ASSERT_TRUE(etcd.ok());
  size_t listed = 0;
  for (absl::Time end = absl::Now() + absl::Seconds(20); listed < 3 && absl::Now() < end;) {
    absl::SleepFor(absl::Milliseconds(200));
    auto r = (*etcd)->GetPrefix("/strata/it/nodes/");
    listed = r.ok() ? r->kvs.size() : 0;
  }
  ASSERT_EQ(listed, 3u);
  // A client that reads only what etcd holds now (no watch: it re-reads when refused).
  bool served = false;
  uint64_t epoch = 0;
  for (absl::Time end = absl::Now() + absl::Seconds(20); !served && absl::Now() < end;) {
    std::unique_ptr<StoreClient> fresh = Connect(NotWatching());
    ASSERT_NE(fresh, nullptr);
    auto ns = fresh->RegisterNamespace(Spec());
    ASSERT_TRUE(ns.ok());
    std::vector<ChainHash> chain = testutil::PromptChain(*ns, 31, 16);
    served = PutAll(*fresh, *ns, chain) == chain.size();
    auto s = fresh->Stats();
    epoch = s.ok() ? s->epoch : 0;
    if (!served) absl::SleepFor(absl::Milliseconds(500));
  }
  EXPECT_TRUE(served) << "a client at epoch " << epoch << " was refused as stale";
  EXPECT_LT(epoch, high);
  EXPECT_TRUE(WaitForMembers(*c, 3));
  EXPECT_TRUE(WaitRebalanced());  // settled before the suite's next test
}

TEST_F(ReplicatedClusterTest, ReadsFailOverWhenAReplicaIsKilled) {
  std::unique_ptr<StoreClient> c = Connect(Options());
  ASSERT_NE(c, nullptr);
  auto ns = c->RegisterNamespace(Spec());
  ASSERT_TRUE(ns.ok());
  std::vector<ChainHash> chain = testutil::PromptChain(*ns, 4, 120);
  ASSERT_EQ(PutAll(*c, *ns, chain), chain.size());
  std::unique_ptr<LocalNode> victim(nodes_[1]);
  nodes_.erase(1);
  ASSERT_TRUE(victim->Stop(absl::Seconds(5), SIGKILL).ok());
  // Still listed (its lease has not lapsed): reads go to the other replica at once.
  const absl::Time t0 = absl::Now();
  auto found = c->Lookup(*ns, "", chain);
  ASSERT_TRUE(found.ok()) << found.status();
  EXPECT_EQ(found->matched_blocks, chain.size());
  EXPECT_EQ(GetAll(*c, *ns, chain), chain.size());
  EXPECT_LT(absl::Now() - t0, absl::Seconds(10));  // within the calls' deadline
  // A client that leaves replicas at 0 takes the nodes' own count.
  ClientOptions by_nodes = Options();
  by_nodes.replicas = 0;
  std::unique_ptr<StoreClient> c0 = Connect(by_nodes);
  ASSERT_NE(c0, nullptr);
  EXPECT_THAT(c0->DataPlaneDescription(), ::testing::HasSubstr("R=2 W=2"));
  // A put with W=1 is acknowledged by the surviving replica.
  std::unique_ptr<StoreClient> c1 = Connect(Options(2, 1));
  ASSERT_NE(c1, nullptr);
  auto ns1 = c1->RegisterNamespace(Spec());
  ASSERT_TRUE(ns1.ok());
  std::vector<ChainHash> more = testutil::PromptChain(*ns1, 5, 40);
  EXPECT_EQ(PutAll(*c1, *ns1, more), more.size());
  // Once the lease lapses the member set shrinks and the epoch rises; the survivors copy
  // every block to its new second owner.
  EXPECT_TRUE(WaitForMembers(*c, 2));
  ASSERT_TRUE(WaitRebalanced());
  double copied = 0;
  for (auto& [i, node] : nodes_) {
    EXPECT_EQ(NodeStats(*node).under_replicated, 0u) << i;
    EXPECT_EQ(Gauge(*node, "strata_under_replicated_blocks"), 0) << i;
    copied += Gauge(*node, "strata_rebalance_blocks_total");  // {action="copied"} comes first
  }
  EXPECT_GT(copied, 0);
  EXPECT_EQ(GetAll(*c, *ns, chain), chain.size());
  // The node comes back (empty) under its old id: three members again, no duplicate, and it
  // gets its share back.
  std::unique_ptr<LocalNode> back = StartNode(1);
  ASSERT_NE(back, nullptr);
  nodes_[1] = back.release();
  EXPECT_TRUE(WaitForMembers(*c, 3));
  ASSERT_TRUE(WaitRebalanced());
  EXPECT_GT(NodeStats(*nodes_[1]).warm_blocks, 30u);
  EXPECT_EQ(GetAll(*c, *ns, chain), chain.size());
}

// A replica that hangs (SIGSTOP: its sockets stay open, it answers nothing) while still
// listed: a lookup and a get started at once each give it a share of their deadline, then
// ask the block's next owner. Before, the first owner had the whole deadline, and every
// block it owned came back DEADLINE_EXCEEDED.
TEST_F(ReplicatedClusterTest, ReadsFailOverWhenAReplicaHangs) {
  std::unique_ptr<StoreClient> c = Connect(Options());
  ASSERT_NE(c, nullptr);
  auto ns = c->RegisterNamespace(Spec());
  ASSERT_TRUE(ns.ok());
  std::vector<ChainHash> chain = testutil::PromptChain(*ns, 6, 60);
  ASSERT_EQ(PutAll(*c, *ns, chain), chain.size());
  {
    std::vector<uint8_t> buf(kBlock);
    BlockRead one{chain[0], buf.data(), kBlock};
    absl::StatusOr<client::GetResult> plain = c->Get(*ns, "", {&one, 1});
    ASSERT_TRUE(plain.ok() && plain->blocks[0].ok()) << plain.status();
    EXPECT_FALSE(plain->may_land_late);
    EXPECT_EQ(plain->checksums[0], BlockChecksum(buf.data(), kBlock));
  }
  std::unique_ptr<StoreClient> fresh = Connect(Options());
  ASSERT_NE(fresh, nullptr);
  {
    testutil::Freeze frozen(nodes_[2]->pid());
    ASSERT_TRUE(frozen.stopped());
    std::future<absl::StatusOr<client::LookupResult>> found = std::async(std::launch::async, [&] {
      return c->Lookup(*ns, "", chain, {.deadline = absl::Seconds(6)});
    });
    std::vector<std::vector<uint8_t>> bufs(chain.size(), std::vector<uint8_t>(kBlock));
    std::vector<BlockRead> reads;
    for (size_t i = 0; i < chain.size(); ++i) reads.push_back({chain[i], bufs[i].data(), kBlock});
    std::vector<uint8_t> fresh_buf(chain.size() * kBlock);
    std::vector<BlockRead> fresh_reads;
    for (size_t i = 0; i < chain.size(); ++i) {
      fresh_reads.push_back({chain[i], fresh_buf.data() + i * kBlock, kBlock});
    }
    auto fresh_got = std::async(std::launch::async, [&] {
      return fresh->Get(*ns, "", fresh_reads, {.deadline = absl::Seconds(6)});
    });
    absl::StatusOr<client::GetResult> got = c->Get(*ns, "", reads, {.deadline = absl::Seconds(6)});
    ASSERT_TRUE(got.ok()) << got.status();
    for (size_t i = 0; i < chain.size(); ++i) {
      ASSERT_TRUE(got->blocks[i].ok()) << i << ": " << got->blocks[i];
      EXPECT_EQ(bufs[i], Payload(chain[i])) << i;
    }
    absl::StatusOr<client::LookupResult> lookup = found.get();
    ASSERT_TRUE(lookup.ok()) << lookup.status();
    EXPECT_EQ(lookup->matched_blocks, chain.size());
    // Marked slow: the reads after these ask the other owners first (for 1 s, then 2 s ...);
    // not down, so writes still go to it.
    EXPECT_THAT(c->DataPlaneDescription(), ::testing::HasSubstr("slow: node-2"));
    // Another client's get, at the same time, cut its attempts there short too. Such an
    // attempt may still write into the buffers: a caller that reads them again later (the GPU
    // agent's staging) is told, and checks them first.
    got = fresh_got.get();
    ASSERT_TRUE(got.ok()) << got.status();
    for (size_t i = 0; i < chain.size(); ++i) ASSERT_TRUE(got->blocks[i].ok()) << i;
    EXPECT_TRUE(got->may_land_late);
  }
  // Thawed, it has left the set (its lease lapsed) and joins again.
  EXPECT_TRUE(WaitForMembers(*c, 3));
  ASSERT_TRUE(WaitRebalanced());
}

// A block another put is still writing on an owner is no replica yet: a put counts it toward
// its write quorum once that put committed it, and stores it itself if that put gave up. Here
// a raw writer holds a reservation for the block on every node and aborts them after 300 ms.
// Before, the put counted "being written" as stored: acknowledged at once, held by no node.
TEST_F(ReplicatedClusterTest, ABlockBeingWrittenByAnotherPutIsNotCountedAsAReplica) {
  client::Namespace ns;
  std::unique_ptr<StoreClient> c = ConnectWithNamespace(Options(), &ns);
  ASSERT_NE(c, nullptr);
  const std::vector<ChainHash> h = testutil::PromptChain(ns, 77, 1);
  HeldPuts held;
  ASSERT_NO_FATAL_FAILURE(HoldPuts({0, 1, 2}, ns, h, &held));
  std::thread gives_up([&] {
    absl::SleepFor(absl::Milliseconds(300));
    AbortPuts(&held);
  });
  absl::StatusOr<client::PutResult> r = PutEach(*c, ns, h);
  gives_up.join();
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->blocks[0].ok()) << r->blocks[0];
  int holders = 0;
  for (auto& [i, node] : nodes_) {
    auto one = StoreClient::Connect({.address = node->address()});
    ASSERT_TRUE(one.ok());
    auto where = (*one)->LookupEach(ns, "", h);
    ASSERT_TRUE(where.ok()) << where.status();
    holders += (*where)[0].tier != client::Tier::kUnknown;
  }
  EXPECT_EQ(holders, 2);
}

// Owners' copies drift apart (each node evicts on its own): here blocks 3..20 of a 24-block
// prefix are gone from their first owners and kept by their second. A lookup finds the whole
// prefix. Before, once the first of them turned up at its second owner, each later round
// asked about one more block, and the round cap (2R + 4) ended the prefix at 10.
TEST_F(ReplicatedClusterTest, ALookupFindsBlocksTheirFirstOwnersLostAtTheirSecondOwners) {
  client::Namespace ns;
  std::unique_ptr<StoreClient> c = ConnectWithNamespace(Options(), &ns);
  ASSERT_NE(c, nullptr);
  const std::vector<ChainHash> chain = testutil::PromptChain(ns, 88, 24);
  ASSERT_EQ(PutAll(*c, ns, chain), chain.size());
  std::vector<cluster::Member> members;
  for (auto& [i, node] : nodes_) members.push_back({.id = absl::StrCat("node-", i)});
  cluster::Normalize(&members);
  for (auto& [i, node] : nodes_) {
    client::Namespace dns;
    std::unique_ptr<StoreClient> direct = ConnectWithNamespace({.address = node->address()}, &dns);
    ASSERT_NE(direct, nullptr);
    std::vector<ChainHash> first_owned;
    for (size_t k = 3; k <= 20; ++k) {
      if (members[cluster::Owners(members, chain[k], 2)[0]].id == absl::StrCat("node-", i)) {
        first_owned.push_back(chain[k]);
      }
    }
    // A writer's delete there: its tombstone keeps the rebalancer from copying them back.
    if (!first_owned.empty()) {
      ASSERT_TRUE(direct->Delete(dns, "", first_owned).ok());
    }
  }
  auto r = c->Lookup(ns, "", chain);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->matched_blocks, chain.size());
}

// kill -9 one node at a time during continuous puts (R=2, W=2): after 20 kill/restart
// cycles every acknowledged block reads back bit-exact; unacknowledged ones are whole or
// NOT_FOUND.
TEST_F(ReplicatedClusterTest, AcknowledgedBlocksSurviveTwentyKillCycles) {
  std::unique_ptr<StoreClient> c = Connect(Options());
  ASSERT_NE(c, nullptr);
  auto ns = c->RegisterNamespace(Spec());
  ASSERT_TRUE(ns.ok());
  absl::Mutex mu;
  std::vector<ChainHash> acked, unacked;
  std::atomic<bool> stop{false};
  std::thread writer([&] {
    std::unique_ptr<StoreClient> w = Connect(Options());
    if (w == nullptr) return;
    auto wns = w->RegisterNamespace(Spec());
    if (!wns.ok()) return;
    // At most kMaxWritten blocks: with R=2 they fit the three warm tiers twice over, so any
    // block missing at the end was lost, not evicted.
    constexpr size_t kMaxWritten = 2400;
    for (uint32_t prompt = 1000; !stop.load(); ++prompt) {
      {
        absl::MutexLock lock(&mu);
        if (acked.size() + unacked.size() >= kMaxWritten) break;
      }
      std::vector<ChainHash> chain = testutil::PromptChain(*wns, prompt, 8);
      std::vector<std::vector<uint8_t>> data;
      const std::vector<BlockWrite> writes = PayloadWrites(chain, &data);
      auto r = w->Put(*wns, "", writes, {.deadline = absl::Seconds(5)});
      {
        absl::MutexLock lock(&mu);
        for (size_t i = 0; i < chain.size(); ++i) {
          (r.ok() && r->blocks[i].ok() ? acked : unacked).push_back(chain[i]);
        }
      }
      absl::SleepFor(absl::Milliseconds(300));
    }
  });
  const absl::Time t0 = absl::Now();
  for (int cycle = 0; cycle < 20 && !HasFatalFailure(); ++cycle) {
    const int victim = cycle % 3;
    std::unique_ptr<LocalNode> dead(nodes_[victim]);
    nodes_.erase(victim);
    EXPECT_TRUE(dead->Stop(absl::Seconds(5), SIGKILL).ok());
    EXPECT_TRUE(WaitForMembers(*c, 2)) << "cycle " << cycle;
    EXPECT_TRUE(WaitRebalanced()) << "cycle " << cycle;
    std::unique_ptr<LocalNode> back = StartNode(victim);
    if (back == nullptr) break;
    nodes_[victim] = back.release();
    EXPECT_TRUE(WaitForMembers(*c, 3)) << "cycle " << cycle;
    EXPECT_TRUE(WaitRebalanced()) << "cycle " << cycle;
  }
  stop = true;
  writer.join();
  absl::MutexLock lock(&mu);
  ASSERT_GT(acked.size(), 100u);
  size_t good = 0;
  for (size_t b = 0; b < acked.size(); b += 64) {
    std::vector<ChainHash> part(acked.begin() + b, acked.begin() + std::min(acked.size(), b + 64));
    good += GetAll(*c, *ns, part);
  }
  EXPECT_EQ(good, acked.size());
  // Unacknowledged blocks: complete (bit-exact) or absent, never anything else.
  size_t whole = 0, absent = 0;
  for (const ChainHash& h : unacked) {
    std::vector<uint8_t> buf(kBlock);
    BlockRead read{h, buf.data(), kBlock};
    auto r = c->Get(*ns, "", {&read, 1});
    ASSERT_TRUE(r.ok());
    if (r->blocks[0].ok()) {
      EXPECT_EQ(buf, Payload(h));
      ++whole;
    } else {
      EXPECT_EQ(r->blocks[0].code(), absl::StatusCode::kNotFound) << r->blocks[0];
      ++absent;
    }
  }
  uint64_t evictions = 0;
  for (auto& [i, node] : nodes_) evictions += NodeStats(*node).evictions;
  EXPECT_EQ(evictions, 0u);
  std::printf(
      "[ figures  ] 20 kill -9 cycles in %.0f s: %zu acknowledged blocks, %zu read back "
      "bit-exact; %zu unacknowledged (%zu whole, %zu absent)\n",
      absl::ToDoubleSeconds(absl::Now() - t0), acked.size(), good, unacked.size(), whole, absent);
}

}  // namespace
}  // namespace strata::cluster_test
