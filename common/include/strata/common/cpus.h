// How many CPUs this process may use: the ones its affinity mask allows, lowered to a cgroup
// CPU quota where one is set (a Kubernetes pod's CPU limit shows as cgroup v2 `cpu.max` or
// v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`, not in the affinity mask). Thread-safe.
#pragma once

#include <cstdint>
#include <string_view>

namespace strata {

// At least 1.
uint32_t UsableCpus();

// The CPUs a cgroup quota allows out of `cpus`: a cgroup v2 `cpu.max` line ("max 100000",
// "150000 100000") gives ceil(quota / period) when smaller than `cpus`; "max", an unreadable
// line or a non-positive quota or period leave `cpus`. Never below 1.
uint32_t CpusUnderQuota(std::string_view cpu_max, uint32_t cpus);

}  // namespace strata
