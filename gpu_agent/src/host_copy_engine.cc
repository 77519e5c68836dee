// The host twin of the CUDA copy engine: the same work items and index math (copy_index.h),
// one memcpy per (block, slice) instead of one CUDA thread block, on a pool in host memory.
// Quantized variants stage each block in stored form and run kv_quant.h's reference codec on
// it, which is what the CUDA kernels must reproduce.
#include <cstring>
#include <map>
#include <memory>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "strata/common/mapped_buffer.h"
#include "strata/gpu_agent/copy_engine.h"
#include "strata/gpu_agent/copy_index.h"

namespace strata::gpu_agent {
namespace {

// The staging buffers a twin handed out and that are alive: [begin, end) by begin.
class StagingRanges {
 public:
  void Add(const uint8_t* p, size_t n) {
    absl::MutexLock lock(&mu_);
    ranges_[reinterpret_cast<uintptr_t>(p)] = reinterpret_cast<uintptr_t>(p) + n;
  }
  void Remove(const uint8_t* p) {
    absl::MutexLock lock(&mu_);
    ranges_.erase(reinterpret_cast<uintptr_t>(p));
  }
  bool Holds(const void* p) const {
    const uintptr_t at = reinterpret_cast<uintptr_t>(p);
    absl::MutexLock lock(&mu_);
    auto it = ranges_.upper_bound(at);
    return it != ranges_.begin() && at < std::prev(it)->second;
  }

 private:
  mutable absl::Mutex mu_;
  std::map<uintptr_t, uintptr_t> ranges_ ABSL_GUARDED_BY(mu_);
};

class HostStaging : public StagingBuffer {
 public:
  HostStaging(MappedBuffer buffer, std::shared_ptr<StagingRanges> ranges)
      : buffer_(std::move(buffer)), ranges_(std::move(ranges)) {
    ranges_->Add(buffer_.data(), buffer_.size());
  }
  ~HostStaging() override { ranges_->Remove(buffer_.data()); }
  uint8_t* data() const override { return buffer_.data(); }
  size_t size() const override { return buffer_.size(); }

 private:
  MappedBuffer buffer_;
  std::shared_ptr<StagingRanges> ranges_;
};

class HostCopyEngine : public CopyEngine {
 public:
  HostCopyEngine(KvPool pool, bool staging_only)
      : CopyEngine(std::move(pool)), staging_only_(staging_only) {}

  std::string Describe() const override { return "host"; }

  absl::StatusOr<std::unique_ptr<StagingBuffer>> AllocateStaging(size_t bytes) override {
    absl::StatusOr<MappedBuffer> b = MappedBuffer::Map(bytes, /*prefault=*/true);
    if (!b.ok()) return b.status();
    return std::make_unique<HostStaging>(std::move(*b), ranges_);
  }

  absl::Status Gather(std::span<const uint32_t> ids, void* staging) override {
    if (absl::Status s = CheckStaging(ids, staging); !s.ok()) return s;
    Copy(ids, static_cast<uint8_t*>(staging), /*to_pool=*/false);
    return absl::OkStatus();
  }

  absl::Status Scatter(const void* staging, std::span<const uint32_t> ids) override {
    if (absl::Status s = CheckStaging(ids, staging); !s.ok()) return s;
    Copy(ids, static_cast<uint8_t*>(const_cast<void*>(staging)), /*to_pool=*/true);
    return absl::OkStatus();
  }

  absl::Status GatherQuantized(std::span<const uint32_t> ids, KvQuant method,
                               void* staging) override {
    absl::StatusOr<KvQuantSpec> spec = CheckQuant(ids, method, staging);
    if (!spec.ok()) return spec.status();
    if (absl::Status s = CheckStaging(ids, staging); !s.ok()) return s;
    const uint64_t packed = QuantizedPayloadSize(*spec, pool().block_bytes);
    std::vector<uint8_t> block(pool().block_bytes);
    std::string payload;
    absl::Status first_error = absl::OkStatus();
    for (size_t i = 0; i < ids.size(); ++i) {
      Copy(ids.subspan(i, 1), block.data(), /*to_pool=*/false);
      payload.clear();
      absl::Status q = QuantizeKv(*spec, block, &payload);
      if (!q.ok()) {
        if (first_error.ok()) {
          first_error = absl::InvalidArgumentError(
              absl::StrCat("block id ", ids[i], " (entry ", i, "): ", q.message()));
        }
        continue;
      }
      std::memcpy(static_cast<uint8_t*>(staging) + i * packed, payload.data(), packed);
    }
    return first_error;
  }

  absl::Status ScatterDequantized(const void* staging, KvQuant method,
                                  std::span<const uint32_t> ids) override {
    absl::StatusOr<KvQuantSpec> spec = CheckQuant(ids, method, staging);
    if (!spec.ok()) return spec.status();
    if (absl::Status s = CheckStaging(ids, staging); !s.ok()) return s;
    const uint64_t packed = QuantizedPayloadSize(*spec, pool().block_bytes);
    std::vector<uint8_t> block(pool().block_bytes);
    for (size_t i = 0; i < ids.size(); ++i) {
      std::span<const uint8_t> payload(static_cast<const uint8_t*>(staging) + i * packed, packed);
      if (absl::Status d = DequantizeKv(*spec, payload, block); !d.ok()) return d;
      Copy(ids.subspan(i, 1), block.data(), /*to_pool=*/true);
    }
    return absl::OkStatus();
  }

 private:
  // CheckIds, then (staging_only) the CUDA engine's rule for where staging may be.
  absl::Status CheckStaging(std::span<const uint32_t> ids, const void* staging) const {
    if (absl::Status s = CheckIds(ids, staging); !s.ok()) return s;
    if (staging_only_ && !ranges_->Holds(staging)) {
      return absl::InvalidArgumentError(
          "staging: not memory of this engine's AllocateStaging (the CUDA engine refuses "
          "pageable host memory, which the device cannot reach)");
    }
    return absl::OkStatus();
  }

  const bool staging_only_;
  const std::shared_ptr<StagingRanges> ranges_ = std::make_shared<StagingRanges>();

  // Every (block, slice) work item of the batch, in item order.
  void Copy(std::span<const uint32_t> ids, uint8_t* staging, bool to_pool) const {
    const KvPool& p = pool();
    const uint64_t items = ids.size() * uint64_t{p.num_slices()};
    for (uint64_t item = 0; item < items; ++item) {
      uint32_t b = 0;
      uint32_t slice = 0;
      index::SplitWorkItem(item, p.num_slices(), &b, &slice);
      auto* in_pool = reinterpret_cast<uint8_t*>(
          index::PoolSliceAddress(p.slice_bases.data(), p.block_stride, slice, ids[b]));
      uint8_t* staged = staging + index::StagedSliceOffset(p.slice_bytes, p.num_slices(), b, slice);
      if (to_pool) {
        std::memcpy(in_pool, staged, p.slice_bytes);
      } else {
        std::memcpy(staged, in_pool, p.slice_bytes);
      }
    }
  }
};

}  // namespace

absl::StatusOr<std::unique_ptr<CopyEngine>> CreateHostCopyEngine(const KvPool& pool,
                                                                 bool staging_only) {
  if (pool.device >= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "pool on CUDA device ", pool.device, ": the host copy engine needs a host-memory pool"));
  }
  return std::make_unique<HostCopyEngine>(pool, staging_only);
}

}  // namespace strata::gpu_agent
