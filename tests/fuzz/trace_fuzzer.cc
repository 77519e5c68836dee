// trace_fuzzer: the Mooncake JSONL trace parser of `strata bench trace` (cli/src/trace_replay.h)
// and the replay and rendering that consume what it accepts.
//
// Input: trace text, optionally followed by a NUL byte and a flags tail:
//   [max_requests][capacity][mode] fractions-text...
// The text goes to ParseTrace (with and without a request limit) and line by line to
// ParseTraceLine; a trace it accepts is replayed with every policy at small capacities, one
// and two tiers, and (with a tail) through RunBenchTrace with flags made from the tail.
//
// Invariants: parse errors are INVALID_ARGUMENT naming the line; accepted lines re-serialize
// (canonical JSON) to lines that parse to the same request; a request limit gives a prefix of
// the full parse; replays count no more hits than blocks, and their tiers add up;
// RunBenchTrace succeeds or names bad flags (INVALID_ARGUMENT).
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "fuzz_check.h"
#include "trace_replay.h"

namespace strata::fuzz {
namespace {

using cli::ParseTrace;
using cli::ParseTraceLine;
using cli::Trace;
using cli::TraceRequest;

// Bounds that keep one execution well under a millisecond or so.
constexpr size_t kMaxText = 64 << 10;
constexpr uint64_t kMaxReplayBlocks = 8192;
constexpr size_t kMaxFractions = 6;

bool Same(const TraceRequest& a, const TraceRequest& b) {
  return a.timestamp_ms == b.timestamp_ms && a.input_length == b.input_length &&
         a.output_length == b.output_length && a.hash_ids == b.hash_ids;
}

std::string Canonical(const TraceRequest& r) {
  return absl::StrCat("{\"timestamp\": ", r.timestamp_ms, ", \"input_length\": ", r.input_length,
                      ", \"output_length\": ", r.output_length, ", \"hash_ids\": [",
                      absl::StrJoin(r.hash_ids, ", "), "]}");
}

// STRATA_FUZZ_VERBOSE=1: print what each stage returned (for checking what seeds reach).
bool Verbose() {
  static const bool verbose = std::getenv("STRATA_FUZZ_VERBOSE") != nullptr;
  return verbose;
}

void CheckError(const absl::Status& s) {
  FUZZ_CHECK_MSG(s.code() == absl::StatusCode::kInvalidArgument, s.ToString());
  FUZZ_CHECK_MSG(s.message().substr(0, 5) == "line ", s.ToString());
}

void CheckReplays(const Trace& trace, uint8_t capacity) {
  if (trace.blocks > kMaxReplayBlocks) return;
  for (const cli::ReplayPolicy& policy : cli::AllReplayPolicies()) {
    for (const uint64_t cool : {uint64_t{0}, static_cast<uint64_t>(capacity % 5)}) {
      cli::ReplayConfig config;
      config.policy = policy;
      config.capacity_blocks = 1 + capacity % 7;
      config.cool_blocks = cool;
      absl::StatusOr<cli::ReplayResult> r = cli::ReplayTrace(trace, config);
      FUZZ_CHECK_MSG(r.ok(), r.status().ToString());
      FUZZ_CHECK(r->requests == trace.requests.size());
      FUZZ_CHECK(r->blocks == trace.blocks && r->unique_blocks == trace.unique_blocks);
      FUZZ_CHECK(r->hit_blocks <= r->blocks);
      FUZZ_CHECK(r->full_hit_requests <= r->requests);
      FUZZ_CHECK(r->prefix_hit_ratio >= 0 && r->prefix_hit_ratio <= 1);
      FUZZ_CHECK(r->tiers.size() == (cool > 0 ? 2u : 1u));
      uint64_t tier_hits = 0;
      for (const cli::TierResult& t : r->tiers) tier_hits += t.hit_blocks;
      FUZZ_CHECK(tier_hits == r->hit_blocks);
      FUZZ_CHECK(r->evictions == r->tiers.back().evictions);
    }
  }
  cli::ReplayConfig zero;
  FUZZ_CHECK(cli::ReplayTrace(trace, zero).status().code() == absl::StatusCode::kInvalidArgument);
}

// Flags from the tail: mode bits choose which options are set.
void CheckBench(const Trace& trace, std::string_view tail) {
  if (tail.size() < 3 || trace.blocks > kMaxReplayBlocks) return;
  const auto value = static_cast<int64_t>(static_cast<int8_t>(tail[1]));
  const auto mode = static_cast<uint8_t>(tail[2]);
  const std::string_view text = tail.substr(3);
  if (std::count(text.begin(), text.end(), ',') >= static_cast<long>(kMaxFractions)) return;
  static constexpr const char* kPolicies[] = {"min", "lru", "lfu", "prefix", "cost", "LRU", ""};
  cli::BenchTraceFlags flags;
  if (mode & 1) flags.capacity_blocks = value;
  if (mode & 2) flags.capacity_fraction = static_cast<double>(value) / 64.0;
  if (mode & 4) flags.fractions = std::string(text);
  if (mode & 8) flags.warm_blocks = value;
  if (mode & 16) flags.cool_blocks = value / 2;
  if (mode & 32) flags.policy = kPolicies[(mode >> 6) + (value & 3) % 4];
  flags.all_policies = (mode & 64) != 0;
  flags.json = (mode & 128) != 0;
  const absl::Status valid = cli::ValidateBenchTraceFlags(flags);
  FUZZ_CHECK(valid.ok() || valid.code() == absl::StatusCode::kInvalidArgument);
  absl::StatusOr<std::string> out = cli::RunBenchTrace(trace, flags);
  if (Verbose())
    std::fprintf(stderr, "  bench: %s\n",
                 out.ok() ? out->c_str() : out.status().ToString().c_str());
  if (!out.ok()) {
    FUZZ_CHECK_MSG(out.status().code() == absl::StatusCode::kInvalidArgument,
                   out.status().ToString());
    FUZZ_CHECK(!valid.ok() || trace.unique_blocks == 0);
    return;
  }
  FUZZ_CHECK(valid.ok() && !out->empty() && out->back() == '\n');
}

}  // namespace
}  // namespace strata::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace strata::fuzz;
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  const size_t nul = input.find('\0');
  const std::string_view text = input.substr(0, nul);
  const std::string_view tail = nul == std::string_view::npos ? "" : input.substr(nul + 1);
  if (text.size() > kMaxText) return 0;

  absl::StatusOr<Trace> trace = ParseTrace(text);
  if (Verbose()) {
    std::fprintf(stderr, "  parse: %s\n",
                 trace.ok() ? absl::StrCat(trace->requests.size(), " requests").c_str()
                            : trace.status().ToString().c_str());
  }
  if (!trace.ok()) {
    CheckError(trace.status());
  } else {
    uint64_t blocks = 0;
    for (const TraceRequest& r : trace->requests) {
      blocks += r.hash_ids.size();
      std::vector<uint64_t> ids = r.hash_ids;
      std::sort(ids.begin(), ids.end());
      FUZZ_CHECK(std::adjacent_find(ids.begin(), ids.end()) == ids.end());
      absl::StatusOr<TraceRequest> again = ParseTraceLine(Canonical(r), 1);
      FUZZ_CHECK_MSG(again.ok(), again.status().ToString());
      FUZZ_CHECK(Same(*again, r));
    }
    FUZZ_CHECK(blocks == trace->blocks && trace->unique_blocks <= trace->blocks);
  }

  // A request limit stops early: the same requests, or an error no later than the full one.
  const size_t limit = tail.empty() ? 1 : 1 + static_cast<uint8_t>(tail[0]) % 4;
  absl::StatusOr<Trace> first = ParseTrace(text, limit);
  if (first.ok()) {
    FUZZ_CHECK(first->requests.size() <= limit);
    if (trace.ok()) {
      FUZZ_CHECK(first->requests.size() == std::min(limit, trace->requests.size()));
      for (size_t i = 0; i < first->requests.size(); ++i) {
        FUZZ_CHECK(Same(first->requests[i], trace->requests[i]));
      }
    }
  } else {
    CheckError(first.status());
    FUZZ_CHECK(!trace.ok() && first.status() == trace.status());
  }

  // Line by line: the first line alone parses as ParseTrace saw it.
  const std::string_view line = text.substr(0, text.find('\n'));
  absl::StatusOr<TraceRequest> one = ParseTraceLine(line, 1);
  if (one.ok() && trace.ok() && !trace->requests.empty()) {
    FUZZ_CHECK(Same(*one, trace->requests[0]));
  } else if (!one.ok()) {
    CheckError(one.status());
  }

  if (trace.ok()) {
    CheckReplays(*trace, tail.size() > 1 ? static_cast<uint8_t>(tail[1]) : 3);
    CheckBench(*trace, tail);
  }
  return 0;
}
