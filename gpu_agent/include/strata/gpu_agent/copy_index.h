// The index math of block gather/scatter, shared by the CUDA kernels (gpu_agent/cuda/) and the
// host twin (src/host_copy_engine.cc): both compile these functions, so a test can check that
// the kernels address exactly what the twin addresses (tests/gpu).
//
// A batch copies n blocks between the engine's pool and a staging buffer: staged block i is
// pool block ids[i], in stored form (kv_pool.h): 2 × layers slices of slice_bytes, slice s =
// 2 × layer + kv. The work of a batch is n × num_slices items, one per (block, slice), each a
// contiguous copy of slice_bytes. Quantized staging (kv_quant.h's packed payload per block)
// views each staged block as vectors of head_dim elements in the same order.
//
// Pure functions on integers; no allocation, no state.
#pragma once

#include <cstdint>

#ifndef STRATA_HD  // as in strata/common/half.h
#if defined(__CUDACC__)
#define STRATA_HD __host__ __device__
#else
#define STRATA_HD
#endif
#endif

namespace strata::gpu_agent::index {

// Address of slice `slice` of pool block `block_id`.
STRATA_HD inline uint64_t PoolSliceAddress(const uint64_t* slice_bases, uint64_t block_stride,
                                           uint32_t slice, uint32_t block_id) {
  return slice_bases[slice] + static_cast<uint64_t>(block_id) * block_stride;
}

// Byte offset of slice `slice` of staged block `batch_index` in a (plain) staging buffer.
STRATA_HD inline uint64_t StagedSliceOffset(uint64_t slice_bytes, uint32_t num_slices,
                                            uint32_t batch_index, uint32_t slice) {
  return (static_cast<uint64_t>(batch_index) * num_slices + slice) * slice_bytes;
}

// Work item `item` of a batch (0 <= item < n × num_slices): which staged block and slice.
// Items of one block are adjacent, so consecutive items read consecutive staging bytes.
STRATA_HD inline void SplitWorkItem(uint64_t item, uint32_t num_slices, uint32_t* batch_index,
                                    uint32_t* slice) {
  *batch_index = static_cast<uint32_t>(item / num_slices);
  *slice = static_cast<uint32_t>(item % num_slices);
}

// Quantized staging (kv_quant.h): a block of `vectors` vectors of head_dim elements packs to
// [vectors × fp32 scale][vectors × head_dim one-byte codes]; packed blocks follow each other
// every `packed_bytes`.
STRATA_HD inline uint64_t PackedScaleOffset(uint64_t packed_bytes, uint32_t batch_index,
                                            uint64_t vector) {
  return static_cast<uint64_t>(batch_index) * packed_bytes + vector * 4;
}
STRATA_HD inline uint64_t PackedCodeOffset(uint64_t packed_bytes, uint64_t vectors,
                                           uint32_t head_dim, uint32_t batch_index,
                                           uint64_t vector) {
  return static_cast<uint64_t>(batch_index) * packed_bytes + vectors * 4 + vector * head_dim;
}

}  // namespace strata::gpu_agent::index
