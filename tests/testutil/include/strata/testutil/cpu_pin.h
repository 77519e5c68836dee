// OneCpuScope: pins the calling thread to one CPU of its affinity mask until the scope ends,
// then puts the mask back. Processes it starts meanwhile inherit the one CPU (fork copies the
// calling thread's mask), so a test can show what a process does on a one-CPU machine.
#pragma once

#include <sched.h>

namespace strata::testutil {

class OneCpuScope {
 public:
  OneCpuScope() {
    if (sched_getaffinity(0, sizeof(saved_), &saved_) != 0) return;
    int first = 0;
    while (first < CPU_SETSIZE && !CPU_ISSET(first, &saved_)) ++first;
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(first, &one);
    ok_ = sched_setaffinity(0, sizeof(one), &one) == 0;
  }
  ~OneCpuScope() {
    if (ok_) sched_setaffinity(0, sizeof(saved_), &saved_);
  }
  OneCpuScope(const OneCpuScope&) = delete;
  OneCpuScope& operator=(const OneCpuScope&) = delete;

  bool ok() const { return ok_; }  // false: the mask could not be read or set (nothing pinned)

 private:
  cpu_set_t saved_;
  bool ok_ = false;
};

}  // namespace strata::testutil
