// SlabArena: the warm tier's one preallocated DRAM region, cut into fixed-size pages; each
// page in use serves one size class (sizes grow by 2^(1/4) from 64 B up to the page size,
// so slack is at most ~19% and powers of two fit exactly). A page whose slots are all free
// goes back to the shared pool, so classes rebalance as the mix of block sizes changes.
//
// Not thread-safe: the owner (WarmTier) serializes every call under its mutex. The memory
// itself may be read and written by any thread holding a slot.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "absl/status/statusor.h"
#include "strata/common/mapped_buffer.h"

namespace strata::storenode {

struct Slot {
  uint32_t page = 0;
  uint32_t index = 0;  // slot number within the page
  uint16_t size_class = 0;
};

class SlabArena {
 public:
  // Maps capacity_bytes / page_bytes pages (rounded down). INVALID_ARGUMENT when fewer than
  // one page fits or page_bytes is not a multiple of 64; RESOURCE_EXHAUSTED when the mapping
  // fails. prefault touches every page now.
  static absl::StatusOr<std::unique_ptr<SlabArena>> Create(uint64_t capacity_bytes,
                                                           uint64_t page_bytes, bool prefault);
  ~SlabArena() = default;
  SlabArena(const SlabArena&) = delete;
  SlabArena& operator=(const SlabArena&) = delete;

  // Smallest class holding `size` bytes. REQUIRES: 1 <= size <= page_bytes().
  uint16_t ClassFor(uint64_t size) const;
  uint64_t ClassBytes(uint16_t size_class) const { return class_bytes_[size_class]; }
  size_t num_classes() const { return class_bytes_.size(); }

  // A free slot of `size_class`, taking a free page if the class has no free slot.
  // nullopt when neither exists (the caller evicts and retries).
  std::optional<Slot> Allocate(uint16_t size_class);
  // Returns a slot. A page left empty returns to the free pool.
  void Free(const Slot& slot);

  uint8_t* Address(const Slot& slot) const {
    return base_ + static_cast<uint64_t>(slot.page) * page_bytes_ +
           static_cast<uint64_t>(slot.index) * class_bytes_[slot.size_class];
  }

  uint64_t page_bytes() const { return page_bytes_; }
  uint32_t num_pages() const { return static_cast<uint32_t>(pages_.size()); }
  uint32_t free_pages() const { return static_cast<uint32_t>(free_pages_.size()); }
  uint64_t capacity_bytes() const { return page_bytes_ * pages_.size(); }
  // Class of a page in use, or -1 when the page is free.
  int PageClass(uint32_t page) const { return pages_[page].size_class; }
  uint32_t SlotsPerPage(uint16_t size_class) const {
    return static_cast<uint32_t>(page_bytes_ / class_bytes_[size_class]);
  }
  uint8_t* base() const { return base_; }

 private:
  struct Page {
    int size_class = -1;
    std::vector<uint32_t> free_slots;
    uint32_t used = 0;
  };

  SlabArena(MappedBuffer memory, uint64_t page_bytes, uint32_t pages);

  MappedBuffer memory_;  // 2 MiB aligned, huge pages advised
  uint8_t* base_;
  uint64_t page_bytes_;
  std::vector<uint64_t> class_bytes_;
  std::vector<Page> pages_;
  std::vector<uint32_t> free_pages_;
  // Pages of each class that have at least one free slot.
  std::vector<std::vector<uint32_t>> partial_pages_;
};

}  // namespace strata::storenode
