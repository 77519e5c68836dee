// Internal: the UCX context handle shared (by shared_ptr) between a Context, its
// MemoryRegions and its Workers, so that ucp_cleanup runs after the last of them is gone.
// Thread-safe: the context is created with mt_workers_shared.
#pragma once

#include <ucp/api/ucp.h>

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "strata/transport/context.h"
#include "strata/transport/worker.h"

namespace strata::transport {

class UcpContext {
 public:
  // Takes ownership of `context` (ucp_cleanup on destruction).
  UcpContext(ucp_context_h context, bool peer_failure_handling, absl::Duration drain_grace,
             int busy_polls_before_sleep)
      : context_(context),
        peer_failure_handling_(peer_failure_handling),
        drain_grace_(drain_grace),
        busy_polls_before_sleep_(busy_polls_before_sleep) {}
  ~UcpContext() { ucp_cleanup(context_); }
  UcpContext(const UcpContext&) = delete;
  UcpContext& operator=(const UcpContext&) = delete;

  ucp_context_h get() const { return context_; }
  // TransportOptions::peer_failure_handling.
  bool peer_failure_handling() const { return peer_failure_handling_; }
  // TransportOptions::deadline_drain_grace.
  absl::Duration drain_grace() const { return drain_grace_; }
  // Empty progress polls a worker makes, while operations are in flight, before it arms UCX's
  // event fd and sleeps (worker.cc).
  int busy_polls_before_sleep() const { return busy_polls_before_sleep_; }

 private:
  const ucp_context_h context_;
  const bool peer_failure_handling_;
  const absl::Duration drain_grace_;
  const int busy_polls_before_sleep_;
};

// The transport list UCX will use for `options`: UCX_TLS from the environment, replaced by
// options.tls when set, replaced by a TLS entry of options.ucx_settings (applied last).
std::string EffectiveTls(const TransportOptions& options);

// Creates a Worker (worker.cc) on `context`. Errors as Context::CreateWorker.
absl::StatusOr<std::unique_ptr<Worker>> CreateUcpWorker(std::shared_ptr<UcpContext> context);

}  // namespace strata::transport
