// Conversions between fp32 and the small floating-point formats of KV caches: IEEE fp16
// (binary16), bfloat16 and OCP fp8-e4m3 ("E4M3FN": bias 7, no infinities, NaN = S.1111.111,
// largest finite 448). Used by the KV quantizer (kv_quant.h) on the CPU, and meant to be
// compiled unchanged into CUDA kernels: plain integer and fp32 code, no intrinsics, no tables,
// no exceptions; every function is STRATA_HD (__host__ __device__ under nvcc).
//
// Rounding is round-to-nearest-even everywhere (the default fp32 rounding mode is assumed);
// subnormals of the small formats are produced and consumed exactly, and no fp32 subnormal is
// ever an intermediate result, so flush-to-zero modes (CUDA -ftz) do not change any answer
// for normal fp32 inputs. The functions are branch-free selects: each computes every case and
// picks one, so loops over them compile without data-dependent branches (which mispredict on
// real data) and can be vectorized.
//
// Stateless; thread-safe.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define STRATA_HD __host__ __device__
#else
#define STRATA_HD
#endif

namespace strata {

STRATA_HD inline uint32_t FloatBits(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof(u));
  return u;
}

STRATA_HD inline float BitsToFloat(uint32_t u) {
  float f;
  memcpy(&f, &u, sizeof(f));
  return f;
}

namespace half_internal {

// Shifts `mantissa` right by `shift` (1..31) and rounds the result to nearest, ties to even:
// adding half-minus-one plus the kept part's lowest bit carries into the kept part exactly
// when the dropped part is above half, or at half with an odd kept part.
// Exact for mantissa < 2^31; larger inputs wrap (callers discard those results).
STRATA_HD inline uint32_t ShiftRightRne(uint32_t mantissa, uint32_t shift) {
  const uint32_t odd = (mantissa >> shift) & 1u;
  return (mantissa + (1u << (shift - 1)) - 1u + odd) >> shift;
}

// round_half_even(v) for 0 <= v < 2^22, as an integer: adding 2^23 leaves no fraction bits, so
// the fp32 addition itself rounds (to nearest even), and the integer is the low mantissa bits.
STRATA_HD inline uint32_t RoundToInt(float v) { return FloatBits(v + 8388608.0f) - 0x4b000000u; }

}  // namespace half_internal

// fp16 bits -> float. Exact for every input; ±inf stays ±inf and a NaN keeps its sign and
// payload (shifted into the top of the fp32 mantissa).
STRATA_HD inline float HalfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t em = h & 0x7fffu;                   // exponent and mantissa
  const uint32_t normal = (em << 13) + 0x38000000u;  // rebias the exponent: 15 -> 127
  const uint32_t inf_nan = (em << 13) | 0x7f800000u;
  // Subnormal (and zero): mantissa × 2^-24, exact in fp32 and at least 2^-24 when non-zero.
  const uint32_t subnormal = FloatBits(static_cast<float>(em) * 0x1p-24f);
  const uint32_t bits = em < 0x400u ? subnormal : (em >= 0x7c00u ? inf_nan : normal);
  return BitsToFloat(sign | bits);
}

// float -> fp16 bits, round to nearest even. |f| >= 65520 (and ±inf) becomes ±inf; results
// below 2^-14 are fp16 subnormals (or ±0); a NaN stays a quiet NaN with its sign and the top
// 9 bits of its payload.
STRATA_HD inline uint16_t FloatToHalf(float f) {
  const uint32_t x = FloatBits(f);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t abs = x & 0x7fffffffu;
  // Normal: rebias (127 -> 15) and drop 13 mantissa bits; a carry out of the mantissa
  // correctly increments the exponent.
  const uint32_t normal = half_internal::ShiftRightRne(abs - 0x38000000u, 13);
  // Below 2^-14: units of 2^-24 (|f| × 2^24 < 1024 is exact). A result of 0x400 is the
  // encoding of 2^-14, so rounding up out of the subnormals is still right.
  const uint32_t subnormal = half_internal::RoundToInt(BitsToFloat(abs) * 0x1p24f);
  const uint32_t nan = 0x7e00u | ((abs >> 13) & 0x3ffu);
  uint32_t r = abs < 0x38800000u ? subnormal : normal;
  // 65520 = 65504 + half an ulp: the tie rounds to the even neighbour, which is infinity.
  r = abs >= 0x477ff000u ? 0x7c00u : r;
  r = abs > 0x7f800000u ? nan : r;
  return static_cast<uint16_t>(sign | r);
}

// bf16 bits -> float: exact (bf16 is the top half of an fp32).
STRATA_HD inline float Bf16ToFloat(uint16_t b) {
  return BitsToFloat(static_cast<uint32_t>(b) << 16);
}

// float -> bf16 bits, round to nearest even; overflow rounds to ±inf, subnormals are kept, a
// NaN stays a quiet NaN with its sign and the top 6 bits of its payload.
STRATA_HD inline uint16_t FloatToBf16(float f) {
  const uint32_t x = FloatBits(f);
  const uint32_t nan = (x >> 16) | 0x0040u;
  // Adding 0x7fff (+1 when the kept part is odd) carries into bit 16 exactly when the dropped
  // half is above the tie, or at the tie with an odd kept part.
  const uint32_t rounded = (x + 0x7fffu + ((x >> 16) & 1u)) >> 16;
  return static_cast<uint16_t>((x & 0x7fffffffu) > 0x7f800000u ? nan : rounded);
}

// Largest finite fp8-e4m3 magnitude.
inline constexpr float kFp8E4M3Max = 448.0f;

// fp8-e4m3 bits -> float: exact. 0x7f / 0xff are NaN (the format has no infinities).
STRATA_HD inline float Fp8E4M3ToFloat(uint8_t c) {
  const uint32_t sign = static_cast<uint32_t>(c & 0x80u) << 24;
  const uint32_t em = c & 0x7fu;
  const uint32_t normal = (em << 20) + 0x3c000000u;  // rebias the exponent: 7 -> 127
  // Subnormal (and zero): mantissa × 2^-9, exact in fp32.
  const uint32_t subnormal = FloatBits(static_cast<float>(em) * 0x1p-9f);
  uint32_t bits = em < 0x08u ? subnormal : normal;
  bits = em == 0x7fu ? 0x7fc00000u : bits;
  return BitsToFloat(sign | bits);
}

// float -> fp8-e4m3 bits, round to nearest even with saturation: any |f| >= 448, ±inf
// included, becomes ±448 (0x7e / 0xfe); a NaN becomes 0x7f with its sign bit (0xff).
STRATA_HD inline uint8_t FloatToFp8E4M3(float f) {
  const uint32_t x = FloatBits(f);
  const uint32_t sign = (x >> 24) & 0x80u;
  const uint32_t abs = x & 0x7fffffffu;
  // Normal: rebias (127 -> 7) and drop 20 mantissa bits. Values just under 448 round at most
  // to 0x7e (448 itself), never into the NaN encoding 0x7f.
  const uint32_t normal = half_internal::ShiftRightRne(abs - 0x3c000000u, 20);
  // Below 2^-6: units of 2^-9 (|f| × 2^9 < 8 is exact); 8 is the encoding of 2^-6.
  const uint32_t subnormal = half_internal::RoundToInt(BitsToFloat(abs) * 0x1p9f);
  uint32_t r = abs < 0x3c800000u ? subnormal : normal;
  r = abs >= 0x43e00000u ? 0x7eu : r;  // 448 and above, infinities included: saturate
  r = abs > 0x7f800000u ? 0x7fu : r;
  return static_cast<uint8_t>(sign | r);
}

}  // namespace strata
