// The phases strata-bench times: put, get and lookup over the whole data set, each run by K
// streams at once (RunPhase), and what they share — the data set, the deadlines, the error
// accounting. The mixed phase (mixed_phase.h) builds on the same pieces.
//
// A Stream belongs to one thread for the length of a phase; the PhaseContext and the data
// set it points to are read-only and shared by all of them.
#pragma once

#include <chrono>
#include <cstddef>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "bench_report.h"
#include "strata/client/store_client.h"
#include "strata/common/mapped_buffer.h"
#include "workload.h"

namespace strata::bench {

using Clock = std::chrono::steady_clock;

// What every stream of a phase shares: the data set, the namespace and the time limits.
struct PhaseContext {
  const Dataset* ds = nullptr;
  const client::Namespace* ns = nullptr;
  uint32_t batch = 0;
  Clock::time_point run_end;   // --max-seconds
  Clock::duration call_limit;  // --call-timeout
  uint32_t lookup_rounds = 1;  // --lookup-rounds
};

// One stream: a client (its own, or shared with other streams by --clients) and its own
// staging memory: two batches (2 x batch x block size bytes), so that a get phase can fetch
// into one while the last is compared with the data set.
struct Stream {
  client::StoreClient* client = nullptr;
  MappedBuffer staging;
};

// Prints the first few failures to stderr (the rest would only flood the terminal).
// Thread-safe.
void ReportError(const std::string& what, const absl::Status& status);

// The deadline for the next call: --call-timeout, cut to what --max-seconds leaves.
// false when no time is left (the phase stops and is marked incomplete).
bool NextCallOptions(const PhaseContext& ctx, client::CallOptions* call);

// A failure of `blocks` blocks with `status`: counted in r->errors and r->errors_by_code.
void CountError(const std::string& what, const absl::Status& status, size_t blocks, PhaseResult* r);

// A whole-call failure: errors for its blocks, unless --max-seconds cut the call short (then
// r->complete turns false and nothing is counted).
void CallFailed(const PhaseContext& ctx, const std::string& what, const absl::Status& status,
                size_t blocks, PhaseResult* r);

// Counts block i of `ds` as a Put reported it (`status`): stored (its bytes counted), already
// stored (dedup: already_present) or an error by code, reported as "<what> <i>". Returns
// whether the block is stored now.
bool CountPutBlock(const Dataset& ds, size_t i, const absl::Status& status, absl::string_view what,
                   PhaseResult* r);

// Counts block i of `ds` as a Get returned it (`status`; `size` bytes at `data`): verified
// (its bytes counted), an error by code, or wrong bytes (a mismatch, also an error),
// reported as "<what> <i>".
void CountGetBlock(const Dataset& ds, size_t i, const absl::Status& status, const uint8_t* data,
                   uint64_t size, absl::string_view what, PhaseResult* r);

double MicrosSince(Clock::time_point t0);

// User + system CPU seconds of this process so far: tells whether the bench itself, rather
// than the node, was the limit (they share the machine's cores when the node is local).
double ProcessCpuSeconds();

// Runs `op` ("put", "get" or "lookup") over the whole data set on every stream at once: put
// and get split the blocks into K contiguous ranges, lookup deals out chains. Wall time runs
// from the common start to the last stream's end. Blocks until every stream is done.
PhaseResult RunPhase(const std::string& op, const PhaseContext& ctx, std::vector<Stream>& streams);

}  // namespace strata::bench
