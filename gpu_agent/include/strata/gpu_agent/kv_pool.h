// KvPoolSpec: how an inference engine's paged KV cache lies in (GPU) memory, and KvPool, the
// validated form the copy engines index with. The agent never allocates the engine's cache:
// it only reads and writes the blocks of a pool the engine registered.
//
// Every supported layout keeps the tokens × kv_heads × head_dim elements of one block's K
// (or V) in one layer contiguous: a "slice" of slice_bytes. A layout is then fully described
// by where slice (layer, K|V) of block 0 starts and how far apart consecutive blocks are, so
// adding a layout means adding a case to ResolveKvPool, not a kernel.
//
// The stored (and staged) form of a block is layout-independent: its 2 × layers slices in
// order layer 0 K, layer 0 V, layer 1 K, ... — [layers, 2, block_tokens, kv_heads, head_dim].
// A prefill worker with one layout and a decode worker with another share blocks.
//
// Plain value types; thread-compatible.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "strata/common/kv_shape.h"

namespace strata::gpu_agent {

enum class KvLayout {
  // vLLM flash-attention: per layer one tensor [2, num_blocks, block_tokens, kv_heads, head_dim]
  // (all K blocks, then all V blocks). layer_bases: one pointer per layer.
  kFlashAttn,
  // Per layer one tensor [num_blocks, 2, block_tokens, kv_heads, head_dim] (FlashInfer-style:
  // a block's K and V adjacent). layer_bases: one pointer per layer.
  kBlockFirst,
  // Per layer separate K and V tensors [num_blocks, block_tokens, kv_heads, head_dim].
  // layer_bases: 2 × layers pointers, K0, V0, K1, V1, ...
  kSplitKv,
  // One cross-layer tensor [num_blocks, layers, 2, block_tokens, kv_heads, head_dim] (a block
  // is one contiguous run). layer_bases: one pointer.
  kCrossLayer,
};

// "flash-attn", "block-first", "split-kv", "cross-layer". INVALID_ARGUMENT listing them.
absl::StatusOr<KvLayout> ParseKvLayout(std::string_view name);
std::string_view KvLayoutName(KvLayout layout);

struct KvPoolSpec {
  // CUDA device ordinal of the pool, or -1 for host memory (the host twin's pools).
  int device = -1;
  KvLayout layout = KvLayout::kFlashAttn;
  // Base pointers, as KvLayout says for each layout. Borrowed: the engine owns the memory and
  // keeps it allocated while the pool is registered.
  std::vector<void*> layer_bases;
  uint32_t layers = 0;
  uint32_t num_blocks = 0;
  uint32_t block_tokens = 0;
  uint32_t kv_heads = 0;
  uint32_t head_dim = 0;
  KvDtype dtype = KvDtype::kFp16;  // fp16, bf16 or fp8 (int8 too: one byte per element)
};

// The validated pool: one base address per slice and the block stride, what the copy engines
// (host twin and CUDA kernels alike, through copy_index.h) index with.
struct KvPool {
  int device = -1;
  KvLayout layout = KvLayout::kFlashAttn;
  uint32_t layers = 0;
  uint32_t num_blocks = 0;
  uint32_t block_tokens = 0;
  uint32_t kv_heads = 0;
  uint32_t head_dim = 0;
  KvDtype dtype = KvDtype::kFp16;
  uint64_t slice_bytes = 0;   // block_tokens × kv_heads × head_dim × dtype bytes
  uint64_t block_stride = 0;  // bytes from a slice of block b to the same slice of block b + 1
  uint64_t block_bytes = 0;   // 2 × layers × slice_bytes: one block in stored form
  // slice_bases[2 × layer + kv] (kv 0 = K, 1 = V): address of that slice of block 0.
  std::vector<uint64_t> slice_bases;

  uint32_t num_slices() const { return 2 * layers; }
  // The lowest and one-past-highest byte any block of the pool occupies (for registering the
  // pool with UCX, and for bounds checks in tests).
  uint64_t lowest_address() const;
  uint64_t end_address() const;
};

// Checks `spec` and computes its KvPool. INVALID_ARGUMENT naming the field: a zero dimension,
// the wrong number of (or a null) layer_bases, a slice or pool size that overflows 64 bits,
// or slices of different layers that overlap.
absl::StatusOr<KvPool> ResolveKvPool(const KvPoolSpec& spec);

// The namespace layout string of blocks staged from pools of this shape (the stored form is
// the same whatever the engine's layout): "strata-slices:[layers,2,block_tokens,kv_heads,
// head_dim]" with the numbers filled in.
std::string StoredLayoutName(const KvPool& pool);
std::string StoredLayoutName(const KvPoolSpec& shape);  // the same from a spec's dimensions

}  // namespace strata::gpu_agent
