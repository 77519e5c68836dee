#include "sealed_bytes.h"

#include <cstdint>
#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "strata/common/checksum.h"

namespace strata::transport {
namespace {

constexpr size_t kTagSize = 4;
constexpr size_t kHeaderSize = kTagSize + sizeof(uint32_t);
constexpr size_t kOverhead = kHeaderSize + sizeof(uint64_t);

void PutLe(uint64_t v, size_t n, char* out) {
  for (size_t i = 0; i < n; ++i) out[i] = static_cast<char>((v >> (8 * i)) & 0xff);
}

uint64_t GetLe(const char* in, size_t n) {
  uint64_t v = 0;
  for (size_t i = 0; i < n; ++i) v |= uint64_t{static_cast<unsigned char>(in[i])} << (8 * i);
  return v;
}

}  // namespace

std::string Seal(absl::string_view tag, const void* payload, size_t payload_len) {
  std::string out(kOverhead + payload_len, '\0');
  std::memcpy(out.data(), tag.data(), kTagSize);
  PutLe(payload_len, sizeof(uint32_t), out.data() + kTagSize);
  if (payload_len != 0) std::memcpy(out.data() + kHeaderSize, payload, payload_len);
  const uint64_t sum = BlockChecksum(out.data(), kHeaderSize + payload_len);
  PutLe(sum, sizeof(uint64_t), out.data() + kHeaderSize + payload_len);
  return out;
}

absl::StatusOr<absl::string_view> Unseal(absl::string_view tag, absl::string_view sealed,
                                         absl::string_view what) {
  if (sealed.size() < kOverhead) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": ", sealed.size(), " bytes is too short to be one"));
  }
  if (sealed.substr(0, kTagSize) != tag) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": wrong tag (not a ", what, ")"));
  }
  const uint64_t len = GetLe(sealed.data() + kTagSize, sizeof(uint32_t));
  if (len != sealed.size() - kOverhead) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": says ", len, " payload bytes, has ", sealed.size() - kOverhead));
  }
  const uint64_t sum = GetLe(sealed.data() + kHeaderSize + len, sizeof(uint64_t));
  if (sum != BlockChecksum(sealed.data(), kHeaderSize + len)) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": checksum mismatch (corrupted)"));
  }
  return sealed.substr(kHeaderSize, len);
}

}  // namespace strata::transport
