// CopyEngine: moves blocks between an engine's KV pool (kv_pool.h) and staging memory, in the
// stored form. Two implementations behind this one interface:
//  - the CUDA engine (gpu_agent/cuda/): gather/scatter kernels on the engine's own streams,
//    completion through CUDA events; staging is pinned host memory, so the store client's
//    UCX transfers read and write it directly;
//  - the host twin: the same index math (copy_index.h) on a pool in host memory, for tests and
//    machines without a GPU.
// Optional fused quantization packs each block as kv_quant.h's payload (int8 or fp8-e4m3 with
// a per-vector fp32 scale over head_dim elements) while gathering, and restores it while
// scattering; the host twin produces exactly the bytes QuantizeKv / DequantizeKv do, and the
// CUDA kernels must match them bit for bit.
//
// Thread-safe: calls from several threads run concurrently (the CUDA engine gives each a
// stream of its own). Every call blocks its caller until the copy is complete — the agent
// calls them from its own threads, never from the engine's step.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "strata/common/kv_quant.h"
#include "strata/gpu_agent/kv_pool.h"

namespace strata::gpu_agent {

// Staging memory an engine allocated (pinned host memory for CUDA, huge-page host memory for
// the twin). Frees it on destruction.
class StagingBuffer {
 public:
  virtual ~StagingBuffer() = default;
  virtual uint8_t* data() const = 0;
  virtual size_t size() const = 0;
};

class CopyEngine {
 public:
  virtual ~CopyEngine() = default;

  // Staging (every call's `staging`): for the CUDA engine pinned host memory
  // (AllocateStaging, or cudaHostRegister'ed) or device memory; pageable memory is refused with
  // INVALID_ARGUMENT. Any host memory for the host twin.

  // "host" or "cuda:<device> (<name>)".
  virtual std::string Describe() const = 0;
  const KvPool& pool() const { return pool_; }

  // `bytes` of staging memory suited to this engine. RESOURCE_EXHAUSTED when it cannot be had.
  virtual absl::StatusOr<std::unique_ptr<StagingBuffer>> AllocateStaging(size_t bytes) = 0;

  // Pool block ids[i] → staging + i × block_bytes, for every i. INVALID_ARGUMENT: an id
  // >= num_blocks, or staging null. Other codes: the device failed (INTERNAL, with CUDA's
  // message). `staging` must hold ids.size() × block_bytes bytes.
  virtual absl::Status Gather(std::span<const uint32_t> ids, void* staging) = 0;
  // staging + i × block_bytes → pool block ids[i]. Same errors. Duplicate ids: undefined which
  // copy wins.
  virtual absl::Status Scatter(const void* staging, std::span<const uint32_t> ids) = 0;

  // Quantized variants: staged block i is the packed payload of pool block ids[i], at
  // staging + i × QuantizedPayloadSize(spec, block_bytes), spec = {method, pool dtype,
  // pool head_dim}. INVALID_ARGUMENT also when the pool's dtype is not fp16/bf16 or method is
  // kNone; GatherQuantized fails with INVALID_ARGUMENT for a block holding NaN or infinity
  // (naming it), leaving the other blocks' staging written.
  virtual absl::Status GatherQuantized(std::span<const uint32_t> ids, KvQuant method,
                                       void* staging) = 0;
  virtual absl::Status ScatterDequantized(const void* staging, KvQuant method,
                                          std::span<const uint32_t> ids) = 0;

 protected:
  explicit CopyEngine(KvPool pool) : pool_(std::move(pool)) {}
  // The argument checks every engine makes, in the same order with the same messages.
  absl::Status CheckIds(std::span<const uint32_t> ids, const void* staging) const;
  // CheckIds, then the method and the pool's dtype; the quantization spec of the pool.
  absl::StatusOr<KvQuantSpec> CheckQuant(std::span<const uint32_t> ids, KvQuant method,
                                         const void* staging) const;

 private:
  KvPool pool_;
};

// The host twin. Pool memory must be host memory (pool.device -1). With `staging_only` it
// also holds callers to the CUDA engine's staging rule: staging must lie in a buffer of its
// own AllocateStaging (INVALID_ARGUMENT otherwise, as CUDA refuses pageable memory), so code
// that the twin runs would fail on a GPU the same way. CreateCopyEngine sets it.
absl::StatusOr<std::unique_ptr<CopyEngine>> CreateHostCopyEngine(const KvPool& pool,
                                                                 bool staging_only = false);

// Whether this build has the CUDA engine (CUDA toolkit found at configure time).
bool CudaCopyEngineBuilt();
// The CUDA engine for a pool on device pool.device. UNIMPLEMENTED when the build has no CUDA;
// UNAVAILABLE when there is no usable device (no driver, no GPU, bad ordinal), with CUDA's
// message.
absl::StatusOr<std::unique_ptr<CopyEngine>> CreateCudaCopyEngine(const KvPool& pool);

// The engine for the pool: host twin for device -1, CUDA otherwise.
absl::StatusOr<std::unique_ptr<CopyEngine>> CreateCopyEngine(const KvPool& pool);

}  // namespace strata::gpu_agent
