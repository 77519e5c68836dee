// Test helpers around real strata-storenode processes (client::LocalNode) and their HTTP
// endpoint.
#pragma once

#include <signal.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "strata/client/local_node.h"

namespace strata::testutil {

// Path of a binary built by this project (STRATA_BIN_DIR, set by ctest, else beside the
// running test binary).
std::string ProjectBinary(const std::string& name);

// Starts the project's strata-storenode on free loopback ports with `args` (after
// `--log-level warn`, so a test may override it). The node gets SIGKILL when the thread that
// started it ends (LocalNode's parent-death signal), stopped or not.
absl::StatusOr<std::unique_ptr<client::LocalNode>> StartNode(
    const std::vector<std::string>& args, absl::Duration timeout = absl::Seconds(20));

// GET http://ADDR/path on loopback; returns (status code, body). UNAVAILABLE on failure.
absl::StatusOr<std::pair<int, std::string>> HttpGet(const std::string& address,
                                                    const std::string& path);

// How many calls of `op` (put_data, lookup...) a node has served: its
// strata_op_latency_seconds_count{op=...} on /metrics; 0 when absent or unreachable.
uint64_t OpCount(const client::LocalNode& node, const std::string& op);

// The value of the first series of `name` on the node's /metrics whose labels contain `labels`
// (e.g. `tier="cool"`; empty: any series); -1 when absent or unreachable.
double Metric(const client::LocalNode& node, const std::string& name,
              const std::string& labels = "");

// Whether every thread of process `pid` is stopped (SIGSTOP taken), waiting up to `timeout`.
// kill(SIGSTOP) returns before that: one thread takes the signal and then stops the others,
// and until the kernel runs it (milliseconds on a loaded machine) the rest go on running and
// answering requests.
bool WaitStopped(pid_t pid, absl::Duration timeout = absl::Seconds(5));

// Stops a node (or etcd) with SIGSTOP (it keeps its sockets, and answers nothing) and
// continues it when the guard goes, however the test ends. stopped(): every thread of it has
// stopped.
class Freeze {
 public:
  explicit Freeze(pid_t pid)
      : pid_(pid), sent_(kill(pid, SIGSTOP) == 0), stopped_(sent_ && WaitStopped(pid)) {}
  ~Freeze() { Thaw(); }
  Freeze(const Freeze&) = delete;
  Freeze& operator=(const Freeze&) = delete;
  bool stopped() const { return stopped_; }
  void Thaw() {
    if (sent_) kill(pid_, SIGCONT);
    sent_ = stopped_ = false;
  }

 private:
  pid_t pid_;
  bool sent_;
  bool stopped_;
};

}  // namespace strata::testutil
