#include "strata/common/timed_turn.h"

#include <atomic>
#include <thread>

#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"

namespace strata {
namespace {

// A waiter gives up at its deadline while the turn stays taken (an absl::Mutex would have it
// wait for the holder however long), and takes the turn once it is given back.
TEST(TimedTurnTest, AWaiterGivesUpAtItsDeadlineAndTakesTheTurnOnceGiven) {
  TimedTurn turn;
  ASSERT_TRUE(turn.Take());
  EXPECT_FALSE(turn.Take(absl::InfinitePast())) << "taken: no wait";
  absl::Notification gave_up;
  bool got = true;
  std::thread late([&] {
    got = turn.Take(absl::Now() + absl::Milliseconds(100));
    gave_up.Notify();
  });
  EXPECT_TRUE(gave_up.WaitForNotificationWithTimeout(absl::Seconds(20)));
  late.join();
  EXPECT_FALSE(got);
  std::atomic<bool> patient_got{false};
  std::thread patient([&] { patient_got = turn.Take(); });
  absl::SleepFor(absl::Milliseconds(50));
  EXPECT_FALSE(patient_got.load()) << "took a turn still taken";
  turn.Give();
  patient.join();
  EXPECT_TRUE(patient_got.load());
  {
    TimedTurn::Hold hold(turn, absl::Now() + absl::Milliseconds(10));
    EXPECT_FALSE(hold.taken());
  }
  turn.Give();
  TimedTurn::Hold hold(turn, absl::InfinitePast());
  EXPECT_TRUE(hold.taken());
}

}  // namespace
}  // namespace strata
