// Authentication and authorization of a store node's calls (docs/design/security.md): who is
// calling (a principal from a bearer token or a verified client certificate's CN), what the
// principal's roles allow, and which scope a request's `scope` field resolves to. The scope
// always comes from the principal — a request can only choose between its tenant's private
// scope and `shared`.
//
// Thread-safe: the principal table is swapped whole on Reload.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "strata/storenode/tenant_quota.h"

namespace strata::storenode {

enum Role : uint8_t {
  kRoleReader = 1,
  kRoleWriter = 2,
  kRolePublisher = 4,
  kRoleAdmin = 8,
};

inline constexpr uint8_t kAnyRole = kRoleReader | kRoleWriter | kRolePublisher | kRoleAdmin;

struct Principal {
  std::string name;    // for logs and metrics; never a secret
  std::string tenant;  // the private scope's name
  uint8_t roles = 0;
  bool Has(Role r) const { return (roles & r) != 0; }
};

// The caller of auth_mode none: tenant `default`, every role.
Principal AnonymousPrincipal();

// What a call does with the scope it names.
enum class Access { kRead, kWrite, kAdmin };

class Authenticator {
 public:
  // mode "none": every caller is `default` with all roles (no file read). mode "required":
  // principals come from `principals_file` (YAML, see security.md); INVALID_ARGUMENT naming
  // the entry for a malformed file. A non-empty `cluster_token` is one more principal,
  // `cluster` with every role: the token nodes present to each other (rebalancing). With
  // `quotas`, the file's optional `tenants:` list (per-tenant warm_quota, cool_quota,
  // cold_quota) is set there at every load.
  static absl::StatusOr<std::unique_ptr<Authenticator>> Create(
      std::string_view mode, std::string principals_file, std::string_view cluster_token = {},
      std::shared_ptr<TenantQuotas> quotas = nullptr);

  bool required() const { return required_; }

  // The principal behind `bearer_token` (the token itself, "Bearer " already stripped) or
  // `cert_cn` (a verified client certificate's subject CN); a token wins over a certificate.
  // UNAUTHENTICATED: neither given ("no credentials"), or nothing configured matches
  // ("unknown credentials"). Tokens are compared by SHA-256 in constant time.
  absl::StatusOr<Principal> Authenticate(std::optional<std::string_view> bearer_token,
                                         std::optional<std::string_view> cert_cn) const;

  // Re-reads the principals file (and its tenants' quotas); on error the old tables stay.
  // No-op in mode none.
  absl::Status Reload();

 private:
  struct Entry {
    Principal principal;
    std::string token_sha256;  // 32 raw bytes, or empty
    std::string cert_cn;
  };
  struct Loaded {
    std::vector<Entry> entries;
    absl::flat_hash_map<std::string, TenantQuotas::Limits> tenants;
  };
  Authenticator(bool required, std::string file) : required_(required), file_(std::move(file)) {}
  static absl::StatusOr<Loaded> Load(const std::string& file);

  const bool required_;
  const std::string file_;
  std::shared_ptr<TenantQuotas> quotas_;  // set once in Create
  std::optional<Entry> cluster_;          // set once in Create, before any Authenticate
  mutable absl::Mutex mu_;
  std::shared_ptr<const std::vector<Entry>> entries_ ABSL_GUARDED_BY(mu_);
};

// The scope a request naming `requested` may use, or PERMISSION_DENIED saying why:
//  ""/own tenant → the tenant's private scope (kRead needs reader, kWrite writer);
//  "shared"      → shared (kRead needs reader, kWrite publisher);
//  other         → denied, unless the principal is admin (any valid scope).
absl::StatusOr<std::string> ResolveScope(const Principal& p, std::string_view requested,
                                         Access access);
// PERMISSION_DENIED unless `p` has `role` ("<call> needs role <name>").
absl::Status RequireRole(const Principal& p, Role role, std::string_view call);

}  // namespace strata::storenode
