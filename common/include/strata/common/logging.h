// Process-wide logging set-up (spdlog). One line per notable event; no per-block lines at
// info level. Call InitLogging once from main() before starting threads.
#pragma once

#include <atomic>
#include <cstdint>
#include <string_view>

#include "absl/status/status.h"

namespace strata {

// level: trace, debug, info, warn, error, off. INVALID_ARGUMENT for anything else.
absl::Status InitLogging(std::string_view level, std::string_view process_name);

// For a warning that a failure repeats for every block (a disk that refuses writes): true at
// most once in 10 s per `last_s` (the time of the last one let through), when to log it.
bool DueForWarning(std::atomic<int64_t>& last_s);

}  // namespace strata
