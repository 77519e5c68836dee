// Time on a clock that only runs forward (std::chrono::steady_clock), for intervals and
// deadlines that a wall clock stepped back (NTP at boot) must not stretch.
#pragma once

#include <chrono>
#include <cstdint>

#include "absl/time/time.h"

namespace strata {

// Since an arbitrary start; only differences mean anything.
inline absl::Duration SteadyNow() {
  return absl::FromChrono(std::chrono::steady_clock::now().time_since_epoch());
}
inline int64_t SteadyNowMs() { return absl::ToInt64Milliseconds(SteadyNow()); }

}  // namespace strata
