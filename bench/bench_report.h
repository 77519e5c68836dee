// What strata-bench measured, and its two renderings: a table for people and JSON for
// scripts that track figures over time. Plain value types and pure functions; thread-
// compatible (each bench stream fills its own PhaseResult, merged after the phase).
#pragma once

#include <cstdint>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "strata/common/http_get.h"

namespace strata::bench {

// Outcome of one phase (put, get, lookup, or one op of the mixed phase: mixed_get,
// mixed_put) over every stream.
struct PhaseResult {
  std::string op;
  uint64_t blocks = 0;                    // blocks that completed correctly
  uint64_t bytes = 0;                     // payload bytes moved by those blocks (0 for lookup)
  double seconds = 0;                     // wall clock, first stream's start to last stream's end
  std::vector<double> call_latencies_us;  // one per batched call, failed calls included
  uint64_t errors = 0;                    // blocks that failed, mismatches included
  std::map<std::string, uint64_t> errors_by_code;  // failed blocks by status code (no mismatches)
  uint64_t mismatches = 0;        // get: blocks returned OK whose bytes differed from what was put
  uint64_t already_present = 0;   // put: blocks the node held before (dedup), not errors
  bool complete = true;           // false when --max-seconds stopped the phase
  double client_cpu_seconds = 0;  // CPU time the bench process used during the phase
  // The local node's handlers during the phase, per call type (put_data, get_data, lookup...):
  // calls served and their seconds in all, from its /metrics (empty without a local node).
  // Call latency minus handler time is what the wire, gRPC and the client add.
  std::map<std::string, OpTotals> node_ops;

  // Folds another stream's share of the same phase into this one (seconds untouched).
  void Merge(const PhaseResult& other);
};

struct LatencySummary {
  double p50_us = 0;
  double p90_us = 0;
  double p99_us = 0;
  double p999_us = 0;
  double max_us = 0;
};

// Nearest-rank percentiles; all zero for no calls.
LatencySummary Summarize(std::vector<double> latencies_us);

// The run's parameters, echoed in both reports.
struct RunInfo {
  std::string node;
  uint64_t block_size = 0;
  uint64_t blocks = 0;
  uint32_t streams = 0;
  uint32_t batch = 0;
  uint32_t chain_blocks = 0;
  uint64_t seed = 0;
  // The mixed phase's settings, reported when it ran (mixed_seconds > 0).
  double mixed_seconds = 0;
  double get_fraction = 0;
  uint64_t fresh_blocks = 0;
};

// A fixed-width table of every phase, one row each.
void PrintTable(std::FILE* out, const RunInfo& run, const std::vector<PhaseResult>& phases);

// {node, block_size, blocks, streams, batch, chain_blocks, seed, [mixed_seconds, get_fraction,
// fresh_blocks,] phases:[{op, blocks, bytes, seconds, gbps, blocks_per_s, calls, calls_per_s,
// p50_us, p90_us, p99_us, p999_us, max_us, errors, errors_by_code: {CODE: n}, mismatches,
// already_present, complete, client_cpu_s}]}, newline-terminated. GB/s counts 1e9 bytes.
std::string ToJson(const RunInfo& run, const std::vector<PhaseResult>& phases);

}  // namespace strata::bench
