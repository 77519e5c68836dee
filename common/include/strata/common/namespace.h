// Namespace: what must match for KV to be reusable (model, KV dtype, layout, block_tokens,
// tensor-parallel shard, hash algorithm), reduced to a 64-bit NamespaceId with the algorithm
// in docs/design/block-hash.md. The store node and every client compute the same id.
//
// Plain value type; thread-compatible.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "strata/common/block_key.h"
#include "strata/common/chain_hash.h"
#include "strata/common/kv_quant.h"

namespace strata {

struct NamespaceSpec {
  std::string model_id;  // 1..256 bytes
  std::string dtype;     // "fp16", "bf16", "fp8", "int8"
  std::string layout;    // 1..128 bytes, free-form layout name
  uint32_t block_tokens = 16;
  uint32_t tp_rank = 0;
  uint32_t tp_size = 1;
  ChainHashAlgorithm hash_algorithm = ChainHashAlgorithm::kSha256;
  // Largest payload of one block; not part of the id (a node-side admission limit).
  uint64_t block_bytes = 0;
  // Opt-in lossy quantization of this namespace's blocks when they leave the warm tier
  // (codecs.md): "int8" or "fp8-e4m3" with per-vector scales over head_dim elements; "none"
  // keeps them bit-exact; "" = not stated (inherits what the node already has). Needs dtype
  // fp16 or bf16 and head_dim >= 1. Not part of the id: a storage choice, like block_bytes.
  std::string offload_quant;
  uint32_t head_dim = 0;
};

// The quantization `spec` asks for on offload; method kNone when it asks for none.
// REQUIRES: ValidateNamespaceSpec(spec).ok().
KvQuantSpec OffloadQuantOf(const NamespaceSpec& spec);

// INVALID_ARGUMENT naming the field: empty/oversized strings, unknown dtype,
// block_tokens == 0, tp_size == 0, tp_rank >= tp_size, block_bytes == 0, an unknown
// offload_quant, or quantization of a dtype other than fp16/bf16 or without head_dim.
absl::Status ValidateNamespaceSpec(const NamespaceSpec& spec);

// The 64-bit id of `spec` (fields other than block_bytes). REQUIRES: spec is valid.
NamespaceId ComputeNamespaceId(const NamespaceSpec& spec);

// What a node says of a namespace id it does not know, e.g. after a restart without a disk
// tier (namespaces then live in its memory only). The node answers INVALID_ARGUMENT with this
// in the message; a client that has the spec registers it again (protocol.md).
inline constexpr char kNamespaceNotRegistered[] = "not registered (call RegisterNamespace)";
// Whether `s` is that answer.
bool IsNamespaceNotRegistered(const absl::Status& s);

}  // namespace strata
