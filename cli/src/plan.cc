// `strata plan`: KV-cache capacity planning. Binds the flags and prints; the arithmetic and
// validation live in plan_lib so they can be tested without a process.
#include <cstdint>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>

#include "CLI/CLI.hpp"
#include "absl/strings/str_join.h"
#include "commands.h"
#include "plan_lib.h"
#include "strata/common/kv_shape.h"

namespace strata::cli {
namespace {

// Flag storage must outlive AddPlanCommand: CLI11 writes into it during parse() and the
// callback reads it afterwards, so it is shared with the callback.
struct PlanCommandState {
  std::string model;
  int64_t layers = 0;
  int64_t kv_heads = 0;
  int64_t head_dim = 0;
  int64_t mla_latent_dim = 0;
  std::string dtype = "fp16";
  int64_t context = 0;
  int64_t concurrency = 1;
  std::string memory;
  int64_t block_tokens = 0;
  bool json = false;

  // Presence is read from the options because 0 is a value the user may type (and must be
  // rejected), not a marker for "not given".
  CLI::Option* model_opt = nullptr;
  CLI::Option* layers_opt = nullptr;
  CLI::Option* kv_heads_opt = nullptr;
  CLI::Option* head_dim_opt = nullptr;
  CLI::Option* mla_latent_dim_opt = nullptr;
  CLI::Option* context_opt = nullptr;
  CLI::Option* memory_opt = nullptr;
  CLI::Option* block_tokens_opt = nullptr;
};

template <typename T>
std::optional<T> IfGiven(const CLI::Option* opt, const T& value) {
  return opt->count() > 0 ? std::optional<T>(value) : std::nullopt;
}

PlanFlags ToPlanFlags(const PlanCommandState& s) {
  PlanFlags flags;
  flags.model = IfGiven(s.model_opt, s.model);
  flags.layers = IfGiven(s.layers_opt, s.layers);
  flags.kv_heads = IfGiven(s.kv_heads_opt, s.kv_heads);
  flags.head_dim = IfGiven(s.head_dim_opt, s.head_dim);
  flags.mla_latent_dim = IfGiven(s.mla_latent_dim_opt, s.mla_latent_dim);
  flags.dtype = s.dtype;
  flags.context = IfGiven(s.context_opt, s.context);
  flags.concurrency = s.concurrency;
  flags.memory = IfGiven(s.memory_opt, s.memory);
  flags.block_tokens = IfGiven(s.block_tokens_opt, s.block_tokens);
  return flags;
}

// Every failure here is bad input, hence a usage error (2).
int RunPlan(const PlanCommandState& state) {
  absl::StatusOr<PlanInput> input = PlanInputFromFlags(ToPlanFlags(state));
  absl::StatusOr<Plan> plan = input.ok() ? ComputePlan(*input) : input.status();
  if (!plan.ok()) {
    std::fprintf(stderr, "strata plan: %s\n", std::string(plan.status().message()).c_str());
    return 2;
  }
  const std::string out = state.json ? RenderPlanJson(*plan) : RenderPlanText(*plan);
  std::fputs(out.c_str(), stdout);
  return 0;
}

}  // namespace

void AddPlanCommand(CLI::App& app, int* exit_code) {
  auto state = std::make_shared<PlanCommandState>();
  CLI::App* cmd = app.add_subcommand(
      "plan", "KV-cache bytes per token, per sequence and in total for a model and context");
  cmd->footer(
      "Give --model NAME, or a custom shape: --layers with --kv-heads and --head-dim, or\n"
      "--layers with --mla-latent-dim. Sizes assume the whole context stays cached.\n"
      "Example: strata plan --model llama-3.1-8b --context 8192 --concurrency 16 "
      "--memory 80GiB");

  state->model_opt = cmd->add_option("--model", state->model,
                                     "Model preset (case-insensitive): " +
                                         absl::StrJoin(KnownModelPresets(), ", "))
                         ->type_name("NAME");
  state->layers_opt =
      cmd->add_option("--layers", state->layers, "Custom shape: layers")->type_name("L");
  state->kv_heads_opt =
      cmd->add_option("--kv-heads", state->kv_heads, "Custom shape: key/value heads (GQA)")
          ->type_name("H");
  state->head_dim_opt =
      cmd->add_option("--head-dim", state->head_dim, "Custom shape: head dim")->type_name("D");
  state->mla_latent_dim_opt =
      cmd->add_option("--mla-latent-dim", state->mla_latent_dim,
                      "Custom MLA shape: latent elements per token per layer "
                      "(kv_lora_rank + qk_rope_head_dim)")
          ->type_name("N");
  cmd->add_option("--dtype", state->dtype, "KV element type: fp16, bf16, fp8 or int8")
      ->type_name("TYPE")
      ->capture_default_str();
  state->context_opt = cmd->add_option("--context", state->context, "Tokens per sequence")
                           ->type_name("N")
                           ->required();
  cmd->add_option("--concurrency", state->concurrency, "Sequences cached at once")
      ->type_name("C")
      ->capture_default_str();
  state->memory_opt =
      cmd->add_option("--memory", state->memory,
                      "Memory budget (e.g. 80GiB, 512MiB, 2TB); reports how many sequences fit")
          ->type_name("SIZE");
  state->block_tokens_opt =
      cmd->add_option("--block-tokens", state->block_tokens, "Tokens per block: adds block size")
          ->type_name("N");
  cmd->add_flag("--json", state->json, "Print one JSON object instead of text");

  cmd->callback([state, exit_code]() { *exit_code = RunPlan(*state); });
}

}  // namespace strata::cli
