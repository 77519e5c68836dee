// Sealed envelopes are the only thing between peer bytes and UCX's length-less parsers, so
// every way of breaking one must be rejected with INVALID_ARGUMENT.
#include "sealed_bytes.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "strata/testutil/status_matchers.h"

namespace strata::transport {
namespace {

using ::strata::testutil::StatusIs;

TEST(SealedBytesTest, RoundTripsPayload) {
  const std::string payload("\x00\x01rkey bytes\xff", 14);
  const std::string sealed = Seal(kRkeyTag, payload.data(), payload.size());
  EXPECT_EQ(sealed.size(), payload.size() + 16);
  EXPECT_EQ(sealed.substr(0, 4), "SRK1");
  absl::StatusOr<absl::string_view> out = Unseal(kRkeyTag, sealed, "rkey");
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(*out, payload);
  absl::StatusOr<absl::string_view> empty = Unseal(kRkeyTag, Seal(kRkeyTag, "", 0), "rkey");
  ASSERT_TRUE(empty.ok());
  EXPECT_TRUE(empty->empty());
}

TEST(SealedBytesTest, RejectsEveryCorruption) {
  const std::string payload = "0123456789abcdef0123456789";
  const std::string sealed = Seal(kWorkerAddressTag, payload.data(), payload.size());
  // Every truncation.
  for (size_t n = 0; n < sealed.size(); ++n) {
    EXPECT_THAT(Unseal(kWorkerAddressTag, sealed.substr(0, n), "address"),
                StatusIs(absl::StatusCode::kInvalidArgument))
        << n;
  }
  // Every single-bit flip.
  for (size_t i = 0; i < sealed.size(); ++i) {
    for (int bit = 0; bit < 8; ++bit) {
      std::string bad = sealed;
      bad[i] ^= static_cast<char>(1 << bit);
      EXPECT_THAT(Unseal(kWorkerAddressTag, bad, "address"),
                  StatusIs(absl::StatusCode::kInvalidArgument))
          << i << ":" << bit;
    }
  }
  // Trailing bytes, and the wrong kind of envelope.
  EXPECT_THAT(Unseal(kWorkerAddressTag, sealed + "x", "address"),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(Unseal(kRkeyTag, sealed, "rkey"),
              StatusIs(absl::StatusCode::kInvalidArgument, ::testing::HasSubstr("tag")));
}

}  // namespace
}  // namespace strata::transport
