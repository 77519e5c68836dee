// The strata.yaml the Helm chart renders is accepted by the store node's own parser.
//
// tests/helm/check_chart.py renders deploy/helm/strata with the real helm for every values
// case and writes, per case, the ConfigMap's strata.yaml plus the arguments and environment
// the pod gives strata-storenode (downward-API fields replaced by stand-ins: pod kv-strata-0,
// zone zone-a). These tests feed them through RegisterNodeOptions + ConfigSchema::Parse +
// ValidateNodeConfig exactly as main() does, show that a broken key or value is refused, and
// start the real strata-storenode from the default and minimal renderings (a local etcd in
// place of the bundled one, temp dirs in place of the volumes).
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "strata/client/local_node.h"
#include "strata/cluster/local_etcd.h"
#include "strata/common/byte_size.h"
#include "strata/common/config.h"
#include "strata/storenode/node_config.h"
#include "strata/testutil/node_process.h"
#include "strata/testutil/status_matchers.h"

namespace strata {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::IsSupersetOf;
using testutil::IsOk;
using testutil::StatusIs;

using KeyValues = std::map<std::string, std::string>;

// One values case as check_chart.py wrote it.
struct RenderedCase {
  std::string name;
  fs::path dir;
  std::vector<std::string> args;  // after argv[0]; --config names dir/strata.yaml
  KeyValues env;                  // the storenode container's environment
  KeyValues expect;               // NodeConfig fields the pod must end up with
};

bool HelmSkipped() {
  const char* v = std::getenv("STRATA_NO_HELM");
  return v != nullptr && std::string(v) == "1";
}

fs::path RenderDir() {
  const char* v = std::getenv("STRATA_HELM_RENDER_DIR");
  return v == nullptr ? fs::path() : fs::path(v);
}

std::vector<std::string> ReadLines(const fs::path& path) {
  std::ifstream in(path);
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) {
    if (!line.empty()) lines.push_back(line);
  }
  return lines;
}

KeyValues ReadKeyValues(const fs::path& path) {
  KeyValues out;
  for (const std::string& line : ReadLines(path)) {
    size_t eq = line.find('=');
    if (eq != std::string::npos) out[line.substr(0, eq)] = line.substr(eq + 1);
  }
  return out;
}

std::string ReadFile(const fs::path& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

RenderedCase LoadCase(const std::string& name) {
  RenderedCase c;
  c.name = name;
  c.dir = RenderDir() / name;
  c.args = ReadLines(c.dir / "args");
  c.env = ReadKeyValues(c.dir / "env");
  c.expect = ReadKeyValues(c.dir / "expect");
  return c;
}

// What strata-storenode's main() does before starting: parse file, environment and flags,
// then validate across fields.
absl::Status ParseLikeTheNode(const std::vector<std::string>& args, const KeyValues& env,
                              storenode::NodeConfig* config) {
  ConfigSchema schema("strata-storenode", "a Strata KV-cache store node");
  storenode::RegisterNodeOptions(schema, config);
  std::vector<const char*> argv = {"strata-storenode"};
  for (const std::string& a : args) argv.push_back(a.c_str());
  absl::StatusOr<ConfigSchema::Outcome> outcome =
      schema.Parse(static_cast<int>(argv.size()), argv.data(),
                   [&env](const std::string& name) -> std::optional<std::string> {
                     auto it = env.find(name);
                     if (it == env.end()) return std::nullopt;
                     return it->second;
                   });
  if (!outcome.ok()) return outcome.status();
  if (*outcome != ConfigSchema::Outcome::kRun) return absl::InternalError("asked for --help");
  return storenode::ValidateNodeConfig(*config);
}

// A fresh directory under the test's temp dir.
fs::path MakeTempDir(const std::string& tag) {
  std::string pattern = (fs::temp_directory_path() / ("strata-helm-" + tag + "-XXXXXX")).string();
  char* made = mkdtemp(pattern.data());
  return made == nullptr ? fs::path() : fs::path(made);
}

class RenderedConfigTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (HelmSkipped()) GTEST_SKIP() << "STRATA_NO_HELM=1: the chart was not rendered";
    ASSERT_FALSE(RenderDir().empty()) << "STRATA_HELM_RENDER_DIR unset: run through ctest";
    ASSERT_TRUE(fs::exists(RenderDir() / "cases.txt"))
        << "no rendering in " << RenderDir() << ": helm_chart_test must pass first";
  }

  // The default case's arguments with --config pointing at `config`.
  static std::vector<std::string> ArgsWithConfig(const RenderedCase& c, const fs::path& config) {
    std::vector<std::string> args = c.args;
    for (std::string& a : args) {
      if (a == (c.dir / "strata.yaml").string()) a = config.string();
    }
    return args;
  }
};

