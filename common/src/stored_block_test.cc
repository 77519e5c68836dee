#include "strata/common/stored_block.h"

#include <cstring>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "strata/common/checksum.h"
#include "strata/common/half.h"
#include "strata/testutil/status_matchers.h"

namespace strata {
namespace {

using ::strata::testutil::IsOk;
using ::strata::testutil::StatusIs;
using ::testing::AnyOf;
using ::testing::HasSubstr;

constexpr auto kDataLoss = absl::StatusCode::kDataLoss;

std::span<const uint8_t> Bytes(const std::string& s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

std::vector<uint8_t> RandomBytes(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<uint8_t> v(n);
  for (uint8_t& b : v) b = static_cast<uint8_t>(rng());
  return v;
}

// fp16 N(0, 1) values: what a KV block looks like to a codec (compresses a little).
std::vector<uint8_t> Fp16Kv(size_t elements, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal;
  std::vector<uint8_t> v(elements * 2);
  for (size_t i = 0; i < elements; ++i) {
    const uint16_t h = FloatToHalf(normal(rng));
    std::memcpy(&v[2 * i], &h, 2);
  }
  return v;
}

// A block that compresses well: a run of small counters.
std::vector<uint8_t> Compressible(size_t n) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<uint8_t>((i / 64) % 7);
  return v;
}

template <typename T>
void Poke(std::string* value, size_t offset, T v) {
  for (size_t i = 0; i < sizeof(T); ++i) (*value)[offset + i] = static_cast<char>(v >> (8 * i));
}

// Recomputes the header checksum after a test edits header fields, so the edit reaches the
// field checks behind it.
void Reseal(std::string* value) {
  Poke<uint32_t>(value, 60, static_cast<uint32_t>(BlockChecksum(value->data(), 60)));
}

// Recomputes stored_checksum (and then the header checksum) after a test edits stored bytes,
// so the edit reaches the decoder and the payload checksum behind it.
void ResealStored(std::string* value) {
  Poke<uint64_t>(value, 48, BlockChecksum(value->data() + 64, value->size() - 64));
  Reseal(value);
}

TEST(StoredBlockTest, HeaderBytesAreTheDocumentedLayout) {
  StoredBlockHeader h;
  h.codec = Codec::kZstd;
  h.quant = {KvQuant::kFp8E4M3, KvDtype::kBf16, 128};
  h.layout_id = 0x0a0b0c0d;
  h.original_size = 0x0102030405060708;
  h.checksum = 0x1112131415161718;
  h.payload_checksum = 0x2122232425262728;
  const std::string value = EncodeStoredBlock(h, Bytes("xyz"));
  const std::string want_prefix(
      "SKV1"
      "\x01\x00"  // format_version 1
      "\x02"      // codec zstd
      "\x02"      // quant fp8-e4m3
      "\x02"      // quant_dtype bf16
      "\x00"      // flags
      "\x80\x00"  // head_dim 128
      "\x0d\x0c\x0b\x0a"
      "\x08\x07\x06\x05\x04\x03\x02\x01"
      "\x03\x00\x00\x00\x00\x00\x00\x00"  // stored_size 3
      "\x18\x17\x16\x15\x14\x13\x12\x11"
      "\x28\x27\x26\x25\x24\x23\x22\x21",
      48);
  ASSERT_EQ(value.size(), 64u + 3u);
  EXPECT_EQ(value.substr(0, 48), want_prefix);
  uint64_t stored_checksum;
  std::memcpy(&stored_checksum, value.data() + 48, 8);
  EXPECT_EQ(stored_checksum, BlockChecksum("xyz", 3));
  EXPECT_EQ(value.substr(56, 4), std::string(4, '\0'));  // reserved
  uint32_t header_checksum;
  std::memcpy(&header_checksum, value.data() + 60, 4);
  EXPECT_EQ(header_checksum, static_cast<uint32_t>(BlockChecksum(value.data(), 60)));
  EXPECT_EQ(value.substr(64), "xyz");
}

TEST(StoredBlockTest, EncodeDecodeKeepsEveryField) {
  StoredBlockHeader h;
  h.codec = Codec::kLz4;
  h.layout_id = 77;
  h.original_size = 1000;
  h.checksum = h.payload_checksum = 0xfeedface12345678;
  const std::string value = EncodeStoredBlock(h, Bytes("compressed"));
  absl::StatusOr<StoredBlockView> view = DecodeStoredBlock(Bytes(value));
  ASSERT_THAT(view, IsOk());
  EXPECT_EQ(view->header.format_version, 1);
  EXPECT_EQ(view->header.codec, Codec::kLz4);
  EXPECT_EQ(view->header.quant.method, KvQuant::kNone);
  EXPECT_EQ(view->header.quant.head_dim, 0u);
  EXPECT_EQ(view->header.layout_id, 77u);
  EXPECT_EQ(view->header.original_size, 1000u);
  EXPECT_EQ(view->header.stored_size, 10u);
  EXPECT_EQ(view->header.checksum, 0xfeedface12345678u);
  EXPECT_EQ(view->header.payload_checksum, 0xfeedface12345678u);
  EXPECT_EQ(view->header.stored_checksum, BlockChecksum("compressed", 10));
  EXPECT_EQ(std::string(view->stored.begin(), view->stored.end()), "compressed");
  EXPECT_EQ(view->stored.data(), Bytes(value).data() + 64);
}

struct PackCase {
  Codec codec;
  KvQuant quant;
};

std::string PackCaseName(const PackCase& c) {
  return absl::StrCat(
      std::string(CodecName(c.codec)), "_", c.quant == KvQuant::kNone ? "lossless" : "",
      c.quant == KvQuant::kInt8 ? "int8" : "", c.quant == KvQuant::kFp8E4M3 ? "fp8" : "");
}

class PackedValueTest : public ::testing::TestWithParam<PackCase> {
 protected:
  // A small fp16 KV block (8 vectors of 64), compressible enough for lz4/zstd to be kept.
  std::vector<uint8_t> Original() const {
    std::vector<uint8_t> v = Fp16Kv(512, 11);
    std::memset(v.data() + 512, 0, 256);  // an empty stretch, as in a partly filled block
    return v;
  }
  std::string Pack() const {
    absl::StatusOr<std::string> value = PackBlock(
        Original(), GetParam().codec, {GetParam().quant, KvDtype::kFp16, 64}, /*layout_id=*/5);
    EXPECT_THAT(value, IsOk());
    return value.ok() ? *value : std::string();
  }
};

TEST_P(PackedValueTest, RecordsTheRequestedCodec) {
  absl::StatusOr<StoredBlockView> view = DecodeStoredBlock(Bytes(Pack()));
  ASSERT_THAT(view, IsOk());
  EXPECT_EQ(view->header.codec, GetParam().codec);
  EXPECT_EQ(view->header.quant.method, GetParam().quant);
}

TEST_P(PackedValueTest, EveryHeaderByteFlipIsDataLoss) {
  const std::string value = Pack();
  std::vector<uint8_t> out;
  for (size_t i = 0; i < kStoredBlockHeaderSize; ++i) {
    for (uint8_t mask : {0x01, 0x10, 0x80, 0xff}) {
      std::string bad = value;
      bad[i] = static_cast<char>(bad[i] ^ mask);
      ASSERT_THAT(DecodeStoredBlock(Bytes(bad)), StatusIs(kDataLoss)) << i << " ^ " << +mask;
      ASSERT_THAT(UnpackBlock(Bytes(bad), &out), StatusIs(kDataLoss)) << i << " ^ " << +mask;
      EXPECT_TRUE(out.empty());
    }
  }
}

TEST_P(PackedValueTest, EveryTruncationAndExtensionIsDataLoss) {
  const std::string value = Pack();
  std::vector<uint8_t> out;
  for (size_t len = 0; len < value.size(); ++len) {
    ASSERT_THAT(DecodeStoredBlock(Bytes(value).first(len)), StatusIs(kDataLoss)) << len;
    ASSERT_THAT(UnpackBlock(Bytes(value).first(len), &out), StatusIs(kDataLoss)) << len;
  }
  EXPECT_THAT(DecodeStoredBlock(Bytes(value + '\0')),
              StatusIs(kDataLoss, HasSubstr("truncated or padded")));
  EXPECT_THAT(DecodeStoredBlock(Bytes(value.substr(0, 63))),
              StatusIs(kDataLoss, HasSubstr("63 bytes, shorter than the 64-byte header")));
}

TEST_P(PackedValueTest, EveryPayloadByteFlipIsDataLoss) {
  const std::string value = Pack();
  std::vector<uint8_t> out;
  for (size_t i = kStoredBlockHeaderSize; i < value.size(); ++i) {
    for (uint8_t mask : {0x01, 0x80}) {
      std::string bad = value;
      bad[i] = static_cast<char>(bad[i] ^ mask);
      ASSERT_THAT(DecodeStoredBlock(Bytes(bad)), IsOk());  // the header alone cannot tell
      ASSERT_THAT(VerifyStoredBlock(Bytes(bad)),
                  StatusIs(kDataLoss, HasSubstr("stored bytes checksum")));
      ASSERT_THAT(UnpackBlock(Bytes(bad), &out), StatusIs(kDataLoss)) << i << " ^ " << +mask;
    }
  }
}

// The same flips behind a matching stored_checksum (a writer that checksummed bad bytes)
// reach the decoder: each is DATA_LOSS from the decoder or the payload checksum, or decodes
// to exactly the packed bytes (a flip the stream format makes immaterial, e.g. a zstd window
// size or an lz4 match offset into identical bytes). Never OK with other bytes.
TEST_P(PackedValueTest, FlipsBehindAValidStoredChecksumNeverDecodeWrongBytes) {
  const std::string value = Pack();
  std::vector<uint8_t> want;
  ASSERT_THAT(UnpackBlock(Bytes(value), &want), IsOk());
  std::vector<uint8_t> out;
  int data_loss = 0, immaterial = 0;
  for (size_t i = kStoredBlockHeaderSize; i < value.size(); ++i) {
    for (uint8_t mask : {0x01, 0x80}) {
      std::string bad = value;
      bad[i] = static_cast<char>(bad[i] ^ mask);
      ResealStored(&bad);
      absl::Status s = UnpackBlock(Bytes(bad), &out);
      ASSERT_THAT(s, AnyOf(IsOk(), StatusIs(kDataLoss))) << i;
      if (s.ok()) {
        ASSERT_TRUE(out == want) << i << " ^ " << +mask;
        ++immaterial;
      } else {
        ++data_loss;
      }
    }
  }
  if (GetParam().codec == Codec::kNone) {
    EXPECT_EQ(immaterial, 0);
  }
  EXPECT_GT(data_loss, 10 * immaterial);
}

TEST_P(PackedValueTest, UnpacksWithTheHeader) {
  const std::vector<uint8_t> original = Original();
  std::vector<uint8_t> out;
  StoredBlockHeader h;
  ASSERT_THAT(UnpackBlock(Bytes(Pack()), &out, &h), IsOk());
  ASSERT_EQ(out.size(), original.size());
  EXPECT_EQ(h.layout_id, 5u);
  EXPECT_EQ(h.original_size, original.size());
  EXPECT_EQ(h.checksum, BlockChecksum(original.data(), original.size()));
  if (GetParam().quant == KvQuant::kNone) {
    EXPECT_TRUE(out == original);
    EXPECT_EQ(h.payload_checksum, h.checksum);
  } else {
    // Lossy: what comes back is exactly what quantize + dequantize give, checksummed as such.
    std::string payload;
    ASSERT_THAT(QuantizeKv(h.quant, original, &payload), IsOk());
    EXPECT_EQ(h.payload_checksum, BlockChecksum(payload.data(), payload.size()));
    EXPECT_NE(h.payload_checksum, h.checksum);
    std::vector<uint8_t> want(original.size());
    ASSERT_THAT(DequantizeKv(h.quant, Bytes(payload), want), IsOk());
    EXPECT_TRUE(out == want);
    absl::StatusOr<QuantErrorStats> err = MeasureQuantError(original, out, KvDtype::kFp16, 64);
    ASSERT_THAT(err, IsOk());
    EXPECT_GE(err->global_cosine, 0.99);
  }
}

INSTANTIATE_TEST_SUITE_P(Codecs, PackedValueTest,
                         ::testing::Values(PackCase{Codec::kNone, KvQuant::kNone},
                                           PackCase{Codec::kLz4, KvQuant::kNone},
                                           PackCase{Codec::kZstd, KvQuant::kNone},
                                           PackCase{Codec::kNone, KvQuant::kInt8},
                                           PackCase{Codec::kLz4, KvQuant::kInt8},
                                           PackCase{Codec::kZstd, KvQuant::kFp8E4M3}),
                         [](const auto& info) { return PackCaseName(info.param); });

TEST(StoredBlockTest, LosslessRoundTripsAreBitExact) {
  for (Codec codec : {Codec::kNone, Codec::kLz4, Codec::kZstd}) {
    for (size_t size : {size_t{0}, size_t{1}, size_t{1000}, size_t{2} << 20}) {
      for (bool compressible : {false, true}) {
        SCOPED_TRACE(absl::StrCat(std::string(CodecName(codec)), " ", size,
                                  compressible ? " compressible" : ""));
        const std::vector<uint8_t> original =
            compressible ? Compressible(size) : RandomBytes(size, 1);
        absl::StatusOr<std::string> value = PackBlock(original, codec, {}, 9);
        ASSERT_THAT(value, IsOk());
        StoredBlockHeader h;
        std::vector<uint8_t> out(3, 0xaa);
        ASSERT_THAT(UnpackBlock(Bytes(*value), &out, &h), IsOk());
        EXPECT_TRUE(out == original);
        // Stored raw unless compression made it strictly smaller.
        const bool shrank = compressible && size >= 1000 && codec != Codec::kNone;
        EXPECT_EQ(h.codec, shrank ? codec : Codec::kNone);
        EXPECT_EQ(h.stored_size + 64, value->size());
        if (!shrank) {
          EXPECT_EQ(h.stored_size, size);
        }

        std::vector<uint8_t> into(size);
        EXPECT_THAT(UnpackBlockInto(Bytes(*value), into), IsOk());
        EXPECT_TRUE(into == original);
      }
    }
  }
}

TEST(StoredBlockTest, PackRejectsBadArguments) {
  const std::vector<uint8_t> original = Fp16Kv(256, 1);
  EXPECT_THAT(PackBlock(original, Codec::kLz4, {KvQuant::kInt8, KvDtype::kFp16, 0}, 0),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("head_dim")));
  EXPECT_THAT(PackBlock(original, Codec::kLz4, {KvQuant::kInt8, KvDtype::kFp16, 100}, 0),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("512 bytes")));
  // Scales of 4 bytes per 1 or 2 elements of 2: a payload larger than the block.
  EXPECT_THAT(PackBlock(original, Codec::kLz4, {KvQuant::kInt8, KvDtype::kFp16, 2}, 0),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("more than the block")));
  EXPECT_THAT(PackBlock(original, Codec::kNone, {KvQuant::kFp8E4M3, KvDtype::kBf16, 1}, 0),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("head_dim 1 stores")));
  EXPECT_THAT(PackBlock(original, Codec::kNone, {KvQuant::kInt8, KvDtype::kFp16, 4}, 0), IsOk());
  EXPECT_THAT(PackBlock(original, Codec::kZstd, {}, 0, /*level=*/99),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("zstd level 99")));
  std::vector<uint8_t> nan = original;
  const uint16_t h = 0x7e00;
  std::memcpy(&nan[20], &h, 2);
  EXPECT_THAT(PackBlock(nan, Codec::kZstd, {KvQuant::kFp8E4M3, KvDtype::kFp16, 128}, 0),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("element 10")));
}

