// Tenancy and transport security against real strata-storenode processes (issue 7,
// docs/design/security.md): principals from bearer tokens and client certificates, scopes
// derived from the principal, shared system-prompt prefixes, role checks, TLS/mTLS handshakes,
// principals reloaded on SIGHUP. Every "denied" case is paired with the same call allowed.
#include <signal.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "strata/client/store_client.h"
#include "strata/proto/tls_files.h"
#include "strata/testutil/node_process.h"
#include "strata/testutil/prompts.h"
#include "strata/testutil/status_matchers.h"
#include "ucx_test_support.h"

namespace strata {
namespace {

using client::BlockRead;
using client::BlockWrite;
using client::ClientOptions;
using client::LocalNode;
using client::StoreClient;
using ::testing::HasSubstr;
using testutil::IsOk;
using testutil::StatusIs;

constexpr uint64_t kBlock = 96 * 1024;  // above the client's UCX threshold: data plane path
// SHA-256 of the tokens below, as the principals file holds them (no secret in the file).
struct Token {
  const char* name;
  const char* token;
  const char* tenant;
  const char* roles;
};
constexpr Token kTokens[] = {
    {"tenant-a", "token-of-tenant-a", "tenant-a", "[reader, writer]"},
    {"tenant-b", "token-of-tenant-b", "tenant-b", "[reader, writer]"},
    {"a-reader", "token-of-a-reader", "tenant-a", "[reader]"},
    {"publisher", "token-of-publisher", "platform", "[reader, writer, publisher]"},
    {"operator", "token-of-operator", "platform", "[admin]"},
};
constexpr char kLateToken[] = "token-added-later";

std::string Sha256Hex(const std::string& text) {
  // The test computes hashes with the openssl binary, as an operator would.
  std::string cmd = absl::StrCat("printf '%s' '", text, "' | openssl dgst -sha256 -r");
  FILE* p = popen(cmd.c_str(), "r");
  char buf[128] = {};
  size_t n = p != nullptr ? fread(buf, 1, sizeof(buf) - 1, p) : 0;
  if (p != nullptr) pclose(p);
  return std::string(buf, std::min<size_t>(n, 64));
}

// `platform_warm`: the warm quota of tenant platform (the publisher's) in the file's tenants
// list; every other tenant has the node's --tenant-warm-quota.
void WritePrincipals(const std::string& path, bool with_late,
                     const std::string& platform_warm = "8MiB") {
  std::ofstream out(path, std::ios::trunc);
  out << "principals:\n";
  for (const Token& t : kTokens) {
    out << "  - name: " << t.name << "\n    tenant: " << t.tenant << "\n    roles: " << t.roles
        << "\n    token_sha256: " << Sha256Hex(t.token) << "\n";
  }
  out << "  - name: cert-client\n    tenant: tenant-c\n    roles: [reader, writer]\n"
         "    cert_cn: tenant-c-client\n";
  if (with_late) {
    out << "  - name: late\n    tenant: tenant-late\n    roles: [reader, writer]\n"
        << "    token_sha256: " << Sha256Hex(kLateToken) << "\n";
  }
  out << "tenants:\n  - name: platform\n    warm_quota: " << platform_warm << "\n";
}

class TenancyTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string(absl::StrCat(::testing::TempDir(), "strata-tenancy-", getpid()));
    std::filesystem::create_directories(*dir_);
    const char* src = std::getenv("STRATA_SOURCE_DIR");
    ASSERT_NE(src, nullptr) << "run through ctest (STRATA_SOURCE_DIR)";
    std::string certs = absl::StrCat("bash ", src, "/scripts/make_test_certs.sh ", *dir_,
                                     " tenant-c-client unknown-client >/dev/null");
    ASSERT_EQ(std::system(certs.c_str()), 0) << certs;
    WritePrincipals(Path("principals.yaml"), false);
    const std::vector<std::string> common = CommonArgs();
    auto node = testutil::StartNode(common);
    ASSERT_THAT(node, IsOk());
    node_ = node->release();
    std::vector<std::string> strict = common;
    strict.push_back("--tls-require-client-cert");
    auto strict_node = testutil::StartNode(strict);
    ASSERT_THAT(strict_node, IsOk());
    strict_node_ = strict_node->release();
  }
  // The nodes' flags: auth required, TLS, the tenants' rate and quota defaults.
  static std::vector<std::string> CommonArgs() {
    return {"--warm-bytes",
            "128MiB",
            "--max-block-bytes",
            "1MiB",
            "--auth-mode",
            "required",
            "--auth-principals-file",
            Path("principals.yaml"),
            "--tls-cert",
            Path("server.crt"),
            "--tls-key",
            Path("server.key"),
            "--tls-client-ca",
            Path("ca.crt"),
            "--tenant-lookup-rate",
            "1000",
            "--tenant-lookup-burst",
            "3000",
            "--tenant-warm-quota",
            "4MiB"};
  }
  static void TearDownTestSuite() {
    delete node_;
    delete strict_node_;
    std::filesystem::remove_all(*dir_);
    delete dir_;
  }
  static std::string Path(const std::string& name) { return absl::StrCat(*dir_, "/", name); }

