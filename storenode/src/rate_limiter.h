// LookupRateLimiter: a token bucket per tenant for Lookup, which is itself a hit/miss oracle
// (docs/design/security.md). Buckets hold blocks: a Lookup of n blocks takes n tokens; tokens
// come back at `rate` per second up to `burst`. Rate 0: unlimited.
//
// Thread-safe. One bucket per tenant name (tenants come from the principals file, so their
// number is bounded by configuration).
#pragma once

#include <cstdint>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace strata::storenode {

class LookupRateLimiter {
 public:
  LookupRateLimiter(double rate, double burst) : rate_(rate), burst_(burst) {}

  // OK and the tokens taken, or RESOURCE_EXHAUSTED with when to retry (nothing taken).
  absl::Status Take(const std::string& tenant, uint64_t blocks, absl::Time now = absl::Now());

 private:
  struct Bucket {
    double tokens = 0;
    absl::Time refilled;
  };
  const double rate_;
  const double burst_;
  absl::Mutex mu_;
  absl::flat_hash_map<std::string, Bucket> buckets_ ABSL_GUARDED_BY(mu_);
};

}  // namespace strata::storenode
