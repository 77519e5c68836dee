#include "strata/gpu_agent/copy_engine.h"

#include "absl/strings/str_cat.h"

namespace strata::gpu_agent {

absl::Status CopyEngine::CheckIds(std::span<const uint32_t> ids, const void* staging) const {
  if (staging == nullptr && !ids.empty()) return absl::InvalidArgumentError("staging: null");
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] >= pool_.num_blocks) {
      return absl::InvalidArgumentError(
          absl::StrCat("block id ", ids[i], " (entry ", i, "): the pool has ", pool_.num_blocks));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<KvQuantSpec> CopyEngine::CheckQuant(std::span<const uint32_t> ids, KvQuant method,
                                                   const void* staging) const {
  if (absl::Status s = CheckIds(ids, staging); !s.ok()) return s;
  if (method == KvQuant::kNone) {
    return absl::InvalidArgumentError("quantization method: none (use Gather / Scatter)");
  }
  KvQuantSpec spec{method, pool_.dtype, pool_.head_dim};
  if (absl::Status v = ValidateKvQuantSpec(spec, pool_.block_bytes); !v.ok()) return v;
  return spec;
}

absl::StatusOr<std::unique_ptr<CopyEngine>> CreateCopyEngine(const KvPool& pool) {
  if (pool.device < 0) return CreateHostCopyEngine(pool, /*staging_only=*/true);
  return CreateCudaCopyEngine(pool);
}

}  // namespace strata::gpu_agent
