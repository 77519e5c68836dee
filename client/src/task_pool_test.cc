#include "task_pool.h"

#include <atomic>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace strata::client::internal {
namespace {

// Counts the distinct threads tasks ran on (a thread_local is fresh on every new thread).
std::atomic<int> fresh_threads{0};
void NoteThread() {
  thread_local bool seen = false;
  if (!seen) {
    seen = true;
    fresh_threads.fetch_add(1);
  }
}

// Waits (up to 20 s) until `pool` has `n` idle threads.
bool WaitIdle(const TaskPool& pool, size_t n) {
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (pool.idle() != n && std::chrono::steady_clock::now() < give_up) {
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  return pool.idle() == n;
}

// A process at its thread limit: the task runs on the caller's thread, and Run returns its
// result instead of letting std::system_error out (which would end the engine's process).
TEST(TaskPoolTest, ATaskRunsOnItsCallerWhenNoThreadCanStart) {
  TaskPool pool(std::chrono::seconds(30), 64,
                [](std::function<void()>) { return absl::ResourceExhaustedError("thread limit"); });
  const std::thread::id caller = std::this_thread::get_id();
  std::thread::id ran_on;
  auto f = pool.Run([&] {
    ran_on = std::this_thread::get_id();
    return 42;
  });
  EXPECT_EQ(f.get(), 42);
  EXPECT_EQ(ran_on, caller);
  EXPECT_EQ(pool.ran_inline(), 1u);
  EXPECT_EQ(pool.threads(), 0u);
  EXPECT_EQ(pool.threads_started(), 0u);
}

// TryRun (a tagged transfer's UCX side) does not run the task at all without a thread: run
// first on the caller it would wait for the RPC its caller sends after it.
TEST(TaskPoolTest, TryRunDoesNotRunATaskWhenNoThreadCanStart) {
  TaskPool pool(std::chrono::seconds(30), 64,
                [](std::function<void()>) { return absl::ResourceExhaustedError("thread limit"); });
  bool ran = false;
  auto f = pool.TryRun([&] {
    ran = true;
    return 1;
  });
  EXPECT_FALSE(f.has_value());
  EXPECT_FALSE(ran);
  EXPECT_EQ(pool.ran_inline(), 0u);
  EXPECT_EQ(pool.threads(), 0u);
  TaskPool working;
  auto g = working.TryRun([] { return 7; });
  ASSERT_TRUE(g.has_value());
  EXPECT_EQ(g->get(), 7);
}

TEST(TaskPoolTest, SequentialTasksReuseOneThread) {
  TaskPool pool;
  fresh_threads = 0;
  for (int i = 0; i < 100; ++i) {
    JoiningFuture<int> f = pool.Run([i] {
      NoteThread();
      return i * 2;
    });
    EXPECT_EQ(f.get(), i * 2);
    // The thread goes idle just after it has set the result.
    ASSERT_TRUE(WaitIdle(pool, 1));
  }
  EXPECT_EQ(fresh_threads.load(), 1);  // std::async: 100 new threads
  EXPECT_EQ(pool.threads_started(), 1u);
}

TEST(TaskPoolTest, TasksThatWaitForEachOtherAllRun) {
  TaskPool pool;
  // Eight tasks that each wait until all eight have started: they must run at once, never
  // queued behind a busy thread.
  std::atomic<int> started{0};
  std::vector<JoiningFuture<bool>> all;
  for (int i = 0; i < 8; ++i) {
    all.push_back(pool.Run([&] {
      started.fetch_add(1);
      const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(20);
      while (started.load() < 8 && std::chrono::steady_clock::now() < give_up) {
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
      return started.load() == 8;
    }));
  }
  for (auto& f : all) EXPECT_TRUE(f.get());
  // A task may wait for a task it submits itself.
  JoiningFuture<int> outer = pool.Run([&] { return pool.Run([] { return 7; }).get() + 1; });
  EXPECT_EQ(outer.get(), 8);
}

TEST(TaskPoolTest, IdleThreadsLeaveAndDoNotHoldUpTheDestructor) {
  TaskPool pool(std::chrono::milliseconds(20));
  std::vector<JoiningFuture<int>> all;
  for (int i = 0; i < 4; ++i) all.push_back(pool.Run([i] { return i; }));
  for (auto& f : all) f.get();
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (pool.threads() > 0 && std::chrono::steady_clock::now() < give_up) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_EQ(pool.threads(), 0u);

  std::atomic<bool> finished{false};
  {
    TaskPool busy(std::chrono::hours(1));
    JoiningFuture<void> f = busy.Run([&] {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      finished = true;
    });
    f.get();
    // `busy` now has a thread idle for up to an hour; its destructor wakes it (else this test
    // would hang past its ctest timeout).
  }
  EXPECT_TRUE(finished.load());
}

TEST(TaskPoolTest, AnUnconsumedFutureWaitsForItsTask) {
  TaskPool pool;
  std::atomic<bool> done{false};
  {
    JoiningFuture<void> f = pool.Run([&] {
      std::this_thread::sleep_for(std::chrono::milliseconds(30));
      done = true;
    });
  }  // destroyed without get(): waits, as std::async's future does
  EXPECT_TRUE(done.load());
}

// A call of many parts runs at most kMaxPartsInFlight at once, every part still runs, and the
// first failing part (in part order) is the call's error. Before, each part took a thread of
// its own: 300 parts, 300 threads.
TEST(TaskPoolTest, RunPartsRunsAtMostABoundedNumberAtOnce) {
  std::atomic<int> running{0}, most{0}, ran{0};
  absl::Status s = RunParts(300, [&](size_t p) {
    const int now = running.fetch_add(1) + 1;
    int seen = most.load();
    while (now > seen && !most.compare_exchange_weak(seen, now)) {
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
    running.fetch_sub(1);
    ran.fetch_add(1);
    return p == 120 || p == 250 ? absl::InternalError(std::to_string(p)) : absl::OkStatus();
  });
  EXPECT_EQ(ran.load(), 300);
  EXPECT_LE(most.load(), static_cast<int>(kMaxPartsInFlight));
  EXPECT_GT(most.load(), 1) << "the parts ran one at a time";
  EXPECT_EQ(s.message(), "120");
}

// A part that hangs holds up only its own slot: the parts after the first 32 start as other
// parts end. Before, the next part waited for the oldest one (part 1 here), so one slow node
// of a cluster's fan-out left the later parts nothing of their deadline.
TEST(TaskPoolTest, RunPartsStartsTheNextPartWhenAnyEnds) {
  std::atomic<bool> late_started{false};
  bool seen = false;
  absl::Status s = RunParts(100, [&](size_t p) {
    if (p == 60) late_started = true;
    if (p != 1) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
      return absl::OkStatus();
    }
    const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (!late_started && std::chrono::steady_clock::now() < give_up) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    seen = late_started;
    return absl::OkStatus();
  });
  EXPECT_TRUE(s.ok());
  EXPECT_TRUE(seen) << "part 60 did not start while part 1 ran";
}

}  // namespace
}  // namespace strata::client::internal
