#include "strata/common/malloc_tuning.h"

#include <malloc.h>

#include <cstdlib>
#include <string_view>

#include "absl/strings/str_cat.h"

namespace strata {

std::string TuneMalloc(const MallocTuning& tuning) {
  const char* tunables = std::getenv("GLIBC_TUNABLES");
  if (tunables != nullptr &&
      std::string_view(tunables).find("glibc.malloc.") != std::string::npos) {
    return absl::StrCat("malloc: GLIBC_TUNABLES=", tunables, " (left as set)");
  }
  const bool mmap_ok = mallopt(M_MMAP_THRESHOLD, static_cast<int>(tuning.mmap_threshold)) == 1;
  const bool trim_ok = mallopt(M_TRIM_THRESHOLD, static_cast<int>(tuning.trim_threshold)) == 1;
  return absl::StrCat("malloc: mmap threshold ", tuning.mmap_threshold >> 10, " KiB",
                      mmap_ok ? "" : " (refused)", ", trim threshold ", tuning.trim_threshold >> 10,
                      " KiB", trim_ok ? "" : " (refused)");
}

}  // namespace strata
