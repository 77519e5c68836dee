#include "cancel_watch.h"

#include <utility>

#include "absl/time/time.h"
#include "spdlog/spdlog.h"
#include "strata/common/threads.h"

namespace strata::storenode {
namespace {

// How often watched contexts are polled: a cancelled transfer ends within about this (plus
// the worker's own poll of its abort flag, ~1 ms).
constexpr absl::Duration kPollEvery = absl::Milliseconds(5);

}  // namespace

CancelWatch::Scope::Scope(CancelWatch* watch, const grpc::ServerContext* ctx, absl::Time give_up_at)
    : watch_(watch) {
  watch_->Add(&cancelled_, {ctx, give_up_at});
}

CancelWatch::Scope::~Scope() { watch_->Remove(&cancelled_); }

CancelWatch::~CancelWatch() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

void CancelWatch::Add(std::atomic<bool>* flag, Watched what) {
  absl::MutexLock lock(&mu_);
  watched_[flag] = what;
  if (thread_.joinable() || absl::Now() < retry_at_) return;
  // Without the thread, watched calls run to their deadlines; a call a second later tries
  // again (not every call: the node is short of threads, and of log lines to say so).
  absl::StatusOr<std::thread> thread = StartThread("the cancel watch", [this] { Loop(); });
  if (thread.ok()) {
    thread_ = *std::move(thread);
  } else {
    retry_at_ = absl::Now() + absl::Seconds(1);
    spdlog::warn("{}", thread.status().ToString());
  }
}

void CancelWatch::Remove(std::atomic<bool>* flag) {
  // Under mu_, so the loop never reads a context whose call has returned.
  absl::MutexLock lock(&mu_);
  watched_.erase(flag);
}

void CancelWatch::Loop() {
  absl::MutexLock lock(&mu_);
  while (!stopping_) {
    auto wake = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return stopping_ || !watched_.empty(); };
    mu_.Await(absl::Condition(&wake));
    const absl::Time now = absl::Now();
    for (auto& [flag, what] : watched_) {
      if (!flag->load(std::memory_order_relaxed) &&
          (now >= what.give_up_at || what.ctx->IsCancelled())) {
        flag->store(true, std::memory_order_release);
      }
    }
    mu_.AwaitWithTimeout(absl::Condition(&stopping_), kPollEvery);
  }
}

}  // namespace strata::storenode
