#include "strata/common/stored_block.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "strata/common/checksum.h"

namespace strata {
namespace {

// Field offsets; the table in stored_block.h and docs/design/codecs.md is the contract.
constexpr size_t kOffMagic = 0;
constexpr size_t kOffVersion = 4;
constexpr size_t kOffCodec = 6;
constexpr size_t kOffQuant = 7;
constexpr size_t kOffQuantDtype = 8;
constexpr size_t kOffFlags = 9;
constexpr size_t kOffHeadDim = 10;
constexpr size_t kOffLayoutId = 12;
constexpr size_t kOffOriginalSize = 16;
constexpr size_t kOffStoredSize = 24;
constexpr size_t kOffChecksum = 32;
constexpr size_t kOffPayloadChecksum = 40;
constexpr size_t kOffStoredChecksum = 48;
constexpr size_t kOffReserved = 56;
constexpr size_t kOffHeaderChecksum = 60;
static_assert(kOffHeaderChecksum + 4 == kStoredBlockHeaderSize);

// quant_dtype byte values: our own numbering, independent of KvDtype's enumerator order.
constexpr uint8_t kQuantDtypeNone = 0;
constexpr uint8_t kQuantDtypeFp16 = 1;
constexpr uint8_t kQuantDtypeBf16 = 2;

template <typename T>
void PutLe(uint8_t* p, T v) {
  for (size_t i = 0; i < sizeof(T); ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}

template <typename T>
T GetLe(const uint8_t* p) {
  T v = 0;
  for (size_t i = 0; i < sizeof(T); ++i) v |= static_cast<T>(static_cast<T>(p[i]) << (8 * i));
  return v;
}

uint32_t HeaderChecksum(const uint8_t* header) {
  return static_cast<uint32_t>(BlockChecksum(header, kOffHeaderChecksum));
}

// Writes the header for `h` into dst[0, kStoredBlockHeaderSize); the stored bytes must already
// sit behind it (their size and checksum are taken from there).
void WriteHeader(const StoredBlockHeader& h, uint64_t stored_size, uint8_t* dst) {
  std::memset(dst, 0, kStoredBlockHeaderSize);
  std::memcpy(dst + kOffMagic, kStoredBlockMagic, sizeof(kStoredBlockMagic));
  PutLe<uint16_t>(dst + kOffVersion, kStoredBlockFormatVersion);
  dst[kOffCodec] = static_cast<uint8_t>(h.codec);
  dst[kOffQuant] = static_cast<uint8_t>(h.quant.method);
  if (h.quant.method != KvQuant::kNone) {
    dst[kOffQuantDtype] = h.quant.dtype == KvDtype::kBf16 ? kQuantDtypeBf16 : kQuantDtypeFp16;
    PutLe<uint16_t>(dst + kOffHeadDim, static_cast<uint16_t>(h.quant.head_dim));
  }
  PutLe<uint32_t>(dst + kOffLayoutId, h.layout_id);
  PutLe<uint64_t>(dst + kOffOriginalSize, h.original_size);
  PutLe<uint64_t>(dst + kOffStoredSize, stored_size);
  PutLe<uint64_t>(dst + kOffChecksum, h.checksum);
  PutLe<uint64_t>(dst + kOffPayloadChecksum, h.payload_checksum);
  PutLe<uint64_t>(dst + kOffStoredChecksum,
                  BlockChecksum(dst + kStoredBlockHeaderSize, stored_size));
  PutLe<uint32_t>(dst + kOffHeaderChecksum, HeaderChecksum(dst));
}

absl::Status Corrupt(absl::string_view what) {
  return absl::DataLossError(absl::StrCat("stored block: ", what));
}

// The size of the payload (what the codec decodes to). REQUIRES: a decoded header.
uint64_t PayloadSize(const StoredBlockHeader& h) {
  return h.quant.method == KvQuant::kNone ? h.original_size
                                          : QuantizedPayloadSize(h.quant, h.original_size);
}

absl::Status CheckStoredChecksum(const StoredBlockView& view) {
  const uint64_t got = BlockChecksum(view.stored.data(), view.stored.size());
  if (got != view.header.stored_checksum) {
    return Corrupt(absl::StrFormat("stored bytes checksum mismatch (stored %016x, computed %016x)",
                                   view.header.stored_checksum, got));
  }
  return absl::OkStatus();
}

}  // namespace

std::string EncodeStoredBlock(const StoredBlockHeader& header, std::span<const uint8_t> stored) {
  std::string value(kStoredBlockHeaderSize + stored.size(), '\0');
  auto* dst = reinterpret_cast<uint8_t*>(value.data());
  if (!stored.empty()) std::memcpy(dst + kStoredBlockHeaderSize, stored.data(), stored.size());
  WriteHeader(header, stored.size(), dst);
  return value;
}

absl::StatusOr<StoredBlockView> DecodeStoredBlock(std::span<const uint8_t> value) {
  if (value.size() < kStoredBlockHeaderSize) {
    return Corrupt(absl::StrCat("value is ", value.size(), " bytes, shorter than the ",
                                kStoredBlockHeaderSize, "-byte header"));
  }
  const uint8_t* p = value.data();
  if (std::memcmp(p + kOffMagic, kStoredBlockMagic, sizeof(kStoredBlockMagic)) != 0) {
    return Corrupt(
        absl::StrFormat("bad magic %02x%02x%02x%02x (expected \"SKV1\")", p[0], p[1], p[2], p[3]));
  }
  StoredBlockView view;
  StoredBlockHeader& h = view.header;
  h.format_version = GetLe<uint16_t>(p + kOffVersion);
  if (h.format_version != kStoredBlockFormatVersion) {
    return Corrupt(absl::StrCat("unsupported format_version ", h.format_version,
                                " (this build reads ", kStoredBlockFormatVersion, ")"));
  }
  const uint32_t want_header_checksum = GetLe<uint32_t>(p + kOffHeaderChecksum);
  const uint32_t got_header_checksum = HeaderChecksum(p);
  if (want_header_checksum != got_header_checksum) {
    return Corrupt(absl::StrFormat("header checksum mismatch (stored %08x, computed %08x)",
                                   want_header_checksum, got_header_checksum));
  }
  // Past this point the header is what some writer wrote; the checks below catch writers
  // that break the format (and hostile values with a recomputed header checksum).
  if (p[kOffFlags] != 0 || GetLe<uint32_t>(p + kOffReserved) != 0) {
    return Corrupt("reserved header fields are not zero");
  }
  if (!IsKnownCodec(p[kOffCodec])) return Corrupt(absl::StrCat("unknown codec ", p[kOffCodec]));
  h.codec = static_cast<Codec>(p[kOffCodec]);
  const uint8_t quant = p[kOffQuant];
  const uint8_t quant_dtype = p[kOffQuantDtype];
  const uint16_t head_dim = GetLe<uint16_t>(p + kOffHeadDim);
  if (quant > static_cast<uint8_t>(KvQuant::kFp8E4M3)) {
    return Corrupt(absl::StrCat("unknown quantization ", quant));
  }
  h.quant.method = static_cast<KvQuant>(quant);
  if (h.quant.method == KvQuant::kNone) {
    h.quant.dtype = KvDtype::kFp16;
    h.quant.head_dim = 0;
    if (quant_dtype != kQuantDtypeNone || head_dim != 0) {
      return Corrupt("quant_dtype/head_dim set on an unquantized block");
    }
  } else {
    if (quant_dtype != kQuantDtypeFp16 && quant_dtype != kQuantDtypeBf16) {
      return Corrupt(absl::StrCat("unknown quant_dtype ", quant_dtype));
    }
    h.quant.dtype = quant_dtype == kQuantDtypeBf16 ? KvDtype::kBf16 : KvDtype::kFp16;
    h.quant.head_dim = head_dim;
  }
  h.layout_id = GetLe<uint32_t>(p + kOffLayoutId);
  h.original_size = GetLe<uint64_t>(p + kOffOriginalSize);
  h.stored_size = GetLe<uint64_t>(p + kOffStoredSize);
  h.checksum = GetLe<uint64_t>(p + kOffChecksum);
  h.payload_checksum = GetLe<uint64_t>(p + kOffPayloadChecksum);
  h.stored_checksum = GetLe<uint64_t>(p + kOffStoredChecksum);

  const uint64_t after_header = value.size() - kStoredBlockHeaderSize;
  if (h.stored_size != after_header) {
    return Corrupt(absl::StrCat("stored_size is ", h.stored_size, " but ", after_header,
                                " bytes follow the header (truncated or padded value)"));
  }
  if (h.original_size > kMaxStoredBlockOriginalSize) {
    return Corrupt(absl::StrCat("original_size ", h.original_size, " exceeds the limit ",
                                kMaxStoredBlockOriginalSize));
  }
  if (h.quant.method != KvQuant::kNone) {
    if (absl::Status s = ValidateKvQuantSpec(h.quant, h.original_size); !s.ok()) {
      return Corrupt(absl::StrCat("quantization fields do not fit original_size: ", s.message()));
    }
  } else if (h.checksum != h.payload_checksum) {
    return Corrupt("checksum and payload_checksum differ on a lossless block");
  }
  const uint64_t payload_size = PayloadSize(h);
  if (payload_size > h.original_size) {
    // No writer stores such a block (PackBlock refuses it), and decoding one would allocate
    // up to 2.5 times original_size for the quantized payload.
    return Corrupt(absl::StrCat("quantized payload of ", payload_size,
                                " bytes is larger than the block's ", h.original_size,
                                " (head_dim ", h.quant.head_dim, ")"));
  }
  if (h.codec == Codec::kNone && h.stored_size != payload_size) {
    return Corrupt(absl::StrCat("raw payload of ", payload_size, " bytes stored in ", h.stored_size,
                                " bytes"));
  }
  if (payload_size > MaxDecompressedSize(h.codec, h.stored_size)) {
    return Corrupt(absl::StrCat(std::string(CodecName(h.codec)), " cannot expand ", h.stored_size,
                                " bytes to ", payload_size));
  }
  view.stored = value.subspan(kStoredBlockHeaderSize);
  return view;
}

absl::StatusOr<StoredBlockView> VerifyStoredBlock(std::span<const uint8_t> value) {
  absl::StatusOr<StoredBlockView> view = DecodeStoredBlock(value);
  if (!view.ok()) return view;
  if (absl::Status s = CheckStoredChecksum(*view); !s.ok()) return s;
  return view;
}

absl::StatusOr<std::string> PackBlock(std::span<const uint8_t> original, Codec codec,
                                      const KvQuantSpec& quant, uint32_t layout_id, int level) {
  if (original.size() > kMaxStoredBlockOriginalSize) {
    return absl::InvalidArgumentError(absl::StrCat("block of ", original.size(),
                                                   " bytes exceeds the stored block limit ",
                                                   kMaxStoredBlockOriginalSize));
  }
  StoredBlockHeader header;
  header.codec = codec;
  header.quant = quant;
  header.layout_id = layout_id;
  header.original_size = original.size();
  header.checksum = BlockChecksum(original.data(), original.size());

  std::string quantized;
  std::span<const uint8_t> payload = original;
  if (quant.method != KvQuant::kNone) {
    if (absl::Status s = ValidateKvQuantSpec(quant, original.size()); !s.ok()) return s;
    if (const uint64_t size = QuantizedPayloadSize(quant, original.size());
        size > original.size()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "quantization with head_dim ", quant.head_dim, " stores ", size, " bytes for a block of ",
          original.size(), ", more than the block itself (head_dim must be at least 4)"));
    }
    if (absl::Status s = QuantizeKv(quant, original, &quantized); !s.ok()) return s;
    payload = {reinterpret_cast<const uint8_t*>(quantized.data()), quantized.size()};
  }
  header.payload_checksum = BlockChecksum(payload.data(), payload.size());

