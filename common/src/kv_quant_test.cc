#include "strata/common/kv_quant.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <iostream>
#include <limits>
#include <random>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "strata/common/half.h"
#include "strata/testutil/status_matchers.h"
#include "strata/testutil/synthetic_kv.h"

namespace strata {
namespace {

using ::strata::testutil::IsOk;
using ::strata::testutil::StatusIs;
using ::testing::HasSubstr;

// ---------------------------------------------------------------------------------------
// Scalar conversions (half.h).

// Decodes a binary float format from its fields with ldexp: an independent reference.
double DecodeFields(uint32_t sign, uint32_t exp, uint32_t mant, int mant_bits, int bias) {
  const double m = exp == 0 ? mant : mant + std::ldexp(1.0, mant_bits);
  const double v = std::ldexp(m, (exp == 0 ? 1 : static_cast<int>(exp)) - bias - mant_bits);
  return sign ? -v : v;
}

// Every non-negative finite value of a format with its code, ascending, plus (last) the value
// at which rounding overflows to infinity and that infinity's code, for IEEE-like formats.
using Table = std::vector<std::pair<double, uint32_t>>;

// Round-to-nearest-even over the table, for x >= 0: the slow, obviously right way.
uint32_t ReferenceRound(const Table& table, double x) {
  auto it = std::lower_bound(table.begin(), table.end(), x,
                             [](const auto& e, double v) { return e.first < v; });
  if (it == table.end()) return table.back().second;
  if (it->first == x || it == table.begin()) return it->second;
  const auto lo = std::prev(it);
  const double below = x - lo->first, above = it->first - x;
  if (below < above) return lo->second;
  if (above < below) return it->second;
  return (lo->second & 1) == 0 ? lo->second : it->second;
}

Table HalfTable() {
  Table t;
  for (uint32_t h = 0; h < 0x7c00; ++h) t.push_back({HalfToFloat(static_cast<uint16_t>(h)), h});
  t.push_back({65536.0, 0x7c00});  // the next binade: its midpoint with 65504 is the overflow
  return t;
}

Table Bf16Table() {
  Table t;
  for (uint32_t b = 0; b < 0x7f80; ++b) t.push_back({Bf16ToFloat(static_cast<uint16_t>(b)), b});
  t.push_back({std::ldexp(1.0, 128), 0x7f80});
  return t;
}

Table Fp8Table() {
  Table t;
  for (uint32_t c = 0; c <= 0x7e; ++c) t.push_back({Fp8E4M3ToFloat(static_cast<uint8_t>(c)), c});
  return t;  // saturating: anything above 448 rounds to 448, the last entry
}

// Floats that probe a table: every value, its neighbours and every midpoint and its
// neighbours, plus a sweep of bit patterns.
std::vector<float> ProbeFloats(const Table& table) {
  std::vector<float> probes;
  for (size_t i = 0; i < table.size(); ++i) {
    const float v = static_cast<float>(table[i].first);
    if (std::isinf(v)) continue;
    probes.push_back(v);
    probes.push_back(std::nextafter(v, 0.0f));
    probes.push_back(std::nextafter(v, INFINITY));
    if (i + 1 < table.size()) {
      const float mid = static_cast<float>((table[i].first + table[i + 1].first) / 2);
      probes.push_back(mid);
      probes.push_back(std::nextafter(mid, 0.0f));
      probes.push_back(std::nextafter(mid, INFINITY));
    }
  }
  for (uint64_t bits = 0; bits < 0x7f800000; bits += 65521) {
    probes.push_back(BitsToFloat(static_cast<uint32_t>(bits)));
  }
  probes.push_back(INFINITY);
  probes.push_back(std::numeric_limits<float>::max());
  probes.push_back(std::numeric_limits<float>::denorm_min());
  return probes;
}

TEST(HalfTest, Fp16DecodesEveryPatternExactly) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float f = HalfToFloat(static_cast<uint16_t>(h));
    const uint32_t exp = (h >> 10) & 0x1f, mant = h & 0x3ff, sign = h >> 15;
    ASSERT_EQ(std::signbit(f), sign == 1) << std::hex << h;
    if (exp == 0x1f) {
      ASSERT_EQ(std::isnan(f), mant != 0) << std::hex << h;
      ASSERT_EQ(std::isinf(f), mant == 0) << std::hex << h;
    } else {
      ASSERT_EQ(f, DecodeFields(sign, exp, mant, 10, 15)) << std::hex << h;
    }
  }
}

