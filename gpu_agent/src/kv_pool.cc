#include "strata/gpu_agent/kv_pool.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace strata::gpu_agent {
namespace {

struct LayoutName {
  KvLayout layout;
  std::string_view name;
};
constexpr LayoutName kLayouts[] = {{KvLayout::kFlashAttn, "flash-attn"},
                                   {KvLayout::kBlockFirst, "block-first"},
                                   {KvLayout::kSplitKv, "split-kv"},
                                   {KvLayout::kCrossLayer, "cross-layer"}};

size_t ExpectedBases(KvLayout layout, uint32_t layers) {
  switch (layout) {
    case KvLayout::kFlashAttn:
    case KvLayout::kBlockFirst:
      return layers;
    case KvLayout::kSplitKv:
      return 2 * static_cast<size_t>(layers);
    case KvLayout::kCrossLayer:
      return 1;
  }
  return 0;
}

// a × b, or false when it overflows 64 bits.
bool Mul(uint64_t a, uint64_t b, uint64_t* out) { return !__builtin_mul_overflow(a, b, out); }

}  // namespace

absl::StatusOr<KvLayout> ParseKvLayout(std::string_view name) {
  for (const LayoutName& l : kLayouts) {
    if (l.name == name) return l.layout;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("layout \"", std::string(name),
                   "\": expected flash-attn, block-first, split-kv or cross-layer"));
}

std::string_view KvLayoutName(KvLayout layout) {
  for (const LayoutName& l : kLayouts) {
    if (l.layout == layout) return l.name;
  }
  return "unknown";
}

uint64_t KvPool::lowest_address() const {
  return slice_bases.empty() ? 0 : *std::min_element(slice_bases.begin(), slice_bases.end());
}

uint64_t KvPool::end_address() const {
  uint64_t end = 0;
  for (uint64_t base : slice_bases) {
    end = std::max(end, base + (num_blocks - 1) * block_stride + slice_bytes);
  }
  return end;
}

absl::StatusOr<KvPool> ResolveKvPool(const KvPoolSpec& spec) {
  const std::pair<const char*, uint32_t> dims[] = {{"layers", spec.layers},
                                                   {"num_blocks", spec.num_blocks},
                                                   {"block_tokens", spec.block_tokens},
                                                   {"kv_heads", spec.kv_heads},
                                                   {"head_dim", spec.head_dim}};
  for (const auto& [name, value] : dims) {
    if (value == 0) return absl::InvalidArgumentError(absl::StrCat(name, ": must be at least 1"));
  }
  const size_t want = ExpectedBases(spec.layout, spec.layers);
  if (spec.layer_bases.size() != want) {
    return absl::InvalidArgumentError(absl::StrCat(
        "layer_bases: ", spec.layer_bases.size(), " pointers; layout ",
        std::string(KvLayoutName(spec.layout)), " with ", spec.layers, " layers needs ", want));
  }
  for (size_t i = 0; i < spec.layer_bases.size(); ++i) {
    if (spec.layer_bases[i] == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("layer_bases[", i, "]: null"));
    }
  }
  KvPool p;
  p.device = spec.device;
  p.layout = spec.layout;
  p.layers = spec.layers;
  p.num_blocks = spec.num_blocks;
  p.block_tokens = spec.block_tokens;
  p.kv_heads = spec.kv_heads;
  p.head_dim = spec.head_dim;
  p.dtype = spec.dtype;
  uint64_t elems = 0;
  uint64_t tensor = 0;  // bytes of one per-layer (or cross-layer) tensor
  if (!Mul(uint64_t{spec.block_tokens} * spec.kv_heads, spec.head_dim, &elems) ||
      !Mul(elems, KvDtypeBytes(spec.dtype), &p.slice_bytes) ||
      !Mul(p.slice_bytes, 2ull * spec.layers, &p.block_bytes) ||
      !Mul(p.block_bytes, spec.num_blocks, &tensor)) {
    return absl::InvalidArgumentError("pool: its size overflows 64 bits");
  }
  p.slice_bases.resize(p.num_slices());
  for (uint32_t layer = 0; layer < spec.layers; ++layer) {
    for (uint32_t kv = 0; kv < 2; ++kv) {
      uint64_t& base = p.slice_bases[2 * layer + kv];
      switch (spec.layout) {
        case KvLayout::kFlashAttn:  // [2, num_blocks, ...]: V after all K blocks
          base = reinterpret_cast<uint64_t>(spec.layer_bases[layer]) +
                 kv * p.slice_bytes * spec.num_blocks;
          p.block_stride = p.slice_bytes;
          break;
        case KvLayout::kBlockFirst:  // [num_blocks, 2, ...]
          base = reinterpret_cast<uint64_t>(spec.layer_bases[layer]) + kv * p.slice_bytes;
          p.block_stride = 2 * p.slice_bytes;
          break;
        case KvLayout::kSplitKv:  // K and V tensors [num_blocks, ...]
          base = reinterpret_cast<uint64_t>(spec.layer_bases[2 * layer + kv]);
          p.block_stride = p.slice_bytes;
          break;
        case KvLayout::kCrossLayer:  // [num_blocks, layers, 2, ...]
          base =
              reinterpret_cast<uint64_t>(spec.layer_bases[0]) + (2ull * layer + kv) * p.slice_bytes;
          p.block_stride = p.block_bytes;
          break;
      }
    }
  }
  // Separate tensors (one per layer, or per layer and K/V) must not overlap: a pool whose
  // layers alias would have blocks overwrite each other.
  if (spec.layer_bases.size() > 1) {
    const uint64_t span =
        spec.layout == KvLayout::kSplitKv ? tensor / (2ull * spec.layers) : tensor / spec.layers;
    std::vector<std::pair<uint64_t, size_t>> starts;
    for (size_t i = 0; i < spec.layer_bases.size(); ++i) {
      starts.push_back({reinterpret_cast<uint64_t>(spec.layer_bases[i]), i});
    }
    std::sort(starts.begin(), starts.end());
    for (size_t i = 1; i < starts.size(); ++i) {
      if (starts[i].first - starts[i - 1].first < span) {
        return absl::InvalidArgumentError(absl::StrCat("layer_bases[", starts[i - 1].second,
                                                       "] and [", starts[i].second,
                                                       "]: tensors of ", span, " bytes overlap"));
      }
    }
  }
  return p;
}

namespace {
std::string SlicesName(uint32_t layers, uint32_t block_tokens, uint32_t kv_heads,
                       uint32_t head_dim) {
  return absl::StrCat("strata-slices:[", layers, ",2,", block_tokens, ",", kv_heads, ",", head_dim,
                      "]");
}
}  // namespace

std::string StoredLayoutName(const KvPool& pool) {
  return SlicesName(pool.layers, pool.block_tokens, pool.kv_heads, pool.head_dim);
}

std::string StoredLayoutName(const KvPoolSpec& shape) {
  return SlicesName(shape.layers, shape.block_tokens, shape.kv_heads, shape.head_dim);
}

}  // namespace strata::gpu_agent
