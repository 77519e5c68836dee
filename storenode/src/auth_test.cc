#include "auth.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <utility>

namespace strata::storenode {
namespace {

using ::testing::HasSubstr;

class AuthTest : public ::testing::Test {
 protected:
  void SetUp() override {
    file_ = std::filesystem::temp_directory_path() /
            ("strata_auth_test_" + std::to_string(::getpid()) + ".yaml");
    Write("token-a", "token-pub");
  }
  void TearDown() override { std::filesystem::remove(file_); }

  void Write(const std::string& token_a, const std::string& token_pub) {
    std::ofstream out(file_);
    out << "principals:\n"
        << "  - {name: a-prefill, tenant: tenant-a, roles: [reader, writer], token_sha256: "
        << Hex(token_a) << "}\n"
        << "  - {name: b-decode, tenant: tenant-b, roles: [reader], cert_cn: b.example}\n"
        << "  - {name: pub, tenant: platform, roles: [reader, writer, publisher], token_sha256: "
        << Hex(token_pub) << "}\n";
  }
  static std::string Hex(const std::string& token);

  std::filesystem::path file_;
};

std::string AuthTest::Hex(const std::string& token) {
  unsigned char out[32];
  unsigned int len = 0;
  EVP_Digest(token.data(), token.size(), out, &len, EVP_sha256(), nullptr);
  static const char* digits = "0123456789abcdef";
  std::string hex;
  for (unsigned i = 0; i < len; ++i) {
    hex += digits[out[i] >> 4];
    hex += digits[out[i] & 15];
  }
  return hex;
}

TEST_F(AuthTest, TokensAndCertificatesMapToPrincipals) {
  auto auth = Authenticator::Create("required", file_.string());
  ASSERT_TRUE(auth.ok()) << auth.status();
  auto a = (*auth)->Authenticate("token-a", std::nullopt);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->tenant, "tenant-a");
  EXPECT_TRUE(a->Has(kRoleWriter));
  EXPECT_FALSE(a->Has(kRolePublisher));
  auto b = (*auth)->Authenticate(std::nullopt, "b.example");
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->tenant, "tenant-b");

