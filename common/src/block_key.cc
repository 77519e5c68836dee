#include "strata/common/block_key.h"

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"

namespace strata {

std::string ChainHash::ToHex() const {
  std::string_view v = AsStringView();
  return absl::BytesToHexString(absl::string_view(v.data(), v.size()));
}

absl::StatusOr<ChainHash> ChainHash::FromHex(std::string_view hex) {
  if (hex.size() != 2 * kChainHashBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("chain hash hex: ", hex.size(), " characters, want 64"));
  }
  for (char c : hex) {
    if (!absl::ascii_isxdigit(static_cast<unsigned char>(c))) {
      return absl::InvalidArgumentError("chain hash hex: not a hex digit");
    }
  }
  std::string raw = absl::HexStringToBytes(absl::string_view(hex.data(), hex.size()));
  return FromBytes(raw, "chain hash");
}

absl::StatusOr<ChainHash> ChainHash::FromBytes(std::string_view raw, std::string_view field) {
  if (raw.size() != kChainHashBytes) {
    return absl::InvalidArgumentError(absl::StrCat(absl::string_view(field.data(), field.size()),
                                                   ": ", raw.size(), " bytes, want 32"));
  }
  ChainHash h;
  __builtin_memcpy(h.bytes.data(), raw.data(), kChainHashBytes);
  return h;
}

absl::Status ValidateScope(std::string_view scope, std::string_view field) {
  absl::string_view f(field.data(), field.size());
  if (scope.empty() || scope.size() > 64) {
    return absl::InvalidArgumentError(
        absl::StrCat(f, ": ", scope.size(), " characters, want 1..64"));
  }
  for (char c : scope) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '.' || c == '-';
    if (!ok) {
      return absl::InvalidArgumentError(
          absl::StrCat(f, ": character '", std::string(1, c), "' not in [a-z0-9_.-]"));
    }
  }
  return absl::OkStatus();
}

bool IsBlockBeingWritten(const absl::Status& s) {
  return s.code() == absl::StatusCode::kAlreadyExists && s.message() == kBlockBeingWritten;
}

}  // namespace strata
