// The CUDA copy engine (copy_engine.h): gather/scatter kernels (copy_kernels.h) on streams of
// its own, for a pool in the memory of one device.
//
// Staging is pinned host memory that the kernels read and write directly, through its mapped
// device address: one pass over the data. The alternative, a kernel into a device bounce
// buffer and one cudaMemcpyAsync over PCIe, makes a second pass and holds device memory that
// the engine's KV cache would rather have, for no gain on the wire: PCIe is the bottleneck
// either way, and coalesced 16-byte accesses with several loads in flight per thread keep it
// as busy as the copy engines do (strata-gpu-copy-bench --cuda measures both paths against
// cudaMemcpy of the same bytes on the machine at hand). One cudaMemcpyAsync per slice without
// a kernel would be 2 × layers × blocks small copies per batch, each paying a few microseconds
// of submission.
//
// Each call takes a lane: a non-blocking stream, an event it waits on (blocking sync, so a
// waiting agent thread sleeps instead of spinning), and pinned + device scratch for the block
// ids (and, when quantizing, one NaN report per block). Concurrent calls run on different
// lanes; more callers than kMaxLanes wait for one. No lock is held across CUDA work.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "copy_kernels.h"
#include "strata/gpu_agent/copy_engine.h"

namespace strata::gpu_agent {
namespace {

constexpr size_t kMaxLanes = 4;
constexpr size_t kMinIdCapacity = 1024;
// Thread blocks per multiprocessor the kernels' grids stop at (256 threads each: a full SM).
constexpr int kCtasPerSm = 8;

absl::Status CudaError(cudaError_t err, const char* what) {
  return absl::InternalError(
      absl::StrCat("CUDA ", what, ": ", cudaGetErrorName(err), ": ", cudaGetErrorString(err)));
}

// Makes `device` current for the calling thread and restores the previous device on exit,
// since the caller may be a thread of the inference engine with its own device set.
class DeviceScope {
 public:
  explicit DeviceScope(int device) {
    if (cudaGetDevice(&previous_) != cudaSuccess) previous_ = -1;
    // Always set, even when cudaGetDevice already says `device`: on a thread that has not used
    // CUDA yet it reports device 0 without making that device's context current, and
    // cudaPointerGetAttributes then finds no device mapping for pinned staging (seen on an
    // H100: the agent's offload thread).
    error_ = cudaSetDevice(device);
    if (error_ != cudaSuccess || previous_ == device) previous_ = -1;
  }
  ~DeviceScope() {
    if (previous_ >= 0) cudaSetDevice(previous_);
  }
  DeviceScope(const DeviceScope&) = delete;
  DeviceScope& operator=(const DeviceScope&) = delete;

  cudaError_t error() const { return error_; }

 private:
  int previous_ = -1;
  cudaError_t error_ = cudaSuccess;
};

class PinnedStaging final : public StagingBuffer {
 public:
  PinnedStaging(uint8_t* data, size_t size) : data_(data), size_(size) {}
  ~PinnedStaging() override { cudaFreeHost(data_); }
  uint8_t* data() const override { return data_; }
  size_t size() const override { return size_; }

 private:
  uint8_t* data_;
  size_t size_;
};

struct Lane {
  cudaStream_t stream = nullptr;
  cudaEvent_t done = nullptr;
  size_t capacity = 0;                       // ids (and bad entries) the buffers hold
  uint32_t* host_ids = nullptr;              // pinned
  uint32_t* device_ids = nullptr;            //
  unsigned long long* host_bad = nullptr;    // pinned: per staged block, first NaN element
  unsigned long long* device_bad = nullptr;  //
};

// The NaN this CPU's fp32 multiply makes of 0 × inf (the default NaN DequantizeKv produces).
uint32_t HostDefaultNan() {
  volatile float zero = 0.0f;
  volatile float inf = INFINITY;
  const float nan = zero * inf;
  uint32_t bits;
  std::memcpy(&bits, &nan, sizeof(bits));
  return bits;
}

enum class Op { kGather, kScatter, kGatherQuantized, kScatterDequantized };

class CudaCopyEngine final : public CopyEngine {
 public:
  CudaCopyEngine(KvPool pool, std::string name, int sm_count, bool async_alloc,
                 uint64_t* device_slice_bases)
      : CopyEngine(std::move(pool)),
        name_(std::move(name)),
        max_ctas_(sm_count * kCtasPerSm),
        async_alloc_(async_alloc),
        device_slice_bases_(device_slice_bases),
        host_default_nan_(HostDefaultNan()) {}

