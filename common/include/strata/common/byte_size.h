// Human byte sizes: "1GiB", "512MiB", "64KiB", "4096", "1.5GiB", "2GB" (SI units are powers
// of 1000, IEC units powers of 1024, a bare number is bytes). Stateless; thread-safe.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace strata {

// INVALID_ARGUMENT (naming `field`) on an unknown unit, a negative number or overflow.
absl::StatusOr<uint64_t> ParseByteSize(std::string_view text, std::string_view field = "size");

// "2.00 MiB"-style rendering with IEC units; exact bytes below 1 KiB ("512 B").
std::string FormatByteSize(uint64_t bytes);

}  // namespace strata
