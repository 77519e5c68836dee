// strata-bench's mixed phase: for a fixed time, every stream loops choosing, call by call, a
// batched Get or a batched Put (seeded RNG, --get-fraction of the calls are gets), as a store
// serving prefill and decode workers at once sees them.
//
// Gets read blocks known to be stored: the data set (put before the phase) and the fresh
// blocks this phase's puts have stored so far — a contiguous window from a random place, each
// block's bytes verified. Puts store the fresh data set's blocks in order, each block once;
// when they are all stored, puts rewrite data-set blocks (the node answers ALREADY_EXISTS:
// dedup, counted as already_present, no bytes sent).
//
// RunMixedPhase blocks until every stream is done; the data sets must stay untouched.
#pragma once

#include <utility>
#include <vector>

#include "bench_report.h"
#include "phases.h"
#include "workload.h"

namespace strata::bench {

struct MixedPlan {
  Clock::duration length{};        // streams start no call after this long
  double get_fraction = 0.8;       // 0..1
  uint64_t seed = 1;               // stream i draws from a generator seeded by (seed, i)
  const Dataset* fresh = nullptr;  // blocks the puts store for the first time; may be empty
};

// Runs the mixed phase over ctx.ds (already stored) and plan.fresh on every stream at once.
// Returns the gets' and the puts' figures (ops "mixed_get" and "mixed_put"), each with the
// phase's wall time (first stream's start to the last one's end: a call started before the
// end finishes) and CPU seconds. Calls have ctx's deadlines; --max-seconds stops the phase
// early (marked incomplete).
std::pair<PhaseResult, PhaseResult> RunMixedPhase(const PhaseContext& ctx, const MixedPlan& plan,
                                                  std::vector<Stream>& streams);

}  // namespace strata::bench
