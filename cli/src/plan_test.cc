#include <cstdint>
#include <string>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "plan_lib.h"
#include "strata/common/kv_shape.h"
#include "strata/testutil/status_matchers.h"

namespace strata::cli {
namespace {

using ::strata::testutil::IsOk;
using ::strata::testutil::StatusIs;
using ::testing::HasSubstr;
using ::testing::Not;

constexpr uint64_t kGiB = uint64_t{1} << 30;

PlanFlags ModelFlags(std::string model, int64_t context) {
  PlanFlags flags;
  flags.model = std::move(model);
  flags.context = context;
  return flags;
}

// Runs the flags through the same two steps as `strata plan`.
absl::StatusOr<Plan> PlanFor(const PlanFlags& flags) {
  absl::StatusOr<PlanInput> input = PlanInputFromFlags(flags);
  if (!input.ok()) return input.status();
  return ComputePlan(*input);
}

TEST(PlanTest, Llama31_8bFp16Is128KiBPerTokenAndOneGiBPer8kSequence) {
  PlanFlags flags = ModelFlags("llama-3.1-8b", 8192);
  flags.concurrency = 16;
  flags.memory = "80GiB";
  absl::StatusOr<Plan> plan = PlanFor(flags);
  ASSERT_THAT(plan, IsOk());
  EXPECT_EQ(plan->kv_bytes_per_token, 131072u);
  EXPECT_EQ(plan->kv_bytes_per_sequence, kGiB);
  EXPECT_EQ(plan->kv_bytes_total, 16 * kGiB);
  EXPECT_EQ(plan->input.memory_bytes, 80 * kGiB);
  EXPECT_EQ(plan->sequences_fit, 80u);
  EXPECT_EQ(plan->kv_bytes_per_block, std::nullopt);
}

TEST(PlanTest, SequencesFitRoundsDown) {
  PlanFlags flags = ModelFlags("llama-3.1-8b", 8192);
  flags.memory = absl::StrCat(80 * kGiB - 1);  // one byte short of 80 sequences
  EXPECT_EQ(PlanFor(flags)->sequences_fit, 79u);
}

TEST(PlanTest, NoMemoryMeansNoFitCount) {
  absl::StatusOr<Plan> plan = PlanFor(ModelFlags("llama-3.1-8b", 8192));
  ASSERT_THAT(plan, IsOk());
  EXPECT_EQ(plan->input.concurrency, 1);
  EXPECT_EQ(plan->kv_bytes_total, kGiB);
  EXPECT_EQ(plan->sequences_fit, std::nullopt);
}

TEST(PlanTest, DtypeScalesBytes) {
  PlanFlags flags = ModelFlags("LLAMA-3.1-8B", 8192);
  flags.dtype = "fp8";
  absl::StatusOr<Plan> plan = PlanFor(flags);
  ASSERT_THAT(plan, IsOk());
  EXPECT_EQ(plan->input.shape.model, "llama-3.1-8b");
  EXPECT_EQ(plan->kv_bytes_per_token, 65536u);
  EXPECT_EQ(plan->kv_bytes_per_sequence, kGiB / 2);
}

TEST(PlanTest, BlockSizeAndBlocksPerSequence) {
  PlanFlags flags = ModelFlags("llama-3.1-8b", 8192);
  flags.block_tokens = 16;
  absl::StatusOr<Plan> plan = PlanFor(flags);
  ASSERT_THAT(plan, IsOk());
  EXPECT_EQ(plan->kv_bytes_per_block, 2u << 20);
  EXPECT_EQ(plan->blocks_per_sequence, 512u);

  flags.context = 100;  // a partial last block still takes a whole block
  EXPECT_EQ(PlanFor(flags)->blocks_per_sequence, 7u);
}

TEST(PlanTest, DeepSeekV3MlaNumbers) {
  PlanFlags flags = ModelFlags("deepseek-v3", 8192);
  flags.memory = "80GiB";
  absl::StatusOr<Plan> plan = PlanFor(flags);
  ASSERT_THAT(plan, IsOk());
  EXPECT_TRUE(plan->input.shape.mla);
  EXPECT_EQ(plan->kv_bytes_per_token, 70272u);  // 61 × 576 × 2
  EXPECT_EQ(plan->kv_bytes_per_sequence, 575668224u);
  EXPECT_EQ(plan->sequences_fit, 149u);  // floor(85899345920 / 575668224)
}

TEST(PlanTest, CustomGqaShape) {
  PlanFlags flags;
  flags.layers = 10;
  flags.kv_heads = 3;
  flags.head_dim = 96;
  flags.dtype = "int8";
  flags.context = 1000;
  flags.concurrency = 3;
  absl::StatusOr<Plan> plan = PlanFor(flags);
  ASSERT_THAT(plan, IsOk());
  EXPECT_EQ(plan->input.shape.model, "custom");
  EXPECT_FALSE(plan->input.shape.mla);
  EXPECT_EQ(plan->kv_bytes_per_token, 5760u);  // 2 × 10 × 3 × 96 × 1
  EXPECT_EQ(plan->kv_bytes_per_sequence, 5760000u);
  EXPECT_EQ(plan->kv_bytes_total, 17280000u);
}

TEST(PlanTest, CustomMlaShape) {
  PlanFlags flags;
  flags.layers = 61;
  flags.mla_latent_dim = 576;
  flags.context = 1;
  absl::StatusOr<Plan> plan = PlanFor(flags);
  ASSERT_THAT(plan, IsOk());
  EXPECT_TRUE(plan->input.shape.mla);
  EXPECT_EQ(plan->kv_bytes_per_token, 70272u);
}

TEST(PlanTest, JsonHasExactlyTheDocumentedFields) {
  PlanFlags flags = ModelFlags("llama-3.1-8b", 8192);
  flags.concurrency = 16;
  flags.memory = "80GiB";
  flags.block_tokens = 16;  // text only: must not add a JSON field
  EXPECT_EQ(RenderPlanJson(*PlanFor(flags)),
            "{\n"
            "  \"model\": \"llama-3.1-8b\",\n"
            "  \"layers\": 32,\n"
            "  \"kv_heads\": 8,\n"
            "  \"head_dim\": 128,\n"
            "  \"dtype\": \"fp16\",\n"
            "  \"context\": 8192,\n"
            "  \"concurrency\": 16,\n"
            "  \"kv_bytes_per_token\": 131072,\n"
            "  \"kv_bytes_per_sequence\": 1073741824,\n"
            "  \"kv_bytes_total\": 17179869184,\n"
            "  \"memory_bytes\": 85899345920,\n"
            "  \"sequences_fit\": 80\n"
            "}\n");
}

TEST(PlanTest, JsonNullsWithoutMemoryAndForMla) {
  const std::string json = RenderPlanJson(*PlanFor(ModelFlags("deepseek-v3", 4096)));
  EXPECT_THAT(json, HasSubstr("\"model\": \"deepseek-v3\",\n"));
  EXPECT_THAT(json, HasSubstr("\"layers\": 61,\n"));
  EXPECT_THAT(json, HasSubstr("\"kv_heads\": null,\n"));
  EXPECT_THAT(json, HasSubstr("\"head_dim\": null,\n"));
  EXPECT_THAT(json, HasSubstr("\"kv_bytes_per_token\": 70272,\n"));
  EXPECT_THAT(json, HasSubstr("\"kv_bytes_per_sequence\": 287834112,\n"));
  EXPECT_THAT(json, HasSubstr("\"memory_bytes\": null,\n"));
  EXPECT_THAT(json, HasSubstr("\"sequences_fit\": null\n"));
}

TEST(PlanTest, TextReportsSizesAndFit) {
  PlanFlags flags = ModelFlags("llama-3.1-8b", 8192);
  flags.concurrency = 16;
  flags.memory = "80GiB";
  flags.block_tokens = 16;
  const std::string text = RenderPlanText(*PlanFor(flags));
  EXPECT_THAT(text, HasSubstr("llama-3.1-8b: 32 layers, 8 KV heads, head_dim 128, fp16\n"));
  EXPECT_THAT(text, HasSubstr("128.00 KiB (131072 bytes)\n"));
  EXPECT_THAT(text, HasSubstr("1.00 GiB (1073741824 bytes) for 8192 tokens\n"));
  EXPECT_THAT(text, HasSubstr("16.00 GiB (17179869184 bytes) for 16 sequences\n"));
  EXPECT_THAT(text, HasSubstr("2.00 MiB (2097152 bytes) for 16 tokens; 512 blocks per sequence"));
  EXPECT_THAT(text, HasSubstr("holds 80 sequences of 8192 tokens; 16 requested fit\n"));

  flags.concurrency = 100;
  EXPECT_THAT(RenderPlanText(*PlanFor(flags)),
              HasSubstr("100 requested do not fit, short by 20.00 GiB\n"));
}

TEST(PlanTest, TextForMla) {
  PlanFlags flags = ModelFlags("deepseek-v3", 1);
  flags.dtype = "bf16";
  const std::string text = RenderPlanText(*PlanFor(flags));
  EXPECT_THAT(text, HasSubstr("deepseek-v3: 61 layers, MLA latent 576, bf16\n"));
  EXPECT_THAT(text, HasSubstr("for 1 sequence\n"));
  EXPECT_THAT(text, Not(HasSubstr("KV heads")));
}

TEST(PlanTest, CountsMustBePositive) {
  PlanFlags flags = ModelFlags("llama-3.1-8b", 0);
  EXPECT_THAT(PlanFor(flags), StatusIs(absl::StatusCode::kInvalidArgument,
                                       HasSubstr("--context must be at least 1, got 0")));
  flags.context = -5;
  EXPECT_THAT(PlanFor(flags), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("--context")));
  flags.context = 8192;
  flags.concurrency = 0;
  EXPECT_THAT(PlanFor(flags),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("--concurrency")));
  flags.concurrency = 1;
  flags.block_tokens = 0;
  EXPECT_THAT(PlanFor(flags),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("--block-tokens")));
  flags.block_tokens = std::nullopt;
  flags.memory = "0";
  EXPECT_THAT(PlanFor(flags), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("--memory")));
}

