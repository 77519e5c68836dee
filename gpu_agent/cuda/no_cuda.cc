// The CUDA copy engine's stand-in for builds without the CUDA toolkit (STRATA_HAVE_CUDA off):
// the agent then has only the host twin.
#include "absl/status/status.h"
#include "strata/gpu_agent/copy_engine.h"

namespace strata::gpu_agent {

bool CudaCopyEngineBuilt() { return false; }

absl::StatusOr<std::unique_ptr<CopyEngine>> CreateCudaCopyEngine(const KvPool& pool) {
  return absl::UnimplementedError(
      "built without CUDA (the CUDA toolkit was not found at configure time, or "
      "STRATA_WITH_CUDA=OFF): only the host copy engine is available");
}

}  // namespace strata::gpu_agent
