// The cluster suites' fixture: one real etcd (cluster::LocalEtcd) and three real
// strata-storenode processes on loopback per suite, coordinated through etcd membership, and
// the helpers their tests share (cluster_integration_test.cc, cluster_join_test.cc,
// cluster_rebalance_test.cc, ...).
// Test files link into one binary, so each suite starts its processes once.
#pragma once

#include <signal.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <future>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "strata/client/local_node.h"
#include "strata/client/store_client.h"
#include "strata/cluster/etcd_client.h"
#include "strata/cluster/local_etcd.h"
#include "strata/cluster/membership.h"
#include "strata/cluster/placement.h"
#include "strata/testutil/node_process.h"
#include "strata/testutil/prompts.h"
#include "strata/testutil/status_matchers.h"
#include "strata/v1/store.grpc.pb.h"

namespace strata::cluster_test {

using client::BlockRead;
using client::BlockWrite;
using client::ClientOptions;
using client::LocalNode;
using client::StoreClient;
using testutil::IsOk;
using testutil::StatusIs;

inline constexpr uint64_t kBlock = 64 << 10;

inline NamespaceSpec Spec() { return testutil::RawSpec("cluster-test", kBlock); }

inline std::vector<uint8_t> Payload(const ChainHash& h) {
  std::vector<uint8_t> out(kBlock);
  uint64_t x = 0x9e3779b97f4a7c15ull;
  for (int b = 0; b < 8; ++b) x ^= uint64_t{h.bytes[b]} << (8 * b);
  for (size_t i = 0; i < out.size(); ++i) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    out[i] = static_cast<uint8_t>(x);
  }
  return out;
}

// Writes of `hashes` with their Payload bytes, which *data holds for as long as the writes.
inline std::vector<BlockWrite> PayloadWrites(const std::vector<ChainHash>& hashes,
                                             std::vector<std::vector<uint8_t>>* data) {
  data->clear();
  for (const ChainHash& h : hashes) data->push_back(Payload(h));
  std::vector<BlockWrite> writes;
  for (size_t i = 0; i < hashes.size(); ++i) {
    writes.push_back({hashes[i], (*data)[i].data(), kBlock});
  }
  return writes;
}

// Waits (bounded) until a cluster client's member set lists `want` members.
inline bool WaitForMembers(StoreClient& c, uint32_t want) {
  for (absl::Time end = absl::Now() + absl::Seconds(15); absl::Now() < end;) {
    auto s = c.Stats();
    if (s.ok() && s->members == want) return true;
    absl::SleepFor(absl::Milliseconds(100));
  }
  return false;
}

// A client of cluster `name` on the etcd at `endpoint` (data plane kAuto), once its member
// set lists `members` members (0: at once, no node connected yet); null, the test failed,
// otherwise.
inline std::unique_ptr<StoreClient> ConnectToCluster(const std::string& endpoint,
                                                     const std::string& name, uint32_t members,
                                                     int replicas = 0, int quorum = 0) {
  ClientOptions o;
  o.etcd_endpoints = endpoint;
  o.cluster_name = name;
  o.replicas = replicas;
  o.write_quorum = quorum;
  o.default_deadline = absl::Seconds(20);
  auto c = StoreClient::Connect(o);
  EXPECT_TRUE(c.ok()) << c.status();
  if (!c.ok()) return nullptr;
  if (members > 0) {
    EXPECT_TRUE(WaitForMembers(**c, members)) << name;
  }
  return std::move(*c);
}

// The value of a node's unlabelled-but-for-node gauge `name` on /metrics; -1 if absent.
inline double Gauge(const LocalNode& node, const std::string& name) {
  auto page = testutil::HttpGet(node.http_address(), "/metrics");
  if (!page.ok()) return -1;
  for (absl::string_view line : absl::StrSplit(page->second, '\n')) {
    if (!absl::StartsWith(line, name + "{")) continue;
    std::vector<absl::string_view> parts = absl::StrSplit(line, ' ');
    double d = -1;
    return absl::SimpleAtod(parts.back(), &d) ? d : -1;
  }
  return -1;
}