TEST(HalfTest, Fp16RoundTripsEveryPattern) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const uint16_t back = FloatToHalf(HalfToFloat(static_cast<uint16_t>(h)));
    if ((h & 0x7c00) == 0x7c00 && (h & 0x3ff) != 0) {
      // NaN: stays a quiet NaN of the same sign; the payload may gain the quiet bit.
      EXPECT_EQ(back & 0xfe00, (h & 0x8000) | 0x7e00) << std::hex << h;
    } else {
      ASSERT_EQ(back, h) << std::hex << h;
    }
  }
}

TEST(HalfTest, Fp16EncodesLikeTheReference) {
  const Table table = HalfTable();
  for (float f : ProbeFloats(table)) {
    const uint16_t want = static_cast<uint16_t>(ReferenceRound(table, f));
    ASSERT_EQ(FloatToHalf(f), want) << f;
    ASSERT_EQ(FloatToHalf(-f), want | 0x8000) << -f;
#ifdef __FLT16_MAX__
    // The compiler's own conversion (GCC 12+ on x86-64) as a second reference.
    const _Float16 h = static_cast<_Float16>(f);
    uint16_t bits;
    std::memcpy(&bits, &h, sizeof(bits));
    ASSERT_EQ(FloatToHalf(f), bits) << f;
#endif
  }
}

TEST(HalfTest, Fp16KnownValues) {
  EXPECT_EQ(FloatToHalf(1.0f), 0x3c00);
  EXPECT_EQ(FloatToHalf(65504.0f), 0x7bff);
  EXPECT_EQ(FloatToHalf(65519.996f), 0x7bff);
  EXPECT_EQ(FloatToHalf(65520.0f), 0x7c00);  // the tie rounds to even: infinity
  EXPECT_EQ(FloatToHalf(-1e9f), 0xfc00);
  EXPECT_EQ(FloatToHalf(-INFINITY), 0xfc00);
  EXPECT_EQ(FloatToHalf(0x1p-24f), 0x0001);
  EXPECT_EQ(FloatToHalf(0x1p-25f), 0x0000);  // tie between 0 and 2^-24: even zero
  EXPECT_EQ(FloatToHalf(std::nextafter(0x1p-25f, 1.0f)), 0x0001);
  EXPECT_EQ(FloatToHalf(0x1.ff8p-15f), 0x03ff);     // the largest subnormal
  EXPECT_EQ(FloatToHalf(0x1.ffcp-15f), 0x0400);     // tie above it: rounds out of the subnormals
  EXPECT_EQ(FloatToHalf(1.0f + 0x1p-11f), 0x3c00);  // tie, even stays
  EXPECT_EQ(FloatToHalf(1.0f + 3 * 0x1p-11f), 0x3c02);  // tie, odd rounds up
  EXPECT_EQ(FloatToHalf(-0.0f), 0x8000);
  EXPECT_EQ(FloatToHalf(NAN), 0x7e00);
}

TEST(HalfTest, Bf16RoundTripsEveryPattern) {
  for (uint32_t b = 0; b < 0x10000; ++b) {
    const float f = Bf16ToFloat(static_cast<uint16_t>(b));
    const uint32_t exp = (b >> 7) & 0xff, mant = b & 0x7f, sign = b >> 15;
    const uint16_t back = FloatToBf16(f);
    if (exp == 0xff && mant != 0) {
      ASSERT_TRUE(std::isnan(f));
      EXPECT_EQ(back & 0xffc0, (b & 0x8000) | 0x7fc0) << std::hex << b;
      continue;
    }
    if (exp != 0xff) {
      ASSERT_EQ(f, DecodeFields(sign, exp, mant, 7, 127)) << std::hex << b;
    }
    ASSERT_EQ(back, b) << std::hex << b;
  }
}

