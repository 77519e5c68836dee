#include "strata/common/byte_size.h"

#include <cmath>
#include <cstdio>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace strata {
namespace {

// IEC (KiB), SI (KB, K) and Kubernetes quantity suffixes (Ki, Mi, Gi, Ti: the forms a Helm
// value or a pod's memory limit is written in), case-insensitive.
struct Unit {
  std::string_view name;
  uint64_t factor;
};

constexpr Unit kUnits[] = {
    {"", 1},
    {"b", 1},
    {"k", 1000},
    {"kb", 1000},
    {"kib", 1ull << 10},
    {"ki", 1ull << 10},
    {"m", 1000000},
    {"mb", 1000000},
    {"mib", 1ull << 20},
    {"mi", 1ull << 20},
    {"g", 1000000000},
    {"gb", 1000000000},
    {"gib", 1ull << 30},
    {"gi", 1ull << 30},
    {"t", 1000000000000},
    {"tb", 1000000000000},
    {"tib", 1ull << 40},
    {"ti", 1ull << 40},
};

}  // namespace

absl::StatusOr<uint64_t> ParseByteSize(std::string_view text, std::string_view field) {
  absl::string_view f(field.data(), field.size());
  std::string s(absl::StripAsciiWhitespace(absl::string_view(text.data(), text.size())));
  size_t split = 0;
  while (split < s.size() &&
         (absl::ascii_isdigit(static_cast<unsigned char>(s[split])) || s[split] == '.')) {
    ++split;
  }
  std::string number = s.substr(0, split);
  std::string unit = absl::AsciiStrToLower(absl::StripAsciiWhitespace(s.substr(split)));
  double value = 0;
  if (number.empty() || !absl::SimpleAtod(number, &value) || value < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(f, ": '", s, "' is not a byte size (e.g. 4096, 64KiB, 1GiB)"));
  }
  for (const Unit& u : kUnits) {
    if (unit != u.name) continue;
    const absl::Status overflow =
        absl::InvalidArgumentError(absl::StrCat(f, ": '", s, "' overflows 64 bits"));
    // Whole numbers exactly (a double holds integers only up to 2^53).
    if (uint64_t whole = 0; number.find('.') == std::string::npos &&
                            absl::SimpleAtoi(absl::string_view(number), &whole)) {
      if (whole > UINT64_MAX / u.factor) return overflow;
      return whole * u.factor;
    }
    const double bytes = std::round(value * static_cast<double>(u.factor));
    if (bytes >= 0x1p64) return overflow;  // nor does it cast to uint64_t
    return static_cast<uint64_t>(bytes);
  }
  return absl::InvalidArgumentError(
      absl::StrCat(f, ": unknown unit '", unit,
                   "' (use B, KiB, MiB, GiB, TiB, Ki, Mi, Gi, Ti, KB, MB, GB, TB)"));
}

std::string FormatByteSize(uint64_t bytes) {
  static constexpr const char* kNames[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  if (bytes < 1024) return absl::StrCat(bytes, " B");
  double v = static_cast<double>(bytes);
  int i = 0;
  while (v >= 1024.0 && i < 5) {
    v /= 1024.0;
    ++i;
  }
  return absl::StrFormat("%.2f %s", v, kNames[i]);
}

}  // namespace strata
