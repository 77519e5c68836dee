#include "phases.h"

#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <latch>
#include <optional>
#include <span>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace strata::bench {
namespace {

std::atomic<int> g_reported_errors{0};

void PutRange(const PhaseContext& ctx, Stream& s, size_t begin, size_t end, PhaseResult* r) {
  const Dataset& ds = *ctx.ds;
  std::vector<client::BlockWrite> writes;
  for (size_t b = begin; b < end; b += ctx.batch) {
    size_t n = std::min<size_t>(ctx.batch, end - b);
    client::CallOptions call;
    if (!NextCallOptions(ctx, &call)) {
      r->complete = false;
      return;
    }
    writes.clear();
    for (size_t i = 0; i < n; ++i) {
      const uint8_t* data = ds.Preloaded(b + i);
      if (data == nullptr) {
        uint8_t* out = s.staging.data() + i * ds.block_size;
        FillBlock(ds.hashes[b + i], out, ds.block_size);
        data = out;
      }
      writes.push_back({ds.hashes[b + i], data, ds.block_size});
    }
    Clock::time_point t0 = Clock::now();
    absl::StatusOr<client::PutResult> put = s.client->Put(*ctx.ns, "", writes, call);
    r->call_latencies_us.push_back(MicrosSince(t0));
    if (!put.ok()) {
      CallFailed(ctx, "put", put.status(), n, r);
      if (!r->complete) return;
      continue;
    }
    for (size_t i = 0; i < n; ++i) CountPutBlock(ds, b + i, put->blocks[i], "put block", r);
  }
}

// Compares a stream's fetched batches with the data set on a thread of its own, one batch at
// a time, so that the stream's next Get runs while the last one is compared (the client has
// already verified every block's checksum; an engine would not compare at all). The stream
// fetches into the two halves of its staging memory in turn and hands each batch over with
// Check, which first waits until the batch before it — the other half — has been compared.
class GetChecker {
 public:
  explicit GetChecker(const Dataset& ds) : ds_(ds), thread_([this] { Run(); }) {}
  ~GetChecker() {
    {
      absl::MutexLock lock(&mu_);
      stop_ = true;
    }
    thread_.join();
  }

  // Blocks [first, first + got.blocks.size()) of the data set, fetched into `data`.
  void Check(size_t first, client::GetResult got, const uint8_t* data) {
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(this, &GetChecker::Idle));
    job_ = Job{first, std::move(got), data};
  }

  // Waits for the last batch, then adds what was compared to *r.
  void Finish(PhaseResult* r) {
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(this, &GetChecker::Idle));
    r->Merge(result_);
    result_ = PhaseResult{};
  }

 private:
  struct Job {
    size_t first = 0;
    client::GetResult got;
    const uint8_t* data = nullptr;
  };
  bool Idle() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !job_ && !busy_; }
  bool HasWork() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return job_ || stop_; }

  void Run() {
    for (;;) {
      Job job;
      {
        absl::MutexLock lock(&mu_);
        mu_.Await(absl::Condition(this, &GetChecker::HasWork));
        if (!job_) return;
        job = *std::move(job_);
        job_.reset();
        busy_ = true;
      }
      PhaseResult part;
      for (size_t i = 0; i < job.got.blocks.size(); ++i) {
        CountGetBlock(ds_, job.first + i, job.got.blocks[i], job.data + i * ds_.block_size,
                      job.got.sizes[i], "get block", &part);
      }
      absl::MutexLock lock(&mu_);
      result_.Merge(part);
      busy_ = false;
    }
  }

  const Dataset& ds_;
  absl::Mutex mu_;
  std::optional<Job> job_ ABSL_GUARDED_BY(mu_);
  bool busy_ ABSL_GUARDED_BY(mu_) = false;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  PhaseResult result_ ABSL_GUARDED_BY(mu_);
  std::thread thread_;  // last: starts once the members above exist
};

void GetRange(const PhaseContext& ctx, Stream& s, size_t begin, size_t end, PhaseResult* r) {
  const Dataset& ds = *ctx.ds;
  const size_t half = size_t{ctx.batch} * ds.block_size;
  GetChecker checker(ds);
  std::vector<client::BlockRead> reads;
  size_t next = 0;  // the half the next call fetches into: the checker never holds it
  for (size_t b = begin; b < end; b += ctx.batch) {
    size_t n = std::min<size_t>(ctx.batch, end - b);
    client::CallOptions call;
    if (!NextCallOptions(ctx, &call)) {
      r->complete = false;
      break;
    }
    uint8_t* into = s.staging.data() + next * half;
    reads.clear();
    for (size_t i = 0; i < n; ++i) {
      reads.push_back({ds.hashes[b + i], into + i * ds.block_size, ds.block_size});
    }
    Clock::time_point t0 = Clock::now();
    absl::StatusOr<client::GetResult> got = s.client->Get(*ctx.ns, "", reads, call);
    r->call_latencies_us.push_back(MicrosSince(t0));
    if (!got.ok()) {
      CallFailed(ctx, "get", got.status(), n, r);
      if (!r->complete) break;
      continue;
    }
    checker.Check(b, *std::move(got), into);
    next ^= 1;  // only now: a failed call's half is not the checker's, so it is reused
  }
  checker.Finish(r);
}

