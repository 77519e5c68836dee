// kAuto clients (ClientOptions::DataPlane::kAuto): a data channel the node refuses when the
// client connects does not leave that client inline for good.
#include <atomic>
#include <thread>

#include "ucx_test_support.h"

namespace strata::ucx_test {
namespace {

using client::BlockRead;
using client::BlockWrite;
using client::ClientOptions;
using client::StoreClient;
using testutil::IsOk;

// ConnectData calls the node has answered (its op histogram's count).
double ConnectDataCalls(const client::LocalNode& node) {
  auto page = testutil::HttpGet(node.http_address(), "/metrics");
  if (!page.ok()) return -1;
  for (absl::string_view line : absl::StrSplit(page->second, '\n')) {
    if (!absl::StartsWith(line, "strata_op_latency_seconds_count{") ||
        !absl::StrContains(line, "op=\"connect_data\"")) {
      continue;
    }
    double v = 0;
    return absl::SimpleAtod(line.substr(line.rfind(' ') + 1), &v) ? v : -1;
  }
  return 0;
}

// A node capped at one data channel, the kAuto client holding it, and a second kAuto client
// whose channel the node refused when it connected.
class UcxAutoTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto node = testutil::StartNode({"--warm-bytes", "64MiB", "--max-block-bytes", "4MiB",
                                     "--ucx-tls", "tcp", "--max-data-channels", "1"});
    ASSERT_THAT(node, IsOk());
    node_ = *std::move(node);
    ClientOptions o;
    o.address = node_->address();
    o.data_plane = ClientOptions::DataPlane::kAuto;
    auto first = StoreClient::Connect(o);
    ASSERT_THAT(first, IsOk());
    first_ = *std::move(first);
    ASSERT_THAT(first_->DataPlaneDescription(), ::testing::StartsWith("ucx "));
    connects_before_second_ = ConnectDataCalls(*node_);
    auto second = StoreClient::Connect(o);
    ASSERT_THAT(second, IsOk());
    second_ = *std::move(second);
    ASSERT_THAT(second_->DataPlaneDescription(),
                ::testing::HasSubstr("inline (ucx channel refused: "));
  }

  std::unique_ptr<client::LocalNode> node_;
  std::unique_ptr<StoreClient> first_, second_;
  double connects_before_second_ = 0;
};

// A node at its channel cap (max_data_channels 1) refuses a second client's channel at
// connect. That client works inline meanwhile; once the first client is gone, a call after
// the back-off (1 s) opens a channel and the client moves its blocks over UCX. Before, a
// refusal at connect kept it inline until it connected again.
TEST_F(UcxAutoTest, AChannelRefusedAtConnectIsAskedForAgainLater) {
  StoreClient* second = second_.get();
  auto ns = second->RegisterNamespace(Spec());
  ASSERT_THAT(ns, IsOk());
  const std::vector<uint8_t> block = testutil::RandomBytes(21, 1 << 20);
  const std::vector<ChainHash> hashes = testutil::PromptChain(*ns, 21, 40);
  size_t next = 0;
  // Puts a block and reads it back bit-exact.
  auto round_trip = [&]() {
    ASSERT_LT(next, hashes.size());
    const ChainHash h = hashes[next++];
    const BlockWrite write{h, block.data(), block.size()};
    ASSERT_THAT(second->Put(*ns, "", {&write, 1}), IsOk());
    std::vector<uint8_t> dst(block.size());
    const BlockRead read{h, dst.data(), dst.size()};
    auto got = second->Get(*ns, "", {&read, 1});
    ASSERT_THAT(got, IsOk());
    ASSERT_THAT(got->blocks[0], IsOk());
    EXPECT_EQ(dst, block);
  };
  round_trip();  // inline, the channel refused
  EXPECT_THAT(second->DataPlaneDescription(), ::testing::HasSubstr("inline"));
  first_.reset();  // closes its channel
  // Calls within the back-off stay inline; the first after it opens a channel (bounded: 40
  // round trips 100 ms apart, well past the 1 s back-off).
  std::string now = second->DataPlaneDescription();
  while (!absl::StartsWith(now, "ucx ") && next < hashes.size()) {
    absl::SleepFor(absl::Milliseconds(100));
    round_trip();
    now = second->DataPlaneDescription();
  }
  EXPECT_THAT(now, ::testing::StartsWith("ucx tcp"));
  round_trip();  // over the channel
}

