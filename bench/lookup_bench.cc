// strata-lookup-bench: the per-block work of a Lookup without gRPC, in one process, so that
// its cost per block can be told from the calls around it (issue 5: a 2,048-block lookup on
// three nodes against a one-block lookup).
//
//   node:      TieredStore::LookupEach of a chain's blocks, all warm (index lookup, the
//              eviction policy's touch), on a store of --resident blocks, per policy;
//   placement: each block's first owner among --members members (rendezvous scores), as the
//              cluster client computes it before it calls the nodes.
//
// Prints ns per block (the fastest of --repeats rounds, and the median) and, with --json, the
// same as JSON. A benchmark figure, never a test assertion.
//
// Exit code: 0 done; 1 a store error or a block not found; 2 bad flags.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "strata/cluster/placement.h"
#include "strata/common/block_key.h"
#include "strata/common/checksum.h"
#include "strata/common/namespace.h"
#include "strata/storenode/eviction_policy.h"
#include "strata/storenode/tiered_store.h"

namespace strata::bench {
namespace {

using Clock = std::chrono::steady_clock;

struct Flags {
  uint32_t chain = 680;  // a 2,048-block chain's share of one node of three
  uint32_t resident = 65536;
  uint32_t members = 3;
  uint32_t repeats = 200;
  std::string json;
};

struct Figure {
  std::string what;
  double best_ns = 0;    // per block, fastest round
  double median_ns = 0;  // per block, median round
};

std::vector<ChainHash> RandomHashes(uint32_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<ChainHash> out(n);
  for (ChainHash& h : out) {
    for (size_t i = 0; i < kChainHashBytes; i += 8) {
      const uint64_t v = rng();
      std::memcpy(h.bytes.data() + i, &v, 8);
    }
  }
  return out;
}

// Runs `round` (which handles `blocks` blocks) `repeats` times; ns per block.
template <typename Fn>
Figure Time(std::string what, uint32_t blocks, uint32_t repeats, Fn round) {
  std::vector<double> ns;
  ns.reserve(repeats);
  for (uint32_t r = 0; r < repeats; ++r) {
    const Clock::time_point t0 = Clock::now();
    round();
    ns.push_back(std::chrono::duration<double, std::nano>(Clock::now() - t0).count() / blocks);
  }
  std::sort(ns.begin(), ns.end());
  return {std::move(what), ns.front(), ns[ns.size() / 2]};
}

// A warm-only store holding `resident` blocks of 4 KiB under policy `kind`, the first
// `chain` of them one chain (depth 0, 1, ...).
absl::StatusOr<std::unique_ptr<storenode::TieredStore>> FilledStore(
    storenode::PolicyKind kind, const std::vector<ChainHash>& hashes, NamespaceId* ns) {
  constexpr uint64_t kBlock = 4096;
  storenode::TieredStoreOptions o;
  o.warm.capacity_bytes = (hashes.size() + 1024) * kBlock * 2;
  o.warm.max_block_bytes = 64 * 1024;
  o.warm.policy = kind;
  absl::StatusOr<std::unique_ptr<storenode::TieredStore>> store = storenode::TieredStore::Create(o);
  if (!store.ok()) return store.status();
  NamespaceSpec spec;
  spec.model_id = "lookup-bench";
  spec.dtype = "fp16";
  spec.layout = "l";
  spec.block_bytes = kBlock;
  absl::StatusOr<NamespaceId> id = (*store)->RegisterNamespace(spec);
  if (!id.ok()) return id.status();
  *ns = *id;
  const std::string scope = "tenant-a";
  const std::vector<uint8_t> payload(kBlock, 0x5a);
  const uint64_t checksum = BlockChecksum(payload.data(), payload.size());
  constexpr size_t kPerCall = 256;
  for (size_t begin = 0; begin < hashes.size(); begin += kPerCall) {
    const size_t end = std::min(hashes.size(), begin + kPerCall);
    std::vector<storenode::WarmTier::PutBlock> put;
    std::vector<storenode::WarmTier::CommitBlock> commit;
    for (size_t i = begin; i < end; ++i) {
      put.push_back({.hash = hashes[i], .size = kBlock, .depth = static_cast<uint32_t>(i)});
      commit.push_back({hashes[i], checksum, payload});
    }
    storenode::WarmTier::ReserveResult r = (*store)->BeginPut(*ns, scope, put, 60'000);
    absl::StatusOr<std::vector<absl::Status>> done = (*store)->CommitPut(r.reservation_id, commit);
    if (!done.ok()) return done.status();
    for (const absl::Status& s : *done) {
      if (!s.ok()) return s;
    }
  }
  return store;
}

int Run(const Flags& f) {
  std::vector<Figure> figures;
  const std::vector<ChainHash> hashes = RandomHashes(std::max(f.resident, f.chain), 42);
  const std::span<const ChainHash> chain(hashes.data(), f.chain);
  for (storenode::PolicyKind kind : {storenode::PolicyKind::kCost, storenode::PolicyKind::kLru}) {
    NamespaceId ns = 0;
    absl::StatusOr<std::unique_ptr<storenode::TieredStore>> store = FilledStore(kind, hashes, &ns);
    if (!store.ok()) {
      std::fprintf(stderr, "strata-lookup-bench: %s\n", store.status().ToString().c_str());
      return 1;
    }
    const std::string scope = "tenant-a";
    size_t missing = 0;
    figures.push_back(
        Time(absl::StrCat("node LookupEach, ", std::string(storenode::PolicyKindName(kind))),
             f.chain, f.repeats, [&] {
               for (const auto& m : (*store)->LookupEach(ns, scope, chain)) {
                 missing += m.has_value() ? 0 : 1;
               }
             }));
    if (missing != 0) {
      std::fprintf(stderr, "strata-lookup-bench: %zu blocks not found\n", missing);
      return 1;
    }
  }
  std::vector<uint64_t> seeds;
  for (uint32_t m = 0; m < f.members; ++m) {
    seeds.push_back(cluster::RendezvousSeed(absl::StrCat("node-", m)));
  }
  std::vector<int> owner(f.chain);
  figures.push_back(
      Time(absl::StrCat("placement, first of ", f.members, " owners"), f.chain, f.repeats, [&] {
        for (uint32_t i = 0; i < f.chain; ++i) {
          int best = 0;
          uint64_t best_score = 0;
          const uint64_t key = cluster::RendezvousKey(chain[i]);
          for (uint32_t m = 0; m < seeds.size(); ++m) {
            const uint64_t s = cluster::RendezvousScore(seeds[m], key);
            if (m == 0 || s > best_score) {
              best = static_cast<int>(m);
              best_score = s;
            }
          }
          owner[i] = best;
        }
      }));
  std::vector<uint32_t> share(f.members, 0);
  for (int o : owner) ++share[o];
  std::printf("per-block lookup work, %u blocks a call, %u resident, %u rounds (ns per block)\n",
              f.chain, f.resident, f.repeats);
  std::printf("%-36s %10s %10s\n", "work", "best", "median");
  for (const Figure& x : figures) {
    std::printf("%-36s %10.1f %10.1f\n", x.what.c_str(), x.best_ns, x.median_ns);
  }
  std::printf("blocks per member:");
  for (uint32_t s : share) std::printf(" %u", s);
  std::printf("\n");
  if (!f.json.empty()) {
    std::string out =
        absl::StrFormat("{\"chain\": %u, \"resident\": %u, \"repeats\": %u, \"figures\": [",
                        f.chain, f.resident, f.repeats);
    for (size_t i = 0; i < figures.size(); ++i) {
      absl::StrAppendFormat(&out, "%s{\"what\": \"%s\", \"best_ns\": %.2f, \"median_ns\": %.2f}",
                            i ? ", " : "", figures[i].what, figures[i].best_ns,
                            figures[i].median_ns);
    }
    out += "]}\n";
    if (f.json == "-") {
      std::fputs(out.c_str(), stdout);
    } else if (FILE* file = std::fopen(f.json.c_str(), "w")) {
      std::fputs(out.c_str(), file);
      std::fclose(file);
    } else {
      std::fprintf(stderr, "strata-lookup-bench: cannot write %s\n", f.json.c_str());
      return 1;
    }
  }
  return 0;
}

}  // namespace
}  // namespace strata::bench

int main(int argc, char** argv) {
  strata::bench::Flags f;
  CLI::App app{"strata-lookup-bench: per-block Lookup work without gRPC (node and client)"};
  app.add_option("--chain", f.chain, "Blocks per lookup call")->check(CLI::Range(1, 1 << 20));
  app.add_option("--resident", f.resident, "Blocks in the store")->check(CLI::Range(1, 1 << 22));
  app.add_option("--members", f.members, "Cluster members for placement")
      ->check(CLI::Range(1, 1024));
  app.add_option("--repeats", f.repeats, "Rounds (the fastest and the median are printed)")
      ->check(CLI::Range(1, 100000));
  app.add_option("--json", f.json, "Write the figures as JSON here (- for stdout)");
  CLI11_PARSE(app, argc, argv);
  return strata::bench::Run(f);
}