  static ClientOptions Options(const LocalNode* node, std::string token) {
    ClientOptions o;
    o.address = node->address();
    o.token = std::move(token);
    o.tls_ca = Path("ca.crt");
    o.default_deadline = absl::Seconds(10);
    return o;
  }
  struct Tenant {
    std::unique_ptr<StoreClient> client;
    client::Namespace ns;
  };
  static Tenant Connect(ClientOptions o) {
    Tenant t;
    auto c = StoreClient::Connect(o);
    EXPECT_THAT(c, IsOk());
    if (!c.ok()) return t;
    t.client = std::move(*c);
    auto ns = t.client->RegisterNamespace(testutil::RawSpec("tenancy", 1 << 20));
    EXPECT_THAT(ns, IsOk());
    if (ns.ok()) t.ns = *ns;
    return t;
  }
  static Tenant As(const char* token) { return Connect(Options(node_, token)); }

  static absl::StatusOr<client::PutResult> Put(Tenant& t, std::string_view scope,
                                               const std::vector<ChainHash>& hashes,
                                               uint64_t seed) {
    std::vector<std::vector<uint8_t>> data;
    std::vector<BlockWrite> writes;
    for (size_t i = 0; i < hashes.size(); ++i)
      data.push_back(testutil::RandomBytes(seed + i, kBlock));
    for (size_t i = 0; i < hashes.size(); ++i)
      writes.push_back({hashes[i], data[i].data(), kBlock});
    return t.client->Put(t.ns, scope, writes);
  }
  // Reads every block; returns how many came back OK with exactly the bytes of
  // RandomBytes(seeds[i]).
  static size_t ExactReads(Tenant& t, std::string_view scope, const std::vector<ChainHash>& hashes,
                           const std::vector<uint64_t>& seeds) {
    std::vector<std::vector<uint8_t>> out(hashes.size(), std::vector<uint8_t>(kBlock));
    std::vector<BlockRead> reads;
    for (size_t i = 0; i < hashes.size(); ++i) reads.push_back({hashes[i], out[i].data(), kBlock});
    auto got = t.client->Get(t.ns, scope, reads);
    EXPECT_THAT(got, IsOk());
    if (!got.ok()) return 0;
    size_t exact = 0;
    for (size_t i = 0; i < hashes.size(); ++i) {
      if (got->blocks[i].ok() && out[i] == testutil::RandomBytes(seeds[i], kBlock)) ++exact;
    }
    return exact;
  }
  // A raw stub of `node` calling as the holder of `token`, for requests no client sends.
  static std::unique_ptr<v1::StoreService::Stub> RawStubAs(const LocalNode* node,
                                                           const char* token) {
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = proto::ReadPemFile(Path("ca.crt"), "ca").value_or("");
    return v1::StoreService::NewStub(grpc::CreateChannel(
        node->address(), grpc::CompositeChannelCredentials(grpc::SslCredentials(ssl),
                                                           grpc::AccessTokenCredentials(token))));
  }
  static size_t Matched(Tenant& t, std::string_view scope, const std::vector<ChainHash>& hashes) {
    auto r = t.client->Lookup(t.ns, scope, hashes);
    EXPECT_THAT(r, IsOk());
    return r.ok() ? r->matched_blocks : 0;
  }

  static std::string* dir_;
  static LocalNode* node_;
  static LocalNode* strict_node_;
};
std::string* TenancyTest::dir_ = nullptr;
LocalNode* TenancyTest::node_ = nullptr;
LocalNode* TenancyTest::strict_node_ = nullptr;

std::vector<ChainHash> Chain(const client::Namespace& ns, const std::vector<uint32_t>& tokens) {
  return *ns.HashTokens(tokens);
}

