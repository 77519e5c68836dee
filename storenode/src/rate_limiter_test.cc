#include "rate_limiter.h"

#include "gtest/gtest.h"

namespace strata::storenode {
namespace {

TEST(LookupRateLimiterTest, BurstThenRateAndTenantsApart) {
  LookupRateLimiter limiter(100, 300);  // 100 blocks/s, burst 300
  const absl::Time t0 = absl::FromUnixSeconds(1000);
  EXPECT_TRUE(limiter.Take("a", 300, t0).ok());
  absl::Status over = limiter.Take("a", 50, t0);
  EXPECT_EQ(over.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(over.message().find("retry in 500 ms"), std::string_view::npos) << over;
  EXPECT_TRUE(limiter.Take("b", 300, t0).ok()) << "b has a bucket of its own";
  EXPECT_TRUE(limiter.Take("a", 50, t0 + absl::Milliseconds(500)).ok()) << "refilled";
  // Larger than the burst: passes only with a full bucket, and empties it.
  EXPECT_FALSE(limiter.Take("a", 1000, t0 + absl::Seconds(1)).ok());
  EXPECT_TRUE(limiter.Take("a", 1000, t0 + absl::Seconds(10)).ok());
  EXPECT_FALSE(limiter.Take("a", 1, t0 + absl::Seconds(10)).ok());
}

// The wall clock stepped back an hour: the bucket keeps its tokens (before, it went an hour
// into debt, and the tenant's Lookups were refused for that hour).
TEST(LookupRateLimiterTest, AClockSteppedBackTakesNoTokens) {
  LookupRateLimiter limiter(100, 300);
  const absl::Time t0 = absl::FromUnixSeconds(10'000);
  EXPECT_TRUE(limiter.Take("a", 200, t0).ok());
  EXPECT_TRUE(limiter.Take("a", 100, t0 - absl::Hours(1)).ok()) << "what was left";
  EXPECT_FALSE(limiter.Take("a", 100, t0 - absl::Hours(1)).ok());
  EXPECT_TRUE(limiter.Take("a", 100, t0 - absl::Hours(1) + absl::Seconds(1)).ok())
      << "refilled at the rate from the new time on";
}

TEST(LookupRateLimiterTest, RateZeroIsUnlimited) {
  LookupRateLimiter limiter(0, 0);
  for (int i = 0; i < 100; ++i) EXPECT_TRUE(limiter.Take("a", 1 << 20).ok());
}

}  // namespace
}  // namespace strata::storenode
