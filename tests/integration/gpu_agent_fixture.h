// The fixture of the GPU agent's integration tests (gpu_agent_integration_test.cc,
// gpu_agent_peer_test.cc): one real strata-storenode for the suite, agents over host-memory
// pools (the host twin of the CUDA copy engine), and helpers that compute, load and compare
// blocks.
#pragma once

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine_kv.h"
#include "strata/client/local_node.h"
#include "strata/gpu_agent/agent.h"
#include "strata/gpu_agent/copy_engine.h"
#include "strata/gpu_agent/host_pool.h"
#include "strata/testutil/node_process.h"

namespace strata::gpu_agent {

class GpuAgentTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto node = testutil::StartNode(
        {"--warm-bytes", "1536MiB", "--max-block-bytes", "8MiB", "--ucx-tls", "tcp"});
    ASSERT_TRUE(node.ok()) << node.status();
    node_ = node->release();
  }
  static void TearDownTestSuite() {
    delete node_;
    node_ = nullptr;
  }

  static AgentOptions Options(const std::string& model, bool serve) {
    AgentOptions o;
    o.store.address = node_->address();
    o.model_id = model;
    o.peer_listen = serve ? "127.0.0.1:0" : "";
    o.staging_bytes = 64 << 20;
    return o;
  }

  struct Side {
    HostKvPool pool;
    std::unique_ptr<GpuAgent> agent;
    std::unique_ptr<CopyEngine> twin;
  };

  static Side Make(const AgentOptions& o, KvPoolSpec shape) {
    auto pool = HostKvPool::Create(shape);
    EXPECT_TRUE(pool.ok()) << pool.status();
    auto agent = GpuAgent::Create(o);
    EXPECT_TRUE(agent.ok()) << agent.status();
    EXPECT_TRUE((*agent)->RegisterKvPool(pool->spec()).ok());
    auto twin = CreateHostCopyEngine(pool->pool());
    return Side{std::move(*pool), std::move(*agent), std::move(*twin)};
  }

  static KvPoolSpec SmallShape(KvLayout layout, KvDtype dtype) {
    KvPoolSpec s;
    s.layout = layout;
    s.layers = 4;
    s.num_blocks = 32;
    s.block_tokens = 16;
    s.kv_heads = 2;
    s.head_dim = 64;
    s.dtype = dtype;
    return s;
  }

  static std::vector<ChainHash> Hashes(const GpuAgent& agent, uint32_t blocks, uint32_t salt) {
    std::vector<uint32_t> tokens(blocks * 16);
    for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<uint32_t>(i * 7 + salt);
    auto h = agent.ns().HashTokens(tokens);
    EXPECT_TRUE(h.ok());
    return *h;
  }

  // "Computes" blocks: writes each block's KV (a function of its hash) into slots[i].
  static std::vector<ComputedBlock> Compute(Side& s, const std::vector<ChainHash>& hashes,
                                            const std::vector<uint32_t>& slots) {
    const uint64_t bb = s.pool.pool().block_bytes;
    std::vector<uint8_t> block(bb);
    std::vector<ComputedBlock> out;
    for (size_t i = 0; i < hashes.size(); ++i) {
      examples::BlockKv(hashes[i], block.data(), bb);
      EXPECT_TRUE(s.twin->Scatter(block.data(), {&slots[i], 1}).ok());
      out.push_back({slots[i], hashes[i], static_cast<uint32_t>(i), 0.5f});
    }
    return out;
  }

  // Blocks whose slot holds exactly the KV of its hash.
  static size_t Exact(Side& s, const std::vector<ChainHash>& hashes,
                      const std::vector<uint32_t>& slots) {
    const uint64_t bb = s.pool.pool().block_bytes;
    std::vector<uint8_t> want(bb), got(bb);
    size_t exact = 0;
    for (size_t i = 0; i < hashes.size(); ++i) {
      examples::BlockKv(hashes[i], want.data(), bb);
      EXPECT_TRUE(s.twin->Gather({&slots[i], 1}, got.data()).ok());
      exact += want == got;
    }
    return exact;
  }

  static std::shared_ptr<LoadHandle> LoadAll(Side& s, const std::vector<ChainHash>& hashes,
                                             const std::vector<uint32_t>& slots) {
    auto h = s.agent->Load(hashes, slots);
    EXPECT_TRUE(h.ok()) << h.status();
    EXPECT_TRUE((*h)->Wait(absl::Seconds(60)));
    return *h;
  }

  static std::vector<uint32_t> Slots(uint32_t first, uint32_t n) {
    std::vector<uint32_t> s(n);
    for (uint32_t i = 0; i < n; ++i) s[i] = first + i;
    return s;
  }

  static inline client::LocalNode* node_ = nullptr;
};

}  // namespace strata::gpu_agent