  auto none = (*auth)->Authenticate(std::nullopt, std::nullopt);
  EXPECT_EQ(none.status().code(), absl::StatusCode::kUnauthenticated);
  auto wrong = (*auth)->Authenticate("token-b", std::nullopt);
  EXPECT_EQ(wrong.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(wrong.status().message(), HasSubstr("unknown credentials"));
  EXPECT_THAT(wrong.status().message(), ::testing::Not(HasSubstr("token-b")));  // no secret
  EXPECT_EQ((*auth)->Authenticate(std::nullopt, "c.example").status().code(),
            absl::StatusCode::kUnauthenticated);
}

TEST_F(AuthTest, ReloadSwapsTokensAndKeepsTheOldTableOnError) {
  auto auth = Authenticator::Create("required", file_.string());
  ASSERT_TRUE(auth.ok());
  Write("token-a2", "token-pub");
  ASSERT_TRUE((*auth)->Reload().ok());
  EXPECT_FALSE((*auth)->Authenticate("token-a", std::nullopt).ok());
  EXPECT_TRUE((*auth)->Authenticate("token-a2", std::nullopt).ok());
  std::ofstream(file_) << "principals:\n  - {tenant: Bad Name, roles: [reader], cert_cn: x}\n";
  EXPECT_EQ((*auth)->Reload().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE((*auth)->Authenticate("token-a2", std::nullopt).ok());
}

TEST_F(AuthTest, MalformedFilesNameTheEntry) {
  std::ofstream(file_) << "principals:\n  - {tenant: t, roles: [owner], cert_cn: x}\n";
  auto bad_role = Authenticator::Create("required", file_.string());
  EXPECT_THAT(bad_role.status().message(), HasSubstr("principals[0].roles: \"owner\""));
  std::ofstream(file_) << "principals:\n  - {tenant: shared, roles: [reader], cert_cn: x}\n";
  EXPECT_THAT(Authenticator::Create("required", file_.string()).status().message(),
              HasSubstr("reserved"));
  std::ofstream(file_) << "principals:\n  - {tenant: t, roles: [reader], token_sha256: abc}\n";
  EXPECT_THAT(Authenticator::Create("required", file_.string()).status().message(),
              HasSubstr("64 hex digits"));
  EXPECT_EQ(Authenticator::Create("sometimes", "").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Authenticator::Create("required", "").status().code(),
            absl::StatusCode::kInvalidArgument);
}

// The principals file's `tenants:` list sets per-tenant quotas over the node's defaults; a
// reload replaces the list, and a bad one is refused naming the entry (the old list stays).
TEST_F(AuthTest, TenantsListSetsPerTenantQuotas) {
  const std::string principals =
      "principals:\n  - {name: a, tenant: tenant-a, roles: [reader], cert_cn: a}\n";
  std::ofstream(file_) << principals
                       << "tenants:\n"
                          "  - {name: tenant-a, warm_quota: 1GiB, cold_quota: 0}\n"
                          "  - {name: tenant-b, cool_quota: 10MiB}\n";
  auto quotas = std::make_shared<TenantQuotas>(std::array<uint64_t, 3>{100, 200, 300});
  auto auth = Authenticator::Create("required", file_.string(), "", quotas);
  ASSERT_TRUE(auth.ok()) << auth.status();
  EXPECT_EQ(quotas->For("tenant-a", TenantQuotas::kWarm), 1ull << 30);
  EXPECT_EQ(quotas->For("tenant-a", TenantQuotas::kCool), 200u) << "not listed: the default";
  EXPECT_EQ(quotas->For("tenant-a", TenantQuotas::kCold), 0u) << "0: no limit";
  EXPECT_EQ(quotas->For("tenant-b", TenantQuotas::kCool), 10u << 20);
  EXPECT_EQ(quotas->For("tenant-c", TenantQuotas::kWarm), 100u);
  EXPECT_EQ(quotas->For("shared", TenantQuotas::kWarm), 0u) << "shared has no quota";

  std::ofstream(file_) << principals << "tenants:\n  - {name: tenant-b, warm_quota: 5KiB}\n";
  ASSERT_TRUE((*auth)->Reload().ok());
  EXPECT_EQ(quotas->For("tenant-a", TenantQuotas::kWarm), 100u) << "dropped from the list";
  EXPECT_EQ(quotas->For("tenant-b", TenantQuotas::kWarm), 5u << 10);

  const std::pair<const char*, const char*> bad[] = {
      {"  - {name: tenant-a, hot_quota: 1GiB}\n", "tenants[0].hot_quota: unknown"},
      {"  - {name: tenant-a, warm_quota: lots}\n", "tenants[0].warm_quota"},
      {"  - {warm_quota: 1GiB}\n", "tenants[0].name: missing"},
      {"  - {name: shared, warm_quota: 1GiB}\n", "has no quota"},
      {"  - {name: t}\n  - {name: t}\n", "tenants[1].name: tenant t is listed twice"},
      {"  - {name: ~, warm_quota: 1GiB}\n", "tenants[0].name: missing"},
      {"  - tenant-a\n", "tenants[0]: want a map"},
      {"  - {name: tenant-a, warm_quota: [1, 2]}\n", "tenants[0]: keys and values"},
  };
  for (const auto& [entry, error] : bad) {
    std::ofstream(file_) << principals << "tenants:\n" << entry;
    EXPECT_THAT((*auth)->Reload().message(), HasSubstr(error)) << entry;
    EXPECT_EQ(quotas->For("tenant-b", TenantQuotas::kWarm), 5u << 10) << "the old list stays";
  }
  // A list whose entries are all commented out is an empty list, not an error.
  std::ofstream(file_) << principals << "tenants:\n#  - {name: tenant-b, warm_quota: 5KiB}\n";
  ASSERT_TRUE((*auth)->Reload().ok());
  EXPECT_EQ(quotas->For("tenant-b", TenantQuotas::kWarm), 100u);
}

TEST_F(AuthTest, ScopesComeFromThePrincipal) {
  Principal a{"a", "tenant-a", kRoleReader | kRoleWriter};
  Principal reader{"r", "tenant-r", kRoleReader};
  Principal pub{"p", "platform", kRoleReader | kRoleWriter | kRolePublisher};
  EXPECT_EQ(*ResolveScope(a, "", Access::kWrite), "tenant-a");
  EXPECT_EQ(*ResolveScope(a, "tenant-a", Access::kRead), "tenant-a");
  EXPECT_EQ(*ResolveScope(a, "shared", Access::kRead), "shared");
  // A writer cannot poison the shared scope; a publisher can.
  auto poison = ResolveScope(a, "shared", Access::kWrite);
  EXPECT_EQ(poison.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(poison.status().message(), HasSubstr("needs role publisher"));
  EXPECT_EQ(*ResolveScope(pub, "shared", Access::kWrite), "shared");
  // A forged tenant is refused.
  auto forged = ResolveScope(a, "tenant-b", Access::kRead);
  EXPECT_EQ(forged.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(forged.status().message(), HasSubstr("not yours"));
  EXPECT_EQ(ResolveScope(reader, "", Access::kWrite).status().code(),
            absl::StatusCode::kPermissionDenied);
}

TEST(AuthNoneTest, EveryoneIsTheDefaultTenantWithEveryRole) {
  auto auth = Authenticator::Create("none", "");
  ASSERT_TRUE(auth.ok());
  auto p = (*auth)->Authenticate(std::nullopt, std::nullopt);
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->tenant, "default");
  // Single-tenant deployments keep naming scopes freely.
  EXPECT_EQ(*ResolveScope(*p, "chat-42", Access::kWrite), "chat-42");
  EXPECT_EQ(*ResolveScope(*p, "", Access::kWrite), "default");
}

}  // namespace
}  // namespace strata::storenode
