#include "strata/transport/bounce_pool.h"

#include <cstdint>
#include <cstring>
#include <set>
#include <thread>
#include <vector>

#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "strata/testutil/status_matchers.h"

namespace strata::transport {
namespace {

using ::strata::testutil::IsOk;
using ::strata::testutil::StatusIs;

class BouncePoolTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<std::unique_ptr<Context>> ctx =
        Context::Create(TransportOptions{"tcp", {}, true});
    ASSERT_THAT(ctx, IsOk());
    context_ = *std::move(ctx);
  }
  std::unique_ptr<Context> context_;
};

TEST_F(BouncePoolTest, HandsOutDistinctBuffersInsideTheRegionUntilEmpty) {
  absl::StatusOr<std::unique_ptr<BouncePool>> pool = BouncePool::Create(*context_, 1000, 4);
  ASSERT_THAT(pool, IsOk());
  BouncePool& p = **pool;
  EXPECT_EQ(p.capacity(), 4u);
  std::vector<BounceBuffer> held;
  std::set<void*> seen;
  for (int i = 0; i < 4; ++i) {
    absl::StatusOr<BounceBuffer> b = p.Acquire(absl::Now() + absl::Seconds(1));
    ASSERT_THAT(b, IsOk());
    EXPECT_EQ(b->size(), 1000u);
    EXPECT_TRUE(p.region().Contains(b->data(), b->size()));
    EXPECT_EQ(reinterpret_cast<uintptr_t>(b->data()) % 64, 0u);
    EXPECT_TRUE(seen.insert(b->data()).second);
    std::memset(b->data(), i, b->size());  // no overlap: each fill stays intact below
    held.push_back(*std::move(b));
  }
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(static_cast<uint8_t*>(held[i].data())[999], i);
  }
  EXPECT_EQ(p.available(), 0u);
  const absl::Time start = absl::Now();
  EXPECT_THAT(p.Acquire(start + absl::Milliseconds(50)),
              StatusIs(absl::StatusCode::kResourceExhausted));
  held[2].Release();
  EXPECT_EQ(held[2].data(), nullptr);
  EXPECT_EQ(p.available(), 1u);
  EXPECT_THAT(p.Acquire(absl::Now()), IsOk());  // released again at end of statement
  held.clear();
  EXPECT_EQ(p.available(), 4u);
}

TEST_F(BouncePoolTest, WaiterGetsABufferReleasedByAnotherThread) {
  absl::StatusOr<std::unique_ptr<BouncePool>> pool = BouncePool::Create(*context_, 4096, 1);
  ASSERT_THAT(pool, IsOk());
  absl::StatusOr<BounceBuffer> only = (*pool)->Acquire(absl::Now());
  ASSERT_THAT(only, IsOk());
  void* const data = only->data();
  absl::Notification waiting;
  std::thread releaser([&] {
    waiting.WaitForNotification();
    absl::SleepFor(absl::Milliseconds(20));
    only->Release();
  });
  waiting.Notify();
  absl::StatusOr<BounceBuffer> next = (*pool)->Acquire(absl::Now() + absl::Seconds(5));
  releaser.join();
  ASSERT_THAT(next, IsOk());
  EXPECT_EQ(next->data(), data);
}

TEST_F(BouncePoolTest, RejectsBadGeometry) {
  EXPECT_THAT(BouncePool::Create(*context_, 0, 4), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(BouncePool::Create(*context_, 4096, 0), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(BouncePool::Create(*context_, SIZE_MAX / 2, 4),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace strata::transport
