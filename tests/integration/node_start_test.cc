// Reasons a strata-storenode refuses to start that no flag gives: what it needs of the host.
#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "strata/testutil/node_process.h"

namespace strata {
namespace {

// A node whose random source fails (here: an OpenSSL configuration naming a generator that
// does not exist) exits 1 at start naming it. Before 2026-11-29 it served, handing out
// channel ids from a counter, and lease ids too: capabilities another tenant could guess.
TEST(NodeStartTest, ANodeWithoutARandomSourceRefusesToStart) {
  const std::string dir = absl::StrCat(::testing::TempDir(), "strata-node-start-", getpid());
  std::filesystem::create_directories(dir);
  const std::string conf = dir + "/openssl.cnf";
  std::ofstream(conf) << "openssl_conf = init\n[init]\nrandom = random_sect\n"
                         "[random_sect]\nrandom = NO-SUCH-GENERATOR\n";
  // Run apart from StartNode, so only the node's environment names the broken configuration;
  // bounded: a node that starts is stopped after 20 s (exit 124).
  const std::string cmd = absl::StrCat(
      "OPENSSL_CONF=", conf, " timeout 20 ", testutil::ProjectBinary("strata-storenode"),
      " --warm-bytes 8MiB --max-block-bytes 1MiB --ucx-tls '' --listen 127.0.0.1:0",
      " --http-listen 127.0.0.1:0 2>&1");
  FILE* p = popen(cmd.c_str(), "r");
  ASSERT_NE(p, nullptr);
  std::string output;
  char buf[4096];
  for (size_t n; (n = fread(buf, 1, sizeof(buf), p)) > 0;) output.append(buf, n);
  const int status = pclose(p);
  std::filesystem::remove_all(dir);
  ASSERT_TRUE(WIFEXITED(status)) << output;
  EXPECT_EQ(WEXITSTATUS(status), 1) << output;
  EXPECT_TRUE(absl::StrContains(output, "random source failed")) << output;
}

}  // namespace
}  // namespace strata
