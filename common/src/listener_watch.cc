#include "strata/common/listener_watch.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <spdlog/spdlog.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "strata/common/sys_files.h"
#include "strata/common/threads.h"

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

// Walks the descriptors listed by `dir` (/proc/self/fd, rewound) and calls `each(fd, port)`
// for every listening TCP socket. False when the listing failed. Another thread may close an
// fd (and open another under its number) meanwhile: every check is made on the fd as it is
// now, and a stale one fails them.
template <typename Each>
bool ForEachListener(DIR* dir, Each each) {
  rewinddir(dir);
  const int dir_fd = dirfd(dir);
  for (;;) {
    errno = 0;
    const dirent* e = readdir(dir);
    if (e == nullptr) return errno == 0;
    int fd = -1;
    if (!absl::SimpleAtoi(e->d_name, &fd) || fd == dir_fd) continue;
    if (const int port = ListeningTcpPort(fd); port >= 0) each(fd, port);
  }
}

// Adds listener `fd` of a watched port to its sample.
void Count(int fd, AcceptQueueSample& sample) {
  tcp_info info{};
  socklen_t len = sizeof(info);
  if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &len) != 0 || info.tcpi_state != TCP_LISTEN) {
    return;
  }
  ++sample.listeners;
  sample.queued += info.tcpi_unacked;  // a listener's accept queue (tcp_get_info)
}

struct Dir {
  Dir() : dir(opendir("/proc/self/fd")) {}
  ~Dir() {
    if (dir != nullptr) closedir(dir);
  }
  DIR* dir;
};

}  // namespace

AcceptQueueSample SampleAcceptQueue(int port) {
  AcceptQueueSample sample;
  Dir d;
  if (d.dir == nullptr) return sample;
  sample.read = ForEachListener(d.dir, [&](int fd, int p) {
    if (p == port) Count(fd, sample);
  });
  return sample;
}

std::vector<int> ListeningPorts() {
  std::vector<int> ports;
  Dir d;
  if (d.dir == nullptr) return ports;
  ForEachListener(d.dir, [&](int, int port) { ports.push_back(port); });
  std::sort(ports.begin(), ports.end());
  ports.erase(std::unique(ports.begin(), ports.end()), ports.end());
  return ports;
}

std::unique_ptr<ListenerWatch> ListenerWatch::Start(std::vector<int> ports, absl::Duration window,
                                                    absl::Duration interval) {
  std::vector<Port> watched;
  for (int port : ports) watched.push_back(Port{.port = port});
  std::unique_ptr<ListenerWatch> w(new ListenerWatch(std::move(watched), window, interval));
  absl::StatusOr<std::thread> thread =
      StartThread("the listener watch", [p = w.get()] { p->Run(); });
  if (thread.ok()) {
    w->thread_ = *std::move(thread);
  } else {  // a watch that never reports: /healthz then goes without it
    spdlog::warn("{}", thread.status().ToString());
  }
  return w;
}

ListenerWatch::~ListenerWatch() { Stop(); }

void ListenerWatch::Stop() {
  std::call_once(stop_once_, [this] {
    stop_.Notify();
    if (thread_.joinable()) thread_.join();
    absl::MutexLock lock(&mu_);
    stopped_ = true;
  });
}