TEST(StoredBlockTest, UnpackIntoWrongSizeIsInvalidArgument) {
  absl::StatusOr<std::string> value = PackBlock(Compressible(100), Codec::kLz4, {}, 0);
  ASSERT_THAT(value, IsOk());
  std::vector<uint8_t> out(99);
  EXPECT_THAT(UnpackBlockInto(Bytes(*value), out),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("block is 100")));
}

// Field checks behind a valid header checksum: writers that break the format.
TEST(StoredBlockTest, InconsistentFieldsAreDataLossNamingTheField) {
  absl::StatusOr<std::string> lossless = PackBlock(Compressible(4096), Codec::kLz4, {}, 0);
  absl::StatusOr<std::string> lossy =
      PackBlock(Fp16Kv(1024, 2), Codec::kNone, {KvQuant::kInt8, KvDtype::kFp16, 128}, 0);
  ASSERT_THAT(lossless, IsOk());
  ASSERT_THAT(lossy, IsOk());
  auto expect = [](std::string value, auto edit, std::string_view message) {
    edit(&value);
    Reseal(&value);
    EXPECT_THAT(DecodeStoredBlock(Bytes(value)),
                StatusIs(kDataLoss, HasSubstr(std::string(message))))
        << message;
  };
  expect(
      *lossless, [](std::string* v) { (*v)[0] = 'X'; }, "bad magic");
  expect(
      *lossless, [](std::string* v) { Poke<uint16_t>(v, 4, 2); }, "format_version 2");
  expect(
      *lossless, [](std::string* v) { (*v)[6] = 3; }, "unknown codec 3");
  expect(
      *lossless, [](std::string* v) { (*v)[7] = 3; }, "unknown quantization 3");
  expect(
      *lossless, [](std::string* v) { (*v)[8] = 1; }, "unquantized block");
  expect(
      *lossless, [](std::string* v) { Poke<uint16_t>(v, 10, 64); }, "unquantized block");
  expect(
      *lossless, [](std::string* v) { (*v)[9] = 1; }, "reserved");
  expect(
      *lossless, [](std::string* v) { (*v)[56] = 1; }, "reserved");
  expect(
      *lossless, [](std::string* v) { Poke<uint64_t>(v, 16, uint64_t{1} << 31); },
      "exceeds the limit");
  expect(
      *lossless, [](std::string* v) { Poke<uint64_t>(v, 16, 1 << 28); }, "cannot expand");
  expect(
      *lossless, [](std::string* v) { (*v)[32] ^= 1; }, "checksum and payload_checksum");
  expect(
      *lossless, [](std::string* v) { (*v)[6] = 0; }, "raw payload");
  expect(
      *lossy, [](std::string* v) { (*v)[8] = 3; }, "unknown quant_dtype 3");
  expect(
      *lossy, [](std::string* v) { Poke<uint16_t>(v, 10, 100); }, "quantization fields");
  expect(
      *lossy, [](std::string* v) { Poke<uint16_t>(v, 10, 0); }, "head_dim 0");
  expect(
      *lossy, [](std::string* v) { Poke<uint16_t>(v, 10, 64); }, "raw payload");
  // head_dim 1 under zstd: a 1 GiB block would have decoded through a 2.5 GiB payload.
  expect(
      *lossy,
      [](std::string* v) {
        (*v)[6] = static_cast<char>(Codec::kZstd);
        Poke<uint16_t>(v, 10, 1);
      },
      "larger than the block's");
}

