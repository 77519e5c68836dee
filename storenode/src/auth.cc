#include "auth.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include <algorithm>
#include <iterator>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "spdlog/spdlog.h"
#include "strata/common/block_key.h"
#include "strata/common/byte_size.h"
#include "yaml-cpp/yaml.h"

namespace strata::storenode {
namespace {

constexpr uint8_t kAllRoles = kAnyRole;

std::string Sha256(std::string_view data) {
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(data.data(), data.size(), out, &len, EVP_sha256(), nullptr);
  return std::string(reinterpret_cast<char*>(out), len);
}

absl::StatusOr<uint8_t> ParseRoles(const YAML::Node& node, const std::string& where) {
  if (!node || !node.IsSequence() || node.size() == 0) {
    return absl::InvalidArgumentError(absl::StrCat(where, ".roles: a non-empty list"));
  }
  uint8_t roles = 0;
  for (const YAML::Node& r : node) {
    const std::string name = r.as<std::string>();
    if (name == "reader") {
      roles |= kRoleReader;
    } else if (name == "writer") {
      roles |= kRoleWriter;
    } else if (name == "publisher") {
      roles |= kRolePublisher;
    } else if (name == "admin") {
      roles |= kRoleAdmin;
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ".roles: \"", name, "\" is not reader, writer, publisher or admin"));
    }
  }
  return roles;
}

// The principals file's optional `tenants:` list: per tenant (`name`) its own warm_quota,
// cool_quota and/or cold_quota (byte sizes; 0 = no limit; one left out: the node's default).
absl::StatusOr<absl::flat_hash_map<std::string, TenantQuotas::Limits>> ParseTenants(
    const YAML::Node& list) {
  absl::flat_hash_map<std::string, TenantQuotas::Limits> out;
  if (!list || list.IsNull()) return out;  // absent, or every entry commented out
  if (!list.IsSequence()) return absl::InvalidArgumentError("tenants: want a list");
  constexpr std::string_view kTiers[] = {"warm_quota", "cool_quota", "cold_quota"};
  try {
    for (size_t i = 0; i < list.size(); ++i) {
      const YAML::Node& n = list[i];
      const std::string where = absl::StrCat("tenants[", i, "]");
      if (!n.IsMap()) {
        return absl::InvalidArgumentError(where + ": want a map (name, warm_quota, ...)");
      }
      if (!n["name"] || !n["name"].IsScalar()) {
        return absl::InvalidArgumentError(where + ".name: missing");
      }
      const std::string name = n["name"].as<std::string>();
      if (absl::Status v = ValidateScope(name, where + ".name"); !v.ok()) return v;
      if (name == kSharedScope) {
        return absl::InvalidArgumentError(where + ".name: \"shared\" has no quota");
      }
      TenantQuotas::Limits limits;
      for (const auto& kv : n) {
        if (!kv.first.IsScalar() || !kv.second.IsScalar()) {
          return absl::InvalidArgumentError(where + ": keys and values must be plain values");
        }
        const std::string key = kv.first.as<std::string>();
        if (key == "name") continue;
        const auto* tier = std::find(std::begin(kTiers), std::end(kTiers), key);
        if (tier == std::end(kTiers)) {
          return absl::InvalidArgumentError(absl::StrCat(
              where, ".", key, ": unknown (want name, warm_quota, cool_quota, cold_quota)"));
        }
        absl::StatusOr<uint64_t> bytes =
            ParseByteSize(kv.second.as<std::string>(), absl::StrCat(where, ".", key));
        if (!bytes.ok()) return bytes.status();
        limits[tier - std::begin(kTiers)] = *bytes;
      }
      if (!out.emplace(name, limits).second) {
        return absl::InvalidArgumentError(
            absl::StrCat(where, ".name: tenant ", name, " is listed twice"));
      }
    }
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("tenants: ", e.what()));
  }
  return out;
}

