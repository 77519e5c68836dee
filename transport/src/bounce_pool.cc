#include "strata/transport/bounce_pool.h"

#include <limits>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace strata::transport {

BounceBuffer& BounceBuffer::operator=(BounceBuffer&& other) noexcept {
  if (this != &other) {
    Release();
    pool_ = std::exchange(other.pool_, nullptr);
    index_ = std::exchange(other.index_, 0);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

void BounceBuffer::Release() {
  if (pool_ == nullptr) return;
  std::exchange(pool_, nullptr)->Release(index_);
  data_ = nullptr;
  size_ = 0;
}

absl::StatusOr<std::unique_ptr<BouncePool>> BouncePool::Create(Context& context, size_t buffer_size,
                                                               size_t count) {
  constexpr size_t kAlign = 64;
  if (buffer_size == 0 || count == 0 || count > std::numeric_limits<uint32_t>::max() ||
      buffer_size > std::numeric_limits<size_t>::max() - kAlign) {
    return absl::InvalidArgumentError(
        absl::StrCat("BouncePool: bad geometry ", count, " x ", buffer_size, " bytes"));
  }
  const size_t stride = (buffer_size + kAlign - 1) / kAlign * kAlign;
  if (stride > std::numeric_limits<size_t>::max() / count) {
    return absl::InvalidArgumentError(
        absl::StrCat("BouncePool: ", count, " x ", buffer_size, " bytes overflows"));
  }
  absl::StatusOr<std::unique_ptr<MemoryRegion>> region = context.Allocate(stride * count);
  if (!region.ok()) {
    return absl::Status(region.status().code(),
                        absl::StrCat("BouncePool: ", region.status().message()));
  }
  return std::unique_ptr<BouncePool>(
      new BouncePool(*std::move(region), buffer_size, stride, count));
}

BouncePool::BouncePool(std::unique_ptr<MemoryRegion> region, size_t buffer_size, size_t stride,
                       size_t count)
    : region_(std::move(region)), buffer_size_(buffer_size), stride_(stride), count_(count) {
  absl::MutexLock lock(&mu_);
  free_.reserve(count);
  // Highest index first so buffers are handed out from the start of the slab.
  for (size_t i = count; i > 0; --i) free_.push_back(static_cast<uint32_t>(i - 1));
}

absl::StatusOr<BounceBuffer> BouncePool::Acquire(absl::Time deadline) {
  absl::MutexLock lock(&mu_);
  auto has_free = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !free_.empty(); };
  if (!mu_.AwaitWithDeadline(absl::Condition(&has_free), deadline)) {
    return absl::ResourceExhaustedError(absl::StrCat("BouncePool: all ", count_, " buffers of ",
                                                     buffer_size_, " bytes in use until deadline"));
  }
  const uint32_t index = free_.back();
  free_.pop_back();
  return BounceBuffer(this, index, static_cast<char*>(region_->base()) + index * stride_,
                      buffer_size_);
}

size_t BouncePool::available() const {
  absl::MutexLock lock(&mu_);
  return free_.size();
}

void BouncePool::Release(uint32_t index) {
  absl::MutexLock lock(&mu_);
  free_.push_back(index);
}

}  // namespace strata::transport
