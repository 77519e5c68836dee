#include "strata/common/listener_watch.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <spdlog/spdlog.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "strata/common/sys_files.h"

namespace strata {

uint64_t RaiseOpenFileLimit() {
  rlimit lim{};
  if (getrlimit(RLIMIT_NOFILE, &lim) != 0) return 0;
  rlim_t want = lim.rlim_max;
  // The soft limit may not pass fs.nr_open (an unlimited hard limit is refused as EPERM).
  uint64_t nr_open = 0;
  if (absl::SimpleAtoi(FirstLineOf("/proc/sys/fs/nr_open"), &nr_open) && nr_open > 0 &&
      (want == RLIM_INFINITY || want > nr_open)) {
    want = nr_open;
  }
  if (want > lim.rlim_cur) {
    rlimit raised = lim;
    raised.rlim_cur = want;
    if (setrlimit(RLIMIT_NOFILE, &raised) == 0) lim = raised;
  }
  return lim.rlim_cur;
}

namespace {

// The local port of a listening TCP socket `fd`, or -1 when it is something else.
int ListeningTcpPort(int fd) {
  int listening = 0;
  socklen_t len = sizeof(listening);
  if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) != 0 || listening == 0) {
    return -1;
  }
  int type = 0;
  len = sizeof(type);
  if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) != 0 || type != SOCK_STREAM) return -1;
  sockaddr_storage addr{};
  len = sizeof(addr);
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) return -1;
  if (addr.ss_family == AF_INET) return ntohs(reinterpret_cast<sockaddr_in*>(&addr)->sin_port);
  if (addr.ss_family == AF_INET6) return ntohs(reinterpret_cast<sockaddr_in6*>(&addr)->sin6_port);
  return -1;
}

}  // namespace

AcceptQueueSample SampleAcceptQueue(int port) {
  AcceptQueueSample sample;
  DIR* dir = opendir("/proc/self/fd");
  if (dir == nullptr) return sample;
  const int dir_fd = dirfd(dir);
  // Another thread may close an fd (and open another under its number) while this runs:
  // every check is made on the fd as it is now, and a stale one fails them.
  while (dirent* e = readdir(dir)) {
    int fd = -1;
    if (!absl::SimpleAtoi(e->d_name, &fd) || fd == dir_fd) continue;
    if (ListeningTcpPort(fd) != port) continue;
    tcp_info info{};
    socklen_t len = sizeof(info);
    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &len) != 0 || info.tcpi_state != TCP_LISTEN) {
      continue;
    }
    ++sample.listeners;
    sample.queued += info.tcpi_unacked;  // a listener's accept queue (tcp_get_info)
  }
  closedir(dir);
  return sample;
}

std::unique_ptr<AcceptQueueWatch> AcceptQueueWatch::Start(int port, absl::Duration window,
                                                          absl::Duration interval) {
  std::unique_ptr<AcceptQueueWatch> w(new AcceptQueueWatch(port, window, interval));
  w->thread_ = std::thread([p = w.get()] { p->Run(); });
  return w;
}

AcceptQueueWatch::~AcceptQueueWatch() {
  stop_.Notify();
  if (thread_.joinable()) thread_.join();
}

void AcceptQueueWatch::Run() {
  do {
    Take(SampleAcceptQueue(port_), absl::Now());
  } while (!stop_.WaitForNotificationWithTimeout(interval_));
}

void AcceptQueueWatch::Take(const AcceptQueueSample& s, absl::Time now) {
  absl::MutexLock lock(&mu_);
  if (s.queued == 0 || s.queued < last_queued_) {
    if (stopped_) spdlog::warn("port {}: the listener accepts connections again", port_);
    waiting_since_ = s.queued == 0 ? absl::InfiniteFuture() : now;
    stopped_ = false;
  } else if (waiting_since_ == absl::InfiniteFuture()) {
    waiting_since_ = now;
  } else if (!stopped_ && now - waiting_since_ >= window_) {
    stopped_ = true;
    spdlog::error(
        "port {}: the listener has stopped accepting connections ({} waiting for {}); new "
        "clients cannot reach this process (gRPC gives up a listener after an accept error "
        "such as running out of file descriptors): /healthz answers 503 so that it is "
        "restarted",
        port_, s.queued, absl::FormatDuration(now - waiting_since_));
  }
  last_queued_ = s.queued;
}

std::string AcceptQueueWatch::Stopped() const {
  absl::MutexLock lock(&mu_);
  if (!stopped_) return "";
  return absl::StrCat(
      "the listener on port ", port_, " has stopped accepting connections (", last_queued_,
      " waiting for ",
      absl::FormatDuration(absl::Trunc(absl::Now() - waiting_since_, absl::Seconds(1))), ")");
}

}  // namespace strata