std::string_view RoleName(Role r) {
  switch (r) {
    case kRoleReader:
      return "reader";
    case kRoleWriter:
      return "writer";
    case kRolePublisher:
      return "publisher";
    case kRoleAdmin:
      return "admin";
  }
  return "?";
}

}  // namespace

Principal AnonymousPrincipal() { return {"anonymous", std::string(kDefaultScope), kAllRoles}; }

absl::StatusOr<std::unique_ptr<Authenticator>> Authenticator::Create(
    std::string_view mode, std::string principals_file, std::string_view cluster_token,
    std::shared_ptr<TenantQuotas> quotas) {
  if (mode == "none" || mode.empty()) {
    return std::unique_ptr<Authenticator>(new Authenticator(false, ""));
  }
  if (mode != "required") {
    return absl::InvalidArgumentError(
        absl::StrCat("auth_mode: \"", std::string(mode), "\", expected none or required"));
  }
  if (principals_file.empty()) {
    return absl::InvalidArgumentError("auth_principals_file: required with auth_mode required");
  }
  std::unique_ptr<Authenticator> a(new Authenticator(true, std::move(principals_file)));
  a->quotas_ = std::move(quotas);
  if (!cluster_token.empty()) {
    a->cluster_ = Entry{Principal{"cluster", "cluster", kAllRoles}, Sha256(cluster_token), ""};
  }
  if (absl::Status s = a->Reload(); !s.ok()) return s;
  return a;
}

absl::StatusOr<Authenticator::Loaded> Authenticator::Load(const std::string& file) {
  YAML::Node root;
  try {
    root = YAML::LoadFile(file);
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("auth_principals_file ", file, ": ", e.what()));
  }
  const YAML::Node list = root["principals"];
  if (!list || !list.IsSequence()) {
    return absl::InvalidArgumentError(
        absl::StrCat("auth_principals_file ", file, ": no \"principals\" list"));
  }
  std::vector<Entry> entries;
  try {
    for (size_t i = 0; i < list.size(); ++i) {
      const YAML::Node& n = list[i];
      const std::string where = absl::StrCat("principals[", i, "]");
      Entry e;
      e.principal.name = n["name"] ? n["name"].as<std::string>() : where;
      if (!n["tenant"]) return absl::InvalidArgumentError(where + ".tenant: missing");
      e.principal.tenant = n["tenant"].as<std::string>();
      if (absl::Status v = ValidateScope(e.principal.tenant, where + ".tenant"); !v.ok()) return v;
      if (e.principal.tenant == kSharedScope) {
        return absl::InvalidArgumentError(where + ".tenant: \"shared\" is reserved");
      }
      absl::StatusOr<uint8_t> roles = ParseRoles(n["roles"], where);
      if (!roles.ok()) return roles.status();
      e.principal.roles = *roles;
      if (n["token_sha256"]) {
        const std::string hex = n["token_sha256"].as<std::string>();
        if (hex.size() != 64 ||
            hex.find_first_not_of("0123456789abcdefABCDEF") != std::string::npos) {
          return absl::InvalidArgumentError(where + ".token_sha256: 64 hex digits");
        }
        e.token_sha256 = absl::HexStringToBytes(hex);
      }
      if (n["cert_cn"]) e.cert_cn = n["cert_cn"].as<std::string>();
      if (e.token_sha256.empty() && e.cert_cn.empty()) {
        return absl::InvalidArgumentError(where + ": needs token_sha256 or cert_cn");
      }
      entries.push_back(std::move(e));
    }
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("auth_principals_file ", file, ": ", e.what()));
  }
  absl::StatusOr<absl::flat_hash_map<std::string, TenantQuotas::Limits>> tenants =
      ParseTenants(root["tenants"]);
  if (!tenants.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("auth_principals_file ", file, ": ", tenants.status().message()));
  }
  for (const auto& [name, limits] : *tenants) {  // most likely a typo
    if (std::none_of(entries.begin(), entries.end(),
                     [&](const Entry& e) { return e.principal.tenant == name; })) {
      spdlog::warn("auth_principals_file {}: tenants lists {}, which no principal belongs to", file,
                   name);
    }
  }
  return Loaded{std::move(entries), std::move(*tenants)};
}

