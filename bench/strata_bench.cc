// strata-bench: a load generator for a Strata store node. K streams, each with its own
// StoreClient, put a synthetic data set in batches, get it back verifying every byte, then
// look up its chains, and (--ops mixed) mix gets and puts for a fixed time; per phase it
// reports throughput and per-call latency percentiles as a table and, with --json, as JSON.
// Without --node or --etcd it runs a local strata-storenode from its own bin dir. Figures are
// printed, never asserted: speed targets live in bench/README.md.
//
// Exit code: 0 all blocks verified; 1 any error or wrong byte; 2 bad flags or no node;
// 3 stopped by --max-seconds before finishing (no errors in what it did).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "bench_report.h"
#include "mixed_phase.h"
#include "phases.h"
#include "strata/client/local_node.h"
#include "strata/client/store_client.h"
#include "strata/common/byte_size.h"
#include "strata/common/logging.h"
#include "strata/common/malloc_tuning.h"
#include "workload.h"

namespace strata::bench {
namespace {

using client::LocalNode;
using client::SelfBinDir;

struct Flags {
  std::string node;
  std::string etcd;     // a cluster instead of one node (ClientOptions::etcd_endpoints)
  std::string members;  // or a fixed member list (ClientOptions::cluster_members)
  std::string cluster = "default";
  int replicas = 0;  // 0: the nodes' own
  int write_quorum = 0;
  uint32_t lookup_rounds = 1;
  uint64_t blocks = 1024;
  std::string block_size_text = "256KiB";
  uint64_t block_size = 0;
  uint32_t streams = 4;
  uint32_t clients = 0;  // StoreClients the streams share; 0: one per stream
  uint32_t batch = 16;
  uint32_t chain_blocks = 64;
  std::string ops = "put,get,lookup";
  std::string json;
  bool warmup = false;
  double max_seconds = 300;
  double call_timeout_s = 30;
  uint64_t seed = 1;
  std::string transport = "ucx";        // ucx (the data plane) or grpc (payloads inline)
  std::string ucx_tls = "tcp";          // local node's --ucx-tls: tcp or shm
  uint32_t lanes = 0;                   // local node's --ucx-lanes (0: the node's own choice)
  bool no_register = false;             // ucx: leave buffers unregistered (bounce-pool path)
  bool shm_rma = false;                 // ucx over shared memory: the node's RMA for every block
  std::string shm_two_sided_gets_from;  // ucx over shm: gets from this block size go two-sided
  std::string trailing_checksums_from;  // ucx: two-sided put parts from this size hash late
  double mixed_seconds = 10;            // --ops mixed: how long
  double get_fraction = 0.8;            // --ops mixed: share of calls that are gets
  int64_t fresh_blocks = -1;  // --ops mixed: blocks puts store for the first time (-1: blocks)
};

// Setup failures (bad flag, no node, no namespace): message and exit code 2.
int SetupFailed(const std::string& what, const absl::Status& status) {
  std::fprintf(stderr, "strata-bench: %s: %s\n", what.c_str(), status.ToString().c_str());
  return 2;
}

int Run(Flags f) {
  absl::StatusOr<uint64_t> bs = ParseByteSize(f.block_size_text, "--block-size");
  if (!bs.ok()) return SetupFailed("flags", bs.status());
  f.block_size = *bs;
  uint64_t shm_get_bytes = client::ClientOptions{}.ucx_shm_two_sided_get_bytes;
  if (!f.shm_two_sided_gets_from.empty()) {
    absl::StatusOr<uint64_t> from =
        ParseByteSize(f.shm_two_sided_gets_from, "--shm-two-sided-gets-from");
    if (!from.ok()) return SetupFailed("flags", from.status());
    shm_get_bytes = *from;
  }
  uint64_t trailing_bytes = client::ClientOptions{}.ucx_trailing_checksum_bytes;
  if (!f.trailing_checksums_from.empty()) {
    absl::StatusOr<uint64_t> from =
        ParseByteSize(f.trailing_checksums_from, "--trailing-checksums-from");
    if (!from.ok()) return SetupFailed("flags", from.status());
    trailing_bytes = *from;
  }
  if (f.block_size == 0 || f.block_size > (1ull << 30)) {
    std::fprintf(stderr, "strata-bench: --block-size: want 1 B .. 1 GiB\n");
    return 2;
  }
  if (uint64_t{f.batch} * f.block_size > (4ull << 30)) {
    std::fprintf(stderr, "strata-bench: --batch x --block-size: at most 4 GiB per call\n");
    return 2;
  }
  // Phases always run in this order: get needs what put stored, lookup what get verified;
  // mixed reads what put stored and stores more.
  std::vector<std::pair<std::string, bool>> ops = {
      {"put", false}, {"get", false}, {"lookup", false}, {"mixed", false}};
  for (absl::string_view name : absl::StrSplit(f.ops, ',', absl::SkipWhitespace())) {
    auto it =
        std::find_if(ops.begin(), ops.end(), [&](const auto& op) { return op.first == name; });
    if (it == ops.end()) {
      std::fprintf(stderr, "strata-bench: --ops: unknown op '%s' (put, get, lookup, mixed)\n",
                   std::string(name).c_str());
      return 2;
    }
    it->second = true;
  }
  const bool mixed = ops[3].second;
  const uint64_t fresh_blocks = !mixed               ? 0
                                : f.fresh_blocks < 0 ? f.blocks
                                                     : static_cast<uint64_t>(f.fresh_blocks);
  // With the JSON report on stdout, the table goes to stderr.
  std::FILE* out = f.json == "-" ? stderr : stdout;
  Clock::time_point run_end =
      Clock::now() + std::chrono::duration_cast<Clock::duration>(
                         std::chrono::duration<double>(std::max(0.0, f.max_seconds)));
  uint64_t warmup_blocks =
      f.warmup ? std::min<uint64_t>(f.blocks, uint64_t{f.streams} * f.batch * 2) : 0;

  std::unique_ptr<LocalNode> local;
  if (f.node.empty() && f.etcd.empty() && f.members.empty()) {
    absl::StatusOr<std::string> dir = SelfBinDir();
    if (!dir.ok()) return SetupFailed("local node", dir.status());
    uint64_t page = std::max<uint64_t>(4ull << 20, (f.block_size + 63) / 64 * 64);
    uint64_t data = (f.blocks + warmup_blocks + fresh_blocks) * f.block_size;
    // x1.25 covers the slab's size-class slack (< 19%); two more pages for partial pages.
    uint64_t warm = std::max<uint64_t>(256ull << 20, data + data / 4 + 2 * page);
    absl::StatusOr<std::unique_ptr<LocalNode>> started = LocalNode::Start(
        *dir + "/strata-storenode",
        {"--warm-bytes", absl::StrCat(warm), "--max-block-bytes", absl::StrCat(page),
         "--max-inline-bytes", absl::StrCat(std::max<uint64_t>(64ull << 20, page)),
         "--warm-prefault", "--log-level", "warn", "--ucx-tls",
         f.transport == "ucx" ? f.ucx_tls : std::string(), "--ucx-lanes", absl::StrCat(f.lanes)},
        absl::Seconds(30));
    if (!started.ok()) return SetupFailed("local node", started.status());
    local = std::move(*started);
    f.node = local->address();
    std::fprintf(out, "local strata-storenode pid %d on %s, warm tier %s\n", local->pid(),
                 f.node.c_str(), FormatByteSize(warm).c_str());
  }

  const uint32_t client_count = f.clients == 0 ? f.streams : std::min(f.clients, f.streams);
  std::vector<std::unique_ptr<client::StoreClient>> clients;
  for (uint32_t i = 0; i < client_count; ++i) {
    client::ClientOptions options;
    options.address = f.node;
    options.etcd_endpoints = f.etcd;
    options.cluster_members = f.members;
    options.cluster_name = f.cluster;
    options.replicas = f.replicas;
    options.write_quorum = f.write_quorum;
    options.default_deadline = absl::Seconds(f.call_timeout_s);
    options.data_plane = f.transport == "ucx" ? client::ClientOptions::DataPlane::kUcx
                                              : client::ClientOptions::DataPlane::kInline;
    options.ucx_two_sided_on_shm = !f.shm_rma;
    options.ucx_shm_two_sided_get_bytes = shm_get_bytes;
    options.ucx_trailing_checksum_bytes = trailing_bytes;
    absl::StatusOr<std::unique_ptr<client::StoreClient>> c = client::StoreClient::Connect(options);
    if (!c.ok()) return SetupFailed(absl::StrCat("connect ", f.node), c.status());
    clients.push_back(std::move(*c));
  }
  std::vector<Stream> streams(f.streams);
  for (size_t i = 0; i < streams.size(); ++i) {
    Stream& s = streams[i];
    s.client = clients[i % clients.size()].get();
    absl::StatusOr<MappedBuffer> staging =
        MappedBuffer::Map(2 * uint64_t{f.batch} * f.block_size, /*prefault=*/true);
    if (!staging.ok()) return SetupFailed("staging memory", staging.status());
    s.staging = *std::move(staging);
  }
  NamespaceSpec spec;
  spec.model_id = "bench";
  spec.dtype = "fp16";
  spec.layout = "raw";
  spec.block_tokens = 16;
  spec.block_bytes = f.block_size;
  absl::StatusOr<client::Namespace> ns = streams[0].client->RegisterNamespace(spec);
  if (!ns.ok()) return SetupFailed("register namespace", ns.status());

  unsigned threads = std::max(1u, std::thread::hardware_concurrency());
  absl::StatusOr<Dataset> ds =
      MakeDataset(*ns, f.blocks, f.chain_blocks, f.block_size, f.seed, threads);
  if (!ds.ok()) return SetupFailed("data set", ds.status());
  // The blocks the mixed phase's puts store for the first time (another seed: other chains).
  Dataset fresh;
  if (fresh_blocks > 0) {
    absl::StatusOr<Dataset> made = MakeDataset(*ns, fresh_blocks, f.chain_blocks, f.block_size,
                                               f.seed ^ 0x6672657368ull, threads);
    if (!made.ok()) return SetupFailed("fresh data set", made.status());
    fresh = *std::move(made);
  }
  if (f.transport == "ucx" && !f.no_register) {
    // Zero copy: the data sets and every stream's staging memory are registered once, as an
    // engine registers its KV pool.
    for (Stream& s : streams) {
      absl::Status st = s.client->RegisterMemory(s.staging.data(), s.staging.size());
      if (!st.ok()) return SetupFailed("register memory", st);
    }
    for (auto& c : clients) {
      for (const Dataset* d : {&*ds, &fresh}) {
        if (d->payload.empty()) continue;
        absl::Status st = c->RegisterMemory(d->payload.data(), d->payload.size());
        if (!st.ok()) return SetupFailed("register memory", st);
      }
    }
  }
  std::fprintf(out, "data plane: %s\n", streams[0].client->DataPlaneDescription().c_str());
  PhaseContext ctx{
      &*ds,
      &*ns,
      f.batch,
      run_end,
      std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(f.call_timeout_s)),
      f.lookup_rounds};