// Hostile values whose header checksum is valid: random fields over random stored bytes.
// Decoding and unpacking answer OK or DATA_LOSS, never crash or over-allocate.
TEST(StoredBlockTest, HostileValuesWithValidHeaderChecksum) {
  std::mt19937_64 rng(2024);
  int decoded = 0;
  std::vector<uint8_t> out;
  for (int round = 0; round < 20000; ++round) {
    const std::vector<uint8_t> stored = RandomBytes(rng() % 300, rng());
    std::string value(64, '\0');
    std::memcpy(value.data(), "SKV1\x01\x00", 6);
    value[6] = static_cast<char>(rng() % 4);
    value[7] = static_cast<char>(rng() % 4);
    value[8] = static_cast<char>(rng() % 3);
    Poke<uint16_t>(&value, 10, static_cast<uint16_t>(rng() % 3 == 0 ? 0 : 1 + rng() % 8));
    Poke<uint64_t>(&value, 16, rng() % 2 == 0 ? stored.size() : rng() % 5000);
    Poke<uint64_t>(&value, 24, stored.size());
    const uint64_t checksum = rng();
    Poke<uint64_t>(&value, 32, checksum);
    Poke<uint64_t>(&value, 40, rng() % 2 == 0 ? checksum : rng());
    value.append(stored.begin(), stored.end());
    // Half the values carry a matching stored_checksum, so random bytes reach the decoders.
    if (rng() % 2 == 0) {
      ResealStored(&value);
    } else {
      Reseal(&value);
    }
    absl::StatusOr<StoredBlockView> view = DecodeStoredBlock(Bytes(value));
    ASSERT_THAT(view, AnyOf(IsOk(), StatusIs(kDataLoss)));
    decoded += view.ok();
    ASSERT_THAT(UnpackBlock(Bytes(value), &out), AnyOf(IsOk(), StatusIs(kDataLoss)));
  }
  EXPECT_GT(decoded, 100);  // the generator reaches past the header checks
}

}  // namespace
}  // namespace strata
