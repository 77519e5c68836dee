#include "plan_lib.h"

#include <string_view>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "strata/common/byte_size.h"

namespace strata::cli {
namespace {

absl::Status CheckDim(int64_t value, std::string_view flag) {
  if (value >= 1 && value <= kMaxShapeDim) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(absl::string_view(flag.data(), flag.size()),
                                                 " must be between 1 and ", kMaxShapeDim, ", got ",
                                                 value));
}

absl::Status CheckAtLeastOne(int64_t value, std::string_view flag) {
  if (value >= 1) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(absl::string_view(flag.data(), flag.size()),
                                                 " must be at least 1, got ", value));
}

// Counts are validated to be >= 1 before they get here, so the cast to unsigned is exact.
absl::StatusOr<uint64_t> CheckedMul(uint64_t bytes, int64_t count, std::string_view flag) {
  uint64_t product = 0;
  if (__builtin_mul_overflow(bytes, static_cast<uint64_t>(count), &product)) {
    return absl::InvalidArgumentError(absl::StrCat(absl::string_view(flag.data(), flag.size()), " ",
                                                   count, " times ", bytes,
                                                   " bytes overflows a 64-bit byte count"));
  }
  return product;
}

std::string Bytes(uint64_t bytes) {
  return absl::StrCat(FormatByteSize(bytes), " (", bytes, " bytes)");
}

std::string Sequences(uint64_t n) { return absl::StrCat(n, n == 1 ? " sequence" : " sequences"); }

std::string Line(std::string_view label, std::string_view value) {
  return absl::StrFormat("%-14s%s\n", label, value);
}

// Model names are presets or "custom" today; escaping anyway keeps the output valid JSON if a
// name ever comes from elsewhere.
std::string JsonString(std::string_view s) {
  std::string out = "\"";
  for (char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          out += absl::StrFormat("\\u%04x", static_cast<unsigned char>(c));
        } else {
          out += c;
        }
    }
  }
  out += '"';
  return out;
}

std::string JsonNumberOrNull(std::optional<uint64_t> value) {
  return value.has_value() ? absl::StrCat(*value) : "null";
}

}  // namespace

absl::StatusOr<KvShape> ResolveKvShape(const PlanFlags& flags) {
  absl::StatusOr<KvDtype> dtype = ParseKvDtype(flags.dtype);
  if (!dtype.ok()) return dtype.status();

  const bool custom = flags.layers.has_value() || flags.kv_heads.has_value() ||
                      flags.head_dim.has_value() || flags.mla_latent_dim.has_value();
  if (flags.model.has_value()) {
    if (custom) {
      return absl::InvalidArgumentError(
          "--model cannot be combined with --layers, --kv-heads, --head-dim or --mla-latent-dim");
    }
    return KvShapeForModel(*flags.model, *dtype);
  }
  if (!custom) {
    return absl::InvalidArgumentError(
        "give --model NAME, or a custom shape: --layers with --kv-heads and --head-dim "
        "(or with --mla-latent-dim for MLA)");
  }
  if (!flags.layers.has_value()) {
    return absl::InvalidArgumentError("--layers is required for a custom shape");
  }
  if (absl::Status s = CheckDim(*flags.layers, "--layers"); !s.ok()) return s;

  KvShape shape;
  shape.model = "custom";
  shape.dtype = *dtype;
  shape.layers = static_cast<uint32_t>(*flags.layers);
  if (flags.mla_latent_dim.has_value()) {
    // Silently ignoring them would let a user believe they changed the result.
    if (flags.kv_heads.has_value() || flags.head_dim.has_value()) {
      return absl::InvalidArgumentError(
          "--kv-heads and --head-dim do not apply with --mla-latent-dim (MLA caches one latent "
          "per token per layer)");
    }
    if (absl::Status s = CheckDim(*flags.mla_latent_dim, "--mla-latent-dim"); !s.ok()) return s;
    shape.mla = true;
    shape.mla_latent_dim = static_cast<uint32_t>(*flags.mla_latent_dim);
    return shape;
  }
  if (!flags.kv_heads.has_value()) {
    return absl::InvalidArgumentError("--kv-heads is required for a custom shape");
  }
  if (!flags.head_dim.has_value()) {
    return absl::InvalidArgumentError("--head-dim is required for a custom shape");
  }
  if (absl::Status s = CheckDim(*flags.kv_heads, "--kv-heads"); !s.ok()) return s;
  if (absl::Status s = CheckDim(*flags.head_dim, "--head-dim"); !s.ok()) return s;
  shape.kv_heads = static_cast<uint32_t>(*flags.kv_heads);
  shape.head_dim = static_cast<uint32_t>(*flags.head_dim);
  return shape;
}