absl::Status Authenticator::Reload() {
  if (!required_) return absl::OkStatus();
  absl::StatusOr<Loaded> loaded = Load(file_);
  if (!loaded.ok()) return loaded.status();
  if (cluster_.has_value()) loaded->entries.push_back(*cluster_);
  auto table = std::make_shared<const std::vector<Entry>>(std::move(loaded->entries));
  if (quotas_ != nullptr) quotas_->Set(std::move(loaded->tenants));
  absl::MutexLock lock(&mu_);
  entries_ = std::move(table);
  return absl::OkStatus();
}

absl::StatusOr<Principal> Authenticator::Authenticate(
    std::optional<std::string_view> bearer_token, std::optional<std::string_view> cert_cn) const {
  if (!required_) return AnonymousPrincipal();
  if (!bearer_token.has_value() && !cert_cn.has_value()) {
    return absl::UnauthenticatedError("no credentials (bearer token or client certificate)");
  }
  std::shared_ptr<const std::vector<Entry>> entries;
  {
    absl::MutexLock lock(&mu_);
    entries = entries_;
  }
  if (bearer_token.has_value()) {
    const std::string presented = Sha256(*bearer_token);
    const Entry* match = nullptr;
    // Every entry is compared, whatever matched, in constant time per comparison.
    for (const Entry& e : *entries) {
      const bool same =
          e.token_sha256.size() == presented.size() &&
          CRYPTO_memcmp(e.token_sha256.data(), presented.data(), presented.size()) == 0;
      if (same && match == nullptr) match = &e;
    }
    if (match != nullptr) return match->principal;
    return absl::UnauthenticatedError("unknown credentials");
  }
  for (const Entry& e : *entries) {
    if (!e.cert_cn.empty() && e.cert_cn == *cert_cn) return e.principal;
  }
  return absl::UnauthenticatedError("unknown credentials");
}

absl::Status RequireRole(const Principal& p, Role role, std::string_view call) {
  if (p.Has(role)) return absl::OkStatus();
  return absl::PermissionDeniedError(absl::StrCat(
      std::string(call), " needs role ", std::string(RoleName(role)), " (principal ", p.name, ")"));
}

absl::StatusOr<std::string> ResolveScope(const Principal& p, std::string_view requested,
                                         Access access) {
  if (access == Access::kAdmin) {
    if (absl::Status s = RequireRole(p, kRoleAdmin, "this call"); !s.ok()) return s;
  }
  if (requested.empty() || requested == p.tenant) {
    const Role need = access == Access::kRead ? kRoleReader : kRoleWriter;
    if (access != Access::kAdmin) {
      if (absl::Status s = RequireRole(p, need, access == Access::kRead ? "reading" : "writing");
          !s.ok()) {
        return s;
      }
    }
    return p.tenant;
  }
  if (requested == kSharedScope) {
    const Role need = access == Access::kRead ? kRoleReader : kRolePublisher;
    if (access != Access::kAdmin) {
      if (absl::Status s =
              RequireRole(p, need, access == Access::kRead ? "reading shared" : "writing shared");
          !s.ok()) {
        return s;
      }
    }
    return std::string(kSharedScope);
  }
  if (p.Has(kRoleAdmin)) {
    if (absl::Status v = ValidateScope(requested, "scope"); !v.ok()) return v;
    return std::string(requested);
  }
  return absl::PermissionDeniedError(
      absl::StrCat("scope \"", std::string(requested), "\" is not yours (principal ", p.name, ")"));
}

}  // namespace strata::storenode
