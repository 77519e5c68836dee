#include "mixed_phase.h"

#include <algorithm>
#include <atomic>
#include <latch>
#include <memory>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"

namespace strata::bench {
namespace {

// splitmix64: small, seedable, the same sequence on every machine.
class Rng {
 public:
  explicit Rng(uint64_t seed) : x_(seed) {}
  uint64_t Next() {
    uint64_t z = (x_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  // Uniform in [0, n) for n > 0 (the modulo bias is below 2^-40 for the sizes used here).
  uint64_t Below(uint64_t n) { return Next() % n; }
  // Uniform in [0, 1).
  double Unit() { return static_cast<double>(Next() >> 11) * 0x1.0p-53; }

 private:
  uint64_t x_;
};

// One block of a call: which data set, which block of it.
struct Target {
  const Dataset* ds;
  size_t index;
};

// The blocks the streams share: the data set, stored before the phase, and the fresh data
// set, whose blocks puts claim in order and mark once stored, so gets may read them.
class SharedBlocks {
 public:
  SharedBlocks(const Dataset& stored, const Dataset* fresh)
      : stored_(stored),
        fresh_(fresh),
        fresh_size_(fresh == nullptr ? 0 : fresh->hashes.size()),
        fresh_stored_(std::make_unique<std::atomic<bool>[]>(fresh_size_)) {}

  // Claims up to n fresh blocks for one put: [first, first + count); count 0 once every
  // fresh block has been claimed.
  std::pair<size_t, size_t> ClaimFresh(size_t n) {
    size_t first = next_fresh_.fetch_add(n, std::memory_order_relaxed);
    if (first >= fresh_size_) return {fresh_size_, 0};
    return {first, std::min(n, fresh_size_ - first)};
  }
  void MarkStored(size_t fresh_index) {
    fresh_stored_[fresh_index].store(true, std::memory_order_release);
  }

  // Up to n readable blocks, a window from a random place in (data set, claimed fresh
  // blocks), leaving out fresh blocks whose put has not finished.
  void ReadWindow(Rng& rng, size_t n, std::vector<Target>* out) const {
    out->clear();
    size_t claimed = std::min(next_fresh_.load(std::memory_order_relaxed), fresh_size_);
    size_t total = stored_.hashes.size() + claimed;
    size_t start = rng.Below(total);
    for (size_t k = 0; k < std::min(n, total); ++k) {
      size_t j = (start + k) % total;
      if (j < stored_.hashes.size()) {
        out->push_back({&stored_, j});
      } else if (fresh_stored_[j - stored_.hashes.size()].load(std::memory_order_acquire)) {
        out->push_back({fresh_, j - stored_.hashes.size()});
      }
    }
  }

  // Up to n blocks for a put: fresh ones while any are left, else a window of the data set
  // from a random place (already stored: dedup).
  void WriteWindow(Rng& rng, size_t n, std::vector<Target>* out) {
    out->clear();
    auto [first, count] = ClaimFresh(n);
    for (size_t k = 0; k < count; ++k) out->push_back({fresh_, first + k});
    if (!out->empty()) return;
    size_t total = stored_.hashes.size();
    size_t start = rng.Below(total);
    for (size_t k = 0; k < std::min(n, total); ++k) out->push_back({&stored_, (start + k) % total});
  }

 private:
  const Dataset& stored_;
  const Dataset* fresh_;
  const size_t fresh_size_;
  std::unique_ptr<std::atomic<bool>[]> fresh_stored_;
  std::atomic<size_t> next_fresh_{0};
};

void MixedGet(const PhaseContext& ctx, const SharedBlocks& blocks, Rng& rng, Stream& s,
              const client::CallOptions& call, PhaseResult* r) {
  const uint64_t block_size = ctx.ds->block_size;
  std::vector<Target> targets;
  blocks.ReadWindow(rng, ctx.batch, &targets);
  if (targets.empty()) return;
  std::vector<client::BlockRead> reads;
  for (size_t k = 0; k < targets.size(); ++k) {
    reads.push_back(
        {targets[k].ds->hashes[targets[k].index], s.staging.data() + k * block_size, block_size});
  }
  Clock::time_point t0 = Clock::now();
  absl::StatusOr<client::GetResult> got = s.client->Get(*ctx.ns, "", reads, call);
  r->call_latencies_us.push_back(MicrosSince(t0));
  if (!got.ok()) {
    CallFailed(ctx, "mixed get", got.status(), targets.size(), r);
    return;
  }
  for (size_t k = 0; k < targets.size(); ++k) {
    const Target& t = targets[k];
    CountGetBlock(*t.ds, t.index, got->blocks[k], s.staging.data() + k * block_size, got->sizes[k],
                  t.ds == ctx.ds ? "mixed get block" : "mixed get fresh block", r);
  }
}

void MixedPut(const PhaseContext& ctx, SharedBlocks& blocks, Rng& rng, Stream& s,
              const client::CallOptions& call, PhaseResult* r) {
  const uint64_t block_size = ctx.ds->block_size;
  std::vector<Target> targets;
  blocks.WriteWindow(rng, ctx.batch, &targets);
  std::vector<client::BlockWrite> writes;
  for (size_t k = 0; k < targets.size(); ++k) {
    const Target& t = targets[k];
    const uint8_t* data = t.ds->Preloaded(t.index);
    if (data == nullptr) {
      uint8_t* out = s.staging.data() + k * block_size;
      FillBlock(t.ds->hashes[t.index], out, block_size);
      data = out;
    }
    writes.push_back({t.ds->hashes[t.index], data, block_size});
  }
  Clock::time_point t0 = Clock::now();
  absl::StatusOr<client::PutResult> put = s.client->Put(*ctx.ns, "", writes, call);
  r->call_latencies_us.push_back(MicrosSince(t0));
  if (!put.ok()) {
    CallFailed(ctx, "mixed put", put.status(), targets.size(), r);
    return;
  }
  for (size_t k = 0; k < targets.size(); ++k) {
    const Target& t = targets[k];
    bool stored = CountPutBlock(*t.ds, t.index, put->blocks[k],
                                t.ds == ctx.ds ? "mixed put block" : "mixed put fresh block", r);
    if (stored && t.ds != ctx.ds) blocks.MarkStored(t.index);
  }
}

}  // namespace

std::pair<PhaseResult, PhaseResult> RunMixedPhase(const PhaseContext& ctx, const MixedPlan& plan,
                                                  std::vector<Stream>& streams) {
  SharedBlocks blocks(*ctx.ds, plan.fresh);
  const size_t k = streams.size();
  std::vector<PhaseResult> gets(k), puts(k);
  std::latch start(1);
  Clock::time_point phase_end;  // written before count_down, read after wait
  std::vector<std::thread> threads;
  for (size_t i = 0; i < k; ++i) {
    threads.emplace_back([&, i] {
      start.wait();
      Rng rng(plan.seed * 0x100000001B3ull + i);
      while (Clock::now() < phase_end) {
        client::CallOptions call;
        if (!NextCallOptions(ctx, &call)) {
          gets[i].complete = false;
          break;
        }
        if (rng.Unit() < plan.get_fraction) {
          MixedGet(ctx, blocks, rng, streams[i], call, &gets[i]);
        } else {
          MixedPut(ctx, blocks, rng, streams[i], call, &puts[i]);
        }
        if (!gets[i].complete || !puts[i].complete) break;  // --max-seconds
      }
    });
  }
  double cpu0 = ProcessCpuSeconds();
  Clock::time_point t0 = Clock::now();
  phase_end = t0 + plan.length;
  start.count_down();
  for (std::thread& t : threads) t.join();
  std::pair<PhaseResult, PhaseResult> total;
  total.first.op = "mixed_get";
  total.second.op = "mixed_put";
  for (size_t i = 0; i < k; ++i) {
    total.first.Merge(gets[i]);
    total.second.Merge(puts[i]);
  }
  // A stream stopped by --max-seconds stops both ops.
  bool complete = total.first.complete && total.second.complete;
  double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  double cpu = ProcessCpuSeconds() - cpu0;
  for (PhaseResult* p : {&total.first, &total.second}) {
    p->seconds = seconds;
    p->client_cpu_seconds = cpu;
    p->complete = complete;
  }
  return total;
}

}  // namespace strata::bench
