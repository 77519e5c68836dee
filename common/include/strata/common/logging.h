// Process-wide logging set-up (spdlog). One line per notable event; no per-block lines at
// info level. Call InitLogging once from main() before starting threads.
#pragma once

#include <string_view>

#include "absl/status/status.h"

namespace strata {

// level: trace, debug, info, warn, error, off. INVALID_ARGUMENT for anything else.
absl::Status InitLogging(std::string_view level, std::string_view process_name);

}  // namespace strata