TEST(HalfTest, Bf16EncodesLikeTheReference) {
  const Table table = Bf16Table();
  for (float f : ProbeFloats(table)) {
    const uint16_t want = static_cast<uint16_t>(ReferenceRound(table, f));
    ASSERT_EQ(FloatToBf16(f), want) << f;
    ASSERT_EQ(FloatToBf16(-f), want | 0x8000) << -f;
  }
  EXPECT_EQ(FloatToBf16(1.0f + 0x1p-8f), 0x3f80);      // tie, even stays
  EXPECT_EQ(FloatToBf16(1.0f + 3 * 0x1p-8f), 0x3f82);  // tie, odd rounds up
  EXPECT_EQ(FloatToBf16(std::numeric_limits<float>::max()), 0x7f80);
  EXPECT_EQ(FloatToBf16(NAN), 0x7fc0);
}

TEST(HalfTest, Fp8E4M3DecodesAndRoundTripsEveryCode) {
  for (uint32_t c = 0; c < 0x100; ++c) {
    const float f = Fp8E4M3ToFloat(static_cast<uint8_t>(c));
    const uint32_t exp = (c >> 3) & 0xf, mant = c & 0x7, sign = c >> 7;
    if (exp == 0xf && mant == 0x7) {
      ASSERT_TRUE(std::isnan(f)) << c;
      EXPECT_EQ(FloatToFp8E4M3(f), c) << c;  // NaN keeps its sign
      continue;
    }
    ASSERT_EQ(f, DecodeFields(sign, exp, mant, 3, 7)) << c;
    ASSERT_EQ(FloatToFp8E4M3(f), c) << c;
  }
}

TEST(HalfTest, Fp8E4M3EncodesLikeTheReference) {
  const Table table = Fp8Table();
  for (float f : ProbeFloats(table)) {
    const uint8_t want = static_cast<uint8_t>(ReferenceRound(table, f));
    ASSERT_EQ(FloatToFp8E4M3(f), want) << f;
    ASSERT_EQ(FloatToFp8E4M3(-f), want | 0x80) << -f;
  }
  EXPECT_EQ(FloatToFp8E4M3(1.0f), 0x38);
  EXPECT_EQ(FloatToFp8E4M3(1.0625f), 0x38);  // tie between 1 and 1.125: even
  EXPECT_EQ(FloatToFp8E4M3(1.1875f), 0x3a);  // tie between 1.125 and 1.25: even
  EXPECT_EQ(FloatToFp8E4M3(448.0f), 0x7e);
  EXPECT_EQ(FloatToFp8E4M3(464.0f), 0x7e);  // saturates, never the NaN code
  EXPECT_EQ(FloatToFp8E4M3(INFINITY), 0x7e);
  EXPECT_EQ(FloatToFp8E4M3(-INFINITY), 0xfe);
  EXPECT_EQ(FloatToFp8E4M3(NAN), 0x7f);
  EXPECT_EQ(FloatToFp8E4M3(-NAN), 0xff);
  EXPECT_EQ(FloatToFp8E4M3(0x1p-9f), 0x01);
  EXPECT_EQ(FloatToFp8E4M3(0x1p-10f), 0x00);  // tie with zero: even
  EXPECT_EQ(FloatToFp8E4M3(0x1.8p-10f), 0x01);
  EXPECT_EQ(Fp8E4M3ToFloat(0x7e), kFp8E4M3Max);
}

// ---------------------------------------------------------------------------------------
// Quantization.

constexpr uint32_t kHeadDim = 128;
std::vector<uint8_t> SyntheticKv(KvDtype dtype, size_t vectors, uint64_t seed) {
  return testutil::SyntheticKv(dtype, kHeadDim, vectors, seed);
}

