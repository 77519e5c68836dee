// The GPU agent (host twin) against a real strata-storenode and real peer agents: offload and
// load across layouts and dtypes, a prefill process's 4,096-token prompt loaded by this
// process from the store and from the prefill agent's pool, directory publish/unpublish,
// peer failure, and per-block load results. One node for the whole suite.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "engine_kv.h"
#include "gpu_agent_fixture.h"
#include "strata/client/local_node.h"
#include "strata/common/half.h"
#include "strata/common/kv_quant.h"
#include "strata/gpu_agent/agent.h"
#include "strata/gpu_agent/copy_engine.h"
#include "strata/gpu_agent/host_pool.h"
#include "strata/testutil/node_process.h"

extern char** environ;

namespace strata::gpu_agent {
namespace {

using ::testing::ElementsAre;

// gather → put → get → scatter, for every layout and dtype, into a pool of another layout.
TEST_F(GpuAgentTest, RoundTripIsBitExactForEveryLayoutAndDtype) {
  const KvLayout layouts[] = {KvLayout::kFlashAttn, KvLayout::kBlockFirst, KvLayout::kSplitKv,
                              KvLayout::kCrossLayer};
  uint32_t salt = 0;
  for (KvDtype dtype : {KvDtype::kFp16, KvDtype::kBf16, KvDtype::kFp8}) {
    for (size_t l = 0; l < 4; ++l) {
      SCOPED_TRACE(std::string(KvLayoutName(layouts[l])) + " " + std::string(KvDtypeName(dtype)));
      Side prefill = Make(Options("roundtrip", false), SmallShape(layouts[l], dtype));
      Side decode = Make(Options("roundtrip", false), SmallShape(layouts[(l + 1) % 4], dtype));
      auto hashes = Hashes(*prefill.agent, 20, ++salt);
      ASSERT_TRUE(prefill.agent->OnBlocksComputed(Compute(prefill, hashes, Slots(3, 20))).ok());
      ASSERT_TRUE(prefill.agent->Flush(absl::Seconds(30)).ok());
      EXPECT_EQ(prefill.agent->Stats().offloaded, 20u);
      auto loaded = LoadAll(decode, hashes, Slots(10, 20));
      EXPECT_EQ(loaded->loaded_prefix(), 20u);
      EXPECT_EQ(Exact(decode, hashes, Slots(10, 20)), 20u);
      EXPECT_EQ(decode.agent->Stats().loaded_from_store, 20u);
    }
  }
}

// A prefill process (strata-engine-example, llama-3.1-8b shape) offloads a 4,096-token prompt;
// this process, with its own client and pool, loads it from the store and from the prefill
// agent's pool, then again after the prefill process died (fallback to the store).
TEST_F(GpuAgentTest, DecodeLoadsPrefillProcessPromptFromStoreAndFromPeer) {
  int out[2], in[2];
  ASSERT_EQ(pipe(out), 0);
  ASSERT_EQ(pipe(in), 0);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, out[1], 1);
  posix_spawn_file_actions_adddup2(&fa, in[0], 0);
  posix_spawn_file_actions_addclose(&fa, out[0]);
  posix_spawn_file_actions_addclose(&fa, in[1]);
  std::string bin = testutil::ProjectBinary("strata-engine-example");
  std::vector<std::string> args = {
      bin, "--role", "prefill", "--node", node_->address(), "--prompt-tokens", "4096"};
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t prefill = 0;
  const int spawned = posix_spawn(&prefill, bin.c_str(), &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  ASSERT_EQ(spawned, 0);
  close(out[1]);
  close(in[0]);
  FILE* from = fdopen(out[0], "r");
  char line[512] = {};
  ASSERT_NE(std::fgets(line, sizeof(line), from), nullptr);
  std::string ready(line);
  ASSERT_EQ(ready.rfind("READY ", 0), 0u) << ready;
  const std::string peer = ready.substr(6, ready.find_last_not_of("\n") - 5);

  KvPoolSpec shape;
  shape.layout = KvLayout::kBlockFirst;
  shape.layers = 32;
  shape.kv_heads = 8;
  shape.head_dim = 128;
  shape.block_tokens = 16;
  shape.num_blocks = 264;
  AgentOptions from_store = Options("llama-3.1-8b", false);
  from_store.prefer_peers = false;
  Side decode = Make(from_store, shape);
  std::vector<uint32_t> tokens(4096);
  for (uint32_t i = 0; i < 4096; ++i)
    tokens[i] = static_cast<uint32_t>((i * 2654435761ull + 17) % 128000);
  auto hashes = *decode.agent->ns().HashTokens(tokens);
  ASSERT_EQ(hashes.size(), 256u);
  const auto slots = Slots(4, 256);
  ASSERT_EQ(*decode.agent->MatchedBlocks(hashes), 256u);
  const absl::Time a_start = absl::Now();
  auto a = LoadAll(decode, hashes, slots);
  const absl::Duration a_took = absl::Now() - a_start;
  EXPECT_EQ(a->loaded_prefix(), 256u);
  EXPECT_EQ(a->blocks()[0].source, LoadSource::kStore);
  EXPECT_EQ(Exact(decode, hashes, slots), 256u);
  EXPECT_EQ(decode.agent->Stats().loaded_from_store, 256u);

  // (b) straight from the prefill agent's pool: every block from the peer, none from the store.
  Side direct = Make(Options("llama-3.1-8b", false), shape);
  auto b = LoadAll(direct, hashes, slots);
  EXPECT_EQ(b->loaded_prefix(), 256u);
  EXPECT_EQ(b->blocks()[255].source, LoadSource::kPeer);
  EXPECT_EQ(b->blocks()[255].from, peer);
  EXPECT_EQ(Exact(direct, hashes, slots), 256u);
  EXPECT_EQ(direct.agent->Stats().loaded_from_peer, 256u);
  EXPECT_EQ(direct.agent->Stats().loaded_from_store, 0u);

  // The prefill process hangs (SIGSTOP: its sockets stay, nothing answers): a load costs one
  // call to it, then takes every block from the store, and the next load skips it. Before,
  // each batch waited out the deadline (26 of them here), and so did every later load.
  // (3 s: every call of a load moves 20 MiB; with 1 s a slow moment of a Debug build on a
  // shared 2-core machine sent blocks to the store.)
  AgentOptions impatient = Options("llama-3.1-8b", false);
  impatient.call_deadline = absl::Seconds(3);
  impatient.peer_retry_after = absl::Minutes(1);
  Side hung = Make(impatient, shape);
  ASSERT_EQ(LoadAll(hung, hashes, slots)->loaded_prefix(), 256u);  // its client to the peer
  ASSERT_EQ(hung.agent->Stats().loaded_from_peer, 256u);
  ASSERT_EQ(kill(prefill, SIGSTOP), 0);
  ASSERT_TRUE(testutil::WaitStopped(prefill));
  const absl::Time start = absl::Now();
  auto h = LoadAll(hung, hashes, slots);
  const absl::Duration took = absl::Now() - start;
  EXPECT_EQ(h->loaded_prefix(), 256u);
  EXPECT_EQ(Exact(hung, hashes, slots), 256u);
  // A bound relative to load (a), the same blocks from the store: one deadline plus that
  // load, with room; waiting out each batch would take 26 deadlines.
  EXPECT_LT(took, a_took + 4 * impatient.call_deadline) << "each batch waited for the hung peer";
  auto h2 = LoadAll(hung, hashes, slots);
  EXPECT_EQ(h2->loaded_prefix(), 256u);
  EXPECT_EQ(hung.agent->Stats().peer_skips, 256u) << "the hung peer was asked again";
  kill(prefill, SIGCONT);

  // The prefill process dies (its directory entries outlive it until their TTL): loads fall
  // back to the store, block by block, and still every byte is right.
  kill(prefill, SIGKILL);
  int status = 0;
  waitpid(prefill, &status, 0);
  close(in[1]);
  std::fclose(from);
  Side after = Make(Options("llama-3.1-8b", false), shape);
  auto c = LoadAll(after, hashes, slots);
  EXPECT_EQ(c->loaded_prefix(), 256u);
  EXPECT_EQ(c->blocks()[0].source, LoadSource::kStore);
  EXPECT_EQ(after.agent->Stats().peer_fallbacks, 256u);
  EXPECT_EQ(Exact(after, hashes, slots), 256u);
}

TEST_F(GpuAgentTest, FreedBlocksAreUnpublishedAndStillOffloaded) {
  AgentOptions with_metrics = Options("unpublish", true);
  with_metrics.metrics_listen = "127.0.0.1:0";
  Side prefill = Make(with_metrics, SmallShape(KvLayout::kFlashAttn, KvDtype::kFp16));
  auto hashes = Hashes(*prefill.agent, 8, 900);
  const auto slots = Slots(0, 8);
  ASSERT_TRUE(prefill.agent->OnBlocksComputed(Compute(prefill, hashes, slots)).ok());
  ASSERT_TRUE(prefill.agent->Flush(absl::Seconds(30)).ok());
  client::ClientOptions co;
  co.address = node_->address();
  auto c = client::StoreClient::Connect(co);
  ASSERT_TRUE(c.ok());
  auto peers_of = [&](size_t i) {
    auto r = (*c)->LookupEach(prefill.agent->ns(), "", {&hashes[i], 1});
    EXPECT_TRUE(r.ok());
    return (*r)[0].peers;
  };
  // The entry carries the agent's address and its peer token (64 random hex characters).
  const auto at_prefill =
      ::testing::Field(&client::PeerLocation::address, prefill.agent->peer_address());
  EXPECT_THAT(peers_of(2), ElementsAre(at_prefill));
  EXPECT_THAT(peers_of(2), ElementsAre(::testing::Field(&client::PeerLocation::token,
                                                        ::testing::MatchesRegex("[0-9a-f]{64}"))));
  EXPECT_EQ(prefill.agent->Stats().published, 8u);
  auto metrics = testutil::HttpGet(prefill.agent->metrics_address(), "/metrics");
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  EXPECT_EQ(metrics->first, 200);
  EXPECT_THAT(metrics->second, ::testing::HasSubstr("strata_agent_offloaded_blocks_total 8\n"));
  EXPECT_THAT(metrics->second, ::testing::HasSubstr("strata_agent_published_blocks 8\n"));
  EXPECT_EQ(testutil::HttpGet(prefill.agent->metrics_address(), "/readyz")->first, 200);

  const std::vector<uint32_t> freed = {2, 3};
  ASSERT_TRUE(prefill.agent->OnBlocksFreed(freed).ok());
  const absl::Time until = absl::Now() + absl::Seconds(10);
  while (!peers_of(2).empty() && absl::Now() < until) absl::SleepFor(absl::Milliseconds(20));
  EXPECT_TRUE(peers_of(2).empty());
  EXPECT_TRUE(peers_of(3).empty());
  EXPECT_THAT(peers_of(4), ElementsAre(at_prefill));  // not freed
  EXPECT_EQ(prefill.agent->Stats().published, 6u);
  // The store still has the freed blocks (and a peer asking the prefill agent gets NOT_FOUND
  // for them, then the store's copy).
  Side decode = Make(Options("unpublish", false), SmallShape(KvLayout::kSplitKv, KvDtype::kFp16));
  auto loaded = LoadAll(decode, hashes, Slots(20, 8));
  EXPECT_EQ(loaded->loaded_prefix(), 8u);
  EXPECT_EQ(loaded->blocks()[2].source, LoadSource::kStore);
  EXPECT_EQ(loaded->blocks()[4].source, LoadSource::kPeer);
  EXPECT_EQ(Exact(decode, hashes, Slots(20, 8)), 8u);

  // The prefill engine loads block 2 into slot 5, which held block 5: block 5 is unpublished
  // at once, and a reader gets it from the store. Before, slot 5 stayed published as block 5,
  // and readers got block 2's bytes under block 5's hash, with a checksum that passed.
  const uint32_t five = 5;
  auto into_five = LoadAll(prefill, {hashes[2]}, {five});
  ASSERT_TRUE(into_five->blocks()[0].status.ok()) << into_five->blocks()[0].status;
  EXPECT_EQ(prefill.agent->Stats().published, 5u);
  const absl::Time gone = absl::Now() + absl::Seconds(10);
  while (!peers_of(5).empty() && absl::Now() < gone) absl::SleepFor(absl::Milliseconds(20));
  EXPECT_TRUE(peers_of(5).empty());
  Side again = Make(Options("unpublish", false), SmallShape(KvLayout::kSplitKv, KvDtype::kFp16));
  auto reloaded = LoadAll(again, hashes, Slots(20, 8));
  EXPECT_EQ(reloaded->blocks()[5].source, LoadSource::kStore);
  EXPECT_EQ(Exact(again, hashes, Slots(20, 8)), 8u);
  // One slot named twice in a load is refused.
  const std::vector<ChainHash> two = {hashes[0], hashes[1]};
  const std::vector<uint32_t> same = {five, five};
  EXPECT_EQ(prefill.agent->Load(two, same).status().code(), absl::StatusCode::kInvalidArgument);
}

// An agent shut down while its store has stopped answering (SIGSTOP: connections stay, no
// answer) gives its queued offloads up after Flush's call_deadline: the destructor takes a few
// deadlines, not one per queued batch (32 here; before, 32 s and more).
TEST_F(GpuAgentTest, ShutdownWithAStoreThatStoppedAnsweringIsBounded) {
  auto node = testutil::StartNode({"--warm-bytes", "256MiB", "--ucx-tls", "tcp"});
  ASSERT_TRUE(node.ok()) << node.status();
  AgentOptions o = Options("shutdown", false);
  o.store.address = (*node)->address();
  o.call_deadline = absl::Seconds(1);
  o.batch_blocks = 1;
  Side s = Make(o, SmallShape(KvLayout::kFlashAttn, KvDtype::kFp16));
  auto hashes = Hashes(*s.agent, 32, 31337);
  ASSERT_EQ(kill((*node)->pid(), SIGSTOP), 0);
  ASSERT_TRUE(testutil::WaitStopped((*node)->pid()));
  ASSERT_TRUE(s.agent->OnBlocksComputed(Compute(s, hashes, Slots(0, 32))).ok());
  const absl::Time start = absl::Now();
  s.agent.reset();
  const absl::Duration took = absl::Now() - start;
  kill((*node)->pid(), SIGCONT);
  EXPECT_LT(took, absl::Seconds(15)) << "queued offloads waited on the store one by one";
}

// A store that stops answering between a load's lookup and its reads (SIGSTOP) costs the load
// one call (call_deadline), not one per batch: the blocks after the first failed batch fail at
// once, for the engine to recompute. Before, every single-block batch after it waited 1 s.
TEST_F(GpuAgentTest, ALoadFromAStoreThatStoppedAnsweringCostsOneDeadline) {
  auto node = testutil::StartNode({"--warm-bytes", "256MiB", "--ucx-tls", "tcp"});
  ASSERT_TRUE(node.ok()) << node.status();
  AgentOptions o = Options("hung-store", false);
  o.store.address = (*node)->address();
  o.call_deadline = absl::Seconds(1);
  o.batch_blocks = 1;
  // Many batches, so that the freeze lands before the last however late it comes.
  constexpr uint32_t kBlocks = 256;
  KvPoolSpec shape = SmallShape(KvLayout::kFlashAttn, KvDtype::kFp16);
  shape.num_blocks = kBlocks;
  Side prefill = Make(o, shape);
  auto hashes = Hashes(*prefill.agent, kBlocks, 4242);
  ASSERT_TRUE(prefill.agent->OnBlocksComputed(Compute(prefill, hashes, Slots(0, kBlocks))).ok());
  ASSERT_TRUE(prefill.agent->Flush(absl::Seconds(30)).ok());
  Side decode = Make(o, shape);
  // Frozen right after the load's lookup: a few reads may get through before the signal lands.
  const uint64_t lookups = testutil::OpCount(**node, "lookup");
  std::thread freezer([&] {
    for (absl::Time end = absl::Now() + absl::Seconds(20); absl::Now() < end;) {
      if (testutil::OpCount(**node, "lookup") > lookups) break;
      absl::SleepFor(absl::Milliseconds(1));
    }
    kill((*node)->pid(), SIGSTOP);
  });
  const absl::Time start = absl::Now();
  auto loaded = LoadAll(decode, hashes, Slots(0, kBlocks));
  const absl::Duration took = absl::Now() - start;
  freezer.join();
  kill((*node)->pid(), SIGCONT);
  EXPECT_LT(loaded->loaded_prefix(), kBlocks) << "every read got through before the freeze";
  size_t timed_out = 0;
  for (const BlockLoad& b : loaded->blocks()) {
    timed_out += b.status.code() == absl::StatusCode::kDeadlineExceeded;
  }
  EXPECT_EQ(timed_out, kBlocks - loaded->loaded_prefix());
  // Not a speed check: a few deadlines (the lookup, the read that timed out), not one per
  // batch after it (hundreds).
  EXPECT_LT(took, 8 * o.call_deadline) << "the load waited on the store batch by batch";
}

TEST_F(GpuAgentTest, BlocksFreedRightAfterComputeAreCapturedBeforeTheSlotIsReused) {
  AgentOptions o = Options("capture", false);
  Side prefill = Make(o, SmallShape(KvLayout::kCrossLayer, KvDtype::kBf16));
  auto hashes = Hashes(*prefill.agent, 30, 77);
  const auto slots = Slots(0, 30);
  ASSERT_TRUE(prefill.agent->OnBlocksComputed(Compute(prefill, hashes, slots)).ok());
  ASSERT_TRUE(prefill.agent->OnBlocksFreed(slots).ok());
  // The engine reuses the slots at once: scribble over them.
  for (auto [data, size] : prefill.pool.Tensors()) std::memset(data, 0xA5, size);
  ASSERT_TRUE(prefill.agent->Flush(absl::Seconds(30)).ok());
  const AgentStats st = prefill.agent->Stats();
  EXPECT_EQ(st.offloaded, 30u);
  EXPECT_EQ(st.offload_dropped, 0u);
  Side decode = Make(Options("capture", false), SmallShape(KvLayout::kFlashAttn, KvDtype::kBf16));
  auto loaded = LoadAll(decode, hashes, Slots(1, 30));
  EXPECT_EQ(loaded->loaded_prefix(), 30u);
  EXPECT_EQ(Exact(decode, hashes, Slots(1, 30)), 30u);
}

TEST_F(GpuAgentTest, PerBlockResultsLetTheEngineRecomputeWhatFailed) {
  Side prefill = Make(Options("partial", false), SmallShape(KvLayout::kFlashAttn, KvDtype::kFp16));
  auto hashes = Hashes(*prefill.agent, 10, 5);
  // Only the first 6 blocks of the prompt were ever computed.
  std::vector<ChainHash> first(hashes.begin(), hashes.begin() + 6);
  ASSERT_TRUE(prefill.agent->OnBlocksComputed(Compute(prefill, first, Slots(0, 6))).ok());
  ASSERT_TRUE(prefill.agent->Flush(absl::Seconds(30)).ok());
  Side decode = Make(Options("partial", false), SmallShape(KvLayout::kFlashAttn, KvDtype::kFp16));
  EXPECT_EQ(*decode.agent->MatchedBlocks(hashes), 6u);
  auto loaded = LoadAll(decode, hashes, Slots(0, 10));
  EXPECT_EQ(loaded->loaded_prefix(), 6u);
  for (size_t i = 0; i < 10; ++i) {
    EXPECT_EQ(loaded->blocks()[i].status.code(),
              i < 6 ? absl::StatusCode::kOk : absl::StatusCode::kNotFound)
        << i;
  }
  // Bad requests are refused up front, with no handle.
  EXPECT_EQ(decode.agent->Load(hashes, Slots(0, 9)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(decode.agent->Load(first, Slots(30, 6)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(decode.agent->OnBlocksComputed({{ComputedBlock{32, hashes[0], 0, 0}}}).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(decode.agent->RegisterKvPool(decode.pool.spec()).code(),
            absl::StatusCode::kFailedPrecondition);
  // A scheduler without a pool computes the same namespace and finds the same blocks.
  AgentOptions o = Options("partial", false);
  KvPoolSpec shape = SmallShape(KvLayout::kFlashAttn, KvDtype::kFp16);
  EXPECT_EQ(ComputeNamespaceId(AgentNamespace(o, shape)), decode.agent->ns().id);
  shape.kv_heads = 4;
  EXPECT_NE(ComputeNamespaceId(AgentNamespace(o, shape)), decode.agent->ns().id);
}

// A load whose slots the engine frees (request aborted) never writes them afterwards.
TEST_F(GpuAgentTest, FreedSlotsAreNeverWrittenByALoadStillRunning) {
  Side prefill = Make(Options("revoke", false), SmallShape(KvLayout::kFlashAttn, KvDtype::kFp16));
  auto hashes = Hashes(*prefill.agent, 30, 31);
  ASSERT_TRUE(prefill.agent->OnBlocksComputed(Compute(prefill, hashes, Slots(0, 30))).ok());
  ASSERT_TRUE(prefill.agent->Flush(absl::Seconds(30)).ok());
  Side decode = Make(Options("revoke", false), SmallShape(KvLayout::kFlashAttn, KvDtype::kFp16));
  auto handle = decode.agent->Load(hashes, Slots(1, 30));
  ASSERT_TRUE(handle.ok());
  ASSERT_TRUE(decode.agent->OnBlocksFreed(Slots(1, 30)).ok());
  // The slots are the engine's again: it writes other KV there at once.
  for (auto [data, size] : decode.pool.Tensors()) std::memset(data, 0x3C, size);
  ASSERT_TRUE((*handle)->Wait(absl::Seconds(30)));
  size_t cancelled = 0;
  for (const BlockLoad& b : (*handle)->blocks()) {
    EXPECT_TRUE(b.status.ok() || b.status.code() == absl::StatusCode::kCancelled) << b.status;
    cancelled += b.status.code() == absl::StatusCode::kCancelled;
  }
  EXPECT_EQ(Exact(decode, hashes, Slots(1, 30)), 0u);  // no stored block landed afterwards
  const uint8_t* first = decode.pool.Element(0, 0, 1, 0, 0, 0);
  EXPECT_EQ(first[0], 0x3C);
  // Loading again into live slots works as usual.
  auto again = LoadAll(decode, hashes, Slots(1, 30));
  EXPECT_EQ(again->loaded_prefix(), 30u);
  EXPECT_EQ(Exact(decode, hashes, Slots(1, 30)), 30u);
  std::printf("load into freed slots: %zu of 30 blocks cancelled\n", cancelled);
}

// Finite fp16 KV for block `hash` (quantization refuses NaN and infinity).
std::vector<uint8_t> FiniteKv(const ChainHash& hash, uint64_t bytes) {
  std::vector<uint8_t> raw(bytes);
  examples::BlockKv(hash, raw.data(), bytes);
  for (uint64_t i = 0; i + 1 < bytes; i += 2) {
    const float x = (static_cast<int>(raw[i]) - 128) / 32.0f + raw[i + 1] / 4096.0f;
    const uint16_t h = FloatToHalf(x);
    std::memcpy(&raw[i], &h, 2);
  }
  return raw;
}

// transfer_quant: blocks are gathered as int8 codes + scales, stored at about half the bytes
// and restored on load — from the store and from a peer — to exactly what the reference codec
// restores; agents without it do not see those blocks; a NaN block alone stays behind.
TEST_F(GpuAgentTest, QuantizedTransferRestoresWhatTheReferenceCodecRestores) {
  AgentOptions o = Options("quantized", true);
  o.transfer_quant = KvQuant::kInt8;
  Side prefill = Make(o, SmallShape(KvLayout::kFlashAttn, KvDtype::kFp16));
  const uint64_t bb = prefill.pool.pool().block_bytes;
  // "Computes" block `hash` into `slot`: finite KV, or one NaN in it.
  auto compute = [&](const ChainHash& hash, uint32_t slot, bool nan) {
    std::vector<uint8_t> kv = FiniteKv(hash, bb);
    if (nan) {
      const uint16_t quiet_nan = 0x7e00;
      std::memcpy(kv.data() + 100, &quiet_nan, 2);
    }
    EXPECT_TRUE(prefill.twin->Scatter(kv.data(), {&slot, 1}).ok());
  };
  auto hashes = Hashes(*prefill.agent, 12, 4242);
  std::vector<ComputedBlock> computed;
  for (uint32_t i = 0; i < 12; ++i) {
    compute(hashes[i], i, i == 11);
    computed.push_back({i, hashes[i], i, 0});
  }
  ASSERT_TRUE(prefill.agent->OnBlocksComputed(computed).ok());
  ASSERT_TRUE(prefill.agent->Flush(absl::Seconds(30)).ok());
  const AgentStats st = prefill.agent->Stats();
  EXPECT_EQ(st.offloaded, 11u);
  EXPECT_EQ(st.offload_failed, 1u);  // the NaN block
  const KvQuantSpec spec{KvQuant::kInt8, KvDtype::kFp16, 64};
  EXPECT_EQ(st.bytes_offloaded, 11 * QuantizedPayloadSize(spec, bb));
  EXPECT_LT(QuantizedPayloadSize(spec, bb), bb * 6 / 10);
  // Freed right after compute, a NaN block among them: the freeing succeeds and only that
  // block misses the store (before, the whole captured batch was lost and OnBlocksFreed
  // failed).
  auto more = Hashes(*prefill.agent, 16, 4343);
  std::vector<ComputedBlock> again;
  std::vector<uint32_t> freed;
  for (uint32_t i = 0; i < 16; ++i) {
    const uint32_t slot = 12 + i;
    compute(more[i], slot, i == 5);
    again.push_back({slot, more[i], i, 0});
    freed.push_back(slot);
  }
  ASSERT_TRUE(prefill.agent->OnBlocksComputed(again).ok());
  EXPECT_TRUE(prefill.agent->OnBlocksFreed(freed).ok());
  ASSERT_TRUE(prefill.agent->Flush(absl::Seconds(30)).ok());
  EXPECT_EQ(prefill.agent->Stats().offloaded, 11u + 15u);
  EXPECT_EQ(prefill.agent->Stats().offload_failed, 2u);

  for (bool peer : {false, true}) {
    SCOPED_TRACE(peer ? "from the peer" : "from the store");
    AgentOptions d = Options("quantized", false);
    d.transfer_quant = KvQuant::kInt8;
    d.prefer_peers = peer;
    Side decode = Make(d, SmallShape(KvLayout::kBlockFirst, KvDtype::kFp16));
    auto loaded = LoadAll(decode, hashes, Slots(20, 12));
    EXPECT_EQ(loaded->loaded_prefix(), 11u);
    EXPECT_EQ(loaded->blocks()[0].source, peer ? LoadSource::kPeer : LoadSource::kStore);
    size_t exact = 0;
    for (uint32_t i = 0; i < 11; ++i) {
      std::string packed;
      ASSERT_TRUE(QuantizeKv(spec, FiniteKv(hashes[i], bb), &packed).ok());
      std::vector<uint8_t> want(bb), got(bb);
      ASSERT_TRUE(
          DequantizeKv(spec, {reinterpret_cast<const uint8_t*>(packed.data()), packed.size()}, want)
              .ok());
      const uint32_t slot = 20 + i;
      ASSERT_TRUE(decode.twin->Gather({&slot, 1}, got.data()).ok());
      exact += want == got;
    }
    EXPECT_EQ(exact, 11u);
  }
  // An agent moving exact blocks lives in another namespace: it finds none of these.
  Side exact_agent =
      Make(Options("quantized", false), SmallShape(KvLayout::kFlashAttn, KvDtype::kFp16));
  EXPECT_EQ(*exact_agent.agent->MatchedBlocks(hashes), 0u);
  // Quantizing needs fp16 or bf16.
  AgentOptions fp8 = Options("quantized", false);
  fp8.transfer_quant = KvQuant::kInt8;
  auto fp8_agent = GpuAgent::Create(fp8);
  ASSERT_TRUE(fp8_agent.ok());
  auto fp8_pool = HostKvPool::Create(SmallShape(KvLayout::kFlashAttn, KvDtype::kFp8));
  EXPECT_EQ((*fp8_agent)->RegisterKvPool(fp8_pool->spec()).code(),
            absl::StatusCode::kInvalidArgument);
}

// Importance scores travel with offloaded blocks to the store's cost-aware policy: under
// pressure the node evicts the blocks the engine scored 0 and keeps those it scored 1.
TEST_F(GpuAgentTest, ImportanceScoresDecideWhatTheCostPolicyKeeps) {
  auto small = testutil::StartNode({"--warm-bytes", "8MiB", "--max-block-bytes", "1MiB",
                                    "--warm-policy", "cost", "--ucx-tls", "tcp"});
  ASSERT_TRUE(small.ok()) << small.status();
  AgentOptions o = Options("importance", false);
  o.store.address = (*small)->address();
  KvPoolSpec shape = SmallShape(KvLayout::kFlashAttn, KvDtype::kFp16);
  shape.kv_heads = 8;
  shape.head_dim = 128;  // 256 KiB blocks: the node holds about 32
  Side prefill = Make(o, shape);
  // 40 one-block prompts (each block its own chain, so all are leaves of equal depth): 10
  // scored 1, 10 scored 0, then 20 more scored 0.5 that push some out.
  std::vector<ChainHash> hashes;
  for (uint32_t p = 0; p < 40; ++p) hashes.push_back(Hashes(*prefill.agent, 1, 5000 + p)[0]);
  for (uint32_t group = 0; group < 4; ++group) {
    std::vector<ChainHash> part(hashes.begin() + group * 10, hashes.begin() + group * 10 + 10);
    std::vector<ComputedBlock> computed = Compute(prefill, part, Slots(group * 5, 10));
    for (ComputedBlock& c : computed) {
      c.depth = 0;
      c.importance = group == 0 ? 1.0f : group == 1 ? 0.0f : 0.5f;
    }
    ASSERT_TRUE(prefill.agent->OnBlocksComputed(computed).ok());
    ASSERT_TRUE(prefill.agent->Flush(absl::Seconds(30)).ok());
  }
  client::ClientOptions co;
  co.address = (*small)->address();
  auto c = client::StoreClient::Connect(co);
  ASSERT_TRUE(c.ok());
  const uint64_t evictions = (*c)->Stats()->evictions;
  EXPECT_GT(evictions, 0u);
  auto present = [&](size_t begin) {
    auto r = (*c)->LookupEach(prefill.agent->ns(), "", {hashes.data() + begin, 10});
    size_t n = 0;
    for (const client::BlockLocation& l : *r) n += l.tier != client::Tier::kUnknown;
    return n;
  };
  EXPECT_EQ(present(0), 10u);  // scored 1: all kept
  // Every eviction took a block scored 0 (fewer than 10 had to go).
  EXPECT_EQ(present(10), 10 - std::min<uint64_t>(evictions, 10));
}

}  // namespace
}  // namespace strata::gpu_agent
