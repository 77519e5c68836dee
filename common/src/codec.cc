#include "strata/common/codec.h"

#include <lz4.h>
#include <lz4hc.h>
#include <zstd.h>

#include <cstring>
#include <limits>
#include <memory>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace strata {
namespace {

// lz4 and zstd want non-null pointers even for empty buffers.
uint8_t g_empty_byte = 0;
const char* InPtr(std::span<const uint8_t> s) {
  return reinterpret_cast<const char*>(s.empty() ? &g_empty_byte : s.data());
}

struct CCtxDeleter {
  void operator()(ZSTD_CCtx* c) const { ZSTD_freeCCtx(c); }
};
struct DCtxDeleter {
  void operator()(ZSTD_DCtx* d) const { ZSTD_freeDCtx(d); }
};

// Reusing a context per thread saves its (multi-MiB at higher levels) allocation per block.
ZSTD_CCtx* ThreadCCtx() {
  thread_local std::unique_ptr<ZSTD_CCtx, CCtxDeleter> cctx(ZSTD_createCCtx());
  return cctx.get();
}
ZSTD_DCtx* ThreadDCtx() {
  thread_local std::unique_ptr<ZSTD_DCtx, DCtxDeleter> dctx(ZSTD_createDCtx());
  return dctx.get();
}

absl::Status CompressLz4(std::span<const uint8_t> in, int level, std::string* out) {
  if (level > LZ4HC_CLEVEL_MAX) {
    return absl::InvalidArgumentError(
        absl::StrCat("lz4 level ", level, " is above the maximum ", LZ4HC_CLEVEL_MAX));
  }
  const int in_size = static_cast<int>(in.size());
  const int bound = LZ4_compressBound(in_size);
  const size_t start = out->size();
  out->resize(start + static_cast<size_t>(bound));
  char* dst = out->data() + start;
  int written;
  if (level < 0) {
    written = LZ4_compress_fast(InPtr(in), dst, in_size, bound, -level);
  } else if (level <= 1) {
    written = LZ4_compress_default(InPtr(in), dst, in_size, bound);
  } else {
    written = LZ4_compress_HC(InPtr(in), dst, in_size, bound, level);
  }
  if (written <= 0) {
    // Cannot happen with a bound-sized output and a checked input size.
    out->resize(start);
    return absl::InternalError(absl::StrCat("LZ4 failed to compress ", in.size(), " bytes"));
  }
  out->resize(start + static_cast<size_t>(written));
  return absl::OkStatus();
}

absl::Status CompressZstd(std::span<const uint8_t> in, int level, std::string* out) {
  if (level < ZSTD_minCLevel() || level > ZSTD_maxCLevel()) {
    return absl::InvalidArgumentError(absl::StrCat("zstd level ", level, " is outside ",
                                                   ZSTD_minCLevel(), "..", ZSTD_maxCLevel()));
  }
  ZSTD_CCtx* cctx = ThreadCCtx();
  if (cctx == nullptr) return absl::ResourceExhaustedError("cannot allocate a zstd context");
  const size_t bound = ZSTD_compressBound(in.size());
  const size_t start = out->size();
  out->resize(start + bound);
  const size_t written =
      ZSTD_compressCCtx(cctx, out->data() + start, bound, InPtr(in), in.size(), level);
  if (ZSTD_isError(written)) {
    out->resize(start);
    return absl::InternalError(absl::StrCat("zstd failed to compress ", in.size(),
                                            " bytes: ", ZSTD_getErrorName(written)));
  }
  out->resize(start + written);
  return absl::OkStatus();
}

absl::Status DecompressLz4(std::span<const uint8_t> in, std::span<uint8_t> out) {
  constexpr size_t kIntMax = static_cast<size_t>(std::numeric_limits<int>::max());
  if (in.size() > kIntMax || out.size() > kIntMax) {
    return absl::DataLossError(absl::StrCat("lz4 block of ", in.size(), " bytes decoding to ",
                                            out.size(), " bytes exceeds lz4's limits"));
  }
  char* dst = reinterpret_cast<char*>(out.empty() ? &g_empty_byte : out.data());
  const int got = LZ4_decompress_safe(InPtr(in), dst, static_cast<int>(in.size()),
                                      static_cast<int>(out.size()));
  if (got < 0) {
    return absl::DataLossError(absl::StrCat("corrupt lz4 block (", in.size(),
                                            " bytes, expected to decode to ", out.size(), ")"));
  }
  if (static_cast<size_t>(got) != out.size()) {
    return absl::DataLossError(
        absl::StrCat("lz4 block decoded to ", got, " bytes, expected ", out.size()));
  }
  return absl::OkStatus();
}

absl::Status DecompressZstd(std::span<const uint8_t> in, std::span<uint8_t> out) {
  // We write exactly one frame; trailing frames or garbage would otherwise go unnoticed.
  const size_t frame_size = ZSTD_findFrameCompressedSize(InPtr(in), in.size());
  if (ZSTD_isError(frame_size)) {
    return absl::DataLossError(absl::StrCat("corrupt zstd frame (", in.size(),
                                            " bytes): ", ZSTD_getErrorName(frame_size)));
  }
  if (frame_size != in.size()) {
    return absl::DataLossError(
        absl::StrCat("zstd frame is ", frame_size, " bytes but ", in.size(), " were given"));
  }
  const unsigned long long content = ZSTD_getFrameContentSize(InPtr(in), in.size());
  if (content != ZSTD_CONTENTSIZE_UNKNOWN && content != out.size()) {
    return absl::DataLossError(
        absl::StrCat("zstd frame declares ", content, " bytes, expected ", out.size()));
  }
  ZSTD_DCtx* dctx = ThreadDCtx();
  if (dctx == nullptr) return absl::ResourceExhaustedError("cannot allocate a zstd context");
  void* dst = out.empty() ? &g_empty_byte : out.data();
  const size_t got = ZSTD_decompressDCtx(dctx, dst, out.size(), InPtr(in), in.size());
  if (ZSTD_isError(got)) {
    return absl::DataLossError(absl::StrCat("corrupt zstd frame (", in.size(),
                                            " bytes, expected to decode to ", out.size(),
                                            "): ", ZSTD_getErrorName(got)));
  }
  if (got != out.size()) {
    return absl::DataLossError(
        absl::StrCat("zstd frame decoded to ", got, " bytes, expected ", out.size()));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<Codec> ParseCodec(std::string_view name) {
  const std::string lower = absl::AsciiStrToLower(absl::string_view(name.data(), name.size()));
  if (lower == "none") return Codec::kNone;
  if (lower == "lz4") return Codec::kLz4;
  if (lower == "zstd") return Codec::kZstd;
  return absl::InvalidArgumentError(absl::StrCat("unknown codec '",
                                                 absl::string_view(name.data(), name.size()),
                                                 "' (accepted: none, lz4, zstd)"));
}

std::string_view CodecName(Codec codec) {
  switch (codec) {
    case Codec::kNone:
      return "none";
    case Codec::kLz4:
      return "lz4";
    case Codec::kZstd:
      return "zstd";
  }
  // Only reachable through a cast of an out-of-range integer: a bug, not bad input.
  std::abort();
}

bool IsKnownCodec(uint8_t value) { return value <= static_cast<uint8_t>(Codec::kZstd); }

absl::Status CompressAppend(Codec codec, std::span<const uint8_t> in, int level, std::string* out) {
  if (in.size() > kMaxCodecInputSize) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot compress ", in.size(), " bytes: the limit is ", kMaxCodecInputSize));
  }
  switch (codec) {
    case Codec::kNone:
      out->append(InPtr(in), in.size());
      return absl::OkStatus();
    case Codec::kLz4:
      return CompressLz4(in, level, out);
    case Codec::kZstd:
      return CompressZstd(in, level, out);
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown codec ", static_cast<int>(codec)));
}

absl::StatusOr<std::string> Compress(Codec codec, std::span<const uint8_t> in, int level) {
  std::string out;
  if (absl::Status s = CompressAppend(codec, in, level, &out); !s.ok()) return s;
  return out;
}

absl::Status Decompress(Codec codec, std::span<const uint8_t> in, std::span<uint8_t> out) {
  switch (codec) {
    case Codec::kNone:
      if (in.size() != out.size()) {
        return absl::DataLossError(
            absl::StrCat("raw block is ", in.size(), " bytes, expected ", out.size()));
      }
      if (!in.empty()) std::memcpy(out.data(), in.data(), in.size());
      return absl::OkStatus();
    case Codec::kLz4:
      return DecompressLz4(in, out);
    case Codec::kZstd:
      return DecompressZstd(in, out);
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown codec ", static_cast<int>(codec)));
}

uint64_t MaxDecompressedSize(Codec codec, uint64_t compressed_size) {
  switch (codec) {
    case Codec::kNone:
      return compressed_size;
    case Codec::kLz4:
      // One lz4 byte expands to at most 255 (a match-length continuation byte); the constant
      // covers the fixed overhead of the shortest sequences.
      if (compressed_size > std::numeric_limits<uint64_t>::max() / 256) {
        return std::numeric_limits<uint64_t>::max();
      }
      return compressed_size * 255 + 64;
    case Codec::kZstd:
      break;
  }
  return std::numeric_limits<uint64_t>::max();
}

absl::StatusOr<EncodedBlock> EncodeBlock(Codec codec, std::span<const uint8_t> in, int level) {
  EncodedBlock block;
  block.codec = codec;
  if (absl::Status s = CompressAppend(codec, in, level, &block.bytes); !s.ok()) return s;
  if (codec != Codec::kNone && block.bytes.size() >= in.size()) {
    block.codec = Codec::kNone;
    block.bytes.assign(InPtr(in), in.size());
  }
  return block;
}

}  // namespace strata