std::vector<uint32_t> Concat(std::vector<uint32_t> a, const std::vector<uint32_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

TEST_F(TenancyTest, CallsWithoutOrWithUnknownCredentialsAreUnauthenticated) {
  EXPECT_THAT(StoreClient::Connect(Options(node_, "")),
              StatusIs(absl::StatusCode::kUnauthenticated, HasSubstr("no credentials")));
  EXPECT_THAT(StoreClient::Connect(Options(node_, "not-a-token")),
              StatusIs(absl::StatusCode::kUnauthenticated, HasSubstr("unknown credentials")));
  // A verified certificate that maps to no principal is refused the same way.
  ClientOptions unknown_cert = Options(node_, "");
  unknown_cert.tls_cert = Path("unknown-client.crt");
  unknown_cert.tls_key = Path("unknown-client.key");
  EXPECT_THAT(StoreClient::Connect(unknown_cert),
              StatusIs(absl::StatusCode::kUnauthenticated, HasSubstr("unknown credentials")));
  // The same node takes a known token.
  EXPECT_THAT(StoreClient::Connect(Options(node_, kTokens[0].token)), IsOk());
}

TEST_F(TenancyTest, PrivatePrefixesAreInvisibleAcrossTenantsAndForgedScopesAreRefused) {
  Tenant a = As(kTokens[0].token);
  Tenant b = As(kTokens[1].token);
  ASSERT_NE(a.client, nullptr);
  ASSERT_NE(b.client, nullptr);
  const std::vector<ChainHash> prefix = testutil::PromptChain(a.ns, 11, 12);
  auto put = Put(a, "", prefix, 1100);
  ASSERT_THAT(put, IsOk());
  EXPECT_EQ(put->stored, prefix.size());
  std::vector<uint64_t> seeds;
  for (size_t i = 0; i < prefix.size(); ++i) seeds.push_back(1100 + i);

  // Tenant A hits 100%; tenant B, asking for the very same keys, misses 100%.
  EXPECT_EQ(Matched(a, "", prefix), prefix.size());
  EXPECT_EQ(ExactReads(a, "", prefix, seeds), prefix.size());
  EXPECT_EQ(Matched(b, "", prefix), 0u);
  EXPECT_EQ(ExactReads(b, "", prefix, seeds), 0u);
  // Naming A's scope does not help B: the scope comes from the principal.
  EXPECT_THAT(b.client->Lookup(b.ns, "tenant-a", prefix),
              StatusIs(absl::StatusCode::kPermissionDenied, HasSubstr("not yours")));
  std::vector<uint8_t> buf(kBlock);
  std::vector<BlockRead> one = {{prefix[0], buf.data(), kBlock}};
  EXPECT_THAT(b.client->Get(b.ns, "tenant-a", one), StatusIs(absl::StatusCode::kPermissionDenied));
  // A naming its own tenant explicitly is the same as "".
  EXPECT_EQ(Matched(a, "tenant-a", prefix), prefix.size());
  // B cannot delete A's blocks either: its Delete only reaches its own scope.
  auto deleted = b.client->Delete(b.ns, "", prefix);
  ASSERT_THAT(deleted, IsOk());
  EXPECT_EQ(*deleted, 0u);
  EXPECT_EQ(Matched(a, "", prefix), prefix.size());
}

TEST_F(TenancyTest, SharedPrefixHitsForEveryTenantAndContinuationsStayPrivate) {
  Tenant pub = As(kTokens[3].token);
  Tenant a = As(kTokens[0].token);
  Tenant b = As(kTokens[1].token);
  ASSERT_NE(pub.client, nullptr);
  const std::vector<uint32_t> system = testutil::PromptTokens(21, 8 * 16);  // 8 blocks
  const std::vector<uint32_t> a_turn = testutil::PromptTokens(22, 4 * 16);
  const std::vector<ChainHash> sys = Chain(a.ns, system);
  const std::vector<ChainHash> a_chain = Chain(a.ns, Concat(system, a_turn));  // 12 blocks

  // Before publication nobody hits the system prompt.
  EXPECT_EQ(Matched(a, "", sys), 0u);
  // A writer may not publish: no tenant can poison a prefix others reuse.
  EXPECT_THAT(Put(a, "shared", sys, 2100),
              StatusIs(absl::StatusCode::kPermissionDenied, HasSubstr("publisher")));
  EXPECT_EQ(Matched(b, "shared", sys), 0u);
  // The publisher can.
  auto published = Put(pub, "shared", sys, 2100);
  ASSERT_THAT(published, IsOk());
  EXPECT_EQ(published->stored, sys.size());

  // Both tenants hit the shared prefix through their own scope ("").
  EXPECT_EQ(Matched(a, "", sys), sys.size());
  EXPECT_EQ(Matched(b, "", sys), sys.size());
  // A continues it privately: A's lookup runs through shared into its own blocks.
  std::vector<ChainHash> a_tail(a_chain.begin() + 8, a_chain.end());
  ASSERT_THAT(Put(a, "", a_tail, 2200), IsOk());
  // Each block asked for counts once in the node's hits and misses, whichever scope answers
  // it (before, the probe of `shared` counted every block once more: a hit ratio of at most
  // one half once anything was published).
  auto counted = [&] {
    auto st = a.client->Stats();
    EXPECT_THAT(st, IsOk());
    return st.ok() ? std::pair{st->hits, st->misses} : std::pair<uint64_t, uint64_t>{};
  };
  const auto before = counted();
  EXPECT_EQ(Matched(a, "", a_chain), a_chain.size());
  const auto looked = counted();
  EXPECT_EQ(looked.first - before.first, a_chain.size());
  EXPECT_EQ(looked.second - before.second, 0u);
  EXPECT_EQ(Matched(b, "", a_chain), sys.size());
  // A's Get of the whole chain takes 8 blocks from shared and 4 from its own scope, exact.
  std::vector<uint64_t> seeds;
  for (size_t i = 0; i < 8; ++i) seeds.push_back(2100 + i);
  for (size_t i = 0; i < 4; ++i) seeds.push_back(2200 + i);
  const auto before_get = counted();
  EXPECT_EQ(ExactReads(a, "", a_chain, seeds), a_chain.size());
  const auto got = counted();
  EXPECT_EQ(got.first - before_get.first, a_chain.size());
  EXPECT_EQ(got.second - before_get.second, 0u);
  // Inline (no data plane) takes the same mixed path through BeginGet.
  ClientOptions inline_opts = Options(node_, kTokens[0].token);
  inline_opts.data_plane = ClientOptions::DataPlane::kInline;
  Tenant a_inline = Connect(inline_opts);
  ASSERT_NE(a_inline.client, nullptr);
  EXPECT_EQ(ExactReads(a_inline, "", a_chain, seeds), a_chain.size());
  // B gets the shared blocks and none of A's continuation.
  EXPECT_EQ(ExactReads(b, "", a_chain, seeds), sys.size());
}

TEST_F(TenancyTest, RolesLimitWhatAPrincipalMayDo) {
  Tenant reader = As(kTokens[2].token);  // tenant-a, reader only
  Tenant a = As(kTokens[0].token);
  ASSERT_NE(reader.client, nullptr);
  const std::vector<ChainHash> chain = testutil::PromptChain(a.ns, 31, 3);
  EXPECT_THAT(Put(reader, "", chain, 3100),
              StatusIs(absl::StatusCode::kPermissionDenied, HasSubstr("writer")));
  ASSERT_THAT(Put(a, "", chain, 3100), IsOk());
  // The reader reads its tenant's blocks.
  EXPECT_EQ(Matched(reader, "", chain), chain.size());
  EXPECT_EQ(ExactReads(reader, "", chain, {3100, 3101, 3102}), chain.size());
  EXPECT_THAT(reader.client->Delete(reader.ns, "", chain),
              StatusIs(absl::StatusCode::kPermissionDenied));
  EXPECT_THAT(reader.client->PauseSession("s1", false),
              StatusIs(absl::StatusCode::kPermissionDenied));
  // block_bytes is no part of the namespace's id: a larger one would widen every tenant's
  // puts and inline reservations there. A reader may not (before, anyone could); it may state
  // what is registered, and a writer may widen it.
  ASSERT_THAT(a.client->RegisterNamespace(testutil::RawSpec("small-blocks", 64 << 10)), IsOk());
  EXPECT_THAT(reader.client->RegisterNamespace(testutil::RawSpec("small-blocks", 512 << 10)),
              StatusIs(absl::StatusCode::kPermissionDenied, HasSubstr("widening block_bytes")));
  EXPECT_THAT(reader.client->RegisterNamespace(testutil::RawSpec("small-blocks", 64 << 10)),
              IsOk());
  EXPECT_THAT(a.client->RegisterNamespace(testutil::RawSpec("small-blocks", 512 << 10)), IsOk());
}

// Lossy offload changes what every tenant of a namespace reads back from disk: only an admin
// turns it on. A tenant asking for it is refused (and the namespace stays lossless for every
// tenant); once the operator set it, a tenant stating the same setting is accepted.
TEST_F(TenancyTest, OnlyAnAdminTurnsOnLossyOffloadForANamespace) {
  Tenant b = As(kTokens[1].token);
  Tenant op = As(kTokens[4].token);
  ASSERT_NE(b.client, nullptr);
  ASSERT_NE(op.client, nullptr);
  NamespaceSpec spec = testutil::RawSpec("lossy-by-policy", 1 << 20);
  spec.dtype = "bf16";
  spec.offload_quant = "int8";
  spec.head_dim = 128;
  EXPECT_THAT(b.client->RegisterNamespace(spec),
              StatusIs(absl::StatusCode::kPermissionDenied, HasSubstr("admin")));
  NamespaceSpec plain = spec;
  plain.offload_quant.clear();
  plain.head_dim = 0;
  ASSERT_THAT(b.client->RegisterNamespace(plain), IsOk());  // lossless for now
  EXPECT_THAT(op.client->RegisterNamespace(spec), IsOk());
  EXPECT_THAT(b.client->RegisterNamespace(spec), IsOk());
  spec.offload_quant = "fp8-e4m3";
  EXPECT_THAT(b.client->RegisterNamespace(spec), StatusIs(absl::StatusCode::kPermissionDenied));
}

// A GPU agent's peer token (what its peer server asks for) reaches exactly the callers who may
// read the agent's scope: the node hands it out with the agent's address in Lookup answers.
TEST_F(TenancyTest, AnAgentsPeerTokenReachesOnlyReadersOfItsScope) {
  Tenant a = As(kTokens[0].token);
  Tenant a_reader = As(kTokens[2].token);
  Tenant b = As(kTokens[1].token);
  ASSERT_NE(a.client, nullptr);
  const std::vector<ChainHash> hot = testutil::PromptChain(a.ns, 41, 4);  // in GPU memory only
  const client::PeerLocation agent{"127.0.0.1:9", "peer-token-of-a"};
  auto pub = a.client->Publish(a.ns, "", hot, {}, agent, absl::Seconds(30));
  ASSERT_THAT(pub, IsOk());
  for (const absl::Status& st : *pub) EXPECT_THAT(st, IsOk());

  // Tenant A's reader finds every block at the agent, with its token.
  auto seen = a_reader.client->Lookup(a_reader.ns, "", hot);
  ASSERT_THAT(seen, IsOk());
  ASSERT_EQ(seen->matched_blocks, hot.size());
  for (const client::BlockLocation& loc : seen->blocks) {
    EXPECT_EQ(loc.tier, client::Tier::kHot);
    EXPECT_THAT(loc.peers, ::testing::ElementsAre(agent));
  }
  // Tenant B, asking for the same keys, learns neither the agent nor its token.
  auto other = b.client->LookupEach(b.ns, "", hot);
  ASSERT_THAT(other, IsOk());
  for (const client::BlockLocation& loc : *other) {
    EXPECT_EQ(loc.tier, client::Tier::kUnknown);
    EXPECT_TRUE(loc.peers.empty());
  }
  // A reader may not publish (it could otherwise point its tenant at an agent of its choice).
  EXPECT_THAT(a_reader.client->Publish(a_reader.ns, "", hot, {}, agent, absl::Seconds(30)),
              StatusIs(absl::StatusCode::kPermissionDenied, HasSubstr("writer")));
  ASSERT_THAT(a.client->Publish(a.ns, "", hot, {}, agent, absl::ZeroDuration()), IsOk());
}

TEST_F(TenancyTest, ClientCertificatesNamePrincipalsAndForeignOrMissingOnesFailTheHandshake) {
  ClientOptions cert = Options(strict_node_, "");
  cert.tls_cert = Path("tenant-c-client.crt");
  cert.tls_key = Path("tenant-c-client.key");
  Tenant c = Connect(cert);
  ASSERT_NE(c.client, nullptr);
  const std::vector<ChainHash> chain = testutil::PromptChain(c.ns, 41, 2);
  ASSERT_THAT(Put(c, "", chain, 4100), IsOk());
  EXPECT_EQ(Matched(c, "", chain), chain.size());
  // Its scope is tenant-c's: a token principal of tenant-a on the same node misses.
  ClientOptions a_opts = Options(strict_node_, kTokens[0].token);
  a_opts.tls_cert = Path("tenant-c-client.crt");  // a token wins over the certificate
  a_opts.tls_key = Path("tenant-c-client.key");
  Tenant a = Connect(a_opts);
  ASSERT_NE(a.client, nullptr);
  EXPECT_EQ(Matched(a, "", chain), 0u);

  // No certificate, or one from a foreign CA: no TLS session, so no call gets through.
  ClientOptions none = Options(strict_node_, kTokens[0].token);
  none.default_deadline = absl::Seconds(3);
  EXPECT_THAT(StoreClient::Connect(none), StatusIs(absl::StatusCode::kUnavailable));
  ClientOptions foreign = none;
  foreign.tls_cert = Path("foreign.crt");
  foreign.tls_key = Path("foreign.key");
  EXPECT_THAT(StoreClient::Connect(foreign), StatusIs(absl::StatusCode::kUnavailable));
  // Plaintext to a TLS node fails too.
  ClientOptions plain = none;
  plain.tls_ca.clear();
  EXPECT_FALSE(StoreClient::Connect(plain).ok());
}

TEST_F(TenancyTest, LookupRateIsLimitedPerTenant) {
  Tenant a = As(kTokens[0].token);
  Tenant b = As(kTokens[1].token);
  ASSERT_NE(b.client, nullptr);
  // 1,000 blocks/s with a burst of 3,000: B's first 2,048-block probe passes, the second
  // right after it does not, and says when to retry.
  const std::vector<ChainHash> probe = testutil::PromptChain(b.ns, 61, 2048);
  EXPECT_THAT(b.client->Lookup(b.ns, "", probe), IsOk());
  EXPECT_THAT(b.client->Lookup(b.ns, "", probe),
              StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("retry in")));
  // A read tells whether blocks exist as well as a Lookup does: a Get or a Prefetch of the
  // same probe takes from the same bucket (before, both answered, bucket or not).
  std::vector<uint8_t> sink(2048 * 1024);
  std::vector<BlockRead> reads;
  for (size_t i = 0; i < probe.size(); ++i) reads.push_back({probe[i], &sink[i * 1024], 1024});
  EXPECT_THAT(b.client->Get(b.ns, "", reads),
              StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("retry in")));
  EXPECT_THAT(b.client->Prefetch(b.ns, "", probe),
              StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("retry in")));
  // Another tenant's bucket is its own.
  EXPECT_THAT(a.client->Lookup(a.ns, "", probe), IsOk());
  EXPECT_THAT(a.client->Get(a.ns, "", {reads.data(), 8}), IsOk());
}

