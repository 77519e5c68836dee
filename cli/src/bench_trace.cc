// `strata bench trace`: replays a Mooncake request trace against the store node's eviction
// policies and Belady's optimum. Binds the flags and prints; parsing, replay and rendering live
// in trace_replay so they can be tested without a process.
#include <cstdio>
#include <memory>
#include <optional>
#include <string>

#include "CLI/CLI.hpp"
#include "commands.h"
#include "trace_replay.h"

namespace strata::cli {
namespace {

// Flag storage must outlive AddBenchTraceCommand: CLI11 writes into it during parse() and the
// callback reads it afterwards, so it is shared with the callback.
struct BenchTraceState {
  std::string trace_path;
  int64_t capacity_blocks = 0;
  double capacity_fraction = 0;
  std::string policy;
  bool all_policies = false;
  std::string fractions;
  int64_t warm_blocks = 0;
  int64_t cool_blocks = 0;
  int64_t max_requests = 0;
  bool json = false;

  CLI::Option* capacity_blocks_opt = nullptr;
  CLI::Option* capacity_fraction_opt = nullptr;
  CLI::Option* policy_opt = nullptr;
  CLI::Option* fractions_opt = nullptr;
  CLI::Option* warm_blocks_opt = nullptr;
  CLI::Option* cool_blocks_opt = nullptr;
  CLI::Option* max_requests_opt = nullptr;
};

template <typename T>
std::optional<T> IfGiven(const CLI::Option* opt, const T& value) {
  return opt->count() > 0 ? std::optional<T>(value) : std::nullopt;
}

BenchTraceFlags ToFlags(const BenchTraceState& s) {
  BenchTraceFlags flags;
  flags.trace_path = s.trace_path;
  flags.capacity_blocks = IfGiven(s.capacity_blocks_opt, s.capacity_blocks);
  flags.capacity_fraction = IfGiven(s.capacity_fraction_opt, s.capacity_fraction);
  flags.policy = IfGiven(s.policy_opt, s.policy);
  flags.all_policies = s.all_policies;
  flags.fractions = IfGiven(s.fractions_opt, s.fractions);
  flags.warm_blocks = IfGiven(s.warm_blocks_opt, s.warm_blocks);
  flags.cool_blocks = IfGiven(s.cool_blocks_opt, s.cool_blocks);
  flags.max_requests = IfGiven(s.max_requests_opt, s.max_requests);
  flags.json = s.json;
  return flags;
}

// Bad flags are a usage error (2); a trace that cannot be read or parsed is a failure (1).
int RunBenchTraceCommand(const BenchTraceState& state) {
  const BenchTraceFlags flags = ToFlags(state);
  if (absl::Status s = ValidateBenchTraceFlags(flags); !s.ok()) {
    std::fprintf(stderr, "strata bench trace: %s\n", std::string(s.message()).c_str());
    return 2;
  }
  absl::StatusOr<Trace> trace =
      ReadTraceFile(flags.trace_path, static_cast<size_t>(flags.max_requests.value_or(0)));
  absl::StatusOr<std::string> out = trace.ok() ? RunBenchTrace(*trace, flags) : trace.status();
  if (!out.ok()) {
    std::fprintf(stderr, "strata bench trace: %s\n", std::string(out.status().message()).c_str());
    return 1;
  }
  std::fputs(out->c_str(), stdout);
  return 0;
}

}  // namespace

void AddBenchTraceCommand(CLI::App& bench, int* exit_code) {
  auto state = std::make_shared<BenchTraceState>();
  CLI::App* cmd = bench.add_subcommand(
      "trace", "Replay a Mooncake request trace: prefix-hit ratio per eviction policy");
  cmd->footer(
      "Hits of a request are its blocks found cached before its first miss; then all its\n"
      "blocks become cached. prefix_hit_ratio = hits / blocks. min is Belady's optimum.\n"
      "Example: strata bench trace --trace synthetic_trace.jsonl "
      "--fractions 0.01,0.02,0.05,0.1,0.25");
  cmd->add_option("--trace", state->trace_path,
                  "Trace file (JSONL: timestamp, input_length, "
                  "output_length, hash_ids)")
      ->type_name("FILE")
      ->required();
  state->capacity_blocks_opt =
      cmd->add_option("--capacity-blocks", state->capacity_blocks, "Cache capacity in blocks")
          ->type_name("N");
  state->capacity_fraction_opt =
      cmd->add_option("--capacity-fraction", state->capacity_fraction,
                      "Cache capacity as a fraction of the trace's unique blocks")
          ->type_name("F");
  state->policy_opt = cmd->add_option("--policy", state->policy, "lru, lfu, prefix, cost or min")
                          ->type_name("NAME");
  cmd->add_flag("--all-policies", state->all_policies, "Compare every policy at one capacity");
  state->fractions_opt =
      cmd->add_option("--fractions", state->fractions,
                      "Table of every policy at these capacities (fractions of unique blocks)")
          ->type_name("F,F,...");
  state->warm_blocks_opt =
      cmd->add_option("--warm-blocks", state->warm_blocks, "Two tiers: warm capacity in blocks")
          ->type_name("N");
  state->cool_blocks_opt =
      cmd->add_option("--cool-blocks", state->cool_blocks,
                      "Two tiers: cool capacity in blocks (warm victims demote to cool)")
          ->type_name("N");
  state->max_requests_opt =
      cmd->add_option("--requests", state->max_requests, "Replay only the first N requests")
          ->type_name("N");
  cmd->add_flag("--json", state->json, "Print one JSON object instead of text");

  cmd->callback([state, exit_code]() { *exit_code = RunBenchTraceCommand(*state); });
}

}  // namespace strata::cli
