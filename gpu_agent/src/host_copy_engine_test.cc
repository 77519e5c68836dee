// The host twin against the layouts' own tensor shapes (HostKvPool::Element), for every layout
// and dtype: gather lays blocks out in stored form, scatter puts them back, across layouts.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include "strata/common/half.h"
#include "strata/gpu_agent/copy_engine.h"
#include "strata/gpu_agent/host_pool.h"

namespace strata::gpu_agent {
namespace {

using ::testing::HasSubstr;

constexpr KvLayout kLayouts[] = {KvLayout::kFlashAttn, KvLayout::kBlockFirst, KvLayout::kSplitKv,
                                 KvLayout::kCrossLayer};

KvPoolSpec Shape(KvLayout layout, KvDtype dtype) {
  KvPoolSpec s;
  s.layout = layout;
  s.layers = 3;
  s.num_blocks = 8;
  s.block_tokens = 4;
  s.kv_heads = 2;
  s.head_dim = 8;
  s.dtype = dtype;
  return s;
}

HostKvPool MakePool(KvLayout layout, KvDtype dtype, uint32_t seed) {
  absl::StatusOr<HostKvPool> p = HostKvPool::Create(Shape(layout, dtype));
  EXPECT_TRUE(p.ok()) << p.status();
  std::mt19937 rng(seed);
  for (auto [data, size] : p->Tensors()) {
    for (uint64_t i = 0; i < size; ++i) data[i] = static_cast<uint8_t>(rng());
  }
  return std::move(*p);
}

// Calls f(layer, kv, token, head, dim, offset in the stored block) for every element.
template <typename F>
void ForEachElement(const KvPoolSpec& s, F f) {
  const uint64_t e = KvDtypeBytes(s.dtype);
  uint64_t offset = 0;
  for (uint32_t l = 0; l < s.layers; ++l)
    for (uint32_t kv = 0; kv < 2; ++kv)
      for (uint32_t t = 0; t < s.block_tokens; ++t)
        for (uint32_t h = 0; h < s.kv_heads; ++h)
          for (uint32_t d = 0; d < s.head_dim; ++d, offset += e) f(l, kv, t, h, d, offset);
}

class HostCopyEngineTest : public ::testing::TestWithParam<std::tuple<KvLayout, KvDtype>> {};

TEST_P(HostCopyEngineTest, GatherIsStoredFormAndScatterRestoresAcrossLayouts) {
  const auto [layout, dtype] = GetParam();
  HostKvPool src = MakePool(layout, dtype, 1);
  auto engine = CreateHostCopyEngine(src.pool());
  ASSERT_TRUE(engine.ok()) << engine.status();
  const std::vector<uint32_t> ids = {5, 0, 7};
  const uint64_t bb = src.pool().block_bytes;
  std::vector<uint8_t> staging(ids.size() * bb);
  ASSERT_TRUE((*engine)->Gather(ids, staging.data()).ok());
  const uint64_t e = KvDtypeBytes(dtype);
  uint64_t mismatches = 0;
  for (size_t i = 0; i < ids.size(); ++i) {
    ForEachElement(src.spec(),
                   [&](uint32_t l, uint32_t kv, uint32_t t, uint32_t h, uint32_t d, uint64_t off) {
                     mismatches += std::memcmp(staging.data() + i * bb + off,
                                               src.Element(l, kv, ids[i], t, h, d), e) != 0;
                   });
  }
  EXPECT_EQ(mismatches, 0u);

  // Into a pool of every other layout, at other ids: element for element the same KV.
  for (KvLayout other : kLayouts) {
    HostKvPool dst = MakePool(other, dtype, 2);
    auto dst_engine = CreateHostCopyEngine(dst.pool());
    ASSERT_TRUE(dst_engine.ok());
    const std::vector<uint32_t> slots = {1, 2, 6};
    ASSERT_TRUE((*dst_engine)->Scatter(staging.data(), slots).ok());
    uint64_t differ = 0;
    for (size_t i = 0; i < ids.size(); ++i) {
      ForEachElement(src.spec(),
                     [&](uint32_t l, uint32_t kv, uint32_t t, uint32_t h, uint32_t d, uint64_t) {
                       differ += std::memcmp(dst.Element(l, kv, slots[i], t, h, d),
                                             src.Element(l, kv, ids[i], t, h, d), e) != 0;
                     });
    }
    EXPECT_EQ(differ, 0u) << KvLayoutName(layout) << " -> " << KvLayoutName(other);
    // Blocks not named keep their bytes.
    EXPECT_NE(std::memcmp(dst.Element(0, 0, 0, 0, 0, 0), src.Element(0, 0, 0, 0, 0, 0), e), 0);
  }
}

INSTANTIATE_TEST_SUITE_P(LayoutsAndDtypes, HostCopyEngineTest,
                         ::testing::Combine(::testing::ValuesIn(kLayouts),
                                            ::testing::Values(KvDtype::kFp16, KvDtype::kBf16,
                                                              KvDtype::kFp8)),
                         [](const auto& info) {
                           std::string name = std::string(KvLayoutName(std::get<0>(info.param))) +
                                              "_" +
                                              std::string(KvDtypeName(std::get<1>(info.param)));
                           for (char& c : name) c = c == '-' ? '_' : c;
                           return name;
                         });

// Pools whose elements are finite fp16 values (random bytes would hold NaNs).
HostKvPool FinitePool(KvLayout layout, uint32_t seed) {
  HostKvPool p = MakePool(layout, KvDtype::kFp16, seed);
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> value(-4, 4);
  for (auto [data, size] : p.Tensors()) {
    for (uint64_t i = 0; i + 1 < size; i += 2) {
      uint16_t h = FloatToHalf(value(rng));
      std::memcpy(data + i, &h, 2);
    }
  }
  return p;
}

TEST(HostCopyEngineQuantTest, FusedQuantizeIsTheReferenceCodec) {
  HostKvPool src = FinitePool(KvLayout::kFlashAttn, 3);
  auto engine = CreateHostCopyEngine(src.pool());
  ASSERT_TRUE(engine.ok());
  const std::vector<uint32_t> ids = {4, 1};
  const uint64_t bb = src.pool().block_bytes;
  for (KvQuant method : {KvQuant::kInt8, KvQuant::kFp8E4M3}) {
    const KvQuantSpec spec{method, KvDtype::kFp16, src.pool().head_dim};
    const uint64_t packed = QuantizedPayloadSize(spec, bb);
    std::vector<uint8_t> plain(ids.size() * bb);
    std::vector<uint8_t> staged(ids.size() * packed);
    ASSERT_TRUE((*engine)->Gather(ids, plain.data()).ok());
    ASSERT_TRUE((*engine)->GatherQuantized(ids, method, staged.data()).ok());
    for (size_t i = 0; i < ids.size(); ++i) {
      std::string want;
      ASSERT_TRUE(QuantizeKv(spec, {plain.data() + i * bb, bb}, &want).ok());
      EXPECT_EQ(std::memcmp(staged.data() + i * packed, want.data(), packed), 0);
    }
    // Dequantize-on-scatter restores what DequantizeKv restores.
    ASSERT_TRUE((*engine)->ScatterDequantized(staged.data(), method, {{6, 7}}).ok());
    std::vector<uint8_t> restored(bb);
    ASSERT_TRUE(DequantizeKv(spec, {staged.data(), packed}, restored).ok());
    std::vector<uint8_t> back(2 * bb);
    const std::vector<uint32_t> slots = {6, 7};
    ASSERT_TRUE((*engine)->Gather(slots, back.data()).ok());
    EXPECT_EQ(std::memcmp(back.data(), restored.data(), bb), 0);
  }
}

TEST(HostCopyEngineQuantTest, NanBlockIsNamedAndBadInputRefused) {
  HostKvPool src = FinitePool(KvLayout::kSplitKv, 4);
  auto engine = CreateHostCopyEngine(src.pool());
  ASSERT_TRUE(engine.ok());
  const uint16_t nan = 0x7e00;
  std::memcpy(src.Element(1, 1, 3, 2, 1, 5), &nan, 2);
  const uint64_t packed =
      QuantizedPayloadSize({KvQuant::kInt8, KvDtype::kFp16, 8}, src.pool().block_bytes);
  std::vector<uint8_t> staged(2 * packed);
  absl::Status s = (*engine)->GatherQuantized({{2, 3}}, KvQuant::kInt8, staged.data());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("block id 3 (entry 1)"));

  std::vector<uint8_t> plain(src.pool().block_bytes);
  absl::Status range = (*engine)->Gather({{8}}, plain.data());
  EXPECT_EQ(range.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(range.message(), HasSubstr("block id 8 (entry 0): the pool has 8"));
  EXPECT_EQ((*engine)->Scatter(nullptr, {{1}}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*engine)->GatherQuantized({{1}}, KvQuant::kNone, staged.data()).code(),
            absl::StatusCode::kInvalidArgument);
  HostKvPool fp8 = MakePool(KvLayout::kSplitKv, KvDtype::kFp8, 5);
  auto fp8_engine = CreateHostCopyEngine(fp8.pool());
  EXPECT_EQ((*fp8_engine)->GatherQuantized({{1}}, KvQuant::kInt8, staged.data()).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(HostCopyEngineTest, RefusesDevicePools) {
  KvPool device_pool;
  device_pool.device = 0;
  EXPECT_EQ(CreateHostCopyEngine(device_pool).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace strata::gpu_agent
