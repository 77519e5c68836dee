#include "strata/common/codec.h"

#include <random>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "strata/testutil/status_matchers.h"

namespace strata {
namespace {

using ::strata::testutil::IsOk;
using ::strata::testutil::StatusIs;
using ::testing::AnyOf;
using ::testing::HasSubstr;

std::vector<uint8_t> RandomBytes(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<uint8_t> v(n);
  for (uint8_t& b : v) b = static_cast<uint8_t>(rng());
  return v;
}

// Text-like data: phrases from a small vocabulary with an occasional random byte.
std::vector<uint8_t> CompressibleBytes(size_t n, uint64_t seed) {
  static constexpr std::string_view kWords[] = {"key ",  "value ",  "cache ", "block ",
                                                "tier ", "prefix ", "token ", "head "};
  std::mt19937_64 rng(seed);
  std::vector<uint8_t> v;
  v.reserve(n);
  while (v.size() < n) {
    if (rng() % 16 == 0) v.push_back(static_cast<uint8_t>(rng()));
    for (char c : kWords[rng() % std::size(kWords)]) v.push_back(static_cast<uint8_t>(c));
  }
  v.resize(n);
  return v;
}

std::span<const uint8_t> Bytes(const std::string& s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

struct CodecLevel {
  Codec codec;
  int level;
};

std::string CaseName(const CodecLevel& c) {
  return absl::StrCat(std::string(CodecName(c.codec)), "_level", c.level < 0 ? "Minus" : "",
                      c.level < 0 ? -c.level : c.level);
}

class CodecRoundTripTest : public ::testing::TestWithParam<CodecLevel> {};

TEST_P(CodecRoundTripTest, BitExactOnAllSizesAndKinds) {
  const CodecLevel& c = GetParam();
  for (size_t size :
       {size_t{0}, size_t{1}, size_t{2}, size_t{100}, size_t{4096}, size_t{2} << 20}) {
    for (bool compressible : {false, true}) {
      SCOPED_TRACE(absl::StrCat(size, compressible ? " compressible" : " random"));
      const std::vector<uint8_t> in =
          compressible ? CompressibleBytes(size, size) : RandomBytes(size, size);
      absl::StatusOr<std::string> packed = Compress(c.codec, in, c.level);
      ASSERT_THAT(packed, IsOk());
      if (c.codec != Codec::kNone && compressible && size >= 4096) {
        // Even lz4's fastest acceleration shrinks this text by a third.
        EXPECT_LT(packed->size(), in.size() * 2 / 3);
      }
      std::vector<uint8_t> out(in.size(), 0xaa);
      ASSERT_THAT(Decompress(c.codec, Bytes(*packed), out), IsOk());
      EXPECT_TRUE(out == in);
    }
  }
}

TEST_P(CodecRoundTripTest, WrongOutputSizeIsDataLoss) {
  const CodecLevel& c = GetParam();
  const std::vector<uint8_t> in = CompressibleBytes(4096, 1);
  absl::StatusOr<std::string> packed = Compress(c.codec, in, c.level);
  ASSERT_THAT(packed, IsOk());
  for (size_t size : {size_t{0}, in.size() - 1, in.size() + 1, in.size() * 2}) {
    std::vector<uint8_t> out(size);
    EXPECT_THAT(Decompress(c.codec, Bytes(*packed), out), StatusIs(absl::StatusCode::kDataLoss))
        << size;
  }
}

INSTANTIATE_TEST_SUITE_P(Codecs, CodecRoundTripTest,
                         ::testing::Values(CodecLevel{Codec::kNone, 0}, CodecLevel{Codec::kLz4, 0},
                                           CodecLevel{Codec::kLz4, -8}, CodecLevel{Codec::kLz4, 9},
                                           CodecLevel{Codec::kZstd, 0}, CodecLevel{Codec::kZstd, 1},
                                           CodecLevel{Codec::kZstd, -3}),
                         [](const auto& info) { return CaseName(info.param); });

class CodecCorruptionTest : public ::testing::TestWithParam<Codec> {};

// Every byte flipped (two ways) decodes to DATA_LOSS or, where the stream format cannot tell
// (an lz4 literal byte), to other bytes of the right size; never a crash or another code.
// Under ASan this also proves the decoders stay in bounds.
TEST_P(CodecCorruptionTest, EveryFlippedByteIsDataLossOrDecodes) {
  const std::vector<uint8_t> in = CompressibleBytes(4096, 3);
  absl::StatusOr<std::string> packed = Compress(GetParam(), in);
  ASSERT_THAT(packed, IsOk());
  std::vector<uint8_t> out(in.size());
  int data_loss = 0;
  for (size_t i = 0; i < packed->size(); ++i) {
    for (uint8_t mask : {uint8_t{0x01}, uint8_t{0xff}}) {
      std::string bad = *packed;
      bad[i] = static_cast<char>(bad[i] ^ mask);
      absl::Status s = Decompress(GetParam(), Bytes(bad), out);
      ASSERT_THAT(s, AnyOf(IsOk(), StatusIs(absl::StatusCode::kDataLoss))) << i;
      data_loss += !s.ok();
    }
  }
  EXPECT_GT(data_loss, 0);
}

TEST_P(CodecCorruptionTest, EveryTruncationIsDataLoss) {
  const std::vector<uint8_t> in = CompressibleBytes(4096, 4);
  absl::StatusOr<std::string> packed = Compress(GetParam(), in);
  ASSERT_THAT(packed, IsOk());
  std::vector<uint8_t> out(in.size());
  for (size_t len = 0; len < packed->size(); ++len) {
    EXPECT_THAT(Decompress(GetParam(), Bytes(*packed).first(len), out),
                StatusIs(absl::StatusCode::kDataLoss))
        << len;
  }
}

TEST_P(CodecCorruptionTest, GarbageIsDataLoss) {
  std::mt19937_64 rng(5);
  for (int round = 0; round < 2000; ++round) {
    const std::vector<uint8_t> garbage = RandomBytes(rng() % 512, rng());
    std::vector<uint8_t> out(rng() % 8192);
    EXPECT_THAT(Decompress(GetParam(), garbage, out), StatusIs(absl::StatusCode::kDataLoss));
  }
}

TEST_P(CodecCorruptionTest, TrailingBytesAreDataLoss) {
  const std::vector<uint8_t> in = CompressibleBytes(1000, 6);
  absl::StatusOr<std::string> packed = Compress(GetParam(), in);
  ASSERT_THAT(packed, IsOk());
  std::string longer = *packed + *packed;
  std::vector<uint8_t> out(in.size());
  EXPECT_THAT(Decompress(GetParam(), Bytes(longer), out), StatusIs(absl::StatusCode::kDataLoss));
}

INSTANTIATE_TEST_SUITE_P(Codecs, CodecCorruptionTest, ::testing::Values(Codec::kLz4, Codec::kZstd),
                         [](const auto& info) { return std::string(CodecName(info.param)); });

TEST(CodecTest, RawSizeMismatchIsDataLoss) {
  const std::vector<uint8_t> in = RandomBytes(10, 1);
  std::vector<uint8_t> out(11);
  EXPECT_THAT(Decompress(Codec::kNone, in, out),
              StatusIs(absl::StatusCode::kDataLoss, HasSubstr("10 bytes, expected 11")));
}

TEST(CodecTest, LevelsOutOfRangeAreInvalidAndLeaveOutputAlone) {
  const std::vector<uint8_t> in = CompressibleBytes(100, 1);
  std::string out = "keep";
  EXPECT_THAT(CompressAppend(Codec::kLz4, in, 13, &out),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("lz4 level 13")));
  EXPECT_THAT(CompressAppend(Codec::kZstd, in, 23, &out),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("zstd level 23")));
  EXPECT_EQ(out, "keep");
  EXPECT_THAT(CompressAppend(Codec::kNone, in, 99, &out), IsOk());  // level ignored
  EXPECT_EQ(out.size(), 4 + in.size());
}

TEST(CodecTest, CompressAppendAppends) {
  const std::vector<uint8_t> in = CompressibleBytes(5000, 2);
  for (Codec codec : {Codec::kNone, Codec::kLz4, Codec::kZstd}) {
    std::string out = "prefix";
    ASSERT_THAT(CompressAppend(codec, in, 0, &out), IsOk());
    ASSERT_EQ(out.substr(0, 6), "prefix");
    std::vector<uint8_t> back(in.size());
    ASSERT_THAT(Decompress(codec, Bytes(out).subspan(6), back), IsOk());
    EXPECT_TRUE(back == in) << CodecName(codec);
  }
}

TEST(CodecTest, EncodeBlockStoresIncompressibleDataRaw) {
  for (Codec codec : {Codec::kNone, Codec::kLz4, Codec::kZstd}) {
    SCOPED_TRACE(CodecName(codec));
    for (size_t size : {size_t{0}, size_t{1}, size_t{65536}}) {
      const std::vector<uint8_t> in = RandomBytes(size, 9);
      absl::StatusOr<EncodedBlock> block = EncodeBlock(codec, in);
      ASSERT_THAT(block, IsOk());
      EXPECT_EQ(block->codec, Codec::kNone);
      EXPECT_EQ(block->bytes, std::string(in.begin(), in.end()));
    }
    const std::vector<uint8_t> text = CompressibleBytes(65536, 9);
    absl::StatusOr<EncodedBlock> block = EncodeBlock(codec, text);
    ASSERT_THAT(block, IsOk());
    EXPECT_EQ(block->codec, codec);
    std::vector<uint8_t> back(text.size());
    ASSERT_THAT(Decompress(block->codec, Bytes(block->bytes), back), IsOk());
    EXPECT_TRUE(back == text);
  }
}

TEST(CodecTest, Lz4ExpansionBoundHoldsForZeros) {
  const std::vector<uint8_t> zeros(size_t{8} << 20, 0);
  absl::StatusOr<std::string> packed = Compress(Codec::kLz4, zeros);
  ASSERT_THAT(packed, IsOk());
  EXPECT_LE(zeros.size(), MaxDecompressedSize(Codec::kLz4, packed->size()));
  EXPECT_EQ(MaxDecompressedSize(Codec::kNone, 123), 123u);
  EXPECT_EQ(MaxDecompressedSize(Codec::kZstd, 1), UINT64_MAX);
}

TEST(CodecTest, ThreadsCompressConcurrently) {
  std::vector<std::thread> threads;
  std::vector<int> ok(4, 0);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([t, &ok] {
      for (int i = 0; i < 20; ++i) {
        const std::vector<uint8_t> in = CompressibleBytes(20000, t * 100 + i);
        for (Codec codec : {Codec::kLz4, Codec::kZstd}) {
          absl::StatusOr<std::string> packed = Compress(codec, in, 3);
          std::vector<uint8_t> out(in.size());
          if (packed.ok() && Decompress(codec, Bytes(*packed), out).ok() && out == in) ++ok[t];
        }
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_THAT(ok, ::testing::Each(40));
}

TEST(CodecTest, ParseAndName) {
  EXPECT_EQ(*ParseCodec("none"), Codec::kNone);
  EXPECT_EQ(*ParseCodec("LZ4"), Codec::kLz4);
  EXPECT_EQ(*ParseCodec("zstd"), Codec::kZstd);
  EXPECT_THAT(ParseCodec("snappy"), StatusIs(absl::StatusCode::kInvalidArgument,
                                             HasSubstr("'snappy' (accepted: none, lz4, zstd)")));
  for (Codec c : {Codec::kNone, Codec::kLz4, Codec::kZstd}) {
    EXPECT_EQ(*ParseCodec(CodecName(c)), c);
    EXPECT_TRUE(IsKnownCodec(static_cast<uint8_t>(c)));
  }
  EXPECT_FALSE(IsKnownCodec(3));
  EXPECT_FALSE(IsKnownCodec(255));
}

}  // namespace
}  // namespace strata
