// kAuto clients (ClientOptions::DataPlane::kAuto): a data channel the node refuses when the
// client connects does not leave that client inline for good.
#include "ucx_test_support.h"

namespace strata::ucx_test {
namespace {

using client::BlockRead;
using client::BlockWrite;
using client::ClientOptions;
using client::StoreClient;
using testutil::IsOk;

// A node at its channel cap (max_data_channels 1) refuses a second client's channel at
// connect. That client works inline meanwhile; once the first client is gone, a call after
// the back-off (1 s) opens a channel and the client moves its blocks over UCX. Before, a
// refusal at connect kept it inline until it connected again.
TEST(UcxAutoTest, AChannelRefusedAtConnectIsAskedForAgainLater) {
  auto node = testutil::StartNode({"--warm-bytes", "64MiB", "--max-block-bytes", "4MiB",
                                   "--ucx-tls", "tcp", "--max-data-channels", "1"});
  ASSERT_THAT(node, IsOk());
  ClientOptions o;
  o.address = (*node)->address();
  o.data_plane = ClientOptions::DataPlane::kAuto;
  auto first = StoreClient::Connect(o);
  ASSERT_THAT(first, IsOk());
  ASSERT_THAT((*first)->DataPlaneDescription(), ::testing::StartsWith("ucx "));
  auto second = StoreClient::Connect(o);
  ASSERT_THAT(second, IsOk());
  EXPECT_THAT((*second)->DataPlaneDescription(),
              ::testing::HasSubstr("inline (ucx channel refused: "));
  auto ns = (*second)->RegisterNamespace(Spec());
  ASSERT_THAT(ns, IsOk());
  const std::vector<uint8_t> block = testutil::RandomBytes(21, 1 << 20);
  const std::vector<ChainHash> hashes = testutil::PromptChain(*ns, 21, 40);
  size_t next = 0;
  // Puts a block and reads it back bit-exact.
  auto round_trip = [&]() {
    ASSERT_LT(next, hashes.size());
    const ChainHash h = hashes[next++];
    const BlockWrite write{h, block.data(), block.size()};
    ASSERT_THAT((*second)->Put(*ns, "", {&write, 1}), IsOk());
    std::vector<uint8_t> dst(block.size());
    const BlockRead read{h, dst.data(), dst.size()};
    auto got = (*second)->Get(*ns, "", {&read, 1});
    ASSERT_THAT(got, IsOk());
    ASSERT_THAT(got->blocks[0], IsOk());
    EXPECT_EQ(dst, block);
  };
  round_trip();  // inline, the channel refused
  EXPECT_THAT((*second)->DataPlaneDescription(), ::testing::HasSubstr("inline"));
  first->reset();  // closes its channel
  // Calls within the back-off stay inline; the first after it opens a channel (bounded: 40
  // round trips 100 ms apart, well past the 1 s back-off).
  std::string now = (*second)->DataPlaneDescription();
  while (!absl::StartsWith(now, "ucx ") && next < hashes.size()) {
    absl::SleepFor(absl::Milliseconds(100));
    round_trip();
    now = (*second)->DataPlaneDescription();
  }
  EXPECT_THAT(now, ::testing::StartsWith("ucx tcp"));
  round_trip();  // over the channel
}

}  // namespace
}  // namespace strata::ucx_test
