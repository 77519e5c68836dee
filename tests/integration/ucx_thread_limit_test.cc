// A client in a process at its thread limit (RLIMIT_NPROC, a container's pids.max) neither
// hangs nor ends the process. The limit is real: a re-executed child of this binary (gtest's
// "threadsafe" death test) takes an unused uid (root is exempt from the limit), starts its
// node and connects, then sets an RLIMIT_NPROC that uid's tasks have already reached. The
// node runs under the same uid, so it dies with the child (testutil::StartNode's death signal
// needs that permission).
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cstdlib>

#include "ucx_test_support.h"

namespace strata::ucx_test {
namespace {

constexpr uid_t kUnusedUid = 54'321;

// Exits 0 once a UCX client, destroyed at the limit, has returned; SIGALRM when it hangs.
[[noreturn]] void DestroyAClientAtTheLimit() {
  alarm(60);
  if (getuid() == 0 && setuid(kUnusedUid) != 0) std::_Exit(3);
  auto node = testutil::StartNode({"--warm-bytes", "64MiB", "--ucx-tls", "tcp"});
  if (!node.ok()) std::_Exit(3);
  client::ClientOptions o;
  o.address = (*node)->address();
  o.data_plane = client::ClientOptions::DataPlane::kUcx;
  auto connected = client::StoreClient::Connect(o);
  if (!connected.ok()) std::_Exit(3);
  const rlimit none_left{1, 1};  // the uid's tasks (this process and its node) exceed it
  if (setrlimit(RLIMIT_NPROC, &none_left) != 0) std::_Exit(3);
  // Its destructor closes the data channel with a release call whose completion gRPC runs on
  // a thread it cannot start now: before, the destructor waited for it for good.
  connected->reset();
  std::_Exit(0);
}

TEST(UcxThreadLimitTest, AClientDestroyedWithNoThreadToBeHadReturns) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(DestroyAClientAtTheLimit(), testing::ExitedWithCode(0), "");
}

}  // namespace
}  // namespace strata::ucx_test