  ~CudaCopyEngine() override {
    DeviceScope scope(pool().device);
    for (std::unique_ptr<Lane>& lane : lanes_) DestroyLane(*lane);
    cudaFree(device_slice_bases_);
  }

  std::string Describe() const override {
    return absl::StrCat("cuda:", pool().device, " (", name_, ")");
  }

  absl::StatusOr<std::unique_ptr<StagingBuffer>> AllocateStaging(size_t bytes) override {
    DeviceScope scope(pool().device);
    if (scope.error() != cudaSuccess) return CudaError(scope.error(), "cudaSetDevice");
    void* p = nullptr;
    // Portable: usable from every context; mapped: the kernels address it directly.
    const cudaError_t err =
        cudaHostAlloc(&p, bytes == 0 ? 1 : bytes, cudaHostAllocPortable | cudaHostAllocMapped);
    if (err != cudaSuccess) {
      cudaGetLastError();
      return absl::ResourceExhaustedError(
          absl::StrCat("pinned staging of ", bytes, " bytes: ", cudaGetErrorString(err)));
    }
    return std::make_unique<PinnedStaging>(static_cast<uint8_t*>(p), bytes);
  }

  absl::Status Gather(std::span<const uint32_t> ids, void* staging) override {
    if (absl::Status s = CheckIds(ids, staging); !s.ok() || ids.empty()) return s;
    return Run(Op::kGather, ids, staging, {});
  }

  absl::Status Scatter(const void* staging, std::span<const uint32_t> ids) override {
    if (absl::Status s = CheckIds(ids, staging); !s.ok() || ids.empty()) return s;
    return Run(Op::kScatter, ids, const_cast<void*>(staging), {});
  }

  absl::Status GatherQuantized(std::span<const uint32_t> ids, KvQuant method,
                               void* staging) override {
    absl::StatusOr<cuda::QuantView> q = Quant(ids, method, staging);
    if (!q.ok()) return q.status();
    if (ids.empty()) return absl::OkStatus();
    return Run(Op::kGatherQuantized, ids, staging, *q);
  }

  absl::Status ScatterDequantized(const void* staging, KvQuant method,
                                  std::span<const uint32_t> ids) override {
    absl::StatusOr<cuda::QuantView> q = Quant(ids, method, staging);
    if (!q.ok()) return q.status();
    if (ids.empty()) return absl::OkStatus();
    return Run(Op::kScatterDequantized, ids, const_cast<void*>(staging), *q);
  }

 private:
  // The checks every engine makes (CheckQuant), then the kernels' view of the spec.
  absl::StatusOr<cuda::QuantView> Quant(std::span<const uint32_t> ids, KvQuant method,
                                        const void* staging) const {
    absl::StatusOr<KvQuantSpec> spec = CheckQuant(ids, method, staging);
    if (!spec.ok()) return spec.status();
    const KvPool& p = pool();
    cuda::QuantView q;
    q.code = method == KvQuant::kInt8 ? cuda::QuantCode::kInt8 : cuda::QuantCode::kFp8E4M3;
    q.source = p.dtype == KvDtype::kBf16 ? cuda::SourceType::kBf16 : cuda::SourceType::kFp16;
    q.head_dim = p.head_dim;
    q.vectors_per_slice = p.slice_bytes / 2 / p.head_dim;
    q.vectors_per_block = q.vectors_per_slice * p.num_slices();
    q.packed_bytes = QuantizedPayloadSize(*spec, p.block_bytes);
    q.host_default_nan = host_default_nan_;
    return q;
  }

  cuda::PoolView View() const {
    cuda::PoolView v;
    v.slice_bases = device_slice_bases_;
    v.block_stride = pool().block_stride;
    v.slice_bytes = pool().slice_bytes;
    v.num_slices = pool().num_slices();
    return v;
  }

