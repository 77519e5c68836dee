// strata-engine-example: an inference engine stand-in around the GPU agent, with the host twin
// in place of a GPU and a real model's KV shape (llama-3.1-8b: 32 layers, 8 kv heads, head
// dim 128, fp16, 16-token blocks = 2 MiB per block).
//
//   --role prefill  "computes" a prompt's KV into its paged pool (flash-attn layout), hands the
//                   blocks to its agent (OnBlocksComputed: offload to the store + publish),
//                   prints "READY <peer address>" and serves peers until stdin closes.
//   --role decode   another process with its own pool (block-first layout) and agent: looks
//                   the prompt up, loads it (from the prefill agent's pool when
//                   --prefer-peers, else from the store), polling like an engine step would,
//                   and checks every byte.
//   no --role       the whole life cycle: a local strata-storenode (unless --node), a prefill
//                   process, a decode process loading from the store, one loading from the
//                   prefill peer; then the prefill frees its blocks and exits.
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <iostream>
#include <string>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "engine_kv.h"
#include "strata/client/local_node.h"
#include "strata/common/kv_shape.h"
#include "strata/common/logging.h"
#include "strata/common/malloc_tuning.h"
#include "strata/gpu_agent/agent.h"
#include "strata/gpu_agent/copy_engine.h"
#include "strata/gpu_agent/host_pool.h"

extern char** environ;