  uint64_t warmup_errors = 0;  // of unmeasured work: warmup, and the fill before mixed
  if (warmup_blocks > 0) {
    // Different seed, so the measured put still writes fresh blocks.
    absl::StatusOr<Dataset> wds = MakeDataset(*ns, warmup_blocks, f.chain_blocks, f.block_size,
                                              f.seed ^ 0x7761726D7570ull, threads);
    if (!wds.ok()) return SetupFailed("warmup data set", wds.status());
    PhaseContext wctx = ctx;
    wctx.ds = &*wds;
    warmup_errors += RunPhase("put", wctx, streams).errors;
    warmup_errors += RunPhase("get", wctx, streams).errors;
    std::fprintf(out, "warmup: %llu blocks put and got, %llu errors\n",
                 static_cast<unsigned long long>(warmup_blocks),
                 static_cast<unsigned long long>(warmup_errors));
  }

  if (mixed && !ops[0].second) {
    // The mixed phase reads the data set: store it first, unmeasured (blocks an earlier run
    // with this --seed stored are found already there).
    PhaseResult fill = RunPhase("put", ctx, streams);
    warmup_errors += fill.errors;
    std::fprintf(out, "fill: %llu blocks put (%llu already stored), %llu errors\n",
                 static_cast<unsigned long long>(fill.blocks),
                 static_cast<unsigned long long>(fill.already_present),
                 static_cast<unsigned long long>(fill.errors));
  }

