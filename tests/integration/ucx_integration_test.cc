// The UCX data plane against real strata-storenode processes, over UCX_TLS=tcp and over
// shared memory: bit-exact round trips through registered (zero-copy) and unregistered
// (bounce) buffers, the inline gRPC path beside it, concurrent clients, peers killed
// mid-transfer, and forged or corrupted transfer descriptors. Messages no call claims:
// ucx_unclaimed_test.cc.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "strata/client/local_node.h"
#include "strata/client/store_client.h"
#include "strata/common/checksum.h"
#include "strata/common/cpus.h"
#include "strata/testutil/cpu_pin.h"
#include "strata/testutil/node_process.h"
#include "strata/testutil/prompts.h"
#include "strata/testutil/status_matchers.h"
#include "strata/transport/context.h"
#include "strata/transport/peer_order.h"
#include "strata/transport/worker.h"
#include "strata/v1/store.grpc.pb.h"
#include "ucx_test_support.h"

namespace strata {
namespace {

using client::BlockRead;
using client::BlockWrite;
using client::CallOptions;
using client::ClientOptions;
using client::LocalNode;
using client::StoreClient;
using ::testing::AllOf;
using ::testing::AnyOf;
using ::testing::HasSubstr;
using ::testing::Not;
using testutil::IsOk;
using testutil::StatusIs;
using ucx_test::CloseRawChannel;
using ucx_test::kMaxBlock;
using ucx_test::LoadedNode;
using ucx_test::OpenRawChannel;
using ucx_test::RawChannel;
using ucx_test::RawStub;
using ucx_test::Spec;
using ucx_test::StartLoadedNode;

// Bytes the node counted per transport and direction on /metrics.
uint64_t TransferBytes(const LocalNode& node, const std::string& transport,
                       const std::string& direction) {
  auto page = testutil::HttpGet(node.http_address(), "/metrics");
  if (!page.ok()) return 0;
  const std::string want = absl::StrCat("strata_transfer_bytes_total{");
  for (absl::string_view line : absl::StrSplit(page->second, '\n')) {
    if (!absl::StartsWith(line, want)) continue;
    if (line.find(absl::StrCat("transport=\"", transport, "\"")) == absl::string_view::npos ||
        line.find(absl::StrCat("direction=\"", direction, "\"")) == absl::string_view::npos) {
      continue;
    }
    double v = 0;
    if (absl::SimpleAtod(line.substr(line.rfind(' ') + 1), &v)) return static_cast<uint64_t>(v);
  }
  return 0;
}

// Registers [ptr, ptr+len) with `client` and unregisters it when the scope ends, so a failed
// assertion never leaves a freed buffer registered (UCX would unmap freed memory later).
class ScopedRegistration {
 public:
  ScopedRegistration(StoreClient& client, void* ptr, size_t len) : client_(client), ptr_(ptr) {
    status_ = client_.RegisterMemory(ptr, len);
  }
  ~ScopedRegistration() {
    if (status_.ok() && ptr_ != nullptr) client_.UnregisterMemory(ptr_).IgnoreError();
  }
  ScopedRegistration(const ScopedRegistration&) = delete;
  ScopedRegistration& operator=(const ScopedRegistration&) = delete;

  const absl::Status& status() const { return status_; }
  // Unregisters now; the status of that call.
  absl::Status Release() {
    void* ptr = std::exchange(ptr_, nullptr);
    return client_.UnregisterMemory(ptr);
  }

 private:
  StoreClient& client_;
  void* ptr_;
  absl::Status status_;
};

// Sends `sig` to the node 30 ms from now and repeats `reads` until one Get fails (the signal
// landed mid-call) or 20 rounds passed; the last result.
absl::StatusOr<client::GetResult> GetUntilSignalLands(LoadedNode& l,
                                                      const std::vector<BlockRead>& reads,
                                                      int sig) {
  const pid_t node_pid = l.node->pid();
  std::thread signaller([node_pid, sig] {
    std::this_thread::sleep_for(std::chrono::milliseconds(30));
    kill(node_pid, sig);
  });
  absl::StatusOr<client::GetResult> got = absl::UnknownError("not run");
  for (int round = 0; round < 20; ++round) {
    got = l.client->Get(l.ns, "", reads);
    if (!got.ok()) break;
  }
  signaller.join();
  return got;
}

// One node per transport for the whole suite (its UCX setting is the parameter).
class UcxTest : public ::testing::TestWithParam<std::string> {
 protected:
  static void SetUpTestSuite() {}
  static void TearDownTestSuite() {
    for (auto& [tls, node] : nodes_) node.reset();
    nodes_.clear();
  }

  void SetUp() override {
    auto it = nodes_.find(GetParam());
    if (it == nodes_.end()) {
      auto p =
          testutil::StartNode({"--warm-bytes", "256MiB", "--max-block-bytes", "4MiB", "--ucx-tls",
                               GetParam(), "--ucx-lanes", "2", "--debug-fault-injection"});
      ASSERT_THAT(p, IsOk());
      it = nodes_.emplace(GetParam(), std::move(*p)).first;
    }
    node_ = it->second.get();
    client_ = Connect(ClientOptions::DataPlane::kUcx);
    ASSERT_NE(client_, nullptr);
    auto ns = client_->RegisterNamespace(Spec());
    ASSERT_THAT(ns, IsOk());
    ns_ = *ns;
  }

