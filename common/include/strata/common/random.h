// Random values that are capabilities or secrets (data channel ids, lease and reservation
// ids, peer tokens, hash seeds): from the system's random source through OpenSSL, never from
// a counter or a clock, which another tenant could guess. When that source fails the caller
// fails too: a node refuses to start (CheckRandomSource), a call is refused UNAVAILABLE.
#pragma once

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace strata {

// Fills `n` bytes at `out`; UNAVAILABLE naming OpenSSL's reason when the source fails.
absl::Status RandomFill(void* out, size_t n);
absl::StatusOr<uint64_t> RandomU64();

// OK when the random source gives bytes now; else FAILED_PRECONDITION saying what a process
// that hands out random capabilities cannot do without one. Called once at start.
absl::Status CheckRandomSource();

}  // namespace strata
