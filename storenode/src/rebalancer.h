// Rebalancer: a store node's background pass that makes placement true again after the
// member set changes (docs/design/cluster.md). For every block the node holds, it computes the
// block's R owners under the current set and asks each other owner (one LookupEach per peer
// per batch) whether it has the block:
//   - owners that lack it get a copy (re-replication after a failure, hand-over after a join);
//   - a block this node no longer owns is dropped here once every owner has it (a move).
// It runs shortly (`settle`) after every change of where the member list places blocks, and
// every `interval` besides, so copies lost with a node that died come back without anyone
// reading them.
//
// Peers are reached as an ordinary client would (client::StoreClient, payloads inline), and
// every copy is checksum-verified by the receiving node like any put.
//
// Thread-safe: one internal thread does the work; progress() may be read from any thread.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "strata/client/store_client.h"
#include "strata/cluster/membership.h"
#include "strata/storenode/tiered_store.h"

namespace strata::storenode {

struct RebalancerOptions {
  // This node's R (cluster_replicas); a pass keeps cluster::ReplicasKept copies: this or
  // more, when another member records more.
  int replicas = 1;
  absl::Duration settle = absl::Milliseconds(500);  // after a change, before the pass starts
  absl::Duration interval = absl::Seconds(30);      // passes without any change
  size_t batch = 64;                                // blocks per peer call
  // Block bytes a batch holds read at once (the rest wait for its next round); at least one
  // block of max_block_bytes. The puts' requests take about as much again.
  uint64_t batch_bytes = 64ull << 20;
  absl::Duration call_timeout = absl::Seconds(10);
  // How this node calls its peers: token (cluster_token) and TLS files, as ClientOptions.
  std::string token;
  std::string tls_ca;
  std::string tls_cert;
  std::string tls_key;
};

struct RebalanceProgress {
  uint64_t passes = 0;            // completed passes
  uint64_t scanned = 0;           // blocks examined, all passes
  uint64_t copied = 0;            // copies made on owners that lacked them
  uint64_t dropped = 0;           // blocks handed over and removed here
  uint64_t failed = 0;            // copies that did not succeed (retried next pass)
  uint64_t under_replicated = 0;  // blocks the last pass found short of R copies
  // Blocks of the running pass not examined yet: counts down from the blocks held when it
  // started, and stays at 1 or more until it ends (0: idle).
  uint64_t pending = 0;
  uint64_t epoch = 0;  // member-set epoch of the last completed pass
  // Member sets that placed blocks otherwise than the one before (or kept another count of
  // copies), each calling for a pass; the set at start is not counted.
  uint64_t placement_changes = 0;
};

class Rebalancer {
 public:
  Rebalancer(RebalancerOptions options, TieredStore* store, cluster::Membership* membership,
             std::string self_id);
  ~Rebalancer() { Stop(); }
  // Stops the thread (a running pass ends after its current batch). Idempotent.
  void Stop();

  // A member set was published: kicks a pass if it places blocks otherwise than the last set
  // seen (member ids, zones, placement schemes) or keeps another count of copies
  // (cluster::ReplicasKept), counted in placement_changes, or if a member's address changed
  // (a pass under way would go on calling the old one). A capacity or epoch change moves no
  // block, and a kick for it would cut a pass under way short (and, with a long `settle`,
  // hold passes off).
  void OnMemberSet(const cluster::MemberSet& set);
  RebalanceProgress progress() const;

 private:
  // Asks for a pass soon (after `settle`): the member set changed.
  void Kick();
  void Loop();
  void Pass();
  // Copies and drops for one batch of blocks of one namespace and scope, `replicas` copies each.
  void Batch(const cluster::MemberSet& set, int replicas, NamespaceId ns, const std::string& scope,
             std::span<const ChainHash> hashes);
  // A client of `m` with namespace `ns` registered, or null (logged) when it cannot be had.
  // `exact`, when given: whether the peer honours exact-scope lookups.
  client::StoreClient* Peer(const cluster::Member& m, NamespaceId ns, client::Namespace* out_ns,
                            bool* exact = nullptr);

  const RebalancerOptions options_;
  TieredStore* const store_;
  cluster::Membership* const membership_;
  const std::string self_id_;

  struct PeerEntry {
    std::string address;
    std::unique_ptr<client::StoreClient> client;
    std::map<NamespaceId, client::Namespace> namespaces;
    absl::Time retry_after = absl::InfinitePast();
    bool exact = false;  // honours exact-scope lookups (its Stats said so)
    absl::Time exact_checked = absl::InfinitePast();  // asked again each minute
    int strikes = 0;  // calls in a row that ran out of time or found it gone
  };
  // After a call to peer `m`: DEADLINE_EXCEEDED or UNAVAILABLE (a peer that hangs keeps
  // its sockets) drops its client and skips it for a while that doubles (2 s up to a minute)
  // while it keeps failing, so a pass asks it once, not once per batch of call_timeout; any
  // other answer ends that.
  void NoteCall(const cluster::Member& m, const absl::Status& s);
  // Drops `e`'s client and skips the peer for the next while (2 s doubling to a minute);
  // returns that while. A failed connect is a strike too; a call answered ends the strikes.
  absl::Duration Strike(PeerEntry& e);
  std::map<std::string, PeerEntry> peers_;  // by member id; used by the pass thread only
  TieredStore::KeyWalk walk_;               // where passes go on from; the pass thread's
  // Stop() was called: a batch makes no more peer calls (shutdown waits for one at most).
  bool Stopping() const;

  mutable absl::Mutex mu_;
  RebalanceProgress progress_ ABSL_GUARDED_BY(mu_);
  // What OnMemberSet last saw: each member's (id, zone, scheme) and address, and the copies
  // kept.
  std::vector<std::tuple<std::string, std::string, uint32_t>> placed_by_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> addresses_ ABSL_GUARDED_BY(mu_);
  int replicas_kept_ ABSL_GUARDED_BY(mu_) = 0;
  bool kicked_ ABSL_GUARDED_BY(mu_) = true;  // a first pass after start (a restart)
  absl::Time kicked_at_ ABSL_GUARDED_BY(mu_) = absl::Now();
  absl::Time first_kick_at_ ABSL_GUARDED_BY(mu_) = absl::Now();  // of the kicks not yet passed
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace strata::storenode
