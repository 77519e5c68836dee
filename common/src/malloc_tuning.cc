#include "strata/common/malloc_tuning.h"

#include <malloc.h>

#include <cstdlib>
#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace strata {

namespace {

// Sets one threshold unless the environment names it or `value` is 0; what happened, for the
// log.
std::string Apply(absl::string_view tunables, absl::string_view tunable, const char* env_name,
                  absl::string_view what, int param, size_t value) {
  if (tunables.find(absl::StrCat("glibc.malloc.", tunable, "=")) != absl::string_view::npos) {
    return absl::StrCat(what, " as GLIBC_TUNABLES sets it");
  }
  if (std::getenv(env_name) != nullptr) return absl::StrCat(what, " as ", env_name, " sets it");
  if (value == 0) return absl::StrCat(what, " left as it is");
  const bool ok = value <= static_cast<size_t>(std::numeric_limits<int>::max()) &&
                  mallopt(param, static_cast<int>(value)) == 1;
  return absl::StrCat(what, " ", value >> 10, " KiB", ok ? "" : " (refused)");
}

}  // namespace

std::string TuneMalloc(const MallocTuning& tuning) {
  const char* env = std::getenv("GLIBC_TUNABLES");
  const absl::string_view tunables = env != nullptr ? env : "";
  std::string mmap = Apply(tunables, "mmap_threshold", "MALLOC_MMAP_THRESHOLD_", "mmap threshold",
                           M_MMAP_THRESHOLD, tuning.mmap_threshold);
  std::string trim = Apply(tunables, "trim_threshold", "MALLOC_TRIM_THRESHOLD_", "trim threshold",
                           M_TRIM_THRESHOLD, tuning.trim_threshold);
  return absl::StrCat("malloc: ", mmap, ", ", trim);
}

}  // namespace strata
