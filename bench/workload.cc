#include "workload.h"

#include <algorithm>
#include <cstring>
#include <thread>

#include "absl/strings/str_cat.h"

namespace strata::bench {
namespace {

uint64_t SplitMix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// xorshift64* over the block's payload, seeded from its chain hash.
class PayloadStream {
 public:
  explicit PayloadStream(const ChainHash& hash) {
    // Every byte of the key counts, so blocks under neighbouring keys differ everywhere.
    uint64_t seed = 0;
    for (size_t i = 0; i < kChainHashBytes; i += 8) {
      uint64_t word;
      std::memcpy(&word, hash.bytes.data() + i, sizeof(word));
      seed = SplitMix64(seed ^ word);
    }
    x_ = seed | 1;  // xorshift state must not be zero
  }
  uint64_t Next() {
    x_ ^= x_ >> 12;
    x_ ^= x_ << 25;
    x_ ^= x_ >> 27;
    return x_ * 0x2545F4914F6CDD1Dull;
  }

 private:
  uint64_t x_;
};

// Vocabulary of the synthetic prompts (a Llama-3-sized tokenizer).
constexpr uint64_t kVocabulary = 128000;

}  // namespace

void FillBlock(const ChainHash& hash, uint8_t* out, size_t size) {
  PayloadStream s(hash);
  size_t i = 0;
  for (; i + 8 <= size; i += 8) {
    uint64_t v = s.Next();
    std::memcpy(out + i, &v, 8);
  }
  if (i < size) {
    uint64_t v = s.Next();
    std::memcpy(out + i, &v, size - i);
  }
}

bool BlockMatches(const ChainHash& hash, const uint8_t* data, size_t size) {
  PayloadStream s(hash);
  size_t i = 0;
  uint64_t diff = 0;
  for (; i + 8 <= size; i += 8) {
    uint64_t got;
    std::memcpy(&got, data + i, 8);
    diff |= got ^ s.Next();
  }
  if (i < size) {
    uint64_t want = s.Next(), got = 0;
    std::memcpy(&got, data + i, size - i);
    uint64_t mask = (1ull << (8 * (size - i))) - 1;  // little-endian: low bytes come first
    diff |= (got ^ want) & mask;
  }
  return diff == 0;
}

absl::StatusOr<Dataset> MakeDataset(const client::Namespace& ns, uint64_t blocks,
                                    uint32_t chain_blocks, uint64_t block_size, uint64_t seed,
                                    unsigned threads) {
  if (blocks == 0 || chain_blocks == 0 || block_size == 0) {
    return absl::InvalidArgumentError("data set: blocks, chain_blocks and block_size must be > 0");
  }
  Dataset ds;
  ds.block_size = block_size;
  ds.hashes.reserve(blocks);
  uint32_t block_tokens = ns.spec.block_tokens;
  for (uint64_t chain = 0; ds.hashes.size() < blocks; ++chain) {
    uint64_t n = std::min<uint64_t>(chain_blocks, blocks - ds.hashes.size());
    // Distinct chains differ from their first token on (w.h.p.), so share no prefix.
    uint64_t state = SplitMix64(seed ^ SplitMix64(chain + 1));
    std::vector<uint32_t> tokens(n * block_tokens);
    for (uint32_t& t : tokens) {
      state = SplitMix64(state);
      t = static_cast<uint32_t>(state % kVocabulary);
    }
    absl::StatusOr<std::vector<ChainHash>> h = ns.HashTokens(tokens);
    if (!h.ok()) return h.status();
    if (h->size() != n) {
      return absl::InternalError(
          absl::StrCat("HashTokens gave ", h->size(), " hashes for ", n, " full blocks"));
    }
    ds.chains.emplace_back(ds.hashes.size(), ds.hashes.size() + n);
    ds.hashes.insert(ds.hashes.end(), h->begin(), h->end());
  }
  if (blocks * block_size <= kMaxPreloadBytes) {
    absl::StatusOr<MappedBuffer> payload = MappedBuffer::Map(blocks * block_size, false);
    if (!payload.ok()) return payload.status();
    ds.payload = *std::move(payload);
    threads = std::max(1u, threads);
    std::vector<std::thread> workers;
    for (unsigned w = 0; w < threads; ++w) {
      workers.emplace_back([&ds, w, threads, blocks] {
        for (uint64_t i = w; i < blocks; i += threads) {
          FillBlock(ds.hashes[i], ds.payload.data() + i * ds.block_size, ds.block_size);
        }
      });
    }
    for (std::thread& t : workers) t.join();
  }
  return ds;
}

}  // namespace strata::bench