TEST_F(RenderedConfigTest, EveryValuesCaseIsAcceptedByTheNode) {
  std::vector<std::string> cases = ReadLines(RenderDir() / "cases.txt");
  ASSERT_THAT(cases, IsSupersetOf({"default", "production", "minimal", "vllm-gpu-worker",
                                   "external-etcd", "external-etcd-tls", "static"}));
  for (const std::string& name : cases) {
    SCOPED_TRACE("values case " + name);
    RenderedCase c = LoadCase(name);
    ASSERT_THAT(c.args, ::testing::Contains("--config"));
    storenode::NodeConfig config;
    ASSERT_THAT(ParseLikeTheNode(c.args, c.env, &config), IsOk());
    // The per-pod environment lands on top of the shared file.
    EXPECT_EQ(config.node_id, c.expect["node_id"]);
    EXPECT_EQ(config.zone, c.expect["zone"]);
    EXPECT_EQ(config.advertise_address, c.expect["advertise_address"]);
    EXPECT_EQ(config.cluster_token, c.expect["cluster_token"]);
    EXPECT_EQ(config.cluster_mode, c.expect["cluster_mode"]);
    EXPECT_EQ(config.etcd_endpoints, c.expect["etcd_endpoints"]);
    absl::StatusOr<uint64_t> warm = ParseByteSize(c.expect["warm_bytes"], "expect");
    ASSERT_THAT(warm, IsOk());
    EXPECT_EQ(config.warm_bytes, *warm);
    // The chart sized the memory limit for the tiers' indexes by this charge.
    absl::StatusOr<uint64_t> charge = ParseByteSize(c.expect["min_block_charge"], "expect");
    ASSERT_THAT(charge, IsOk());
    EXPECT_EQ(config.min_block_charge, *charge);
    EXPECT_EQ(config.listen, "0.0.0.0:7070");
    EXPECT_EQ(config.http_listen, "0.0.0.0:7071");
  }
}

TEST_F(RenderedConfigTest, ProductionSetsTiersTlsAndAuth) {
  RenderedCase c = LoadCase("production");
  storenode::NodeConfig config;
  ASSERT_THAT(ParseLikeTheNode(c.args, c.env, &config), IsOk());
  EXPECT_EQ(config.cool_path, "/var/lib/strata/cool/rocksdb");
  EXPECT_EQ(config.cold_path, "/var/lib/strata/cold/rocksdb");
  EXPECT_EQ(config.cool_bytes, uint64_t{3500} * 90 / 100 * (1 << 30));  // 90% of the volume
  EXPECT_EQ(config.ucx_tls, "rc,sm");
  EXPECT_EQ(config.ucx_lanes, 4u);
  EXPECT_EQ(config.tls_cert, "/etc/strata/tls/tls.crt");
  EXPECT_EQ(config.tls_client_ca, "/etc/strata/client-ca/ca.crt");
  EXPECT_EQ(config.auth_mode, "required");
  EXPECT_EQ(config.auth_principals_file, "/etc/strata/principals/principals.yaml");
  EXPECT_EQ(config.drain_timeout_ms, 60000u);
  EXPECT_EQ(config.max_block_bytes, uint64_t{8} << 20);  // store.config passthrough
  EXPECT_EQ(config.session_idle_ms, 600000u);
  EXPECT_EQ(config.cluster_replicas, 2u);
  EXPECT_TRUE(config.warm_prefault);
}