// Chains s, s + K, s + 2K, ... of the data set (each `rounds` times): one Lookup per chain,
// expecting all of it.
void LookupChains(const PhaseContext& ctx, Stream& s, size_t first, size_t step, PhaseResult* r) {
  const Dataset& ds = *ctx.ds;
  const size_t calls = ds.chains.size() * ctx.lookup_rounds;
  for (size_t k = first; k < calls; k += step) {
    const size_t c = k % ds.chains.size();
    auto [begin, end] = ds.chains[c];
    client::CallOptions call;
    if (!NextCallOptions(ctx, &call)) {
      r->complete = false;
      return;
    }
    std::span<const ChainHash> chain(ds.hashes.data() + begin, end - begin);
    Clock::time_point t0 = Clock::now();
    absl::StatusOr<client::LookupResult> found = s.client->Lookup(*ctx.ns, "", chain, call);
    r->call_latencies_us.push_back(MicrosSince(t0));
    if (!found.ok()) {
      CallFailed(ctx, "lookup", found.status(), chain.size(), r);
      if (!r->complete) return;
      continue;
    }
    size_t good = 0;
    for (size_t i = 0; i < found->matched_blocks && i < found->blocks.size(); ++i) {
      if (found->blocks[i].size == ds.block_size) ++good;
    }
    r->blocks += good;
    if (good < chain.size()) {
      CountError(absl::StrCat("lookup chain ", c),
                 absl::NotFoundError(
                     absl::StrCat(good, " of ", chain.size(), " blocks found with the right size")),
                 chain.size() - good, r);
    }
  }
}

}  // namespace

void ReportError(const std::string& what, const absl::Status& status) {
  if (g_reported_errors.fetch_add(1) < 8) {
    std::fprintf(stderr, "strata-bench: %s: %s\n", what.c_str(), status.ToString().c_str());
  }
}

bool NextCallOptions(const PhaseContext& ctx, client::CallOptions* call) {
  Clock::time_point now = Clock::now();
  if (now >= ctx.run_end) return false;
  call->deadline = absl::FromChrono(std::min(ctx.call_limit, ctx.run_end - now));
  return true;
}

void CountError(const std::string& what, const absl::Status& status, size_t blocks,
                PhaseResult* r) {
  r->errors += blocks;
  r->errors_by_code[absl::StatusCodeToString(status.code())] += blocks;
  ReportError(what, status);
}

void CallFailed(const PhaseContext& ctx, const std::string& what, const absl::Status& status,
                size_t blocks, PhaseResult* r) {
  if (status.code() == absl::StatusCode::kDeadlineExceeded && Clock::now() >= ctx.run_end) {
    r->complete = false;
    return;
  }
  CountError(what, status, blocks, r);
}

bool CountPutBlock(const Dataset& ds, size_t i, const absl::Status& status, absl::string_view what,
                   PhaseResult* r) {
  if (status.ok()) {
    ++r->blocks;
    r->bytes += ds.block_size;
    return true;
  }
  if (status.code() == absl::StatusCode::kAlreadyExists) {
    ++r->blocks;  // stored before (an earlier run with this --seed): no bytes were sent
    ++r->already_present;
    return true;
  }
  CountError(absl::StrCat(what, " ", i), status, 1, r);
  return false;
}

void CountGetBlock(const Dataset& ds, size_t i, const absl::Status& status, const uint8_t* data,
                   uint64_t size, absl::string_view what, PhaseResult* r) {
  if (!status.ok()) {
    CountError(absl::StrCat(what, " ", i), status, 1, r);
    return;
  }
  const uint8_t* want = ds.Preloaded(i);
  bool same =
      size == ds.block_size && (want != nullptr ? std::memcmp(data, want, ds.block_size) == 0
                                                : BlockMatches(ds.hashes[i], data, ds.block_size));
  if (!same) {
    ++r->errors;
    ++r->mismatches;
    ReportError(absl::StrCat(what, " ", i),
                absl::DataLossError(
                    absl::StrCat("wrong bytes (", size, " of ", ds.block_size, " returned)")));
    return;
  }
  ++r->blocks;
  r->bytes += ds.block_size;
}

double MicrosSince(Clock::time_point t0) {
  return std::chrono::duration<double, std::micro>(Clock::now() - t0).count();
}

double ProcessCpuSeconds() {
  struct rusage u = {};
  getrusage(RUSAGE_SELF, &u);
  auto sec = [](const timeval& t) { return static_cast<double>(t.tv_sec) + t.tv_usec / 1e6; };
  return sec(u.ru_utime) + sec(u.ru_stime);
}

PhaseResult RunPhase(const std::string& op, const PhaseContext& ctx, std::vector<Stream>& streams) {
  size_t k = streams.size();
  size_t n = ctx.ds->hashes.size();
  std::vector<PhaseResult> parts(k);
  std::latch start(1);
  std::vector<std::thread> threads;
  for (size_t i = 0; i < k; ++i) {
    threads.emplace_back([&, i] {
      start.wait();
      size_t begin = n * i / k, end = n * (i + 1) / k;
      if (op == "put") PutRange(ctx, streams[i], begin, end, &parts[i]);
      if (op == "get") GetRange(ctx, streams[i], begin, end, &parts[i]);
      if (op == "lookup") LookupChains(ctx, streams[i], i, k, &parts[i]);
    });
  }
  double cpu0 = ProcessCpuSeconds();
  Clock::time_point t0 = Clock::now();
  start.count_down();
  for (std::thread& t : threads) t.join();
  PhaseResult total;
  total.op = op;
  total.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  total.client_cpu_seconds = ProcessCpuSeconds() - cpu0;
  for (const PhaseResult& p : parts) total.Merge(p);
  return total;
}

}  // namespace strata::bench
