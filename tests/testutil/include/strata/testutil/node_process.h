// NodeProcess: a real strata-storenode child process on free loopback ports, for
// integration tests. Start() waits (bounded) until the node has written its port file;
// the destructor kills the process if it is still running.
//
// Not thread-safe; one owner.
#pragma once

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace strata::testutil {

// Path of a binary built by this project (STRATA_BIN_DIR, set by ctest, else beside the
// running test binary).
std::string ProjectBinary(const std::string& name);

class NodeProcess {
 public:
  // Starts strata-storenode with `--listen 127.0.0.1:0 --http-listen 127.0.0.1:0` plus
  // `args`. DEADLINE_EXCEEDED if it is not listening within `timeout`; UNAVAILABLE if it
  // exits first (its exit code in the message).
  static absl::StatusOr<std::unique_ptr<NodeProcess>> Start(
      const std::vector<std::string>& args, absl::Duration timeout = absl::Seconds(20));
  ~NodeProcess();

  const std::string& grpc_address() const { return grpc_address_; }
  const std::string& http_address() const { return http_address_; }
  pid_t pid() const { return pid_; }

  // Sends `signal` and waits up to `timeout` for the exit. Returns the exit code (or
  // 128 + signal number when killed by a signal); DEADLINE_EXCEEDED if still running.
  absl::StatusOr<int> Stop(int signal, absl::Duration timeout = absl::Seconds(20));

 private:
  NodeProcess() = default;

  pid_t pid_ = -1;
  std::string dir_;
  std::string grpc_address_;
  std::string http_address_;
};

// GET http://ADDR/path on loopback; returns (status code, body). UNAVAILABLE on failure.
absl::StatusOr<std::pair<int, std::string>> HttpGet(const std::string& address,
                                                    const std::string& path);

}  // namespace strata::testutil