TEST_F(RenderedConfigTest, UnknownKeyIsRefused) {
  RenderedCase c = LoadCase("default");
  fs::path dir = MakeTempDir("unknown-key");
  ASSERT_FALSE(dir.empty());
  fs::path broken = dir / "strata.yaml";
  std::ofstream(broken) << ReadFile(c.dir / "strata.yaml") << "warm_byts: 1GiB\n";
  storenode::NodeConfig config;
  EXPECT_THAT(ParseLikeTheNode(ArgsWithConfig(c, broken), c.env, &config),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("unknown key 'warm_byts'")));
  fs::remove_all(dir);
}

// The chart refuses store.config keys outside its list (a typo would crash-loop every pod):
// the list is exactly the node's options, or a new option could not be set through the
// chart and a dropped one would pass the chart and stop the node.
TEST(ChartKeysTest, TheChartsListOfNodeKeysIsTheNodesOptions) {
  const char* source = std::getenv("STRATA_SOURCE_DIR");
  ASSERT_NE(source, nullptr) << "STRATA_SOURCE_DIR unset: run through ctest";
  std::vector<std::string> listed;
  for (const std::string& line :
       ReadLines(fs::path(source) / "deploy/helm/strata/files/node-config-keys.txt")) {
    if (!line.starts_with("#")) listed.push_back(line);
  }
  storenode::NodeConfig config;
  ConfigSchema schema("strata-storenode", "a Strata KV-cache store node");
  storenode::RegisterNodeOptions(schema, &config);
  std::vector<std::string> names = schema.Names();
  std::sort(listed.begin(), listed.end());
  std::sort(names.begin(), names.end());
  EXPECT_EQ(listed, names);
}

TEST_F(RenderedConfigTest, KubernetesQuantityIsTheSameNodeSize) {
  // The chart renders 8Gi as 8GiB; a hand-written 8Gi means the same bytes to the node.
  RenderedCase c = LoadCase("default");
  std::string text = ReadFile(c.dir / "strata.yaml");
  ASSERT_THAT(text, HasSubstr("warm_bytes: 8GiB\n"));
  storenode::NodeConfig rendered;
  ASSERT_THAT(ParseLikeTheNode(c.args, c.env, &rendered), IsOk());
  fs::path dir = MakeTempDir("quantity");
  ASSERT_FALSE(dir.empty());
  fs::path quantity = dir / "strata.yaml";
  std::ofstream(quantity) << absl::StrReplaceAll(text, {{"warm_bytes: 8GiB", "warm_bytes: 8Gi"}});
  storenode::NodeConfig config;
  ASSERT_THAT(ParseLikeTheNode(ArgsWithConfig(c, quantity), c.env, &config), IsOk());
  EXPECT_EQ(config.warm_bytes, uint64_t{8} << 30);
  EXPECT_EQ(config.warm_bytes, rendered.warm_bytes);
  fs::remove_all(dir);
}

TEST_F(RenderedConfigTest, EtcdModeWithoutEndpointsFailsValidation) {
  RenderedCase c = LoadCase("default");
  std::string text = ReadFile(c.dir / "strata.yaml");
  std::string kept;
  bool removed = false;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (absl::StartsWith(line, "etcd_endpoints:")) {
      removed = true;
    } else {
      absl::StrAppend(&kept, line, "\n");
    }
  }
  ASSERT_TRUE(removed) << "the default rendering has no etcd_endpoints";
  fs::path dir = MakeTempDir("no-etcd");
  ASSERT_FALSE(dir.empty());
  std::ofstream(dir / "strata.yaml") << kept;
  storenode::NodeConfig config;
  EXPECT_THAT(ParseLikeTheNode(ArgsWithConfig(c, dir / "strata.yaml"), c.env, &config),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("etcd_endpoints")));
  fs::remove_all(dir);
}

