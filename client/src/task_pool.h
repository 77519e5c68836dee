// TaskPool: runs the client's helper tasks (the parts of a batch, the UCX side of a tagged
// transfer) on reused threads instead of a new thread per task (std::async), which costs
// ~60 us of thread creation, stack faults and join per task on our VMs and several per call.
//
// A task never waits for another: it starts at once on an idle thread or, when none is idle,
// on a new one, so tasks may block (on an RPC, on a transfer) and may wait for tasks they
// submitted themselves. A thread idle for `idle_exit` leaves; at most `max_idle` wait.
// When no new thread can be started (EAGAIN: the process or its cgroup is at its thread
// limit) the task runs on the caller's thread before Run returns, instead of the exception
// ending the engine's process: the parts of a batch then run one after another. A tagged
// transfer, which needs its RPC beside it, uses TryRun and is refused instead.
// Thread-safe. Shared() is one pool for the process, never destroyed (its idle threads are
// detached and simply end with the process).
#pragma once

#include <condition_variable>
#include <cstddef>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <utility>
#include <vector>

#include "absl/status/status.h"

namespace strata::client::internal {

// A std::future that, like std::async's, waits for its task when destroyed unconsumed, so a
// task that uses the caller's stack can never outlive the caller's frame.
template <typename R>
class JoiningFuture {
 public:
  JoiningFuture() = default;
  explicit JoiningFuture(std::future<R> f) : f_(std::move(f)) {}
  JoiningFuture(JoiningFuture&&) noexcept = default;
  JoiningFuture& operator=(JoiningFuture&& other) noexcept {
    if (f_.valid()) f_.wait();
    f_ = std::move(other.f_);
    return *this;
  }
  ~JoiningFuture() {
    if (f_.valid()) f_.wait();
  }
  R get() { return f_.get(); }

 private:
  std::future<R> f_;
};

class TaskPool {
 public:
  // Starts a detached thread running `body`; RESOURCE_EXHAUSTED when it cannot (StartThread).
  using ThreadStarter = std::function<absl::Status(std::function<void()> body)>;
  static absl::Status StartDetachedThread(std::function<void()> body);

  explicit TaskPool(std::chrono::milliseconds idle_exit = std::chrono::seconds(30),
                    size_t max_idle = 64, ThreadStarter start_thread = StartDetachedThread)
      : idle_exit_(idle_exit), max_idle_(max_idle), start_thread_(std::move(start_thread)) {}
  TaskPool(const TaskPool&) = delete;
  TaskPool& operator=(const TaskPool&) = delete;
  // Waits until every thread has left (each finishes its task first).
  ~TaskPool();

  static TaskPool& Shared();

  template <typename F>
  auto Run(F f) -> JoiningFuture<decltype(f())> {
    using R = decltype(f());
    auto task = std::make_shared<std::packaged_task<R()>>(std::move(f));
    JoiningFuture<R> out(task->get_future());
    Start([task] { (*task)(); });
    return out;
  }

  // As Run, but when no thread can be started `f` does not run at all (nullopt): for a task
  // that must run beside its caller (the UCX side of a tagged transfer, whose RPC the caller
  // sends after starting it), where running it first on the caller would only wait.
  template <typename F>
  auto TryRun(F f) -> std::optional<JoiningFuture<decltype(f())>> {
    using R = decltype(f());
    auto task = std::make_shared<std::packaged_task<R()>>(std::move(f));
    std::future<R> result = task->get_future();
    if (!TryStart([task] { (*task)(); })) return std::nullopt;
    return JoiningFuture<R>(std::move(result));
  }

  size_t threads() const;          // alive now, busy or idle
  size_t idle() const;             // waiting for a task now
  size_t threads_started() const;  // since construction
  size_t ran_inline() const;       // tasks run on their caller's thread: no thread to be had

 private:
  struct Idle;  // an idle thread's slot (lives on that thread's stack)

  void Start(std::function<void()> task);
  // Start without the fallback: false when no thread could be started (`task` not run).
  bool TryStart(std::function<void()> task);
  void Loop(std::function<void()> task);

  const std::chrono::milliseconds idle_exit_;
  const size_t max_idle_;
  const ThreadStarter start_thread_;
  mutable std::mutex mu_;
  std::condition_variable all_gone_;
  std::vector<Idle*> idle_;  // guarded by mu_; most recently idle last
  bool stopping_ = false;    // guarded by mu_; the destructor runs
  size_t threads_ = 0;       // guarded by mu_
  size_t started_ = 0;       // guarded by mu_
  size_t ran_inline_ = 0;    // guarded by mu_
};

// Parts of one call that RunParts runs at once: a call of thousands of small parts (a node
// with a small max_inline_bytes) must not take a thread each.
inline constexpr size_t kMaxPartsInFlight = 32;

// Runs part(0..n-1) in parallel, at most kMaxPartsInFlight at a time (part 0 on the calling
// thread, the others on the shared TaskPool); the first error (in part order) wins.
template <typename Part>
absl::Status RunParts(size_t n, Part part) {
  if (n == 0) return absl::OkStatus();  // e.g. a cluster whose every node left
  std::vector<absl::Status> status(n);
  // A new part starts when any running one ends (one that hangs holds up only its own slot).
  std::mutex mu;
  std::condition_variable ended;
  size_t running = 1;  // part 0, on this thread, last
  std::vector<JoiningFuture<void>> pending;
  pending.reserve(n - 1);
  for (size_t p = 1; p < n; ++p) {
    {
      std::unique_lock<std::mutex> lock(mu);
      ended.wait(lock, [&] { return running < kMaxPartsInFlight; });
      ++running;
    }
    pending.push_back(TaskPool::Shared().Run([&, p] {
      status[p] = part(p);
      std::lock_guard<std::mutex> lock(mu);
      --running;
      ended.notify_all();
    }));
  }
  status[0] = part(0);
  for (auto& f : pending) f.get();
  pending.clear();
  for (const absl::Status& s : status) {
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

}  // namespace strata::client::internal
