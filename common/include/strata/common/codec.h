// Lossless codecs for blocks leaving the warm tier: lz4 for the cool tier (fast), zstd for
// the cold tier (smaller). The compressed bytes are a bare lz4 block (LZ4_compress_*) or a
// single zstd frame; neither carries the original size, which the caller keeps (the stored
// block header does, see stored_block.h).
//
// Stateless from the caller's view and thread-safe: zstd contexts are cached per thread.
// Every function runs on the calling thread and does not block on anything but the CPU.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace strata {

// On-disk values (stored_block.h records them): never renumber.
enum class Codec : uint8_t { kNone = 0, kLz4 = 1, kZstd = 2 };

// "none", "lz4", "zstd", case-insensitive. INVALID_ARGUMENT listing them otherwise.
absl::StatusOr<Codec> ParseCodec(std::string_view name);
// "none", "lz4", "zstd". REQUIRES: a declared enumerator.
std::string_view CodecName(Codec codec);
// True for the byte values of the declared enumerators (for decoders of stored bytes).
bool IsKnownCodec(uint8_t value);

// Largest input Compress accepts for any codec (lz4 limit, just under 2 GiB).
inline constexpr uint64_t kMaxCodecInputSize = 0x7E000000;

// Levels: 0 is the codec's default. lz4: < 0 is LZ4 "fast" with acceleration -level, 0 and 1
// are the default LZ4 (what the cool tier uses), 2..12 are LZ4-HC levels. zstd: its own
// range (ZSTD_minCLevel()..ZSTD_maxCLevel(), default 3). none: the level is ignored.
//
// Appends the compressed form of `in` to *out. INVALID_ARGUMENT for a level out of range or
// an input above kMaxCodecInputSize; on error *out is left as it was.
absl::Status CompressAppend(Codec codec, std::span<const uint8_t> in, int level, std::string* out);

// The compressed form of `in`, as CompressAppend.
absl::StatusOr<std::string> Compress(Codec codec, std::span<const uint8_t> in, int level = 0);

// Decompresses `in` into `out`, which must be sized to exactly the original length.
// DATA_LOSS when `in` is not a valid stream of `codec` or does not decode to exactly
// out.size() bytes (for kNone: when the sizes differ). Safe on hostile input: never reads
// outside `in` nor writes outside `out`, allocates nothing proportional to claims in `in`.
// On error the contents of `out` are unspecified.
absl::Status Decompress(Codec codec, std::span<const uint8_t> in, std::span<uint8_t> out);

// An upper bound on the decompressed size of `compressed_size` bytes of `codec`, for
// rejecting impossible sizes in headers before allocating: exact for kNone, 255× (plus a
// little) for lz4, and no useful bound (UINT64_MAX) for zstd, whose runs can be huge.
uint64_t MaxDecompressedSize(Codec codec, uint64_t compressed_size);

// A block as it should be stored: compressed with the requested codec when that makes it
// smaller, otherwise raw with codec kNone.
struct EncodedBlock {
  Codec codec = Codec::kNone;
  std::string bytes;
};

// Compresses `in` with `codec` and keeps the result only if it is strictly smaller than
// `in`; otherwise returns a copy of `in` tagged kNone. Errors as Compress.
absl::StatusOr<EncodedBlock> EncodeBlock(Codec codec, std::span<const uint8_t> in, int level = 0);

}  // namespace strata