void ListenerWatch::Run() {
  std::vector<int> ports;
  {
    absl::MutexLock lock(&mu_);
    for (const Port& p : ports_) ports.push_back(p.port);
  }
  // Opened once: a process out of descriptors is what this must still see.
  Dir d;
  // The listeners the last full pass found, looked at alone between full passes: a pass over
  // every descriptor costs ~2 ms a thousand of them (19 ms with 10,000), the cached ones next
  // to nothing. Every 20th sample, and one where a cached listener is gone, is a full pass.
  constexpr int kFullPassEvery = 20;
  std::vector<std::pair<int, int>> cached;  // (fd, port)
  int since_full = kFullPassEvery;
  absl::Time last = absl::InfinitePast();
  do {
    std::vector<AcceptQueueSample> samples(ports.size());
    auto count = [&](int fd, int port) {
      for (size_t i = 0; i < ports.size(); ++i) {
        if (ports[i] == port) Count(fd, samples[i]);
      }
    };
    bool read = true;
    bool full = ++since_full >= kFullPassEvery;
    if (!full) {
      for (const auto& [fd, port] : cached) {
        if (ListeningTcpPort(fd) == port) count(fd, port);
      }
      // A port whose cached listener is gone: look at every descriptor before believing it.
      for (const auto& [fd, port] : cached) {
        const size_t i = std::find(ports.begin(), ports.end(), port) - ports.begin();
        full = full || samples[i].listeners == 0;
      }
    }
    if (full) {
      samples.assign(ports.size(), AcceptQueueSample{});
      cached.clear();
      read = d.dir != nullptr && ForEachListener(d.dir, [&](int fd, int port) {
               if (std::find(ports.begin(), ports.end(), port) == ports.end()) return;
               cached.emplace_back(fd, port);
               count(fd, port);
             });
      since_full = 0;
    }
    const absl::Time now = absl::Now();
    const bool on_time = now - last <= 2 * interval_;
    last = now;
    absl::MutexLock lock(&mu_);
    for (size_t i = 0; i < ports.size(); ++i) {
      samples[i].read = read;
      Take(ports_[i], samples[i], on_time, now);
    }
  } while (!stop_.WaitForNotificationWithTimeout(interval_));
}

void ListenerWatch::Take(Port& p, const AcceptQueueSample& s, bool on_time, absl::Time now) {
  if (!s.read || !on_time) {  // nothing learnt, or a gap: count again from here
    p.empty = 0;
    p.waiting = 0;
    p.waiting_since = absl::InfiniteFuture();
    if (!s.read) return;
  }
  if (s.listeners == 0) {
    if (p.seen && !p.gone && ++p.empty >= 3) {
      p.gone = true;
      spdlog::error(
          "port {}: its listener is gone (UCX closes its TCP listener after an accept error such "
          "as running out of file descriptors); new clients cannot connect: /healthz answers 503 "
          "so that this process is restarted",
          p.port);
    }
    return;
  }
  p.seen = true;
  p.empty = 0;
  if (s.queued == 0 || s.queued < p.queued) {
    if (p.stalled) spdlog::warn("port {}: the listener accepts connections again", p.port);
    p.stalled = false;
    p.waiting = s.queued == 0 ? 0 : 1;
    p.waiting_since = s.queued == 0 ? absl::InfiniteFuture() : now;
  } else if (p.waiting == 0) {
    p.waiting = 1;
    p.waiting_since = now;
  } else if (++p.waiting >= window_ / interval_ && now - p.waiting_since >= window_ && !p.stalled) {
    p.stalled = true;
    spdlog::error(
        "port {}: the listener has stopped accepting connections ({} waiting for {}); new "
        "clients cannot reach this process (gRPC gives up a listener after an accept error "
        "such as running out of file descriptors): /healthz answers 503 so that it is "
        "restarted",
        p.port, s.queued, absl::FormatDuration(now - p.waiting_since));
  }
  p.queued = s.queued;
}

std::string ListenerWatch::Broken() const {
  absl::MutexLock lock(&mu_);
  if (stopped_) return "";
  std::string why;
  for (const Port& p : ports_) {
    if (p.gone) {
      absl::StrAppend(&why, why.empty() ? "" : "; ", "the listener on port ", p.port, " is gone");
    } else if (p.stalled) {
      absl::StrAppend(
          &why, why.empty() ? "" : "; ", "the listener on port ", p.port,
          " has stopped accepting connections (", p.queued, " waiting for ",
          absl::FormatDuration(absl::Trunc(absl::Now() - p.waiting_since, absl::Seconds(1))), ")");
    }
  }
  return why;
}

}  // namespace strata
