#include "strata/storenode/node_config.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "strata/testutil/status_matchers.h"

namespace strata::storenode {
namespace {

using ::strata::testutil::IsOk;
using ::strata::testutil::StatusIs;
using ::testing::HasSubstr;

TEST(NodeConfigTest, AutoLanesAreOnePerFourCpusFromOneToFour) {
  EXPECT_EQ(AutoUcxLanes(1), 1u);
  EXPECT_EQ(AutoUcxLanes(2), 1u);  // measured: a second lane is slower on 2 vCPUs
  EXPECT_EQ(AutoUcxLanes(8), 2u);
  EXPECT_EQ(AutoUcxLanes(12), 3u);
  EXPECT_EQ(AutoUcxLanes(16), 4u);
  EXPECT_EQ(AutoUcxLanes(128), 4u);
}

TEST(NodeConfigTest, LanesAreZeroForAutoOrOneToSixtyFour) {
  NodeConfig c;
  EXPECT_EQ(c.ucx_lanes, 0u);
  EXPECT_THAT(ValidateNodeConfig(c), IsOk());
  c.ucx_lanes = 64;
  EXPECT_THAT(ValidateNodeConfig(c), IsOk());
  c.ucx_lanes = 65;
  EXPECT_THAT(ValidateNodeConfig(c),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("ucx_lanes: 65")));
}

// Clients size a data-plane call by max_inline_bytes: a max_transfer_bytes below it would
// refuse every large batch for good ("split the batch", which they already did).
TEST(NodeConfigTest, MaxTransferBytesIsAtLeastMaxInlineBytes) {
  NodeConfig c;
  c.max_transfer_bytes = c.max_inline_bytes;
  EXPECT_THAT(ValidateNodeConfig(c), IsOk());
  c.max_transfer_bytes = c.max_inline_bytes - 1;
  EXPECT_THAT(ValidateNodeConfig(c),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("max_transfer_bytes: ")));
  c.max_transfer_bytes = 0;
  EXPECT_THAT(ValidateNodeConfig(c), StatusIs(absl::StatusCode::kInvalidArgument));
}

// Clients look for blocks at their earlier owners for 10 minutes after a change of the member
// set: a rebalancer that waited longer to move them would leave them unreadable.
TEST(NodeConfigTest, RebalanceSettleIsAtMostFiveMinutes) {
  NodeConfig c;
  EXPECT_EQ(c.rebalance_settle_ms, 500u);
  c.rebalance_settle_ms = 300000;
  EXPECT_THAT(ValidateNodeConfig(c), IsOk());
  c.rebalance_settle_ms = 300001;
  EXPECT_THAT(ValidateNodeConfig(c), StatusIs(absl::StatusCode::kInvalidArgument,
                                              HasSubstr("rebalance_settle: want <= 300000 ms")));
}

// The rebalancer reads a block whole: a batch budget below max_block_bytes could never copy
// one. 0 picks the default.
TEST(NodeConfigTest, RebalanceBatchBytesHoldAtLeastOneBlock) {
  NodeConfig c;
  EXPECT_THAT(ValidateNodeConfig(c), IsOk());
  c.rebalance_batch_bytes = c.max_block_bytes;
  EXPECT_THAT(ValidateNodeConfig(c), IsOk());
  c.rebalance_batch_bytes = c.max_block_bytes - 1;
  EXPECT_THAT(ValidateNodeConfig(c),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("rebalance_batch_bytes")));
}

}  // namespace
}  // namespace strata::storenode