  std::unique_ptr<StoreClient> Connect(ClientOptions::DataPlane plane) {
    ClientOptions o;
    o.address = node_->address();
    o.data_plane = plane;
    o.default_deadline = absl::Seconds(20);
    auto c = StoreClient::Connect(o);
    EXPECT_THAT(c, IsOk());
    return c.ok() ? std::move(*c) : nullptr;
  }

  // Puts `n` blocks of `size` from `src` (n × size bytes), gets them into `dst`, and checks
  // every byte. Returns the per-block statuses' first error.
  void RoundTrip(StoreClient& c, uint32_t prompt, size_t n, size_t size, uint8_t* src,
                 uint8_t* dst) {
    std::vector<ChainHash> hashes = testutil::PromptChain(ns_, prompt, n);
    std::vector<BlockWrite> writes;
    for (size_t i = 0; i < n; ++i) {
      std::vector<uint8_t> p = testutil::RandomBytes(prompt * 1000 + i, size);
      std::memcpy(src + i * size, p.data(), size);
      writes.push_back({hashes[i], src + i * size, size, static_cast<uint32_t>(i)});
    }
    auto put = c.Put(ns_, "", writes);
    ASSERT_THAT(put, IsOk());
    for (const absl::Status& s : put->blocks) ASSERT_THAT(s, IsOk());
    std::memset(dst, 0xee, n * size);
    std::vector<BlockRead> reads;
    for (size_t i = 0; i < n; ++i) reads.push_back({hashes[i], dst + i * size, size});
    auto got = c.Get(ns_, "", reads);
    ASSERT_THAT(got, IsOk());
    for (size_t i = 0; i < n; ++i) {
      ASSERT_THAT(got->blocks[i], IsOk()) << "block " << i;
      EXPECT_EQ(got->sizes[i], size);
      EXPECT_EQ(std::memcmp(dst + i * size, src + i * size, size), 0) << "block " << i;
    }
  }

