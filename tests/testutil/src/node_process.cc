#include "strata/testutil/node_process.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace strata::testutil {

std::string ProjectBinary(const std::string& name) {
  if (const char* dir = std::getenv("STRATA_BIN_DIR")) return absl::StrCat(dir, "/", name);
  std::filesystem::path self = std::filesystem::read_symlink("/proc/self/exe");
  return (self.parent_path() / name).string();
}

absl::StatusOr<std::unique_ptr<NodeProcess>> NodeProcess::Start(
    const std::vector<std::string>& args, absl::Duration timeout) {
  std::unique_ptr<NodeProcess> node(new NodeProcess());
  char tmpl[] = "/tmp/strata-node-XXXXXX";
  if (mkdtemp(tmpl) == nullptr) return absl::InternalError("mkdtemp failed");
  node->dir_ = tmpl;
  std::string port_file = node->dir_ + "/ports";
  std::vector<std::string> argv = {ProjectBinary("strata-storenode"),
                                   "--listen",
                                   "127.0.0.1:0",
                                   "--http-listen",
                                   "127.0.0.1:0",
                                   "--port-file",
                                   port_file,
                                   "--log-level",
                                   "warn"};
  argv.insert(argv.end(), args.begin(), args.end());
  std::vector<char*> cargv;
  for (std::string& a : argv) cargv.push_back(a.data());
  cargv.push_back(nullptr);
  pid_t pid = fork();
  if (pid < 0) return absl::InternalError("fork failed");
  if (pid == 0) {
    execv(cargv[0], cargv.data());
    _exit(127);
  }
  node->pid_ = pid;
  absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    int status = 0;
    if (waitpid(pid, &status, WNOHANG) == pid) {
      node->pid_ = -1;
      return absl::UnavailableError(absl::StrCat("strata-storenode exited early with status ",
                                                 WIFEXITED(status) ? WEXITSTATUS(status) : -1));
    }
    std::ifstream in(port_file);
    std::string line;
    while (std::getline(in, line)) {
      if (line.rfind("grpc=", 0) == 0) node->grpc_address_ = line.substr(5);
      if (line.rfind("http=", 0) == 0) node->http_address_ = line.substr(5);
    }
    if (!node->grpc_address_.empty() && !node->http_address_.empty()) return node;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return absl::DeadlineExceededError("strata-storenode did not start listening in time");
}

absl::StatusOr<int> NodeProcess::Stop(int signal, absl::Duration timeout) {
  if (pid_ < 0) return absl::FailedPreconditionError("not running");
  kill(pid_, signal);
  absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      if (WIFEXITED(status)) return WEXITSTATUS(status);
      return 128 + WTERMSIG(status);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return absl::DeadlineExceededError("node did not exit in time");
}

NodeProcess::~NodeProcess() {
  if (pid_ > 0) {
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
  std::error_code ec;
  if (!dir_.empty()) std::filesystem::remove_all(dir_, ec);
}

absl::StatusOr<std::pair<int, std::string>> HttpGet(const std::string& address,
                                                    const std::string& path) {
  size_t colon = address.rfind(':');
  int port = 0;
  if (colon == std::string::npos || !absl::SimpleAtoi(address.substr(colon + 1), &port)) {
    return absl::InvalidArgumentError("address: want HOST:PORT");
  }
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(static_cast<uint16_t>(port));
  inet_pton(AF_INET, address.substr(0, colon).c_str(), &sa.sin_addr);
  timeval tv{5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  if (connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0) {
    close(fd);
    return absl::UnavailableError(absl::StrCat("connect ", address, " failed"));
  }
  std::string req =
      absl::StrCat("GET ", path, " HTTP/1.1\r\nHost: ", address, "\r\nConnection: close\r\n\r\n");
  if (write(fd, req.data(), req.size()) != static_cast<ssize_t>(req.size())) {
    close(fd);
    return absl::UnavailableError("write failed");
  }
  std::string resp;
  char buf[4096];
  ssize_t n;
  while ((n = read(fd, buf, sizeof(buf))) > 0) resp.append(buf, n);
  close(fd);
  int code = 0;
  if (resp.size() < 12 || !absl::SimpleAtoi(resp.substr(9, 3), &code)) {
    return absl::UnavailableError("malformed HTTP response");
  }
  size_t body = resp.find("\r\n\r\n");
  return std::make_pair(code, body == std::string::npos ? "" : resp.substr(body + 4));
}

}  // namespace strata::testutil
