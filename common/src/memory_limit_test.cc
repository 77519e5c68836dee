#include "strata/common/memory_limit.h"

#include "gtest/gtest.h"

namespace strata {
namespace {

TEST(MemoryLimitTest, ACgroupLimitBelowTheMachineIsTheLimit) {
  const uint64_t total = 24ull << 30;
  EXPECT_EQ(MemoryUnderLimit("8589934592\n", total), 8ull << 30);  // v2 memory.max
  EXPECT_EQ(MemoryUnderLimit("max", total), total);
  EXPECT_EQ(MemoryUnderLimit("9223372036854771712", total), total);  // v1: no limit
  EXPECT_EQ(MemoryUnderLimit("", total), total);                     // no cgroup file
  EXPECT_EQ(MemoryUnderLimit("0", total), total);
  EXPECT_EQ(MemoryUnderLimit("1073741824", 0), 1ull << 30);  // no MemTotal
}

TEST(MemoryLimitTest, ThisMachineHasSome) { EXPECT_GT(UsableMemoryBytes(), 64ull << 20); }

}  // namespace
}  // namespace strata
