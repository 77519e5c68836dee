#include "strata/common/memory_limit.h"

#include <algorithm>
#include <fstream>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/strip.h"
#include "strata/common/sys_files.h"

namespace strata {
namespace {

// MemTotal of /proc/meminfo, in bytes; 0 if unreadable.
uint64_t MemTotal() {
  std::ifstream in("/proc/meminfo");
  std::string line;
  while (std::getline(in, line)) {
    absl::string_view rest(line);
    if (!absl::ConsumePrefix(&rest, "MemTotal:")) continue;
    rest = absl::StripAsciiWhitespace(rest);
    absl::ConsumeSuffix(&rest, "kB");
    uint64_t kib = 0;
    return absl::SimpleAtoi(absl::StripAsciiWhitespace(rest), &kib) ? kib << 10 : 0;
  }
  return 0;
}

}  // namespace

uint64_t MemoryUnderLimit(std::string_view limit_line, uint64_t total) {
  const absl::string_view line(limit_line.data(), limit_line.size());  // Debian's absl
  uint64_t limit = 0;
  if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(line), &limit) || limit == 0) return total;
  return total == 0 ? limit : std::min(limit, total);
}

uint64_t UsableMemoryBytes() {
  uint64_t bytes = MemTotal();
  bytes = MemoryUnderLimit(FirstLineOf("/sys/fs/cgroup/memory.max"), bytes);
  return MemoryUnderLimit(FirstLineOf("/sys/fs/cgroup/memory/memory.limit_in_bytes"), bytes);
}

}  // namespace strata
