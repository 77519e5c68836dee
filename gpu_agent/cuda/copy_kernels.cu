// The CUDA copy engine's kernels (launch API and contracts in copy_kernels.h).
//
// Plain gather/scatter: one thread block per work item (copy_index.h: one slice of one staged
// block, a contiguous run of slice_bytes on both sides), grid-stride over the items. A run
// whose two ends and length are 16-byte aligned moves as 16-byte vectors, four loads in flight
// per thread before their stores (a load of mapped host memory costs a PCIe round trip);
// anything else moves byte by byte.
//
// Quantized: one warp per head_dim vector, eight vectors (a thread block) at a time. The warp
// finds the vector's largest magnitude (an integer max over the bit patterns, as kv_quant.cc
// does), computes scale and inverse, then writes the codes; the eight scales of a thread block
// are written (or read) together by its first eight threads, so consecutive scales make one
// transaction instead of eight. Vectors whose head_dim is a multiple of 4 and whose ends are
// aligned move 4 elements per lane at a time; others element by element. The arithmetic is
// kv_quant_math.h's, which reproduces QuantizeKv / DequantizeKv bit for bit.
#include <cstdint>

#include "copy_kernels.h"
#include "kv_quant_math.h"
#include "strata/gpu_agent/copy_index.h"

namespace strata::gpu_agent::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr unsigned kFullMask = 0xffffffffu;

__device__ inline uint64_t Address(const void* p) { return reinterpret_cast<uintptr_t>(p); }

__device__ inline const uint8_t* PoolSlice(const PoolView& pool, uint32_t slice, uint32_t block) {
  return reinterpret_cast<const uint8_t*>(
      index::PoolSliceAddress(pool.slice_bases, pool.block_stride, slice, block));
}

// All threads of the block copy `bytes` from src to dst.
__device__ void CopyRun(uint8_t* dst, const uint8_t* src, uint64_t bytes) {
  if (((Address(dst) | Address(src) | bytes) & 15) == 0) {
    const uint4* s = reinterpret_cast<const uint4*>(src);
    uint4* d = reinterpret_cast<uint4*>(dst);
    const uint64_t n = bytes / 16;
    uint64_t i = threadIdx.x;
    for (; i + 3 * kThreads < n; i += 4 * kThreads) {
      const uint4 a = s[i];
      const uint4 b = s[i + kThreads];
      const uint4 c = s[i + 2 * kThreads];
      const uint4 e = s[i + 3 * kThreads];
      d[i] = a;
      d[i + kThreads] = b;
      d[i + 2 * kThreads] = c;
      d[i + 3 * kThreads] = e;
    }
    for (; i < n; i += kThreads) d[i] = s[i];
    return;
  }
  for (uint64_t i = threadIdx.x; i < bytes; i += kThreads) dst[i] = src[i];
}

__global__ void __launch_bounds__(kThreads)
    GatherKernel(PoolView pool, const uint32_t* __restrict__ ids, uint64_t items,
                 uint8_t* staging) {
  for (uint64_t item = blockIdx.x; item < items; item += gridDim.x) {
    uint32_t batch_index, slice;
    index::SplitWorkItem(item, pool.num_slices, &batch_index, &slice);
    CopyRun(
        staging + index::StagedSliceOffset(pool.slice_bytes, pool.num_slices, batch_index, slice),
        PoolSlice(pool, slice, ids[batch_index]), pool.slice_bytes);
  }
}

__global__ void __launch_bounds__(kThreads)
    ScatterKernel(PoolView pool, const uint8_t* staging, const uint32_t* __restrict__ ids,
                  uint64_t items) {
  for (uint64_t item = blockIdx.x; item < items; item += gridDim.x) {
    uint32_t batch_index, slice;
    index::SplitWorkItem(item, pool.num_slices, &batch_index, &slice);
    uint8_t* dst = const_cast<uint8_t*>(PoolSlice(pool, slice, ids[batch_index]));
    CopyRun(
        dst,
        staging + index::StagedSliceOffset(pool.slice_bytes, pool.num_slices, batch_index, slice),
        pool.slice_bytes);
  }
}

// ---- quantized ---------------------------------------------------------------------------

__device__ inline uint32_t WarpMax(uint32_t v) {
  for (int offset = 16; offset > 0; offset /= 2) v = max(v, __shfl_xor_sync(kFullMask, v, offset));
  return v;
}

