// StoreNode: one strata-storenode process's server — the warm tier, the gRPC StoreService,
// the HTTP endpoint (/metrics /healthz /readyz) and the reaper that expires leases and
// reservations. main() builds one from a NodeConfig, starts it and calls Shutdown on SIGTERM.
//
// Thread-safe: Shutdown may be called from any thread, once.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "strata/storenode/node_config.h"

namespace strata::storenode {

class StoreNode {
 public:
  // Validates the config, maps the arena, binds both listeners (writing port_file if set).
  // INVALID_ARGUMENT for a bad config, UNAVAILABLE when a port cannot be bound,
  // RESOURCE_EXHAUSTED when the arena cannot be mapped.
  static absl::StatusOr<std::unique_ptr<StoreNode>> Start(const NodeConfig& config);
  virtual ~StoreNode() = default;

  virtual const std::string& grpc_address() const = 0;
  virtual const std::string& http_address() const = 0;

  // Stops taking calls (readyz turns 503), lets in-flight calls finish for up to
  // drain_timeout, then stops everything. Blocks until done.
  virtual void Shutdown() = 0;
  // Re-reads auth_principals_file (SIGHUP); on error the principals in use stay.
  virtual absl::Status ReloadPrincipals() = 0;
};

}  // namespace strata::storenode
