// `strata demo`: the worked example. A prefill process computes (here: generates) the KV
// blocks of a prompt for a real model shape and stores them; a decode process — another
// process with its own client — looks up the next turn of the same conversation, fetches
// the stored prefix, checks every byte and reports the hit ratio and throughput.
// Without --node it starts a local strata-storenode first and stops it afterwards.
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "cli_support.h"
#include "commands.h"
#include "strata/client/local_node.h"
#include "strata/common/byte_size.h"
#include "strata/common/kv_shape.h"
#include "strata/common/mapped_buffer.h"

extern char** environ;

namespace strata::cli {
namespace {

struct DemoFlags {
  std::string node;
  std::string model = "llama-3.1-8b";
  std::string dtype = "fp16";
  uint32_t block_tokens = 16;
  uint32_t prompt_tokens = 4096;
  uint32_t followup_tokens = 512;
  std::string role;  // internal: prefill | decode
};

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point since) {
  return std::chrono::duration<double>(Clock::now() - since).count();
}

// A conversation's token ids: a shared system prompt followed by this chat's turns.
std::vector<uint32_t> ConversationTokens(uint32_t n) {
  std::vector<uint32_t> t(n);
  for (uint32_t i = 0; i < n; ++i) t[i] = static_cast<uint32_t>((i * 2654435761ull + 17) % 128000);
  return t;
}

// Registers an engine-style KV pool for zero-copy transfers; without a UCX data plane (or
// when registration fails) the blocks simply travel the other way, so it only says so.
void RegisterPool(client::StoreClient& client, const MappedBuffer& pool) {
  absl::Status s = client.RegisterMemory(pool.data(), pool.size());
  if (!s.ok() && s.code() != absl::StatusCode::kFailedPrecondition) {
    std::fprintf(stderr, "demo: KV pool not registered (%s); using bounce buffers\n",
                 s.ToString().c_str());
  }
}

absl::StatusOr<std::pair<std::unique_ptr<client::StoreClient>, client::Namespace>> OpenDemo(
    const DemoFlags& f, uint64_t* block_bytes) {
  auto dtype = ParseKvDtype(f.dtype);
  if (!dtype.ok()) return dtype.status();
  auto shape = KvShapeForModel(f.model, *dtype);
  if (!shape.ok()) return shape.status();
  *block_bytes = KvBytesPerToken(*shape) * f.block_tokens;
  NodeFlags nf;
  nf.node = f.node;
  nf.model_id = shape->model;
  nf.dtype = f.dtype;
  nf.layout = "vllm-flash:[2,num_blocks,block_tokens,kv_heads,head_dim]";
  nf.block_tokens = f.block_tokens;
  nf.block_bytes = absl::StrCat(*block_bytes);
  return Open(nf);
}

int RunPrefill(const DemoFlags& f) {
  uint64_t block_bytes = 0;
  auto opened = OpenDemo(f, &block_bytes);
  if (!opened.ok()) return Fail("demo prefill", opened.status());
  auto& [client, ns] = *opened;
  std::vector<uint32_t> tokens = ConversationTokens(f.prompt_tokens);
  auto hashes = ns.HashTokens(tokens);
  if (!hashes.ok()) return Fail("demo prefill", hashes.status());
  auto before = client->Lookup(ns, "", *hashes);
  if (!before.ok()) return Fail("demo prefill", before.status());
  std::printf(
      "[prefill pid %d] prompt of %u tokens = %zu blocks of %s (%s, %u tokens/block); "
      "%zu already stored; data plane: %s\n",
      getpid(), f.prompt_tokens, hashes->size(), FormatByteSize(block_bytes).c_str(),
      f.model.c_str(), f.block_tokens, before->matched_blocks,
      client->DataPlaneDescription().c_str());
  // "Compute" the KV of every block (bytes derived from its chain hash) and store it. The
  // memory plays the engine's KV pool: huge pages, registered once for zero-copy transfers.
  absl::StatusOr<MappedBuffer> kv = MappedBuffer::Map(block_bytes * hashes->size(), false);
  if (!kv.ok()) return Fail("demo prefill", kv.status());
  RegisterPool(*client, *kv);
  std::vector<client::BlockWrite> writes;
  for (size_t i = 0; i < hashes->size(); ++i) {
    FillBlock((*hashes)[i], kv->data() + i * block_bytes, block_bytes);
    writes.push_back({(*hashes)[i], kv->data() + i * block_bytes, block_bytes});
  }
  auto start = Clock::now();
  auto put = client->Put(ns, "", writes);
  double secs = Seconds(start);
  if (!put.ok()) return Fail("demo prefill", put.status());
  std::printf(
      "[prefill pid %d] stored %zu blocks (%zu already present), %s in %.3f s = "
      "%.2f GB/s\n",
      getpid(), put->stored, put->already_present, FormatByteSize(kv->size()).c_str(), secs,
      kv->size() / secs / 1e9);
  return put->stored + put->already_present == writes.size() ? 0 : 1;
}

int RunDecode(const DemoFlags& f) {
  uint64_t block_bytes = 0;
  auto opened = OpenDemo(f, &block_bytes);
  if (!opened.ok()) return Fail("demo decode", opened.status());
  auto& [client, ns] = *opened;
  // The next turn: the whole earlier conversation plus the user's new message.
  std::vector<uint32_t> tokens = ConversationTokens(f.prompt_tokens + f.followup_tokens);
  auto hashes = ns.HashTokens(tokens);
  if (!hashes.ok()) return Fail("demo decode", hashes.status());
  auto found = client->Lookup(ns, "", *hashes);
  if (!found.ok()) return Fail("demo decode", found.status());
  size_t hit = found->matched_blocks;
  std::printf(
      "[decode pid %d] next turn has %zu tokens = %zu full blocks; lookup: %zu stored "
      "(prefix hit ratio %.1f%%)\n",
      getpid(), tokens.size(), hashes->size(), hit, 100.0 * hit / hashes->size());
  absl::StatusOr<MappedBuffer> buf =
      MappedBuffer::Map(std::max<uint64_t>(1, block_bytes * hit), false);
  if (!buf.ok()) return Fail("demo decode", buf.status());
  RegisterPool(*client, *buf);
  std::vector<client::BlockRead> reads;
  for (size_t i = 0; i < hit; ++i)
    reads.push_back({(*hashes)[i], buf->data() + i * block_bytes, block_bytes});
  auto start = Clock::now();
  auto got = client->Get(ns, "", reads);
  double secs = Seconds(start);
  if (!got.ok()) return Fail("demo decode", got.status());
  size_t wrong = 0;
  std::vector<uint8_t> want(block_bytes);
  for (size_t i = 0; i < hit; ++i) {
    if (!got->blocks[i].ok()) continue;
    FillBlock(reads[i].hash, want.data(), block_bytes);
    if (std::memcmp(want.data(), buf->data() + i * block_bytes, block_bytes) != 0) ++wrong;
  }
  uint64_t reused_tokens = static_cast<uint64_t>(hit) * f.block_tokens;
  std::printf(
      "[decode pid %d] fetched %zu blocks, %s in %.3f s = %.2f GB/s; %zu blocks with "
      "wrong bytes\n",
      getpid(), got->fetched, FormatByteSize(block_bytes * hit).c_str(), secs,
      block_bytes * hit / std::max(secs, 1e-9) / 1e9, wrong);
  std::printf("[decode pid %d] reused KV of %llu tokens; prefill left to compute: %zu tokens\n",
              getpid(), static_cast<unsigned long long>(reused_tokens),
              tokens.size() - reused_tokens);
  size_t expected = f.prompt_tokens / f.block_tokens;
  bool ok = wrong == 0 && got->fetched == hit && hit == expected;
  if (!ok) std::printf("[decode] FAILED: expected %zu verified blocks\n", expected);
  return ok ? 0 : 1;
}

std::string SelfPath() { return std::filesystem::read_symlink("/proc/self/exe").string(); }

// Runs argv to completion; returns its exit code (or 128+signal).
int RunChild(std::vector<std::string> argv) {
  std::vector<char*> c;
  for (auto& a : argv) c.push_back(a.data());
  c.push_back(nullptr);
  pid_t pid;
  if (posix_spawn(&pid, c[0], nullptr, nullptr, c.data(), environ) != 0) return 127;
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

int RunDemo(DemoFlags f) {
  // Far past any context window, and small enough that prompt + follow-up cannot wrap.
  constexpr uint32_t kMaxDemoTokens = 1u << 20;
  if (f.prompt_tokens > kMaxDemoTokens || f.followup_tokens > kMaxDemoTokens) {
    return Fail("demo", absl::InvalidArgumentError(absl::StrCat(
                            "--prompt-tokens ", f.prompt_tokens, ", --followup-tokens ",
                            f.followup_tokens, ": want at most ", kMaxDemoTokens, " each")));
  }
  if (f.role == "prefill") return RunPrefill(f);
  if (f.role == "decode") return RunDecode(f);
  if (!f.role.empty()) return Fail("demo", absl::InvalidArgumentError("--role: prefill|decode"));
  if (f.prompt_tokens < f.block_tokens || f.block_tokens == 0) {
    return Fail("demo", absl::InvalidArgumentError("--prompt-tokens: less than one block"));
  }
  auto dtype = ParseKvDtype(f.dtype);
  if (!dtype.ok()) return Fail("demo", dtype.status());
  auto shape = KvShapeForModel(f.model, *dtype);
  if (!shape.ok()) return Fail("demo", shape.status());
  uint64_t block_bytes = KvBytesPerToken(*shape) * f.block_tokens;
  uint64_t data_bytes = block_bytes * (f.prompt_tokens / f.block_tokens);
  if (data_bytes > kMaxCliPutBytes) {  // the prefill process holds all of it
    return Fail("demo", absl::InvalidArgumentError(absl::StrCat(
                            "--prompt-tokens: ", f.prompt_tokens, " tokens of ", f.model, " are ",
                            FormatByteSize(data_bytes), " of KV, more than the demo holds (",
                            FormatByteSize(kMaxCliPutBytes), ")")));
  }

  std::unique_ptr<client::LocalNode> local;
  if (f.node.empty()) {
    uint64_t warm = std::max<uint64_t>(256ull << 20, data_bytes + data_bytes / 2);
    uint64_t max_block = std::max<uint64_t>(16ull << 20, block_bytes);
    // The node wants a call to carry a block, and gRPC room for two such calls: raised with
    // the block past the node's defaults (64 MiB, 512 MiB).
    uint64_t max_inline = std::max<uint64_t>(64ull << 20, max_block);
    uint64_t grpc_memory = std::max<uint64_t>(512ull << 20, 2 * max_inline + (16ull << 20));
    std::printf("== starting a local store node (warm tier %s)\n", FormatByteSize(warm).c_str());
    std::fflush(stdout);
    std::string node_bin =
        (std::filesystem::path(SelfPath()).parent_path() / "strata-storenode").string();
    auto started = client::LocalNode::Start(
        node_bin,
        // Prefaulted, as a production node's arena is: the
        // first touch of fresh memory, not the transfer, would
        // otherwise set the prefill's speed.
        {"--warm-bytes", absl::StrCat(warm), "--max-block-bytes", absl::StrCat(max_block),
         "--max-inline-bytes", absl::StrCat(max_inline), "--grpc-memory-bytes",
         absl::StrCat(grpc_memory), "--warm-prefault", "--log-level", "warn"},
        absl::Seconds(20));
    if (!started.ok()) return Fail("demo", started.status());
    local = std::move(*started);
    f.node = local->address();
    std::printf("   node listening on %s (pid %d), metrics on http://%s/metrics\n", f.node.c_str(),
                local->pid(), local->http_address().c_str());
  }
  std::vector<std::string> base = {SelfPath(),
                                   "demo",
                                   "--node",
                                   f.node,
                                   "--model",
                                   f.model,
                                   "--dtype",
                                   f.dtype,
                                   "--block-tokens",
                                   absl::StrCat(f.block_tokens),
                                   "--prompt-tokens",
                                   absl::StrCat(f.prompt_tokens),
                                   "--followup-tokens",
                                   absl::StrCat(f.followup_tokens)};
  std::printf("== prefill worker (own process) computes and stores the prompt's KV blocks\n");
  std::fflush(stdout);
  auto prefill = base;
  prefill.insert(prefill.end(), {"--role", "prefill"});
  int rc = RunChild(prefill);
  if (rc == 0) {
    std::printf("== decode worker (another process) finds and fetches them for the next turn\n");
    std::fflush(stdout);
    auto decode = base;
    decode.insert(decode.end(), {"--role", "decode"});
    rc = RunChild(decode);
  }
  if (local != nullptr) {
    absl::StatusOr<int> code = local->Stop(absl::Seconds(30));
    std::printf("== local store node stopped (exit %d)\n", code.ok() ? *code : -1);
  }
  std::printf(rc == 0 ? "== demo OK: every fetched byte verified\n" : "== demo FAILED\n");
  return rc;
}

}  // namespace

void AddDemoCommand(CLI::App& app, int* exit_code) {
  auto f = std::make_shared<DemoFlags>();
  CLI::App* cmd = app.add_subcommand(
      "demo", "Worked example: prefill process stores a prompt's KV, decode process fetches it");
  cmd->add_option("--node", f->node, "Use this store node instead of starting a local one");
  cmd->add_option("--model", f->model, "Model preset (KV shape)")->capture_default_str();
  cmd->add_option("--dtype", f->dtype, "KV dtype")->capture_default_str();
  cmd->add_option("--block-tokens", f->block_tokens, "Tokens per block")->capture_default_str();
  cmd->add_option("--prompt-tokens", f->prompt_tokens, "Tokens of the prefilled prompt")
      ->capture_default_str();
  cmd->add_option("--followup-tokens", f->followup_tokens, "New tokens in the next turn")
      ->capture_default_str();
  cmd->add_option("--role", f->role, "Internal: run one side (prefill|decode)")
      ->group("");  // hidden
  cmd->callback([f, exit_code] { *exit_code = RunDemo(*f); });
}

}  // namespace strata::cli
