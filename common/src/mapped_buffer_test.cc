#include "strata/common/mapped_buffer.h"

#include <cstdint>
#include <utility>

#include "gtest/gtest.h"

namespace strata {
namespace {

TEST(MappedBufferTest, IsZeroedAlignedAndWritable) {
  for (bool prefault : {false, true}) {
    absl::StatusOr<MappedBuffer> b = MappedBuffer::Map(3 << 20, prefault);
    ASSERT_TRUE(b.ok()) << b.status();
    EXPECT_EQ(b->size(), uint64_t{3} << 20);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(b->data()) % (2 << 20), 0u);
    EXPECT_EQ(b->data()[0], 0);
    EXPECT_EQ(b->data()[b->size() - 1], 0);
    b->data()[b->size() - 1] = 7;
    EXPECT_EQ(b->data()[b->size() - 1], 7);
  }
}

TEST(MappedBufferTest, MovesOwnership) {
  absl::StatusOr<MappedBuffer> a = MappedBuffer::Map(4096, false);
  ASSERT_TRUE(a.ok());
  uint8_t* data = a->data();
  MappedBuffer b = *std::move(a);
  EXPECT_EQ(b.data(), data);
  EXPECT_TRUE(a->empty());
  EXPECT_EQ(a->data(), nullptr);
  b = MappedBuffer();
  EXPECT_TRUE(b.empty());
}

TEST(MappedBufferTest, RejectsSizesItCannotMap) {
  EXPECT_EQ(MappedBuffer::Map(0, false).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MappedBuffer::Map(uint64_t{1} << 50, false).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace strata
