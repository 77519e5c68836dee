// LocalNode's promise that a dead parent leaves no node behind, in the case that used to break
// it: a test that dies while its node is frozen (SIGSTOP). A stopped process keeps a SIGTERM
// pending and never ends; such a node held ctest's output pipe until someone killed it.
#include <poll.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "strata/testutil/node_process.h"

namespace strata {
namespace {

// The --port-file argument of a running process (its temp dir is the file's parent).
std::string PortFileOf(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/cmdline", std::ios::binary);
  std::string all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const std::string flag = std::string("--port-file") + '\0';
  const size_t at = all.find(flag);
  if (at == std::string::npos) return "";
  return all.substr(at + flag.size()).c_str();
}

TEST(LocalNodeTest, AFrozenNodeDiesWithTheTestProcessThatStartedIt) {
  // The orphaned node becomes this process's child, so the test can reap it.
  ASSERT_EQ(prctl(PR_SET_CHILD_SUBREAPER, 1), 0);
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  const pid_t test_process = fork();
  ASSERT_GE(test_process, 0);
  if (test_process == 0) {  // a test that freezes its node and then crashes
    close(fds[0]);
    auto node = testutil::StartNode({"--warm-bytes", "64MiB", "--ucx-tls", ""});
    pid_t pid = node.ok() ? (*node)->pid() : -1;
    if (pid > 0 && kill(pid, SIGSTOP) != 0) pid = -1;
    const std::string port_file = pid > 0 ? PortFileOf(pid) : "";
    if (write(fds[1], &pid, sizeof pid) != sizeof pid) _exit(2);
    if (write(fds[1], port_file.data(), port_file.size()) < 0) _exit(2);
    _exit(0);  // no destructor stops the node
  }
  close(fds[1]);
  // What the child says, or nothing if it hangs (bounded: 60 s).
  pollfd ready{fds[0], POLLIN, 0};
  pid_t node = -1;
  std::string port_file;  // to remove the node's temp dir at the end
  bool told = false;
  if (poll(&ready, 1, 60000) == 1) {
    told = read(fds[0], &node, sizeof node) == sizeof node;
    char buf[256];
    for (ssize_t n; (n = read(fds[0], buf, sizeof buf)) > 0;) port_file.append(buf, n);
  } else {
    kill(test_process, SIGKILL);
  }
  close(fds[0]);
  int status = 0;
  waitpid(test_process, &status, 0);
  ASSERT_TRUE(told && node > 0) << "the node did not start";

  bool ended = false;
  const absl::Time give_up = absl::Now() + absl::Seconds(20);
  while (!ended && absl::Now() < give_up) {
    ended = waitpid(node, &status, WNOHANG) == node;
    if (!ended) absl::SleepFor(absl::Milliseconds(20));
  }
  if (!ended) {  // what the fix prevents: clean up, then fail
    kill(node, SIGKILL);
    waitpid(node, &status, 0);
  }
  prctl(PR_SET_CHILD_SUBREAPER, 0);
  if (!port_file.empty()) {
    std::error_code ec;
    std::filesystem::remove_all(std::filesystem::path(port_file).parent_path(), ec);
  }
  EXPECT_TRUE(ended) << "the frozen node outlived its test process by 20 s";
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << "status " << status;
}

}  // namespace
}  // namespace strata
