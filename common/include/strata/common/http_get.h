// A small HTTP/1.1 client for a node's own pages (/metrics, /healthz) over TCP, and the parse
// of the per-call handler time a node exports there. For tools and tests on the node's
// network (strata-bench's per-phase node figures, integration tests), not for the data path.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <utility>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace strata {

// The largest answer HttpGet reads (a node's /metrics is well under a MiB).
inline constexpr size_t kMaxHttpAnswerBytes = 64 << 20;

// GET http://ADDR/path, ADDR an IPv4 "host:port". Returns (status code, body) once the
// server closes the connection. INVALID_ARGUMENT: ADDR is not an IPv4 host:port, or
// `timeout` is not positive. UNAVAILABLE: no connection, a failed write, a malformed answer,
// an answer over kMaxHttpAnswerBytes, or no complete answer within `timeout` (one deadline
// for connect, write and read).
absl::StatusOr<std::pair<int, std::string>> HttpGet(const std::string& address,
                                                    const std::string& path,
                                                    absl::Duration timeout = absl::Seconds(5));

// What a node's handlers of one call type (put_data, get_data, lookup, ...) have done so far:
// calls served and the seconds they took in all, from strata_op_latency_seconds_count and
// _sum on /metrics.
struct OpTotals {
  uint64_t calls = 0;
  double seconds = 0;

  // Mean handler time per call in µs (0 without calls).
  double mean_us() const { return calls == 0 ? 0 : seconds * 1e6 / static_cast<double>(calls); }
};

// Every op's totals in a Prometheus text page; ops absent from it are absent here.
std::map<std::string, OpTotals> ParseOpTotals(absl::string_view metrics);

}  // namespace strata
