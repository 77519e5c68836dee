// The `strata` CLI refuses sizes it cannot hold and flags it cannot use with exit 2 (a bad
// argument) and a message, before allocating: not bad_alloc, an OOM kill, or a run that
// fails every call.
#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "strata/testutil/node_process.h"
#include "strata/testutil/status_matchers.h"

namespace strata {
namespace {

int ExitCode(const std::string& args) {
  const std::string cmd =
      absl::StrCat(testutil::ProjectBinary("strata"), " ", args, " > /dev/null 2>&1");
  const int status = std::system(cmd.c_str());
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

TEST(CliBoundsTest, SizesAndDeadlinesPastWhatACommandHoldsAreBadArguments) {
  auto node = testutil::StartNode({"--warm-bytes", "64MiB", "--ucx-tls", ""});
  ASSERT_THAT(node, testutil::IsOk());
  const std::string at = absl::StrCat(" --node ", (*node)->address());
  // An input file larger than what its blocks can hold: refused by its size, unread (a 17 GiB
  // sparse file; before, read whole into memory).
  const std::filesystem::path big =
      std::filesystem::temp_directory_path() / absl::StrCat("strata-cli-big-", getpid());
  std::ofstream(big).close();
  std::filesystem::resize_file(big, 17ull << 30);
  EXPECT_EQ(ExitCode(absl::StrCat("put", at, " --tokens 0..32 --input ", big.string())), 2);
  std::filesystem::remove(big);
  // The same command with an input that fits stores it.
  const std::filesystem::path small = big.string() + ".small";
  std::ofstream(small) << std::string(2 * 4096, 'k');
  EXPECT_EQ(ExitCode(absl::StrCat("put", at, " --tokens 0..32 --input ", small.string())), 0);
  std::filesystem::remove(small);

  // A deadline that is no number of seconds (before: every call failed at once, or a NaN cast).
  EXPECT_EQ(ExitCode(absl::StrCat("status", at, " --deadline nan")), 2);
  EXPECT_EQ(ExitCode(absl::StrCat("status", at, " --deadline 0")), 2);
  EXPECT_EQ(ExitCode(absl::StrCat("status", at, " --deadline 5")), 0);
  // A prompt the demo cannot hold (before: a 16 GiB token vector, or a wrapped sum).
  EXPECT_EQ(ExitCode(absl::StrCat("demo", at, " --prompt-tokens 4294967295")), 2);
  EXPECT_EQ(ExitCode(absl::StrCat("demo", at, " --prompt-tokens 1000000")), 2);
}

// A node and a cluster at once, or a cluster's replica settings with one node, is a bad
// argument. Before, --etcd silently won over --node (the command went to etcd, here one that
// is not there, and failed 1 after its deadline), and --replicas with --node was ignored.
TEST(CliBoundsTest, ANodeAndAClusterAtOnceAreABadArgument) {
  auto node = testutil::StartNode({"--warm-bytes", "64MiB", "--ucx-tls", ""});
  ASSERT_THAT(node, testutil::IsOk());
  const std::string lookup =
      absl::StrCat("lookup --node ", (*node)->address(), " --tokens 0..32 --deadline 2");
  EXPECT_EQ(ExitCode(lookup), 0);
  EXPECT_EQ(ExitCode(lookup + " --etcd 127.0.0.1:1"), 2);
  EXPECT_EQ(ExitCode(lookup + " --members a=127.0.0.1:1"), 2);
  EXPECT_EQ(ExitCode(lookup + " --replicas 2"), 2);
  EXPECT_EQ(ExitCode(lookup + " --write-quorum 1"), 2);
  EXPECT_EQ(ExitCode("lookup --etcd 127.0.0.1:1 --members a=127.0.0.1:1 --tokens 0..32"), 2);
}

}  // namespace
}  // namespace strata
