#include "strata/common/kv_shape.h"

#include <cstdlib>
#include <iterator>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace strata {
namespace {

// One row per preset, copied from the model's published config.json. Sizes assume the whole
// context stays cached: sliding-window eviction (Mistral v0.1) is not modelled, so the figures
// are upper bounds for such models.
struct Preset {
  std::string_view name;
  uint32_t layers;          // num_hidden_layers
  uint32_t kv_heads;        // num_key_value_heads (0 for MLA)
  uint32_t head_dim;        // head_dim, or hidden_size / num_attention_heads (0 for MLA)
  uint32_t mla_latent_dim;  // kv_lora_rank + qk_rope_head_dim; 0 for GQA/MHA
};

constexpr Preset kPresets[] = {
    // Llama 2: 7B and 13B are plain multi-head attention (kv heads == query heads).
    {"llama-2-7b", 32, 32, 128, 0},
    {"llama-2-13b", 40, 40, 128, 0},
    {"llama-2-70b", 80, 8, 128, 0},
    {"llama-3.1-8b", 32, 8, 128, 0},
    {"llama-3.1-70b", 80, 8, 128, 0},
    {"llama-3.1-405b", 126, 8, 128, 0},
    // Llama 3.2 1B has 32 query heads over a 2048 hidden size, hence head_dim 64.
    {"llama-3.2-1b", 16, 8, 64, 0},
    {"llama-3.2-3b", 28, 8, 128, 0},
    {"mistral-7b", 32, 8, 128, 0},
    {"mixtral-8x7b", 32, 8, 128, 0},
    {"mixtral-8x22b", 56, 8, 128, 0},
    {"qwen2.5-7b", 28, 4, 128, 0},
    {"qwen2.5-14b", 48, 8, 128, 0},
    {"qwen2.5-32b", 64, 8, 128, 0},
    {"qwen2.5-72b", 80, 8, 128, 0},
    // DeepSeek MLA caches the compressed KV latent (kv_lora_rank 512) plus the decoupled RoPE
    // key (qk_rope_head_dim 64), shared by all heads: 576 elements per token per layer.
    {"deepseek-v2", 60, 0, 0, 512 + 64},
    {"deepseek-v3", 61, 0, 0, 512 + 64},
};

constexpr std::string_view kDtypeNames = "fp16, bf16, fp8, int8";

}  // namespace

absl::StatusOr<KvDtype> ParseKvDtype(std::string_view name) {
  const std::string lower = absl::AsciiStrToLower(absl::string_view(name.data(), name.size()));
  if (lower == "fp16") return KvDtype::kFp16;
  if (lower == "bf16") return KvDtype::kBf16;
  if (lower == "fp8") return KvDtype::kFp8;
  if (lower == "int8") return KvDtype::kInt8;
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown KV dtype '", absl::string_view(name.data(), name.size()),
      "' (accepted: ", absl::string_view(kDtypeNames.data(), kDtypeNames.size()), ")"));
}

std::string_view KvDtypeName(KvDtype dtype) {
  switch (dtype) {
    case KvDtype::kFp16:
      return "fp16";
    case KvDtype::kBf16:
      return "bf16";
    case KvDtype::kFp8:
      return "fp8";
    case KvDtype::kInt8:
      return "int8";
  }
  // Only reachable through a cast of an out-of-range integer: a bug, not bad input.
  std::abort();
}

uint32_t KvDtypeBytes(KvDtype dtype) {
  switch (dtype) {
    case KvDtype::kFp16:
    case KvDtype::kBf16:
      return 2;
    case KvDtype::kFp8:
    case KvDtype::kInt8:
      return 1;
  }
  // Returning a guess would silently corrupt every size derived from it.
  std::abort();
}

uint64_t KvBytesPerToken(const KvShape& shape) {
  const uint64_t dtype_bytes = KvDtypeBytes(shape.dtype);
  if (shape.mla) {
    // The latent stands in for both K and V, so there is no factor 2.
    return uint64_t{shape.layers} * shape.mla_latent_dim * dtype_bytes;
  }
  return 2 * uint64_t{shape.layers} * shape.kv_heads * shape.head_dim * dtype_bytes;
}

absl::StatusOr<KvShape> KvShapeForModel(std::string_view name, KvDtype dtype) {
  const std::string lower = absl::AsciiStrToLower(absl::string_view(name.data(), name.size()));
  for (const Preset& p : kPresets) {
    if (lower != p.name) continue;
    KvShape shape;
    shape.model = std::string(p.name);
    shape.layers = p.layers;
    shape.kv_heads = p.kv_heads;
    shape.head_dim = p.head_dim;
    shape.dtype = dtype;
    shape.mla = p.mla_latent_dim != 0;
    shape.mla_latent_dim = p.mla_latent_dim;
    return shape;
  }
  return absl::NotFoundError(
      absl::StrCat("unknown model '", absl::string_view(name.data(), name.size()),
                   "' (known: ", absl::StrJoin(KnownModelPresets(), ", "), ")"));
}

std::vector<std::string> KnownModelPresets() {
  std::vector<std::string> names;
  names.reserve(std::size(kPresets));
  for (const Preset& p : kPresets) names.emplace_back(p.name);
  return names;
}

}  // namespace strata
