// What the single-node client does with awkward input of its own: refused with the field
// named, never a crash and never a call that fails for a reason the caller did not give.
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "strata/client/store_client.h"
#include "strata/testutil/node_process.h"
#include "strata/testutil/prompts.h"
#include "strata/testutil/status_matchers.h"

namespace strata {
namespace {

using client::BlockRead;
using client::BlockWrite;
using client::CallOptions;
using client::StoreClient;
using ::testing::HasSubstr;
using testutil::IsOk;
using testutil::StatusIs;

TEST(ClientInputTest, NullBuffersAreRefusedAndAnInfiniteDeadlineIsNone) {
  auto node = testutil::StartNode({"--warm-bytes", "64MiB"});
  ASSERT_THAT(node, IsOk());
  auto client = StoreClient::Connect({.address = (*node)->address()});
  ASSERT_THAT(client, IsOk());
  auto ns = (*client)->RegisterNamespace(testutil::RawSpec("client-input", 4096));
  ASSERT_THAT(ns, IsOk());
  const std::vector<ChainHash> chain = testutil::PromptChain(*ns, 3, 2);
  std::vector<uint8_t> block = testutil::RandomBytes(3, 4096);
  // A null read buffer with room claimed: INVALID_ARGUMENT naming it (before: a crash in the
  // copy of the inline reply).
  BlockWrite w{chain[0], block.data(), block.size()};
  ASSERT_THAT((*client)->Put(*ns, "", {&w, 1}), IsOk());
  std::vector<uint8_t> out(4096);
  std::vector<BlockRead> reads = {{chain[0], out.data(), out.size()}, {chain[1], nullptr, 4096}};
  EXPECT_THAT((*client)->Get(*ns, "", reads),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("blocks[1].buffer")));
  // No deadline at all (infinite): the calls run (before: the deadline overflowed into the
  // past and every call was DEADLINE_EXCEEDED at once).
  const CallOptions forever{absl::InfiniteDuration()};
  EXPECT_THAT((*client)->Stats(forever), IsOk());
  auto got = (*client)->Get(*ns, "", {reads.data(), 1}, forever);
  ASSERT_THAT(got, IsOk());
  EXPECT_THAT(got->blocks[0], IsOk());
  EXPECT_EQ(out, block);
}

}  // namespace
}  // namespace strata
