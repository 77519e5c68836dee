// stored_block_fuzzer: the stored-block value format (strata/common/stored_block.h) and what
// decoding it reaches: the lz4/zstd codecs (codec.h) and KV dequantization (kv_quant.h).
//
// Byte 0 picks a mode; the rest is its input:
//   mode % 4 == 0  the bytes as a value read from disk: DecodeStoredBlock, VerifyStoredBlock,
//                  UnpackBlock.
//   mode % 4 == 1  the same after repairing what a random mutation almost always breaks, so
//                  that hostile headers and streams get past the checksums: stored_size
//                  (mode bit 2), stored_checksum and the header checksum always, and (mode
//                  bit 3) payload_checksum over what the codec decodes, after which
//                  UnpackBlock must succeed.
//   mode % 4 == 2  [codec][quant][dtype][head_dim lo][head_dim hi][level] original: PackBlock
//                  then the full round trip.
//   mode % 4 == 3  [codec][level][out lo][out hi] bytes: Decompress into an out-sized buffer,
//                  Compress/EncodeBlock round trips, DequantizeKv of the bytes as a payload.
//
// Invariants: failures are DATA_LOSS (decoding) or INVALID_ARGUMENT (encoding arguments),
// never another code; a value that decodes re-encodes (EncodeStoredBlock) to the same bytes
// when its stored checksum holds, and to the same bytes but for the two checksums otherwise;
// a value that does not verify never unpacks; an unpacked lossless block has the header's
// checksum; every packed block unpacks, lossless ones to the original bytes.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "fuzz_check.h"
#include "strata/common/checksum.h"
#include "strata/common/codec.h"
#include "strata/common/kv_quant.h"
#include "strata/common/stored_block.h"

