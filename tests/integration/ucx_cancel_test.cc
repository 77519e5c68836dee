// A client process that dies in the middle of a data call (killed while stopped mid-transfer):
// the node ends the call's transfer when gRPC reports the call cancelled (CancelWatch), and
// gives the put's reservation or the get's lease back at once. Over shared memory nothing else
// tells the node, which waited for the rest of the call until its deadline (the client's 60 s
// here). Over TCP UCX notices the dead peer by itself: those cases are the control.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <string>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "strata/client/store_client.h"
#include "strata/testutil/node_process.h"
#include "strata/testutil/status_matchers.h"

namespace strata {
namespace {

using testutil::IsOk;

// (transport, op): "put" waits on a reservation, "get" on a lease.
class UcxCancelTest : public ::testing::TestWithParam<std::tuple<std::string, std::string>> {};

TEST_P(UcxCancelTest, AClientKilledMidCallFreesWhatTheCallHeldWithoutWaitingForTheDeadline) {
  const auto& [tls, op] = GetParam();
  const std::string bench = testutil::ProjectBinary("strata-bench");
  if (access(bench.c_str(), X_OK) != 0) GTEST_SKIP() << "strata-bench not built";
  auto node = testutil::StartNode(
      {"--warm-bytes", "256MiB", "--max-block-bytes", "4MiB", "--ucx-tls", tls});
  ASSERT_THAT(node, IsOk());
  auto observer = client::StoreClient::Connect(
      {.address = (*node)->address(), .data_plane = client::ClientOptions::DataPlane::kInline});
  ASSERT_THAT(observer, IsOk());
  // What the node holds for the client's calls; a node that stops answering (crashed) reads
  // as holding something for ever.
  auto held = [&, op = op]() -> uint64_t {
    auto s = (*observer)->Stats();
    return !s.ok() ? UINT64_MAX : op == "put" ? s->reservations : s->leases;
  };
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    // Gets of 256 KiB go as tagged messages (two-sided), which the reader must take: a reader
    // stopped mid-call leaves the node's sends waiting.
    const bool get = op == "get";
    execl(bench.c_str(), bench.c_str(), "--node", (*node)->address().c_str(), "--blocks",
          get ? "256" : "100000", "--block-size", get ? "256KiB" : "1MiB", "--streams", "4",
          "--ops", get ? "put,mixed" : "put", "--get-fraction", "1", "--mixed-seconds", "100",
          "--transport", "ucx", "--call-timeout", "60", "--max-seconds", "120",
          static_cast<char*>(nullptr));
    _exit(127);
  }
  struct Reap {  // however the test ends, the client goes (it may be stopped)
    pid_t pid;
    ~Reap() {
      if (pid <= 0) return;
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
    }
  } reap{pid};
  // Stop the client until a call of it is stuck at the node: a reservation or lease still
  // held a second after the client stopped (a call whose bytes had all moved would be done).
  bool stuck = false;
  for (int attempt = 0; attempt < 40 && !stuck; ++attempt) {
    absl::SleepFor(absl::Milliseconds(200));
    ASSERT_EQ(kill(pid, SIGSTOP), 0);
    ASSERT_TRUE(testutil::WaitStopped(pid));
    absl::SleepFor(absl::Seconds(1));
    const uint64_t open = held();
    ASSERT_NE(open, UINT64_MAX) << "the node stopped answering";
    stuck = open > 0;
    if (!stuck) kill(pid, SIGCONT);
  }
  ASSERT_TRUE(stuck) << "no " << op << " of the client was caught mid-transfer";
  kill(pid, SIGKILL);
  waitpid(pid, nullptr, 0);
  reap.pid = -1;
  const absl::Time killed = absl::Now();
  while (held() > 0 && absl::Now() < killed + absl::Seconds(70)) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  const absl::Duration took = absl::Now() - killed;
  EXPECT_EQ(held(), 0u);
  // Not a speed check: what it rules out is waiting for the client's 60 s call deadline.
  EXPECT_LT(took, absl::Seconds(30)) << "the node held the dead client's " << op;
  std::printf("%s over %s: released %s after the client was killed\n", op.c_str(), tls.c_str(),
              absl::FormatDuration(took).c_str());
}

INSTANTIATE_TEST_SUITE_P(Transports, UcxCancelTest,
                         ::testing::Values(std::tuple{"tcp", "put"}, std::tuple{"shm", "put"},
                                           std::tuple{"tcp", "get"}, std::tuple{"shm", "get"}),
                         [](const auto& info) {
                           return std::get<0>(info.param) + "_" + std::get<1>(info.param);
                         });

}  // namespace
}  // namespace strata
