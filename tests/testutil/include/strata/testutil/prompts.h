// Namespaces, prompts and payloads the integration suites write: a raw fp16 namespace, the
// chain hashes of a synthetic prompt, and reproducible random bytes.
//
// Stateless; thread-safe.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "strata/client/store_client.h"
#include "strata/common/namespace.h"

namespace strata::testutil {

// A raw fp16 namespace of 16-token blocks of at most `block_bytes`.
inline NamespaceSpec RawSpec(std::string model_id, uint64_t block_bytes) {
  NamespaceSpec spec;
  spec.model_id = std::move(model_id);
  spec.dtype = "fp16";
  spec.layout = "raw";
  spec.block_tokens = 16;
  spec.block_bytes = block_bytes;
  return spec;
}

// The first `count` tokens of prompt number `prompt` (distinct prompts share no token).
inline std::vector<uint32_t> PromptTokens(uint32_t prompt, size_t count) {
  std::vector<uint32_t> tokens(count);
  for (size_t i = 0; i < count; ++i) tokens[i] = prompt * 1000003u + static_cast<uint32_t>(i);
  return tokens;
}

// The chain hashes of the first `n` blocks of prompt number `prompt`.
inline std::vector<ChainHash> PromptChain(const client::Namespace& ns, uint32_t prompt, size_t n) {
  return *ns.HashTokens(PromptTokens(prompt, n * ns.spec.block_tokens));
}

// `size` random bytes, the same for the same seed.
inline std::vector<uint8_t> RandomBytes(uint64_t seed, size_t size) {
  std::vector<uint8_t> out(size);
  std::mt19937_64 rng(seed * 0x9e3779b97f4a7c15ull + 3);
  for (size_t i = 0; i < size; i += 8) {
    uint64_t v = rng();
    std::memcpy(out.data() + i, &v, std::min<size_t>(8, size - i));
  }
  return out;
}

}  // namespace strata::testutil