TEST_F(TenancyTest, WarmQuotaStopsOneTenantOnly) {
  Tenant a = As(kTokens[0].token);
  Tenant b = As(kTokens[1].token);
  ASSERT_NE(b.client, nullptr);
  // 48 blocks of 96 KiB (107.7 KiB slabs: 5.05 MiB) against B's 4 MiB quota.
  auto put = Put(b, "", testutil::PromptChain(b.ns, 71, 48), 7100);
  ASSERT_THAT(put, IsOk());
  size_t over = 0;
  for (const absl::Status& s : put->blocks) {
    if (s.code() == absl::StatusCode::kResourceExhausted) {
      EXPECT_THAT(s.message(), HasSubstr("tenant quota"));
      ++over;
    }
  }
  EXPECT_GT(over, 0u);
  EXPECT_GT(put->stored, 0u);
  // A, well under its own quota, still writes.
  auto a_put = Put(a, "", testutil::PromptChain(a.ns, 72, 2), 7200);
  ASSERT_THAT(a_put, IsOk());
  EXPECT_EQ(a_put->stored, 2u);
}

// A tenant listed in the principals file has its own quota: platform (8 MiB) stores the 5 MiB
// that tenant B (the node's 4 MiB) cannot, and a reload lowering it to 1 MiB refuses
// platform's next put, naming the new quota.
TEST_F(TenancyTest, ATenantsOwnQuotaOverridesTheDefault) {
  Tenant pub = As(kTokens[3].token);  // tenant platform
  ASSERT_NE(pub.client, nullptr);
  auto put = Put(pub, "", testutil::PromptChain(pub.ns, 73, 48), 7300);  // 5.05 MiB of slabs
  ASSERT_THAT(put, IsOk());
  EXPECT_EQ(put->stored, 48u);

  WritePrincipals(Path("principals.yaml"), false, "1MiB");
  ASSERT_EQ(kill(node_->pid(), SIGHUP), 0);
  size_t refused = 0;
  for (int i = 0; i < 100 && refused == 0; ++i) {  // the node reloads on its own thread
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    auto more = Put(pub, "", testutil::PromptChain(pub.ns, 74 + i, 1), 7400);
    ASSERT_THAT(more, IsOk());
    for (const absl::Status& s : more->blocks) {
      // Past the old 8 MiB too, a refusal would still name 8 MiB: the 1 MiB proves the reload.
      if (absl::IsResourceExhausted(s) && absl::StrContains(s.message(), "quota 1.00 MiB")) {
        ++refused;
      }
    }
  }
  EXPECT_EQ(refused, 1u) << "the lowered quota never took effect";
  WritePrincipals(Path("principals.yaml"), false);
  ASSERT_EQ(kill(node_->pid(), SIGHUP), 0);
}

