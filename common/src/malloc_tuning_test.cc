#include "strata/common/malloc_tuning.h"

#include <malloc.h>
#include <stdlib.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace strata {
namespace {

using ::testing::HasSubstr;

// Grows the heap by ~3 MiB of 200 KiB blocks (below the mmap threshold, so they come from
// the heap; free holes left by earlier tests are used up first), frees them all, and returns
// how much of the growth the heap kept instead of giving it back to the kernel.
size_t GrowthKeptAfterChurn() {
  const size_t before = mallinfo2().arena;
  std::vector<std::unique_ptr<uint8_t[]>> blocks;
  while (mallinfo2().arena < before + (size_t{3} << 20) && blocks.size() < 512) {
    blocks.emplace_back(new uint8_t[200 << 10]);
    blocks.back()[0] = static_cast<uint8_t>(blocks.size());  // touched: real pages
  }
  blocks.clear();
  const size_t after = mallinfo2().arena;
  return after > before ? after - before : 0;
}

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
TEST(MallocTuningTest, DISABLED_FreedCallMemoryStaysInTheHeap) {}
#else
// Runs first in this binary's tuning tests: the default trims what a call freed, the tuned
// process keeps it for the next call.
TEST(MallocTuningTest, FreedCallMemoryStaysInTheHeap) {
  unsetenv("GLIBC_TUNABLES");
  // glibc's default, frozen the way the node used to freeze it (an mmap threshold alone).
  ASSERT_EQ(mallopt(M_MMAP_THRESHOLD, 1 << 20), 1);
  ASSERT_EQ(mallopt(M_TRIM_THRESHOLD, 128 << 10), 1);
  EXPECT_LT(GrowthKeptAfterChurn(), size_t{1} << 20) << "the untuned heap kept what was freed";

  const std::string did = TuneMalloc(MallocTuning::Node());
  EXPECT_THAT(did, HasSubstr("trim threshold 8192 KiB"));
  EXPECT_THAT(did, HasSubstr("mmap threshold 1024 KiB"));
  EXPECT_GE(GrowthKeptAfterChurn(), size_t{2} << 20) << "the tuned heap gave freed memory back";
  EXPECT_EQ(TuneMalloc(MallocTuning::Client()),
            "malloc: mmap threshold 32768 KiB, trim threshold 65536 KiB");
  EXPECT_GE(GrowthKeptAfterChurn(), size_t{2} << 20);
}
#endif

TEST(MallocTuningTest, AnOperatorsGlibcTunablesStand) {
  setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=1048576:glibc.malloc.arena_max=2", 1);
  EXPECT_EQ(TuneMalloc(MallocTuning::Node()),
            "malloc: mmap threshold 1024 KiB, trim threshold as GLIBC_TUNABLES sets it");
  setenv("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=65536", 1);
  EXPECT_EQ(TuneMalloc(MallocTuning::Node()),
            "malloc: mmap threshold as GLIBC_TUNABLES sets it, trim threshold 8192 KiB");
  unsetenv("GLIBC_TUNABLES");
}

}  // namespace
}  // namespace strata
