#include "strata/common/block_key.h"

#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/hash/hash_testing.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "strata/testutil/status_matchers.h"

namespace strata {
namespace {

using ::strata::testutil::IsOk;
using ::strata::testutil::StatusIs;
using ::testing::AllOf;
using ::testing::HasSubstr;

ChainHash Counting(uint8_t first) {
  ChainHash h;
  for (size_t i = 0; i < kChainHashBytes; ++i) h.bytes[i] = static_cast<uint8_t>(first + i);
  return h;
}

TEST(ChainHashEncodingTest, HexRoundTrip) {
  ChainHash h = Counting(0xe0);
  const std::string hex = "e0e1e2e3e4e5e6e7e8e9eaebecedeeeff0f1f2f3f4f5f6f7f8f9fafbfcfdfeff";
  EXPECT_EQ(h.ToHex(), hex);
  absl::StatusOr<ChainHash> back = ChainHash::FromHex(hex);
  ASSERT_THAT(back, IsOk());
  EXPECT_EQ(*back, h);
  // Upper-case input is accepted; output is always lower-case.
  absl::StatusOr<ChainHash> upper =
      ChainHash::FromHex("E0E1E2E3E4E5E6E7E8E9EAEBECEDEEEFF0F1F2F3F4F5F6F7F8F9FAFBFCFDFEFF");
  ASSERT_THAT(upper, IsOk());
  EXPECT_EQ(*upper, h);
}

TEST(ChainHashEncodingTest, FromHexRejectsBadInput) {
  EXPECT_THAT(ChainHash::FromHex(std::string(62, 'a')),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("62 characters")));
  EXPECT_THAT(ChainHash::FromHex(std::string(66, 'a')),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("want 64")));
  EXPECT_THAT(ChainHash::FromHex(std::string(63, 'a') + "g"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("not a hex digit")));
  EXPECT_THAT(ChainHash::FromHex(""), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(ChainHashEncodingTest, FromBytesCopiesExactly32Bytes) {
  ChainHash h = Counting(7);
  absl::StatusOr<ChainHash> back = ChainHash::FromBytes(h.AsStringView(), "req.hash");
  ASSERT_THAT(back, IsOk());
  EXPECT_EQ(*back, h);
  EXPECT_EQ(back->AsStringView(), h.AsStringView());
}

TEST(ChainHashEncodingTest, FromBytesWrongLengthNamesTheField) {
  std::string raw(kChainHashBytes, 'x');
  EXPECT_THAT(ChainHash::FromBytes(raw.substr(0, 31), "lookup.keys[3].hash"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("lookup.keys[3].hash"), HasSubstr("31 bytes"))));
  EXPECT_THAT(ChainHash::FromBytes(raw + "y", "put.hash"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("put.hash"), HasSubstr("33 bytes"))));
  EXPECT_THAT(ChainHash::FromBytes("", "put.hash"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("0 bytes")));
}

TEST(ValidateScopeTest, AcceptsWellFormedNames) {
  for (std::string_view scope :
       {kSharedScope, kDefaultScope, std::string_view("tenant-a_1.prod"), std::string_view("0")}) {
    EXPECT_THAT(ValidateScope(scope, "scope"), IsOk()) << scope;
  }
  EXPECT_THAT(ValidateScope(std::string(64, 'a'), "scope"), IsOk());
}

TEST(ValidateScopeTest, RejectsBadNamesNamingTheField) {
  EXPECT_THAT(ValidateScope("", "req.scope"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("req.scope"), HasSubstr("0 characters"))));
  EXPECT_THAT(ValidateScope(std::string(65, 'a'), "req.scope"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("req.scope"), HasSubstr("65 characters"))));
  for (const char* bad : {"Tenant", "a/b", "a b", "a:b", "caf\xc3\xa9"}) {
    EXPECT_THAT(ValidateScope(bad, "req.scope"),
                StatusIs(absl::StatusCode::kInvalidArgument,
                         AllOf(HasSubstr("req.scope"), HasSubstr("not in [a-z0-9_.-]"))))
        << bad;
  }
}

TEST(BlockKeyTest, UsableAsFlatHashMapKey) {
  absl::flat_hash_map<BlockKey, int> map;
  const BlockKey base{.namespace_id = 42, .scope = "shared", .hash = Counting(0)};
  BlockKey other_ns = base;
  other_ns.namespace_id = 43;
  BlockKey other_scope = base;
  other_scope.scope = "tenant-a";
  BlockKey other_hash = base;
  other_hash.hash.bytes[31] ^= 1;  // differs after the 8 bytes AbslHashValue mixes
  map[base] = 1;
  map[other_ns] = 2;
  map[other_scope] = 3;
  map[other_hash] = 4;
  EXPECT_EQ(map.size(), 4u);

  BlockKey copy{.namespace_id = 42, .scope = std::string("shared"), .hash = Counting(0)};
  EXPECT_EQ(map[copy], 1);
  EXPECT_EQ(map.size(), 4u);
  EXPECT_EQ(map.at(other_hash), 4);
  EXPECT_FALSE(map.contains(BlockKey{.namespace_id = 42, .scope = "default", .hash = base.hash}));
}

TEST(BlockKeyTest, HashIsConsistentWithEquality) {
  EXPECT_TRUE(absl::VerifyTypeImplementsAbslHashCorrectly({
      BlockKey{.namespace_id = 1, .scope = "shared", .hash = Counting(0)},
      BlockKey{.namespace_id = 2, .scope = "shared", .hash = Counting(0)},
      BlockKey{.namespace_id = 1, .scope = "tenant", .hash = Counting(0)},
      BlockKey{.namespace_id = 1, .scope = "shared", .hash = Counting(1)},
  }));
}

}  // namespace
}  // namespace strata