  // The local node's handler totals (nothing for a remote node or cluster: the bench does not
  // know their HTTP addresses); a phase keeps the calls that grew during it.
  auto node_ops = [&]() -> std::map<std::string, OpTotals> {
    if (local == nullptr) return {};
    auto page = HttpGet(local->http_address(), "/metrics");
    return page.ok() && page->first == 200 ? ParseOpTotals(page->second)
                                           : std::map<std::string, OpTotals>{};
  };
  auto node_ops_since = [&](const std::map<std::string, OpTotals>& before) {
    std::map<std::string, OpTotals> grew;
    for (const auto& [op, t] : node_ops()) {
      auto it = before.find(op);
      const OpTotals was = it == before.end() ? OpTotals{} : it->second;
      if (t.calls > was.calls) grew[op] = {t.calls - was.calls, t.seconds - was.seconds};
    }
    return grew;
  };
  std::vector<PhaseResult> phases;
  for (const auto& [op, wanted] : ops) {
    if (!wanted) continue;
    const std::map<std::string, OpTotals> before = node_ops();
    if (op == "mixed") {
      MixedPlan plan;
      plan.length = std::chrono::duration_cast<Clock::duration>(
          std::chrono::duration<double>(f.mixed_seconds));
      plan.get_fraction = f.get_fraction;
      plan.seed = f.seed;
      plan.fresh = &fresh;
      auto [gets, puts] = RunMixedPhase(ctx, plan, streams);
      gets.node_ops = puts.node_ops = node_ops_since(before);
      phases.push_back(std::move(gets));
      phases.push_back(std::move(puts));
    } else {
      phases.push_back(RunPhase(op, ctx, streams));
      phases.back().node_ops = node_ops_since(before);
    }
    if (!phases.back().complete) break;  // out of time: report what was done
  }

