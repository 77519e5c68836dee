// Trace replay behind `strata bench trace`: reads a Mooncake request trace (JSONL, one request
// per line with chained block ids) and replays it against a block cache of a given capacity
// run by one of the store node's eviction policies, or by Belady's offline optimum ("min"),
// to measure the prefix-hit ratio each policy would reach.
//
// Prefix-hit ratio: for each request in order, its hits are the blocks found resident before
// its first missing block (a prefix match stops at the first miss, as a KV-cache lookup does);
// then every block of the request becomes resident (read if resident, else admitted with
// parent = the previous block and depth = its index), evicting by the policy whenever the
// cache is over capacity. prefix_hit_ratio = all hits / all blocks of all requests.
//
// Kept apart from the CLI11 wiring in bench_trace.cc so that parsing, replay and rendering are
// unit-tested. Plain value types and pure functions; thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "strata/storenode/eviction_policy.h"

namespace strata::cli {

// One line of a Mooncake trace.
struct TraceRequest {
  uint64_t timestamp_ms = 0;
  uint64_t input_length = 0;       // prompt tokens
  uint64_t output_length = 0;      // generated tokens
  std::vector<uint64_t> hash_ids;  // chained block ids, first block first; no repeats
};

struct Trace {
  std::vector<TraceRequest> requests;
  uint64_t blocks = 0;         // sum of the requests' hash_ids counts
  uint64_t unique_blocks = 0;  // distinct hash ids
};

// Parses one line: a JSON object with exactly the integer fields timestamp, input_length,
// output_length and the integer array hash_ids, in any order. INVALID_ARGUMENT naming
// `line_number` (1-based) and what is wrong otherwise.
absl::StatusOr<TraceRequest> ParseTraceLine(std::string_view line, size_t line_number);

// Parses JSONL text; blank lines are skipped. Stops after `max_requests` requests when it is
// not 0. INVALID_ARGUMENT from the first bad line.
absl::StatusOr<Trace> ParseTrace(std::string_view text, size_t max_requests = 0);

// Reads and parses a trace file. NOT_FOUND if it cannot be opened; errors of ParseTrace,
// prefixed with the path.
absl::StatusOr<Trace> ReadTraceFile(const std::string& path, size_t max_requests = 0);

// What a replay evicts with: a store-node policy, or Belady's optimum.
struct ReplayPolicy {
  bool belady = false;  // "min": evicts the block whose next use is farthest in the future
  storenode::PolicyKind kind = storenode::PolicyKind::kLru;
};
// "lru", "lfu", "prefix", "cost" or "min"; INVALID_ARGUMENT listing them otherwise.
absl::StatusOr<ReplayPolicy> ParseReplayPolicy(std::string_view name);
std::string ReplayPolicyName(const ReplayPolicy& policy);
// min first, then the store-node policies.
std::vector<ReplayPolicy> AllReplayPolicies();

struct ReplayConfig {
  ReplayPolicy policy;
  // Blocks the cache holds; with cool_blocks > 0, the warm tier's capacity.
  uint64_t capacity_blocks = 0;
  // > 0: a second, cool tier. Blocks evicted from warm are demoted to cool; blocks evicted
  // from cool are dropped; a block of a request found in cool is promoted back to warm.
  uint64_t cool_blocks = 0;
  storenode::EvictionPolicyOptions options;
};

struct TierResult {
  std::string name;  // "warm" or "cool"
  uint64_t capacity_blocks = 0;
  uint64_t hit_blocks = 0;  // prefix hits found in this tier
  uint64_t evictions = 0;   // blocks evicted from it (demotions, for warm with a cool tier)
};

struct ReplayResult {
  std::string policy;
  uint64_t requests = 0;
  uint64_t blocks = 0;
  uint64_t unique_blocks = 0;
  uint64_t capacity_blocks = 0;    // all tiers together
  uint64_t hit_blocks = 0;         // prefix hits, all tiers
  double prefix_hit_ratio = 0;     // hit_blocks / blocks; 0 for an empty trace
  uint64_t full_hit_requests = 0;  // requests whose every block was a hit
  uint64_t evictions = 0;          // blocks that left the cache (the last tier)
  std::vector<TierResult> tiers;   // one, or warm then cool
};

// Replays `trace`. The policies' clock is the request index. With two tiers, `min` is Belady
// applied to each tier separately, a strong reference rather than a proven bound.
// INVALID_ARGUMENT if capacity_blocks is 0.
absl::StatusOr<ReplayResult> ReplayTrace(const Trace& trace, const ReplayConfig& config);

// `strata bench trace` flags as typed; std::nullopt when not given.
struct BenchTraceFlags {
  std::string trace_path;
  std::optional<int64_t> capacity_blocks;
  std::optional<double> capacity_fraction;  // of unique blocks
  std::optional<std::string> policy;
  bool all_policies = false;
  std::optional<std::string> fractions;  // "0.01,0.02,..."
  std::optional<int64_t> warm_blocks;
  std::optional<int64_t> cool_blocks;
  std::optional<int64_t> max_requests;  // replay only the first N requests
  bool json = false;
};

// Checks the flags make one valid mode: exactly one of --capacity-blocks,
// --capacity-fraction, --fractions or --warm-blocks with --cool-blocks; --policy or
// --all-policies (optional with --fractions). INVALID_ARGUMENT saying what is wrong.
absl::Status ValidateBenchTraceFlags(const BenchTraceFlags& flags);

// Runs the mode the flags select on `trace` and renders it as text or JSON.
// INVALID_ARGUMENT for bad flags.
absl::StatusOr<std::string> RunBenchTrace(const Trace& trace, const BenchTraceFlags& flags);

}  // namespace strata::cli
