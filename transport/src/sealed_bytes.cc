#include "sealed_bytes.h"

#include <ucs/memory/memory_type.h>

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

std::string PadForUcx(absl::string_view packed) {
  std::string out(packed.size() + 256, '\0');
  std::memcpy(out.data(), packed.data(), packed.size());
  return out;
}

absl::Status CheckPackedRkeyLayout(absl::string_view packed) {
  constexpr size_t kFixed = sizeof(uint64_t) + 1;  // md_map, memory type
  if (packed.size() < kFixed) {
    return absl::InvalidArgumentError(
        absl::StrCat("packed rkey: ", packed.size(), " bytes, shorter than its header"));
  }
  const uint64_t md_map = GetLe(packed.data(), sizeof(uint64_t));
  const unsigned mem_type = static_cast<unsigned char>(packed[sizeof(uint64_t)]);
  if (mem_type >= UCS_MEMORY_TYPE_LAST) {
    return absl::InvalidArgumentError(absl::StrCat("packed rkey: memory type ", mem_type));
  }
  size_t at = kFixed;
  for (uint64_t bits = md_map; bits != 0; bits &= bits - 1) {
    if (at >= packed.size()) {
      return absl::InvalidArgumentError(absl::StrCat("packed rkey: md_map 0x", absl::Hex(md_map),
                                                     " names more memory domains than its ",
                                                     packed.size(), " bytes carry"));
    }
    at += 1 + static_cast<unsigned char>(packed[at]);
    if (at > packed.size()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "packed rkey: a memory domain's key runs past its ", packed.size(), " bytes"));
    }
  }
  return absl::OkStatus();
}

}  // namespace strata::transport