TEST(PlanTest, MissingContextAndBadMemoryNameTheFlag) {
  PlanFlags flags;
  flags.model = "llama-3.1-8b";
  EXPECT_THAT(PlanFor(flags),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("--context is required")));
  flags.context = 8192;
  flags.memory = "80 parsecs";
  EXPECT_THAT(PlanFor(flags), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("--memory")));
}

TEST(PlanTest, UnknownModelAndDtype) {
  EXPECT_THAT(PlanFor(ModelFlags("gpt-5", 8192)),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("llama-3.1-8b")));
  PlanFlags flags = ModelFlags("llama-3.1-8b", 8192);
  flags.dtype = "fp32";
  EXPECT_THAT(PlanFor(flags),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("fp16, bf16, fp8, int8")));
}

TEST(PlanTest, ShapeFlagCombinations) {
  PlanFlags neither;
  neither.context = 8192;
  EXPECT_THAT(PlanFor(neither), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("--model")));

  PlanFlags both = ModelFlags("llama-3.1-8b", 8192);
  both.layers = 32;
  EXPECT_THAT(PlanFor(both), StatusIs(absl::StatusCode::kInvalidArgument,
                                      HasSubstr("--model cannot be combined")));

  PlanFlags no_layers;
  no_layers.kv_heads = 8;
  no_layers.head_dim = 128;
  no_layers.context = 1;
  EXPECT_THAT(PlanFor(no_layers),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("--layers is required")));

  PlanFlags no_heads;
  no_heads.layers = 32;
  no_heads.head_dim = 128;
  no_heads.context = 1;
  EXPECT_THAT(PlanFor(no_heads),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("--kv-heads is required")));

  PlanFlags no_dim;
  no_dim.layers = 32;
  no_dim.kv_heads = 8;
  no_dim.context = 1;
  EXPECT_THAT(PlanFor(no_dim),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("--head-dim is required")));

  PlanFlags mla_and_heads;
  mla_and_heads.layers = 61;
  mla_and_heads.mla_latent_dim = 576;
  mla_and_heads.kv_heads = 8;
  mla_and_heads.context = 1;
  EXPECT_THAT(PlanFor(mla_and_heads),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("--mla-latent-dim")));
}

