// The StoreClient interface's own calls, the same for every implementation: token
// convenience and the asynchronous forms; tier names and a namespace's hashing.
#include <future>
#include <system_error>

#include "absl/strings/str_cat.h"
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

namespace {

// std::async on a new thread, or, when none can be started (the process or its cgroup at its
// thread limit), a ready RESOURCE_EXHAUSTED: the std::system_error would otherwise leave this
// exception-free library and end the engine's process.
template <typename R, typename F>
std::future<absl::StatusOr<R>> AsyncOrExhausted(F f) {
  try {
    return std::async(std::launch::async, std::move(f));
  } catch (const std::system_error& e) {
    std::promise<absl::StatusOr<R>> refused;
    refused.set_value(
        absl::ResourceExhaustedError(absl::StrCat("no thread for the async call: ", e.what())));
    return refused.get_future();
  }
}

}  // namespace

std::future<absl::StatusOr<LookupResult>> StoreClient::LookupAsync(const Namespace& ns,
                                                                   std::string scope,
                                                                   std::vector<ChainHash> hashes,
                                                                   CallOptions call) {
  return AsyncOrExhausted<LookupResult>([this, ns, scope = std::move(scope),
                                         hashes = std::move(hashes),
                                         call] { return Lookup(ns, scope, hashes, call); });
}

std::future<absl::StatusOr<PutResult>> StoreClient::PutAsync(const Namespace& ns, std::string scope,
                                                             std::vector<BlockWrite> blocks,
                                                             CallOptions call) {
  return AsyncOrExhausted<PutResult>([this, ns, scope = std::move(scope),
                                      blocks = std::move(blocks),
                                      call] { return Put(ns, scope, blocks, call); });
}

std::future<absl::StatusOr<GetResult>> StoreClient::GetAsync(const Namespace& ns, std::string scope,
                                                             std::vector<BlockRead> blocks,
                                                             CallOptions call) {
  return AsyncOrExhausted<GetResult>([this, ns, scope = std::move(scope),
                                      blocks = std::move(blocks),
                                      call] { return Get(ns, scope, blocks, call, {}); });
}

}  // namespace strata::client
