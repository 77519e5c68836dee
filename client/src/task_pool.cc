#include "task_pool.h"

#include <algorithm>
#include <thread>

#include "spdlog/spdlog.h"
#include "strata/common/threads.h"

namespace strata::client::internal {

struct TaskPool::Idle {
  std::condition_variable wake;
  std::function<void()> task;  // set (under mu_) by Start, which also removes it from idle_
};

TaskPool::~TaskPool() {
  std::unique_lock lock(mu_);
  stopping_ = true;
  for (Idle* i : idle_) i->wake.notify_one();
  all_gone_.wait(lock, [this] { return threads_ == 0; });
}

TaskPool& TaskPool::Shared() {
  static TaskPool* pool = new TaskPool();  // never destroyed: detached threads may outlive main
  return *pool;
}

size_t TaskPool::threads() const {
  std::lock_guard lock(mu_);
  return threads_;
}

size_t TaskPool::idle() const {
  std::lock_guard lock(mu_);
  return idle_.size();
}

size_t TaskPool::threads_started() const {
  std::lock_guard lock(mu_);
  return started_;
}

size_t TaskPool::ran_inline() const {
  std::lock_guard lock(mu_);
  return ran_inline_;
}

absl::Status TaskPool::StartDetachedThread(std::function<void()> body) {
  absl::StatusOr<std::thread> thread = StartThread("a client helper task", std::move(body));
  if (!thread.ok()) return thread.status();
  thread->detach();
  return absl::OkStatus();
}

void TaskPool::Start(std::function<void()> task) {
  if (TryStart(task)) return;
  {
    std::lock_guard lock(mu_);
    ++ran_inline_;
  }
  spdlog::warn("client: no thread for a helper task; running it on the caller's thread");
  task();
}

bool TaskPool::TryStart(std::function<void()> task) {
  {
    std::lock_guard lock(mu_);
    if (!idle_.empty()) {
      Idle* i = idle_.back();
      idle_.pop_back();
      i->task = std::move(task);
      i->wake.notify_one();
      return true;
    }
    ++threads_;
    ++started_;
  }
  // No thread (the process at its thread limit): a slower path in Start, a refusal in TryRun.
  if (start_thread_([this, task = std::move(task)]() mutable { Loop(std::move(task)); }).ok()) {
    return true;
  }
  std::lock_guard lock(mu_);
  --started_;
  if (--threads_ == 0) all_gone_.notify_all();
  return false;
}

void TaskPool::Loop(std::function<void()> task) {
  Idle me;
  std::unique_lock lock(mu_);
  while (task) {
    lock.unlock();
    task();
    task = nullptr;
    lock.lock();
    if (idle_.size() >= max_idle_) break;
    idle_.push_back(&me);
    me.wake.wait_for(lock, idle_exit_, [&] { return me.task != nullptr || stopping_; });
    if (me.task == nullptr) {
      // Idle too long, or the pool is going away: leave (Start took no slot of ours).
      idle_.erase(std::find(idle_.begin(), idle_.end(), &me));
      break;
    }
    task = std::move(me.task);
    me.task = nullptr;
  }
  if (--threads_ == 0) all_gone_.notify_all();
}

}  // namespace strata::client::internal
