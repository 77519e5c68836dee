// The engine stand-in's "model": the KV of a block is a pure function of its chain hash, so a
// decode process can check every loaded byte without ever talking to the prefill process.
// (A real engine's KV is a function of the same prefix; equal hashes, equal KV.)
//
// Stateless; thread-safe.
#pragma once

#include <cstdint>
#include <cstring>

#include "strata/common/block_key.h"

namespace strata::examples {

// Fills `bytes` (a block in stored form) from `hash` with a splitmix64 stream.
inline void BlockKv(const ChainHash& hash, uint8_t* out, uint64_t bytes) {
  uint64_t state = 0;
  std::memcpy(&state, hash.bytes.data(), sizeof(state));
  for (uint64_t i = 0; i < bytes; i += 8) {
    state += 0x9e3779b97f4a7c15ull;
    uint64_t z = state;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    std::memcpy(out + i, &z, bytes - i < 8 ? bytes - i : 8);
  }
}

}  // namespace strata::examples