__device__ inline uint32_t WarpMin(uint32_t v) {
  for (int offset = 16; offset > 0; offset /= 2) v = min(v, __shfl_xor_sync(kFullMask, v, offset));
  return v;
}

// Element i of a vector at any 1-byte alignment.
__device__ inline uint16_t LoadElement(const uint8_t* p, uint32_t i) {
  return static_cast<uint16_t>(p[2 * i] | (p[2 * i + 1] << 8));
}

__device__ inline void StoreElement(uint8_t* p, uint32_t i, uint16_t bits) {
  p[2 * i] = static_cast<uint8_t>(bits);
  p[2 * i + 1] = static_cast<uint8_t>(bits >> 8);
}

// Scales are little-endian fp32 at any 1-byte alignment (payloads follow each other every
// packed_bytes, which need not be a multiple of 4).
__device__ inline float LoadScale(const uint8_t* p) {
  if ((Address(p) & 3) == 0) return *reinterpret_cast<const float*>(p);
  return __uint_as_float(p[0] | (p[1] << 8) | (p[2] << 16) | (static_cast<uint32_t>(p[3]) << 24));
}

__device__ inline void StoreScale(uint8_t* p, float scale) {
  if ((Address(p) & 3) == 0) {
    *reinterpret_cast<float*>(p) = scale;
    return;
  }
  const uint32_t bits = __float_as_uint(scale);
  for (int i = 0; i < 4; ++i) p[i] = static_cast<uint8_t>(bits >> (8 * i));
}

__device__ inline uint32_t Magnitude(uint32_t bits) { return bits & 0x7fffu; }

template <QuantCode kCode>
__device__ inline uint8_t QuantizeElement(float x, float inv) {
  if constexpr (kCode == QuantCode::kInt8) {
    return QuantizeInt8(x, inv);
  } else {
    return QuantizeFp8E4M3(x, inv);
  }
}

template <typename Element, QuantCode kCode>
__device__ inline uint16_t DequantizeElement(uint8_t code, float scale, uint32_t default_nan) {
  if constexpr (kCode == QuantCode::kInt8) {
    return DequantizeInt8<Element>(code, scale, default_nan);
  } else {
    return DequantizeFp8E4M3<Element>(code, scale, default_nan);
  }
}

// Where vector `vector` of the batch (all staged blocks' vectors in order) lies.
struct VectorPlace {
  uint32_t batch_index;
  uint64_t vector;  // within its block
  uint32_t slice;
  uint64_t in_slice;  // within its slice
};

__device__ inline VectorPlace PlaceVector(const QuantView& q, uint64_t global_vector) {
  VectorPlace p;
  p.batch_index = static_cast<uint32_t>(global_vector / q.vectors_per_block);
  p.vector = global_vector % q.vectors_per_block;
  p.slice = static_cast<uint32_t>(p.vector / q.vectors_per_slice);
  p.in_slice = p.vector % q.vectors_per_slice;
  return p;
}

