#include "strata/gpu_agent/kv_pool.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace strata::gpu_agent {
namespace {

using ::testing::HasSubstr;

void* Ptr(uint64_t a) { return reinterpret_cast<void*>(a); }

KvPoolSpec Spec(KvLayout layout, std::vector<void*> bases) {
  KvPoolSpec s;
  s.layout = layout;
  s.layer_bases = std::move(bases);
  s.layers = 2;
  s.num_blocks = 10;
  s.block_tokens = 16;
  s.kv_heads = 2;
  s.head_dim = 4;
  s.dtype = KvDtype::kFp16;  // slice: 16 × 2 × 4 × 2 = 256 bytes
  return s;
}

TEST(KvPoolTest, FlashAttnPutsVAfterAllKBlocks) {
  auto p = ResolveKvPool(Spec(KvLayout::kFlashAttn, {Ptr(1 << 20), Ptr(2 << 20)}));
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->slice_bytes, 256u);
  EXPECT_EQ(p->block_bytes, 1024u);
  EXPECT_EQ(p->block_stride, 256u);
  EXPECT_EQ(p->slice_bases,
            (std::vector<uint64_t>{1 << 20, (1 << 20) + 2560, 2 << 20, (2 << 20) + 2560}));
  EXPECT_EQ(p->end_address(), (2u << 20) + 5120);
}

TEST(KvPoolTest, BlockFirstAndCrossLayerStrides) {
  auto bf = ResolveKvPool(Spec(KvLayout::kBlockFirst, {Ptr(1 << 20), Ptr(2 << 20)}));
  ASSERT_TRUE(bf.ok()) << bf.status();
  EXPECT_EQ(bf->block_stride, 512u);
  EXPECT_EQ(bf->slice_bases[1], (1u << 20) + 256);
  auto cl = ResolveKvPool(Spec(KvLayout::kCrossLayer, {Ptr(1 << 20)}));
  ASSERT_TRUE(cl.ok()) << cl.status();
  EXPECT_EQ(cl->block_stride, 1024u);
  EXPECT_EQ(cl->slice_bases,
            (std::vector<uint64_t>{1 << 20, (1 << 20) + 256, (1 << 20) + 512, (1 << 20) + 768}));
  auto split = ResolveKvPool(
      Spec(KvLayout::kSplitKv, {Ptr(1 << 20), Ptr(2 << 20), Ptr(3 << 20), Ptr(4 << 20)}));
  ASSERT_TRUE(split.ok()) << split.status();
  EXPECT_EQ(split->slice_bases[3], 4u << 20);
  EXPECT_EQ(split->block_stride, 256u);
}

TEST(KvPoolTest, RejectsBadSpecsNamingTheField) {
  auto wrong_count = ResolveKvPool(Spec(KvLayout::kFlashAttn, {Ptr(1 << 20)}));
  EXPECT_EQ(wrong_count.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(wrong_count.status().message(), HasSubstr("layer_bases: 1 pointers"));
  auto null = ResolveKvPool(Spec(KvLayout::kFlashAttn, {Ptr(1 << 20), nullptr}));
  EXPECT_THAT(null.status().message(), HasSubstr("layer_bases[1]: null"));
  KvPoolSpec zero = Spec(KvLayout::kCrossLayer, {Ptr(1 << 20)});
  zero.head_dim = 0;
  EXPECT_THAT(ResolveKvPool(zero).status().message(), HasSubstr("head_dim"));
  // Layer tensors of 5,120 bytes starting 4 KiB apart overlap.
  auto overlap = ResolveKvPool(Spec(KvLayout::kFlashAttn, {Ptr(1 << 20), Ptr((1 << 20) + 4096)}));
  EXPECT_THAT(overlap.status().message(), HasSubstr("overlap"));
  KvPoolSpec huge = Spec(KvLayout::kCrossLayer, {Ptr(1 << 20)});
  huge.num_blocks = 1u << 31;
  huge.block_tokens = 1u << 31;
  EXPECT_THAT(ResolveKvPool(huge).status().message(), HasSubstr("overflows"));
}

TEST(KvPoolTest, LayoutNamesRoundTrip) {
  for (KvLayout l :
       {KvLayout::kFlashAttn, KvLayout::kBlockFirst, KvLayout::kSplitKv, KvLayout::kCrossLayer}) {
    auto parsed = ParseKvLayout(KvLayoutName(l));
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ(*parsed, l);
  }
  EXPECT_EQ(ParseKvLayout("nhd").status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace strata::gpu_agent
