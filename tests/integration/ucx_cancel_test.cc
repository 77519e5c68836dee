// A client process that dies in the middle of a put (killed while stopped mid-send): the node
// ends the call's transfer when gRPC reports the call cancelled (CancelWatch), and gives its
// reservation back at once. Over shared memory nothing else tells the node, which waited for
// the rest of the blocks until the call's deadline (the client's 60 s here).
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "strata/client/store_client.h"
#include "strata/testutil/node_process.h"
#include "strata/testutil/status_matchers.h"

namespace strata {
namespace {

using testutil::IsOk;

class UcxCancelTest : public ::testing::TestWithParam<std::string> {};

TEST_P(UcxCancelTest, AClientKilledMidPutFreesItsReservationWithoutWaitingForTheDeadline) {
  const std::string bench = testutil::ProjectBinary("strata-bench");
  if (access(bench.c_str(), X_OK) != 0) GTEST_SKIP() << "strata-bench not built";
  auto node = testutil::StartNode(
      {"--warm-bytes", "256MiB", "--max-block-bytes", "4MiB", "--ucx-tls", GetParam()});
  ASSERT_THAT(node, IsOk());
  auto observer = client::StoreClient::Connect(
      {.address = (*node)->address(), .data_plane = client::ClientOptions::DataPlane::kInline});
  ASSERT_THAT(observer, IsOk());
  // A node that stops answering (crashed) reads as holding reservations for ever.
  auto reservations = [&]() -> uint64_t {
    auto s = (*observer)->Stats();
    return s.ok() ? s->reservations : UINT64_MAX;
  };
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    execl(bench.c_str(), bench.c_str(), "--node", (*node)->address().c_str(), "--blocks", "100000",
          "--block-size", "1MiB", "--streams", "4", "--ops", "put", "--transport", "ucx",
          "--call-timeout", "60", "--max-seconds", "120", static_cast<char*>(nullptr));
    _exit(127);
  }
  struct Reap {  // however the test ends, the writer goes (it may be stopped)
    pid_t pid;
    ~Reap() {
      if (pid <= 0) return;
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
    }
  } reap{pid};
  // Stop the writer until a put of it is stuck at the node: a reservation still open a second
  // after the writer stopped (one whose blocks had all been sent would have been committed).
  bool stuck = false;
  for (int attempt = 0; attempt < 40 && !stuck; ++attempt) {
    absl::SleepFor(absl::Milliseconds(200));
    ASSERT_EQ(kill(pid, SIGSTOP), 0);
    ASSERT_TRUE(testutil::WaitStopped(pid));
    absl::SleepFor(absl::Seconds(1));
    const uint64_t open = reservations();
    ASSERT_NE(open, UINT64_MAX) << "the node stopped answering";
    stuck = open > 0;
    if (!stuck) kill(pid, SIGCONT);
  }
  ASSERT_TRUE(stuck) << "no put of the writer was caught mid-transfer";
  kill(pid, SIGKILL);
  waitpid(pid, nullptr, 0);
  reap.pid = -1;
  const absl::Time killed = absl::Now();
  while (reservations() > 0 && absl::Now() < killed + absl::Seconds(70)) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  const absl::Duration took = absl::Now() - killed;
  EXPECT_EQ(reservations(), 0u);
  // Not a speed check: what it rules out is waiting for the writer's 60 s call deadline.
  EXPECT_LT(took, absl::Seconds(30)) << "the node held the dead writer's reservation";
  std::printf("reservation released %s after the writer was killed\n",
              absl::FormatDuration(took).c_str());
}

INSTANTIATE_TEST_SUITE_P(Transports, UcxCancelTest, ::testing::Values("tcp", "shm"),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace strata