// While the node keeps refusing (at its channel cap), a busy client asks again once per
// back-off window, whichever of its threads comes first, not on every call: four threads
// making round trips for 3.5 s cost the node its connect's ConnectData and at most two asks
// (the windows end 1 s and 1 + 2 s after the refusal, the next at 7 s; a slow machine only
// makes fewer). Without the back-off 354 of 844 puts and gets asked. (While one call asks, the
// others go inline: that rule is not shown here, the ask is too quick for calls to meet it.)
TEST_F(UcxAutoTest, ARefusedClientAsksAgainOncePerBackOffWindow) {
  StoreClient* second = second_.get();
  const double base = connects_before_second_;
  ASSERT_GE(base, 1);
  auto ns = second->RegisterNamespace(Spec());
  ASSERT_THAT(ns, IsOk());
  const std::vector<uint8_t> block = testutil::RandomBytes(22, 256 << 10);
  std::atomic<int> wrong{0}, calls{0};
  const absl::Time end = absl::Now() + absl::Milliseconds(3500);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      // Each block deleted once read back: the arena never fills (a full one evicts).
      const std::vector<ChainHash> chain = testutil::PromptChain(*ns, 100 + t, 16);
      for (size_t i = 0; absl::Now() < end; ++i) {
        const ChainHash& h = chain[i % chain.size()];
        const BlockWrite write{h, block.data(), block.size()};
        std::vector<uint8_t> dst(block.size());
        const BlockRead read{h, dst.data(), dst.size()};
        auto put = second->Put(*ns, "", {&write, 1});
        auto got = second->Get(*ns, "", {&read, 1});
        auto deleted = second->Delete(*ns, "", {&h, 1});
        calls += 2;
        if (!put.ok() || !put->blocks[0].ok() || !got.ok() || !got->blocks[0].ok() ||
            dst != block || !deleted.ok()) {
          ++wrong;
        }
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(wrong.load(), 0);
  EXPECT_GT(calls.load(), 20) << "too few calls for the test to show much";
  const double asked = ConnectDataCalls(*node_) - base;
  EXPECT_GE(asked, 2) << "the connect's, and an ask after the first window";
  EXPECT_LE(asked, 3) << "over " << calls.load() << " calls";
  EXPECT_THAT(second->DataPlaneDescription(), ::testing::HasSubstr("channel refused"));
}

// A kAuto client whose node restarted at its address and then refused it a new channel (at
// its cap of one, held by another) reads inline. Before, the read found its channel gone
// (NOT_FOUND), asked for a new one, and failed with the refusal.
TEST(UcxAutoRestartTest, AChannelRefusedAfterTheNodeRestartedSendsTheCallInline) {
  auto first = testutil::StartNode({"--warm-bytes", "64MiB", "--ucx-tls", "tcp"});
  ASSERT_THAT(first, IsOk());
  const std::string address = (*first)->address();
  ClientOptions o;
  o.address = address;
  o.data_plane = ClientOptions::DataPlane::kAuto;
  auto c = StoreClient::Connect(o);
  ASSERT_THAT(c, IsOk());
  ASSERT_THAT((*c)->DataPlaneDescription(), ::testing::StartsWith("ucx "));
  auto ns = (*c)->RegisterNamespace(Spec());
  ASSERT_THAT(ns, IsOk());
  const std::vector<ChainHash> h = testutil::PromptChain(*ns, 61, 2);
  const std::vector<uint8_t> block = testutil::RandomBytes(61, 256 << 10);
  std::vector<BlockWrite> writes = {{h[0], block.data(), block.size()},
                                    {h[1], block.data(), block.size()}};
  ASSERT_THAT((*c)->Put(*ns, "", {&writes[0], 1}), IsOk());  // over the channel
  ASSERT_THAT((*first)->Stop(absl::Seconds(20)), IsOk());
  auto second = testutil::StartNode({"--warm-bytes", "64MiB", "--ucx-tls", "tcp", "--listen",
                                     address, "--max-data-channels", "1"});
  ASSERT_THAT(second, IsOk());
  auto stub = RawStub(address);
  RawChannel holder;  // the node's one channel
  ASSERT_NO_FATAL_FAILURE(OpenRawChannel(*stub, &holder));
  ClientOptions plain = o;
  plain.data_plane = ClientOptions::DataPlane::kInline;
  auto writer = StoreClient::Connect(plain);
  ASSERT_THAT(writer, IsOk());
  ASSERT_THAT((*writer)->RegisterNamespace(Spec()), IsOk());
  ASSERT_THAT((*writer)->Put(*ns, "", {&writes[1], 1}), IsOk());
  ASSERT_THAT((*c)->RegisterNamespace(Spec()), IsOk());  // the new node knows none yet
  std::vector<uint8_t> out(block.size());
  const BlockRead read{h[1], out.data(), out.size()};
  auto got = (*c)->Get(*ns, "", {&read, 1});
  ASSERT_THAT(got, IsOk());
  ASSERT_THAT(got->blocks[0], IsOk());
  EXPECT_EQ(out, block);
  EXPECT_THAT((*c)->DataPlaneDescription(), ::testing::HasSubstr("channel refused"));
  EXPECT_EQ(CloseRawChannel(*stub, holder), grpc::StatusCode::OK);
}

}  // namespace
}  // namespace strata::ucx_test
