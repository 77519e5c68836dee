#include "strata/common/namespace.h"

#include <openssl/evp.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <string_view>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace strata {
namespace {

// Domain-separation prefix of the namespace-id input; bump the version to re-key every id.
constexpr std::string_view kNamespaceIdDomain = "strata-ns-v1";
constexpr size_t kMaxModelIdBytes = 256;
constexpr size_t kMaxLayoutBytes = 128;
constexpr std::array<std::string_view, 4> kDtypes = {"fp16", "bf16", "fp8", "int8"};

void AppendU32Le(uint32_t v, std::string* out) {
  char b[4] = {static_cast<char>(v), static_cast<char>(v >> 8), static_cast<char>(v >> 16),
               static_cast<char>(v >> 24)};
  out->append(b, sizeof(b));
}

// lp(s): the length prefix keeps ("ab","c") and ("a","bc") apart.
void AppendLengthPrefixed(std::string_view s, std::string* out) {
  AppendU32Le(static_cast<uint32_t>(s.size()), out);
  out->append(s);
}

absl::Status CheckLength(std::string_view value, size_t max, std::string_view field) {
  absl::string_view f(field.data(), field.size());
  if (value.empty()) return absl::InvalidArgumentError(absl::StrCat(f, ": empty"));
  if (value.size() > max) {
    return absl::InvalidArgumentError(absl::StrCat(f, ": ", value.size(), " bytes, want 1..", max));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateNamespaceSpec(const NamespaceSpec& spec) {
  if (absl::Status s = CheckLength(spec.model_id, kMaxModelIdBytes, "spec.model_id"); !s.ok()) {
    return s;
  }
  bool known_dtype = false;
  for (std::string_view d : kDtypes) known_dtype |= (spec.dtype == d);
  if (!known_dtype) {
    return absl::InvalidArgumentError(
        absl::StrCat("spec.dtype: \"", spec.dtype, "\" is not one of fp16, bf16, fp8, int8"));
  }
  if (absl::Status s = CheckLength(spec.layout, kMaxLayoutBytes, "spec.layout"); !s.ok()) {
    return s;
  }
  if (spec.block_tokens == 0) return absl::InvalidArgumentError("spec.block_tokens: 0, want >= 1");
  if (spec.tp_size == 0) return absl::InvalidArgumentError("spec.tp_size: 0, want >= 1");
  if (spec.tp_rank >= spec.tp_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("spec.tp_rank: ", spec.tp_rank, ", want < tp_size (", spec.tp_size, ")"));
  }
  // An out-of-range enum (e.g. cast from a wire integer) would otherwise hash as "unknown".
  if (spec.hash_algorithm != ChainHashAlgorithm::kSha256 &&
      spec.hash_algorithm != ChainHashAlgorithm::kXxh3_128) {
    return absl::InvalidArgumentError(
        absl::StrCat("spec.hash_algorithm: unknown value ", static_cast<int>(spec.hash_algorithm)));
  }
  if (spec.block_bytes == 0) return absl::InvalidArgumentError("spec.block_bytes: 0, want >= 1");
  if (!spec.offload_quant.empty()) {
    absl::StatusOr<KvQuant> quant = ParseKvQuant(spec.offload_quant);
    if (!quant.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("spec.offload_quant: ", quant.status().message()));
    }
    if (*quant != KvQuant::kNone) {
      if (spec.dtype != "fp16" && spec.dtype != "bf16") {
        return absl::InvalidArgumentError(absl::StrCat(
            "spec.offload_quant: quantizes fp16 or bf16 KV, not dtype \"", spec.dtype, "\""));
      }
      // Under 4, a vector's fp32 scale makes the quantized block larger than the block
      // (PackBlock refuses it, and the disk tiers would store every block lossless).
      if (spec.head_dim < 4 || spec.head_dim > kMaxQuantHeadDim) {
        return absl::InvalidArgumentError(absl::StrCat("spec.head_dim: ", spec.head_dim,
                                                       ", want 4..", kMaxQuantHeadDim,
                                                       " when offload_quant is set"));
      }
    }
  }
  return absl::OkStatus();
}

KvQuantSpec OffloadQuantOf(const NamespaceSpec& spec) {
  KvQuantSpec q;
  if (spec.offload_quant.empty()) return q;
  absl::StatusOr<KvQuant> method = ParseKvQuant(spec.offload_quant);
  if (!method.ok() || *method == KvQuant::kNone) return q;
  q.method = *method;
  q.dtype = spec.dtype == "bf16" ? KvDtype::kBf16 : KvDtype::kFp16;
  q.head_dim = spec.head_dim;
  return q;
}

NamespaceId ComputeNamespaceId(const NamespaceSpec& spec) {
  std::string input(kNamespaceIdDomain);
  AppendLengthPrefixed(spec.model_id, &input);
  AppendLengthPrefixed(spec.dtype, &input);
  AppendLengthPrefixed(spec.layout, &input);
  AppendU32Le(spec.block_tokens, &input);
  AppendU32Le(spec.tp_rank, &input);
  AppendU32Le(spec.tp_size, &input);
  AppendLengthPrefixed(ChainHashAlgorithmName(spec.hash_algorithm), &input);

  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (EVP_Digest(input.data(), input.size(), digest, &len, EVP_sha256(), nullptr) != 1 ||
      len != 32) {
    // Only allocation failure or a broken OpenSSL install; the signature cannot carry an error.
    std::fprintf(stderr, "strata namespace id: OpenSSL SHA-256 failed\n");
    std::abort();
  }
  NamespaceId id = 0;
  for (int i = 7; i >= 0; --i) id = (id << 8) | digest[i];  // first 8 bytes, little-endian
  return id;
}

bool IsNamespaceNotRegistered(const absl::Status& s) {
  return s.code() == absl::StatusCode::kInvalidArgument &&
         absl::StrContains(s.message(), kNamespaceNotRegistered);
}

}  // namespace strata