absl::StatusOr<PlanInput> PlanInputFromFlags(const PlanFlags& flags) {
  absl::StatusOr<KvShape> shape = ResolveKvShape(flags);
  if (!shape.ok()) return shape.status();
  if (!flags.context.has_value()) return absl::InvalidArgumentError("--context is required");

  PlanInput input;
  input.shape = *std::move(shape);
  input.context_tokens = *flags.context;
  input.concurrency = flags.concurrency;
  input.block_tokens = flags.block_tokens;
  if (flags.memory.has_value()) {
    absl::StatusOr<uint64_t> memory = ParseByteSize(*flags.memory, "--memory");
    if (!memory.ok()) return memory.status();
    input.memory_bytes = *memory;
  }
  return input;
}

absl::StatusOr<Plan> ComputePlan(const PlanInput& input) {
  const KvShape& shape = input.shape;
  if (absl::Status s = CheckDim(shape.layers, "--layers"); !s.ok()) return s;
  if (shape.mla) {
    if (absl::Status s = CheckDim(shape.mla_latent_dim, "--mla-latent-dim"); !s.ok()) return s;
  } else {
    if (absl::Status s = CheckDim(shape.kv_heads, "--kv-heads"); !s.ok()) return s;
    if (absl::Status s = CheckDim(shape.head_dim, "--head-dim"); !s.ok()) return s;
  }
  if (absl::Status s = CheckAtLeastOne(input.context_tokens, "--context"); !s.ok()) return s;
  if (absl::Status s = CheckAtLeastOne(input.concurrency, "--concurrency"); !s.ok()) return s;
  if (input.block_tokens.has_value()) {
    if (absl::Status s = CheckAtLeastOne(*input.block_tokens, "--block-tokens"); !s.ok()) {
      return s;
    }
  }
  if (input.memory_bytes.has_value() && *input.memory_bytes == 0) {
    return absl::InvalidArgumentError("--memory must be at least 1 byte, got 0");
  }

  Plan plan;
  plan.input = input;
  plan.kv_bytes_per_token = KvBytesPerToken(shape);
  absl::StatusOr<uint64_t> per_sequence =
      CheckedMul(plan.kv_bytes_per_token, input.context_tokens, "--context");
  if (!per_sequence.ok()) return per_sequence.status();
  plan.kv_bytes_per_sequence = *per_sequence;
  absl::StatusOr<uint64_t> total =
      CheckedMul(plan.kv_bytes_per_sequence, input.concurrency, "--concurrency");
  if (!total.ok()) return total.status();
  plan.kv_bytes_total = *total;

  if (input.memory_bytes.has_value()) {
    plan.sequences_fit = *input.memory_bytes / plan.kv_bytes_per_sequence;
  }
  if (input.block_tokens.has_value()) {
    absl::StatusOr<uint64_t> per_block =
        CheckedMul(plan.kv_bytes_per_token, *input.block_tokens, "--block-tokens");
    if (!per_block.ok()) return per_block.status();
    plan.kv_bytes_per_block = *per_block;
    const uint64_t context = static_cast<uint64_t>(input.context_tokens);
    const uint64_t block = static_cast<uint64_t>(*input.block_tokens);
    // Written without context + block - 1, which could overflow for huge values.
    plan.blocks_per_sequence = context / block + (context % block != 0 ? 1 : 0);
  }
  return plan;
}

