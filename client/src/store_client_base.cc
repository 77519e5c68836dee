// The StoreClient interface's own calls, the same for every implementation: token
// convenience and the asynchronous forms; tier names and a namespace's hashing.
#include <future>

#include "strata/client/store_client.h"

namespace strata::client {

std::string_view TierName(Tier tier) {
  switch (tier) {
    case Tier::kHot:
      return "hot";
    case Tier::kWarm:
      return "warm";
    case Tier::kCool:
      return "cool";
    case Tier::kCold:
      return "cold";
    case Tier::kUnknown:
      break;
  }
  return "unknown";
}

absl::StatusOr<std::vector<ChainHash>> Namespace::HashTokens(std::span<const uint32_t> tokens,
                                                             const ExtraKeys& extra) const {
  return HashPrefix(spec.hash_algorithm, tokens, spec.block_tokens, extra);
}

bool MayLandLate(const absl::Status& s) {
  switch (s.code()) {
    case absl::StatusCode::kOk:
    case absl::StatusCode::kNotFound:
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kOutOfRange:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kPermissionDenied:
    case absl::StatusCode::kUnauthenticated:
    case absl::StatusCode::kAlreadyExists:
      return false;
    default:
      return true;
  }
}

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
