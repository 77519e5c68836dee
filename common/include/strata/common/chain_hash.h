// Chain hashing: the 32-byte key of block i is
//   H(parent ‖ token ids of block i as little-endian u32 ‖ extra keys encoding)
// where parent is block i-1's chain hash, or the documented root seed for block 0.
// Equal token prefixes give equal hashes on every process and machine; the exact byte
// layout and test vectors are published in docs/design/block-hash.md.
//
// Only full blocks are hashed: a partial trailing block can never be reused by a longer
// prompt, and fixed-length token bytes keep the encoding unambiguous.
//
// Stateless functions; thread-safe.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "strata/common/block_key.h"

namespace strata {

enum class ChainHashAlgorithm {
  kSha256,   // default; collision-resistant, required across tenants
  kXxh3_128  // fast, for a trusted single tenant only (see block-hash.md for the 32-byte form)
};

// "sha256" / "xxh3-128". INVALID_ARGUMENT for anything else; "" means sha256.
absl::StatusOr<ChainHashAlgorithm> ParseChainHashAlgorithm(std::string_view name);
std::string_view ChainHashAlgorithmName(ChainHashAlgorithm algorithm);

// Keys beyond the token ids that change what a block's KV holds.
struct ExtraKeys {
  // LoRA adapter identity (empty: base model).
  std::string lora_id;
  // Hashes of multimodal inputs (images, audio) whose placeholder tokens fall in this block,
  // in order of appearance. Each is an opaque byte string of 1..255 bytes.
  std::vector<std::string> mm_hashes;
  // KV-cache group of hybrid models (sliding-window vs full attention layers); unset = none.
  std::optional<uint32_t> kv_group;

  bool empty() const { return lora_id.empty() && mm_hashes.empty() && !kv_group.has_value(); }
};

// The fixed parent of block 0 for `algorithm` (documented in block-hash.md): for both
// algorithms, SHA-256 of the ASCII string "strata/v1 chain-hash root".
ChainHash RootParent(ChainHashAlgorithm algorithm);

// Hash of one block given its parent. `tokens` must be the block's full token ids.
// REQUIRES: every mm hash in `extra` is 1..255 bytes. HashBlock cannot report the error, so
// callers passing untrusted extras must check them first (HashPrefix does).
ChainHash HashBlock(ChainHashAlgorithm algorithm, const ChainHash& parent,
                    std::span<const uint32_t> tokens, const ExtraKeys& extra = {});

// Chain hashes of the floor(tokens.size() / block_tokens) full blocks of a prompt, block 0
// first. `extra` applies to every block (per-block extras: call HashBlock in a loop).
// INVALID_ARGUMENT if block_tokens == 0 or an mm hash is empty or longer than 255 bytes (the
// message names "block_tokens" or "extra.mm_hashes[i]"). Does not block.
absl::StatusOr<std::vector<ChainHash>> HashPrefix(ChainHashAlgorithm algorithm,
                                                  std::span<const uint32_t> tokens,
                                                  uint32_t block_tokens,
                                                  const ExtraKeys& extra = {});

}  // namespace strata
