// `strata cluster`: a local cluster for demos and experiments — a real etcd and N
// strata-storenode processes in etcd mode on loopback (zones z0, z1, ... round-robin), with
// the commands to talk to it printed. Runs until interrupted (or for --seconds), then stops
// the nodes (they leave the cluster) and etcd.
#include <signal.h>

#include <csignal>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "cli_support.h"
#include "commands.h"
#include "strata/client/local_node.h"
#include "strata/cluster/local_etcd.h"

namespace strata::cli {
namespace {

volatile std::sig_atomic_t g_stop = 0;

struct ClusterFlags {
  int nodes = 3;
  int zones = 0;
  int replicas = 1;
  std::string name = "local";
  std::string warm_bytes = "256MiB";
  std::string ucx_tls = "tcp";
  double seconds = 0;  // 0: until SIGINT/SIGTERM
};

int RunCluster(const ClusterFlags& f) {
  // From the start: Ctrl-C (or a closed terminal) while etcd and the nodes come up stops what
  // was started and removes its temp directories, instead of killing this process outright.
  for (int sig : {SIGINT, SIGTERM, SIGHUP}) std::signal(sig, [](int) { g_stop = 1; });
  auto bin = client::SelfBinDir();
  if (!bin.ok()) return Fail("cluster", bin.status());
  auto etcd = cluster::LocalEtcd::Start({});
  if (!etcd.ok()) return Fail("cluster", etcd.status());
  std::printf("etcd %s (data in %s)\n", (*etcd)->endpoint().c_str(), (*etcd)->dir().c_str());
  std::vector<std::unique_ptr<client::LocalNode>> nodes;
  for (int i = 0; i < f.nodes && !g_stop; ++i) {
    std::vector<std::string> args = {"--node-id",          absl::StrCat("node-", i),
                                     "--cluster-mode",     "etcd",
                                     "--etcd-endpoints",   (*etcd)->endpoint(),
                                     "--cluster-name",     f.name,
                                     "--warm-bytes",       f.warm_bytes,
                                     "--ucx-tls",          f.ucx_tls,
                                     "--cluster-replicas", absl::StrCat(f.replicas)};
    if (f.zones > 0) {
      args.push_back("--zone");
      args.push_back(absl::StrCat("z", i % f.zones));
    }
    auto node = client::LocalNode::Start(*bin + "/strata-storenode", args, absl::Seconds(30));
    if (!node.ok() && g_stop) break;  // Ctrl-C reached the starting node too: no error
    if (!node.ok()) return Fail("cluster", node.status());
    std::printf("node-%d grpc %s http %s pid %d\n", i, (*node)->address().c_str(),
                (*node)->http_address().c_str(), static_cast<int>((*node)->pid()));
    nodes.push_back(std::move(*node));
  }
  const std::string flags = absl::StrCat("--etcd ", (*etcd)->endpoint(), " --cluster ", f.name);
  std::printf(
      "\ntry:\n  %s/strata status %s\n  %s/strata put %s --tokens 0..4096 --block-bytes 256KiB\n"
      "  %s/strata lookup %s --tokens 0..4096 --block-bytes 256KiB\n"
      "stop with Ctrl-C\n",
      bin->c_str(), flags.c_str(), bin->c_str(), flags.c_str(), bin->c_str(), flags.c_str());
  std::fflush(stdout);
  const absl::Time end =
      f.seconds > 0 ? absl::Now() + absl::Seconds(f.seconds) : absl::InfiniteFuture();
  while (!g_stop && absl::Now() < end) absl::SleepFor(absl::Milliseconds(100));
  // A node that died during the run, or did not stop cleanly, makes the exit status 1.
  int failed = 0;
  for (size_t i = 0; i < nodes.size(); ++i) {
    absl::StatusOr<int> code = nodes[i]->Stop(absl::Seconds(15));
    if (!code.ok() || *code != 0) {
      ++failed;
      std::fprintf(stderr, "strata cluster: node-%zu: %s\n", i,
                   code.ok() ? absl::StrCat("exit status ", *code).c_str()
                             : code.status().ToString().c_str());
    }
  }
  nodes.clear();
  std::printf("cluster stopped\n");
  return failed == 0 ? 0 : 1;
}

}  // namespace

void AddClusterCommand(CLI::App& app, int* exit_code) {
  auto f = std::make_shared<ClusterFlags>();
  CLI::App* cmd = app.add_subcommand(
      "cluster", "Start a local cluster: etcd and N store nodes on loopback (for demos)");
  cmd->add_option("--nodes", f->nodes, "Store nodes")
      ->capture_default_str()
      ->check(CLI::Range(1, 32));
  cmd->add_option("--zones", f->zones, "Zones to spread the nodes over (0: none)")
      ->capture_default_str();
  cmd->add_option("--name", f->name, "Cluster name")->capture_default_str();
  cmd->add_option("--replicas", f->replicas, "Copies of every block the nodes keep")
      ->capture_default_str()
      ->check(CLI::Range(1, 16));
  cmd->add_option("--warm-bytes", f->warm_bytes, "Warm tier per node")->capture_default_str();
  cmd->add_option("--ucx-tls", f->ucx_tls, "Nodes' UCX transports (\"\": inline only)")
      ->capture_default_str();
  cmd->add_option("--seconds", f->seconds, "Stop after this long (0: at Ctrl-C)")
      ->capture_default_str();
  cmd->callback([f, exit_code] { *exit_code = RunCluster(*f); });
}

}  // namespace strata::cli