std::vector<uint8_t> Fp16Bytes(std::initializer_list<float> values) {
  std::vector<uint8_t> bytes;
  for (float v : values) {
    const uint16_t h = FloatToHalf(v);
    bytes.push_back(static_cast<uint8_t>(h));
    bytes.push_back(static_cast<uint8_t>(h >> 8));
  }
  return bytes;
}

std::span<const uint8_t> Bytes(const std::string& s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

struct QuantCase {
  KvQuant method;
  KvDtype dtype;
  double min_global_cosine;  // asserted bounds: measured values, see docs/design/codecs.md
  double min_vector_cosine;
  double max_relative_error;  // of a vector's max |error| to its max |x|
};

class SyntheticKvTest : public ::testing::TestWithParam<QuantCase> {};

TEST_P(SyntheticKvTest, ErrorStaysWithinBounds) {
  const QuantCase& c = GetParam();
  const KvQuantSpec spec{c.method, c.dtype, kHeadDim};
  const size_t vectors = 8192;  // one 2 MiB block
  const std::vector<uint8_t> original = SyntheticKv(c.dtype, vectors, 42);
  std::string payload;
  ASSERT_THAT(QuantizeKv(spec, original, &payload), IsOk());
  ASSERT_EQ(payload.size(), vectors * 4 + vectors * kHeadDim);
  ASSERT_EQ(payload.size(), QuantizedPayloadSize(spec, original.size()));
  std::vector<uint8_t> restored(original.size());
  ASSERT_THAT(DequantizeKv(spec, Bytes(payload), restored), IsOk());
  absl::StatusOr<QuantErrorStats> stats = MeasureQuantError(original, restored, c.dtype, kHeadDim);
  ASSERT_THAT(stats, IsOk());
  std::cout << "[ measured ] " << KvQuantName(c.method) << " " << KvDtypeName(c.dtype)
            << ": global cosine " << stats->global_cosine << ", mean vector cosine "
            << stats->mean_vector_cosine << ", min vector cosine " << stats->min_vector_cosine
            << ", max abs error " << stats->max_abs_error << ", mean abs error "
            << stats->mean_abs_error << ", max relative error " << stats->max_relative_error
            << "\n";
  EXPECT_EQ(stats->vectors, vectors);
  EXPECT_GE(stats->global_cosine, c.min_global_cosine);
  EXPECT_GE(stats->mean_vector_cosine, c.min_global_cosine);
  EXPECT_GE(stats->min_vector_cosine, c.min_vector_cosine);
  EXPECT_LE(stats->max_relative_error, c.max_relative_error);
  EXPECT_GT(stats->max_abs_error, 0);  // it is lossy: a zero would mean nothing was measured

  // Quantizing is deterministic: the same block gives the same payload.
  std::string again;
  ASSERT_THAT(QuantizeKv(spec, original, &again), IsOk());
  EXPECT_EQ(again, payload);
}

// Measured on this data (seed 42, 8192 vectors), global / min-vector cosine: int8 0.99979 /
// 0.99964 (fp16 and bf16), fp8-e4m3 0.99988 / 0.99946 (fp16), 0.99988 / 0.99935 (bf16); the
// cosine bounds leave about 5x margin on 1 - cosine. (fp8 beats int8 here: the ×20 outlier
// channels set every vector's scale, and e4m3's relative precision keeps small values where
// int8's uniform step loses them.) Relative-error bounds are analytic: int8 rounds to half a step
// (max|x|/254), e4m3 keeps 3 mantissa bits (half an ulp is at most 2^-4 of |x|), plus rounding the
// restored value back to fp16 (2^-11 relative) or bf16 (2^-8).
INSTANTIATE_TEST_SUITE_P(
    Methods, SyntheticKvTest,
    ::testing::Values(
        QuantCase{KvQuant::kInt8, KvDtype::kFp16, 0.999, 0.998, 1.0 / 254 + 0x1p-11 + 1e-6},
        QuantCase{KvQuant::kInt8, KvDtype::kBf16, 0.999, 0.998, 1.0 / 254 + 0x1p-8 + 1e-6},
        QuantCase{KvQuant::kFp8E4M3, KvDtype::kFp16, 0.999, 0.998, 0x1p-4 + 0x1p-11 + 1e-6},
        QuantCase{KvQuant::kFp8E4M3, KvDtype::kBf16, 0.999, 0.998, 0x1p-4 + 0x1p-8 + 1e-6}),
    [](const auto& info) {
      return absl::StrCat(info.param.method == KvQuant::kInt8 ? "Int8" : "Fp8E4M3",
                          info.param.dtype == KvDtype::kFp16 ? "Fp16" : "Bf16");
    });

// The quantizer's loops are built for vectorization (-O3, see common/CMakeLists.txt); this
// recomputes every scale, code and restored element with plain scalar code from the
// documented formulas and expects the same bytes.
TEST(KvQuantTest, MatchesAScalarReferenceBitForBit) {
  for (KvDtype dtype : {KvDtype::kFp16, KvDtype::kBf16}) {
    std::vector<uint8_t> block = SyntheticKv(dtype, 64, 9);
    // Special vectors: zeros, tiny values (fp16 subnormals, bf16 specks below 2^-100), and a
    // negative extreme.
    auto set = [&](size_t vec, uint32_t i, float x) {
      const uint16_t b = dtype == KvDtype::kFp16 ? FloatToHalf(x) : FloatToBf16(x);
      std::memcpy(&block[(vec * kHeadDim + i) * 2], &b, 2);
    };
    for (uint32_t i = 0; i < kHeadDim; ++i) {
      set(0, i, 0.0f);
      set(1, i, (static_cast<float>(i) - 64) * 1e-7f);
      set(2, i, (static_cast<float>(i) - 64) * 1e-32f);
    }
    set(3, 5, -300.0f);
    auto load = [&](const std::vector<uint8_t>& b, size_t e) {
      uint16_t bits;
      std::memcpy(&bits, &b[2 * e], 2);
      return dtype == KvDtype::kFp16 ? HalfToFloat(bits) : Bf16ToFloat(bits);
    };
    for (KvQuant method : {KvQuant::kInt8, KvQuant::kFp8E4M3}) {
      SCOPED_TRACE(
          absl::StrCat(std::string(KvQuantName(method)), " ", std::string(KvDtypeName(dtype))));
      const KvQuantSpec spec{method, dtype, kHeadDim};
      const size_t vectors = block.size() / 2 / kHeadDim;
      const float code_max = method == KvQuant::kInt8 ? 127.0f : 448.0f;
      std::string want(vectors * 4 + vectors * kHeadDim, '\0');
      std::vector<uint8_t> want_restored(block.size());
      for (size_t v = 0; v < vectors; ++v) {
        float amax = 0;
        for (uint32_t i = 0; i < kHeadDim; ++i) {
          amax = std::max(amax, std::fabs(load(block, v * kHeadDim + i)));
        }
        const float scale = amax < 0x1p-100f ? 0.0f : amax / code_max;
        std::memcpy(&want[v * 4], &scale, 4);
        for (uint32_t i = 0; i < kHeadDim; ++i) {
          const size_t e = v * kHeadDim + i;
          uint8_t code = 0;
          float restored = 0;
          if (scale != 0) {
            const float q = load(block, e) * (code_max / amax);
            if (method == KvQuant::kInt8) {
              const int8_t c = static_cast<int8_t>(std::clamp<long>(std::lrint(q), -127, 127));
              code = static_cast<uint8_t>(c);
              restored = static_cast<float>(c) * scale;
            } else {
              code = FloatToFp8E4M3(q);
              restored = Fp8E4M3ToFloat(code) * scale;
            }
          }
          want[vectors * 4 + e] = static_cast<char>(code);
          const uint16_t r =
              dtype == KvDtype::kFp16 ? FloatToHalf(restored) : FloatToBf16(restored);
          std::memcpy(&want_restored[2 * e], &r, 2);
        }
      }
      std::string payload;
      ASSERT_THAT(QuantizeKv(spec, block, &payload), IsOk());
      EXPECT_TRUE(payload == want);
      std::vector<uint8_t> restored(block.size());
      ASSERT_THAT(DequantizeKv(spec, Bytes(payload), restored), IsOk());
      EXPECT_TRUE(restored == want_restored);
    }
  }
}

TEST(KvQuantTest, Int8ExactCodesAndScale) {
  const std::vector<uint8_t> original = Fp16Bytes({1.0f, -0.5f, 0.25f, 2.0f});
  std::string payload;
  ASSERT_THAT(QuantizeKv({KvQuant::kInt8, KvDtype::kFp16, 4}, original, &payload), IsOk());
  ASSERT_EQ(payload.size(), 4u + 4u);
  const float scale = 2.0f / 127.0f;
  EXPECT_EQ(payload.substr(0, 4), std::string(reinterpret_cast<const char*>(&scale), 4));
  // x × 127/2: 63.5 (tie: even 64), -31.75, 15.875, 127.
  EXPECT_EQ(payload.substr(4), std::string("\x40\xe0\x10\x7f", 4));
}

TEST(KvQuantTest, Fp8ExactCodesRestoreExactly) {
  // max|x| = 448 makes the scale 1, so these representable values survive unchanged.
  const std::vector<uint8_t> original = Fp16Bytes({1.0f, -0.5f, 448.0f, 0x1p-9f});
  const KvQuantSpec spec{KvQuant::kFp8E4M3, KvDtype::kFp16, 4};
  std::string payload;
  ASSERT_THAT(QuantizeKv(spec, original, &payload), IsOk());
  const float one = 1.0f;
  EXPECT_EQ(payload.substr(0, 4), std::string(reinterpret_cast<const char*>(&one), 4));
  EXPECT_EQ(payload.substr(4), std::string("\x38\xb0\x7e\x01", 4));
  std::vector<uint8_t> restored(original.size());
  ASSERT_THAT(DequantizeKv(spec, Bytes(payload), restored), IsOk());
  EXPECT_EQ(restored, original);
}

TEST(KvQuantTest, ZeroVectorsRestoreToZero) {
  for (KvQuant method : {KvQuant::kInt8, KvQuant::kFp8E4M3}) {
    const std::vector<uint8_t> original(2 * 64, 0);
    const KvQuantSpec spec{method, KvDtype::kBf16, 32};
    std::string payload;
    ASSERT_THAT(QuantizeKv(spec, original, &payload), IsOk());
    EXPECT_EQ(payload, std::string(2 * 4 + 64, '\0'));
    std::vector<uint8_t> restored(original.size(), 0xaa);
    ASSERT_THAT(DequantizeKv(spec, Bytes(payload), restored), IsOk());
    EXPECT_EQ(restored, original);
  }
}

TEST(KvQuantTest, EmptyBlock) {
  const KvQuantSpec spec{KvQuant::kInt8, KvDtype::kFp16, 128};
  std::string payload = "keep";
  ASSERT_THAT(QuantizeKv(spec, {}, &payload), IsOk());
  EXPECT_EQ(payload, "keep");
  EXPECT_THAT(DequantizeKv(spec, {}, {}), IsOk());
}

TEST(KvQuantTest, RejectsNonFiniteValuesAndLeavesPayloadAlone) {
  for (float bad : {NAN, INFINITY, -INFINITY}) {
    const std::vector<uint8_t> original = Fp16Bytes({1, 2, 3, 4, 5, bad, 7, 8});
    std::string payload = "keep";
    EXPECT_THAT(QuantizeKv({KvQuant::kInt8, KvDtype::kFp16, 4}, original, &payload),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("element 5")));
    EXPECT_EQ(payload, "keep");
  }
}

