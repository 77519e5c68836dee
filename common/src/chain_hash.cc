#include "strata/common/chain_hash.h"

#include <openssl/evp.h>
#include <xxhash.h>

#include <bit>
#include <cstdio>
#include <cstdlib>
#include <memory>

#include "absl/strings/str_cat.h"

namespace strata {
namespace {

// Tags of the extra-keys encoding (docs/design/block-hash.md, "Extra keys").
constexpr uint8_t kLoraTag = 0x01;
constexpr uint8_t kMmHashTag = 0x02;
constexpr uint8_t kKvGroupTag = 0x03;
constexpr size_t kMaxMmHashBytes = 255;

// The root parent is public and fixed forever: changing it silently orphans every stored block.
constexpr std::string_view kRootSeedText = "strata/v1 chain-hash root";

[[noreturn]] void DieOnOpenSsl(const char* what) {
  // Only an allocation failure or a broken OpenSSL install gets here; a HashBlock caller has no
  // way to handle it and a wrong key would be worse than a crash.
  std::fprintf(stderr, "strata chain hash: OpenSSL %s failed\n", what);
  std::abort();
}

void AppendU32Le(uint32_t v, std::string* out) {
  char b[4] = {static_cast<char>(v), static_cast<char>(v >> 8), static_cast<char>(v >> 16),
               static_cast<char>(v >> 24)};
  out->append(b, sizeof(b));
}

// REQUIRES: every mm hash is 1..255 bytes (CheckExtraKeys).
std::string EncodeExtraKeys(const ExtraKeys& extra) {
  std::string out;
  if (!extra.lora_id.empty()) {
    out.push_back(static_cast<char>(kLoraTag));
    AppendU32Le(static_cast<uint32_t>(extra.lora_id.size()), &out);
    out.append(extra.lora_id);
  }
  for (const std::string& mm : extra.mm_hashes) {
    out.push_back(static_cast<char>(kMmHashTag));
    out.push_back(static_cast<char>(static_cast<uint8_t>(mm.size())));
    out.append(mm);
  }
  if (extra.kv_group.has_value()) {
    out.push_back(static_cast<char>(kKvGroupTag));
    AppendU32Le(*extra.kv_group, &out);
  }
  return out;
}

absl::Status CheckExtraKeys(const ExtraKeys& extra) {
  for (size_t i = 0; i < extra.mm_hashes.size(); ++i) {
    size_t n = extra.mm_hashes[i].size();
    if (n == 0 || n > kMaxMmHashBytes) {
      return absl::InvalidArgumentError(
          absl::StrCat("extra.mm_hashes[", i, "]: ", n, " bytes, want 1..255"));
    }
  }
  // The u32 length prefix cannot describe more; no real adapter name comes close.
  if (extra.lora_id.size() > UINT32_MAX) {
    return absl::InvalidArgumentError("extra.lora_id: longer than 2^32-1 bytes");
  }
  return absl::OkStatus();
}

// parent ‖ tokens as u32 LE ‖ encoded extras: the exact bytes both algorithms digest.
void EncodeBlockInput(const ChainHash& parent, std::span<const uint32_t> tokens,
                      std::string_view encoded_extra, std::string* out) {
  out->clear();
  out->reserve(kChainHashBytes + 4 * tokens.size() + encoded_extra.size());
  out->append(parent.AsStringView());
  if constexpr (std::endian::native == std::endian::little) {
    out->append(reinterpret_cast<const char*>(tokens.data()), 4 * tokens.size());
  } else {
    for (uint32_t t : tokens) AppendU32Le(t, out);
  }
  out->append(encoded_extra);
}

const EVP_MD* Sha256Md() {
  // Fetched once: an implicit fetch per digest costs a provider lookup each time.
  static const EVP_MD* md = [] {
    EVP_MD* fetched = EVP_MD_fetch(nullptr, "SHA256", nullptr);
    if (fetched == nullptr) DieOnOpenSsl("EVP_MD_fetch(SHA256)");
    return fetched;
  }();
  return md;
}

struct EvpMdCtxDeleter {
  void operator()(EVP_MD_CTX* ctx) const { EVP_MD_CTX_free(ctx); }
};

// Hashes one block input; owns a reusable EVP context so a long prompt allocates it once.
class BlockDigester {
 public:
  explicit BlockDigester(ChainHashAlgorithm algorithm) : algorithm_(algorithm) {
    if (algorithm_ == ChainHashAlgorithm::kSha256) {
      ctx_.reset(EVP_MD_CTX_new());
      if (ctx_ == nullptr) DieOnOpenSsl("EVP_MD_CTX_new");
    }
  }

