// LocalEtcd: a single-member etcd server as a child process on free loopback ports, with its
// own data dir — what the integration tests and the local-cluster demo use as the cluster's
// coordination store. The child sits in its own process group with PR_SET_PDEATHSIG(SIGKILL),
// so no etcd outlives a crashed parent. Its stdout and stderr go to <dir>/etcd.log.
//
// Not thread-safe: one owner. Start() and Restart() fork: the parent-death signal fires when
// the *thread* that forked exits, so call them from a thread that lives as long as the server
// (the main thread, a gtest SetUpTestSuite).
#pragma once

#include <sys/types.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace strata::cluster {

struct LocalEtcdOptions {
  // The etcd binary; "" = `etcd` on PATH, else /usr/bin/etcd.
  std::string binary;
  // Member name (--name).
  std::string name = "strata-local";
  // Directory holding data/ and etcd.log; "" = a fresh temp dir. An existing dir is reused
  // (and its data with it).
  std::string dir;
  // Keep `dir` when the LocalEtcd is destroyed (a temp dir is removed otherwise; a given dir is
  // always kept).
  bool keep_dir = false;
  // How long Start() and Restart() wait for a Put/Get round trip.
  absl::Duration start_timeout = absl::Seconds(15);
  // Appended to the command line, e.g. {"--auto-compaction-retention=1"}.
  std::vector<std::string> extra_args;
};

class LocalEtcd {
 public:
  // Starts etcd on two free 127.0.0.1 ports (client, peer) and waits until a Put and a Get
  // through EtcdClient succeed. Picks new ports and tries again (3 tries) if etcd exits early,
  // e.g. because another process took a port. NOT_FOUND if there is no etcd binary;
  // UNAVAILABLE if etcd exits, DEADLINE_EXCEEDED if it is not serving within start_timeout —
  // both with the tail of its log; the child is then killed. Blocks.
  static absl::StatusOr<std::unique_ptr<LocalEtcd>> Start(const LocalEtcdOptions& options);

  // Kills etcd (SIGKILL, then reaps it) if it runs, and removes a temp dir unless keep_dir.
  ~LocalEtcd();
  LocalEtcd(const LocalEtcd&) = delete;
  LocalEtcd& operator=(const LocalEtcd&) = delete;

  // "127.0.0.1:PORT" of the client URL; the same across Restart().
  std::string endpoint() const;
  // Process id while running, else -1.
  pid_t pid() const { return pid_; }
  // The directory holding data/ and etcd.log.
  const std::string& dir() const { return dir_; }

  // SIGTERM, then SIGKILL if etcd has not exited after 5 s; reaps it. FAILED_PRECONDITION if
  // it is not running. Blocks.
  absl::Status Stop();

  // Stops etcd if it runs, then starts it again on the same ports and data, and waits until it
  // serves (as Start). Blocks.
  absl::Status Restart();

  // The last `max_bytes` of etcd.log.
  std::string LogTail(size_t max_bytes = 4096) const;

 private:
  LocalEtcd(LocalEtcdOptions options, std::string binary, std::string dir, bool remove_dir)
      : options_(std::move(options)),
        binary_(std::move(binary)),
        dir_(std::move(dir)),
        remove_dir_(remove_dir) {}

  // Forks and execs etcd on client_port_/peer_port_, then waits until it serves.
  absl::Status Launch();
  void Kill();

  LocalEtcdOptions options_;
  std::string binary_;
  std::string dir_;
  bool remove_dir_;
  int client_port_ = 0;
  int peer_port_ = 0;
  pid_t pid_ = -1;
};

}  // namespace strata::cluster