TEST_F(TenancyTest, DeniedCallsAreCountedPerTenantWithoutSecrets) {
  Tenant b = As(kTokens[1].token);
  ASSERT_NE(b.client, nullptr);
  const std::vector<ChainHash> chain = testutil::PromptChain(b.ns, 51, 1);
  EXPECT_THAT(Put(b, "shared", chain, 5100), StatusIs(absl::StatusCode::kPermissionDenied));
  auto metrics = testutil::HttpGet(node_->http_address(), "/metrics");
  ASSERT_THAT(metrics, IsOk());
  EXPECT_THAT(
      metrics->second,
      HasSubstr("strata_tenant_denied_total{code=\"PERMISSION_DENIED\",tenant=\"tenant-b\""));
  EXPECT_THAT(metrics->second, HasSubstr("strata_tenant_lookup_blocks_total"));
  for (const Token& t : kTokens) EXPECT_THAT(metrics->second, ::testing::Not(HasSubstr(t.token)));
}

// /metrics shows what each tenant holds: tenant A's put adds to A's warm bytes only, and its
// delete takes them back.
TEST_F(TenancyTest, MetricsShowTheBytesEachTenantHolds) {
  auto held = [](const char* tenant) {
    auto metrics = testutil::HttpGet(node_->http_address(), "/metrics");
    EXPECT_THAT(metrics, IsOk());
    if (!metrics.ok()) return -1.0;
    const std::string line =
        absl::StrCat("strata_tenant_bytes{tenant=\"", tenant, "\",tier=\"warm\"");
    const size_t at = metrics->second.find(line);
    if (at == std::string::npos) return 0.0;  // holds nothing
    const size_t value = metrics->second.find("} ", at);
    return std::strtod(metrics->second.c_str() + value + 2, nullptr);
  };
  Tenant a = As(kTokens[0].token);
  ASSERT_NE(a.client, nullptr);
  const double a_before = held("tenant-a"), b_before = held("tenant-b");
  const std::vector<ChainHash> chain = testutil::PromptChain(a.ns, 61, 3);
  auto put = Put(a, "", chain, 6100);
  ASSERT_THAT(put, IsOk());
  ASSERT_EQ(put->stored, chain.size());
  EXPECT_GE(held("tenant-a") - a_before, 3.0 * kBlock);
  EXPECT_EQ(held("tenant-b"), b_before);
  ASSERT_THAT(a.client->Delete(a.ns, "", chain), IsOk());
  EXPECT_EQ(held("tenant-a"), a_before);
}

