// A lane whose shared-memory receive queue stops being read — as when a client dies between
// claiming a slot in it and filling it: UCX 1.13 then reads no message past that slot, from
// anyone — is found by the node's lane check and given a new worker, and calls on it work
// again once clients reconnect. Before, every call on that lane timed out for as long as the
// node ran (reproduced without fault injection: a wedge in about 1 of 50 kills of a client
// putting over shm).
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "strata/client/store_client.h"
#include "strata/testutil/status_matchers.h"
#include "ucx_test_support.h"

namespace strata {
namespace {

using client::BlockRead;
using client::BlockWrite;
using client::ClientOptions;
using testutil::IsOk;

// Puts `block` under `h` and reads it back; OK only if every byte came back.
absl::Status PutAndGet(client::StoreClient& c, const client::Namespace& ns, const ChainHash& h,
                       const std::vector<uint8_t>& block) {
  BlockWrite w{h, block.data(), block.size()};
  absl::StatusOr<client::PutResult> put = c.Put(ns, "", {&w, 1});
  if (!put.ok()) return put.status();
  if (!put->blocks[0].ok() && put->blocks[0].code() != absl::StatusCode::kAlreadyExists) {
    return put->blocks[0];
  }
  std::vector<uint8_t> out(block.size());
  BlockRead r{h, out.data(), out.size()};
  absl::StatusOr<client::GetResult> got = c.Get(ns, "", {&r, 1});
  if (!got.ok()) return got.status();
  if (!got->blocks[0].ok()) return got->blocks[0];
  return out == block ? absl::OkStatus() : absl::DataLossError("bytes differ");
}

// Lane `lane` of the node stops reading for good (InjectFault stall_lane).
void StallLane(const client::LocalNode& node, uint32_t lane) {
  auto stub = ucx_test::RawStub(node.address());
  v1::InjectFaultRequest stall;
  stall.set_stall_lane(lane);
  v1::InjectFaultResponse ignored;
  grpc::ClientContext ctx;
  ASSERT_TRUE(stub->InjectFault(&ctx, stall, &ignored).ok());
}

TEST(UcxLaneCheckTest, AWedgedSharedMemoryLaneIsReplacedAndServesAgain) {
  auto node = testutil::StartNode({"--warm-bytes", "64MiB", "--max-block-bytes", "4MiB",
                                   "--ucx-tls", "shm", "--debug-fault-injection"});
  ASSERT_THAT(node, IsOk());
  ClientOptions o;
  o.address = (*node)->address();
  o.data_plane = ClientOptions::DataPlane::kUcx;
  o.default_deadline = absl::Seconds(3);
  auto c = client::StoreClient::Connect(o);
  ASSERT_THAT(c, IsOk());
  auto ns = (*c)->RegisterNamespace(ucx_test::Spec());
  ASSERT_THAT(ns, IsOk());
  const std::vector<ChainHash> chain = testutil::PromptChain(*ns, 90, 64);
  const std::vector<uint8_t> block = testutil::RandomBytes(90, 1 << 20);
  ASSERT_THAT(PutAndGet(**c, *ns, chain[0], block), IsOk());

  ASSERT_NO_FATAL_FAILURE(StallLane(**node, 1));
  // The lane fails its calls until the check replaces it (three missed checks, a few seconds
  // each); then a call goes through again. Bounded: 60 s.
  size_t failed = 0;
  absl::Status last = absl::UnknownError("not tried");
  const absl::Time end = absl::Now() + absl::Seconds(60);
  for (size_t i = 1; i < chain.size() && absl::Now() < end; ++i) {
    last = PutAndGet(**c, *ns, chain[i], block);
    if (last.ok()) break;
    ++failed;
  }
  EXPECT_GT(failed, 0u) << "the stalled lane never failed a call";
  EXPECT_THAT(last, IsOk());
  auto stats = (*c)->Stats();
  ASSERT_THAT(stats, IsOk());
  EXPECT_EQ(stats->ucx_lanes_replaced, 1u);
  auto health = testutil::HttpGet((*node)->http_address(), "/healthz");
  ASSERT_THAT(health, IsOk());
  EXPECT_EQ(health->first, 200) << "a replaced lane leaves the node healthy";
}

// Past ucx_max_replaced_lanes (0 here) a wedged lane is not replaced: the node answers
// /healthz 503 and says why, for its supervisor to restart it (each replacement keeps the old
// worker, its thread and descriptors, until the node stops: before 2026-11-29 without bound).
TEST(UcxLaneCheckTest, AWedgedLanePastTheCapMakesTheNodeUnhealthy) {
  auto node = testutil::StartNode({"--warm-bytes", "64MiB", "--ucx-tls", "shm",
                                   "--ucx-max-replaced-lanes", "0", "--debug-fault-injection"});
  ASSERT_THAT(node, IsOk());
  auto healthy = testutil::HttpGet((*node)->http_address(), "/healthz");
  ASSERT_THAT(healthy, IsOk());
  EXPECT_EQ(healthy->first, 200);
  ASSERT_NO_FATAL_FAILURE(StallLane(**node, 1));
  // Three missed checks of a few seconds each; bounded: 60 s.
  absl::StatusOr<std::pair<int, std::string>> health = healthy;
  for (const absl::Time end = absl::Now() + absl::Seconds(60);
       health.ok() && health->first == 200 && absl::Now() < end;
       absl::SleepFor(absl::Milliseconds(200))) {
    health = testutil::HttpGet((*node)->http_address(), "/healthz");
  }
  ASSERT_THAT(health, IsOk());
  EXPECT_EQ(health->first, 503);
  EXPECT_THAT(health->second, ::testing::HasSubstr("1 UCX lanes wedged"));
  auto ready = testutil::HttpGet((*node)->http_address(), "/readyz");
  ASSERT_THAT(ready, IsOk());
  EXPECT_EQ(ready->first, 200) << "readiness is not liveness";
}

}  // namespace
}  // namespace strata
