#include "strata/common/logging.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "spdlog/sinks/stdout_color_sinks.h"
#include "spdlog/spdlog.h"

namespace strata {

absl::Status InitLogging(std::string_view level, std::string_view process_name) {
  spdlog::level::level_enum lvl = spdlog::level::from_str(std::string(level));
  // spdlog maps unknown names to "off"; only "off" itself may mean off.
  if (lvl == spdlog::level::off && level != "off") {
    return absl::InvalidArgumentError(absl::StrCat("log_level: '", std::string(level),
                                                   "' (use trace, debug, info, warn, error, off)"));
  }
  auto logger = spdlog::stderr_color_mt(std::string(process_name));
  logger->set_level(lvl);
  logger->set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%L%$ %n[%P] %v");
  spdlog::set_default_logger(logger);
  return absl::OkStatus();
}

bool DueForWarning(std::atomic<int64_t>& last_s) {
  const int64_t now_s = absl::ToUnixSeconds(absl::Now());
  int64_t last = last_s.load(std::memory_order_relaxed);
  return now_s - last >= 10 &&
         last_s.compare_exchange_strong(last, now_s, std::memory_order_relaxed);
}

}  // namespace strata
