// The GPU agent with its CUDA copy engine on real device pools (label gpu; skipped without a
// CUDA build or a device): a prefill agent offloads and publishes a Llama-3.1-8B-shaped
// 1,024-token prompt from a flash-attention pool in GPU memory; decode agents with their own
// block-first GPU pools load it from the store and straight from the prefill agent; every
// byte is checked against the host twin's reading of the same pool. One strata-storenode on
// loopback for the suite. Prints the figures it saw (never asserts on them).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <cstring>

#include "engine_kv.h"
#include "strata/client/local_node.h"
#include "strata/gpu_agent/agent.h"
#include "strata/gpu_agent/copy_engine.h"
#include "strata/gpu_agent/host_pool.h"
#include "strata/testutil/node_process.h"

#if STRATA_HAVE_CUDA
#include <cuda_runtime.h>
#endif

namespace strata::gpu_agent {
namespace {

#if STRATA_HAVE_CUDA

constexpr uint32_t kBlocks = 64;  // 1,024 tokens of 16

bool HaveDevice() {
  int n = 0;
  return CudaCopyEngineBuilt() && cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

// An engine's KV pool in GPU memory, one tensor per layer.
struct DevicePool {
  KvPoolSpec spec;
  std::vector<void*> tensors;
  uint64_t tensor_bytes = 0;
  ~DevicePool() {
    for (void* t : tensors) cudaFree(t);
  }
};

std::unique_ptr<DevicePool> MakeDevicePool(KvLayout layout, uint32_t num_blocks) {
  auto p = std::make_unique<DevicePool>();
  p->spec.device = 0;
  p->spec.layout = layout;
  p->spec.layers = 32;
  p->spec.kv_heads = 8;
  p->spec.head_dim = 128;
  p->spec.block_tokens = 16;
  p->spec.num_blocks = num_blocks;
  p->spec.dtype = KvDtype::kFp16;
  p->tensor_bytes = 2ull * num_blocks * 16 * 8 * 128 * 2;  // one layer's K and V
  for (uint32_t l = 0; l < 32; ++l) {
    void* t = nullptr;
    if (cudaMalloc(&t, p->tensor_bytes) != cudaSuccess) return nullptr;
    cudaMemset(t, 0, p->tensor_bytes);
    p->tensors.push_back(t);
    p->spec.layer_bases.push_back(t);
  }
  return p;
}

// Blocks of `slots` in the device pool whose bytes are exactly the KV of hashes[i], read back
// through a host pool of the same layout and the host twin (the reference indexing).
size_t ExactOnDevice(const DevicePool& d, const std::vector<ChainHash>& hashes,
                     const std::vector<uint32_t>& slots) {
  KvPoolSpec shape = d.spec;
  shape.layer_bases.clear();
  auto host = HostKvPool::Create(shape);
  EXPECT_TRUE(host.ok());
  auto tensors = host->Tensors();
  for (size_t l = 0; l < tensors.size(); ++l) {
    EXPECT_EQ(cudaMemcpy(tensors[l].first, d.tensors[l], d.tensor_bytes, cudaMemcpyDeviceToHost),
              cudaSuccess);
  }
  auto twin = CreateHostCopyEngine(host->pool());
  const uint64_t bb = host->pool().block_bytes;
  std::vector<uint8_t> want(bb), got(bb);
  size_t exact = 0;
  for (size_t i = 0; i < hashes.size(); ++i) {
    examples::BlockKv(hashes[i], want.data(), bb);
    EXPECT_TRUE((*twin)->Gather({&slots[i], 1}, got.data()).ok());
    exact += want == got;
  }
  return exact;
}

double Seconds(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

class GpuAgentDeviceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!HaveDevice()) GTEST_SKIP() << "no CUDA engine or no CUDA device";
    auto node = testutil::StartNode(
        {"--warm-bytes", "1GiB", "--max-block-bytes", "4MiB", "--ucx-tls", "tcp"});
    ASSERT_TRUE(node.ok()) << node.status();
    node_ = std::move(*node);
  }

  AgentOptions Options(bool serve) {
    AgentOptions o;
    o.store.address = node_->address();
    o.model_id = "llama-3.1-8b";
    o.peer_listen = serve ? "127.0.0.1:0" : "";
    return o;
  }