  ChainHash Digest(std::string_view input) {
    ChainHash h;
    if (algorithm_ == ChainHashAlgorithm::kXxh3_128) {
      // Two seeds fill 32 bytes so both algorithms share one key width; canonical form is
      // big-endian (high64 then low64) regardless of host byte order.
      for (uint64_t seed = 0; seed < 2; ++seed) {
        XXH128_canonical_t c;
        XXH128_canonicalFromHash(&c, XXH3_128bits_withSeed(input.data(), input.size(), seed));
        static_assert(sizeof(c.digest) == 16);
        __builtin_memcpy(h.bytes.data() + 16 * seed, c.digest, sizeof(c.digest));
      }
      return h;
    }
    unsigned int len = 0;
    if (EVP_DigestInit_ex2(ctx_.get(), Sha256Md(), nullptr) != 1 ||
        EVP_DigestUpdate(ctx_.get(), input.data(), input.size()) != 1 ||
        EVP_DigestFinal_ex(ctx_.get(), h.bytes.data(), &len) != 1 || len != kChainHashBytes) {
      DieOnOpenSsl("SHA-256 digest");
    }
    return h;
  }

 private:
  ChainHashAlgorithm algorithm_;
  std::unique_ptr<EVP_MD_CTX, EvpMdCtxDeleter> ctx_;
};

}  // namespace

absl::StatusOr<ChainHashAlgorithm> ParseChainHashAlgorithm(std::string_view name) {
  if (name.empty() || name == "sha256") return ChainHashAlgorithm::kSha256;
  if (name == "xxh3-128") return ChainHashAlgorithm::kXxh3_128;
  return absl::InvalidArgumentError(absl::StrCat("hash algorithm: \"",
                                                 absl::string_view(name.data(), name.size()),
                                                 "\" is not one of sha256, xxh3-128"));
}

std::string_view ChainHashAlgorithmName(ChainHashAlgorithm algorithm) {
  switch (algorithm) {
    case ChainHashAlgorithm::kSha256:
      return "sha256";
    case ChainHashAlgorithm::kXxh3_128:
      return "xxh3-128";
  }
  return "unknown";
}

ChainHash RootParent(ChainHashAlgorithm algorithm) {
  // Both algorithms start from the same SHA-256 seed: the namespace id already separates them,
  // and one seed is one less constant to get wrong in other implementations.
  static const ChainHash root = [] {
    BlockDigester sha(ChainHashAlgorithm::kSha256);
    return sha.Digest(kRootSeedText);
  }();
  return root;
}

ChainHash HashBlock(ChainHashAlgorithm algorithm, const ChainHash& parent,
                    std::span<const uint32_t> tokens, const ExtraKeys& extra) {
  std::string input;
  EncodeBlockInput(parent, tokens, EncodeExtraKeys(extra), &input);
  return BlockDigester(algorithm).Digest(input);
}

absl::StatusOr<std::vector<ChainHash>> HashPrefix(ChainHashAlgorithm algorithm,
                                                  std::span<const uint32_t> tokens,
                                                  uint32_t block_tokens, const ExtraKeys& extra) {
  if (block_tokens == 0) return absl::InvalidArgumentError("block_tokens: 0, want >= 1");
  if (absl::Status s = CheckExtraKeys(extra); !s.ok()) return s;

  const size_t num_blocks = tokens.size() / block_tokens;
  std::vector<ChainHash> hashes;
  hashes.reserve(num_blocks);
  const std::string encoded_extra = EncodeExtraKeys(extra);
  BlockDigester digester(algorithm);
  std::string input;
  ChainHash parent = RootParent(algorithm);
  for (size_t b = 0; b < num_blocks; ++b) {
    EncodeBlockInput(parent, tokens.subspan(b * block_tokens, block_tokens), encoded_extra, &input);
    parent = digester.Digest(input);
    hashes.push_back(parent);
  }
  return hashes;
}

}  // namespace strata
