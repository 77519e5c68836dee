#include "strata/common/mapped_buffer.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace strata {
namespace {

constexpr uint64_t kHugePageBytes = uint64_t{2} << 20;

uint64_t RoundUp(uint64_t v, uint64_t m) { return (v + m - 1) / m * m; }

}  // namespace

absl::StatusOr<MappedBuffer> MappedBuffer::Map(uint64_t bytes, bool prefault) {
  if (bytes == 0 || bytes > (uint64_t{1} << 48)) {
    return absl::InvalidArgumentError(absl::StrCat("cannot map a buffer of ", bytes, " bytes"));
  }
  // Over-map by one huge page so the buffer can start on a 2 MiB boundary (THP needs it).
  // MAP_NORESERVE: budgets are enforced by the owners of the memory, not by overcommit.
  const uint64_t map_bytes = RoundUp(bytes, kHugePageBytes) + kHugePageBytes;
  void* p = mmap(nullptr, map_bytes, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) {
    return absl::ResourceExhaustedError(
        absl::StrCat("mmap of ", bytes, " bytes failed: ", std::strerror(errno)));
  }
  MappedBuffer b;
  b.map_base_ = p;
  b.map_bytes_ = map_bytes;
  b.data_ = reinterpret_cast<uint8_t*>(RoundUp(reinterpret_cast<uintptr_t>(p), kHugePageBytes));
  b.size_ = bytes;
  b.huge_advised_ = madvise(b.data_, RoundUp(bytes, kHugePageBytes), MADV_HUGEPAGE) == 0;
  if (prefault) {
    // A store per page (not MAP_POPULATE, which maps small pages before the advice applies
    // and leaves the first user-space store to each page to trap under shadow paging).
    const uint64_t step = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
    volatile uint8_t* bytes_ptr = b.data_;
    for (uint64_t off = 0; off < bytes; off += step) bytes_ptr[off] = 0;
  }
  return b;
}

MappedBuffer& MappedBuffer::operator=(MappedBuffer&& other) noexcept {
  if (this != &other) {
    Reset();
    data_ = other.data_;
    size_ = other.size_;
    map_base_ = other.map_base_;
    map_bytes_ = other.map_bytes_;
    huge_advised_ = other.huge_advised_;
    other.data_ = nullptr;
    other.size_ = 0;
    other.map_base_ = nullptr;
    other.map_bytes_ = 0;
    other.huge_advised_ = false;
  }
  return *this;
}

void MappedBuffer::Reset() {
  if (map_base_ != nullptr) munmap(map_base_, map_bytes_);
  data_ = nullptr;
  size_ = 0;
  map_base_ = nullptr;
  map_bytes_ = 0;
}

}  // namespace strata
