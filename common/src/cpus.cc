#include "strata/common/cpus.h"

#include <sched.h>

#include <algorithm>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "strata/common/sys_files.h"

namespace strata {

uint32_t CpusUnderQuota(std::string_view cpu_max, uint32_t cpus) {
  cpus = std::max<uint32_t>(cpus, 1);
  const absl::string_view line(cpu_max.data(), cpu_max.size());  // Debian's absl has its own
  std::vector<absl::string_view> parts =
      absl::StrSplit(absl::StripAsciiWhitespace(line), ' ', absl::SkipEmpty());
  int64_t quota = 0;
  int64_t period = 0;
  if (parts.size() != 2 || !absl::SimpleAtoi(parts[0], &quota) ||
      !absl::SimpleAtoi(parts[1], &period) || quota <= 0 || period <= 0) {
    return cpus;
  }
  const int64_t allowed = std::max<int64_t>(1, (quota + period - 1) / period);
  return static_cast<uint32_t>(std::min<int64_t>(allowed, cpus));
}

uint32_t UsableCpus() {
  uint32_t cpus = std::max(1u, std::thread::hardware_concurrency());
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0 && CPU_COUNT(&set) > 0) {
    cpus = static_cast<uint32_t>(CPU_COUNT(&set));
  }
  // cgroup v2 first; v1 keeps quota and period in two files (-1: no quota).
  if (std::string v2 = FirstLineOf("/sys/fs/cgroup/cpu.max"); !v2.empty()) {
    return CpusUnderQuota(v2, cpus);
  }
  const std::string quota = FirstLineOf("/sys/fs/cgroup/cpu/cpu.cfs_quota_us");
  const std::string period = FirstLineOf("/sys/fs/cgroup/cpu/cpu.cfs_period_us");
  return CpusUnderQuota(quota + " " + period, cpus);
}

}  // namespace strata
