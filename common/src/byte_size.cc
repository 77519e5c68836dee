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
  double factor;
};

constexpr Unit kUnits[] = {
    {"", 1.0},
    {"b", 1.0},
    {"k", 1e3},
    {"kb", 1e3},
    {"kib", 1024.0},
    {"ki", 1024.0},
    {"m", 1e6},
    {"mb", 1e6},
    {"mib", 1048576.0},
    {"mi", 1048576.0},
    {"g", 1e9},
    {"gb", 1e9},
    {"gib", 1073741824.0},
    {"gi", 1073741824.0},
    {"t", 1e12},
    {"tb", 1e12},
    {"tib", 1099511627776.0},
    {"ti", 1099511627776.0},
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
    if (unit == u.name) {
      double bytes = value * u.factor;
      if (bytes >= 1.8e19) {
        return absl::InvalidArgumentError(absl::StrCat(f, ": '", s, "' overflows 64 bits"));
      }
      return static_cast<uint64_t>(std::llround(bytes));
    }
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