TEST(KvQuantTest, RejectsInvalidSpecs) {
  const std::vector<uint8_t> block(256);
  std::string payload;
  auto quantize = [&](KvQuantSpec spec, size_t bytes) {
    return QuantizeKv(spec, std::span(block).first(bytes), &payload);
  };
  EXPECT_THAT(quantize({KvQuant::kNone, KvDtype::kFp16, 4}, 256),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("method")));
  EXPECT_THAT(quantize({KvQuant::kInt8, KvDtype::kFp8, 4}, 256),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("fp8")));
  EXPECT_THAT(quantize({KvQuant::kInt8, KvDtype::kFp16, 0}, 256),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("head_dim 0")));
  EXPECT_THAT(quantize({KvQuant::kInt8, KvDtype::kFp16, 70000}, 256),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("head_dim 70000")));
  EXPECT_THAT(quantize({KvQuant::kInt8, KvDtype::kFp16, 128}, 250),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("250 bytes")));
  EXPECT_TRUE(payload.empty());
}

TEST(KvQuantTest, DequantizeChecksPayloadSizeAndSurvivesAnyBytes) {
  const KvQuantSpec spec{KvQuant::kFp8E4M3, KvDtype::kFp16, 16};
  std::vector<uint8_t> out(2 * 64);
  std::string payload(QuantizedPayloadSize(spec, out.size()), '\0');
  EXPECT_THAT(DequantizeKv(spec, Bytes(payload).first(payload.size() - 1), out),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("needs")));
  std::mt19937 rng(7);
  for (int round = 0; round < 100; ++round) {
    for (char& c : payload) c = static_cast<char>(rng());
    EXPECT_THAT(DequantizeKv(spec, Bytes(payload), out), IsOk());
    EXPECT_THAT(DequantizeKv({KvQuant::kInt8, KvDtype::kBf16, 16}, Bytes(payload), out), IsOk());
  }
}