  std::unique_ptr<client::LocalNode> node_;
};

TEST_F(GpuAgentDeviceTest, DevicePoolsOffloadAndLoadFromStoreAndPeer) {
  auto prefill_pool = MakeDevicePool(KvLayout::kFlashAttn, kBlocks + 8);
  ASSERT_NE(prefill_pool, nullptr);
  auto prefill = GpuAgent::Create(Options(true));
  ASSERT_TRUE(prefill.ok()) << prefill.status();
  ASSERT_TRUE((*prefill)->RegisterKvPool(prefill_pool->spec).ok());

  std::vector<uint32_t> tokens(kBlocks * 16);
  for (uint32_t i = 0; i < tokens.size(); ++i) tokens[i] = (i * 2654435761u + 17) % 128000;
  std::vector<ChainHash> hashes = *(*prefill)->ns().HashTokens(tokens);
  ASSERT_EQ(hashes.size(), kBlocks);
  // "The forward pass": write each block's KV into its GPU slot (a CUDA engine of our own).
  auto writer = CreateCudaCopyEngine(*ResolveKvPool(prefill_pool->spec));
  ASSERT_TRUE(writer.ok()) << writer.status();
  const uint64_t bb = (*writer)->pool().block_bytes;
  auto staging = (*writer)->AllocateStaging(bb);
  ASSERT_TRUE(staging.ok());
  std::vector<ComputedBlock> computed;
  for (uint32_t i = 0; i < kBlocks; ++i) {
    examples::BlockKv(hashes[i], (*staging)->data(), bb);
    const uint32_t slot = i + 3;
    ASSERT_TRUE((*writer)->Scatter((*staging)->data(), {&slot, 1}).ok());
    computed.push_back({slot, hashes[i], i, 0.5f});
  }
  auto t0 = std::chrono::steady_clock::now();
  ASSERT_TRUE((*prefill)->OnBlocksComputed(computed).ok());
  ASSERT_TRUE((*prefill)->Flush(absl::Seconds(60)).ok());
  const double offload = Seconds(t0);
  EXPECT_EQ((*prefill)->Stats().offloaded, kBlocks);

  std::vector<uint32_t> slots(kBlocks);
  for (uint32_t i = 0; i < kBlocks; ++i) slots[i] = kBlocks + 7 - i;
  double secs[2] = {0, 0};
  for (int from_peer = 0; from_peer < 2; ++from_peer) {
    SCOPED_TRACE(from_peer ? "from the prefill agent" : "from the store");
    auto pool = MakeDevicePool(KvLayout::kBlockFirst, kBlocks + 8);
    ASSERT_NE(pool, nullptr);
    AgentOptions o = Options(false);
    o.prefer_peers = from_peer == 1;
    auto decode = GpuAgent::Create(o);
    ASSERT_TRUE(decode.ok());
    ASSERT_TRUE((*decode)->RegisterKvPool(pool->spec).ok());
    t0 = std::chrono::steady_clock::now();
    auto handle = (*decode)->Load(hashes, slots);
    ASSERT_TRUE(handle.ok());
    ASSERT_TRUE((*handle)->Wait(absl::Seconds(60)));
    secs[from_peer] = Seconds(t0);
    EXPECT_EQ((*handle)->loaded_prefix(), kBlocks);
    EXPECT_EQ((*handle)->blocks()[0].source, from_peer ? LoadSource::kPeer : LoadSource::kStore);
    EXPECT_EQ(ExactOnDevice(*pool, hashes, slots), kBlocks);
  }
  EXPECT_EQ((*prefill)->Stats().served_to_peers, kBlocks);
  std::printf(
      "gpu agent on %s: %u blocks (%.0f MiB): offload %.2f GB/s, load from store %.2f GB/s, "
      "from the prefill peer %.2f GB/s\n",
      (*writer)->Describe().c_str(), kBlocks, kBlocks * bb / 1048576.0,
      kBlocks * bb / offload / 1e9, kBlocks * bb / secs[0] / 1e9, kBlocks * bb / secs[1] / 1e9);
}

#else

TEST(GpuAgentDeviceTest, SkippedWithoutCuda) { GTEST_SKIP() << "built without CUDA"; }

#endif

}  // namespace
}  // namespace strata::gpu_agent