// The calling warp quantizes one vector of head_dim elements at `src` into `codes` and
// returns its scale (every lane). A vector holding NaN or infinity lowers *bad to the index
// of its first such element (first_element + position) and leaves its codes unwritten.
template <typename Element, QuantCode kCode>
__device__ float QuantizeVector(const uint8_t* src, uint8_t* codes, uint32_t head_dim,
                                unsigned long long* bad, uint64_t first_element) {
  const uint32_t lane = threadIdx.x % 32;
  const bool by4 = head_dim % 4 == 0 && (Address(src) & 7) == 0 && (Address(codes) & 3) == 0;
  const uint32_t quads = head_dim / 4;
  uint32_t max_magnitude = 0;
  if (by4) {
    for (uint32_t c = lane; c < quads; c += 32) {
      const uint2 w = reinterpret_cast<const uint2*>(src)[c];
      max_magnitude = max(max_magnitude, max(max(Magnitude(w.x), Magnitude(w.x >> 16)),
                                             max(Magnitude(w.y), Magnitude(w.y >> 16))));
    }
  } else {
    for (uint32_t i = lane; i < head_dim; i += 32) {
      max_magnitude = max(max_magnitude, Magnitude(LoadElement(src, i)));
    }
  }
  max_magnitude = WarpMax(max_magnitude);

  if (max_magnitude >= Element::kInfBits) {
    uint32_t first = 0xffffffffu;
    for (uint32_t i = lane; i < head_dim; i += 32) {
      if (Magnitude(LoadElement(src, i)) >= Element::kInfBits) {
        first = i;
        break;
      }
    }
    first = WarpMin(first);
    if (lane == 0) atomicMin(bad, first_element + first);
    return 0.0f;
  }

  const float amax = Element::ToFloat(static_cast<uint16_t>(max_magnitude));
  if (amax < kQuantFlushBelow) {
    if (by4) {
      for (uint32_t c = lane; c < quads; c += 32) reinterpret_cast<uint32_t*>(codes)[c] = 0;
    } else {
      for (uint32_t i = lane; i < head_dim; i += 32) codes[i] = 0;
    }
    return 0.0f;
  }
  const float code_max = kCode == QuantCode::kInt8 ? kInt8CodeMax : kFp8E4M3Max;
  const float scale = DivRn(amax, code_max);
  const float inv = DivRn(code_max, amax);
  if (by4) {
    for (uint32_t c = lane; c < quads; c += 32) {
      const uint2 w = reinterpret_cast<const uint2*>(src)[c];
      const uint32_t c0 = QuantizeElement<kCode>(Element::ToFloat(static_cast<uint16_t>(w.x)), inv);
      const uint32_t c1 =
          QuantizeElement<kCode>(Element::ToFloat(static_cast<uint16_t>(w.x >> 16)), inv);
      const uint32_t c2 = QuantizeElement<kCode>(Element::ToFloat(static_cast<uint16_t>(w.y)), inv);
      const uint32_t c3 =
          QuantizeElement<kCode>(Element::ToFloat(static_cast<uint16_t>(w.y >> 16)), inv);
      const uint32_t packed = c0 | (c1 << 8) | (c2 << 16) | (c3 << 24);
      reinterpret_cast<uint32_t*>(codes)[c] = packed;
    }
  } else {
    for (uint32_t i = lane; i < head_dim; i += 32) {
      codes[i] = QuantizeElement<kCode>(Element::ToFloat(LoadElement(src, i)), inv);
    }
  }
  return scale;
}

template <typename Element, QuantCode kCode>
__device__ void DequantizeVector(const uint8_t* codes, uint8_t* dst, float scale, uint32_t head_dim,
                                 uint32_t default_nan) {
  const uint32_t lane = threadIdx.x % 32;
  if (head_dim % 4 == 0 && (Address(dst) & 7) == 0 && (Address(codes) & 3) == 0) {
    for (uint32_t c = lane; c < head_dim / 4; c += 32) {
      const uint32_t w = reinterpret_cast<const uint32_t*>(codes)[c];
      const uint32_t e0 =
          DequantizeElement<Element, kCode>(static_cast<uint8_t>(w), scale, default_nan);
      const uint32_t e1 =
          DequantizeElement<Element, kCode>(static_cast<uint8_t>(w >> 8), scale, default_nan);
      const uint32_t e2 =
          DequantizeElement<Element, kCode>(static_cast<uint8_t>(w >> 16), scale, default_nan);
      const uint32_t e3 =
          DequantizeElement<Element, kCode>(static_cast<uint8_t>(w >> 24), scale, default_nan);
      uint2 out;
      out.x = e0 | (e1 << 16);
      out.y = e2 | (e3 << 16);
      reinterpret_cast<uint2*>(dst)[c] = out;
    }
    return;
  }
  for (uint32_t i = lane; i < head_dim; i += 32) {
    StoreElement(dst, i, DequantizeElement<Element, kCode>(codes[i], scale, default_nan));
  }
}

