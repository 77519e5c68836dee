// Puts this process at a real thread limit, for tests that run it in a child of their own
// (gtest's "threadsafe" death tests): from the call on no thread can start in it.
#pragma once

#include <linux/capability.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdlib>

namespace strata::testutil {

// Root is exempt from RLIMIT_NPROC, so a root process first takes a uid no process uses
// (whose only tasks are then its own), keeping CAP_KILL, CAP_DAC_OVERRIDE and CAP_FOWNER,
// which the limit does not look at, so that it can still stop the node it started as root
// and remove that node's files. Then RLIMIT_NPROC 1, which the uid's tasks already reach.
// Exits 3 where that cannot be arranged.
inline void ReachTheThreadLimit() {
  if (getuid() == 0) {
    constexpr uid_t kUnusedUid = 54'321;
    if (prctl(PR_SET_KEEPCAPS, 1) != 0 || setuid(kUnusedUid) != 0) std::_Exit(3);
    __user_cap_header_struct header{_LINUX_CAPABILITY_VERSION_3, 0};
    __user_cap_data_struct data[2] = {};
    data[0].effective = data[0].permitted =
        (1u << CAP_KILL) | (1u << CAP_DAC_OVERRIDE) | (1u << CAP_FOWNER);
    if (syscall(SYS_capset, &header, data) != 0) std::_Exit(3);
  }
  const rlimit one{1, 1};
  if (setrlimit(RLIMIT_NPROC, &one) != 0) std::_Exit(3);
}

}  // namespace strata::testutil