  // The address the kernels use for `staging`: device memory of the pool's device, managed
  // memory, or pinned host memory through its mapping. Pageable memory cannot be reached.
  absl::StatusOr<uint8_t*> DeviceAddress(void* staging) const {
    cudaPointerAttributes attr;
    const cudaError_t err = cudaPointerGetAttributes(&attr, staging);
    if (err != cudaSuccess) {
      cudaGetLastError();
      return CudaError(err, "cudaPointerGetAttributes(staging)");
    }
    switch (attr.type) {
      case cudaMemoryTypeDevice:
        if (attr.device != pool().device) {
          return absl::InvalidArgumentError(absl::StrCat("staging: memory of CUDA device ",
                                                         attr.device, ", the pool is on device ",
                                                         pool().device));
        }
        return static_cast<uint8_t*>(staging);
      case cudaMemoryTypeManaged:
        return static_cast<uint8_t*>(staging);
      case cudaMemoryTypeHost: {
        if (attr.devicePointer != nullptr) return static_cast<uint8_t*>(attr.devicePointer);
        void* mapped = nullptr;
        if (cudaHostGetDevicePointer(&mapped, staging, 0) == cudaSuccess && mapped != nullptr) {
          return static_cast<uint8_t*>(mapped);
        }
        cudaGetLastError();
        return absl::InvalidArgumentError(
            "staging: pinned host memory not mapped into the device's address space");
      }
      case cudaMemoryTypeUnregistered:
        break;
    }
    return absl::InvalidArgumentError(
        "staging: pageable host memory, which the device cannot reach; use AllocateStaging "
        "(or memory registered with cudaHostRegister)");
  }

  absl::Status Run(Op op, std::span<const uint32_t> ids, void* staging,
                   const cuda::QuantView& quant) {
    if (ids.size() > std::numeric_limits<uint32_t>::max()) {
      return absl::InvalidArgumentError(absl::StrCat("ids: ", ids.size(), " blocks in one call"));
    }
    DeviceScope scope(pool().device);
    if (scope.error() != cudaSuccess) return CudaError(scope.error(), "cudaSetDevice");
    absl::StatusOr<uint8_t*> target = DeviceAddress(staging);
    if (!target.ok()) return target.status();
    absl::StatusOr<Lane*> lane = AcquireLane();
    if (!lane.ok()) return lane.status();
    absl::Status s = RunOnLane(**lane, op, ids, *target, quant);
    ReleaseLane(*lane);
    return s;
  }

  absl::Status RunOnLane(Lane& lane, Op op, std::span<const uint32_t> ids, uint8_t* staging,
                         const cuda::QuantView& quant) {
    if (absl::Status s = Reserve(lane, ids.size()); !s.ok()) return s;
    const uint32_t count = static_cast<uint32_t>(ids.size());
    std::memcpy(lane.host_ids, ids.data(), ids.size_bytes());
    const char* step = "cudaMemcpyAsync(ids)";
    cudaError_t err = cudaMemcpyAsync(lane.device_ids, lane.host_ids, ids.size_bytes(),
                                      cudaMemcpyHostToDevice, lane.stream);
    if (err == cudaSuccess && op == Op::kGatherQuantized) {
      step = "cudaMemsetAsync(nan report)";
      err = cudaMemsetAsync(lane.device_bad, 0xff, count * sizeof(unsigned long long), lane.stream);
    }
    if (err == cudaSuccess) {
      step = "kernel launch";
      switch (op) {
        case Op::kGather:
          err = cuda::LaunchGather(View(), lane.device_ids, count, staging, max_ctas_, lane.stream);
          break;
        case Op::kScatter:
          err =
              cuda::LaunchScatter(View(), staging, lane.device_ids, count, max_ctas_, lane.stream);
          break;
        case Op::kGatherQuantized:
          err = cuda::LaunchGatherQuantized(View(), quant, lane.device_ids, count, staging,
                                            lane.device_bad, max_ctas_, lane.stream);
          break;
        case Op::kScatterDequantized:
          err = cuda::LaunchScatterDequantized(View(), quant, staging, lane.device_ids, count,
                                               max_ctas_, lane.stream);
          break;
      }
    }
    if (err == cudaSuccess && op == Op::kGatherQuantized) {
      step = "cudaMemcpyAsync(nan report)";
      err = cudaMemcpyAsync(lane.host_bad, lane.device_bad, count * sizeof(unsigned long long),
                            cudaMemcpyDeviceToHost, lane.stream);
    }
    if (err == cudaSuccess) {
      step = "cudaEventRecord";
      err = cudaEventRecord(lane.done, lane.stream);
    }
    if (err == cudaSuccess) {
      step = "cudaEventSynchronize";
      err = cudaEventSynchronize(lane.done);
    }
    if (err != cudaSuccess) {
      // Whatever was enqueued must finish before the lane's buffers are reused.
      cudaStreamSynchronize(lane.stream);
      cudaGetLastError();
      return CudaError(err, step);
    }
    if (op == Op::kGatherQuantized) {
      for (uint32_t i = 0; i < count; ++i) {
        if (lane.host_bad[i] == cuda::kNoBadElement) continue;
        // The host twin's words (QuantizeKv's message behind the block's entry).
        return absl::InvalidArgumentError(
            absl::StrCat("block id ", ids[i], " (entry ", i, "): element ", lane.host_bad[i],
                         " is NaN or infinite; lossy quantization needs finite values"));
      }
    }
    return absl::OkStatus();
  }