  RunInfo info{!f.etcd.empty()
                   ? absl::StrCat("etcd ", f.etcd, " cluster ", f.cluster, " R=", f.replicas)
               : !f.members.empty() ? absl::StrCat("members ", f.members, " R=", f.replicas)
                                    : f.node,
               f.block_size,
               f.blocks,
               f.streams,
               f.batch,
               f.chain_blocks,
               f.seed};
  if (mixed) {
    info.mixed_seconds = f.mixed_seconds;
    info.get_fraction = f.get_fraction;
    info.fresh_blocks = fresh_blocks;
  }
  PrintTable(out, info, phases);
  client::CallOptions stats_call;
  stats_call.deadline = absl::Seconds(5);
  if (absl::StatusOr<client::NodeStats> st = streams[0].client->Stats(stats_call); st.ok()) {
    std::fprintf(out, "node %s: %llu warm blocks, %s of %s used, %llu evictions, %llu data loss\n",
                 st->node_id.c_str(), static_cast<unsigned long long>(st->warm_blocks),
                 FormatByteSize(st->warm_used_bytes).c_str(),
                 FormatByteSize(st->warm_capacity_bytes).c_str(),
                 static_cast<unsigned long long>(st->evictions),
                 static_cast<unsigned long long>(st->data_loss));
  }

  int rc = 0;
  uint64_t errors = warmup_errors;
  bool complete = true;
  for (const PhaseResult& p : phases) {
    errors += p.errors;
    complete = complete && p.complete;
  }
  if (!f.json.empty()) {
    std::string json = ToJson(info, phases);
    if (f.json == "-") {
      std::fputs(json.c_str(), stdout);
    } else if (!(std::ofstream(f.json) << json)) {
      std::fprintf(stderr, "strata-bench: --json: cannot write %s\n", f.json.c_str());
      rc = 1;
    }
  }
  streams.clear();
  clients.clear();  // close the channels before the node goes and the data sets are unmapped
  if (local != nullptr) {
    absl::StatusOr<int> code = local->Stop(absl::Seconds(30));
    if (!code.ok() || *code != 0) {
      std::string why = code.ok() ? absl::StrCat("exit code ", *code) : code.status().ToString();
      std::fprintf(stderr, "strata-bench: local node did not stop cleanly: %s\n", why.c_str());
      rc = 1;
    }
  }
  if (errors > 0) {
    std::fprintf(out, "FAILED: %llu blocks with errors\n", static_cast<unsigned long long>(errors));
    return 1;
  }
  if (!complete) {
    std::fprintf(out, "INCOMPLETE: stopped by --max-seconds %.0f\n", f.max_seconds);
    return rc != 0 ? rc : 3;
  }
  return rc;
}

}  // namespace
}  // namespace strata::bench

