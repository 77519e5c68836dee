// The StoreClient interface's own calls, the same for every implementation: token
// convenience and the asynchronous forms.
#include <future>

#include "strata/client/store_client.h"

namespace strata::client {

absl::StatusOr<LookupResult> StoreClient::LookupTokens(const Namespace& ns, std::string_view scope,
                                                       std::span<const uint32_t> tokens,
                                                       const CallOptions& call) {
  absl::StatusOr<std::vector<ChainHash>> hashes = ns.HashTokens(tokens);
  if (!hashes.ok()) return hashes.status();
  return Lookup(ns, scope, *hashes, call);
}

std::future<absl::StatusOr<LookupResult>> StoreClient::LookupAsync(const Namespace& ns,
                                                                   std::string scope,
                                                                   std::vector<ChainHash> hashes,
                                                                   CallOptions call) {
  return std::async(std::launch::async,
                    [this, ns, scope = std::move(scope), hashes = std::move(hashes), call] {
                      return Lookup(ns, scope, hashes, call);
                    });
}

std::future<absl::StatusOr<PutResult>> StoreClient::PutAsync(const Namespace& ns, std::string scope,
                                                             std::vector<BlockWrite> blocks,
                                                             CallOptions call) {
  return std::async(std::launch::async,
                    [this, ns, scope = std::move(scope), blocks = std::move(blocks), call] {
                      return Put(ns, scope, blocks, call);
                    });
}

std::future<absl::StatusOr<GetResult>> StoreClient::GetAsync(const Namespace& ns, std::string scope,
                                                             std::vector<BlockRead> blocks,
                                                             CallOptions call) {
  return std::async(std::launch::async,
                    [this, ns, scope = std::move(scope), blocks = std::move(blocks), call] {
                      return Get(ns, scope, blocks, call, {});
                    });
}

}  // namespace strata::client
