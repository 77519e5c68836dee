// Tenant quotas: how many bytes each tenant's private scope may hold per tier
// (TenantQuotas), the error a tier answers when one holds its whole quota there, and how a
// caller tells it from a full tier (both are RESOURCE_EXHAUSTED).
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "strata/common/block_key.h"
#include "strata/common/byte_size.h"

namespace strata::storenode {

inline constexpr std::string_view kTenantQuotaPayload = "type.strata.dev/tenant-quota";

// RESOURCE_EXHAUSTED "tenant quota: scope S holds U of its TIER quota Q", marked so that
// IsTenantQuotaError recognises it without reading the message.
inline absl::Status TenantQuotaError(std::string_view scope, uint64_t used, std::string_view tier,
                                     uint64_t quota) {
  absl::Status s = absl::ResourceExhaustedError(
      absl::StrCat("tenant quota: scope ", absl::string_view(scope.data(), scope.size()), " holds ",
                   FormatByteSize(used), " of its ", absl::string_view(tier.data(), tier.size()),
                   " quota ", FormatByteSize(quota)));
  s.SetPayload(absl::string_view(kTenantQuotaPayload.data(), kTenantQuotaPayload.size()),
               absl::Cord());
  return s;
}

// Per tier (warm, cool, cold) the bytes a tenant's private scope may hold; 0 = no limit. Every
// tenant has the node-wide defaults (tenant_warm_quota ...) unless the principals file's
// `tenants:` list names its own (docs/design/security.md); that list is replaced whole when
// the file is reloaded. `shared` has no quota. Thread-safe.
class TenantQuotas {
 public:
  enum Tier { kWarm = 0, kCool = 1, kCold = 2 };
  // A tenant's own values; an unset one is the default.
  using Limits = std::array<std::optional<uint64_t>, 3>;

  explicit TenantQuotas(std::array<uint64_t, 3> defaults) : defaults_(defaults) { Set({}); }

  uint64_t For(std::string_view scope, Tier tier) const {
    if (!any_.load(std::memory_order_acquire) || scope == kSharedScope) return 0;  // no quotas
    absl::ReaderMutexLock lock(&mu_);
    auto it = per_tenant_->find(absl::string_view(scope.data(), scope.size()));
    if (it != per_tenant_->end() && it->second[tier].has_value()) return *it->second[tier];
    return defaults_[tier];
  }

  void Set(absl::flat_hash_map<std::string, Limits> per_tenant) {
    bool any = defaults_[0] > 0 || defaults_[1] > 0 || defaults_[2] > 0;
    for (const auto& [tenant, limits] : per_tenant) {
      for (const std::optional<uint64_t>& l : limits) any = any || l.value_or(0) > 0;
    }
    auto table =
        std::make_shared<const absl::flat_hash_map<std::string, Limits>>(std::move(per_tenant));
    absl::MutexLock lock(&mu_);
    per_tenant_ = std::move(table);
    any_.store(any, std::memory_order_release);
  }

 private:
  const std::array<uint64_t, 3> defaults_;
  std::atomic<bool> any_{false};  // some tenant has a limit somewhere: else For is 0 at once
  mutable absl::Mutex mu_;
  std::shared_ptr<const absl::flat_hash_map<std::string, Limits>> per_tenant_ ABSL_GUARDED_BY(mu_);
};

inline bool IsTenantQuotaError(const absl::Status& s) {
  return s.code() == absl::StatusCode::kResourceExhausted &&
         s.GetPayload(absl::string_view(kTenantQuotaPayload.data(), kTenantQuotaPayload.size()))
             .has_value();
}

}  // namespace strata::storenode
