// A reader frozen (SIGSTOP) past its lease while eviction reuses the memory it was reading:
// when it thaws, every block it got is either an error or exactly right — never torn. The
// reader is this test binary re-executed (STRATA_FAULT_READER=node-address), a real separate
// process with its own client and UCX data plane; the writer runs here.
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "strata/client/store_client.h"
#include "strata/testutil/node_process.h"
#include "strata/testutil/prompts.h"
#include "strata/testutil/status_matchers.h"

extern char** environ;

namespace strata {
namespace {

using client::BlockRead;
using client::BlockWrite;
using client::StoreClient;
using testutil::IsOk;

constexpr uint64_t kBlock = 512 << 10;
constexpr uint32_t kReaderBlocks = 24;  // 12 MiB of a 16 MiB warm tier

NamespaceSpec Spec() {
  NamespaceSpec spec;
  spec.model_id = "lease-fault";
  spec.dtype = "fp16";
  spec.layout = "raw";
  spec.block_tokens = 16;
  spec.block_bytes = kBlock;
  return spec;
}

// The reader process: gets its blocks over and over for `seconds`, checking every byte; prints
// "READER ok=N wrong=N errors=N" and exits.
[[noreturn]] void RunReader(const char* address) {
  auto c = StoreClient::Connect({.address = address, .default_deadline = absl::Seconds(2)});
  if (!c.ok()) std::_Exit(3);
  auto ns = (*c)->RegisterNamespace(Spec());
  if (!ns.ok()) std::_Exit(3);
  std::vector<ChainHash> hashes = testutil::PromptChain(*ns, 1, kReaderBlocks);
  std::vector<std::vector<uint8_t>> want;
  for (uint32_t i = 0; i < kReaderBlocks; ++i)
    want.push_back(testutil::RandomBytes(50 + i, kBlock));
  uint64_t ok = 0, wrong = 0, errors = 0;
  bool ready = false;
  std::vector<uint8_t> buffer(4 * kBlock);
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(6);
  for (uint32_t round = 0; std::chrono::steady_clock::now() < until; ++round) {
    std::vector<BlockRead> reads;
    for (uint32_t k = 0; k < 4; ++k) {
      reads.push_back(
          {hashes[(round * 4 + k) % kReaderBlocks], buffer.data() + k * kBlock, kBlock});
    }
    auto r = (*c)->Get(*ns, "", reads);
    if (!r.ok()) {
      errors += 4;
      continue;
    }
    for (uint32_t k = 0; k < 4; ++k) {
      if (!r->blocks[k].ok()) {
        ++errors;
        continue;
      }
      const uint32_t i = (round * 4 + k) % kReaderBlocks;
      (std::memcmp(buffer.data() + k * kBlock, want[i].data(), kBlock) == 0 ? ok : wrong) += 1;
    }
    if (!ready && ok > 0) {
      // The parent starts evicting only now: a slow start must not find every block gone.
      std::printf("READY\n");
      std::fflush(stdout);
      ready = true;
    }
  }
  std::printf("READER ok=%llu wrong=%llu errors=%llu\n", static_cast<unsigned long long>(ok),
              static_cast<unsigned long long>(wrong), static_cast<unsigned long long>(errors));
  std::fflush(stdout);
  std::_Exit(0);
}

// Runs before gtest when this binary is re-executed as the reader.
const bool kReaderMode = [] {
  if (const char* a = std::getenv("STRATA_FAULT_READER")) RunReader(a);
  return false;
}();

TEST(LeaseFaultTest, ReaderFrozenPastItsLeaseGetsErrorsOrCorrectBytesNeverTorn) {
  auto node = testutil::StartNode(
      {"--warm-bytes", "16MiB", "--max-block-bytes", "1MiB", "--ucx-tls", "tcp", "--lease-ttl",
       "200ms", "--max-lease", "400ms", "--reservation-ttl", "200ms", "--reaper-interval", "20ms"});
  ASSERT_THAT(node, IsOk());
  auto c = StoreClient::Connect({.address = (*node)->address()});
  ASSERT_THAT(c, IsOk());
  auto ns = (*c)->RegisterNamespace(Spec());
  ASSERT_THAT(ns, IsOk());
  std::vector<ChainHash> reader_blocks = testutil::PromptChain(*ns, 1, kReaderBlocks);
  for (uint32_t i = 0; i < kReaderBlocks; ++i) {
    std::vector<uint8_t> data = testutil::RandomBytes(50 + i, kBlock);
    BlockWrite w{reader_blocks[i], data.data(), kBlock};
    ASSERT_THAT((*c)->Put(*ns, "", {&w, 1}), IsOk());
  }
  // The reader, with its stdout on a pipe.
  int out[2];
  ASSERT_EQ(pipe(out), 0);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, out[1], 1);
  posix_spawn_file_actions_addclose(&fa, out[0]);
  std::vector<std::string> env_strings = {absl::StrCat("STRATA_FAULT_READER=", (*node)->address())};
  for (char** e = environ; *e != nullptr; ++e) env_strings.push_back(*e);
  std::vector<char*> envp;
  for (std::string& e : env_strings) envp.push_back(e.data());
  envp.push_back(nullptr);
  char self[4096] = {};
  ASSERT_GT(readlink("/proc/self/exe", self, sizeof(self) - 1), 0);
  char* argv[] = {self, nullptr};
  pid_t reader = 0;
  const int spawned = posix_spawn(&reader, self, &fa, nullptr, argv, envp.data());
  posix_spawn_file_actions_destroy(&fa);
  ASSERT_EQ(spawned, 0);
  close(out[1]);
  FILE* from = fdopen(out[0], "r");
  ASSERT_NE(from, nullptr);
  char line[256] = {};
  ASSERT_NE(std::fgets(line, sizeof(line), from), nullptr);
  ASSERT_STREQ(line, "READY\n") << "the reader never read its blocks";

