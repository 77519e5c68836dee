// Starting a thread without ending the process when none can be had. std::thread throws
// std::system_error when the process or its cgroup is at its thread limit (RLIMIT_NPROC, a
// container's pids.max) or out of memory for a stack; thrown from a background loop or
// through Strata's exception-free APIs it would end the process.
#pragma once

#include <functional>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace strata {

// A thread running `body`, or RESOURCE_EXHAUSTED naming `what` (and the system's reason) when
// none could be started; `body` is then dropped without running.
absl::StatusOr<std::thread> StartThread(absl::string_view what, std::function<void()> body);

}  // namespace strata
