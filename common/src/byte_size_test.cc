#include "strata/common/byte_size.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "strata/testutil/status_matchers.h"

namespace strata {
namespace {

using ::strata::testutil::StatusIs;
using ::testing::HasSubstr;

TEST(ByteSizeTest, ParsesIecSiAndBareNumbers) {
  EXPECT_EQ(*ParseByteSize("4096"), 4096u);
  EXPECT_EQ(*ParseByteSize("64KiB"), 65536u);
  EXPECT_EQ(*ParseByteSize("1GiB"), 1073741824u);
  EXPECT_EQ(*ParseByteSize("80GiB"), 80ull << 30);
  EXPECT_EQ(*ParseByteSize("1.5 MiB"), 1572864u);
  EXPECT_EQ(*ParseByteSize("2GB"), 2000000000u);
  EXPECT_EQ(*ParseByteSize("3mib"), 3u << 20);
}

TEST(ByteSizeTest, ParsesKubernetesQuantities) {
  EXPECT_EQ(*ParseByteSize("4Gi"), 4ull << 30);
  EXPECT_EQ(*ParseByteSize("512Mi"), 512ull << 20);
  EXPECT_EQ(*ParseByteSize("64Ki"), 64ull << 10);
  EXPECT_EQ(*ParseByteSize("1Ti"), 1ull << 40);
  EXPECT_THAT(ParseByteSize("4Gx", "warm_bytes"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("Gi")));
}

TEST(ByteSizeTest, RejectsGarbageNamingTheField) {
  EXPECT_THAT(ParseByteSize("GiB", "warm_bytes"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("warm_bytes")));
  EXPECT_THAT(ParseByteSize("12 parsecs"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("unknown unit")));
  EXPECT_THAT(ParseByteSize("-1"), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(ParseByteSize("99999999TiB"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("overflow")));
  EXPECT_THAT(ParseByteSize("18446744073709551616"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("overflow")));
  EXPECT_THAT(ParseByteSize("16777216TiB"),  // 2^64
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("overflow")));
  EXPECT_THAT(ParseByteSize("16777216.0TiB"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("overflow")));
}

// Sizes past 2^53 and up to 2^64 - 1 parse to the number written. Before, whole numbers went
// through a double (9007199254740993 read as ...992), 1e19 (it fits) was refused as an
// overflow, and 10000000TiB (1.1e19) came back as 2^63 from llround's overflow.
TEST(ByteSizeTest, LargeSizesParseExactly) {
  EXPECT_EQ(*ParseByteSize("9007199254740993"), 9007199254740993u);
  EXPECT_EQ(*ParseByteSize("18446744073709551615"), UINT64_MAX);
  EXPECT_EQ(*ParseByteSize("10000000000000000000"), 10000000000000000000u);
  EXPECT_EQ(*ParseByteSize("10000000TiB"), 10000000ull << 40);
  EXPECT_EQ(*ParseByteSize("16777215TiB"), 16777215ull << 40);
  EXPECT_EQ(*ParseByteSize("0.5KiB"), 512u);
}

TEST(ByteSizeTest, Formats) {
  EXPECT_EQ(FormatByteSize(512), "512 B");
  EXPECT_EQ(FormatByteSize(2 << 20), "2.00 MiB");
  EXPECT_EQ(FormatByteSize(131072), "128.00 KiB");
}

}  // namespace
}  // namespace strata
