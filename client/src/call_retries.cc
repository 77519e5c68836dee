// GrpcStoreClient's calls that go again: the public calls that name a namespace run their
// ...Once body once more after registering the namespace again if the node had forgotten it
// (a restart without a disk tier). PutSettled (store_client.h, for any StoreClient) asks again
// about blocks another put is writing.
#include <algorithm>

#include "grpc_store_client.h"
#include "strata/common/block_key.h"
#include "strata/common/namespace.h"

namespace strata::client::internal {

// What is left of a call ending at `end`; a deadline that passed stays passed (zero would
// mean the default deadline).
static CallOptions Left(absl::Time end) {
  return CallOptions{std::max(absl::Nanoseconds(1), end - absl::Now())};
}

template <typename Op>
auto GrpcStoreClient::Reregistering(const Namespace& ns, const CallOptions& call, Op op)
    -> decltype(op(call)) {
  const absl::Time end = absl::FromChrono(Deadline(call));
  auto r = op(Left(end));
  if (r.ok() || !IsNamespaceNotRegistered(r.status())) return r;
  if (!RegisterNamespace(ns.spec, Left(end)).ok()) return r;
  return op(Left(end));
}

absl::StatusOr<LookupResult> GrpcStoreClient::Lookup(const Namespace& ns, std::string_view scope,
                                                     std::span<const ChainHash> hashes,
                                                     const CallOptions& call) {
  return Reregistering(ns, call,
                       [&](const CallOptions& c) { return LookupOnce(ns, scope, hashes, c); });
}

absl::StatusOr<std::vector<BlockLocation>> GrpcStoreClient::LookupEach(
    const Namespace& ns, std::string_view scope, std::span<const ChainHash> hashes,
    const CallOptions& call) {
  return Reregistering(ns, call,
                       [&](const CallOptions& c) { return LookupEachOnce(ns, scope, hashes, c); });
}

absl::StatusOr<PutResult> GrpcStoreClient::Put(const Namespace& ns, std::string_view scope,
                                               std::span<const BlockWrite> blocks,
                                               const CallOptions& call, const PutOptions& put) {
  return Reregistering(ns, call,
                       [&](const CallOptions& c) { return PutOnce(ns, scope, blocks, c, put); });
}

absl::StatusOr<GetResult> GrpcStoreClient::Get(const Namespace& ns, std::string_view scope,
                                               std::span<const BlockRead> blocks,
                                               const CallOptions& call, const GetOptions& get) {
  return Reregistering(ns, call,
                       [&](const CallOptions& c) { return GetOnce(ns, scope, blocks, c, get); });
}

absl::StatusOr<uint64_t> GrpcStoreClient::Delete(const Namespace& ns, std::string_view scope,
                                                 std::span<const ChainHash> hashes,
                                                 const CallOptions& call) {
  return Reregistering(ns, call,
                       [&](const CallOptions& c) { return DeleteOnce(ns, scope, hashes, c); });
}

absl::StatusOr<std::vector<absl::Status>> GrpcStoreClient::Publish(
    const Namespace& ns, std::string_view scope, std::span<const ChainHash> hashes,
    std::span<const uint64_t> sizes, const PeerLocation& location, absl::Duration ttl,
    const CallOptions& call) {
  return Reregistering(ns, call, [&](const CallOptions& c) {
    return PublishOnce(ns, scope, hashes, sizes, location, ttl, c);
  });
}

absl::StatusOr<uint64_t> GrpcStoreClient::Prefetch(const Namespace& ns, std::string_view scope,
                                                   std::span<const ChainHash> hashes,
                                                   std::string_view session_id,
                                                   const CallOptions& call) {
  return Reregistering(ns, call, [&](const CallOptions& c) {
    return PrefetchOnce(ns, scope, hashes, session_id, c);
  });
}

}  // namespace strata::client::internal

namespace strata::client {

absl::StatusOr<PutResult> PutSettled(StoreClient& client, const Namespace& ns,
                                     std::string_view scope, std::span<const BlockWrite> blocks,
                                     absl::Time end, const PutOptions& put) {
  using internal::Left;
  absl::StatusOr<PutResult> r = client.Put(ns, scope, blocks, Left(end), put);
  // The other put commits within a round trip or two unless it fails; it holds its
  // reservation at most the node's reservation TTL.
  absl::Duration pause = absl::Milliseconds(2);
  while (r.ok()) {
    std::vector<size_t> pending;
    std::vector<BlockWrite> again;
    for (size_t i = 0; i < blocks.size(); ++i) {
      if (!IsBlockBeingWritten(r->blocks[i])) continue;
      pending.push_back(i);
      again.push_back(blocks[i]);
    }
    if (pending.empty() || absl::Now() + pause >= end) break;
    absl::SleepFor(pause);
    pause = std::min(2 * pause, absl::Milliseconds(50));
    absl::StatusOr<PutResult> next = client.Put(ns, scope, again, Left(end), put);
    if (!next.ok()) break;  // the first answers stand
    for (size_t k = 0; k < pending.size(); ++k) r->blocks[pending[k]] = next->blocks[k];
    internal::TallyPut(&*r);
  }
  return r;
}

}  // namespace strata::client
