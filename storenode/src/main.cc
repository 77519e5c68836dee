// strata-storenode: a Strata store node. Configuration from --config FILE.yaml, STRATA_*
// variables and flags (see --help). SIGTERM or SIGINT drains in-flight calls and exits 0
// (while still starting, it exits at once); SIGHUP re-reads auth_principals_file (one that
// comes while starting, once started).
#include <poll.h>
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <mutex>
#include <string>
#include <thread>

#include "absl/synchronization/mutex.h"
#include "spdlog/spdlog.h"
#include "strata/common/config.h"
#include "strata/common/listener_watch.h"
#include "strata/common/logging.h"
#include "strata/common/malloc_tuning.h"
#include "strata/storenode/store_node.h"

namespace {

// Self-pipe: the handler may run on any thread (libraries start threads of their own), so it
// only writes the signal number where main() is waiting for it.
int g_signal_pipe[2] = {-1, -1};

void OnStopSignal(int sig) {
  unsigned char b = static_cast<unsigned char>(sig);
  [[maybe_unused]] ssize_t n = write(g_signal_pipe[1], &b, 1);
}

// Watches the signal pipe while the node starts. A stop signal then ends the process at once
// (exit code 0): the node is not registered or ready yet, and what is on disk survives an
// abrupt exit as it survives kill -9. A SIGHUP is remembered for after the start. Once
// Finish() returned, main() reads the pipe itself; the lock makes sure no byte is read by
// both or lost between them.
class StartWatch {
 public:
  StartWatch() : thread_([this] { Run(); }) {}
  // Stops watching; returns whether a SIGHUP came meanwhile.
  bool Finish() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      starting_ = false;
    }
    thread_.join();
    return hup_;
  }

 private:
  void Run() {
    pollfd p{g_signal_pipe[0], POLLIN, 0};
    while (true) {
      const bool readable = poll(&p, 1, 100) == 1;
      std::lock_guard<std::mutex> lock(mu_);
      if (!starting_) return;
      unsigned char sig = 0;
      if (!readable || read(g_signal_pipe[0], &sig, 1) != 1) continue;
      if (sig == SIGHUP) {
        hup_ = true;
        continue;
      }
      spdlog::info("signal {} while starting: exiting", sig == SIGTERM ? "SIGTERM" : "SIGINT");
      spdlog::default_logger()->flush();
      _exit(0);
    }
  }

  std::mutex mu_;
  bool starting_ = true;  // guarded by mu_
  bool hup_ = false;      // guarded by mu_; read after the join
  std::thread thread_;    // last: starts once the fields above exist
};

}  // namespace

int main(int argc, char** argv) {
  // Payload buffers of a MiB and more (inline gRPC messages) are mapped and unmapped whole,
  // so memory freed after a call leaves the process and RSS follows the admission budgets
  // instead of staying in malloc's arenas (docs/design/security.md, "Admission"); smaller
  // ones stay in the heaps between calls instead of being trimmed and faulted in again.
  const std::string malloc_tuning = strata::TuneMalloc(strata::MallocTuning::Node());
#ifdef NDEBUG
  // Debian's absl is built with its debug checks, so every absl::Mutex lock also updates a
  // lock-order graph for deadlock detection (GraphCycles: ~1 % of a node's CPU under load,
  // perf, docs/design/cluster.md). Release nodes skip it; debug builds (the tests) keep it.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
#endif
  strata::storenode::NodeConfig config;
  strata::ConfigSchema schema("strata-storenode", "a Strata KV-cache store node");
  strata::storenode::RegisterNodeOptions(schema, &config);
  absl::StatusOr<strata::ConfigSchema::Outcome> parsed = schema.Parse(argc, argv);
  if (!parsed.ok()) {
    std::fprintf(stderr, "strata-storenode: %s\n", std::string(parsed.status().message()).c_str());
    return 2;
  }
  if (*parsed == strata::ConfigSchema::Outcome::kHelp) {
    std::fputs(schema.Help().c_str(), stdout);
    return 0;
  }
  if (absl::Status s = strata::InitLogging(config.log_level, "storenode"); !s.ok()) {
    std::fprintf(stderr, "strata-storenode: %s\n", std::string(s.message()).c_str());
    return 2;
  }
  if (malloc_tuning.find("(refused)") != std::string::npos) {
    spdlog::warn("{}", malloc_tuning);
  } else {
    spdlog::debug("{}", malloc_tuning);
  }
  if (pipe(g_signal_pipe) != 0) {
    std::perror("strata-storenode: pipe");
    return 1;
  }
  struct sigaction sa = {};
  sa.sa_handler = OnStopSignal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGHUP, &sa, nullptr);
  std::signal(SIGPIPE, SIG_IGN);
  // Every connection, data channel and RocksDB file takes a descriptor, and gRPC stops
  // accepting for good after one accept fails for lack of them (listener_watch.h): the node
  // takes all the hard limit allows, and says when that looks short.
  const uint64_t open_files = strata::RaiseOpenFileLimit();
  const uint64_t open_files_wanted =
      2 * config.max_data_channels + config.max_concurrent_calls + 1024;
  if (open_files < open_files_wanted) {
    spdlog::warn(
        "open-file limit {} is below the ~{} this configuration may use (2 a data channel, 1 a "
        "call, 1,024 for RocksDB and the rest): raise the hard limit (ulimit -Hn, systemd's "
        "LimitNOFILE, the container runtime's nofile)",
        open_files, open_files_wanted);
  } else {
    spdlog::debug("open-file limit {}", open_files);
  }

  // Start can take a while (prefaulting the warm arena, waiting up to etcd_startup for etcd).
  StartWatch watch;
  absl::StatusOr<std::unique_ptr<strata::storenode::StoreNode>> node =
      strata::storenode::StoreNode::Start(config);
  const bool reload = watch.Finish();
  if (!node.ok()) {
    spdlog::error("cannot start: {}", node.status().ToString());
    return node.status().code() == absl::StatusCode::kInvalidArgument ? 2 : 1;
  }
  if (reload) (*node)->ReloadPrincipals().IgnoreError();  // a SIGHUP while starting; logged
  unsigned char sig = 0;
  while (read(g_signal_pipe[0], &sig, 1) != 1 || sig == SIGHUP) {
    if (sig == SIGHUP) {
      (*node)->ReloadPrincipals().IgnoreError();  // logged
      sig = 0;
    }
  }
  spdlog::info("signal {}: draining", sig == SIGTERM ? "SIGTERM" : "SIGINT");
  (*node)->Shutdown();
  return 0;
}
