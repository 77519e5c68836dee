#include "strata/common/malloc_tuning.h"

#include <malloc.h>
#include <stdlib.h>

#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace strata {
namespace {

// Grows the heap by ~1.5 MiB of 200 KiB blocks (below the mmap threshold, so they come from
// the heap; free holes left by earlier tests are used up first), frees them all, and returns
// how much of the growth the heap kept instead of giving it back to the kernel.
[[maybe_unused]] size_t GrowthKeptAfterChurn() {
  std::vector<std::unique_ptr<uint8_t[]>> blocks;
  blocks.reserve(512);
  const size_t before = mallinfo2().arena;
  while (mallinfo2().arena < before + (size_t{3} << 19) && blocks.size() < 512) {
    blocks.emplace_back(new uint8_t[200 << 10]);
    blocks.back()[0] = static_cast<uint8_t>(blocks.size());  // touched: real pages
  }
  blocks.clear();
  const size_t after = mallinfo2().arena;
  return after > before ? after - before : 0;
}

// The same on a new thread, whose blocks come from another arena's heap (heap_trim, where
// the node's gRPC threads allocate).
[[maybe_unused]] size_t GrowthKeptAfterChurnOnAThread() {
  size_t kept = 0;
  std::thread([&kept] { kept = GrowthKeptAfterChurn(); }).join();
  return kept;
}

#if defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define STRATA_SANITIZED_HEAP 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define STRATA_SANITIZED_HEAP 1
#endif

#ifdef STRATA_SANITIZED_HEAP
TEST(MallocTuningTest, DISABLED_FreedCallMemoryStaysInTheHeap) {}
#else
// Runs first in this binary's tuning tests: the default trims what a call freed, the tuned
// process keeps it for the next call.
TEST(MallocTuningTest, FreedCallMemoryStaysInTheHeap) {
  const char* tunables = std::getenv("GLIBC_TUNABLES");
  if ((tunables != nullptr && std::string(tunables).find("glibc.malloc.") != std::string::npos) ||
      std::getenv("MALLOC_TOP_PAD_") != nullptr) {
    GTEST_SKIP() << "malloc tunables set for this process; the heap does not behave as glibc's";
  }
  // glibc's default, frozen the way the node used to freeze it (an mmap threshold alone).
  ASSERT_EQ(mallopt(M_MMAP_THRESHOLD, 1 << 20), 1);
  ASSERT_EQ(mallopt(M_TRIM_THRESHOLD, 128 << 10), 1);
  EXPECT_LT(GrowthKeptAfterChurn(), size_t{1} << 19) << "the untuned heap kept what was freed";
  EXPECT_LT(GrowthKeptAfterChurnOnAThread(), size_t{1} << 19);

  unsetenv("GLIBC_TUNABLES");
  EXPECT_EQ(TuneMalloc(MallocTuning::Node()),
            "malloc: mmap threshold 1024 KiB, trim threshold 2048 KiB");
  EXPECT_GE(GrowthKeptAfterChurn(), size_t{1} << 20) << "the tuned heap gave freed memory back";
  EXPECT_GE(GrowthKeptAfterChurnOnAThread(), size_t{1} << 20);
  EXPECT_EQ(TuneMalloc(MallocTuning::Client()),
            "malloc: mmap threshold 32768 KiB, trim threshold 65536 KiB");
  EXPECT_GE(GrowthKeptAfterChurn(), size_t{1} << 20);
}
#endif

TEST(MallocTuningTest, AnOperatorsSettingsStand) {
#ifdef STRATA_SANITIZED_HEAP
  GTEST_SKIP() << "a sanitizer's allocator refuses mallopt: every threshold reads (refused)";
#endif
  setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=1048576:glibc.malloc.arena_max=2", 1);
  EXPECT_EQ(TuneMalloc(MallocTuning::Node()),
            "malloc: mmap threshold 1024 KiB, trim threshold as GLIBC_TUNABLES sets it");
  setenv("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=65536", 1);
  EXPECT_EQ(TuneMalloc(MallocTuning::Node()),
            "malloc: mmap threshold as GLIBC_TUNABLES sets it, trim threshold 2048 KiB");
  unsetenv("GLIBC_TUNABLES");
  setenv("MALLOC_TRIM_THRESHOLD_", "4194304", 1);
  EXPECT_EQ(TuneMalloc(MallocTuning::Node()),
            "malloc: mmap threshold 1024 KiB, trim threshold as MALLOC_TRIM_THRESHOLD_ sets it");
  unsetenv("MALLOC_TRIM_THRESHOLD_");
}

TEST(MallocTuningTest, ZeroLeavesAThresholdAloneAndOversizedValuesAreRefused) {
  EXPECT_EQ(TuneMalloc(MallocTuning{}),
            "malloc: mmap threshold left as it is, trim threshold left as it is");
  EXPECT_EQ(TuneMalloc({0, size_t{1} << 40}),  // past what mallopt's int can carry
            "malloc: mmap threshold left as it is, trim threshold 1073741824 KiB (refused)");
}

}  // namespace
}  // namespace strata
