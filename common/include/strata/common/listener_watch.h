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
#include <string>
#include <thread>

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
  int listeners = 0;    // listening sockets found on the port (0: none, e.g. not started)
  uint64_t queued = 0;  // connections the kernel holds that nobody has accepted yet
};

// Reads the accept queues of this process's listening TCP sockets on `port` (TCP_INFO).
AcceptQueueSample SampleAcceptQueue(int port);

// Samples the accept queue of a port every `interval` on its own thread. The listener counts
// as stopped when connections have been waiting in every sample for `window` and their
// number never went down: a listener that accepts empties its queue at every wake-up, one
// that stopped only collects more. Stopped() clears as soon as the queue drains again.
class AcceptQueueWatch {
 public:
  static std::unique_ptr<AcceptQueueWatch> Start(int port,
                                                 absl::Duration window = absl::Seconds(10),
                                                 absl::Duration interval = absl::Milliseconds(500));
  ~AcceptQueueWatch();  // stops and joins the sampling thread

  // "" while the listener accepts; otherwise why it does not (for /healthz and logs).
  std::string Stopped() const;

 private:
  AcceptQueueWatch(int port, absl::Duration window, absl::Duration interval)
      : port_(port), window_(window), interval_(interval) {}
  void Run();
  void Take(const AcceptQueueSample& s, absl::Time now);

  const int port_;
  const absl::Duration window_;
  const absl::Duration interval_;
  absl::Notification stop_;
  mutable absl::Mutex mu_;
  absl::Time waiting_since_ ABSL_GUARDED_BY(mu_) = absl::InfiniteFuture();
  uint64_t last_queued_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;  // last: starts once the fields above exist
};

}  // namespace strata
