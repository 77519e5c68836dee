// Launchers of the CUDA copy engine's kernels (copy_kernels.cu): block gather/scatter between
// an engine's KV pool and staging memory, plain or with fused quantization, and a probe of the
// index math for tests. A C++ interface over the CUDA runtime's C API only, so that the engine
// (cuda_copy_engine.cc) and tests compile it with g++ while absl and the rest of Strata never
// pass through nvcc.
//
// Every pointer handed to a launcher must be usable by the device in the current context:
// device memory, or pinned host memory through its device address (mapped; under unified
// addressing the host address itself). The launchers only enqueue work on `stream` and return
// the launch's error; they never synchronize. Stateless; thread-safe.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "strata/gpu_agent/copy_index.h"

namespace strata::gpu_agent::cuda {

// A pool as the kernels index it (copy_index.h): KvPool's fields, its slice table copied to
// device memory.
struct PoolView {
  const uint64_t* slice_bases = nullptr;  // device memory, num_slices entries
  uint64_t block_stride = 0;
  uint64_t slice_bytes = 0;
  uint32_t num_slices = 0;
};

enum class QuantCode : uint8_t { kInt8, kFp8E4M3 };
enum class SourceType : uint8_t { kFp16, kBf16 };

// The packed payload of one block (kv_quant.h): vectors_per_block vectors of head_dim
// elements, vectors_per_slice of them in each slice.
struct QuantView {
  QuantCode code = QuantCode::kInt8;
  SourceType source = SourceType::kFp16;
  uint32_t head_dim = 0;
  uint64_t vectors_per_slice = 0;  // slice_bytes / 2 / head_dim
  uint64_t vectors_per_block = 0;  // num_slices × vectors_per_slice
  uint64_t packed_bytes = 0;       // QuantizedPayloadSize of one block
  // The bits of the host's default NaN (what 0 × inf gives on the CPU that runs DequantizeKv):
  // dequantizing a payload with NaN or infinite scales then restores the host's bytes exactly.
  uint32_t host_default_nan = 0x7fc00000u;
};

// Initial value of a bad-element entry: "no NaN or infinity in this block".
inline constexpr unsigned long long kNoBadElement = ~0ull;

// A grid of at most max_ctas thread blocks (a few per multiprocessor) that loops over the work.

// Pool block ids[i] → staging + i × num_slices × slice_bytes, for i < count. ids: device memory.
cudaError_t LaunchGather(const PoolView& pool, const uint32_t* ids, uint32_t count,
                         uint8_t* staging, int max_ctas, cudaStream_t stream);
// staging + i × num_slices × slice_bytes → pool block ids[i].
cudaError_t LaunchScatter(const PoolView& pool, const uint8_t* staging, const uint32_t* ids,
                          uint32_t count, int max_ctas, cudaStream_t stream);
// Pool block ids[i] → its packed payload at staging + i × packed_bytes. A block holding NaN or
// infinity lowers bad_elements[i] (device memory, count entries, each preset to kNoBadElement)
// to the index, within the block in stored order, of its first such element; its payload is
// then unspecified.
cudaError_t LaunchGatherQuantized(const PoolView& pool, const QuantView& quant, const uint32_t* ids,
                                  uint32_t count, uint8_t* staging,
                                  unsigned long long* bad_elements, int max_ctas,
                                  cudaStream_t stream);
// The packed payload at staging + i × packed_bytes → pool block ids[i], restored.
cudaError_t LaunchScatterDequantized(const PoolView& pool, const QuantView& quant,
                                     const uint8_t* staging, const uint32_t* ids, uint32_t count,
                                     int max_ctas, cudaStream_t stream);

// What copy_index.h gives for work item `item`, evaluated on the device (tests compare it with
// the host's evaluation): SplitWorkItem(item) → batch_index, slice; pool_address =
// PoolSliceAddress(slice, ProbeBlockId(batch_index)); staged_offset = StagedSliceOffset;
// scale_offset / code_offset = PackedScaleOffset / PackedCodeOffset(batch_index, vector =
// item % vectors).
struct IndexProbe {
  uint32_t batch_index = 0;
  uint32_t slice = 0;
  uint64_t pool_address = 0;
  uint64_t staged_offset = 0;
  uint64_t scale_offset = 0;
  uint64_t code_offset = 0;
};

// The pool block id the probe pairs with a batch index (a multiplicative hash, wrapping), so
// that large ids are exercised without an id array.
STRATA_HD inline uint32_t ProbeBlockId(uint32_t batch_index) { return batch_index * 2654435761u; }

// Items first_item .. first_item + count - 1 → out[0 .. count) (device memory).
cudaError_t LaunchIndexProbe(const PoolView& pool, uint64_t packed_bytes, uint64_t vectors,
                             uint32_t head_dim, uint64_t first_item, uint32_t count,
                             IndexProbe* out, cudaStream_t stream);

}  // namespace strata::gpu_agent::cuda