template <typename Element, QuantCode kCode>
__global__ void __launch_bounds__(kThreads)
    GatherQuantizedKernel(PoolView pool, QuantView q, const uint32_t* __restrict__ ids,
                          uint32_t count, uint8_t* staging, unsigned long long* bad_elements) {
  __shared__ float scales[kWarps];
  const uint32_t warp = threadIdx.x / 32;
  const uint64_t vectors = static_cast<uint64_t>(count) * q.vectors_per_block;
  const uint64_t groups = (vectors + kWarps - 1) / kWarps;
  for (uint64_t group = blockIdx.x; group < groups; group += gridDim.x) {
    const uint64_t v = group * kWarps + warp;
    float scale = 0.0f;
    if (v < vectors) {  // uniform across the warp
      const VectorPlace p = PlaceVector(q, v);
      const uint8_t* src =
          PoolSlice(pool, p.slice, ids[p.batch_index]) + p.in_slice * q.head_dim * 2;
      uint8_t* codes = staging + index::PackedCodeOffset(q.packed_bytes, q.vectors_per_block,
                                                         q.head_dim, p.batch_index, p.vector);
      scale = QuantizeVector<Element, kCode>(src, codes, q.head_dim, &bad_elements[p.batch_index],
                                             p.vector * q.head_dim);
    }
    if (threadIdx.x % 32 == 0) scales[warp] = scale;
    __syncthreads();
    const uint64_t sv = group * kWarps + threadIdx.x;
    if (threadIdx.x < kWarps && sv < vectors) {
      const VectorPlace p = PlaceVector(q, sv);
      StoreScale(staging + index::PackedScaleOffset(q.packed_bytes, p.batch_index, p.vector),
                 scales[threadIdx.x]);
    }
    __syncthreads();
  }
}

template <typename Element, QuantCode kCode>
__global__ void __launch_bounds__(kThreads)
    ScatterDequantizedKernel(PoolView pool, QuantView q, const uint8_t* staging,
                             const uint32_t* __restrict__ ids, uint32_t count) {
  __shared__ float scales[kWarps];
  const uint32_t warp = threadIdx.x / 32;
  const uint64_t vectors = static_cast<uint64_t>(count) * q.vectors_per_block;
  const uint64_t groups = (vectors + kWarps - 1) / kWarps;
  for (uint64_t group = blockIdx.x; group < groups; group += gridDim.x) {
    const uint64_t sv = group * kWarps + threadIdx.x;
    if (threadIdx.x < kWarps && sv < vectors) {
      const VectorPlace p = PlaceVector(q, sv);
      scales[threadIdx.x] =
          LoadScale(staging + index::PackedScaleOffset(q.packed_bytes, p.batch_index, p.vector));
    }
    __syncthreads();
    const uint64_t v = group * kWarps + warp;
    if (v < vectors) {
      const VectorPlace p = PlaceVector(q, v);
      uint8_t* dst = const_cast<uint8_t*>(PoolSlice(pool, p.slice, ids[p.batch_index])) +
                     p.in_slice * q.head_dim * 2;
      const uint8_t* codes = staging + index::PackedCodeOffset(q.packed_bytes, q.vectors_per_block,
                                                               q.head_dim, p.batch_index, p.vector);
      DequantizeVector<Element, kCode>(codes, dst, scales[warp], q.head_dim, q.host_default_nan);
    }
    __syncthreads();
  }
}

__global__ void IndexProbeKernel(PoolView pool, uint64_t packed_bytes, uint64_t vectors,
                                 uint32_t head_dim, uint64_t first_item, uint32_t count,
                                 IndexProbe* out) {
  const uint32_t t = blockIdx.x * blockDim.x + threadIdx.x;
  if (t >= count) return;
  const uint64_t item = first_item + t;
  IndexProbe r;
  index::SplitWorkItem(item, pool.num_slices, &r.batch_index, &r.slice);
  r.pool_address = index::PoolSliceAddress(pool.slice_bases, pool.block_stride, r.slice,
                                           ProbeBlockId(r.batch_index));
  r.staged_offset =
      index::StagedSliceOffset(pool.slice_bytes, pool.num_slices, r.batch_index, r.slice);
  r.scale_offset = index::PackedScaleOffset(packed_bytes, r.batch_index, item % vectors);
  r.code_offset =
      index::PackedCodeOffset(packed_bytes, vectors, head_dim, r.batch_index, item % vectors);
  out[t] = r;
}

// Thread blocks for `work` units (items or vector groups): no more than max_ctas, since each
// loops over the rest.
unsigned GridFor(uint64_t work, int max_ctas) {
  const uint64_t limit = max_ctas > 0 ? static_cast<uint64_t>(max_ctas) : 1;
  return static_cast<unsigned>(work < limit ? work : limit);
}

