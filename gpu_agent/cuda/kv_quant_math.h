// The per-element arithmetic of kv_quant.h's quantizer, shared by the CUDA kernels
// (copy_kernels.cu) and host code (tests check it against QuantizeKv / DequantizeKv on the
// CPU): every function is STRATA_HD. It restates common/src/kv_quant.cc's rules step by step:
//
//   amax      the largest |x| of a vector, found as the largest bit pattern with the sign
//             cleared; a pattern >= kInfBits is a NaN or an infinity (the block is refused);
//   flush     amax < 2^-100: scale 0, codes 0;
//   scale     amax / code_max, inv = code_max / amax (code_max 127 or 448), fp32 divisions;
//   int8      code = round_half_even(x × inv) clamped to [-127, 127], the rounding done by
//             adding 1.5 × 2^23;
//   fp8-e4m3  code = FloatToFp8E4M3(x × inv);
//   restore   FromFloat(value(code) × scale).
//
// Each multiply and add is a separate round-to-nearest fp32 operation (__fmul_rn / __fadd_rn /
// __fdiv_rn on the device: nvcc would otherwise fuse x × inv + magic into one FMA, which the
// host does not). Stateless; thread-safe.
#pragma once

#include <cstdint>

#include "strata/common/half.h"

namespace strata::gpu_agent::cuda {

// kv_quant.cc's constants (they are private there).
inline constexpr float kQuantFlushBelow = 0x1p-100f;
inline constexpr float kQuantRoundMagic = 12582912.0f;  // 1.5 × 2^23
inline constexpr uint32_t kQuantRoundMagicBits = 0x4b400000u;
inline constexpr float kInt8CodeMax = 127.0f;

STRATA_HD inline float MulRn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

STRATA_HD inline float AddRn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}

STRATA_HD inline float DivRn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}

// Source element types: bit patterns <-> fp32, and the smallest non-finite magnitude pattern.
struct Fp16Element {
  static constexpr uint32_t kInfBits = 0x7c00u;
  STRATA_HD static float ToFloat(uint16_t bits) { return HalfToFloat(bits); }
  STRATA_HD static uint16_t FromFloat(float v) { return FloatToHalf(v); }
};
struct Bf16Element {
  static constexpr uint32_t kInfBits = 0x7f80u;
  STRATA_HD static float ToFloat(uint16_t bits) { return Bf16ToFloat(bits); }
  STRATA_HD static uint16_t FromFloat(float v) { return FloatToBf16(v); }
};

// The NaN a CPU's fp32 multiply a × b returns when the product is NaN: the NaN operand made
// quiet (the first one when both are NaN), or the CPU's default NaN (`default_nan`, e.g.
// 0xffc00000 on x86-64, 0x7fc00000 on Arm) for 0 × inf. A GPU returns one canonical NaN
// instead, so the kernels substitute this to restore NaN bit patterns as the host does.
STRATA_HD inline float HostNanProduct(float a, float b, uint32_t default_nan) {
  const uint32_t a_bits = FloatBits(a);
  const uint32_t b_bits = FloatBits(b);
  if ((a_bits & 0x7fffffffu) > 0x7f800000u) return BitsToFloat(a_bits | 0x00400000u);
  if ((b_bits & 0x7fffffffu) > 0x7f800000u) return BitsToFloat(b_bits | 0x00400000u);
  return BitsToFloat(default_nan);
}

// a × b, NaN results as the host gives them.
STRATA_HD inline float HostMul(float a, float b, uint32_t default_nan) {
  const float r = MulRn(a, b);
  return r == r ? r : HostNanProduct(a, b, default_nan);
}

// int8 code of x (a finite element of a vector with inverse scale inv).
STRATA_HD inline uint8_t QuantizeInt8(float x, float inv) {
  int32_t q = static_cast<int32_t>(FloatBits(AddRn(MulRn(x, inv), kQuantRoundMagic)) -
                                   kQuantRoundMagicBits);
  // |x × inv| may exceed 127 by an fp32 rounding.
  q = q < -127 ? -127 : (q > 127 ? 127 : q);
  return static_cast<uint8_t>(q);
}

// fp8-e4m3 code of x.
STRATA_HD inline uint8_t QuantizeFp8E4M3(float x, float inv) {
  return FloatToFp8E4M3(MulRn(x, inv));
}

// The element a code restores to, as bits of the source type.
template <typename Element>
STRATA_HD inline uint16_t DequantizeInt8(uint8_t code, float scale, uint32_t default_nan) {
  const float value = static_cast<float>(static_cast<int8_t>(code));
  return Element::FromFloat(HostMul(value, scale, default_nan));
}

template <typename Element>
STRATA_HD inline uint16_t DequantizeFp8E4M3(uint8_t code, float scale, uint32_t default_nan) {
  return Element::FromFloat(HostMul(Fp8E4M3ToFloat(code), scale, default_nan));
}

}  // namespace strata::gpu_agent::cuda
