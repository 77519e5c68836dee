#include "strata/common/kv_shape.h"

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "strata/testutil/status_matchers.h"

namespace strata {
namespace {

using ::strata::testutil::IsOk;
using ::strata::testutil::StatusIs;
using ::testing::HasSubstr;

struct Expected {
  std::string name;
  uint32_t layers;
  uint32_t kv_heads;
  uint32_t head_dim;
  uint32_t mla_latent_dim;
  uint64_t fp16_bytes_per_token;  // worked out by hand, not with the formula under test
};

const std::vector<Expected>& ExpectedPresets() {
  static const auto* kExpected = new std::vector<Expected>{
      {"llama-2-7b", 32, 32, 128, 0, 524288},   {"llama-2-13b", 40, 40, 128, 0, 819200},
      {"llama-2-70b", 80, 8, 128, 0, 327680},   {"llama-3.1-8b", 32, 8, 128, 0, 131072},
      {"llama-3.1-70b", 80, 8, 128, 0, 327680}, {"llama-3.1-405b", 126, 8, 128, 0, 516096},
      {"llama-3.2-1b", 16, 8, 64, 0, 32768},    {"llama-3.2-3b", 28, 8, 128, 0, 114688},
      {"mistral-7b", 32, 8, 128, 0, 131072},    {"mixtral-8x7b", 32, 8, 128, 0, 131072},
      {"mixtral-8x22b", 56, 8, 128, 0, 229376}, {"qwen2.5-7b", 28, 4, 128, 0, 57344},
      {"qwen2.5-14b", 48, 8, 128, 0, 196608},   {"qwen2.5-32b", 64, 8, 128, 0, 262144},
      {"qwen2.5-72b", 80, 8, 128, 0, 327680},   {"deepseek-v2", 60, 0, 0, 576, 69120},
      {"deepseek-v3", 61, 0, 0, 576, 70272},
  };
  return *kExpected;
}

TEST(KvShapeTest, PresetsHaveThePublishedGeometry) {
  for (const Expected& e : ExpectedPresets()) {
    SCOPED_TRACE(e.name);
    absl::StatusOr<KvShape> shape = KvShapeForModel(e.name, KvDtype::kFp16);
    ASSERT_THAT(shape, IsOk());
    EXPECT_EQ(shape->model, e.name);
    EXPECT_EQ(shape->layers, e.layers);
    EXPECT_EQ(shape->kv_heads, e.kv_heads);
    EXPECT_EQ(shape->head_dim, e.head_dim);
    EXPECT_EQ(shape->mla, e.mla_latent_dim != 0);
    EXPECT_EQ(shape->mla_latent_dim, e.mla_latent_dim);
    EXPECT_EQ(shape->dtype, KvDtype::kFp16);
  }
}

TEST(KvShapeTest, BytesPerTokenForEveryPresetAndDtype) {
  for (const Expected& e : ExpectedPresets()) {
    SCOPED_TRACE(e.name);
    EXPECT_EQ(KvBytesPerToken(*KvShapeForModel(e.name, KvDtype::kFp16)), e.fp16_bytes_per_token);
    EXPECT_EQ(KvBytesPerToken(*KvShapeForModel(e.name, KvDtype::kBf16)), e.fp16_bytes_per_token);
    EXPECT_EQ(KvBytesPerToken(*KvShapeForModel(e.name, KvDtype::kFp8)), e.fp16_bytes_per_token / 2);
    EXPECT_EQ(KvBytesPerToken(*KvShapeForModel(e.name, KvDtype::kInt8)),
              e.fp16_bytes_per_token / 2);
  }
}

TEST(KvShapeTest, Llama31_8bIs128KiBPerTokenInFp16) {
  EXPECT_EQ(KvBytesPerToken(*KvShapeForModel("llama-3.1-8b", KvDtype::kFp16)), 131072u);
}

TEST(KvShapeTest, DeepSeekV3UsesTheLatentWithoutFactorTwo) {
  // 61 layers × (512 + 64) × 2 bytes; a GQA formula would have doubled it.
  EXPECT_EQ(KvBytesPerToken(*KvShapeForModel("deepseek-v3", KvDtype::kBf16)), 61u * 576 * 2);
}

TEST(KvShapeTest, KnownPresetsListsExactlyTheTable) {
  std::vector<std::string> want;
  for (const Expected& e : ExpectedPresets()) want.push_back(e.name);
  EXPECT_THAT(KnownModelPresets(), ::testing::UnorderedElementsAreArray(want));
}

TEST(KvShapeTest, NamesAreCaseInsensitiveAndCanonicalised) {
  absl::StatusOr<KvShape> shape = KvShapeForModel("Llama-3.1-8B", KvDtype::kFp8);
  ASSERT_THAT(shape, IsOk());
  EXPECT_EQ(shape->model, "llama-3.1-8b");
  EXPECT_EQ(shape->dtype, KvDtype::kFp8);
  EXPECT_EQ(KvBytesPerToken(*shape), 65536u);
  EXPECT_THAT(KvShapeForModel("DEEPSEEK-V3", KvDtype::kFp16), IsOk());
  EXPECT_THAT(KvShapeForModel("QWEN2.5-7B", KvDtype::kFp16), IsOk());
}

TEST(KvShapeTest, UnknownModelIsNotFoundListingKnownNames) {
  absl::StatusOr<KvShape> shape = KvShapeForModel("gpt-5", KvDtype::kFp16);
  EXPECT_THAT(shape, StatusIs(absl::StatusCode::kNotFound, HasSubstr("gpt-5")));
  EXPECT_THAT(shape, StatusIs(absl::StatusCode::kNotFound, HasSubstr("llama-3.1-8b")));
  EXPECT_THAT(shape, StatusIs(absl::StatusCode::kNotFound, HasSubstr("deepseek-v3")));
  // A near miss is still a miss: no prefix or fuzzy matching.
  EXPECT_THAT(KvShapeForModel("llama-3.1", KvDtype::kFp16), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(KvShapeForModel("", KvDtype::kFp16), StatusIs(absl::StatusCode::kNotFound));
}

TEST(KvShapeTest, ParsesDtypes) {
  EXPECT_EQ(*ParseKvDtype("fp16"), KvDtype::kFp16);
  EXPECT_EQ(*ParseKvDtype("bf16"), KvDtype::kBf16);
  EXPECT_EQ(*ParseKvDtype("fp8"), KvDtype::kFp8);
  EXPECT_EQ(*ParseKvDtype("int8"), KvDtype::kInt8);
  EXPECT_EQ(*ParseKvDtype("BF16"), KvDtype::kBf16);
}

TEST(KvShapeTest, DtypeNamesAndSizes) {
  EXPECT_EQ(KvDtypeName(KvDtype::kFp16), "fp16");
  EXPECT_EQ(KvDtypeName(KvDtype::kBf16), "bf16");
  EXPECT_EQ(KvDtypeName(KvDtype::kFp8), "fp8");
  EXPECT_EQ(KvDtypeName(KvDtype::kInt8), "int8");
  EXPECT_EQ(KvDtypeBytes(KvDtype::kFp16), 2u);
  EXPECT_EQ(KvDtypeBytes(KvDtype::kBf16), 2u);
  EXPECT_EQ(KvDtypeBytes(KvDtype::kFp8), 1u);
  EXPECT_EQ(KvDtypeBytes(KvDtype::kInt8), 1u);
}

TEST(KvShapeTest, UnknownDtypeIsInvalidArgumentListingAcceptedValues) {
  absl::StatusOr<KvDtype> dtype = ParseKvDtype("fp32");
  EXPECT_THAT(dtype, StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("fp32")));
  EXPECT_THAT(dtype,
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("fp16, bf16, fp8, int8")));
  EXPECT_THAT(ParseKvDtype(""), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(KvShapeTest, CustomShapes) {
  KvShape gqa;
  gqa.model = "custom";
  gqa.layers = 10;
  gqa.kv_heads = 3;
  gqa.head_dim = 96;
  gqa.dtype = KvDtype::kInt8;
  EXPECT_EQ(KvBytesPerToken(gqa), 5760u);  // 2 × 10 × 3 × 96 × 1

  KvShape mla;
  mla.layers = 4;
  mla.mla = true;
  mla.mla_latent_dim = 100;
  mla.kv_heads = 99;  // ignored for MLA
  mla.head_dim = 99;
  EXPECT_EQ(KvBytesPerToken(mla), 800u);  // 4 × 100 × 2

  // The largest dimensions the header promises not to overflow.
  KvShape big;
  big.layers = 1 << 16;
  big.kv_heads = 1 << 16;
  big.head_dim = 1 << 16;
  EXPECT_EQ(KvBytesPerToken(big), uint64_t{1} << 50);
}

}  // namespace
}  // namespace strata
