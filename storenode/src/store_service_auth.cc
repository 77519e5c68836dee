// StoreServiceImpl: who is calling, what the caller may touch, and reads of a tenant's scope
// that see the shared scope first (docs/design/security.md).
#include <algorithm>
#include <string_view>

#include "absl/strings/str_cat.h"
#include "grpcpp/server_context.h"
#include "store_service.h"
#include "strata/proto/bearer_token.h"

namespace strata::storenode {

absl::StatusOr<Principal> StoreServiceImpl::Caller(const grpc::ServerContext* ctx) const {
  if (auth_ == nullptr || !auth_->required()) {
    return auth_ != nullptr ? auth_->Authenticate(std::nullopt, std::nullopt)
                            : AnonymousPrincipal();
  }
  absl::StatusOr<std::optional<std::string_view>> token = proto::BearerToken(*ctx);
  if (!token.ok()) return token.status();
  std::string cn;
  std::optional<std::string_view> cert;
  // Set only for a certificate the TLS handshake verified against tls_client_ca.
  std::shared_ptr<const grpc::AuthContext> peer = ctx->auth_context();
  if (peer != nullptr && peer->IsPeerAuthenticated()) {
    std::vector<grpc::string_ref> names = peer->FindPropertyValues("x509_common_name");
    if (!names.empty()) {
      cn.assign(names[0].data(), names[0].size());
      cert = cn;
    }
  }
  return auth_->Authenticate(*token, cert);
}

absl::StatusOr<std::string> StoreServiceImpl::Authorize(const grpc::ServerContext* ctx,
                                                        const std::string& requested, Access access,
                                                        Principal* principal) {
  absl::StatusOr<Principal> p = Caller(ctx);
  if (!p.ok()) {
    metrics_->AddDenied("", p.status().code());
    return p.status();
  }
  absl::StatusOr<std::string> scope = ResolveScope(*p, requested, access);
  if (!scope.ok()) metrics_->AddDenied(p->tenant, scope.status().code());
  if (principal != nullptr) *principal = *std::move(p);
  return scope;
}

absl::Status StoreServiceImpl::RequireAnyRole(const grpc::ServerContext* ctx, uint8_t roles,
                                              const char* call) {
  absl::StatusOr<Principal> p = Caller(ctx);
  if (!p.ok()) {
    metrics_->AddDenied("", p.status().code());
    return p.status();
  }
  if ((p->roles & roles) != 0) return absl::OkStatus();
  metrics_->AddDenied(p->tenant, absl::StatusCode::kPermissionDenied);
  return absl::PermissionDeniedError(
      absl::StrCat(call, ": not allowed to principal ", p->name, " (roles)"));
}

std::string StoreServiceImpl::SessionKey(const Principal& p, const std::string& session) const {
  if (auth_ == nullptr || !auth_->required() || session.empty()) return session;
  // '/' cannot occur in a tenant name, so "a/b" of tenant a is not session "b" of tenant "a/".
  return absl::StrCat(p.tenant, "/", session);
}

bool StoreServiceImpl::SharedFirst(const std::string& scope) const {
  return scope != kSharedScope && shared_used_.load(std::memory_order_relaxed);
}

std::vector<std::optional<WarmTier::BlockMeta>> StoreServiceImpl::FindBlocks(
    NamespaceId ns, const std::string& scope, std::span<const ChainHash> hashes, bool each_block,
    bool exact, bool count, std::vector<StoreRun>* runs) {
  std::vector<std::optional<WarmTier::BlockMeta>> found;
  if (exact || !SharedFirst(scope)) {
    if (each_block) return store_->LookupEach(ns, scope, hashes, count);
    std::vector<WarmTier::BlockMeta> prefix = store_->Lookup(ns, scope, hashes, count);
    found.assign(prefix.begin(), prefix.end());
    if (runs != nullptr && !prefix.empty()) runs->push_back({&scope, 0, prefix.size()});
    return found;
  }
  if (each_block) {
    // Counted once per block, below: a hit in either scope, else a miss.
    found = store_->LookupEach(ns, std::string(kSharedScope), hashes, /*count=*/false);
    std::vector<size_t> missing;
    std::vector<ChainHash> rest;
    for (size_t i = 0; i < found.size(); ++i) {
      if (found[i].has_value()) continue;
      missing.push_back(i);
      rest.push_back(hashes[i]);
    }
    if (!rest.empty()) {
      std::vector<std::optional<WarmTier::BlockMeta>> own =
          store_->LookupEach(ns, scope, rest, /*count=*/false);
      for (size_t k = 0; k < missing.size(); ++k) found[missing[k]] = own[k];
    }
  } else {
    // The prefix as runs in shared and in `scope` in turn, shared first, until neither goes
    // on. Blocks past its end are not touched (eviction goes by recency: a prefix looked up
    // behind a gap must not keep them) nor counted. Within a run of `scope` a block shared also
    // holds is answered from `scope`: the same hash in one namespace, so the same block.
    static const std::string* const shared = new std::string(kSharedScope);
    std::vector<StoreRun> mine;
    std::vector<StoreRun>* into = runs != nullptr ? runs : &mine;
    bool in_shared = true;
    for (int asked = 0; found.size() < hashes.size(); ++asked, in_shared = !in_shared) {
      const std::string* in = in_shared ? shared : &scope;
      std::vector<WarmTier::BlockMeta> run =
          store_->Lookup(ns, *in, hashes.subspan(found.size()), /*count=*/false);
      if (run.empty() && asked > 0) break;  // both scopes miss the next block
      if (!run.empty()) into->push_back({in, found.size(), run.size()});
      found.insert(found.end(), run.begin(), run.end());
    }
    if (runs == nullptr) RetouchRuns(ns, hashes, mine);
  }
  if (count) {
    const uint64_t hits =
        std::count_if(found.begin(), found.end(), [](const auto& m) { return m.has_value(); });
    store_->CountLookups(hits, hashes.size() - hits);
  }
  return found;
}

void StoreServiceImpl::RetouchRuns(NamespaceId ns, std::span<const ChainHash> hashes,
                                   std::span<const StoreRun> runs) {
  if (runs.size() < 2) return;
  for (auto it = runs.rbegin(); it != runs.rend(); ++it) {
    store_->Touch(ns, *it->scope, hashes.subspan(it->begin, it->n));
  }
}

std::vector<StoreServiceImpl::ScopeGroup> StoreServiceImpl::GroupByScope(
    NamespaceId ns, const std::string& scope, std::span<const ChainHash> hashes) {
  std::vector<ScopeGroup> groups;
  if (!SharedFirst(scope)) {
    ScopeGroup& g = groups.emplace_back();
    g.scope = scope;
    g.hashes.assign(hashes.begin(), hashes.end());
    g.index.resize(hashes.size());
    for (size_t i = 0; i < hashes.size(); ++i) g.index[i] = i;
    return groups;
  }
  // Not counted: the read that follows counts each block in the scope it reads from.
  std::vector<std::optional<WarmTier::BlockMeta>> in_shared =
      store_->LookupEach(ns, std::string(kSharedScope), hashes, /*count=*/false);
  ScopeGroup shared{std::string(kSharedScope), {}, {}};
  ScopeGroup own{scope, {}, {}};
  for (size_t i = 0; i < hashes.size(); ++i) {
    ScopeGroup& g = in_shared[i].has_value() ? shared : own;
    g.index.push_back(i);
    g.hashes.push_back(hashes[i]);
  }
  if (!shared.index.empty()) groups.push_back(std::move(shared));
  if (!own.index.empty()) groups.push_back(std::move(own));
  return groups;
}

}  // namespace strata::storenode