std::string RenderPlanText(const Plan& plan) {
  const PlanInput& in = plan.input;
  const KvShape& shape = in.shape;
  const std::string_view dtype = KvDtypeName(shape.dtype);
  std::string geometry = shape.mla
                             ? absl::StrFormat("%u layers, MLA latent %u, %s", shape.layers,
                                               shape.mla_latent_dim, dtype)
                             : absl::StrFormat("%u layers, %u KV heads, head_dim %u, %s",
                                               shape.layers, shape.kv_heads, shape.head_dim, dtype);
  std::string out = Line("model", absl::StrCat(shape.model, ": ", geometry));
  out += Line("per token", Bytes(plan.kv_bytes_per_token));
  out += Line("per sequence", absl::StrCat(Bytes(plan.kv_bytes_per_sequence), " for ",
                                           in.context_tokens, " tokens"));
  out += Line("total", absl::StrCat(Bytes(plan.kv_bytes_total), " for ",
                                    Sequences(static_cast<uint64_t>(in.concurrency))));
  if (plan.kv_bytes_per_block.has_value()) {
    out += Line("per block",
                absl::StrCat(Bytes(*plan.kv_bytes_per_block), " for ", *in.block_tokens,
                             " tokens; ", *plan.blocks_per_sequence, " blocks per sequence"));
  }
  if (in.memory_bytes.has_value()) {
    const uint64_t memory = *in.memory_bytes;
    std::string verdict = plan.kv_bytes_total <= memory
                              ? absl::StrCat(in.concurrency, " requested fit")
                              : absl::StrCat(in.concurrency, " requested do not fit, short by ",
                                             FormatByteSize(plan.kv_bytes_total - memory));
    out += Line("memory", absl::StrCat(Bytes(memory), " holds ", Sequences(*plan.sequences_fit),
                                       " of ", in.context_tokens, " tokens; ", verdict));
  }
  return out;
}

std::string RenderPlanJson(const Plan& plan) {
  const PlanInput& in = plan.input;
  const KvShape& shape = in.shape;
  // MLA has no per-head K/V, so a number there would be made up.
  std::optional<uint64_t> kv_heads;
  std::optional<uint64_t> head_dim;
  if (!shape.mla) {
    kv_heads = shape.kv_heads;
    head_dim = shape.head_dim;
  }
  std::string out = "{\n";
  absl::StrAppend(&out, "  \"model\": ", JsonString(shape.model), ",\n");
  absl::StrAppend(&out, "  \"layers\": ", shape.layers, ",\n");
  absl::StrAppend(&out, "  \"kv_heads\": ", JsonNumberOrNull(kv_heads), ",\n");
  absl::StrAppend(&out, "  \"head_dim\": ", JsonNumberOrNull(head_dim), ",\n");
  absl::StrAppend(&out, "  \"dtype\": ", JsonString(KvDtypeName(shape.dtype)), ",\n");
  absl::StrAppend(&out, "  \"context\": ", in.context_tokens, ",\n");
  absl::StrAppend(&out, "  \"concurrency\": ", in.concurrency, ",\n");
  absl::StrAppend(&out, "  \"kv_bytes_per_token\": ", plan.kv_bytes_per_token, ",\n");
  absl::StrAppend(&out, "  \"kv_bytes_per_sequence\": ", plan.kv_bytes_per_sequence, ",\n");
  absl::StrAppend(&out, "  \"kv_bytes_total\": ", plan.kv_bytes_total, ",\n");
  absl::StrAppend(&out, "  \"memory_bytes\": ", JsonNumberOrNull(in.memory_bytes), ",\n");
  absl::StrAppend(&out, "  \"sequences_fit\": ", JsonNumberOrNull(plan.sequences_fit), "\n");
  out += "}\n";
  return out;
}

}  // namespace strata::cli
