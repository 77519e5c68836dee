// LocalNode: a strata-storenode child process on free loopback ports — the embedded store
// that `strata demo`, strata-bench and the integration tests start. It reports its ports
// through a port file in a temp dir, is stopped by Stop() (SIGTERM: graceful drain) or, failing
// that, killed by the destructor. The child gets PR_SET_PDEATHSIG, so a killed parent leaves
// no node behind: SIGTERM by default (the node drains), SIGKILL where the parent may have
// stopped it (SIGSTOP) — a stopped process keeps a SIGTERM pending and never ends.
//
// Not thread-safe; one owner. Start() forks: call it before starting any thread.
#pragma once

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace strata::client {

class LocalNode {
 public:
  // Runs `binary --listen 127.0.0.1:0 --http-listen 127.0.0.1:0 --port-file DIR/ports` plus
  // `args`, with the child's stdout sent to stderr (so a JSON report on stdout stays clean).
  // Waits until the port file names the gRPC and HTTP addresses. NOT_FOUND if `binary` is missing;
  // UNAVAILABLE if the child exits first (exit code in the message); DEADLINE_EXCEEDED if
  // it is not listening within `timeout`. Blocks. The child gets `parent_death_signal` when
  // the thread that started it ends.
  static absl::StatusOr<std::unique_ptr<LocalNode>> Start(
      const std::string& binary, const std::vector<std::string>& args, absl::Duration timeout,
      int parent_death_signal = 15 /* SIGTERM */);
  ~LocalNode();
  LocalNode(const LocalNode&) = delete;
  LocalNode& operator=(const LocalNode&) = delete;

  // HOST:PORT of the node's gRPC listener and of its /metrics /healthz /readyz listener.
  const std::string& address() const { return address_; }
  const std::string& http_address() const { return http_address_; }
  pid_t pid() const { return pid_; }

  // Sends `signal` (SIGTERM drains) and waits up to `timeout`. Returns the exit code
  // (128 + signal when killed); DEADLINE_EXCEEDED if it is still running (the destructor
  // then kills it); FAILED_PRECONDITION if already stopped.
  absl::StatusOr<int> Stop(absl::Duration timeout, int signal = 15 /* SIGTERM */);

 private:
  LocalNode(pid_t pid, std::string dir) : pid_(pid), dir_(std::move(dir)) {}

  pid_t pid_;
  std::string dir_;
  std::string address_;
  std::string http_address_;
};

// Directory of the running executable (from /proc/self/exe), where strata-storenode sits.
absl::StatusOr<std::string> SelfBinDir();

}  // namespace strata::client