  // Grows the lane's id buffers to hold `count` entries. The lane is idle: nothing in flight
  // uses the old buffers.
  absl::Status Reserve(Lane& lane, size_t count) {
    if (count <= lane.capacity) return absl::OkStatus();
    FreeBuffers(lane);
    const size_t capacity = std::max({count, 2 * lane.capacity, kMinIdCapacity});
    cudaError_t err =
        cudaHostAlloc(&lane.host_ids, capacity * sizeof(uint32_t), cudaHostAllocDefault);
    if (err == cudaSuccess) {
      err = cudaHostAlloc(&lane.host_bad, capacity * sizeof(unsigned long long),
                          cudaHostAllocDefault);
    }
    if (err == cudaSuccess) {
      err = AllocateDevice(reinterpret_cast<void**>(&lane.device_ids), capacity * sizeof(uint32_t),
                           lane.stream);
    }
    if (err == cudaSuccess) {
      err = AllocateDevice(reinterpret_cast<void**>(&lane.device_bad),
                           capacity * sizeof(unsigned long long), lane.stream);
    }
    if (err != cudaSuccess) {
      cudaGetLastError();
      FreeBuffers(lane);
      return absl::ResourceExhaustedError(
          absl::StrCat("CUDA scratch for ", count, " block ids: ", cudaGetErrorString(err)));
    }
    lane.capacity = capacity;
    return absl::OkStatus();
  }

  // Stream-ordered allocation where the device has memory pools: cudaMalloc / cudaFree would
  // synchronize the whole device, stalling the inference engine's kernels.
  cudaError_t AllocateDevice(void** p, size_t bytes, cudaStream_t stream) const {
    return async_alloc_ ? cudaMallocAsync(p, bytes, stream) : cudaMalloc(p, bytes);
  }

  void FreeBuffers(Lane& lane) const {
    if (lane.host_ids != nullptr) cudaFreeHost(lane.host_ids);
    if (lane.host_bad != nullptr) cudaFreeHost(lane.host_bad);
    for (void* p : {static_cast<void*>(lane.device_ids), static_cast<void*>(lane.device_bad)}) {
      if (p == nullptr) continue;
      if (async_alloc_) {
        cudaFreeAsync(p, lane.stream);
      } else {
        cudaFree(p);
      }
    }
    lane.host_ids = nullptr;
    lane.host_bad = nullptr;
    lane.device_ids = nullptr;
    lane.device_bad = nullptr;
    lane.capacity = 0;
  }

  void DestroyLane(Lane& lane) const {
    FreeBuffers(lane);
    if (lane.stream != nullptr) cudaStreamSynchronize(lane.stream);
    if (lane.done != nullptr) cudaEventDestroy(lane.done);
    if (lane.stream != nullptr) cudaStreamDestroy(lane.stream);
  }

  bool LaneAvailable() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return !idle_.empty() || lanes_.size() + lanes_pending_ < kMaxLanes;
  }

