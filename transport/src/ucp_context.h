// Internal: the UCX context handle shared (by shared_ptr) between a Context, its
// MemoryRegions and its Workers, so that ucp_cleanup runs after the last of them is gone.
// Thread-safe: the context is created with mt_workers_shared.
#pragma once

#include <ucp/api/ucp.h>

#include <memory>

#include "absl/status/statusor.h"
#include "strata/transport/worker.h"

namespace strata::transport {

class UcpContext {
 public:
  // Takes ownership of `context` (ucp_cleanup on destruction).
  UcpContext(ucp_context_h context, bool peer_failure_handling)
      : context_(context), peer_failure_handling_(peer_failure_handling) {}
  ~UcpContext() { ucp_cleanup(context_); }
  UcpContext(const UcpContext&) = delete;
  UcpContext& operator=(const UcpContext&) = delete;

  ucp_context_h get() const { return context_; }
  // TransportOptions::peer_failure_handling.
  bool peer_failure_handling() const { return peer_failure_handling_; }

 private:
  const ucp_context_h context_;
  const bool peer_failure_handling_;
};

// Creates a Worker (worker.cc) on `context`. Errors as Context::CreateWorker.
absl::StatusOr<std::unique_ptr<Worker>> CreateUcpWorker(std::shared_ptr<UcpContext> context);

}  // namespace strata::transport