  // Meanwhile: a writer fills the warm tier over and over (evicting the reader's blocks and
  // reusing their memory), and the reader is frozen three times for a second — past its
  // leases — in the middle of its reads.
  std::atomic<bool> stop{false};
  std::thread writer([&] {
    std::vector<uint8_t> junk = testutil::RandomBytes(7, kBlock);
    for (uint32_t k = 0; !stop.load(); ++k) {
      BlockWrite w{testutil::PromptChain(*ns, 1000 + k, 1)[0], junk.data(), kBlock};
      (*c)->Put(*ns, "", {&w, 1}).IgnoreError();
      std::this_thread::sleep_for(std::chrono::milliseconds(15));  // ~35 MB/s of turnover
    }
  });
  for (int freeze = 0; freeze < 3; ++freeze) {
    std::this_thread::sleep_for(std::chrono::milliseconds(400));
    kill(reader, SIGSTOP);
    std::this_thread::sleep_for(std::chrono::milliseconds(1000));
    kill(reader, SIGCONT);
  }
  int status = 0;
  waitpid(reader, &status, 0);
  stop = true;
  writer.join();
  ASSERT_NE(std::fgets(line, sizeof(line), from), nullptr);
  std::fclose(from);
  unsigned long long ok = 0, wrong = 0, errors = 0;
  ASSERT_EQ(std::sscanf(line, "READER ok=%llu wrong=%llu errors=%llu", &ok, &wrong, &errors), 3)
      << line;
  EXPECT_EQ(WEXITSTATUS(status), 0);
  EXPECT_EQ(wrong, 0u) << "a torn or stale block was reported as good";
  EXPECT_GT(ok, 0u);
  auto stats = (*c)->Stats();
  ASSERT_THAT(stats, IsOk());
  EXPECT_GT(stats->evictions, 0u) << "eviction never ran: the test proved nothing";
  std::printf("frozen reader: %llu blocks exact, %llu errors, 0 wrong; %llu evictions\n", ok,
              errors, static_cast<unsigned long long>(stats->evictions));
}

}  // namespace
}  // namespace strata