namespace strata::examples {
namespace {

using gpu_agent::GpuAgent;
using gpu_agent::HostKvPool;

struct Flags {
  std::string role;
  std::string node;
  std::string model = "llama-3.1-8b";
  std::string dtype = "fp16";
  uint32_t block_tokens = 16;
  uint32_t prompt_tokens = 4096;
  std::string layout;  // default: flash-attn for prefill, block-first for decode
  bool prefer_peers = true;
  std::string expect = "any";  // decode: every block must come from "peer" / "store" / "any"
};

std::vector<uint32_t> PromptTokens(uint32_t n) {
  std::vector<uint32_t> t(n);
  for (uint32_t i = 0; i < n; ++i) t[i] = static_cast<uint32_t>((i * 2654435761ull + 17) % 128000);
  return t;
}

struct Engine {
  HostKvPool pool;
  std::unique_ptr<GpuAgent> agent;
  std::unique_ptr<gpu_agent::CopyEngine> twin;  // the "model": writes and reads the pool
  std::vector<ChainHash> hashes;
};

absl::StatusOr<Engine> StartEngine(const Flags& f, const std::string& default_layout,
                                   bool serve_peers) {
  auto dtype = ParseKvDtype(f.dtype);
  if (!dtype.ok()) return dtype.status();
  auto shape = KvShapeForModel(f.model, *dtype);
  if (!shape.ok()) return shape.status();
  auto layout = gpu_agent::ParseKvLayout(f.layout.empty() ? default_layout : f.layout);
  if (!layout.ok()) return layout.status();
  gpu_agent::KvPoolSpec spec;
  spec.layout = *layout;
  spec.layers = shape->layers;
  spec.kv_heads = shape->kv_heads;
  spec.head_dim = shape->head_dim;
  spec.dtype = *dtype;
  spec.block_tokens = f.block_tokens;
  spec.num_blocks = f.prompt_tokens / f.block_tokens + 8;
  absl::StatusOr<HostKvPool> pool = HostKvPool::Create(spec);
  if (!pool.ok()) return pool.status();
  gpu_agent::AgentOptions o;
  o.store.address = f.node;
  o.model_id = shape->model;
  o.prefer_peers = f.prefer_peers;
  o.peer_listen = serve_peers ? "127.0.0.1:0" : "";
  auto agent = GpuAgent::Create(o);
  if (!agent.ok()) return agent.status();
  if (absl::Status s = (*agent)->RegisterKvPool(pool->spec()); !s.ok()) return s;
  auto twin = gpu_agent::CreateHostCopyEngine(pool->pool());
  if (!twin.ok()) return twin.status();
  auto hashes = (*agent)->ns().HashTokens(PromptTokens(f.prompt_tokens));
  if (!hashes.ok()) return hashes.status();
  return Engine{std::move(*pool), std::move(*agent), std::move(*twin), std::move(*hashes)};
}

double Since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

int Prefill(const Flags& f) {
  auto e = StartEngine(f, "flash-attn", /*serve_peers=*/true);
  if (!e.ok()) {
    std::fprintf(stderr, "prefill: %s\n", e.status().ToString().c_str());
    return 1;
  }
  const uint64_t bb = e->pool.pool().block_bytes;
  std::vector<uint8_t> block(bb);
  std::vector<gpu_agent::ComputedBlock> computed;
  for (uint32_t i = 0; i < e->hashes.size(); ++i) {
    BlockKv(e->hashes[i], block.data(), bb);  // the forward pass, as far as KV goes
    const uint32_t slot = i;
    if (absl::Status s = e->twin->Scatter(block.data(), {&slot, 1}); !s.ok()) return 1;
    computed.push_back({slot, e->hashes[i], i, 1.0f});
  }
  auto t0 = std::chrono::steady_clock::now();
  if (absl::Status s = e->agent->OnBlocksComputed(computed); !s.ok()) return 1;
  absl::Status flushed = e->agent->Flush(absl::Seconds(120));
  const double secs = Since(t0);
  gpu_agent::AgentStats st = e->agent->Stats();
  std::fprintf(stderr,
               "prefill: %lu of %zu blocks (%u tokens, %.1f MiB) offloaded in %.2f s (%.2f GB/s), "
               "%lu published at %s: %s\n",
               static_cast<unsigned long>(st.offloaded), computed.size(), f.prompt_tokens,
               computed.size() * bb / 1048576.0, secs, st.offloaded * bb / secs / 1e9,
               static_cast<unsigned long>(st.published), e->agent->peer_address().c_str(),
               flushed.ToString().c_str());
  if (!flushed.ok() || st.offloaded != computed.size()) return 1;
  std::printf("READY %s\n", e->agent->peer_address().c_str());
  std::fflush(stdout);
  std::string line;
  while (std::getline(std::cin, line)) {
  }
  // The request finished: the engine frees the slots; the agent unpublishes them.
  std::vector<uint32_t> slots;
  for (const auto& c : computed) slots.push_back(c.block_id);
  e->agent->OnBlocksFreed(slots).IgnoreError();
  std::fprintf(stderr, "prefill: served %lu blocks to peers; freed, exiting\n",
               static_cast<unsigned long>(e->agent->Stats().served_to_peers));
  return 0;
}

int Decode(const Flags& f) {
  auto e = StartEngine(f, "block-first", /*serve_peers=*/false);
  if (!e.ok()) {
    std::fprintf(stderr, "decode: %s\n", e.status().ToString().c_str());
    return 1;
  }
  const uint64_t bb = e->pool.pool().block_bytes;
  auto matched = e->agent->MatchedBlocks(e->hashes);
  if (!matched.ok()) return 1;
  std::vector<uint32_t> slots;
  for (uint32_t i = 0; i < e->hashes.size(); ++i)
    slots.push_back(e->pool.pool().num_blocks - 1 - i);
  auto t0 = std::chrono::steady_clock::now();
  auto handle = e->agent->Load(e->hashes, slots);
  if (!handle.ok()) return 1;
  uint64_t steps = 0;  // an engine keeps stepping other requests while the load runs
  while (!(*handle)->Done()) {
    ++steps;
    usleep(200);
  }
  const double secs = Since(t0);
  uint64_t from_peer = 0, from_store = 0, failed = 0, wrong = 0;
  std::vector<uint8_t> want(bb), got(bb);
  for (size_t i = 0; i < slots.size(); ++i) {
    const gpu_agent::BlockLoad& b = (*handle)->blocks()[i];
    if (!b.status.ok()) {
      ++failed;
      continue;
    }
    (b.source == gpu_agent::LoadSource::kPeer ? from_peer : from_store) += 1;
    BlockKv(e->hashes[i], want.data(), bb);
    if (!e->twin->Gather({&slots[i], 1}, got.data()).ok() || want != got) ++wrong;
  }
  std::fprintf(stderr,
               "decode: lookup matched %zu/%zu blocks; loaded %zu blocks (%.1f MiB) in %.3f s "
               "(%.2f GB/s) over %lu engine steps: %lu from the prefill peer, %lu from the "
               "store, %lu failed, %lu wrong blocks\n",
               *matched, e->hashes.size(), (*handle)->loaded_prefix(),
               (*handle)->loaded_prefix() * bb / 1048576.0, secs,
               (*handle)->loaded_prefix() * bb / secs / 1e9, static_cast<unsigned long>(steps),
               static_cast<unsigned long>(from_peer), static_cast<unsigned long>(from_store),
               static_cast<unsigned long>(failed), static_cast<unsigned long>(wrong));
  const bool source_ok = f.expect == "any" || (f.expect == "peer" && from_store == 0) ||
                         (f.expect == "store" && from_peer == 0);
  return failed == 0 && wrong == 0 && source_ok ? 0 : 1;
}

// Runs this binary with `args`; returns its exit code.
int RunSelf(const char* self, std::vector<std::string> args) {
  std::vector<char*> argv = {const_cast<char*>(self)};
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = 0;
  if (posix_spawn(&pid, self, nullptr, nullptr, argv.data(), environ) != 0) return 127;
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
}

int LifeCycle(const char* self, Flags f) {
  std::unique_ptr<client::LocalNode> local;
  if (f.node.empty()) {
    const std::string dir = std::string(self).substr(0, std::string(self).rfind('/') + 1);
    auto started =
        client::LocalNode::Start(dir + "strata-storenode",
                                 {"--warm-bytes", "1GiB", "--max-block-bytes", "8MiB", "--ucx-tls",
                                  "tcp", "--warm-prefault", "--log-level", "warn"},
                                 absl::Seconds(30));
    if (!started.ok()) {
      std::fprintf(stderr, "engine-example: %s\n", started.status().ToString().c_str());
      return 1;
    }
    local = std::move(*started);
    f.node = local->address();
  }
  std::vector<std::string> common = {
      "--node",  f.node,  "--model",         f.model,
      "--dtype", f.dtype, "--prompt-tokens", absl::StrCat(f.prompt_tokens)};
  // The prefill process: its stdout comes back through a pipe, its stdin is our pipe's end.
  int out[2], in[2];
  if (pipe(out) != 0 || pipe(in) != 0) return 1;
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, out[1], 1);
  posix_spawn_file_actions_adddup2(&fa, in[0], 0);
  posix_spawn_file_actions_addclose(&fa, out[0]);
  posix_spawn_file_actions_addclose(&fa, in[1]);
  std::vector<std::string> pargs = {"--role", "prefill"};
  pargs.insert(pargs.end(), common.begin(), common.end());
  std::vector<char*> argv = {const_cast<char*>(self)};
  for (std::string& a : pargs) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t prefill = 0;
  const int spawned = posix_spawn(&prefill, self, &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  if (spawned != 0) return 1;
  close(out[1]);
  close(in[0]);
  FILE* from_prefill = fdopen(out[0], "r");
  char line[512] = {};
  const bool ready = std::fgets(line, sizeof(line), from_prefill) != nullptr &&
                     std::string(line).rfind("READY ", 0) == 0;
  int rc = ready ? 0 : 1;
  if (ready) {
    std::vector<std::string> store = {"--role", "decode", "--prefer-peers=false", "--expect",
                                      "store"};
    store.insert(store.end(), common.begin(), common.end());
    rc |= RunSelf(self, store);
    std::vector<std::string> peer = {"--role", "decode", "--expect", "peer"};
    peer.insert(peer.end(), common.begin(), common.end());
    rc |= RunSelf(self, peer);
  }
  close(in[1]);  // the prefill's request is done
  int status = 0;
  waitpid(prefill, &status, 0);
  std::fclose(from_prefill);
  rc |= WIFEXITED(status) ? WEXITSTATUS(status) : 1;
  std::fprintf(stderr, "engine-example: %s\n", rc == 0 ? "OK" : "FAILED");
  return rc;
}

}  // namespace
}  // namespace strata::examples

