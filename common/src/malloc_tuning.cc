#include "strata/common/malloc_tuning.h"

#include <malloc.h>

#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace strata {

namespace {

// Sets one threshold unless GLIBC_TUNABLES names it; what happened, for the log.
std::string Apply(absl::string_view tunables, absl::string_view tunable, absl::string_view what,
                  int param, size_t value) {
  if (tunables.find(absl::StrCat("glibc.malloc.", tunable, "=")) != absl::string_view::npos) {
    return absl::StrCat(what, " as GLIBC_TUNABLES sets it");
  }
  const bool ok = mallopt(param, static_cast<int>(value)) == 1;
  return absl::StrCat(what, " ", value >> 10, " KiB", ok ? "" : " (refused)");
}

}  // namespace

std::string TuneMalloc(const MallocTuning& tuning) {
  const char* env = std::getenv("GLIBC_TUNABLES");
  const absl::string_view tunables = env != nullptr ? env : "";
  std::string mmap =
      Apply(tunables, "mmap_threshold", "mmap threshold", M_MMAP_THRESHOLD, tuning.mmap_threshold);
  std::string trim =
      Apply(tunables, "trim_threshold", "trim threshold", M_TRIM_THRESHOLD, tuning.trim_threshold);
  return absl::StrCat("malloc: ", mmap, ", ", trim);
}

}  // namespace strata
