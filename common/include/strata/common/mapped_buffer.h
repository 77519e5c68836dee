// MappedBuffer: a large anonymous mapping for bulk data (the warm arena, bounce and bench
// buffers), aligned to 2 MiB and advised to use transparent huge pages where the kernel allows.
//
// Why huge pages: every block moves through the kernel's socket copies or the NIC's DMA one
// page at a time; with 4 KiB pages a 256 KiB block costs 64 translations, and under
// shadow-paging hypervisors (this project's VMs) the first kernel access to each user page
// traps, which held a 256 KiB transfer to ~0.5 GB/s (docs/design/transfer-protocol.md).
#pragma once

#include <cstdint>

#include "absl/status/statusor.h"

namespace strata {

class MappedBuffer {
 public:
  // Maps `bytes` (> 0) of zeroed memory. prefault: touch every page now, from this thread, so
  // that no later access pays for the fault. RESOURCE_EXHAUSTED when the mapping fails.
  static absl::StatusOr<MappedBuffer> Map(uint64_t bytes, bool prefault);

  MappedBuffer() = default;
  MappedBuffer(MappedBuffer&& other) noexcept { *this = static_cast<MappedBuffer&&>(other); }
  MappedBuffer& operator=(MappedBuffer&& other) noexcept;
  MappedBuffer(const MappedBuffer&) = delete;
  MappedBuffer& operator=(const MappedBuffer&) = delete;
  ~MappedBuffer() { Reset(); }

  uint8_t* data() const { return data_; }
  uint64_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  // Whether the kernel accepted the huge-page advice (it may still use small pages).
  bool huge_pages_advised() const { return huge_advised_; }

 private:
  void Reset();

  uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
  void* map_base_ = nullptr;  // the whole mapping, alignment slack included
  uint64_t map_bytes_ = 0;
  bool huge_advised_ = false;
};

}  // namespace strata
