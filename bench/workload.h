// The bench's synthetic data set: `blocks` KV blocks grouped into chains (prompts) of
// `chain_blocks` blocks, each chain hashed from its own pseudo-random token sequence, and
// each block's payload a deterministic xorshift stream seeded from its chain hash — so the
// get phase can check every byte, and a block returned under the wrong key is caught too.
//
// A Dataset is immutable once made; any number of threads may read it.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "strata/client/store_client.h"
#include "strata/common/block_key.h"
#include "strata/common/mapped_buffer.h"

namespace strata::bench {

// Payloads up to this size are generated once before the first phase, so the put phase
// times the store rather than the generator; larger ones are generated batch by batch.
inline constexpr uint64_t kMaxPreloadBytes = 4ull << 30;

struct Dataset {
  uint64_t block_size = 0;
  std::vector<ChainHash> hashes;                  // every block, chain after chain
  std::vector<std::pair<size_t, size_t>> chains;  // [begin, end) of each chain in hashes
  MappedBuffer payload;  // block i at i * block_size, or empty (huge pages, as an engine's pool)

  // Bytes of block i when preloaded, else nullptr (use FillBlock / BlockMatches).
  const uint8_t* Preloaded(size_t i) const {
    return payload.empty() ? nullptr : payload.data() + i * block_size;
  }
};

// Hashes the chains of `blocks` blocks under `ns` (the last chain may be shorter) from token
// sequences derived from `seed`, and preloads the payload (using `threads` threads) when it
// is at most kMaxPreloadBytes. Equal arguments give equal data sets in every process.
// INVALID_ARGUMENT for zero blocks, chain_blocks or block_size.
absl::StatusOr<Dataset> MakeDataset(const client::Namespace& ns, uint64_t blocks,
                                    uint32_t chain_blocks, uint64_t block_size, uint64_t seed,
                                    unsigned threads);

// Writes the `size` payload bytes of the block keyed `hash`.
void FillBlock(const ChainHash& hash, uint8_t* out, size_t size);

// Whether `data` holds exactly the payload FillBlock writes for `hash`.
bool BlockMatches(const ChainHash& hash, const uint8_t* data, size_t size);

}  // namespace strata::bench