// One etcd and three nodes per suite; the nodes keep `R` copies of every block, and their
// rebalancers pass every 500 ms, and 500 ms after a change of the member set. With
// kSettlingRebalancers they wait 5 minutes after a change instead (rebalance_settle): blocks
// stay where they were put once members change.
template <int R, bool kSettlingRebalancers = false>
class ClusterFixture : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    std::string tmpl =
        (std::filesystem::temp_directory_path() / "strata-cluster-test-XXXXXX").string();
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
    auto etcd = cluster::LocalEtcd::Start({});
    ASSERT_TRUE(etcd.ok()) << etcd.status();
    etcd_ = std::move(*etcd).release();
    for (int i = 0; i < 3; ++i) {
      std::unique_ptr<LocalNode> node = StartNode(i);
      ASSERT_NE(node, nullptr);
      nodes_[i] = node.release();
    }
  }
  static void TearDownTestSuite() {
    for (auto& [i, node] : nodes_) delete node;
    nodes_.clear();
    delete etcd_;
    etcd_ = nullptr;
    std::error_code ignored;
    std::filesystem::remove_all(dir_, ignored);
  }

  static std::unique_ptr<LocalNode> StartNode(int i, int replicas = R) {
    auto node = testutil::StartNode(
        {"--node-id", absl::StrCat("node-", i), "--cluster-mode", "etcd", "--etcd-endpoints",
         etcd_->endpoint(), "--cluster-name", "it", "--etcd-lease", "2000", "--warm-bytes",
         R == 1 ? "64MiB" : "192MiB", "--max-block-bytes", "1MiB", "--ucx-tls", "",
         "--cluster-replicas", absl::StrCat(replicas), "--rebalance-interval", "500",
         "--rebalance-settle", kSettlingRebalancers ? "300000" : "500",
         // 16 blocks a round: a batch of 64 copies in rounds (Rebalancer::Batch).
         "--rebalance-batch-bytes", "1MiB",
         // A restarted node finds its cool blocks again.
         "--cool-path", absl::StrCat(dir_, "/node-", i, "-cool"), "--cool-bytes", "64MiB"});
    EXPECT_TRUE(node.ok()) << node.status();
    return node.ok() ? std::move(*node) : nullptr;
  }

  static ClientOptions Options(int replicas = R, int quorum = 0) {
    ClientOptions o;
    o.etcd_endpoints = etcd_->endpoint();
    o.cluster_name = "it";
    o.replicas = replicas;
    o.write_quorum = quorum;
    o.default_deadline = absl::Seconds(10);
    return o;
  }

  // Options of a client that does not watch etcd: it re-reads the member set only when a
  // node refuses its epoch as stale.
  static ClientOptions NotWatching() {
    ClientOptions o = Options();
    o.watch_members = false;
    return o;
  }

  // `strata status --etcd` for the suite's cluster (or `cluster`): its exit status and what
  // it printed.
  static std::pair<int, std::string> StrataStatus(const std::string& cluster = "it") {
    const std::string cmd =
        absl::StrCat(testutil::ProjectBinary("strata"), " status --etcd ", etcd_->endpoint(),
                     " --cluster ", cluster, " --deadline 2 2>&1");
    FILE* out = popen(cmd.c_str(), "r");
    if (out == nullptr) return {-1, ""};
    std::string text;
    char buf[4096];
    while (size_t n = fread(buf, 1, sizeof buf, out)) text.append(buf, n);
    return {pclose(out), text};
  }

  static std::unique_ptr<StoreClient> Connect(const ClientOptions& o) {
    auto c = StoreClient::Connect(o);
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? std::move(*c) : nullptr;
  }
  // A client with Spec() registered as *ns (o: a cluster's or one node's); null on failure.
  static std::unique_ptr<StoreClient> ConnectWithNamespace(const ClientOptions& o,
                                                           client::Namespace* ns) {
    std::unique_ptr<StoreClient> c = Connect(o);
    if (c == nullptr) return nullptr;
    auto registered = c->RegisterNamespace(Spec());
    EXPECT_TRUE(registered.ok()) << registered.status();
    if (!registered.ok()) return nullptr;
    *ns = *registered;
    return c;
  }

  // Puts `hashes` (Payload bytes); the per-block outcomes.
  static absl::StatusOr<client::PutResult> PutEach(StoreClient& c, const client::Namespace& ns,
                                                   const std::vector<ChainHash>& hashes,
                                                   const client::PutOptions& options = {}) {
    std::vector<std::vector<uint8_t>> data;
    std::vector<BlockWrite> writes;
    for (const ChainHash& h : hashes) data.push_back(Payload(h));
    for (size_t i = 0; i < hashes.size(); ++i) {
      writes.push_back({hashes[i], data[i].data(), kBlock, static_cast<uint32_t>(i)});
    }
    return c.Put(ns, "", writes, {}, options);
  }

  // Puts `hashes` (Payload bytes); returns how many were acknowledged.
  static size_t PutAll(StoreClient& c, const client::Namespace& ns,
                       const std::vector<ChainHash>& hashes,
                       const client::PutOptions& options = {}) {
    auto r = PutEach(c, ns, hashes, options);
    EXPECT_TRUE(r.ok()) << r.status();
    if (!r.ok()) return 0;
    return r->stored + r->already_present;
  }

  // Gets `hashes`; returns how many came back OK with exactly their Payload bytes.
  static size_t GetAll(StoreClient& c, const client::Namespace& ns,
                       const std::vector<ChainHash>& hashes,
                       const client::GetOptions& options = {}) {
    std::vector<std::vector<uint8_t>> bufs(hashes.size(), std::vector<uint8_t>(kBlock));
    std::vector<BlockRead> reads;
    for (size_t i = 0; i < hashes.size(); ++i) reads.push_back({hashes[i], bufs[i].data(), kBlock});
    auto r = c.Get(ns, "", reads, {}, options);
    EXPECT_TRUE(r.ok()) << r.status();
    if (!r.ok()) return 0;
    size_t good = 0;
    for (size_t i = 0; i < hashes.size(); ++i) {
      if (r->blocks[i].ok() && r->sizes[i] == kBlock && bufs[i] == Payload(hashes[i])) ++good;
    }
    return good;
  }

  // Reservations a raw writer holds (BeginPut, ttl 20 s) for `hashes` on nodes `which`, as if
  // another put were still writing them there; AbortPuts ends them.
  struct HeldPuts {
    std::vector<std::pair<std::unique_ptr<v1::StoreService::Stub>, uint64_t>> held;
  };
  static void HoldPuts(const std::vector<int>& which, const client::Namespace& ns,
                       const std::vector<ChainHash>& hashes, HeldPuts* out) {
    for (int i : which) {
      auto stub = v1::StoreService::NewStub(
          grpc::CreateChannel(nodes_[i]->address(), grpc::InsecureChannelCredentials()));
      v1::BeginPutRequest req;
      req.set_namespace_id(ns.id);
      req.set_ttl_ms(20000);
      for (const ChainHash& h : hashes) {
        v1::PutBlock* b = req.add_blocks();
        b->set_chain_hash(h.ToBytes());
        b->set_size(kBlock);
      }
      v1::BeginPutResponse resp;
      grpc::ClientContext ctx;
      ASSERT_TRUE(stub->BeginPut(&ctx, req, &resp).ok()) << "node-" << i;
      ASSERT_NE(resp.reservation_id(), 0u) << "node-" << i;
      out->held.emplace_back(std::move(stub), resp.reservation_id());
    }
  }
  static void AbortPuts(HeldPuts* h) {
    for (auto& [stub, id] : h->held) {
      v1::AbortPutRequest req;
      req.set_reservation_id(id);
      v1::AbortPutResponse resp;
      grpc::ClientContext ctx;
      stub->AbortPut(&ctx, req, &resp).ok();
    }
    h->held.clear();
  }

  static client::NodeStats NodeStats(const LocalNode& node) {
    ClientOptions o;
    o.address = node.address();
    o.data_plane = ClientOptions::DataPlane::kInline;
    auto one = StoreClient::Connect(o);
    if (!one.ok()) return {};
    auto s = (*one)->Stats();
    return s.ok() ? *s : client::NodeStats{};
  }

  // Waits (bounded) until every node finished two rebalance passes after now: the first
  // copies and drops what the current member set asks for, the second confirms.
  static bool WaitRebalanced() {
    std::map<int, uint64_t> base;
    for (auto& [i, node] : nodes_) base[i] = NodeStats(*node).rebalance_passes;
    for (absl::Time end = absl::Now() + absl::Seconds(30); absl::Now() < end;) {
      bool done = true;
      for (auto& [i, node] : nodes_) {
        client::NodeStats s = NodeStats(*node);
        done = done && s.rebalance_pending == 0 && s.rebalance_passes >= base[i] + 2;
      }
      if (done) return true;
      absl::SleepFor(absl::Milliseconds(100));
    }
    return false;
  }

  static std::string dir_;  // the nodes' cool tiers, one directory per node id
  static cluster::LocalEtcd* etcd_;
  static std::map<int, LocalNode*> nodes_;
};

template <int R, bool kSettlingRebalancers>
std::string ClusterFixture<R, kSettlingRebalancers>::dir_;
template <int R, bool kSettlingRebalancers>
cluster::LocalEtcd* ClusterFixture<R, kSettlingRebalancers>::etcd_ = nullptr;
template <int R, bool kSettlingRebalancers>
std::map<int, LocalNode*> ClusterFixture<R, kSettlingRebalancers>::nodes_;

using ClusterTest = ClusterFixture<1>;
using ReplicatedClusterTest = ClusterFixture<2>;
using SettlingRebalancerClusterTest = ClusterFixture<1, /*kSettlingRebalancers=*/true>;

}  // namespace strata::cluster_test
