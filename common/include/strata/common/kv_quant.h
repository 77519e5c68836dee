// Lossy KV-cache quantization, opt-in per tier: fp16/bf16 blocks become int8 or fp8-e4m3
// codes with one fp32 scale per vector of head_dim elements (one (token, head) vector of K or
// V). The block is viewed as consecutive vectors of head_dim elements, whatever its layout.
//
//   int8:     scale = max|x| / 127, code = round_half_even(x × (127 / max|x|)) clamped to
//             [-127, 127] (two's complement byte), restored x' = code × scale.
//   fp8-e4m3: scale = max|x| / 448, code = e4m3(x × (448 / max|x|)) (round to nearest even,
//             saturating, see half.h), restored x' = e4m3_value(code) × scale.
//   All arithmetic is fp32; x' is rounded (nearest even) back to the source dtype. A vector
//   with max|x| < 2^-100 (all zeros, or bf16 specks) has scale 0 and codes 0, and restores
//   to zeros.
//
// Packed payload (what the stored-block format keeps, see docs/design/codecs.md):
//   [num_vectors × fp32 scale, little-endian][num_elements × 1-byte code]
// where num_elements = original bytes / 2 and num_vectors = num_elements / head_dim.
//
// Stateless functions; thread-safe. None of them blocks.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "strata/common/kv_shape.h"

namespace strata {

// On-disk values (stored_block.h records them): never renumber.
enum class KvQuant : uint8_t { kNone = 0, kInt8 = 1, kFp8E4M3 = 2 };

// "none", "int8", "fp8-e4m3" (also "fp8"), case-insensitive. INVALID_ARGUMENT listing them.
absl::StatusOr<KvQuant> ParseKvQuant(std::string_view name);
// "none", "int8", "fp8-e4m3". REQUIRES: a declared enumerator.
std::string_view KvQuantName(KvQuant method);

struct KvQuantSpec {
  KvQuant method = KvQuant::kNone;
  KvDtype dtype = KvDtype::kFp16;  // source element type: kFp16 or kBf16
  uint32_t head_dim = 0;           // elements per scaled vector
};

// The largest head_dim the stored-block header can record.
inline constexpr uint32_t kMaxQuantHeadDim = 65535;

// OK when `spec` can quantize a block of `original_bytes`: method is int8 or fp8-e4m3, dtype
// fp16 or bf16, 1 <= head_dim <= kMaxQuantHeadDim, and original_bytes a multiple of
// head_dim × 2. INVALID_ARGUMENT saying which condition fails otherwise.
absl::Status ValidateKvQuantSpec(const KvQuantSpec& spec, uint64_t original_bytes);

// Bytes of the packed payload for a block of `original_bytes`.
// REQUIRES: ValidateKvQuantSpec(spec, original_bytes).ok().
uint64_t QuantizedPayloadSize(const KvQuantSpec& spec, uint64_t original_bytes);

// Quantizes `original` (fp16/bf16 elements, host byte order) and appends the packed payload
// to *payload. INVALID_ARGUMENT for an invalid spec (ValidateKvQuantSpec) or when the block
// holds a NaN or an infinity (no scale represents it; callers store such blocks losslessly).
// On error *payload is left as it was.
absl::Status QuantizeKv(const KvQuantSpec& spec, std::span<const uint8_t> original,
                        std::string* payload);

// Restores fp16/bf16 bytes from a packed payload into `out`, which must be exactly the
// original block size. INVALID_ARGUMENT for an invalid spec or when payload.size() is not
// QuantizedPayloadSize(spec, out.size()). Any payload bytes are safe to decode (they only
// change the restored values). Writes only within `out`.
absl::Status DequantizeKv(const KvQuantSpec& spec, std::span<const uint8_t> payload,
                          std::span<uint8_t> out);

// How far `restored` is from `original` (both fp16 or bf16 blocks of `dtype`, viewed as
// vectors of head_dim elements). Errors are absolute, in element units.
struct QuantErrorStats {
  double max_abs_error = 0;
  double mean_abs_error = 0;
  // max over vectors of (max |error| in the vector) / (max |x| in the vector): the error
  // relative to the vector's own range (0 for all-zero vectors restored exactly).
  double max_relative_error = 0;
  double mean_vector_cosine = 1;  // mean over vectors of cos(original, restored)
  double min_vector_cosine = 1;   // the worst vector
  double global_cosine = 1;       // the whole block as one vector
  uint64_t vectors = 0;
};

// INVALID_ARGUMENT when the sizes differ, dtype is not fp16/bf16, head_dim is 0 or the size
// is not a multiple of head_dim elements. A zero vector has cosine 1 against a zero vector
// and 0 against a non-zero one. NaN elements make the statistics NaN.
absl::StatusOr<QuantErrorStats> MeasureQuantError(std::span<const uint8_t> original,
                                                  std::span<const uint8_t> restored, KvDtype dtype,
                                                  uint32_t head_dim);

}  // namespace strata