  static std::map<std::string, std::unique_ptr<LocalNode>> nodes_;
  LocalNode* node_ = nullptr;
  std::unique_ptr<StoreClient> client_;
  client::Namespace ns_;
};

std::map<std::string, std::unique_ptr<LocalNode>> UcxTest::nodes_;

TEST_P(UcxTest, ZeroCopyRoundTripIsBitExactAndMovesOverUcx) {
  EXPECT_THAT(client_->DataPlaneDescription(), HasSubstr("ucx"));
  const size_t n = 6, size = 2 << 20;
  std::vector<uint8_t> src(n * size), dst(n * size);
  ScopedRegistration src_reg(*client_, src.data(), src.size());
  ScopedRegistration dst_reg(*client_, dst.data(), dst.size());
  ASSERT_THAT(src_reg.status(), IsOk());
  ASSERT_THAT(dst_reg.status(), IsOk());
  const uint64_t in0 = TransferBytes(*node_, "ucx", "in");
  const uint64_t out0 = TransferBytes(*node_, "ucx", "out");
  const uint64_t inline0 = TransferBytes(*node_, "grpc_inline", "in");
  ASSERT_NO_FATAL_FAILURE(RoundTrip(*client_, 1, n, size, src.data(), dst.data()));
  EXPECT_EQ(TransferBytes(*node_, "ucx", "in") - in0, n * size);
  EXPECT_EQ(TransferBytes(*node_, "ucx", "out") - out0, n * size);
  EXPECT_EQ(TransferBytes(*node_, "grpc_inline", "in"), inline0) << "payloads went inline";
  EXPECT_THAT(src_reg.Release(), IsOk());
  EXPECT_THAT(client_->UnregisterMemory(src.data()), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(dst_reg.Release(), IsOk());
}

TEST_P(UcxTest, UnregisteredBuffersGoThroughTheBouncePool) {
  const size_t n = 24, size = 256 << 10;
  std::vector<uint8_t> src(n * size), dst(n * size);
  const uint64_t in0 = TransferBytes(*node_, "ucx", "in");
  ASSERT_NO_FATAL_FAILURE(RoundTrip(*client_, 2, n, size, src.data(), dst.data()));
  EXPECT_EQ(TransferBytes(*node_, "ucx", "in") - in0, n * size);
}

// A get verifies each block on the node just before it leaves, while the blocks before it move:
// one gone bad in the node's memory is withdrawn (no byte of it reaches the caller), reported
// as DATA_LOSS and dropped; the blocks around it arrive bit-exact.
TEST_P(UcxTest, ABlockGoneBadOnTheNodeIsWithdrawnWhileTheOthersMove) {
  const size_t n = 4, size = 256 << 10;
  std::vector<uint8_t> src(n * size), dst(n * size);
  ASSERT_NO_FATAL_FAILURE(RoundTrip(*client_, 30, n, size, src.data(), dst.data()));
  const std::vector<ChainHash> hashes = testutil::PromptChain(ns_, 30, n);
  v1::InjectFaultRequest fault;
  fault.set_namespace_id(ns_.id);
  fault.set_chain_hash(hashes[1].ToBytes());
  fault.set_flip_byte_offset(size / 2);
  v1::InjectFaultResponse fault_resp;
  grpc::ClientContext ctx;
  ASSERT_TRUE(RawStub(node_->address())->InjectFault(&ctx, fault, &fault_resp).ok());
  std::memset(dst.data(), 0xee, dst.size());
  std::vector<BlockRead> reads;
  for (size_t i = 0; i < n; ++i) reads.push_back({hashes[i], dst.data() + i * size, size});
  auto got = client_->Get(ns_, "", reads);
  ASSERT_THAT(got, IsOk());
  for (size_t i : {0, 2, 3}) {
    EXPECT_THAT(got->blocks[i], IsOk()) << i;
    EXPECT_EQ(std::memcmp(dst.data() + i * size, src.data() + i * size, size), 0) << i;
  }
  EXPECT_THAT(got->blocks[1], StatusIs(absl::StatusCode::kDataLoss));
  EXPECT_EQ(dst[size], 0xee);
  EXPECT_EQ(std::memcmp(dst.data() + size, dst.data() + size + 1, size - 1), 0) << "bytes landed";
  EXPECT_EQ(client_->Lookup(ns_, "", hashes)->matched_blocks, 1u);  // dropped on the node
}

TEST_P(UcxTest, InlinePathStillWorksBesideIt) {
  std::unique_ptr<StoreClient> inline_client = Connect(ClientOptions::DataPlane::kInline);
  ASSERT_NE(inline_client, nullptr);
  EXPECT_EQ(inline_client->DataPlaneDescription(), "inline");
  const size_t n = 4, size = 1 << 20;
  std::vector<uint8_t> src(n * size), dst(n * size);
  const uint64_t ucx0 = TransferBytes(*node_, "ucx", "in");
  const uint64_t inline0 = TransferBytes(*node_, "grpc_inline", "in");
  ASSERT_NO_FATAL_FAILURE(RoundTrip(*inline_client, 3, n, size, src.data(), dst.data()));
  EXPECT_EQ(TransferBytes(*node_, "grpc_inline", "in") - inline0, n * size);
  EXPECT_EQ(TransferBytes(*node_, "ucx", "in"), ucx0);
  // Blocks written over one path read back over the other.
  std::vector<ChainHash> hashes = testutil::PromptChain(ns_, 3, n);
  std::vector<BlockRead> reads;
  for (size_t i = 0; i < n; ++i) reads.push_back({hashes[i], dst.data() + i * size, size});
  std::memset(dst.data(), 0, dst.size());
  auto got = client_->Get(ns_, "", reads);
  ASSERT_THAT(got, IsOk());
  for (size_t i = 0; i < n; ++i) EXPECT_THAT(got->blocks[i], IsOk());
  EXPECT_EQ(dst, src);
}

TEST_P(UcxTest, EightConcurrentClientsEachReadTheirOwnBytes) {
  std::vector<std::thread> threads;
  std::atomic<int> done{0};
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      // The buffers outlive the client, which unregisters what is still registered.
      const size_t n = 8, size = 512 << 10;
      std::vector<uint8_t> src(n * size), dst(n * size);
      std::unique_ptr<StoreClient> c = Connect(ClientOptions::DataPlane::kUcx);
      if (c == nullptr) return;
      if (t % 2 == 0) {  // half zero-copy, half through the bounce pool
        EXPECT_THAT(c->RegisterMemory(src.data(), src.size()), IsOk());
        EXPECT_THAT(c->RegisterMemory(dst.data(), dst.size()), IsOk());
      }
      RoundTrip(*c, 100 + t, n, size, src.data(), dst.data());
      if (!::testing::Test::HasFailure()) ++done;
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(done.load(), 8);
}

// A call whose deadline has already passed fails DEADLINE_EXCEEDED without being sent. It used
// to go out, fail the same way, and fence the channel (a call that gives up must cut the node
// off its buffers), failing every call in flight beside it: here, large gets.
TEST_P(UcxTest, ACallPastItsDeadlineLeavesTheOtherCallsOnItsChannelAlone) {
  const size_t n = 16, size = 2 << 20;
  std::vector<uint8_t> src(n * size), dst(n * size);
  ASSERT_NO_FATAL_FAILURE(RoundTrip(*client_, 31, n, size, src.data(), dst.data()));
  const std::vector<ChainHash> hashes = testutil::PromptChain(ns_, 31, n);
  std::vector<BlockRead> reads;
  for (size_t i = 0; i < n; ++i) reads.push_back({hashes[i], dst.data() + i * size, size});
  std::vector<uint8_t> one(size);
  const BlockRead late{hashes[0], one.data(), size};
  std::atomic<bool> reading{true};
  int late_calls = 0, late_deadline_exceeded = 0;
  std::thread expired([&] {
    while (reading.load()) {
      auto r = client_->Get(ns_, "", {&late, 1}, {.deadline = absl::Nanoseconds(1)});
      const absl::Status s = r.ok() ? r->blocks[0] : r.status();
      late_deadline_exceeded += s.code() == absl::StatusCode::kDeadlineExceeded;
      ++late_calls;
    }
  });
  for (int round = 0; round < 3; ++round) {
    std::memset(dst.data(), 0xee, dst.size());
    auto got = client_->Get(ns_, "", reads);
    EXPECT_THAT(got, IsOk()) << "round " << round;
    if (!got.ok()) break;
    for (size_t i = 0; i < n; ++i) {
      EXPECT_THAT(got->blocks[i], IsOk()) << "round " << round << " block " << i;
      EXPECT_EQ(std::memcmp(dst.data() + i * size, src.data() + i * size, size), 0) << i;
    }
  }
  reading = false;
  expired.join();
  EXPECT_GT(late_calls, 0);
  EXPECT_EQ(late_deadline_exceeded, late_calls);
}

TEST_P(UcxTest, ForgedDescriptorsAreRejectedWithExactCodes) {
  auto stub = RawStub(node_->address());
  // A channel that does not exist.
  {
    v1::PutDataRequest req;
    req.set_channel_id(0xdeadbeef);
    req.set_namespace_id(ns_.id);
    v1::PutBlock* b = req.add_blocks();
    b->set_chain_hash(testutil::PromptChain(ns_, 7, 1)[0].ToBytes());
    b->set_size(4096);
    req.add_checksums(1);
    v1::RemoteBuffer* src = req.add_sources();
    src->set_addr(0x1000);
    src->set_length(4096);
    req.add_rkeys("whatever");
    v1::PutDataResponse resp;
    grpc::ClientContext ctx;
    grpc::Status s = stub->PutData(&ctx, req, &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND) << s.error_message();
  }
  // A real channel, from this test's own UCX worker(s), with forged rkeys and buffers.
  RawChannel raw;
  ASSERT_NO_FATAL_FAILURE(OpenRawChannel(*stub, &raw));
  const v1::ConnectDataResponse& channel = raw.channel;
  const v1::StatsResponse& stats = raw.stats;
  std::vector<uint8_t> block = testutil::RandomBytes(77, 64 << 10);
  auto region = raw.context->Register(block.data(), block.size());
  ASSERT_THAT(region, IsOk());
  auto put = [&](const std::string& rkey, uint32_t rkey_index, uint64_t checksum, uint64_t length,
                 uint32_t lane, uint32_t prompt) {
    v1::PutDataRequest req;
    req.set_channel_id(channel.channel_id());
    req.set_namespace_id(ns_.id);
    req.set_lane(lane);
    v1::PutBlock* b = req.add_blocks();
    b->set_chain_hash(testutil::PromptChain(ns_, prompt, 1)[0].ToBytes());
    b->set_size(block.size());
    req.add_checksums(checksum);
    v1::RemoteBuffer* src = req.add_sources();
    src->set_addr(reinterpret_cast<uintptr_t>(block.data()));
    src->set_length(length);
    src->set_rkey_index(rkey_index);
    req.add_rkeys(rkey);
    v1::PutDataResponse resp;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    transport::ReleaseToPeers();  // the node reads `block` through our worker (peer_order.h)
    grpc::Status s = stub->PutData(&ctx, req, &resp);
    transport::AcquireFromPeers();
    return std::pair{s, resp};
  };
  const uint64_t sum = BlockChecksum(block.data(), block.size());
  const std::string& rkey = (*region)->PackedRkey();
  // Garbage rkey bytes, an rkey index past the list, a length that is not the block's size
  // and a lane the node does not have: INVALID_ARGUMENT, nothing stored.
  EXPECT_EQ(put("not an rkey", 0, sum, block.size(), 0, 8).first.error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(put(rkey, 3, sum, block.size(), 0, 8).first.error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(put(rkey, 0, sum, block.size() - 1, 0, 8).first.error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(put(rkey, 0, sum, block.size(), 99, 8).first.error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(client_->Lookup(ns_, "", testutil::PromptChain(ns_, 8, 1))->matched_blocks, 0u);
  // What arrives fails the checksum the writer claimed (corrupted in flight): DATA_LOSS, and
  // the block is not stored.
  auto [bad_status, bad] = put(rkey, 0, sum ^ 1, block.size(), 0, 9);
  ASSERT_TRUE(bad_status.ok()) << bad_status.error_message();
  EXPECT_EQ(bad.results(0).code(), static_cast<int>(absl::StatusCode::kDataLoss));
  EXPECT_EQ(client_->Lookup(ns_, "", testutil::PromptChain(ns_, 9, 1))->matched_blocks, 0u);
  // The same request with the true checksum stores the block: the channel itself works.
  auto [good_status, good] = put(rkey, 0, sum, block.size(), stats.ucx_lanes() - 1, 10);
  ASSERT_TRUE(good_status.ok()) << good_status.error_message();
  EXPECT_EQ(good.results(0).code(), 0);
  std::vector<uint8_t> out(block.size());
  BlockRead read{testutil::PromptChain(ns_, 10, 1)[0], out.data(), out.size()};
  auto got = client_->Get(ns_, "", {&read, 1});
  ASSERT_THAT(got, IsOk());
  EXPECT_THAT(got->blocks[0], IsOk());
  EXPECT_EQ(out, block);
  // A destination smaller than the block: OUT_OF_RANGE for that block.
  {
    v1::GetDataRequest req;
    req.set_channel_id(channel.channel_id());
    req.set_namespace_id(ns_.id);
    req.add_chain_hashes(testutil::PromptChain(ns_, 10, 1)[0].ToBytes());
    v1::RemoteBuffer* dst = req.add_destinations();
    dst->set_addr(reinterpret_cast<uintptr_t>(block.data()));
    dst->set_length(block.size() / 2);
    req.add_rkeys(rkey);
    v1::GetDataResponse resp;
    grpc::ClientContext ctx;
    transport::ReleaseToPeers();
    ASSERT_TRUE(stub->GetData(&ctx, req, &resp).ok());
    transport::AcquireFromPeers();
    EXPECT_EQ(resp.blocks(0).status().code(), static_cast<int>(absl::StatusCode::kOutOfRange));
  }
  EXPECT_EQ(CloseRawChannel(*stub, raw), grpc::StatusCode::OK);
  EXPECT_EQ(CloseRawChannel(*stub, raw), grpc::StatusCode::NOT_FOUND);
}

// A client process killed while its puts stream: the node keeps serving, releases what the
// dead client had reserved, and never shows a half-written block.
TEST_P(UcxTest, ClientKilledMidTransferLeavesTheNodeServing) {
  const std::string bench = testutil::ProjectBinary("strata-bench");
  if (access(bench.c_str(), X_OK) != 0)
    GTEST_SKIP() << "strata-bench not built (STRATA_BUILD_BENCH)";
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    execl(bench.c_str(), bench.c_str(), "--node", node_->address().c_str(), "--blocks", "512",
          "--block-size", "1MiB", "--streams", "4", "--ops", "put", "--transport", "ucx",
          "--max-seconds", "30", static_cast<char*>(nullptr));
    _exit(127);
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(700));
  kill(pid, SIGKILL);
  int wstatus = 0;
  waitpid(pid, &wstatus, 0);
  // Over shared memory the kill may wedge a lane of the node (transfer-protocol.md, "A
  // wedged lane", rare: once in 580 kills): the node replaces it within about 10 s, and a call
  // caught on it fails at its deadline. The node must take a put within three tries.
  std::vector<uint8_t> block = testutil::RandomBytes(21, 1 << 20);
  const std::vector<ChainHash> probe = testutil::PromptChain(ns_, 21, 4);
  std::vector<BlockWrite> writes;
  for (const ChainHash& h : probe) writes.push_back({h, block.data(), block.size()});
  bool taken = false;
  for (int attempt = 0; attempt < 3 && !taken; ++attempt) {
    auto r = client_->Put(ns_, "", writes, {.deadline = absl::Seconds(12)});
    taken = r.ok() && std::all_of(r->blocks.begin(), r->blocks.end(), [](const absl::Status& s) {
              return s.ok() || s.code() == absl::StatusCode::kAlreadyExists;
            });
  }
  ASSERT_TRUE(taken);
  // Reservations of the dead client expire (the node's reservation TTL is bounded by the
  // transfer deadline); the node answers throughout and a new round trip works.
  std::vector<uint8_t> src(4 << 20), dst(4 << 20);
  ASSERT_NO_FATAL_FAILURE(RoundTrip(*client_, 20, 4, 1 << 20, src.data(), dst.data()));
  auto stats = client_->Stats();
  ASSERT_THAT(stats, IsOk());
}

// The node killed while a get streams: the client gets UNAVAILABLE or DEADLINE_EXCEEDED well
// within its deadline, never a hang and never wrong bytes reported as OK.
TEST_P(UcxTest, NodeKilledMidTransferFailsTheCallInTime) {
  ClientOptions o;
  o.default_deadline = absl::Seconds(8);
  LoadedNode l;
  const size_t n = 96, size = 4 << 20;
  ASSERT_NO_FATAL_FAILURE(StartLoadedNode(GetParam(), "512MiB", o, 30, n, size, &l));
  std::vector<uint8_t> dst(n * size);
  std::vector<BlockRead> reads;
  for (size_t i = 0; i < n; ++i) reads.push_back({l.hashes[i], dst.data() + i * size, size});
  absl::StatusOr<client::GetResult> got = GetUntilSignalLands(l, reads, SIGKILL);
  ASSERT_FALSE(got.ok()) << "the node survived SIGKILL?";
  EXPECT_THAT(got.status().code(),
              AnyOf(absl::StatusCode::kUnavailable, absl::StatusCode::kDeadlineExceeded));
}

// A client that gives up on a Get (deadline) hands the destination back to its caller, who
// reuses it: bytes the node had already sent must not land there afterwards. The node is
// frozen mid-transfer until the client's deadline passes, then thawed. Over TCP its transfer
// drains what it had posted, and the client must have cut it off (ClientDataPlane::Fence).
// Over shared memory the node writes our pages itself (cma) and no endpoint of ours is in the
// path: the node cuts its transfer off before progressing further and keeps at most
// kPacedCopyBytes queued in UCX (the node has one lane); unpaced, 40-150 MB landed.
TEST_P(UcxTest, AGetGivenUpOnNeverWritesIntoTheBufferAfterwards) {
#if defined(__SANITIZE_THREAD__)
  if (GetParam() == "shm") {
    // The up to kPacedCopyBytes this variant allows to land late are, to TSan, the data race
    // they are (the client's worker applying the node's emulated put after our memset).
    GTEST_SKIP() << "shm allows one late chunk by design; TSan reports it as a race";
  }
#endif
  ClientOptions o;
  o.default_deadline = absl::Seconds(3);
  // The node's RMA into our memory (two-sided receives are cancelled by the client's own
  // worker anyway), over tcp and over shm (where 4 MiB gets would otherwise go two-sided).
  o.ucx_two_sided_on_tcp = false;
  o.ucx_two_sided_on_shm = false;
  LoadedNode l;
  const size_t n = 48, size = 4 << 20;
  ASSERT_NO_FATAL_FAILURE(StartLoadedNode(GetParam(), "256MiB", o, 40, n, size, &l));
  std::vector<uint8_t> dst(n * size);
  ScopedRegistration reg(*l.client, dst.data(), dst.size());  // the node writes into dst
  ASSERT_THAT(reg.status(), IsOk());
  std::vector<BlockRead> reads;
  for (size_t i = 0; i < n; ++i) reads.push_back({l.hashes[i], dst.data() + i * size, size});
  absl::StatusOr<client::GetResult> got = GetUntilSignalLands(l, reads, SIGSTOP);
  ASSERT_FALSE(got.ok()) << "the Get finished with the node frozen?";
  EXPECT_THAT(got.status().code(), absl::StatusCode::kDeadlineExceeded);
  // The caller reuses the buffer; the node thaws and drains what it had posted.
  std::memset(dst.data(), 0x5a, dst.size());
  kill(l.node->pid(), SIGCONT);
  std::this_thread::sleep_for(std::chrono::seconds(3));  // > the node's 1 s drain grace
  size_t changed = 0;
  for (uint8_t b : dst) changed += b != 0x5a;
  const size_t bound = GetParam() == "shm" ? transport::kPacedCopyBytes : 0;
  EXPECT_LE(changed, bound) << "bytes landed in a buffer the client had given back, over "
                            << l.client->DataPlaneDescription();
  // The client reconnects and reads exactly (192 MiB: more than the 3 s the frozen get had
  // on a slow build).
  auto again = l.client->Get(l.ns, "", reads, {.deadline = absl::Seconds(60)});
  ASSERT_THAT(again, IsOk());
  for (size_t i = 0; i < n; ++i) {
    ASSERT_THAT(again->blocks[i], IsOk()) << i;
    ASSERT_EQ(std::memcmp(dst.data() + i * size, l.block.data(), size), 0) << i;
  }
}

INSTANTIATE_TEST_SUITE_P(Transports, UcxTest, ::testing::Values("tcp", "shm"),
                         [](const auto& info) { return info.param; });

TEST(UcxConfigTest, NodeWithoutDataPlaneServesInlineAndRefusesUcxClients) {
  auto p = testutil::StartNode({"--warm-bytes", "64MiB", "--ucx-tls", ""});
  ASSERT_THAT(p, IsOk());
  ClientOptions o;
  o.address = (*p)->address();
  o.data_plane = ClientOptions::DataPlane::kUcx;
  EXPECT_THAT(StoreClient::Connect(o), StatusIs(absl::StatusCode::kFailedPrecondition));
  o.data_plane = ClientOptions::DataPlane::kAuto;
  auto c = StoreClient::Connect(o);
  ASSERT_THAT(c, IsOk());
  EXPECT_EQ((*c)->DataPlaneDescription(), "inline");
}

// A client of `node` that must use the UCX data plane.
absl::StatusOr<std::unique_ptr<StoreClient>> ConnectUcx(const LocalNode& node) {
  ClientOptions o;
  o.address = node.address();
  o.data_plane = ClientOptions::DataPlane::kUcx;
  return StoreClient::Connect(o);
}

// ucx_lanes 0 (the default) lets the node pick one lane per 4 CPUs it may use, 1 to 4
// (storenode's AutoUcxLanes; node_config_test checks the mapping). The node inherits this
// thread's affinity mask, so pinned to one CPU it runs one lane; and its data plane works.
TEST(UcxConfigTest, LanesZeroFollowsTheCpusTheNodeMayUse) {
  const uint32_t cpus = UsableCpus();
  for (const bool pinned : {false, true}) {
    SCOPED_TRACE(pinned ? "pinned to one CPU" : "all CPUs");
    std::optional<testutil::OneCpuScope> pin;
    if (pinned) {
      pin.emplace();
      ASSERT_TRUE(pin->ok());
    }
    auto node = testutil::StartNode({"--warm-bytes", "64MiB", "--ucx-tls", "tcp", "--ucx-lanes",
                                     "0", "--max-block-bytes", "4MiB"});
    pin.reset();
    ASSERT_THAT(node, IsOk());
    auto c = ConnectUcx(**node);
    ASSERT_THAT(c, IsOk());
    auto stats = (*c)->Stats();
    ASSERT_THAT(stats, IsOk());
    EXPECT_EQ(stats->ucx_lanes, pinned ? 1u : std::clamp<uint32_t>(cpus / 4, 1, 4));
    auto ns = (*c)->RegisterNamespace(Spec());
    ASSERT_THAT(ns, IsOk());
    const std::vector<uint8_t> block = testutil::RandomBytes(9, 1 << 20);
    std::vector<ChainHash> hashes = testutil::PromptChain(*ns, 9, 1);
    const BlockWrite write{hashes[0], block.data(), block.size()};
    ASSERT_THAT((*c)->Put(*ns, "", {&write, 1}), IsOk());
    std::vector<uint8_t> dst(block.size());
    const BlockRead read{hashes[0], dst.data(), dst.size()};
    auto got = (*c)->Get(*ns, "", {&read, 1});
    ASSERT_THAT(got, IsOk());
    ASSERT_THAT(got->blocks[0], IsOk());
    EXPECT_EQ(dst, block);
  }
}

// A batch is spread over the lanes in parts of at least 1 MiB where it allows: each part is a
// PutData/GetData call of its own, and a small batch cut into several calls is slower than
// one (docs/design/transfer-protocol.md, "Lanes by cores").
TEST(UcxConfigTest, SmallBatchesTakeOneCallLargeOnesSpreadOverTheLanes) {
  auto node = testutil::StartNode({"--warm-bytes", "64MiB", "--ucx-tls", "tcp", "--ucx-lanes", "4",
                                   "--max-block-bytes", "4MiB"});
  ASSERT_THAT(node, IsOk());
  auto c = ConnectUcx(**node);
  ASSERT_THAT(c, IsOk());
  auto ns = (*c)->RegisterNamespace(Spec());
  ASSERT_THAT(ns, IsOk());
  constexpr size_t kBlock = 256 << 10;
  const std::vector<uint8_t> src = testutil::RandomBytes(11, 16 * kBlock);
  std::vector<ChainHash> hashes = testutil::PromptChain(*ns, 11, 16);
  std::vector<uint8_t> dst(16 * kBlock);
  // (blocks, calls the node serves): 5 x 256 KiB stay one call; 16 make four of 1 MiB.
  size_t begin = 0;
  for (auto [blocks, calls] : {std::pair<size_t, uint64_t>{5, 1}, {11, 2}, {16, 4}}) {
    SCOPED_TRACE(absl::StrCat(blocks, " blocks"));
    std::vector<BlockWrite> writes;
    std::vector<BlockRead> reads;
    for (size_t i = 0; i < blocks; ++i) {
      const size_t k = (begin + i) % 16;
      writes.push_back({hashes[k], src.data() + k * kBlock, kBlock});
      reads.push_back({hashes[k], dst.data() + k * kBlock, kBlock});
    }
    begin += blocks;
    const uint64_t puts = testutil::OpCount(**node, "put_data");
    ASSERT_THAT((*c)->Put(*ns, "", writes), IsOk());
    EXPECT_EQ(testutil::OpCount(**node, "put_data") - puts, calls);
    const uint64_t gets = testutil::OpCount(**node, "get_data");
    auto got = (*c)->Get(*ns, "", reads);
    ASSERT_THAT(got, IsOk());
    EXPECT_EQ(got->fetched, blocks);
    EXPECT_EQ(testutil::OpCount(**node, "get_data") - gets, calls);
  }
  EXPECT_EQ(dst, src);
}

// Over shared memory, UCX 1.13 emulates RMA with messages copied twice through a shared FIFO,
// so puts, and gets of blocks from 512 KiB, go as tagged messages (one cma copy). Seen from
// the node as calls: with a two-buffer bounce pool, an RMA part takes at most two unregistered
// blocks, while a two-sided part needs no bounce buffer at all.
TEST(UcxConfigTest, SharedMemoryPutsAndLargeGetsGoTwoSided) {
  auto node = testutil::StartNode({"--warm-bytes", "64MiB", "--ucx-tls", "shm", "--ucx-lanes", "1",
                                   "--max-block-bytes", "1MiB"});
  ASSERT_THAT(node, IsOk());
  // (block size, blocks, put_data calls, get_data calls).
  struct Case {
    size_t size, blocks;
    uint64_t puts, gets;
  };
  struct Mode {
    const char* name;
    bool two_sided;
    uint64_t get_bytes;
    const char* description;  // in DataPlaneDescription(); null: no "two-sided" at all
    std::vector<Case> cases;
  };
  const std::vector<Mode> modes = {
      {"default",
       true,
       512 << 10,
       "(two-sided puts, and gets of blocks from 512 KiB)",
       {{256 << 10, 8, 1, 4}, {1 << 20, 4, 1, 1}}},
      {"every get two-sided", true, 0, "(two-sided)", {{256 << 10, 8, 1, 1}, {1 << 20, 4, 1, 1}}},
      {"RMA only", false, 512 << 10, nullptr, {{256 << 10, 8, 4, 4}, {1 << 20, 4, 2, 2}}},
  };
  uint32_t prompt = 30;
  for (const Mode& mode : modes) {
    SCOPED_TRACE(mode.name);
    ClientOptions o;
    o.address = (*node)->address();
    o.data_plane = ClientOptions::DataPlane::kUcx;
    o.bounce_bytes = 2 << 20;  // two buffers of the node's max block
    o.ucx_two_sided_on_shm = mode.two_sided;
    o.ucx_shm_two_sided_get_bytes = mode.get_bytes;
    auto c = StoreClient::Connect(o);
    ASSERT_THAT(c, IsOk());
    if (mode.description != nullptr) {
      EXPECT_THAT((*c)->DataPlaneDescription(), HasSubstr(mode.description));
    } else {
      EXPECT_THAT((*c)->DataPlaneDescription(), Not(HasSubstr("two-sided")));
    }
    auto ns = (*c)->RegisterNamespace(testutil::RawSpec("shm-two-sided", 1 << 20));
    ASSERT_THAT(ns, IsOk());
    for (const Case& k : mode.cases) {
      SCOPED_TRACE(absl::StrCat(k.blocks, " x ", k.size >> 10, " KiB"));
      const std::vector<uint8_t> src = testutil::RandomBytes(prompt, k.blocks * k.size);
      std::vector<uint8_t> dst(src.size(), 0xee);
      std::vector<ChainHash> hashes = testutil::PromptChain(*ns, prompt++, k.blocks);
      std::vector<BlockWrite> writes;
      std::vector<BlockRead> reads;
      for (size_t i = 0; i < k.blocks; ++i) {
        writes.push_back({hashes[i], src.data() + i * k.size, k.size});
        reads.push_back({hashes[i], dst.data() + i * k.size, k.size});
      }
      const uint64_t puts = testutil::OpCount(**node, "put_data");
      auto put = (*c)->Put(*ns, "", writes);
      ASSERT_THAT(put, IsOk());
      EXPECT_EQ(put->stored, k.blocks);
      EXPECT_EQ(testutil::OpCount(**node, "put_data") - puts, k.puts);
      const uint64_t gets = testutil::OpCount(**node, "get_data");
      auto got = (*c)->Get(*ns, "", reads);
      ASSERT_THAT(got, IsOk());
      EXPECT_EQ(got->fetched, k.blocks);
      EXPECT_EQ(testutil::OpCount(**node, "get_data") - gets, k.gets);
      EXPECT_EQ(dst, src);
    }
  }
}

// UCX 1.13 aborts a process that receives a tcp segment larger than its own rx size. Peers whose
// sizes do not fit are refused at ConnectData, in both directions, and the node keeps serving.
TEST(UcxConfigTest, MismatchedTcpSegmentSizesAreRefusedAtConnectNotACrash) {
  auto with_env = [](bool big, auto body) {
    if (big) {
      setenv("UCX_TCP_TX_SEG_SIZE", "1M", 1);
      setenv("UCX_TCP_RX_SEG_SIZE", "2M", 1);
    }
    body();
    unsetenv("UCX_TCP_TX_SEG_SIZE");
    unsetenv("UCX_TCP_RX_SEG_SIZE");
  };
  for (const bool big_node : {false, true}) {
    SCOPED_TRACE(big_node ? "node sends 1 MiB segments" : "client sends 1 MiB segments");
    absl::StatusOr<std::unique_ptr<client::LocalNode>> node = absl::UnknownError("not started");
    with_env(big_node, [&] {
      node = testutil::StartNode({"--warm-bytes", "64MiB", "--ucx-tls", "tcp"});
    });
    ASSERT_THAT(node, IsOk());
    ClientOptions o;
    o.address = (*node)->address();
    o.data_plane = ClientOptions::DataPlane::kUcx;
    with_env(!big_node, [&] {
      // Both sides check; the node answers first (its own words name it "this side").
      EXPECT_THAT(StoreClient::Connect(o),
                  StatusIs(absl::StatusCode::kFailedPrecondition,
                           AllOf(HasSubstr("UCX_TCP_RX_SEG_SIZE"),
                                 HasSubstr(big_node ? "this side sends" : "the peer sends"),
                                 HasSubstr("this side: the node"))));
    });
    // Same sizes on both sides: the data plane works, and the node is alive.
    with_env(big_node, [&] {
      auto c = StoreClient::Connect(o);
      ASSERT_THAT(c, IsOk());
      EXPECT_THAT((*c)->DataPlaneDescription(), HasSubstr("tcp"));
      auto ns = (*c)->RegisterNamespace(Spec());
      ASSERT_THAT(ns, IsOk());
      const std::vector<uint8_t> block = testutil::RandomBytes(7, 1 << 20);
      std::vector<ChainHash> hashes = testutil::PromptChain(*ns, 7, 4);
      std::vector<BlockWrite> writes;
      for (const ChainHash& h : hashes) writes.push_back({h, block.data(), block.size()});
      ASSERT_THAT((*c)->Put(*ns, "", writes), IsOk());
      std::vector<uint8_t> dst(4 << 20);
      std::vector<BlockRead> reads;
      for (size_t i = 0; i < 4; ++i) reads.push_back({hashes[i], dst.data() + (i << 20), 1 << 20});
      auto got = (*c)->Get(*ns, "", reads);
      ASSERT_THAT(got, IsOk());
      for (size_t i = 0; i < 4; ++i) {
        ASSERT_THAT(got->blocks[i], IsOk());
        EXPECT_EQ(std::memcmp(dst.data() + (i << 20), block.data(), block.size()), 0) << i;
      }
    });
  }
}

}  // namespace
}  // namespace strata