template <typename Element, QuantCode kCode>
cudaError_t LaunchQuantizedTyped(bool gather, const PoolView& pool, const QuantView& q,
                                 const uint32_t* ids, uint32_t count, uint8_t* staging,
                                 unsigned long long* bad_elements, int max_ctas,
                                 cudaStream_t stream) {
  const uint64_t groups =
      (static_cast<uint64_t>(count) * q.vectors_per_block + kWarps - 1) / kWarps;
  if (groups == 0) return cudaSuccess;
  const unsigned grid = GridFor(groups, max_ctas);
  if (gather) {
    GatherQuantizedKernel<Element, kCode>
        <<<grid, kThreads, 0, stream>>>(pool, q, ids, count, staging, bad_elements);
  } else {
    ScatterDequantizedKernel<Element, kCode>
        <<<grid, kThreads, 0, stream>>>(pool, q, staging, ids, count);
  }
  return cudaGetLastError();
}

cudaError_t LaunchQuantized(bool gather, const PoolView& pool, const QuantView& q,
                            const uint32_t* ids, uint32_t count, uint8_t* staging,
                            unsigned long long* bad_elements, int max_ctas, cudaStream_t stream) {
  const bool bf16 = q.source == SourceType::kBf16;
  if (q.code == QuantCode::kInt8) {
    return bf16 ? LaunchQuantizedTyped<Bf16Element, QuantCode::kInt8>(
                      gather, pool, q, ids, count, staging, bad_elements, max_ctas, stream)
                : LaunchQuantizedTyped<Fp16Element, QuantCode::kInt8>(
                      gather, pool, q, ids, count, staging, bad_elements, max_ctas, stream);
  }
  return bf16 ? LaunchQuantizedTyped<Bf16Element, QuantCode::kFp8E4M3>(
                    gather, pool, q, ids, count, staging, bad_elements, max_ctas, stream)
              : LaunchQuantizedTyped<Fp16Element, QuantCode::kFp8E4M3>(
                    gather, pool, q, ids, count, staging, bad_elements, max_ctas, stream);
}

}  // namespace

cudaError_t LaunchGather(const PoolView& pool, const uint32_t* ids, uint32_t count,
                         uint8_t* staging, int max_ctas, cudaStream_t stream) {
  const uint64_t items = static_cast<uint64_t>(count) * pool.num_slices;
  if (items == 0) return cudaSuccess;
  GatherKernel<<<GridFor(items, max_ctas), kThreads, 0, stream>>>(pool, ids, items, staging);
  return cudaGetLastError();
}

cudaError_t LaunchScatter(const PoolView& pool, const uint8_t* staging, const uint32_t* ids,
                          uint32_t count, int max_ctas, cudaStream_t stream) {
  const uint64_t items = static_cast<uint64_t>(count) * pool.num_slices;
  if (items == 0) return cudaSuccess;
  ScatterKernel<<<GridFor(items, max_ctas), kThreads, 0, stream>>>(pool, staging, ids, items);
  return cudaGetLastError();
}

cudaError_t LaunchGatherQuantized(const PoolView& pool, const QuantView& quant, const uint32_t* ids,
                                  uint32_t count, uint8_t* staging,
                                  unsigned long long* bad_elements, int max_ctas,
                                  cudaStream_t stream) {
  return LaunchQuantized(true, pool, quant, ids, count, staging, bad_elements, max_ctas, stream);
}

cudaError_t LaunchScatterDequantized(const PoolView& pool, const QuantView& quant,
                                     const uint8_t* staging, const uint32_t* ids, uint32_t count,
                                     int max_ctas, cudaStream_t stream) {
  return LaunchQuantized(false, pool, quant, ids, count, const_cast<uint8_t*>(staging), nullptr,
                         max_ctas, stream);
}

cudaError_t LaunchIndexProbe(const PoolView& pool, uint64_t packed_bytes, uint64_t vectors,
                             uint32_t head_dim, uint64_t first_item, uint32_t count,
                             IndexProbe* out, cudaStream_t stream) {
  if (count == 0) return cudaSuccess;
  IndexProbeKernel<<<(count + kThreads - 1) / kThreads, kThreads, 0, stream>>>(
      pool, packed_bytes, vectors, head_dim, first_item, count, out);
  return cudaGetLastError();
}

}  // namespace strata::gpu_agent::cuda