int main(int argc, char** argv) {
  // Like a node, and like an engine process that follows docs/design/cluster.md ("Heap
  // trimming"): the calls' buffers stay in malloc's heaps between calls.
  strata::TuneMalloc(strata::MallocTuning::Client());
  // Library log lines go to stderr (warnings and worse): stdout may carry the JSON report.
  if (!strata::InitLogging("warn", "strata-bench").ok()) return 2;
  strata::bench::Flags f;
  CLI::App app{"strata-bench: load generator for a Strata store node (put, get, lookup, mixed)"};
  app.add_option("--node", f.node, "HOST:PORT of a store node; default: start a local one");
  app.add_option("--lookup-rounds", f.lookup_rounds,
                 "Look every chain up this many times (latency samples of long chains)")
      ->capture_default_str()
      ->check(CLI::Range(1, 100000));
  app.add_option("--etcd", f.etcd, "A cluster's etcd endpoints host:port,... instead of --node");
  app.add_option("--cluster", f.cluster, "Cluster name (with --etcd)")->capture_default_str();
  app.add_option("--members", f.members,
                 "A cluster's fixed member list id=host:port[@zone],... (static mode, as the "
                 "nodes' cluster_members) instead of --node or --etcd");
  app.add_option("--replicas", f.replicas, "Cluster: copies of every block (0: the nodes')")
      ->capture_default_str()
      ->check(CLI::Range(0, 16));
  app.add_option("--write-quorum", f.write_quorum, "Cluster: replicas a put waits for (0: all)")
      ->capture_default_str();
  app.add_option("--blocks", f.blocks, "Blocks in the data set")
      ->check(CLI::Range(uint64_t{1}, uint64_t{1} << 32))
      ->capture_default_str();
  app.add_option("--block-size", f.block_size_text, "Bytes per block (e.g. 256KiB, 2MiB)")
      ->capture_default_str();
  app.add_option("--streams", f.streams, "Concurrent streams (threads issuing calls)")
      ->check(CLI::Range(1, 1024))
      ->capture_default_str();
  app.add_option("--clients", f.clients,
                 "StoreClients the streams share round-robin (each with its own UCX progress "
                 "thread and gRPC channel); 0: one per stream")
      ->check(CLI::Range(0, 1024));
  app.add_option("--batch", f.batch, "Blocks per Put/Get call")
      ->check(CLI::Range(1, 65536))
      ->capture_default_str();
  app.add_option("--chain-blocks", f.chain_blocks, "Blocks per chain (prompt); one Lookup each")
      ->check(CLI::Range(1, 1 << 20))
      ->capture_default_str();
  app.add_option("--ops", f.ops,
                 "Phases to run, always in the order put,get,lookup,mixed (mixed without put "
                 "stores the data set first, unmeasured)")
      ->capture_default_str();
  app.add_option("--mixed-seconds", f.mixed_seconds,
                 "mixed: seconds every stream loops choosing a get or a put per call")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--get-fraction", f.get_fraction, "mixed: share of the calls that are gets")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  app.add_option("--fresh-blocks", f.fresh_blocks,
                 "mixed: blocks of a second data set the puts store for the first time; after "
                 "them puts rewrite stored blocks (dedup). Default: --blocks")
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 32));
  app.add_option("--json", f.json, "Write results as JSON to FILE ('-': stdout)");
  app.add_flag("--warmup", f.warmup, "Put and get a small separate data set first, unmeasured");
  app.add_option("--max-seconds", f.max_seconds, "Stop and report after this long")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--call-timeout", f.call_timeout_s, "Deadline of each call, in seconds")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--seed", f.seed, "Seed of the synthetic prompts (same seed: same blocks)")
      ->capture_default_str();
  app.add_option("--transport", f.transport, "ucx (UCX data plane) or grpc (payloads inline)")
      ->check(CLI::IsMember({"ucx", "grpc"}))
      ->capture_default_str();
  app.add_option("--ucx-tls", f.ucx_tls, "Local node's UCX transports: tcp or shm")
      ->check(CLI::IsMember({"tcp", "shm"}))
      ->capture_default_str();
  app.add_option("--lanes", f.lanes,
                 "Local node's UCX lanes (workers); 0: one per 4 usable CPUs, 1 to 4")
      ->check(CLI::Range(0, 64))
      ->capture_default_str();
  app.add_flag("--no-register", f.no_register,
               "ucx: do not register buffers (measure the bounce-pool path)");
  app.add_flag("--shm-rma", f.shm_rma,
               "ucx over shared memory: move every block with the node's RMA, not puts and "
               "gets from 512 KiB as tagged messages (ClientOptions::ucx_two_sided_on_shm off)");
  app.add_option("--shm-two-sided-gets-from", f.shm_two_sided_gets_from,
                 "ucx over shared memory: gets whose blocks are at least this big go as tagged "
                 "messages (e.g. 0, 256KiB; default 512KiB: ClientOptions::"
                 "ucx_shm_two_sided_get_bytes)");
  app.add_option("--trailing-checksums-from", f.trailing_checksums_from,
                 "ucx: two-sided puts of at least this many bytes per call send their checksums "
                 "after the blocks (default 512KiB; 0: always first; ClientOptions::"
                 "ucx_trailing_checksum_bytes)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // CLI11 reports usage errors by exception; this is the one boundary where we catch them.
    int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  }
  return strata::bench::Run(f);
}
