// The disk tier's unit-test helpers: a temporary directory, keys, payloads and options
// (disk_tier_test.cc, disk_tier_recovery_test.cc).
#pragma once

#include <stdlib.h>

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "strata/common/block_key.h"
#include "strata/storenode/disk_tier.h"

namespace strata::storenode::disk_test {

class TempDir {
 public:
  TempDir() {
    std::string tmpl =
        (std::filesystem::temp_directory_path() / "strata-disk-tier-XXXXXX").string();
    path_ = mkdtemp(tmpl.data());
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

inline BlockKey Key(uint8_t n) {
  BlockKey key;
  key.namespace_id = 7;
  key.hash.bytes.fill(n);
  return key;
}

inline std::vector<uint8_t> Bytes(size_t n, uint8_t seed) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<uint8_t>(seed * 31 + i * 7);
  return v;
}

inline DiskTierOptions Options(const std::string& path, PolicyKind policy = PolicyKind::kLru) {
  DiskTierOptions o;
  o.path = path;
  o.capacity_bytes = 64 << 20;
  o.codec = Codec::kNone;
  o.policy = policy;
  return o;
}

}  // namespace strata::storenode::disk_test
