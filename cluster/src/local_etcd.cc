#include "strata/cluster/local_etcd.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "strata/cluster/etcd_client.h"

extern char** environ;

namespace strata::cluster {
namespace {

constexpr int kStartAttempts = 3;
constexpr absl::Duration kStopGrace = absl::Seconds(5);
constexpr char kHealthKey[] = "__strata_local_etcd_health__";

std::string ErrnoMessage(absl::string_view what) {
  return absl::StrCat(what, ": ", std::strerror(errno));
}

// Exit code, or 128 + signal number, of a reaped child.
int ExitCode(int wait_status) {
  return WIFEXITED(wait_status) ? WEXITSTATUS(wait_status) : 128 + WTERMSIG(wait_status);
}

std::string FindEtcd() {
  if (const char* path = getenv("PATH"); path != nullptr) {
    for (absl::string_view dir : absl::StrSplit(path, ':', absl::SkipEmpty())) {
      std::string candidate = absl::StrCat(dir, "/etcd");
      if (access(candidate.c_str(), X_OK) == 0) return candidate;
    }
  }
  return "/usr/bin/etcd";
}

// The lowest port the kernel hands out for port 0 and outgoing connections
// (ip_local_port_range), 32768 when it cannot be read.
int EphemeralLow() {
  std::ifstream in("/proc/sys/net/ipv4/ip_local_port_range");
  int low = 0;
  return in >> low && low > 0 ? low : 32768;
}

// Two distinct free loopback ports, bound together, then released. Taken below the ephemeral
// range where it leaves room (20000 up, from a start that differs per call): the kernel
// gives those to no one, so Restart() finds them free again after an outage. Until
// 2026-11-29 they were port-0 ports, which a server started meanwhile (a parallel test) could
// get while etcd was down. Another process may still bind one before etcd does; Start() then
// tries again with new ones.
absl::StatusOr<std::pair<int, int>> FreePorts() {
  constexpr int kFirst = 20000;
  const int span = EphemeralLow() - kFirst;
  const uint64_t seed = static_cast<uint64_t>(getpid()) * 2654435761u +
                        static_cast<uint64_t>(absl::GetCurrentTimeNanos() / 1000);
  int next = span >= 64 ? kFirst + static_cast<int>(seed % static_cast<uint64_t>(span)) : 0;
  int fds[2] = {-1, -1};
  int ports[2] = {0, 0};
  absl::Status status;
  for (int i = 0, tries = 0; i < 2 && status.ok();) {
    fds[i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fds[i] < 0) {
      status = absl::InternalError(ErrnoMessage("socket"));
      break;
    }
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    // A fixed port below the range for 256 tries, then any free one.
    const bool fixed = span >= 64 && tries < 256;
    addr.sin_port = fixed ? htons(static_cast<uint16_t>(kFirst + (next++ - kFirst) % span)) : 0;
    socklen_t len = sizeof(addr);
    if (bind(fds[i], reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
      const int error = errno;
      close(fds[i]);
      fds[i] = -1;
      errno = error;
      if (fixed) {  // taken, or refused by a port policy: the next one, then port 0
        ++tries;
        continue;
      }
      status = absl::UnavailableError(ErrnoMessage("binding a free loopback port"));
      break;
    }
    if (getsockname(fds[i], reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
      status = absl::UnavailableError(ErrnoMessage("binding a free loopback port"));
      break;
    }
    ports[i++] = ntohs(addr.sin_port);
  }
  for (int fd : fds) {
    if (fd >= 0) close(fd);
  }
  if (!status.ok()) return status;
  return std::make_pair(ports[0], ports[1]);
}

// The environment without ETCD_* variables, which etcd would read as flags (and refuses when
// they shadow a flag given on the command line).
std::vector<std::string> ChildEnvironment() {
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) {
    if (!absl::StartsWith(*e, "ETCD_")) env.emplace_back(*e);
  }
  return env;
}

std::vector<char*> CStrings(std::vector<std::string>& strings) {
  std::vector<char*> out;
  for (std::string& s : strings) out.push_back(s.data());
  out.push_back(nullptr);
  return out;
}

}  // namespace

absl::StatusOr<std::unique_ptr<LocalEtcd>> LocalEtcd::Start(const LocalEtcdOptions& options) {
  std::string binary = options.binary.empty() ? FindEtcd() : options.binary;
  if (access(binary.c_str(), X_OK) != 0) {
    return absl::NotFoundError(
        absl::StrCat("no executable etcd at ", binary, " (run scripts/setup.sh)"));
  }
  std::string dir = options.dir;
  bool remove_dir = false;
  if (dir.empty()) {
    const char* tmp = getenv("TMPDIR");
    std::string tmpl =
        absl::StrCat(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp", "/strata-etcd-XXXXXX");
    if (mkdtemp(tmpl.data()) == nullptr) return absl::InternalError(ErrnoMessage("mkdtemp"));
    dir = tmpl;
    remove_dir = !options.keep_dir;
  } else {
    std::error_code ec;
    std::filesystem::create_directories(dir, ec);
    if (ec) return absl::InternalError(absl::StrCat("creating ", dir, ": ", ec.message()));
  }
  const std::string data_dir = dir + "/data";
  const bool fresh_data = !std::filesystem::exists(data_dir);

  std::unique_ptr<LocalEtcd> etcd(new LocalEtcd(options, binary, dir, remove_dir));
  absl::Status status;
  for (int attempt = 0; attempt < kStartAttempts; ++attempt) {
    absl::StatusOr<std::pair<int, int>> ports = FreePorts();
    if (!ports.ok()) return ports.status();
    etcd->client_port_ = ports->first;
    etcd->peer_port_ = ports->second;
    status = etcd->Launch();
    // An early exit is most likely a port taken meanwhile; anything else will not get better.
    if (status.ok() || status.code() != absl::StatusCode::kUnavailable) break;
    if (fresh_data) {
      // A half-initialized member would remember the old peer port.
      std::error_code ec;
      std::filesystem::remove_all(data_dir, ec);
    }
  }
  if (!status.ok()) return status;
  return etcd;
}

LocalEtcd::~LocalEtcd() {
  Kill();
  if (remove_dir_) {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
}

std::string LocalEtcd::endpoint() const { return absl::StrCat("127.0.0.1:", client_port_); }

absl::Status LocalEtcd::Launch() {
  const std::string client_url = absl::StrCat("http://", endpoint());
  const std::string peer_url = absl::StrCat("http://127.0.0.1:", peer_port_);
  std::vector<std::string> argv = {binary_,
                                   "--name",
                                   options_.name,
                                   "--data-dir",
                                   dir_ + "/data",
                                   "--listen-client-urls",
                                   client_url,
                                   "--advertise-client-urls",
                                   client_url,
                                   "--listen-peer-urls",
                                   peer_url,
                                   "--initial-advertise-peer-urls",
                                   peer_url,
                                   "--initial-cluster",
                                   absl::StrCat(options_.name, "=", peer_url),
                                   "--initial-cluster-state",
                                   "new",
                                   "--initial-cluster-token",
                                   absl::StrCat("strata-local-", getpid(), "-", client_port_),
                                   "--logger",
                                   "zap",
                                   "--log-outputs",
                                   "stderr"};
  argv.insert(argv.end(), options_.extra_args.begin(), options_.extra_args.end());
  std::vector<std::string> env = ChildEnvironment();
  // Everything the child needs is built before fork: after it only async-signal-safe calls.
  std::vector<char*> c_argv = CStrings(argv);
  std::vector<char*> c_env = CStrings(env);

  const std::string log_path = dir_ + "/etcd.log";
  const int log_fd = open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (log_fd < 0) return absl::InternalError(ErrnoMessage(absl::StrCat("opening ", log_path)));
  const std::string banner = absl::StrCat("---- strata LocalEtcd: starting ", binary_, " on ",
                                          client_url, " (peer ", peer_url, ")\n");
  if (write(log_fd, banner.data(), banner.size()) < 0) {
    // The log is only for diagnosis; etcd's own lines follow regardless.
  }

  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid < 0) {
    close(log_fd);
    return absl::InternalError(ErrnoMessage("fork"));
  }
  if (pid == 0) {
    setpgid(0, 0);
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);  // the parent died before prctl took effect
    const int null_fd = open("/dev/null", O_RDONLY);
    if (null_fd >= 0) dup2(null_fd, STDIN_FILENO);
    dup2(log_fd, STDOUT_FILENO);
    dup2(log_fd, STDERR_FILENO);
#ifdef SYS_close_range
    syscall(SYS_close_range, 3U, ~0U, 0U);  // no inherited sockets; ENOSYS on old kernels
#endif
    execve(c_argv[0], c_argv.data(), c_env.data());
    _exit(127);
  }
  setpgid(pid, pid);  // also here, so that a signal to the group cannot race the child's call
  close(log_fd);
  pid_ = pid;

  EtcdOptions client_options{.endpoints = {endpoint()}, .request_timeout = absl::Seconds(1)};
  absl::StatusOr<std::unique_ptr<EtcdClient>> client = EtcdClient::Create(client_options);
  if (!client.ok()) {
    Kill();
    return client.status();
  }
  const absl::Time give_up = absl::Now() + options_.start_timeout;
  absl::Status last = absl::UnavailableError("no answer yet");
  while (true) {
    int wait_status = 0;
    if (waitpid(pid_, &wait_status, WNOHANG) == pid_) {
      pid_ = -1;
      return absl::UnavailableError(absl::StrCat("etcd exited with code ", ExitCode(wait_status),
                                                 " while starting on ", client_url,
                                                 "; end of its log:\n", LogTail(2048)));
    }
    // A write and a linearizable read both need a leader: etcd serves.
    absl::StatusOr<int64_t> put = (*client)->Put(kHealthKey, "ok");
    if (put.ok()) {
      absl::StatusOr<std::optional<KeyValue>> got = (*client)->Get(kHealthKey);
      if (got.ok() && got->has_value() && (*got)->value == "ok") {
        last = (*client)->Delete(kHealthKey).status();
        if (last.ok()) return absl::OkStatus();
      } else {
        last = got.ok() ? absl::DataLossError("health key read back wrong") : got.status();
      }
    } else {
      last = put.status();
    }
    if (absl::Now() > give_up) {
      Kill();
      return absl::DeadlineExceededError(absl::StrCat("etcd on ", client_url, " not serving after ",
                                                      absl::FormatDuration(options_.start_timeout),
                                                      " (last: ", last.message(),
                                                      "); end of its log:\n", LogTail(2048)));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

absl::Status LocalEtcd::Stop() {
  if (pid_ <= 0) return absl::FailedPreconditionError("etcd is not running");
  if (kill(-pid_, SIGTERM) != 0) kill(pid_, SIGTERM);
  const absl::Time give_up = absl::Now() + kStopGrace;
  while (absl::Now() < give_up) {
    int wait_status = 0;
    if (waitpid(pid_, &wait_status, WNOHANG) == pid_) {
      pid_ = -1;
      return absl::OkStatus();
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  Kill();
  return absl::OkStatus();
}

absl::Status LocalEtcd::Restart() {
  if (pid_ > 0) {
    if (absl::Status s = Stop(); !s.ok()) return s;
  }
  return Launch();
}

void LocalEtcd::Kill() {
  if (pid_ <= 0) return;
  if (kill(-pid_, SIGKILL) != 0) kill(pid_, SIGKILL);
  int wait_status = 0;
  while (waitpid(pid_, &wait_status, 0) < 0 && errno == EINTR) {
  }
  pid_ = -1;
}

std::string LocalEtcd::LogTail(size_t max_bytes) const {
  std::ifstream in(dir_ + "/etcd.log", std::ios::binary | std::ios::ate);
  if (!in) return "";
  const std::streamoff size = in.tellg();
  const std::streamoff from =
      std::max<std::streamoff>(0, size - static_cast<std::streamoff>(max_bytes));
  in.seekg(from);
  std::string tail(static_cast<size_t>(size - from), '\0');
  in.read(tail.data(), static_cast<std::streamsize>(tail.size()));
  return tail;
}

}  // namespace strata::cluster