int main(int argc, char** argv) {
  strata::TuneMalloc(
      strata::MallocTuning::Client());  // what an engine process opts into (malloc_tuning.h)
  strata::InitLogging("warn", "engine-example").IgnoreError();
  strata::examples::Flags f;
  CLI::App app{"Inference-engine stand-in around the Strata GPU agent (host twin)"};
  app.add_option("--role", f.role, "prefill | decode (default: the whole life cycle)");
  app.add_option("--node", f.node, "store node HOST:PORT (default: start a local one)");
  app.add_option("--model", f.model, "model preset for the KV shape");
  app.add_option("--dtype", f.dtype, "KV dtype: fp16, bf16, fp8");
  app.add_option("--block-tokens", f.block_tokens, "tokens per block")
      ->check(CLI::Range(1u, 4096u));
  app.add_option("--prompt-tokens", f.prompt_tokens, "prompt length")
      ->check(CLI::Range(1u, 1u << 20));
  app.add_option("--layout", f.layout, "pool layout: flash-attn, block-first, split-kv, ...");
  app.add_option("--prefer-peers", f.prefer_peers,
                 "decode: load from a peer agent when one has it");
  app.add_option("--expect", f.expect, "decode: peer | store | any");
  CLI11_PARSE(app, argc, argv);
  if (f.role == "prefill") return strata::examples::Prefill(f);
  if (f.role == "decode") return strata::examples::Decode(f);
  return strata::examples::LifeCycle(argv[0], f);
}