TEST(PlanTest, DimensionsOutOfRangeNameTheFlag) {
  PlanFlags flags;
  flags.layers = 0;
  flags.kv_heads = 8;
  flags.head_dim = 128;
  flags.context = 1;
  EXPECT_THAT(PlanFor(flags), StatusIs(absl::StatusCode::kInvalidArgument,
                                       HasSubstr("--layers must be between 1 and 65536, got 0")));
  flags.layers = 32;
  flags.kv_heads = kMaxShapeDim + 1;
  EXPECT_THAT(PlanFor(flags),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("--kv-heads")));
  flags.kv_heads = 8;
  flags.head_dim = -1;
  EXPECT_THAT(PlanFor(flags),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("--head-dim")));

  // ComputePlan checks shapes built in code too, not only those from flags.
  PlanInput input;
  input.shape.mla = true;
  input.shape.layers = 4;
  input.context_tokens = 1;
  EXPECT_THAT(ComputePlan(input),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("--mla-latent-dim")));
}

TEST(PlanTest, OverflowIsInvalidArgument) {
  // 2^17 bytes per token: 2^46 tokens is 2^63 bytes, 2^47 tokens would wrap.
  PlanFlags flags = ModelFlags("llama-3.1-8b", int64_t{1} << 47);
  EXPECT_THAT(PlanFor(flags), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("--context")));
  flags.context = int64_t{1} << 46;
  ASSERT_THAT(PlanFor(flags), IsOk());
  EXPECT_EQ(PlanFor(flags)->kv_bytes_per_sequence, uint64_t{1} << 63);
  flags.concurrency = 2;
  EXPECT_THAT(PlanFor(flags),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("--concurrency")));
}

}  // namespace
}  // namespace strata::cli
