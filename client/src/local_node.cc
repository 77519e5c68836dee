#include "strata/client/local_node.h"

#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <thread>

#include "absl/strings/str_cat.h"

namespace strata::client {
namespace {

// Exit code, or 128 + signal number, of a reaped child.
int ExitCode(int wait_status) {
  return WIFEXITED(wait_status) ? WEXITSTATUS(wait_status) : 128 + WTERMSIG(wait_status);
}

// The "<key>=" line of the node's port file, or "" while it is not there yet (the node
// writes it with a rename, so a line that is present is whole).
std::string ReadPortFile(const std::string& path, const std::string& key) {
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(key + "=", 0) == 0) return line.substr(key.size() + 1);
  }
  return "";
}

}  // namespace

absl::StatusOr<std::string> SelfBinDir() {
  std::error_code ec;
  std::filesystem::path self = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (ec) return absl::InternalError(absl::StrCat("/proc/self/exe: ", ec.message()));
  return self.parent_path().string();
}

absl::StatusOr<std::unique_ptr<LocalNode>> LocalNode::Start(const std::string& binary,
                                                            const std::vector<std::string>& args,
                                                            absl::Duration timeout,
                                                            int parent_death_signal) {
  if (access(binary.c_str(), X_OK) != 0) {
    return absl::NotFoundError(
        absl::StrCat("no executable ", binary, " (build the strata-storenode target)"));
  }
  char tmpl[] = "/tmp/strata-node-XXXXXX";
  if (mkdtemp(tmpl) == nullptr) {
    return absl::InternalError(absl::StrCat("mkdtemp: ", std::strerror(errno)));
  }
  std::string dir = tmpl;
  std::string port_file = dir + "/ports";
  std::vector<std::string> argv = {binary,        "--listen",    "127.0.0.1:0", "--http-listen",
                                   "127.0.0.1:0", "--port-file", port_file};
  argv.insert(argv.end(), args.begin(), args.end());
  std::vector<char*> c_argv;
  for (std::string& a : argv) c_argv.push_back(a.data());
  c_argv.push_back(nullptr);

  pid_t parent = getpid();
  pid_t pid = fork();
  if (pid < 0) {
    std::filesystem::remove_all(dir);
    return absl::InternalError(absl::StrCat("fork: ", std::strerror(errno)));
  }
  if (pid == 0) {
    // Only async-signal-safe calls between fork and exec.
    prctl(PR_SET_PDEATHSIG, parent_death_signal);
    if (getppid() != parent) _exit(127);  // the bench died before prctl took effect
    dup2(STDERR_FILENO, STDOUT_FILENO);
    execv(c_argv[0], c_argv.data());
    _exit(127);
  }
  std::unique_ptr<LocalNode> node(new LocalNode(pid, dir));
  absl::Time give_up = absl::Now() + timeout;
  while (true) {
    int status = 0;
    if (waitpid(pid, &status, WNOHANG) == pid) {
      node->pid_ = -1;
      return absl::UnavailableError(
          absl::StrCat(binary, " exited with code ", ExitCode(status), " before listening"));
    }
    node->address_ = ReadPortFile(port_file, "grpc");
    node->http_address_ = ReadPortFile(port_file, "http");
    if (!node->address_.empty() && !node->http_address_.empty()) return node;
    if (absl::Now() > give_up) {
      return absl::DeadlineExceededError(
          absl::StrCat(binary, " not listening after ", absl::FormatDuration(timeout)));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

absl::StatusOr<int> LocalNode::Stop(absl::Duration timeout, int signal) {
  if (pid_ <= 0) return absl::FailedPreconditionError("node not running");
  kill(pid_, signal);
  absl::Time give_up = absl::Now() + timeout;
  while (absl::Now() < give_up) {
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      return ExitCode(status);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return absl::DeadlineExceededError(absl::StrCat("node pid ", pid_, " still running ",
                                                  absl::FormatDuration(timeout), " after signal ",
                                                  signal));
}

LocalNode::~LocalNode() {
  if (pid_ > 0) {
    kill(pid_, SIGKILL);
    int status = 0;
    waitpid(pid_, &status, 0);
  }
  std::error_code ec;
  std::filesystem::remove_all(dir_, ec);
}

}  // namespace strata::client
