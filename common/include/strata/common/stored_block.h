// The value format of a block in the cool and cold tiers (RocksDB): a fixed 64-byte
// little-endian header, then the stored bytes (the block after optional lossy quantization
// and optional lossless compression). Byte layout, version rules and the checksum rules are in
// docs/design/codecs.md; in short:
//
//   off size field
//    0   4   magic "SKV1"
//    4   2   format_version (1)
//    6   1   codec          (Codec: 0 none, 1 lz4, 2 zstd)
//    7   1   quant          (KvQuant: 0 none, 1 int8, 2 fp8-e4m3)
//    8   1   quant_dtype    (0 when quant is none, 1 fp16, 2 bf16)
//    9   1   flags          (0; reserved)
//   10   2   quant_head_dim (0 when quant is none)
//   12   4   layout_id      (opaque to this format: the writer's KV layout)
//   16   8   original_size  (bytes of the block as the client wrote it)
//   24   8   stored_size    (bytes after the header; the value is exactly 64 + stored_size)
//   32   8   checksum       (xxh3-64 of the ORIGINAL block, = strata::BlockChecksum)
//   40   8   payload_checksum (xxh3-64 of the payload: the bytes fed to the codec, i.e. the
//                            original for lossless blocks, the packed quantized form for lossy
//                            ones; equal to checksum when quant is none)
//   48   8   stored_checksum (xxh3-64 of the stored bytes after the header)
//   56   4   reserved (0)
//   60   4   header_checksum (low 32 bits of xxh3-64 of bytes 0..59)
//
// Checksum rule: Unpack verifies stored_checksum before decoding (any changed stored byte is
// DATA_LOSS, even one a decoder would not notice, and corrupted bytes never reach a
// decompressor; hostile ones with a forged checksum may, which the decoders are safe
// against), then payload_checksum over the decompressed payload. For a lossless block that
// payload IS the original, so the original's checksum is verified end to end. A lossy block
// cannot restore the original bit for bit, so `checksum` only identifies the source block (it
// is the checksum the warm tier knew) and what is verified is the quantized payload, end to
// end through the codec.
//
// Stateless functions; thread-safe; none blocks.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "strata/common/codec.h"
#include "strata/common/kv_quant.h"

namespace strata {

inline constexpr char kStoredBlockMagic[4] = {'S', 'K', 'V', '1'};
inline constexpr uint16_t kStoredBlockFormatVersion = 1;
inline constexpr size_t kStoredBlockHeaderSize = 64;
// Decoders reject larger claims so that a hostile header cannot make Unpack allocate more
// (UnpackBlockInto allocates at most out.size(), for a quantized payload no larger).
inline constexpr uint64_t kMaxStoredBlockOriginalSize = uint64_t{1} << 30;

struct StoredBlockHeader {
  uint16_t format_version = kStoredBlockFormatVersion;
  Codec codec = Codec::kNone;
  KvQuantSpec quant;  // method kNone: dtype and head_dim are not recorded (read back as 0/fp16)
  uint32_t layout_id = 0;
  uint64_t original_size = 0;
  uint64_t stored_size = 0;
  uint64_t checksum = 0;
  uint64_t payload_checksum = 0;
  uint64_t stored_checksum = 0;
};

// A decoded value: the header and the stored bytes, which point into the decoded value and
// live as long as it does.
struct StoredBlockView {
  StoredBlockHeader header;
  std::span<const uint8_t> stored;
};

// Header followed by `stored`. Writes kStoredBlockFormatVersion, stored.size() and the
// checksum of `stored`, whatever header.format_version, stored_size and stored_checksum say.
// REQUIRES: the header describes `stored` (PackBlock builds such headers): a known codec and
// quant, quant fields valid when quant is not none (ValidateKvQuantSpec), and the sizes and
// checksums as documented above. Violations produce values that DecodeStoredBlock rejects.
std::string EncodeStoredBlock(const StoredBlockHeader& header, std::span<const uint8_t> stored);

// Parses and validates a value without decompressing or checksumming the stored bytes.
// DATA_LOSS, naming the problem, when: the value is shorter than the header, the magic or
// format_version is wrong, the header checksum does not match, a reserved field is non-zero,
// codec/quant/quant_dtype/head_dim hold unknown or inconsistent values, stored_size differs
// from the bytes after the header, original_size exceeds kMaxStoredBlockOriginalSize or cannot
// correspond to stored_size (e.g. raw blocks whose sizes differ), a quantized payload would be
// larger than original_size, or checksum differs from payload_checksum on a lossless block.
// Safe on any input (this parser is fuzzed).
absl::StatusOr<StoredBlockView> DecodeStoredBlock(std::span<const uint8_t> value);

// DecodeStoredBlock plus stored_checksum over the stored bytes: an integrity check that
// needs no decompression (for scrubbing a tier). DATA_LOSS as DecodeStoredBlock, or when the
// stored bytes do not match stored_checksum.
absl::StatusOr<StoredBlockView> VerifyStoredBlock(std::span<const uint8_t> value);

// Builds the value for `original`: checksums it, quantizes it when quant.method is not kNone,
// compresses the payload with `codec` at `level` (0 = codec default) and stores it raw
// (codec kNone in the header) when compression does not make it smaller.
// INVALID_ARGUMENT for a bad quant spec or non-finite values under quantization
// (kv_quant.h), a quant spec whose payload would be larger than the block (head_dim below 4),
// a bad level, or an original above kMaxStoredBlockOriginalSize.
absl::StatusOr<std::string> PackBlock(std::span<const uint8_t> original, Codec codec,
                                      const KvQuantSpec& quant, uint32_t layout_id, int level = 0);

// Restores the block stored in `value` into `out`, which must be exactly the original size
// (read it first with DecodeStoredBlock). Decodes the header, verifies stored_checksum,
// decompresses, verifies payload_checksum (see the checksum rule above) and dequantizes lossy
// blocks; it never returns OK with bytes other than the ones packed.
// DATA_LOSS for any corruption: a bad header, a stream that does not decode, or a checksum
// mismatch. INVALID_ARGUMENT when out.size() is not the header's original_size. On success
// *header_out (optional) receives the header. On error `out` holds unspecified bytes.
absl::Status UnpackBlockInto(std::span<const uint8_t> value, std::span<uint8_t> out,
                             StoredBlockHeader* header_out = nullptr);

// As UnpackBlockInto, into *original_out resized to the original size (cleared on error).
absl::Status UnpackBlock(std::span<const uint8_t> value, std::vector<uint8_t>* original_out,
                         StoredBlockHeader* header_out = nullptr);

}  // namespace strata
