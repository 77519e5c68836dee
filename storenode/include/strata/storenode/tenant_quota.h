// The error a tier answers when one tenant's scope holds its whole quota there, and how a
// caller tells it from a full tier (both are RESOURCE_EXHAUSTED).
#pragma once

#include <cstdint>
#include <string_view>

#include "absl/status/status.h"
#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
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

inline bool IsTenantQuotaError(const absl::Status& s) {
  return s.code() == absl::StatusCode::kResourceExhausted &&
         s.GetPayload(absl::string_view(kTenantQuotaPayload.data(), kTenantQuotaPayload.size()))
             .has_value();
}

}  // namespace strata::storenode
