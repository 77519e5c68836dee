// Rebalancing in a real cluster (cluster_fixture.h): a joining node takes over blocks
// without any becoming unreadable, rebalancers wait while a member places blocks by another
// scheme, every node keeps the largest replication factor any member records, and a deleted
// block does not come back from a copy on a node that does not own it.
#include "cluster_fixture.h"

namespace strata::cluster_test {
namespace {

TEST_F(ClusterTest, AJoiningNodeTakesOverWithoutUnreadableBlocks) {
  std::unique_ptr<StoreClient> c = Connect(Options());
  ASSERT_NE(c, nullptr);
  auto ns = c->RegisterNamespace(Spec());
  ASSERT_TRUE(ns.ok());
  std::vector<ChainHash> chain = testutil::PromptChain(*ns, 3, 200);
  // The first half leaves DRAM for the nodes' cool tiers (RocksDB): a pass walks those from
  // RocksDB's records, the warm ones from the arena's pages.
  const size_t half = chain.size() / 2;
  const std::vector<ChainHash> parked(chain.begin(), chain.begin() + half);
  const std::vector<ChainHash> warm(chain.begin() + half, chain.end());
  ASSERT_EQ(PutAll(*c, *ns, parked, {.session_id = "join-test"}), half);
  ASSERT_EQ(PutAll(*c, *ns, warm), chain.size() - half);
  auto paused = c->PauseSession("join-test", /*to_cold=*/false);
  ASSERT_THAT(paused, IsOk());
  EXPECT_EQ(*paused, half);
  uint64_t cool = 0;
  for (auto& [i, node] : nodes_) cool += NodeStats(*node).cool_blocks;
  EXPECT_EQ(cool, half);
  std::unique_ptr<LocalNode> joined = StartNode(4);
  ASSERT_NE(joined, nullptr);
  nodes_[4] = joined.get();
  ASSERT_TRUE(WaitForMembers(*c, 4));
  // About a quarter of the blocks now belong to the new node, which has none of them yet:
  // every read succeeds while the rebalancer moves them (the previous owner answers).
  std::map<int, uint64_t> base;
  for (auto& [i, node] : nodes_) base[i] = NodeStats(*node).rebalance_passes;
  int rounds = 0;
  for (absl::Time end = absl::Now() + absl::Seconds(30); absl::Now() < end;) {
    ++rounds;  // counted before the check below may break out (rebalancing done at once)
    auto found = c->Lookup(*ns, "", chain);
    ASSERT_TRUE(found.ok());
    EXPECT_EQ(found->matched_blocks, chain.size());
    // Read from disk where they lie, so that the rebalancer finds them there too.
    EXPECT_EQ(GetAll(*c, *ns, chain, {.promote = false}), chain.size());
    bool done = true;
    for (auto& [i, node] : nodes_) {
      client::NodeStats st = NodeStats(*node);
      done = done && st.rebalance_pending == 0 && st.rebalance_passes >= base[i] + 2;
    }
    if (done) break;
  }
  EXPECT_GE(rounds, 1);
  // Afterwards every block sits at its owner only: moved, not copied.
  std::vector<cluster::Member> members;
  for (auto& [i, node] : nodes_) members.push_back({.id = absl::StrCat("node-", i)});
  cluster::Normalize(&members);
  size_t misplaced = 0, at_new_node = 0;
  for (auto& [i, node] : nodes_) {
    auto direct = StoreClient::Connect({.address = node->address()});
    ASSERT_TRUE(direct.ok());
    auto dns = (*direct)->RegisterNamespace(Spec());
    ASSERT_TRUE(dns.ok());
    auto here = (*direct)->LookupEach(*dns, "", chain);
    ASSERT_TRUE(here.ok()) << here.status();
    for (size_t k = 0; k < chain.size(); ++k) {
      const bool owner =
          members[cluster::Owners(members, chain[k], 1)[0]].id == absl::StrCat("node-", i);
      const bool present = (*here)[k].tier != client::Tier::kUnknown;
      if (owner != present) ++misplaced;
      if (i == 4 && present) ++at_new_node;
    }
  }
  EXPECT_EQ(misplaced, 0u);
  EXPECT_GT(at_new_node, 20u);
  EXPECT_EQ(GetAll(*c, *ns, chain), chain.size());
  nodes_.erase(4);
  ASSERT_TRUE(joined->Stop(absl::Seconds(20)).ok());
  EXPECT_TRUE(WaitForMembers(*c, 3));
}

TEST_F(ClusterTest, RebalancersWaitWhileAMemberPlacesBlocksByAnotherScheme) {
  auto etcd = cluster::EtcdClient::Create({.endpoints = {etcd_->endpoint()}});
  ASSERT_TRUE(etcd.ok());
  auto node0 = StoreClient::Connect({.address = nodes_[0]->address()});
  ASSERT_TRUE(node0.ok()) << node0.status();
  // node-0's Stats once it sees `members` members, `others` of them placing otherwise (15 s).
  auto settle = [&](uint32_t members, uint32_t others) {
    absl::StatusOr<client::NodeStats> s;
    for (absl::Time end = absl::Now() + absl::Seconds(15); absl::Now() < end;) {
      s = (*node0)->Stats();
      if (s.ok() && s->members == members && s->members_placing_otherwise == others) break;
      absl::SleepFor(absl::Milliseconds(100));
    }
    return s;
  };
  // Passes node-0 completes in 1.5 s (three rebalance intervals), after a running one ends.
  auto passes = [&] {
    auto s = (*node0)->Stats();
    return s.ok() ? s->rebalance_passes : uint64_t{0};
  };
  auto passes_in_a_while = [&] {
    absl::SleepFor(absl::Milliseconds(600));
    const uint64_t first = passes();
    absl::SleepFor(absl::Milliseconds(1500));
    return passes() - first;
  };
  auto agreed = settle(3, 0);
  ASSERT_TRUE(agreed.ok() && agreed->members == 3 && agreed->members_placing_otherwise == 0);
  EXPECT_GT(passes_in_a_while(), 0u);
  // A cluster client's description, once it says `what` or after 10 s.
  std::unique_ptr<StoreClient> c = Connect(Options());
  ASSERT_NE(c, nullptr);
  auto described = [&](const std::string& what) {
    std::string d = c->DataPlaneDescription();
    for (absl::Time end = absl::Now() + absl::Seconds(10);
         !absl::StrContains(d, what) && absl::Now() < end;) {
      absl::SleepFor(absl::Milliseconds(100));
      d = c->DataPlaneDescription();
    }
    return d;
  };
  EXPECT_THAT(c->DataPlaneDescription(), ::testing::Not(::testing::HasSubstr("WARNING")));

  // Under a lease, as a node writes it (a key without one is ignored).
  auto lease = (*etcd)->GrantLease(absl::Minutes(2));
  ASSERT_THAT(lease, IsOk());
  ASSERT_THAT((*etcd)->Put("/strata/it/nodes/zz-old", "address=127.0.0.1:9\nreplicas=1\n", *lease),
              IsOk());
  // Gone again whatever happens below, so the suite's later tests see three members.
  auto remove =
      absl::MakeCleanup([&] { (*etcd)->Delete("/strata/it/nodes/zz-old").IgnoreError(); });
  auto mixed = settle(4, 1);
  ASSERT_TRUE(mixed.ok() && mixed->members == 4 && mixed->members_placing_otherwise == 1);
  const std::string gauge = "strata_cluster_members_placing_otherwise";
  for (int i = 1; i < 3; ++i) {
    for (int k = 0; k < 100 && Gauge(*nodes_[i], gauge) != 1; ++k) {
      absl::SleepFor(absl::Milliseconds(100));
    }
    EXPECT_EQ(Gauge(*nodes_[i], gauge), 1) << i;
  }
  EXPECT_EQ(passes_in_a_while(), 0u);
  auto [exit_status, text] = StrataStatus();
  EXPECT_THAT(text, ::testing::HasSubstr("WARNING: zz-old place blocks by another placement"));
  // Nothing answers at zz-old's address: the operator's view says so in its exit status too
  // (all answer: 0, ClusterTest.NodesRegisterAndEveryoneSeesTheSameEpoch).
  EXPECT_TRUE(WIFEXITED(exit_status) && WEXITSTATUS(exit_status) == 1) << exit_status;
  EXPECT_THAT(described("zz-old"),
              ::testing::HasSubstr("WARNING: members zz-old place blocks by another placement"));

  std::move(remove).Invoke();
  auto back = settle(3, 0);
  ASSERT_TRUE(back.ok() && back->members == 3 && back->members_placing_otherwise == 0);
  EXPECT_GT(passes_in_a_while(), 0u);
  EXPECT_THAT(c->DataPlaneDescription(), ::testing::Not(::testing::HasSubstr("WARNING")));
}

// A node configured for two copies joins nodes configured for one: every node keeps two
// while it is a member (rather than copying and dropping the same blocks back and forth), and
// one again once it has left.
TEST_F(ClusterTest, EveryNodeKeepsTheLargestReplicationFactorAnyMemberRecords) {
  std::unique_ptr<StoreClient> c = Connect(Options());
  ASSERT_NE(c, nullptr);
  auto ns = c->RegisterNamespace(Spec());
  ASSERT_TRUE(ns.ok());
  std::vector<ChainHash> chain = testutil::PromptChain(*ns, 9, 60);
  ASSERT_EQ(PutAll(*c, *ns, chain), chain.size());
  // Copies of the chain's blocks held by the suite's nodes.
  auto copies = [&] {
    size_t n = 0;
    for (auto& [i, node] : nodes_) {
      auto direct = StoreClient::Connect({.address = node->address()});
      auto dns = direct.ok() ? (*direct)->RegisterNamespace(Spec()) : direct.status();
      auto here = dns.ok() ? (*direct)->LookupEach(*dns, "", chain) : dns.status();
      EXPECT_TRUE(here.ok()) << here.status();
      if (!here.ok()) continue;
      for (const auto& b : *here) n += b.tier != client::Tier::kUnknown;
    }
    return n;
  };
  // Waits (30 s at most) until the nodes hold `want` copies; then how many they hold.
  auto settle = [&](size_t want) {
    size_t n = copies();
    for (absl::Time end = absl::Now() + absl::Seconds(30); n != want && absl::Now() < end;) {
      absl::SleepFor(absl::Milliseconds(200));
      n = copies();
    }
    return n;
  };
  ASSERT_EQ(settle(chain.size()), chain.size());
  EXPECT_EQ(NodeStats(*nodes_[0]).replicas_kept, 1u);
  // A client that leaves replicas at 0 follows what the nodes keep; `c` asked for 1.
  std::unique_ptr<StoreClient> follower = Connect(Options(/*replicas=*/0));
  ASSERT_NE(follower, nullptr);
  EXPECT_THAT(follower->DataPlaneDescription(), ::testing::HasSubstr("R=1 W=1"));

  std::unique_ptr<LocalNode> two = StartNode(7, /*replicas=*/2);
  ASSERT_NE(two, nullptr);
  nodes_[7] = two.get();
  auto gone = absl::MakeCleanup([&] {
    nodes_.erase(7);
    two->Stop(absl::Seconds(20)).IgnoreError();
  });
  ASSERT_TRUE(WaitForMembers(*c, 4));
  EXPECT_EQ(settle(2 * chain.size()), 2 * chain.size());
  EXPECT_EQ(NodeStats(*nodes_[0]).replicas_kept, 2u);
  EXPECT_EQ(Gauge(*nodes_[0], "strata_cluster_replicas_kept"), 2);
  EXPECT_THAT(c->DataPlaneDescription(), ::testing::HasSubstr("the nodes keep 2 copies"));
  ASSERT_TRUE(WaitForMembers(*follower, 4));
  EXPECT_THAT(follower->DataPlaneDescription(), ::testing::HasSubstr("R=2 W=2"));
  EXPECT_THAT(follower->DataPlaneDescription(), ::testing::Not(::testing::HasSubstr("WARNING")));
  const std::string status = StrataStatus().second;
  EXPECT_THAT(status, ::testing::HasSubstr(
                          "WARNING: node-0=1, node-1=1, node-2=1 record fewer cluster_replicas"));
  EXPECT_THAT(status, ::testing::HasSubstr("rebalance: keeps 2 copies"));
  // And it stays so over further passes (three intervals).
  absl::SleepFor(absl::Milliseconds(1500));
  EXPECT_EQ(copies(), 2 * chain.size());
  EXPECT_EQ(GetAll(*c, *ns, chain), chain.size());

  std::move(gone).Invoke();  // SIGTERM: it leaves the member set at once
  ASSERT_TRUE(WaitForMembers(*c, 3));
  EXPECT_EQ(settle(chain.size()), chain.size());
  EXPECT_EQ(NodeStats(*nodes_[0]).replicas_kept, 1u);
  EXPECT_THAT(c->DataPlaneDescription(), ::testing::Not(::testing::HasSubstr("WARNING")));
  ASSERT_TRUE(WaitForMembers(*follower, 3));
  EXPECT_THAT(follower->DataPlaneDescription(), ::testing::HasSubstr("R=1 W=1"));
  EXPECT_EQ(GetAll(*follower, *ns, chain), chain.size());
  EXPECT_THAT(StrataStatus().second, ::testing::Not(::testing::HasSubstr("cluster_replicas")));
  EXPECT_EQ(GetAll(*c, *ns, chain), chain.size());
}

// A copy on a node that does not own the block (left by a join before its hand-over, or by a
// lower replication factor) goes with the owners' on Delete: otherwise that node's rebalancer
// copies it back to the owner, and the deleted block is readable again.
TEST_F(ClusterTest, ADeletedBlockDoesNotComeBackFromACopyElsewhere) {
  std::unique_ptr<StoreClient> c = Connect(Options());
  ASSERT_NE(c, nullptr);
  auto ns = c->RegisterNamespace(Spec());
  ASSERT_TRUE(ns.ok());
  std::vector<ChainHash> chain = testutil::PromptChain(*ns, 11, 30);
  ASSERT_EQ(PutAll(*c, *ns, chain), chain.size());
  // A stray copy of every block on node-0, which owns only about a third of them.
  auto direct = StoreClient::Connect({.address = nodes_[0]->address()});
  ASSERT_TRUE(direct.ok());
  auto dns = (*direct)->RegisterNamespace(Spec());
  ASSERT_TRUE(dns.ok());
  ASSERT_EQ(PutAll(**direct, *dns, chain), chain.size());
  auto deleted = c->Delete(*ns, "", chain);
  ASSERT_THAT(deleted, IsOk());
  EXPECT_EQ(*deleted, chain.size());
  // Two rebalance passes later nothing of the chain is anywhere.
  ASSERT_TRUE(WaitRebalanced());
  auto found = c->Lookup(*ns, "", chain);
  ASSERT_THAT(found, IsOk());
  EXPECT_EQ(found->matched_blocks, 0u);
  auto here = (*direct)->LookupEach(*dns, "", chain);
  ASSERT_THAT(here, IsOk());
  size_t left = 0;
  for (const auto& b : *here) left += b.tier != client::Tier::kUnknown;
  EXPECT_EQ(left, 0u) << "copies left on node-0";
  std::vector<uint8_t> buf(kBlock);
  BlockRead read{chain[0], buf.data(), kBlock};
  auto got = c->Get(*ns, "", {&read, 1});
  ASSERT_THAT(got, IsOk());
  EXPECT_TRUE(absl::IsNotFound(got->blocks[0])) << got->blocks[0];
}

// A delete is remembered on every member: a copy on its way (a rebalancer's, a read-repair's:
// PutOptions::copy) arriving after it is refused and counted; a writer's put of the same
// blocks is taken. The UCX path: ucx_unclaimed_test.cc.
TEST_F(ClusterTest, CopiesThatArriveAfterADeleteAreRefusedAndAWritersPutIsTaken) {
  std::unique_ptr<StoreClient> c = Connect(Options());
  ASSERT_NE(c, nullptr);
  auto ns = c->RegisterNamespace(Spec());
  ASSERT_TRUE(ns.ok());
  std::vector<ChainHash> chain = testutil::PromptChain(*ns, 12, 8);
  ASSERT_EQ(PutAll(*c, *ns, chain), chain.size());
  auto deleted = c->Delete(*ns, "", chain);
  ASSERT_THAT(deleted, IsOk());
  const double refused_before = testutil::Metric(*nodes_[0], "strata_copies_refused_total");
  auto direct = StoreClient::Connect(
      {.address = nodes_[0]->address(), .data_plane = ClientOptions::DataPlane::kInline});
  ASSERT_TRUE(direct.ok()) << direct.status();
  auto dns = (*direct)->RegisterNamespace(Spec());
  ASSERT_TRUE(dns.ok());
  auto copied = PutEach(**direct, *dns, chain, {.copy = true});
  ASSERT_THAT(copied, IsOk());
  size_t refused = 0;
  for (const absl::Status& st : copied->blocks) {
    EXPECT_THAT(st, StatusIs(absl::StatusCode::kFailedPrecondition));
    refused += st.code() == absl::StatusCode::kFailedPrecondition;
  }
  EXPECT_EQ(testutil::Metric(*nodes_[0], "strata_copies_refused_total") - refused_before,
            static_cast<double>(refused));
  auto found = c->Lookup(*ns, "", chain);
  ASSERT_THAT(found, IsOk());
  EXPECT_EQ(found->matched_blocks, 0u);
  // The writer stores them again: taken everywhere, and readable.
  ASSERT_EQ(PutAll(*c, *ns, chain), chain.size());
  EXPECT_EQ(GetAll(*c, *ns, chain), chain.size());
}

// A tenant's own copy is handed over only once its owner holds that scope's copy: the owner
// holding the same blocks in `shared` does not count. Here node-0 has a stray copy of 30
// blocks in the caller's scope, and every owner has them in `shared`. Before, a peer's lookup
// answered from `shared` first, so node-0 dropped the 20 it does not own without copying
// them: the scope's copies of those were gone.
TEST_F(ClusterTest, ATenantsBlocksAreNotHandedOverToAPeersSharedCopy) {
  std::unique_ptr<StoreClient> c = Connect(Options());
  ASSERT_NE(c, nullptr);
  auto ns = c->RegisterNamespace(Spec());
  ASSERT_TRUE(ns.ok());
  const std::vector<ChainHash> chain = testutil::PromptChain(*ns, 13, 30);
  std::vector<std::vector<uint8_t>> data;
  const std::vector<BlockWrite> writes = PayloadWrites(chain, &data);
  auto shared = c->Put(*ns, "shared", writes);
  ASSERT_THAT(shared, IsOk());
  ASSERT_EQ(shared->stored, chain.size());
  client::Namespace dns;
  std::unique_ptr<StoreClient> direct =
      ConnectWithNamespace({.address = nodes_[0]->address()}, &dns);
  ASSERT_NE(direct, nullptr);
  ASSERT_EQ(PutAll(*direct, dns, chain), chain.size());
  ASSERT_TRUE(WaitRebalanced());
  ClientOptions exact = Options();
  exact.exact_scope_lookups = true;
  std::unique_ptr<StoreClient> e = Connect(exact);
  ASSERT_NE(e, nullptr);
  ASSERT_TRUE(e->RegisterNamespace(Spec()).ok());
  for (const char* scope : {"", "shared"}) {
    auto where = e->LookupEach(*ns, scope, chain);
    ASSERT_THAT(where, IsOk());
    size_t held = 0;
    for (const auto& b : *where) held += b.tier != client::Tier::kUnknown;
    EXPECT_EQ(held, chain.size()) << "scope '" << scope << "' at the blocks' owners";
  }
}

// A block another put is still writing at its owner is not a copy there yet: the stray
// copy on node-0 stays until the owner holds the block, and goes to the owner once that put
// gave up. Before, node-0 took "being written" for a copy and dropped its own: with the other
// put aborted, the blocks node-0 did not own were gone.
TEST_F(ClusterTest, ABlockBeingWrittenAtItsOwnerIsNotHandedOverYet) {
  std::unique_ptr<StoreClient> c = Connect(Options());
  ASSERT_NE(c, nullptr);
  auto ns = c->RegisterNamespace(Spec());
  ASSERT_TRUE(ns.ok());
  const std::vector<ChainHash> chain = testutil::PromptChain(*ns, 14, 12);
  HeldPuts held;
  ASSERT_NO_FATAL_FAILURE(HoldPuts({1, 2}, *ns, chain, &held));
  client::Namespace dns;
  std::unique_ptr<StoreClient> direct =
      ConnectWithNamespace({.address = nodes_[0]->address()}, &dns);
  ASSERT_NE(direct, nullptr);
  ASSERT_EQ(PutAll(*direct, dns, chain), chain.size());
  ASSERT_TRUE(WaitRebalanced());  // the owners answer "being written"
  AbortPuts(&held);
  ASSERT_TRUE(WaitRebalanced());  // now node-0 copies them
  EXPECT_EQ(GetAll(*c, *ns, chain), chain.size());
}

}  // namespace
}  // namespace strata::cluster_test
