// Watching the TCP listener of a server library that accepts on its own (gRPC) and the
// process's open-file limit, so that a process whose listener has stopped can say so on
// /healthz instead of looking healthy while no new client gets in.
//
// Why: gRPC 1.51 (Debian 12) gives up on a listening socket for good after an accept error
// other than EAGAIN/ECONNABORTED, e.g. EMFILE when the process is out of file descriptors
// (a flood of idle connections is enough). The port stays open, the kernel queues every new
// connection and nobody takes them; the calls already connected go on working.
//
// Thread-safe.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"

namespace strata {

// Raises this process's soft limit of open files to its hard limit (at most the kernel's
// fs.nr_open) and returns the limit in force afterwards. Never lowers it.
uint64_t RaiseOpenFileLimit();

// One sample of the accept queues of this process's TCP listeners on a port.
struct AcceptQueueSample {
  bool read = false;    // false: this process's descriptors could not be listed
  int listeners = 0;    // listening sockets found on the port (0: none, e.g. not started)
  uint64_t queued = 0;  // connections the kernel holds that nobody has accepted yet
};

// Reads the accept queues of this process's listening TCP sockets on `port` (TCP_INFO).
AcceptQueueSample SampleAcceptQueue(int port);

// This process's listening TCP ports, sorted (e.g. before and after a library starts
// listening, to learn which ports are its).
std::vector<int> ListeningPorts();

// Samples the listeners of some ports every `interval` on its own thread and says when one
// cannot take new connections any more:
// - stalled: connections have waited in every sample, on time, for `window` and their number
//   never went down (a listener that accepts empties its queue at every wake-up, one that
//   stopped only collects more); clears as soon as the queue drains again;
// - gone: the port had a listener and has had none for 3 samples in a row (UCX closes its TCP
//   listener after a failed accept); for good.
// A sample that comes late (the thread was not scheduled) or cannot be read starts the count
// again. The watch keeps /proc/self/fd open, so it samples without a new descriptor.
class ListenerWatch {
 public:
  static std::unique_ptr<ListenerWatch> Start(std::vector<int> ports,
                                              absl::Duration window = absl::Seconds(20),
                                              absl::Duration interval = absl::Milliseconds(500));
  ~ListenerWatch();  // Stop()

  // "" while every listener takes connections; otherwise which does not and why (for /healthz
  // and logs).
  std::string Broken() const;
  // Stops sampling (before the owner closes its listeners on purpose); Broken() is "" after.
  // Blocks until the sampling thread has ended.
  void Stop();

 private:
  struct Port {
    int port = 0;
    bool seen = false;  // had a listener in some sample
    int empty = 0;      // samples in a row without a listener
    bool gone = false;
    bool stalled = false;
    int waiting = 0;      // samples in a row, on time, with connections waiting, never fewer
    uint64_t queued = 0;  // in the last sample
    absl::Time waiting_since = absl::InfiniteFuture();
  };
  ListenerWatch(std::vector<Port> ports, absl::Duration window, absl::Duration interval)
      : window_(window), interval_(interval), ports_(std::move(ports)) {}
  void Run();
  void Take(Port& p, const AcceptQueueSample& s, bool on_time, absl::Time now)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const absl::Duration window_;
  const absl::Duration interval_;
  std::once_flag stop_once_;
  absl::Notification stop_;
  mutable absl::Mutex mu_;
  std::vector<Port> ports_ ABSL_GUARDED_BY(mu_);
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;  // started by Start once the fields above exist
};

}  // namespace strata
