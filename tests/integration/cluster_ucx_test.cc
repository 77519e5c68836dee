// A cluster client over the nodes' UCX data plane: every owner's share of a put and a get
// moves over UCX, bit-exact, from memory registered before the client connected to the nodes,
// from memory registered after, and from unregistered memory (the bounce pool). The other
// cluster suites run with the data plane off.
#include "cluster_fixture.h"

namespace strata::cluster_test {
namespace {

// Payload bytes a node moved over UCX in `direction` ("in" or "out"), from its /metrics.
uint64_t UcxBytes(const LocalNode& node, const std::string& direction) {
  const double v =
      testutil::Metric(node, "strata_transfer_bytes_total",
                       absl::StrCat("direction=\"", direction, "\",transport=\"ucx\""));
  return v < 0 ? 0 : static_cast<uint64_t>(v);
}

TEST(ClusterUcxTest, EveryOwnersShareMovesOverUcxFromRegisteredAndUnregisteredMemory) {
  auto etcd = cluster::LocalEtcd::Start({});
  ASSERT_TRUE(etcd.ok()) << etcd.status();
  std::vector<std::unique_ptr<LocalNode>> nodes;
  for (const char* id : {"a", "b"}) {
    auto node = testutil::StartNode({"--node-id", id, "--cluster-mode", "etcd", "--etcd-endpoints",
                                     (*etcd)->endpoint(), "--cluster-name", "ucx", "--warm-bytes",
                                     "64MiB", "--max-block-bytes", "1MiB", "--ucx-tls", "tcp"});
    ASSERT_THAT(node, IsOk());
    nodes.push_back(std::move(*node));
  }
  ClientOptions o;
  o.etcd_endpoints = (*etcd)->endpoint();
  o.cluster_name = "ucx";
  o.data_plane = ClientOptions::DataPlane::kUcx;
  o.ucx_two_sided_on_tcp = false;  // the nodes' RMA: from and into registered memory
  o.default_deadline = absl::Seconds(20);
  auto connected = StoreClient::Connect(o);
  ASSERT_THAT(connected, IsOk());
  std::unique_ptr<StoreClient> c = std::move(*connected);
  constexpr size_t kBlocks = 16, kSize = 256 << 10;
  std::vector<uint8_t> src(kBlocks * kSize), dst(kBlocks * kSize), plain(kBlocks * kSize);
  for (size_t i = 0; i < src.size(); ++i) src[i] = static_cast<uint8_t>((i * 2654435761u) >> 13);
  // Registered before the client holds a connection to either node, and after.
  ASSERT_THAT(c->RegisterMemory(src.data(), src.size()), IsOk());
  ASSERT_TRUE(WaitForMembers(*c, 2));
  auto ns = c->RegisterNamespace(testutil::RawSpec("cluster-ucx", kSize));
  ASSERT_THAT(ns, IsOk());
  EXPECT_THAT(c->DataPlaneDescription(), ::testing::HasSubstr("ucx"));
  ASSERT_THAT(c->RegisterMemory(dst.data(), dst.size()), IsOk());

  const std::vector<ChainHash> chain = testutil::PromptChain(*ns, 3, kBlocks);
  std::vector<BlockWrite> writes;
  std::vector<BlockRead> reads, plain_reads;
  for (size_t i = 0; i < kBlocks; ++i) {
    writes.push_back({chain[i], src.data() + i * kSize, kSize});
    reads.push_back({chain[i], dst.data() + i * kSize, kSize});
    plain_reads.push_back({chain[i], plain.data() + i * kSize, kSize});
  }
  std::vector<uint64_t> in0, out0;
  for (const auto& n : nodes) {
    in0.push_back(UcxBytes(*n, "in"));
    out0.push_back(UcxBytes(*n, "out"));
  }
  auto put = c->Put(*ns, "", writes);
  ASSERT_THAT(put, IsOk());
  EXPECT_EQ(put->stored, kBlocks);
  auto got = c->Get(*ns, "", reads);
  ASSERT_THAT(got, IsOk());
  for (size_t i = 0; i < kBlocks; ++i) EXPECT_THAT(got->blocks[i], IsOk()) << i;
  EXPECT_TRUE(dst == src) << "registered destination";
  ASSERT_THAT(c->UnregisterMemory(dst.data()), IsOk());
  auto again = c->Get(*ns, "", plain_reads);
  ASSERT_THAT(again, IsOk());
  for (size_t i = 0; i < kBlocks; ++i) EXPECT_THAT(again->blocks[i], IsOk()) << i;
  EXPECT_TRUE(plain == src) << "unregistered destination";

  uint64_t in = 0, out = 0;
  for (size_t k = 0; k < nodes.size(); ++k) {
    const uint64_t node_in = UcxBytes(*nodes[k], "in") - in0[k];
    EXPECT_GT(node_in, 0u) << "node " << k << " took no share over UCX";
    in += node_in;
    out += UcxBytes(*nodes[k], "out") - out0[k];
  }
  EXPECT_EQ(in, kBlocks * kSize) << "every block put over UCX, once";
  EXPECT_EQ(out, 2 * kBlocks * kSize) << "every block got over UCX, twice";
  EXPECT_THAT(c->UnregisterMemory(src.data()), IsOk());
}

// A node without a UCX data plane (--ucx-tls "") takes a kAuto cluster client's calls inline,
// also once the client has registered memory, and registering more leaves it out. Before,
// registering the ranges with that node's client failed FAILED_PRECONDITION at each connect:
// the node was marked down for good, and a put with W=2 stored nothing.
TEST(ClusterUcxTest, ANodeWithoutUcxServesAClientWithRegisteredMemoryInline) {
  auto etcd = cluster::LocalEtcd::Start({});
  ASSERT_TRUE(etcd.ok()) << etcd.status();
  std::vector<std::unique_ptr<LocalNode>> nodes;
  for (const auto& [id, tls] : {std::pair{"a", "tcp"}, std::pair{"b", ""}}) {
    auto node = testutil::StartNode({"--node-id", id, "--cluster-mode", "etcd", "--etcd-endpoints",
                                     (*etcd)->endpoint(), "--cluster-name", "mixed", "--warm-bytes",
                                     "64MiB", "--max-block-bytes", "1MiB", "--ucx-tls", tls});
    ASSERT_THAT(node, IsOk());
    nodes.push_back(std::move(*node));
  }
  constexpr size_t kBlocks = 8, kSize = 64 << 10;
  std::vector<uint8_t> src(kBlocks * kSize), dst(kBlocks * kSize);
  for (size_t i = 0; i < src.size(); ++i) src[i] = static_cast<uint8_t>((i * 2654435761u) >> 11);
  // Registered before any node is connected: each takes it as it connects.
  std::unique_ptr<StoreClient> c = ConnectToCluster((*etcd)->endpoint(), "mixed", 0, 2, 2);
  ASSERT_NE(c, nullptr);
  ASSERT_THAT(c->RegisterMemory(src.data(), src.size()), IsOk());
  ASSERT_TRUE(WaitForMembers(*c, 2));
  auto ns = c->RegisterNamespace(testutil::RawSpec("cluster-mixed", kSize));
  ASSERT_THAT(ns, IsOk());
  ASSERT_THAT(c->RegisterMemory(dst.data(), dst.size()), IsOk());
  EXPECT_THAT(c->DataPlaneDescription(), ::testing::HasSubstr("2 connected"));

  const std::vector<ChainHash> chain = testutil::PromptChain(*ns, 4, kBlocks);
  std::vector<BlockWrite> writes;
  std::vector<BlockRead> reads;
  for (size_t i = 0; i < kBlocks; ++i) {
    writes.push_back({chain[i], src.data() + i * kSize, kSize});
    reads.push_back({chain[i], dst.data() + i * kSize, kSize});
  }
  auto put = c->Put(*ns, "", writes);
  ASSERT_THAT(put, IsOk());
  EXPECT_EQ(put->stored, kBlocks) << put->blocks[0];
  auto got = c->Get(*ns, "", reads);
  ASSERT_THAT(got, IsOk());
  for (size_t i = 0; i < kBlocks; ++i) EXPECT_THAT(got->blocks[i], IsOk()) << i;
  EXPECT_TRUE(dst == src);
  EXPECT_GT(UcxBytes(*nodes[0], "in"), 0u) << "node a took its copies over UCX";
  EXPECT_EQ(UcxBytes(*nodes[1], "in"), 0u);
  EXPECT_THAT(c->UnregisterMemory(dst.data()), IsOk());
  EXPECT_THAT(c->UnregisterMemory(src.data()), IsOk());
}

}  // namespace
}  // namespace strata::cluster_test
