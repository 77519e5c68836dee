#include "strata/gpu_agent/host_pool.h"

#include "absl/strings/str_cat.h"

namespace strata::gpu_agent {
namespace {

size_t TensorCount(const KvPoolSpec& s) {
  switch (s.layout) {
    case KvLayout::kFlashAttn:
    case KvLayout::kBlockFirst:
      return s.layers;
    case KvLayout::kSplitKv:
      return 2 * size_t{s.layers};
    case KvLayout::kCrossLayer:
      return 1;
  }
  return 0;
}

}  // namespace

absl::StatusOr<HostKvPool> HostKvPool::Create(KvPoolSpec shape) {
  shape.device = -1;
  const size_t n = TensorCount(shape);
  // Resolve once with placeholder bases to validate the shape and learn the sizes.
  shape.layer_bases.assign(n, nullptr);
  for (size_t i = 0; i < n; ++i) shape.layer_bases[i] = reinterpret_cast<void*>((i + 1) << 44);
  absl::StatusOr<KvPool> sizes = ResolveKvPool(shape);
  if (!sizes.ok()) return sizes.status();
  const uint64_t total = sizes->block_bytes * shape.num_blocks;
  HostKvPool p;
  for (size_t i = 0; i < n; ++i) {
    absl::StatusOr<MappedBuffer> t = MappedBuffer::Map(total / n, /*prefault=*/true);
    if (!t.ok()) return t.status();
    shape.layer_bases[i] = t->data();
    p.tensors_.push_back(std::move(*t));
  }
  absl::StatusOr<KvPool> pool = ResolveKvPool(shape);
  if (!pool.ok()) return pool.status();
  p.spec_ = shape;
  p.pool_ = std::move(*pool);
  return p;
}

uint8_t* HostKvPool::Element(uint32_t layer, uint32_t kv, uint32_t block, uint32_t token,
                             uint32_t head, uint32_t dim) const {
  const KvPoolSpec& s = spec_;
  const uint64_t e = KvDtypeBytes(s.dtype);
  // Index of (token, head, dim) inside one [block_tokens, kv_heads, head_dim] slice.
  const uint64_t inner = (uint64_t{token} * s.kv_heads + head) * s.head_dim + dim;
  const uint64_t slice = uint64_t{s.block_tokens} * s.kv_heads * s.head_dim;
  uint64_t flat = 0;  // element index within the tensor
  size_t tensor = 0;
  switch (s.layout) {
    case KvLayout::kFlashAttn:  // [2, num_blocks, T, H, D]
      tensor = layer;
      flat = (uint64_t{kv} * s.num_blocks + block) * slice + inner;
      break;
    case KvLayout::kBlockFirst:  // [num_blocks, 2, T, H, D]
      tensor = layer;
      flat = (uint64_t{block} * 2 + kv) * slice + inner;
      break;
    case KvLayout::kSplitKv:  // K, V tensors [num_blocks, T, H, D]
      tensor = 2 * size_t{layer} + kv;
      flat = uint64_t{block} * slice + inner;
      break;
    case KvLayout::kCrossLayer:  // [num_blocks, layers, 2, T, H, D]
      tensor = 0;
      flat = ((uint64_t{block} * s.layers + layer) * 2 + kv) * slice + inner;
      break;
  }
  return static_cast<uint8_t*>(s.layer_bases[tensor]) + flat * e;
}

std::vector<std::pair<uint8_t*, uint64_t>> HostKvPool::Tensors() const {
  std::vector<std::pair<uint8_t*, uint64_t>> out;
  for (const MappedBuffer& t : tensors_) out.push_back({t.data(), t.size()});
  return out;
}

}  // namespace strata::gpu_agent