  // Compress straight into the value, behind room for the header.
  std::string value(kStoredBlockHeaderSize, '\0');
  if (absl::Status s = CompressAppend(codec, payload, level, &value); !s.ok()) return s;
  if (codec != Codec::kNone && value.size() - kStoredBlockHeaderSize >= payload.size()) {
    header.codec = Codec::kNone;
    value.resize(kStoredBlockHeaderSize);
    value.append(reinterpret_cast<const char*>(payload.data()), payload.size());
  }
  WriteHeader(header, value.size() - kStoredBlockHeaderSize,
              reinterpret_cast<uint8_t*>(value.data()));
  return value;
}

absl::Status UnpackBlockInto(std::span<const uint8_t> value, std::span<uint8_t> out,
                             StoredBlockHeader* header_out) {
  absl::StatusOr<StoredBlockView> view = DecodeStoredBlock(value);
  if (!view.ok()) return view.status();
  const StoredBlockHeader& h = view->header;
  if (out.size() != h.original_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("output buffer is ", out.size(), " bytes; the block is ", h.original_size));
  }
  if (absl::Status s = CheckStoredChecksum(*view); !s.ok()) return s;
  const bool lossy = h.quant.method != KvQuant::kNone;
  // A lossless payload decodes straight into `out`; a raw lossy one is read in place.
  std::vector<uint8_t> decoded;
  std::span<const uint8_t> payload;
  if (!lossy) {
    if (absl::Status s = Decompress(h.codec, view->stored, out); !s.ok()) return s;
    payload = out;
  } else if (h.codec == Codec::kNone) {
    payload = view->stored;
  } else {
    decoded.resize(PayloadSize(h));
    if (absl::Status s = Decompress(h.codec, view->stored, decoded); !s.ok()) return s;
    payload = decoded;
  }
  const uint64_t got = BlockChecksum(payload.data(), payload.size());
  if (got != h.payload_checksum) {
    return absl::DataLossError(
        absl::StrFormat("stored block: %s checksum mismatch (stored %016x, decoded payload %016x)",
                        lossy ? "quantized payload" : "block", h.payload_checksum, got));
  }
  if (lossy) {
    if (absl::Status s = DequantizeKv(h.quant, payload, out); !s.ok()) {
      // DecodeStoredBlock validated the sizes, so this is a bug rather than bad data.
      return absl::InternalError(absl::StrCat("stored block: ", s.message()));
    }
  }
  if (header_out != nullptr) *header_out = h;
  return absl::OkStatus();
}

absl::Status UnpackBlock(std::span<const uint8_t> value, std::vector<uint8_t>* original_out,
                         StoredBlockHeader* header_out) {
  absl::StatusOr<StoredBlockView> view = DecodeStoredBlock(value);
  if (!view.ok()) {
    original_out->clear();
    return view.status();
  }
  original_out->resize(view->header.original_size);
  absl::Status s = UnpackBlockInto(value, *original_out, header_out);
  if (!s.ok()) original_out->clear();
  return s;
}

}  // namespace strata
