// How much memory this process may use: the machine's (MemTotal), lowered to a cgroup limit
// where one is set (a Kubernetes pod's memory limit shows as cgroup v2 `memory.max`, or v1
// `memory.limit_in_bytes`). The store node refuses a warm tier larger than that at start: the
// arena is mapped without reserving it, so it would start, report ready, and be killed by the
// kernel as it filled (DESIGN: over budget is RESOURCE_EXHAUSTED, never an OOM kill).
#pragma once

#include <cstdint>
#include <string_view>

namespace strata {

// 0 when neither can be read.
uint64_t UsableMemoryBytes();

// The bytes a cgroup limit line allows out of `total`: a number smaller than `total` (v2
// `memory.max`, v1 `memory.limit_in_bytes`) is the limit; "max", an unreadable line, 0 or a
// larger number (v1's "no limit" is a huge one) leave `total`.
uint64_t MemoryUnderLimit(std::string_view limit_line, uint64_t total);

}  // namespace strata