// The real binary on loopback: the pod's environment is set in this process (the child
// inherits it), the Kubernetes-only settings are replaced by flags.
class RenderedNodeTest : public RenderedConfigTest {
 protected:
  void TearDown() override {
    for (const std::string& name : set_env_) unsetenv(name.c_str());
    if (!dir_.empty()) fs::remove_all(dir_);
  }

  absl::StatusOr<std::unique_ptr<client::LocalNode>> StartFrom(const RenderedCase& c,
                                                               std::vector<std::string> overrides) {
    dir_ = MakeTempDir(c.name);
    for (const auto& [name, value] : c.env) {
      if (name == "STRATA_ADVERTISE_ADDRESS") continue;  // a cluster DNS name; use the bound one
      setenv(name.c_str(), value.c_str(), 1);
      set_env_.push_back(name);
    }
    std::vector<std::string> args = c.args;
    args.insert(args.end(), {"--cool-path", (dir_ / "cool").string(), "--warm-bytes", "128MiB"});
    args.insert(args.end(), overrides.begin(), overrides.end());
    return testutil::StartNode(args);
  }

  std::vector<std::string> set_env_;
  fs::path dir_;
};

TEST_F(RenderedNodeTest, NodeServesFromTheDefaultRendering) {
  absl::StatusOr<std::unique_ptr<cluster::LocalEtcd>> etcd = cluster::LocalEtcd::Start({});
  ASSERT_THAT(etcd, IsOk());
  RenderedCase c = LoadCase("default");
  auto node = StartFrom(c, {"--etcd-endpoints", (*etcd)->endpoint()});
  ASSERT_THAT(node, IsOk());
  for (const char* path : {"/healthz", "/readyz"}) {
    auto got = testutil::HttpGet((*node)->http_address(), path);
    ASSERT_THAT(got, IsOk());
    EXPECT_EQ(got->first, 200) << path;
  }
  auto metrics = testutil::HttpGet((*node)->http_address(), "/metrics");
  ASSERT_THAT(metrics, IsOk());
  EXPECT_THAT(metrics->second, HasSubstr("node=\"kv-strata-0\""));  // node_id from the env
  EXPECT_THAT(metrics->second, HasSubstr("strata_etcd_connected{node=\"kv-strata-0\"} 1"));
  // Every series the Grafana dashboard queries is one the node exports.
  std::vector<std::string> names = ReadLines(RenderDir() / "dashboard_metrics.txt");
  ASSERT_GE(names.size(), 5u);
  std::vector<std::string> missing;
  for (const std::string& name : names) {
    if (name == "strata_op_errors_total") continue;  // exists once a call has failed
    if (!absl::StrContains(metrics->second, "\n" + name + "{")) missing.push_back(name);
  }
  EXPECT_THAT(missing, IsEmpty()) << "series the dashboard queries but the node does not export";
  // SIGTERM drains and exits 0 well inside terminationGracePeriodSeconds.
  absl::StatusOr<int> code = (*node)->Stop(absl::Seconds(30));
  ASSERT_THAT(code, IsOk());
  EXPECT_EQ(*code, 0);
}

TEST_F(RenderedNodeTest, NodeServesFromTheMinimalRendering) {
  RenderedCase c = LoadCase("minimal");
  auto node = StartFrom(c, {});
  ASSERT_THAT(node, IsOk());
  auto ready = testutil::HttpGet((*node)->http_address(), "/readyz");
  ASSERT_THAT(ready, IsOk());
  EXPECT_EQ(ready->first, 200);
  auto metrics = testutil::HttpGet((*node)->http_address(), "/metrics");
  ASSERT_THAT(metrics, IsOk());
  EXPECT_THAT(metrics->second, HasSubstr("strata_cluster_members{node=\"kv-strata-0\"} 1"));
  absl::StatusOr<int> code = (*node)->Stop(absl::Seconds(30));
  ASSERT_THAT(code, IsOk());
  EXPECT_EQ(*code, 0);
}

}  // namespace
}  // namespace strata