TEST_F(TenancyTest, SighupReloadsPrincipals) {
  EXPECT_THAT(StoreClient::Connect(Options(node_, kLateToken)),
              StatusIs(absl::StatusCode::kUnauthenticated));
  WritePrincipals(Path("principals.yaml"), true);
  ASSERT_EQ(kill(node_->pid(), SIGHUP), 0);
  absl::StatusOr<std::unique_ptr<StoreClient>> late;
  for (int i = 0; i < 100; ++i) {  // the node reloads on its own thread
    late = StoreClient::Connect(Options(node_, kLateToken));
    if (late.ok()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_THAT(late, IsOk());
  // A broken file keeps the principals in use.
  { std::ofstream(Path("principals.yaml"), std::ios::trunc) << "principals: [oops\n"; }
  ASSERT_EQ(kill(node_->pid(), SIGHUP), 0);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_THAT(StoreClient::Connect(Options(node_, kLateToken)), IsOk());
  WritePrincipals(Path("principals.yaml"), false);
}

// A two-sided PutData of one block on raw channel `c` whose message is never sent: the call
// waits for it until its deadline.
v1::PutDataRequest StalledPut(const ucx_test::RawChannel& c, const client::Namespace& ns,
                              uint32_t prompt, uint32_t sequence) {
  v1::PutDataRequest req;
  req.set_channel_id(c.channel.channel_id());
  req.set_namespace_id(ns.id);
  v1::PutBlock* b = req.add_blocks();
  b->set_chain_hash(testutil::PromptChain(ns, prompt, 1)[0].ToBytes());
  b->set_size(kBlock);
  req.add_checksums(1);
  req.add_tags(c.Tag(sequence));
  return req;
}

std::chrono::system_clock::time_point In(int seconds) {
  return std::chrono::system_clock::now() + std::chrono::seconds(seconds);
}

// A tenant has at most --tenant-data-calls PutData/GetData calls in progress on a node: with
// two of A's waiting for messages never sent, A's third is RESOURCE_EXHAUSTED naming the cap
// (before, it waited as well, and enough such calls held every one of the node's
// max_concurrent_calls), while B's put passes; once A's two end, A's next put passes.
TEST_F(TenancyTest, DataCallsAreCappedPerTenant) {
  std::vector<std::string> args = CommonArgs();
  args.insert(args.end(), {"--tenant-data-calls", "2"});
  auto node = testutil::StartNode(args);
  ASSERT_THAT(node, IsOk());
  auto options = [&](const char* token) {
    ClientOptions o = Options(node->get(), token);
    o.data_plane = ClientOptions::DataPlane::kUcx;
    return o;
  };
  Tenant a = Connect(options(kTokens[0].token));
  Tenant b = Connect(options(kTokens[1].token));
  ASSERT_NE(b.client, nullptr);
  auto stub = RawStubAs(node->get(), kTokens[0].token);
  ucx_test::RawChannel raw;
  ASSERT_NO_FATAL_FAILURE(ucx_test::OpenRawChannel(*stub, &raw));
  std::vector<std::unique_ptr<grpc::ClientContext>> held;
  std::vector<grpc::StatusCode> held_codes(2, grpc::StatusCode::OK);
  std::vector<std::thread> holders;
  for (uint32_t i = 0; i < 2; ++i) {
    held.push_back(std::make_unique<grpc::ClientContext>());
    held.back()->set_deadline(In(60));
  }
  for (uint32_t i = 0; i < 2; ++i) {
    holders.emplace_back([&, i, ctx = held[i].get()] {
      v1::PutDataResponse resp;
      held_codes[i] = stub->PutData(ctx, StalledPut(raw, a.ns, 91 + i, i + 1), &resp).error_code();
    });
  }
  // Both wait in their transfers once their blocks are reserved.
  for (int i = 0; i < 200 && ucx_test::MetricValue(**node, "strata_reservations") < 2; ++i) {
    absl::SleepFor(absl::Milliseconds(50));
  }
  EXPECT_EQ(ucx_test::MetricValue(**node, "strata_reservations"), 2);
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(In(5));
    v1::PutDataResponse resp;
    const grpc::Status third = stub->PutData(&ctx, StalledPut(raw, a.ns, 93, 3), &resp);
    EXPECT_EQ(third.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << third.error_message();
    EXPECT_THAT(third.error_message(), HasSubstr("tenant-a: 2 of its data calls"));
  }
  {
    // Reads count too (a node's puts into a stalled client wait as long).
    v1::GetDataRequest get;
    get.set_channel_id(raw.channel.channel_id());
    get.set_namespace_id(a.ns.id);
    get.add_chain_hashes(testutil::PromptChain(a.ns, 93, 1)[0].ToBytes());
    get.add_tags(raw.Tag(4));
    get.add_capacities(kBlock);
    grpc::ClientContext ctx;
    ctx.set_deadline(In(5));
    v1::GetDataResponse resp;
    EXPECT_EQ(stub->GetData(&ctx, get, &resp).error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  }
  EXPECT_THAT(Put(b, "", testutil::PromptChain(b.ns, 94, 1), 9400), IsOk());
  for (auto& ctx : held) ctx->TryCancel();
  for (std::thread& t : holders) t.join();
  EXPECT_EQ(held_codes, std::vector<grpc::StatusCode>(2, grpc::StatusCode::CANCELLED));
  // The node ends the calls as it sees them cancelled (within milliseconds).
  absl::StatusOr<client::PutResult> next = absl::UnknownError("not tried");
  for (int i = 0; i < 50 && !next.ok(); ++i) {
    if (i > 0) absl::SleepFor(absl::Milliseconds(100));
    next = Put(a, "", testutil::PromptChain(a.ns, 95, 1), 9500);
  }
  EXPECT_THAT(next, IsOk());
}

// A PutData refused for its caller's role takes the client's messages, but waits for them only
// briefly: a reader's put naming a message never sent is PERMISSION_DENIED long before its
// 30 s deadline (before, the node waited the deadline out holding a call slot, and the client
// saw DEADLINE_EXCEEDED), and its channel stays open (the wait is withdrawn, not timed out).
TEST_F(TenancyTest, ARefusedPutWaitsForItsMessagesOnlyBriefly) {
  Tenant a = As(kTokens[0].token);                 // registers the namespace
  auto stub = RawStubAs(node_, kTokens[2].token);  // tenant-a, reader only
  ucx_test::RawChannel raw;
  ASSERT_NO_FATAL_FAILURE(ucx_test::OpenRawChannel(*stub, &raw));
  grpc::ClientContext ctx;
  ctx.set_deadline(In(30));
  v1::PutDataResponse resp;
  const grpc::Status refused = stub->PutData(&ctx, StalledPut(raw, a.ns, 96, 1), &resp);
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::PERMISSION_DENIED) << refused.error_message();
  EXPECT_EQ(ucx_test::CloseRawChannel(*stub, raw), grpc::StatusCode::OK);
}

// A tenant holds at most --tenant-data-channels UCX data channels on a node (one per client):
// tenant A's third client is refused RESOURCE_EXHAUSTED naming the cap, while tenant B's
// client still opens one, and A's third gets in once one of A's clients has gone.
TEST_F(TenancyTest, DataChannelsAreCappedPerTenant) {
  std::vector<std::string> args = CommonArgs();
  args.insert(args.end(), {"--tenant-data-channels", "2"});
  auto node = testutil::StartNode(args);
  ASSERT_THAT(node, IsOk());
  auto options = [&](const char* token) {
    ClientOptions o = Options(node->get(), token);
    o.data_plane = ClientOptions::DataPlane::kUcx;  // opens its channel as it connects
    return o;
  };
  std::vector<Tenant> a;
  for (int i = 0; i < 2; ++i) a.push_back(Connect(options(kTokens[0].token)));
  ASSERT_NE(a[1].client, nullptr);
  const std::vector<ChainHash> hashes = testutil::PromptChain(a[0].ns, 81, 1);
  ASSERT_THAT(Put(a[1], "", hashes, 8100), IsOk());
  EXPECT_THAT(StoreClient::Connect(options(kTokens[0].token)).status(),
              StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("tenant-a holds 2")));
  Tenant b = Connect(options(kTokens[1].token));
  ASSERT_NE(b.client, nullptr);
  EXPECT_THAT(Put(b, "", testutil::PromptChain(b.ns, 82, 1), 8200), IsOk());
  a[0].client.reset();  // closes its channel (CloseData, sent as the client goes)
  absl::StatusOr<std::unique_ptr<StoreClient>> third = absl::UnknownError("not tried");
  for (int i = 0; i < 50 && !third.ok(); ++i) {
    if (i > 0) absl::SleepFor(absl::Milliseconds(100));
    third = StoreClient::Connect(options(kTokens[0].token));
  }
  ASSERT_THAT(third, IsOk());
  EXPECT_THAT((*third)->Stats(), IsOk());
}

// A tenant adds at most --tenant-namespaces new namespaces to a node: A's third new model is
// refused RESOURCE_EXHAUSTED naming the cap, while A re-registering one it has, B adding a new
// one, and an admin adding one more all pass.
TEST_F(TenancyTest, NewNamespacesAreCappedPerTenant) {
  std::vector<std::string> args = CommonArgs();
  args.insert(args.end(), {"--tenant-namespaces", "2"});
  auto node = testutil::StartNode(args);
  ASSERT_THAT(node, IsOk());
  auto as = [&](const char* token) { return StoreClient::Connect(Options(node->get(), token)); };
  auto a = as(kTokens[0].token);
  auto b = as(kTokens[1].token);
  auto admin = as(kTokens[4].token);
  ASSERT_THAT(a, IsOk());
  ASSERT_THAT(b, IsOk());
  ASSERT_THAT(admin, IsOk());
  ASSERT_THAT((*a)->RegisterNamespace(testutil::RawSpec("model-1", 1 << 20)), IsOk());
  ASSERT_THAT((*a)->RegisterNamespace(testutil::RawSpec("model-2", 1 << 20)), IsOk());
  EXPECT_THAT((*a)->RegisterNamespace(testutil::RawSpec("model-3", 1 << 20)),
              StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("tenant tenant-a added 2")));
  EXPECT_THAT((*a)->RegisterNamespace(testutil::RawSpec("model-1", 1 << 20)), IsOk());
  EXPECT_THAT((*b)->RegisterNamespace(testutil::RawSpec("model-3", 1 << 20)), IsOk());
  EXPECT_THAT((*a)->RegisterNamespace(testutil::RawSpec("model-3", 1 << 20)), IsOk())
      << "B's namespace is there now";
  EXPECT_THAT((*admin)->RegisterNamespace(testutil::RawSpec("model-4", 1 << 20)), IsOk());
}

}  // namespace
}  // namespace strata
