// BlockKey: the full key of a stored block — (namespace id, scope, 32-byte chain hash).
//
// Plain value types; thread-compatible (const methods may be called concurrently).
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

#include "absl/hash/hash.h"
#include "absl/status/statusor.h"

namespace strata {

inline constexpr size_t kChainHashBytes = 32;

// 32-byte chain hash of a block (see chain_hash.h and docs/design/block-hash.md).
struct ChainHash {
  std::array<uint8_t, kChainHashBytes> bytes{};

  // Lower-case hex, 64 characters.
  std::string ToHex() const;
  // Parses 64 hex characters. INVALID_ARGUMENT otherwise.
  static absl::StatusOr<ChainHash> FromHex(std::string_view hex);
  // Copies exactly 32 raw bytes. INVALID_ARGUMENT naming `field` for any other length.
  static absl::StatusOr<ChainHash> FromBytes(std::string_view raw, std::string_view field);
  // The 32 raw bytes as a string (wire form).
  std::string ToBytes() const { return std::string(AsStringView()); }
  std::string_view AsStringView() const {
    return {reinterpret_cast<const char*>(bytes.data()), bytes.size()};
  }

  friend bool operator==(const ChainHash&, const ChainHash&) = default;
  template <typename H>
  friend H AbslHashValue(H h, const ChainHash& c) {
    // The hash is already uniformly distributed: mixing the first 8 bytes is enough.
    uint64_t prefix;
    __builtin_memcpy(&prefix, c.bytes.data(), sizeof(prefix));
    return H::combine(std::move(h), prefix);
  }
};

// 64-bit id of a namespace (see namespace.h).
using NamespaceId = uint64_t;

// Who may read a block: a tenant's private scope name, or "shared".
inline constexpr std::string_view kSharedScope = "shared";
// The scope used when a caller names none (single-tenant deployments).
inline constexpr std::string_view kDefaultScope = "default";

// Checks a scope name: 1..64 characters of [a-z0-9_.-]. INVALID_ARGUMENT naming `field`.
absl::Status ValidateScope(std::string_view scope, std::string_view field);

// What a node answers for a block that another put is still writing there: ALREADY_EXISTS
// with this message. The block is not stored yet, and never will be if that put fails.
inline constexpr char kBlockBeingWritten[] = "being written";
// Whether `s` is that answer.
bool IsBlockBeingWritten(const absl::Status& s);

struct BlockKey {
  NamespaceId namespace_id = 0;
  std::string scope;
  ChainHash hash;

  friend bool operator==(const BlockKey&, const BlockKey&) = default;
  template <typename H>
  friend H AbslHashValue(H h, const BlockKey& k) {
    return H::combine(std::move(h), k.namespace_id, k.scope, k.hash);
  }
};

}  // namespace strata
