// HostKvPool: an engine-style paged KV pool in host memory, laid out as a real engine's would
// be, for the host twin — the examples' engine stand-ins and the tests. Element(...) computes
// addresses from the layout's tensor shape directly (not through KvPool), so tests can check
// the copy engines' index math against it.
//
// Thread-compatible. Owns its memory (huge-page mappings, prefaulted).
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "strata/common/mapped_buffer.h"
#include "strata/gpu_agent/kv_pool.h"

namespace strata::gpu_agent {

class HostKvPool {
 public:
  // Allocates tensors for `shape` (layer_bases and device are filled in here; the rest of
  // `shape` must be set). INVALID_ARGUMENT for a bad shape, RESOURCE_EXHAUSTED when the memory
  // cannot be mapped.
  static absl::StatusOr<HostKvPool> Create(KvPoolSpec shape);

  const KvPoolSpec& spec() const { return spec_; }
  const KvPool& pool() const { return pool_; }
  // Address of element (layer, kv, block, token, head, dim) by the layout's own shape.
  uint8_t* Element(uint32_t layer, uint32_t kv, uint32_t block, uint32_t token, uint32_t head,
                   uint32_t dim) const;
  // Each tensor's address and byte count (for registering with UCX).
  std::vector<std::pair<uint8_t*, uint64_t>> Tensors() const;

 private:
  KvPoolSpec spec_;
  KvPool pool_;
  std::vector<MappedBuffer> tensors_;
};

}  // namespace strata::gpu_agent
