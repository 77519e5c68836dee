#include "strata/storenode/slab_arena.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace strata::storenode {
namespace {

constexpr uint64_t kMinClassBytes = 64;

uint64_t RoundUp(uint64_t v, uint64_t m) { return (v + m - 1) / m * m; }

}  // namespace

absl::StatusOr<std::unique_ptr<SlabArena>> SlabArena::Create(uint64_t capacity_bytes,
                                                             uint64_t page_bytes, bool prefault) {
  if (page_bytes < kMinClassBytes || page_bytes % kMinClassBytes != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("slab page size ", page_bytes, " must be a multiple of 64"));
  }
  uint64_t pages = capacity_bytes / page_bytes;
  if (pages == 0 || pages > UINT32_MAX) {
    return absl::InvalidArgumentError(
        absl::StrCat("warm arena of ", capacity_bytes, " bytes holds no page of ", page_bytes));
  }
  absl::StatusOr<MappedBuffer> memory = MappedBuffer::Map(pages * page_bytes, prefault);
  if (!memory.ok()) {
    return absl::ResourceExhaustedError(absl::StrCat("warm arena: ", memory.status().message()));
  }
  return std::unique_ptr<SlabArena>(
      new SlabArena(*std::move(memory), page_bytes, static_cast<uint32_t>(pages)));
}

SlabArena::SlabArena(MappedBuffer memory, uint64_t page_bytes, uint32_t pages)
    : memory_(std::move(memory)), base_(memory_.data()), page_bytes_(page_bytes), pages_(pages) {
  // Classes 64 B · 2^(k/4), rounded up to 64 B, capped by the page size (which is a class).
  for (int k = 0;; ++k) {
    uint64_t size = RoundUp(
        static_cast<uint64_t>(std::ceil(kMinClassBytes * std::pow(2.0, k / 4.0))), kMinClassBytes);
    if (size >= page_bytes) break;
    if (class_bytes_.empty() || class_bytes_.back() != size) class_bytes_.push_back(size);
  }
  class_bytes_.push_back(page_bytes);
  partial_pages_.resize(class_bytes_.size());
  free_pages_.reserve(pages);
  for (uint32_t i = pages; i > 0; --i) free_pages_.push_back(i - 1);
}

uint16_t SlabArena::ClassFor(uint64_t size) const {
  auto it = std::lower_bound(class_bytes_.begin(), class_bytes_.end(), size);
  return static_cast<uint16_t>(it - class_bytes_.begin());
}

std::optional<Slot> SlabArena::Allocate(uint16_t size_class) {
  std::vector<uint32_t>& partial = partial_pages_[size_class];
  if (partial.empty()) {
    if (free_pages_.empty()) return std::nullopt;
    uint32_t page = free_pages_.back();
    free_pages_.pop_back();
    Page& p = pages_[page];
    p.size_class = size_class;
    uint32_t n = SlotsPerPage(size_class);
    p.free_slots.clear();
    p.free_slots.reserve(n);
    for (uint32_t i = n; i > 0; --i) p.free_slots.push_back(i - 1);
    p.used = 0;
    partial.push_back(page);
  }
  uint32_t page = partial.back();
  Page& p = pages_[page];
  Slot slot{page, p.free_slots.back(), size_class};
  p.free_slots.pop_back();
  ++p.used;
  if (p.free_slots.empty()) partial.pop_back();
  return slot;
}

void SlabArena::Free(const Slot& slot) {
  Page& p = pages_[slot.page];
  std::vector<uint32_t>& partial = partial_pages_[slot.size_class];
  if (p.free_slots.empty()) partial.push_back(slot.page);
  p.free_slots.push_back(slot.index);
  --p.used;
  if (p.used == 0) {
    // Whole page free: hand it back so another class can use it.
    partial.erase(std::find(partial.begin(), partial.end(), slot.page));
    p.size_class = -1;
    p.free_slots = {};
    free_pages_.push_back(slot.page);
  }
}

}  // namespace strata::storenode