namespace strata::fuzz {
namespace {

using Bytes = std::span<const uint8_t>;

// Values claiming more than this are decoded but not unpacked: the format allows 1 GiB
// blocks, which would only make each execution slow.
constexpr uint64_t kMaxUnpackBytes = 1 << 20;

constexpr size_t kOffStoredSize = 24;
constexpr size_t kOffChecksum = 32;
constexpr size_t kOffPayloadChecksum = 40;
constexpr size_t kOffStoredChecksum = 48;
constexpr size_t kOffHeaderChecksum = 60;

Bytes AsBytes(const std::string& s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

void PutLe64(uint8_t* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}

void FixHeaderChecksum(std::vector<uint8_t>& v) {
  const auto sum = static_cast<uint32_t>(BlockChecksum(v.data(), kOffHeaderChecksum));
  for (int i = 0; i < 4; ++i) v[kOffHeaderChecksum + i] = static_cast<uint8_t>(sum >> (8 * i));
}

uint64_t PayloadSize(const StoredBlockHeader& h) {
  return h.quant.method == KvQuant::kNone ? h.original_size
                                          : QuantizedPayloadSize(h.quant, h.original_size);
}

bool SameHeader(const StoredBlockHeader& a, const StoredBlockHeader& b) {
  return a.format_version == b.format_version && a.codec == b.codec &&
         a.quant.method == b.quant.method && a.quant.dtype == b.quant.dtype &&
         a.quant.head_dim == b.quant.head_dim && a.layout_id == b.layout_id &&
         a.original_size == b.original_size && a.stored_size == b.stored_size &&
         a.checksum == b.checksum && a.payload_checksum == b.payload_checksum &&
         a.stored_checksum == b.stored_checksum;
}

// STRATA_FUZZ_VERBOSE=1: print what decoding and unpacking returned.
bool Verbose() {
  static const bool verbose = std::getenv("STRATA_FUZZ_VERBOSE") != nullptr;
  return verbose;
}

// Decodes, verifies, re-encodes and unpacks `value`. must_unpack: the caller made every
// checksum right, so the value must restore.
void CheckValue(Bytes value, bool must_unpack) {
  absl::StatusOr<StoredBlockView> view = DecodeStoredBlock(value);
  absl::StatusOr<StoredBlockView> verified = VerifyStoredBlock(value);
  std::vector<uint8_t> out;
  if (Verbose()) std::fprintf(stderr, "  decode: %s\n", view.status().ToString().c_str());
  if (!view.ok()) {
    FUZZ_CHECK_MSG(view.status().code() == absl::StatusCode::kDataLoss, view.status().ToString());
    FUZZ_CHECK(!verified.ok() && verified.status().code() == absl::StatusCode::kDataLoss);
    const absl::Status s = UnpackBlock(value, &out);
    FUZZ_CHECK(s.code() == absl::StatusCode::kDataLoss && out.empty());
    FUZZ_CHECK(!must_unpack);
    return;
  }
  const StoredBlockHeader& h = view->header;
  FUZZ_CHECK(h.format_version == kStoredBlockFormatVersion);
  FUZZ_CHECK(IsKnownCodec(static_cast<uint8_t>(h.codec)));
  FUZZ_CHECK(h.original_size <= kMaxStoredBlockOriginalSize);
  FUZZ_CHECK(h.stored_size == value.size() - kStoredBlockHeaderSize);
  FUZZ_CHECK(view->stored.data() == value.data() + kStoredBlockHeaderSize);
  FUZZ_CHECK(view->stored.size() == h.stored_size);
  if (h.quant.method == KvQuant::kNone) FUZZ_CHECK(h.checksum == h.payload_checksum);
  if (h.codec == Codec::kNone) FUZZ_CHECK(h.stored_size == PayloadSize(h));
  FUZZ_CHECK(PayloadSize(h) <= MaxDecompressedSize(h.codec, h.stored_size));
  if (verified.ok()) {
    FUZZ_CHECK(SameHeader(verified->header, h));
  } else {
    FUZZ_CHECK(verified.status().code() == absl::StatusCode::kDataLoss);
  }

  // Re-encoding: identical but for the checksums EncodeStoredBlock recomputes.
  const std::string encoded = EncodeStoredBlock(h, view->stored);
  FUZZ_CHECK(encoded.size() == value.size());
  const Bytes enc = AsBytes(encoded);
  if (verified.ok()) {
    FUZZ_CHECK(std::equal(enc.begin(), enc.end(), value.begin()));
  } else {
    FUZZ_CHECK(std::memcmp(enc.data(), value.data(), kOffStoredChecksum) == 0);
    FUZZ_CHECK(std::memcmp(enc.data() + 56, value.data() + 56, 4) == 0);
    FUZZ_CHECK(std::equal(enc.begin() + kStoredBlockHeaderSize, enc.end(),
                          value.begin() + kStoredBlockHeaderSize));
  }
  absl::StatusOr<StoredBlockView> reencoded = VerifyStoredBlock(enc);
  FUZZ_CHECK_MSG(reencoded.ok(), reencoded.status().ToString());
  StoredBlockHeader expected = h;
  expected.stored_checksum = BlockChecksum(view->stored.data(), view->stored.size());
  FUZZ_CHECK(SameHeader(reencoded->header, expected));

  if (h.original_size > kMaxUnpackBytes) return;
  StoredBlockHeader got;
  const absl::Status s = UnpackBlock(value, &out, &got);
  if (Verbose()) std::fprintf(stderr, "  unpack: %s\n", s.ToString().c_str());
  if (!verified.ok()) FUZZ_CHECK(!s.ok());
  if (!s.ok()) {
    FUZZ_CHECK_MSG(s.code() == absl::StatusCode::kDataLoss, s.ToString());
    FUZZ_CHECK(out.empty());
    FUZZ_CHECK_MSG(!must_unpack, s.ToString());
  } else {
    FUZZ_CHECK(out.size() == h.original_size);
    FUZZ_CHECK(SameHeader(got, h));
    if (h.quant.method == KvQuant::kNone) {
      FUZZ_CHECK(BlockChecksum(out.data(), out.size()) == h.checksum);
    }
  }
  // A wrong-sized buffer is the caller's mistake, reported as such.
  std::vector<uint8_t> wrong(h.original_size + 1);
  FUZZ_CHECK(UnpackBlockInto(value, wrong).code() == absl::StatusCode::kInvalidArgument);
}

// Mode 1: repairs the checksums (and optionally stored_size and payload_checksum) of `raw`.
void CheckRepaired(uint8_t mode, Bytes raw) {
  std::vector<uint8_t> v(raw.begin(), raw.end());
  if (v.size() < kStoredBlockHeaderSize) return CheckValue(v, false);
  uint8_t* p = v.data();
  if (mode & 4) PutLe64(p + kOffStoredSize, v.size() - kStoredBlockHeaderSize);
  PutLe64(p + kOffStoredChecksum,
          BlockChecksum(p + kStoredBlockHeaderSize, v.size() - kStoredBlockHeaderSize));
  FixHeaderChecksum(v);
  bool must_unpack = false;
  if (mode & 8) {
    absl::StatusOr<StoredBlockView> view = DecodeStoredBlock(v);
    if (view.ok() && view->header.original_size <= kMaxUnpackBytes) {
      std::vector<uint8_t> payload(PayloadSize(view->header));
      if (Decompress(view->header.codec, view->stored, payload).ok()) {
        const uint64_t sum = BlockChecksum(payload.data(), payload.size());
        PutLe64(p + kOffPayloadChecksum, sum);
        if (view->header.quant.method == KvQuant::kNone) PutLe64(p + kOffChecksum, sum);
        FixHeaderChecksum(v);
        must_unpack = true;
      }
    }
  }
  CheckValue(v, must_unpack);
}

KvQuantSpec SpecFrom(uint8_t quant, uint8_t dtype, uint16_t head_dim) {
  KvQuantSpec spec;
  spec.method = static_cast<KvQuant>(quant % 3);
  spec.dtype = static_cast<KvDtype>(dtype % 4);  // fp8/int8 sources are invalid: rejected
  spec.head_dim = head_dim;
  return spec;
}

// Mode 2: PackBlock and back.
void CheckPack(Bytes in) {
  if (in.size() < 6) return;
  const auto codec = static_cast<Codec>(in[0] % 3);
  const KvQuantSpec spec = SpecFrom(in[1], in[2], static_cast<uint16_t>(in[3] | in[4] << 8));
  const int level = static_cast<int8_t>(in[5]);
  const Bytes original = in.subspan(6);
  absl::StatusOr<std::string> packed = PackBlock(original, codec, spec, 0x5354, level);
  if (!packed.ok()) {
    FUZZ_CHECK_MSG(packed.status().code() == absl::StatusCode::kInvalidArgument,
                   packed.status().ToString());
    return;
  }
  CheckValue(AsBytes(*packed), true);
  std::vector<uint8_t> restored;
  StoredBlockHeader h;
  const absl::Status s = UnpackBlock(AsBytes(*packed), &restored, &h);
  FUZZ_CHECK_MSG(s.ok(), s.ToString());
  FUZZ_CHECK(h.codec == codec || h.codec == Codec::kNone);
  FUZZ_CHECK(h.layout_id == 0x5354 && h.original_size == original.size());
  FUZZ_CHECK(h.checksum == BlockChecksum(original.data(), original.size()));
  if (spec.method == KvQuant::kNone) {
    FUZZ_CHECK(std::equal(restored.begin(), restored.end(), original.begin(), original.end()));
    return;
  }
  FUZZ_CHECK(h.quant.method == spec.method && h.quant.dtype == spec.dtype &&
             h.quant.head_dim == spec.head_dim);
  // Restored values are finite and within the source range, so they quantize again.
  absl::StatusOr<std::string> again = PackBlock(restored, codec, spec, 0x5354, level);
  FUZZ_CHECK_MSG(again.ok(), again.status().ToString());
  absl::StatusOr<QuantErrorStats> err =
      MeasureQuantError(original, restored, spec.dtype, spec.head_dim);
  FUZZ_CHECK_MSG(err.ok(), err.status().ToString());
  // Each vector's error stays within its own range (1: a vector of specks restored as 0).
  FUZZ_CHECK(err->max_relative_error <= 1.0);
}

// Mode 3: the codecs and the dequantizer on their own.
void CheckCodecs(Bytes in) {
  if (in.size() < 4) return;
  const auto codec = static_cast<Codec>(in[0] % 3);
  const int level = static_cast<int8_t>(in[1]);
  const size_t out_size = in[2] | size_t{in[3]} << 8;
  const Bytes bytes = in.subspan(4);

  std::vector<uint8_t> out(out_size);
  const absl::Status d = Decompress(codec, bytes, out);
  if (d.ok()) {
    FUZZ_CHECK(out_size <= MaxDecompressedSize(codec, bytes.size()));
    if (codec == Codec::kNone) FUZZ_CHECK(std::equal(out.begin(), out.end(), bytes.begin()));
  } else {
    FUZZ_CHECK_MSG(d.code() == absl::StatusCode::kDataLoss, d.ToString());
  }

  absl::StatusOr<std::string> compressed = Compress(codec, bytes, level);
  if (compressed.ok()) {
    FUZZ_CHECK(bytes.size() <= MaxDecompressedSize(codec, compressed->size()));
    std::vector<uint8_t> back(bytes.size());
    const absl::Status r = Decompress(codec, AsBytes(*compressed), back);
    FUZZ_CHECK_MSG(r.ok(), r.ToString());
    FUZZ_CHECK(std::equal(back.begin(), back.end(), bytes.begin(), bytes.end()));
  } else {
    FUZZ_CHECK(compressed.status().code() == absl::StatusCode::kInvalidArgument);
  }
  absl::StatusOr<EncodedBlock> encoded = EncodeBlock(codec, bytes, level);
  FUZZ_CHECK(encoded.ok() == compressed.ok());
  if (encoded.ok()) {
    FUZZ_CHECK(encoded->codec == codec || encoded->codec == Codec::kNone);
    if (encoded->codec != Codec::kNone) FUZZ_CHECK(encoded->bytes.size() < bytes.size());
    std::vector<uint8_t> back(bytes.size());
    FUZZ_CHECK(Decompress(encoded->codec, AsBytes(encoded->bytes), back).ok());
    FUZZ_CHECK(std::equal(back.begin(), back.end(), bytes.begin(), bytes.end()));
  }

  // The bytes as a quantized payload: [scales][codes] of out_size/2 elements when that fits,
  // else of out_size bytes (then a size error).
  const KvQuantSpec spec = SpecFrom(in[0] / 3, in[1], static_cast<uint16_t>(in[2] % 128 + 1));
  uint64_t block_bytes = out_size;
  if (spec.head_dim > 0 && bytes.size() * spec.head_dim % (spec.head_dim + 4) == 0) {
    block_bytes = 2 * (bytes.size() * spec.head_dim / (spec.head_dim + 4));
  }
  std::vector<uint8_t> restored(block_bytes);
  const absl::Status q = DequantizeKv(spec, bytes, restored);
  FUZZ_CHECK_MSG(q.ok() || q.code() == absl::StatusCode::kInvalidArgument, q.ToString());
}

}  // namespace
}  // namespace strata::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace strata::fuzz;
  if (size == 0) return 0;
  const uint8_t mode = data[0];
  const Bytes rest(data + 1, size - 1);
  switch (mode % 4) {
    case 0:
      CheckValue(rest, false);
      break;
    case 1:
      CheckRepaired(mode, rest);
      break;
    case 2:
      CheckPack(rest);
      break;
    case 3:
      CheckCodecs(rest);
      break;
  }
  return 0;
}
