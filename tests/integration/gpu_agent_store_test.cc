// A GPU agent's offloads and directory entries as the store sees them, with other writers and
// readers of the same blocks about (gpu_agent_fixture.h: a real strata-storenode, the host
// twin for the GPU).
#include <gtest/gtest.h>

#include "absl/time/clock.h"
#include "gpu_agent_fixture.h"
#include "grpcpp/grpcpp.h"
#include "strata/client/store_client.h"
#include "strata/testutil/node_process.h"
#include "strata/v1/store.grpc.pb.h"

namespace strata::gpu_agent {
namespace {

// Puts the node has been asked for, either way (inline or over UCX).
uint64_t PutCalls(const client::LocalNode& node) {
  return testutil::OpCount(node, "begin_put") + testutil::OpCount(node, "put_data");
}

// A block another writer is still putting (a second prefill of the same prompt, or one that
// died mid-put) is not offloaded until that put settles: here the other writer gives up, and
// the agent's blocks are stored. Before 2026-11-29 the agent took the node's "being written"
// as stored: Flush returned at once, and after the abort the store held none of the 4.
TEST_F(GpuAgentTest, ABlockAnotherWriterIsPuttingIsOffloadedOnceThatPutSettles) {
  Side s = Make(Options("being-written", false), SmallShape(KvLayout::kFlashAttn, KvDtype::kFp16));
  const std::vector<ChainHash> hashes = Hashes(*s.agent, 4, 77);
  auto stub = v1::StoreService::NewStub(
      grpc::CreateChannel(node_->address(), grpc::InsecureChannelCredentials()));
  v1::BeginPutRequest reserve;
  reserve.set_namespace_id(s.agent->ns().id);
  reserve.set_ttl_ms(20000);
  for (const ChainHash& h : hashes) {
    v1::PutBlock* b = reserve.add_blocks();
    b->set_chain_hash(h.ToBytes());
    b->set_size(s.agent->ns().spec.block_bytes);
  }
  v1::BeginPutResponse reserved;
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub->BeginPut(&ctx, reserve, &reserved).ok());
    ASSERT_NE(reserved.reservation_id(), 0u);
  }
  const uint64_t puts = PutCalls(*node_);
  ASSERT_TRUE(s.agent->OnBlocksComputed(Compute(s, hashes, Slots(0, 4))).ok());
  for (int i = 0; i < 200 && PutCalls(*node_) == puts; ++i) absl::SleepFor(absl::Milliseconds(25));
  ASSERT_GT(PutCalls(*node_), puts) << "the agent never put";
  // The other put holds the blocks: the agent's are not stored yet.
  EXPECT_EQ(s.agent->Flush(absl::Milliseconds(300)).code(), absl::StatusCode::kDeadlineExceeded);
  {
    v1::AbortPutRequest abort;
    abort.set_reservation_id(reserved.reservation_id());
    v1::AbortPutResponse aborted;
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub->AbortPut(&ctx, abort, &aborted).ok());
  }
  ASSERT_TRUE(s.agent->Flush(absl::Seconds(30)).ok());
  ASSERT_TRUE(s.agent->OnBlocksFreed(Slots(0, 4)).ok());
  auto matched = s.agent->MatchedBlocks(hashes);
  ASSERT_TRUE(matched.ok()) << matched.status();
  EXPECT_EQ(*matched, 4u);
  const AgentStats st = s.agent->Stats();
  EXPECT_EQ(st.offloaded, 4u);
  EXPECT_EQ(st.offload_failed, 0u);
}

}  // namespace
}  // namespace strata::gpu_agent
