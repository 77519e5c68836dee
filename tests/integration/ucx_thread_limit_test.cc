// A client in a process that reached its thread limit (RLIMIT_NPROC, a container's pids.max)
// after it connected neither hangs nor ends the process. The limit is real: a re-executed
// child of this binary (gtest's "threadsafe" death test) starts its node and connects, then
// takes an unused uid (root is exempt from the limit) and an RLIMIT_NPROC that uid's tasks
// have already reached (testutil::ReachTheThreadLimit), keeping the rights to stop its node
// (run by root) and remove its files.
#include <unistd.h>

#include <cstdlib>

#include "strata/testutil/thread_limit.h"
#include "ucx_test_support.h"

namespace strata::ucx_test {
namespace {

// Exits 0 once a put over UCX with trailing checksums was refused (RESOURCE_EXHAUSTED, else
// 4) and the client's destructor returned, at the limit; SIGALRM when either hangs.
[[noreturn]] void PutAndDestroyAtTheLimit() {
  alarm(60);
  auto node = testutil::StartNode(
      {"--warm-bytes", "64MiB", "--ucx-tls", "tcp"});  // trailing checksums by default
  if (!node.ok()) std::_Exit(3);
  client::ClientOptions o;
  o.address = (*node)->address();
  o.data_plane = client::ClientOptions::DataPlane::kUcx;
  o.ucx_two_sided_on_tcp = true;
  o.ucx_trailing_checksum_bytes = 64 << 10;
  auto connected = client::StoreClient::Connect(o);
  if (!connected.ok()) std::_Exit(3);
  client::StoreClient& client = **connected;
  auto ns = client.RegisterNamespace(Spec());
  if (!ns.ok()) std::_Exit(3);
  const std::vector<uint8_t> block = testutil::RandomBytes(5, 1 << 20);
  const client::BlockWrite write{testutil::PromptChain(*ns, 5, 1)[0], block.data(), block.size()};
  testutil::ReachTheThreadLimit();
  // The UCX side of the put cannot have a thread beside its RPC: refused at once (before, run
  // first on this thread, it waited for the RPC sent after it until the deadline). Its
  // PutData's callback, if it waits for one, runs on a thread gRPC started when the client
  // connected (before, on one it could not start now: the put waited for good).
  client::CallOptions call;
  call.deadline = absl::Seconds(5);
  auto put = client.Put(*ns, "", {&write, 1}, call);
  const absl::Status got = !put.ok() ? put.status() : put->blocks[0];
  if (got.code() != absl::StatusCode::kResourceExhausted) std::_Exit(4);
  // Its release calls' callbacks too (and the destructor waits for them a bounded time).
  connected->reset();
  node->reset();
  std::_Exit(0);
}

TEST(UcxThreadLimitTest, APutAndTheClientsDestructorReturnAtTheThreadLimit) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(PutAndDestroyAtTheLimit(), testing::ExitedWithCode(0), "");
}

}  // namespace
}  // namespace strata::ucx_test
