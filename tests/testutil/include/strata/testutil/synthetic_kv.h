// Synthetic KV-cache blocks for quantization tests: N(0, 1) elements with three outlier
// channels (×20) at fixed positions of every head vector, as real keys show after RoPE.
//
// Stateless; thread-safe.
#pragma once

#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "strata/common/half.h"
#include "strata/common/kv_quant.h"

namespace strata::testutil {

inline constexpr uint32_t kSyntheticKvOutlierChannels[] = {7, 61, 100};

// `vectors` head vectors of `head_dim` fp16 or bf16 elements, reproducible from `seed`.
inline std::vector<uint8_t> SyntheticKv(KvDtype dtype, uint32_t head_dim, size_t vectors,
                                        uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<uint8_t> bytes(vectors * head_dim * 2);
  for (size_t v = 0; v < vectors; ++v) {
    for (uint32_t i = 0; i < head_dim; ++i) {
      float x = normal(rng);
      for (uint32_t c : kSyntheticKvOutlierChannels) x = i == c % head_dim ? x * 20 : x;
      const uint16_t bits = dtype == KvDtype::kFp16 ? FloatToHalf(x) : FloatToBf16(x);
      std::memcpy(&bytes[(v * head_dim + i) * 2], &bits, 2);
    }
  }
  return bytes;
}

}  // namespace strata::testutil
