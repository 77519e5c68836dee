#include "strata/common/kv_quant.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "strata/common/half.h"

namespace strata {
namespace {

// Scales are written with memcpy: the packed format is little-endian, and so are our hosts.
static_assert(std::endian::native == std::endian::little, "Strata assumes a little-endian host");

// Vectors whose largest magnitude is below this are stored as zeros (scale 0): only bf16 can
// hold such values, the absolute error stays below 2^-100, and it keeps 127/max and 448/max
// finite and the scale a normal fp32 number.
constexpr float kFlushBelow = 0x1p-100f;

// 1.5 × 2^23: for |q| < 2^22, the fp32 sum q + 1.5 × 2^23 has no fraction bits, so the addition
// rounds q to the nearest integer (ties to even, the default mode, also on a GPU), and the sum's
// bits minus the magic's bits are that integer in two's complement.
constexpr float kRoundMagic = 12582912.0f;
constexpr uint32_t kRoundMagicBits = 0x4b400000;

uint16_t LoadU16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

bool IsSourceDtype(KvDtype dtype) { return dtype == KvDtype::kFp16 || dtype == KvDtype::kBf16; }

// Element access for the two source dtypes; a template parameter so the loops inline them.
// kInfBits: the smallest magnitude bit pattern (sign cleared) that is not finite.
struct Fp16 {
  static constexpr uint32_t kInfBits = 0x7c00;
  static float ToFloat(uint16_t bits) { return HalfToFloat(bits); }
  static uint16_t FromFloat(float v) { return FloatToHalf(v); }
};
struct Bf16 {
  static constexpr uint32_t kInfBits = 0x7f80;
  static float ToFloat(uint16_t bits) { return Bf16ToFloat(bits); }
  static uint16_t FromFloat(float v) { return FloatToBf16(v); }
};

// The loops below are kept free of data-dependent branches (see half.h) so that they run at
// a steady rate and the compiler may vectorize them.
template <typename Elem>
absl::Status QuantizeTyped(KvQuant method, uint32_t head_dim, std::span<const uint8_t> original,
                           uint8_t* scales_out, uint8_t* codes_out) {
  const size_t elements = original.size() / 2;
  const size_t vectors = elements / head_dim;
  const float code_max = method == KvQuant::kInt8 ? 127.0f : kFp8E4M3Max;
  std::vector<uint16_t> bits(head_dim);
  std::vector<float> values(head_dim);
  for (size_t v = 0; v < vectors; ++v) {
    std::memcpy(bits.data(), original.data() + v * head_dim * 2, head_dim * 2);
    // Magnitudes order like their bit patterns with the sign cleared, so the largest |x| is an
    // integer max, and a non-finite element shows up as a maximum of at least kInfBits.
    uint32_t max_magnitude = 0;
    for (uint32_t i = 0; i < head_dim; ++i) {
      max_magnitude = std::max<uint32_t>(max_magnitude, bits[i] & 0x7fffu);
    }
    if (max_magnitude >= Elem::kInfBits) {
      uint32_t i = 0;
      while ((bits[i] & 0x7fffu) < Elem::kInfBits) ++i;
      return absl::InvalidArgumentError(
          absl::StrCat("element ", v * head_dim + i,
                       " is NaN or infinite; lossy quantization needs finite values"));
    }
    const float amax = Elem::ToFloat(static_cast<uint16_t>(max_magnitude));
    uint8_t* codes = codes_out + v * head_dim;
    float scale = 0;
    if (amax < kFlushBelow) {
      std::memset(codes, 0, head_dim);
    } else {
      for (uint32_t i = 0; i < head_dim; ++i) values[i] = Elem::ToFloat(bits[i]);
      scale = amax / code_max;
      const float inv = code_max / amax;
      if (method == KvQuant::kInt8) {
        for (uint32_t i = 0; i < head_dim; ++i) {
          int32_t q =
              static_cast<int32_t>(FloatBits(values[i] * inv + kRoundMagic) - kRoundMagicBits);
          q = std::clamp(q, -127, 127);  // |x × inv| may exceed 127 by an fp32 rounding
          codes[i] = static_cast<uint8_t>(q);
        }
      } else {
        for (uint32_t i = 0; i < head_dim; ++i) codes[i] = FloatToFp8E4M3(values[i] * inv);
      }
    }
    std::memcpy(scales_out + v * sizeof(float), &scale, sizeof(float));
  }
  return absl::OkStatus();
}

template <typename Elem>
void DequantizeTyped(KvQuant method, uint32_t head_dim, const uint8_t* scales_in,
                     const uint8_t* codes_in, std::span<uint8_t> out) {
  const size_t vectors = out.size() / 2 / head_dim;
  std::vector<uint16_t> bits(head_dim);
  for (size_t v = 0; v < vectors; ++v) {
    float scale;
    std::memcpy(&scale, scales_in + v * sizeof(float), sizeof(float));
    const uint8_t* codes = codes_in + v * head_dim;
    if (method == KvQuant::kInt8) {
      for (uint32_t i = 0; i < head_dim; ++i) {
        bits[i] = Elem::FromFloat(static_cast<float>(static_cast<int8_t>(codes[i])) * scale);
      }
    } else {
      for (uint32_t i = 0; i < head_dim; ++i) {
        bits[i] = Elem::FromFloat(Fp8E4M3ToFloat(codes[i]) * scale);
      }
    }
    std::memcpy(out.data() + v * head_dim * 2, bits.data(), head_dim * 2);
  }
}

struct VectorAccumulator {
  double dot = 0, norm_a = 0, norm_b = 0;
  void Add(double a, double b) {
    dot += a * b;
    norm_a += a * a;
    norm_b += b * b;
  }
  double Cosine() const {
    if (norm_a == 0 && norm_b == 0) return 1;
    if (norm_a == 0 || norm_b == 0) return 0;
    return dot / (std::sqrt(norm_a) * std::sqrt(norm_b));
  }
};

template <typename Elem>
QuantErrorStats MeasureTyped(std::span<const uint8_t> original, std::span<const uint8_t> restored,
                             uint32_t head_dim) {
  QuantErrorStats stats;
  const size_t elements = original.size() / 2;
  stats.vectors = elements / head_dim;
  VectorAccumulator global;
  double sum_abs_error = 0, sum_cosine = 0;
  for (size_t v = 0; v < stats.vectors; ++v) {
    VectorAccumulator vec;
    double vec_max_error = 0, vec_amax = 0;
    for (uint32_t i = 0; i < head_dim; ++i) {
      const size_t off = (v * head_dim + i) * 2;
      const double a = Elem::ToFloat(LoadU16(original.data() + off));
      const double b = Elem::ToFloat(LoadU16(restored.data() + off));
      const double err = std::fabs(a - b);
      vec.Add(a, b);
      sum_abs_error += err;
      vec_max_error = std::max(vec_max_error, err);
      vec_amax = std::max(vec_amax, std::fabs(a));
    }
    global.dot += vec.dot;
    global.norm_a += vec.norm_a;
    global.norm_b += vec.norm_b;
    const double cosine = vec.Cosine();
    sum_cosine += cosine;
    stats.min_vector_cosine = std::min(stats.min_vector_cosine, cosine);
    stats.max_abs_error = std::max(stats.max_abs_error, vec_max_error);
    if (vec_amax > 0) {
      stats.max_relative_error = std::max(stats.max_relative_error, vec_max_error / vec_amax);
    } else if (vec_max_error > 0) {
      stats.max_relative_error = INFINITY;
    }
  }
  if (elements > 0) stats.mean_abs_error = sum_abs_error / static_cast<double>(elements);
  if (stats.vectors > 0) stats.mean_vector_cosine = sum_cosine / static_cast<double>(stats.vectors);
  stats.global_cosine = global.Cosine();
  return stats;
}

absl::Status ValidateShape(KvDtype dtype, uint32_t head_dim, uint64_t bytes) {
  if (!IsSourceDtype(dtype)) {
    return absl::InvalidArgumentError(
        absl::StrCat("KV quantization reads fp16 or bf16, not ", std::string(KvDtypeName(dtype))));
  }
  if (head_dim == 0 || head_dim > kMaxQuantHeadDim) {
    return absl::InvalidArgumentError(
        absl::StrCat("head_dim ", head_dim, " is outside 1..", kMaxQuantHeadDim));
  }
  if (bytes % (uint64_t{head_dim} * 2) != 0) {
    return absl::InvalidArgumentError(absl::StrCat("block of ", bytes,
                                                   " bytes is not a whole number of ", head_dim,
                                                   "-element vectors of 2 bytes"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<KvQuant> ParseKvQuant(std::string_view name) {
  const std::string lower = absl::AsciiStrToLower(absl::string_view(name.data(), name.size()));
  if (lower == "none") return KvQuant::kNone;
  if (lower == "int8") return KvQuant::kInt8;
  if (lower == "fp8-e4m3" || lower == "fp8") return KvQuant::kFp8E4M3;
  return absl::InvalidArgumentError(absl::StrCat("unknown KV quantization '",
                                                 absl::string_view(name.data(), name.size()),
                                                 "' (accepted: none, int8, fp8-e4m3)"));
}

std::string_view KvQuantName(KvQuant method) {
  switch (method) {
    case KvQuant::kNone:
      return "none";
    case KvQuant::kInt8:
      return "int8";
    case KvQuant::kFp8E4M3:
      return "fp8-e4m3";
  }
  // Only reachable through a cast of an out-of-range integer: a bug, not bad input.
  std::abort();
}

absl::Status ValidateKvQuantSpec(const KvQuantSpec& spec, uint64_t original_bytes) {
  if (spec.method != KvQuant::kInt8 && spec.method != KvQuant::kFp8E4M3) {
    return absl::InvalidArgumentError(absl::StrCat(
        "KV quantization method ", static_cast<int>(spec.method), " is not int8 or fp8-e4m3"));
  }
  return ValidateShape(spec.dtype, spec.head_dim, original_bytes);
}

uint64_t QuantizedPayloadSize(const KvQuantSpec& spec, uint64_t original_bytes) {
  const uint64_t elements = original_bytes / 2;
  return elements / spec.head_dim * sizeof(float) + elements;
}

absl::Status QuantizeKv(const KvQuantSpec& spec, std::span<const uint8_t> original,
                        std::string* payload) {
  if (absl::Status s = ValidateKvQuantSpec(spec, original.size()); !s.ok()) return s;
  const size_t start = payload->size();
  const size_t vectors = original.size() / 2 / spec.head_dim;
  payload->resize(start + QuantizedPayloadSize(spec, original.size()));
  auto* scales = reinterpret_cast<uint8_t*>(payload->data()) + start;
  uint8_t* codes = scales + vectors * sizeof(float);
  absl::Status s = spec.dtype == KvDtype::kFp16
                       ? QuantizeTyped<Fp16>(spec.method, spec.head_dim, original, scales, codes)
                       : QuantizeTyped<Bf16>(spec.method, spec.head_dim, original, scales, codes);
  if (!s.ok()) payload->resize(start);
  return s;
}

absl::Status DequantizeKv(const KvQuantSpec& spec, std::span<const uint8_t> payload,
                          std::span<uint8_t> out) {
  if (absl::Status s = ValidateKvQuantSpec(spec, out.size()); !s.ok()) return s;
  const uint64_t expected = QuantizedPayloadSize(spec, out.size());
  if (payload.size() != expected) {
    return absl::InvalidArgumentError(absl::StrCat("quantized payload is ", payload.size(),
                                                   " bytes; a block of ", out.size(),
                                                   " bytes needs ", expected));
  }
  const size_t vectors = out.size() / 2 / spec.head_dim;
  const uint8_t* scales = payload.data();
  const uint8_t* codes = scales + vectors * sizeof(float);
  if (spec.dtype == KvDtype::kFp16) {
    DequantizeTyped<Fp16>(spec.method, spec.head_dim, scales, codes, out);
  } else {
    DequantizeTyped<Bf16>(spec.method, spec.head_dim, scales, codes, out);
  }
  return absl::OkStatus();
}

absl::StatusOr<QuantErrorStats> MeasureQuantError(std::span<const uint8_t> original,
                                                  std::span<const uint8_t> restored, KvDtype dtype,
                                                  uint32_t head_dim) {
  if (original.size() != restored.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("original is ", original.size(), " bytes but restored is ", restored.size()));
  }
  if (absl::Status s = ValidateShape(dtype, head_dim, original.size()); !s.ok()) return s;
  return dtype == KvDtype::kFp16 ? MeasureTyped<Fp16>(original, restored, head_dim)
                                 : MeasureTyped<Bf16>(original, restored, head_dim);
}

}  // namespace strata
