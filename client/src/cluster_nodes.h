// The cluster client's connections (cluster_client.cc): one GrpcStoreClient per member,
// connected on first use with the client's namespaces and memory registered on it. A node
// whose call failed is marked down for a while, so that the next calls fail over at once
// instead of waiting for it; the while doubles (1 s up to 32 s) as long as the node keeps
// failing, and starts again at 1 s once it connects.
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "grpc_store_client.h"
#include "strata/cluster/membership.h"

namespace strata::client::internal {

class ClusterNodes {
 public:
  explicit ClusterNodes(ClientOptions options) : options_(std::move(options)) {}

  // The client of member `m`, connected on first use (namespaces and memory registered), or
  // its error while it is marked down. Connecting takes at most 2 s, within `end`.
  absl::StatusOr<std::shared_ptr<GrpcStoreClient>> Node(const cluster::Member& m, absl::Time end);
  // Member `m`'s client if it is connected, or its error while it is marked down; nullopt
  // when it has to be connected.
  std::optional<absl::StatusOr<std::shared_ptr<GrpcStoreClient>>> Known(const cluster::Member& m);
  // Marks the node down if its call through `c` failed UNAVAILABLE, or ran out of time that
  // was cut short (`cut_short`: the caller gave it part of its deadline, keeping the rest for
  // another replica) — a node that hangs costs the calls after it nothing while it is down.
  void NoteResult(const cluster::Member& m, const std::shared_ptr<GrpcStoreClient>& c,
                  const absl::Status& s, bool cut_short = false);

  // Registered on every connected node now, and on each node as it connects.
  absl::Status RegisterMemory(void* ptr, size_t len);
  absl::Status UnregisterMemory(void* ptr);
  void AddNamespace(const NamespaceSpec& spec);
  // The first connected node's data-plane description; empty if none is connected.
  std::string FirstDescription() const;
  // "ID (ERROR)" for each node marked down now, comma-separated; empty if none.
  std::string DownNow() const;

 private:
  struct Entry {
    std::string address;
    std::shared_ptr<GrpcStoreClient> client;
    absl::Time down_until = absl::InfinitePast();
    absl::Status last_error;
    int strikes = 0;  // failures since it last connected: the back-off doubles with each
  };
  void MarkDownLocked(Entry& e, absl::Status error) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const ClientOptions options_;
  mutable absl::Mutex mu_;
  std::map<std::string, Entry> nodes_ ABSL_GUARDED_BY(mu_);
  std::vector<NamespaceSpec> specs_ ABSL_GUARDED_BY(mu_);
  std::vector<std::pair<void*, size_t>> memory_ ABSL_GUARDED_BY(mu_);
};

}  // namespace strata::client::internal
