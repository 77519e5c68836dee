// CancelWatch: tells a data call that its client cancelled it (gave up, or died: its gRPC
// connection closed), so that the call's UCX transfer stops at once instead of at its deadline.
// gRPC's sync server offers no callback for that, only ServerContext::IsCancelled, which is
// thread-safe: one thread polls the contexts of the calls being watched, every few
// milliseconds, and only while there are any.
#pragma once

#include <atomic>
#include <cstdint>
#include <thread>

#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "grpcpp/server_context.h"

namespace strata::storenode {

class CancelWatch {
 public:
  // While a Scope lives, its flag is set once its call's context reports cancellation, or
  // once `give_up_at` has passed.
  class Scope {
   public:
    Scope(CancelWatch* watch, const grpc::ServerContext* ctx,
          absl::Time give_up_at = absl::InfiniteFuture());
    ~Scope();
    Scope(const Scope&) = delete;
    Scope& operator=(const Scope&) = delete;
    const std::atomic<bool>* cancelled() const { return &cancelled_; }

   private:
    CancelWatch* const watch_;
    std::atomic<bool> cancelled_{false};
  };

  CancelWatch() = default;
  ~CancelWatch();  // after every Scope: stops the thread
  CancelWatch(const CancelWatch&) = delete;
  CancelWatch& operator=(const CancelWatch&) = delete;

 private:
  struct Watched {
    const grpc::ServerContext* ctx;
    absl::Time give_up_at;
  };
  void Add(std::atomic<bool>* flag, Watched what);
  void Remove(std::atomic<bool>* flag);
  void Loop();

  absl::Mutex mu_;
  absl::flat_hash_map<std::atomic<bool>*, Watched> watched_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  absl::Time retry_at_ ABSL_GUARDED_BY(mu_);  // a thread that could not start: not before
  std::thread thread_;                        // started with the first Scope
};

}  // namespace strata::storenode
