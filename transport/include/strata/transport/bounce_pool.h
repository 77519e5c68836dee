// A bounded pool of fixed-size buffers carved from one registered MemoryRegion: the client
// stages bytes of unregistered (engine or user) memory here so every transfer is zero-copy
// from UCX's point of view, and peers can push into it by its PackedRkey().
//
// Thread-safe: Acquire and BounceBuffer release may run on any thread. The pool must outlive
// every BounceBuffer it handed out.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "strata/transport/context.h"

namespace strata::transport {

class BouncePool;

// Exclusive use of one pool buffer until Release() or destruction. Move-only.
class BounceBuffer {
 public:
  BounceBuffer() = default;
  BounceBuffer(BounceBuffer&& other) noexcept { *this = std::move(other); }
  BounceBuffer& operator=(BounceBuffer&& other) noexcept;
  ~BounceBuffer() { Release(); }

  // Start of the buffer (buffer_size() bytes); null for an empty (moved-from) handle.
  void* data() const { return data_; }
  size_t size() const { return size_; }
  // Returns the buffer to its pool (waking one waiter). No-op on an empty handle.
  void Release();

 private:
  friend class BouncePool;
  BounceBuffer(BouncePool* pool, uint32_t index, void* data, size_t size)
      : pool_(pool), index_(index), data_(data), size_(size) {}

  BouncePool* pool_ = nullptr;
  uint32_t index_ = 0;
  void* data_ = nullptr;
  size_t size_ = 0;
};

class BouncePool {
 public:
  // Allocates and registers `count` buffers of `buffer_size` bytes (each starting on a 64-byte
  // boundary) in one region of `context`. INVALID_ARGUMENT: a zero size or count, or a total
  // that overflows. RESOURCE_EXHAUSTED / other codes: as Context::Allocate. Blocks while the
  // memory is registered.
  static absl::StatusOr<std::unique_ptr<BouncePool>> Create(Context& context, size_t buffer_size,
                                                            size_t count);

  // A free buffer, waiting for one until `deadline` if all are in use. RESOURCE_EXHAUSTED
  // when none came free by then (immediately for a past deadline). Blocks at most until
  // `deadline`.
  absl::StatusOr<BounceBuffer> Acquire(absl::Time deadline);

  size_t buffer_size() const { return buffer_size_; }
  size_t capacity() const { return count_; }
  // Buffers not handed out right now (a snapshot).
  size_t available() const;
  // The registered slab: its PackedRkey() lets peers put into pool buffers.
  const MemoryRegion& region() const { return *region_; }

 private:
  friend class BounceBuffer;
  BouncePool(std::unique_ptr<MemoryRegion> region, size_t buffer_size, size_t stride, size_t count);
  void Release(uint32_t index);

  const std::unique_ptr<MemoryRegion> region_;
  const size_t buffer_size_;
  const size_t stride_;
  const size_t count_;
  mutable absl::Mutex mu_;
  std::vector<uint32_t> free_ ABSL_GUARDED_BY(mu_);
};

}  // namespace strata::transport