TEST(KvQuantTest, MeasureQuantErrorOnKnownVectors) {
  const std::vector<uint8_t> a = Fp16Bytes({1, 0, 0, 0, 3, 4, 0, 0});
  const std::vector<uint8_t> b = Fp16Bytes({0, 1, 0, 0, 3, 4, 0, 0});
  absl::StatusOr<QuantErrorStats> s = MeasureQuantError(a, b, KvDtype::kFp16, 4);
  ASSERT_THAT(s, IsOk());
  EXPECT_EQ(s->vectors, 2u);
  EXPECT_DOUBLE_EQ(s->max_abs_error, 1.0);
  EXPECT_DOUBLE_EQ(s->mean_abs_error, 2.0 / 8);
  EXPECT_DOUBLE_EQ(s->min_vector_cosine, 0.0);
  EXPECT_DOUBLE_EQ(s->mean_vector_cosine, 0.5);
  EXPECT_DOUBLE_EQ(s->global_cosine, 25.0 / 26.0);  // dot 25, |a| = |b| = sqrt(26)
  EXPECT_DOUBLE_EQ(s->max_relative_error, 1.0);

  absl::StatusOr<QuantErrorStats> same = MeasureQuantError(a, a, KvDtype::kFp16, 4);
  ASSERT_THAT(same, IsOk());
  EXPECT_EQ(same->max_abs_error, 0);
  EXPECT_DOUBLE_EQ(same->global_cosine, 1.0);
  EXPECT_DOUBLE_EQ(same->min_vector_cosine, 1.0);

  EXPECT_THAT(MeasureQuantError(a, std::span(b).first(6), KvDtype::kFp16, 4),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(MeasureQuantError(a, b, KvDtype::kFp16, 3),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(KvQuantTest, ParseAndName) {
  EXPECT_EQ(*ParseKvQuant("none"), KvQuant::kNone);
  EXPECT_EQ(*ParseKvQuant("INT8"), KvQuant::kInt8);
  EXPECT_EQ(*ParseKvQuant("fp8-e4m3"), KvQuant::kFp8E4M3);
  EXPECT_EQ(*ParseKvQuant("fp8"), KvQuant::kFp8E4M3);
  EXPECT_THAT(ParseKvQuant("int4"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("none, int8, fp8-e4m3")));
  for (KvQuant q : {KvQuant::kNone, KvQuant::kInt8, KvQuant::kFp8E4M3}) {
    EXPECT_EQ(*ParseKvQuant(KvQuantName(q)), q);
  }
}

}  // namespace
}  // namespace strata
