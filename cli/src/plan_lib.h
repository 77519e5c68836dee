// Capacity planning behind `strata plan`: how much KV cache a model needs for a context length
// and a number of concurrent sequences, and how many sequences fit in a memory budget.
//
// Kept apart from the CLI11 wiring in plan.cc so that the arithmetic, the flag validation and
// both renderings are unit-tested. Plain value types and pure functions; thread-safe.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "strata/common/kv_shape.h"

namespace strata::cli {

// Largest layers / kv_heads / head_dim / mla_latent_dim accepted. Real models are below 1024;
// the cap keeps bytes per token below 2^51, so only the products with the context,
// concurrency and block size need overflow checks.
inline constexpr int64_t kMaxShapeDim = int64_t{1} << 16;

// The `strata plan` flags as typed by the user; std::nullopt when a flag was not given.
// Signed so that a negative number reaches validation instead of wrapping around.
struct PlanFlags {
  std::optional<std::string> model;
  std::optional<int64_t> layers;
  std::optional<int64_t> kv_heads;
  std::optional<int64_t> head_dim;
  std::optional<int64_t> mla_latent_dim;
  std::string dtype = "fp16";
  std::optional<int64_t> context;
  int64_t concurrency = 1;
  std::optional<std::string> memory;  // byte size text, e.g. "80GiB"
  std::optional<int64_t> block_tokens;
};

struct PlanInput {
  KvShape shape;
  int64_t context_tokens = 0;            // tokens per sequence, >= 1
  int64_t concurrency = 1;               // sequences held at once, >= 1
  std::optional<uint64_t> memory_bytes;  // budget to fit sequences into, >= 1
  std::optional<int64_t> block_tokens;   // tokens per cache block, >= 1
};

struct Plan {
  PlanInput input;
  uint64_t kv_bytes_per_token = 0;
  uint64_t kv_bytes_per_sequence = 0;  // per token × context
  uint64_t kv_bytes_total = 0;         // per sequence × concurrency
  // floor(memory / per sequence); set only with input.memory_bytes.
  std::optional<uint64_t> sequences_fit;
  // per token × block_tokens, and ceil(context / block_tokens); set only with block_tokens.
  std::optional<uint64_t> kv_bytes_per_block;
  std::optional<uint64_t> blocks_per_sequence;
};

// Resolves the shape flags: either --model (a preset), or --layers with --kv-heads and
// --head-dim (custom GQA/MHA), or --layers with --mla-latent-dim (custom MLA); custom shapes
// are named "custom". INVALID_ARGUMENT naming the flag for a bad dtype, a mix of --model and
// custom flags, a missing or out-of-range dimension; NOT_FOUND for an unknown preset.
absl::StatusOr<KvShape> ResolveKvShape(const PlanFlags& flags);

// Resolves every flag: the shape as above, --memory through ParseByteSize, and the checks of
// ComputePlan's input. INVALID_ARGUMENT naming the flag (e.g. --context when missing).
absl::StatusOr<PlanInput> PlanInputFromFlags(const PlanFlags& flags);

// INVALID_ARGUMENT naming the flag when a count is below 1, a dimension is outside
// [1, kMaxShapeDim] or a byte count would overflow 64 bits.
absl::StatusOr<Plan> ComputePlan(const PlanInput& input);

// Multi-line human-readable report, sizes in IEC units with exact bytes; ends with '\n'.
std::string RenderPlanText(const Plan& plan);

// One JSON object ending with '\n', with exactly the fields model, layers, kv_heads, head_dim,
// dtype, context, concurrency, kv_bytes_per_token, kv_bytes_per_sequence, kv_bytes_total,
// memory_bytes and sequences_fit. The last two are null without a memory budget; kv_heads and
// head_dim are null for MLA models, which have neither.
std::string RenderPlanJson(const Plan& plan);

}  // namespace strata::cli
