// KV-cache geometry of a model: bytes per token, per block and per sequence, and presets
// for well-known models. Used by `strata plan`, the demo and the benchmarks.
//
// Plain value types and stateless functions; thread-safe.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace strata {

enum class KvDtype { kFp16, kBf16, kFp8, kInt8 };

// "fp16", "bf16", "fp8", "int8". INVALID_ARGUMENT naming the accepted values otherwise.
absl::StatusOr<KvDtype> ParseKvDtype(std::string_view name);
std::string_view KvDtypeName(KvDtype dtype);
uint32_t KvDtypeBytes(KvDtype dtype);

struct KvShape {
  std::string model;  // preset name, or "custom"
  uint32_t layers = 0;
  uint32_t kv_heads = 0;  // GQA key/value heads (not query heads)
  uint32_t head_dim = 0;
  KvDtype dtype = KvDtype::kFp16;
  // Multi-head latent attention (DeepSeek-V2/V3): one compressed latent of
  // mla_latent_dim elements per token per layer replaces K and V; kv_heads/head_dim unused.
  bool mla = false;
  uint32_t mla_latent_dim = 0;
};

// Bytes of KV for one token: 2 × layers × kv_heads × head_dim × dtype bytes
// (layers × mla_latent_dim × dtype bytes for MLA).
// REQUIRES: the product fits in 64 bits (it does whenever each dimension is at most 2^16).
uint64_t KvBytesPerToken(const KvShape& shape);

// Known presets: llama-3.1-8b, llama-3.1-70b, mistral-7b, qwen2.5-7b, deepseek-v3, ...
// (KnownModelPresets() lists them all). Names are case-insensitive; the returned shape's
// `model` is the canonical lower-case name. NOT_FOUND listing the known names otherwise.
absl::StatusOr<KvShape> KvShapeForModel(std::string_view name, KvDtype dtype);
std::vector<std::string> KnownModelPresets();

}  // namespace strata