  absl::StatusOr<Lane*> AcquireLane() {
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(this, &CudaCopyEngine::LaneAvailable));
      if (!idle_.empty()) {
        Lane* lane = idle_.back();
        idle_.pop_back();
        return lane;
      }
      ++lanes_pending_;
    }
    // A new lane, created outside the lock (CUDA calls).
    auto lane = std::make_unique<Lane>();
    cudaError_t err = cudaStreamCreateWithFlags(&lane->stream, cudaStreamNonBlocking);
    if (err == cudaSuccess) {
      err = cudaEventCreateWithFlags(&lane->done, cudaEventDisableTiming | cudaEventBlockingSync);
    }
    if (err != cudaSuccess) {
      cudaGetLastError();
      DestroyLane(*lane);
      absl::MutexLock lock(&mu_);
      --lanes_pending_;
      return CudaError(err, "creating a stream");
    }
    Lane* created = lane.get();
    absl::MutexLock lock(&mu_);
    --lanes_pending_;
    lanes_.push_back(std::move(lane));
    return created;
  }

  void ReleaseLane(Lane* lane) {
    absl::MutexLock lock(&mu_);
    idle_.push_back(lane);
  }

  const std::string name_;
  const int max_ctas_;
  const bool async_alloc_;
  uint64_t* const device_slice_bases_;  // owned; pool().slice_bases in device memory
  const uint32_t host_default_nan_;

  absl::Mutex mu_;
  std::vector<std::unique_ptr<Lane>> lanes_ ABSL_GUARDED_BY(mu_);
  std::vector<Lane*> idle_ ABSL_GUARDED_BY(mu_);
  size_t lanes_pending_ ABSL_GUARDED_BY(mu_) = 0;
};

// UNAVAILABLE with CUDA's message, clearing the runtime's error state.
absl::Status NoDevice(cudaError_t err, const char* what) {
  cudaGetLastError();
  return absl::UnavailableError(
      absl::StrCat("no usable CUDA device (", what, "): ", cudaGetErrorString(err)));
}

}  // namespace

bool CudaCopyEngineBuilt() { return true; }

absl::StatusOr<std::unique_ptr<CopyEngine>> CreateCudaCopyEngine(const KvPool& pool) {
  if (pool.device < 0) {
    return absl::InvalidArgumentError(
        "pool in host memory (device -1): the CUDA copy engine needs a pool on a CUDA device");
  }
  int devices = 0;
  if (cudaError_t err = cudaGetDeviceCount(&devices); err != cudaSuccess) {
    return NoDevice(err, "cudaGetDeviceCount");
  }
  if (pool.device >= devices) {
    return absl::UnavailableError(
        absl::StrCat("no CUDA device ", pool.device, ": ", devices, " device(s) present"));
  }
  DeviceScope scope(pool.device);
  if (scope.error() != cudaSuccess) return NoDevice(scope.error(), "cudaSetDevice");
  cudaDeviceProp prop;
  if (cudaError_t err = cudaGetDeviceProperties(&prop, pool.device); err != cudaSuccess) {
    return NoDevice(err, "cudaGetDeviceProperties");
  }
  int pools_supported = 0;
  if (cudaDeviceGetAttribute(&pools_supported, cudaDevAttrMemoryPoolsSupported, pool.device) !=
      cudaSuccess) {
    cudaGetLastError();
    pools_supported = 0;
  }

  // Every slice table entry must be memory this device can address.
  for (size_t i = 0; i < pool.slice_bases.size(); ++i) {
    cudaPointerAttributes attr;
    const cudaError_t err =
        cudaPointerGetAttributes(&attr, reinterpret_cast<const void*>(pool.slice_bases[i]));
    if (err != cudaSuccess) {
      cudaGetLastError();
      return CudaError(err, "cudaPointerGetAttributes(pool)");
    }
    const bool reachable = (attr.type == cudaMemoryTypeDevice && attr.device == pool.device) ||
                           attr.type == cudaMemoryTypeManaged;
    if (!reachable) {
      return absl::InvalidArgumentError(absl::StrCat(
          "slice ", i, " of the pool is not memory of CUDA device ", pool.device,
          attr.type == cudaMemoryTypeDevice ? absl::StrCat(" (it is on device ", attr.device, ")")
                                            : std::string(" (it is host memory)")));
    }
  }

  uint64_t* slice_bases = nullptr;
  const size_t table_bytes = pool.slice_bases.size() * sizeof(uint64_t);
  cudaError_t err = cudaMalloc(reinterpret_cast<void**>(&slice_bases), table_bytes);
  if (err == cudaSuccess) {
    err = cudaMemcpy(slice_bases, pool.slice_bases.data(), table_bytes, cudaMemcpyHostToDevice);
  }
  if (err != cudaSuccess) {
    cudaGetLastError();
    cudaFree(slice_bases);
    return CudaError(err, "uploading the slice table");
  }
  return std::make_unique<CudaCopyEngine>(pool, prop.name, prop.multiProcessorCount,
                                          pools_supported != 0, slice_bases);
}

}  // namespace strata::gpu_agent
