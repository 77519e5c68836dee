// TimedTurn: one holder at a time, and a waiter that gives up at a deadline. An absl::Mutex
// cannot be that: LockWhenWithDeadline bounds the wait for its condition, not for the mutex
// (it blocks until the mutex is free, however long its holder keeps it). Here the mutex is
// held only to flip a flag, and waiting is for the flag.
#pragma once

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace strata {

class TimedTurn {
 public:
  // Takes the turn, waiting for the holder until `deadline` at most (past: no wait). True
  // when taken; then Give() it back.
  bool Take(absl::Time deadline = absl::InfiniteFuture()) {
    absl::MutexLock lock(&mu_);
    auto free = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !taken_; };
    if (!mu_.AwaitWithDeadline(absl::Condition(&free), deadline)) return false;
    taken_ = true;
    return true;
  }
  void Give() {
    absl::MutexLock lock(&mu_);
    taken_ = false;
  }

  // Holds the turn for its scope, if it got it by the deadline (taken()).
  class Hold {
   public:
    explicit Hold(TimedTurn& turn, absl::Time deadline = absl::InfiniteFuture())
        : turn_(turn), taken_(turn.Take(deadline)) {}
    ~Hold() {
      if (taken_) turn_.Give();
    }
    Hold(const Hold&) = delete;
    Hold& operator=(const Hold&) = delete;
    bool taken() const { return taken_; }

   private:
    TimedTurn& turn_;
    const bool taken_;
  };

 private:
  absl::Mutex mu_;
  bool taken_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace strata
