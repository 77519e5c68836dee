#include "strata/common/cpus.h"

#include "gtest/gtest.h"
#include "strata/testutil/cpu_pin.h"

namespace strata {
namespace {

TEST(CpusTest, ACgroupQuotaLowersTheCount) {
  EXPECT_EQ(CpusUnderQuota("200000 100000", 16), 2u);
  EXPECT_EQ(CpusUnderQuota("150000 100000\n", 16), 2u);  // 1.5 CPUs: two threads may run
  EXPECT_EQ(CpusUnderQuota("50000 100000", 16), 1u);
  EXPECT_EQ(CpusUnderQuota("1600000 100000", 4), 4u);  // a quota above the mask changes nothing
}

TEST(CpusTest, NoQuotaOrAnUnreadableOneLeavesTheCount) {
  EXPECT_EQ(CpusUnderQuota("max 100000", 16), 16u);
  EXPECT_EQ(CpusUnderQuota("", 16), 16u);
  EXPECT_EQ(CpusUnderQuota("-1 100000", 16), 16u);  // cgroup v1: no quota
  EXPECT_EQ(CpusUnderQuota("100000 0", 16), 16u);
  EXPECT_EQ(CpusUnderQuota("lots 100000", 16), 16u);
  EXPECT_EQ(CpusUnderQuota("100000 100000 1", 16), 16u);
  EXPECT_EQ(CpusUnderQuota("max 100000", 0), 1u);
}

TEST(CpusTest, UsableCpusFollowsTheAffinityMask) {
  const uint32_t all = UsableCpus();
  ASSERT_GE(all, 1u);
  {
    testutil::OneCpuScope pin;
    ASSERT_TRUE(pin.ok());
    EXPECT_EQ(UsableCpus(), 1u);
  }
  EXPECT_EQ(UsableCpus(), all);
}

}  // namespace
}  // namespace strata
