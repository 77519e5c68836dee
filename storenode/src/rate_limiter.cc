#include "rate_limiter.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"

namespace strata::storenode {

absl::Status LookupRateLimiter::Take(const std::string& tenant, uint64_t blocks, absl::Time now) {
  if (rate_ <= 0) return absl::OkStatus();
  const double want = static_cast<double>(blocks);
  absl::MutexLock lock(&mu_);
  auto [it, fresh] = buckets_.try_emplace(tenant);
  Bucket& b = it->second;
  if (fresh) {
    b.tokens = burst_;
  } else {
    // A wall clock stepped back counts as no time passed, never as tokens taken back.
    const double elapsed_s = std::max(0.0, absl::ToDoubleSeconds(now - b.refilled));
    b.tokens = std::min(burst_, b.tokens + rate_ * elapsed_s);
  }
  b.refilled = now;
  // A Lookup larger than the burst passes with a full bucket (and empties it).
  const double need = std::min(want, burst_);
  if (need <= b.tokens) {
    b.tokens -= need;
    return absl::OkStatus();
  }
  const double wait_s = (need - b.tokens) / rate_;
  return absl::ResourceExhaustedError(
      absl::StrCat("lookup rate of tenant ", tenant, " exceeded (", rate_, " blocks/s, burst ",
                   burst_, "); retry in ", static_cast<int64_t>(std::ceil(wait_s * 1000)), " ms"));
}

}  // namespace strata::storenode
