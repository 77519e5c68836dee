// The cluster client's connections (cluster_client.cc): one GrpcStoreClient per member,
// connected on first use with the client's namespaces and memory registered on it.
//
// Two kinds of trouble, each for a while that doubles (1 s up to 32 s) as long as it lasts:
// - down: a call or a connect failed UNAVAILABLE. Every call to the node fails at once
//   (reads go to the next owner) until the while is up and it connects again.
// - slow: a read given a share of its deadline ran out of it (a node that hangs but keeps
//   its sockets), or a connect did within a share under the 2 s connect timeout. Reads ask
//   the node's blocks of the other owners first; writes and everything else still go to it.
//   A read answered within its share ends it.
#pragma once

#include <algorithm>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "grpc_store_client.h"
#include "strata/cluster/membership.h"
#include "strata/common/steady_clock.h"
#include "strata/common/timed_turn.h"

namespace strata::client::internal {

class ClusterNodes {
 public:
  explicit ClusterNodes(ClientOptions options) : options_(std::move(options)) {}

  // The client of member `m`, connected on first use (namespaces and memory registered), or
  // its error while it is marked down. Connecting takes at most 2 s, within `end`; a connect
  // cut short by `end` (less than 2 s, or memory being registered meanwhile) marks the node
  // slow, not down. A namespace the node refuses (it answered) leaves it connected.
  absl::StatusOr<std::shared_ptr<GrpcStoreClient>> Node(const cluster::Member& m, absl::Time end);
  // Member `m`'s client if it is connected, or its error while it is marked down; nullopt
  // when it has to be connected.
  std::optional<absl::StatusOr<std::shared_ptr<GrpcStoreClient>>> Known(const cluster::Member& m);
  // After a call through `c`: UNAVAILABLE marks the node down; DEADLINE_EXCEEDED of a call
  // `cut_short` (given part of the caller's deadline, the rest kept for another replica)
  // marks it slow; OK of such a call ends a slow spell.
  void NoteResult(const cluster::Member& m, const std::shared_ptr<GrpcStoreClient>& c,
                  const absl::Status& s, bool cut_short = false);
  // Forgets every node whose id is not in `keep` (the current and previous member sets): its
  // connection, UCX workers and bounce pool go. A client of a churning cluster (pod ids that
  // come and go) keeps one entry per node that may still hold its blocks, not per node it
  // ever saw. Calls still using a forgotten node's client keep it until they end.
  void Retain(std::span<const cluster::Member> keep);
  // Nodes with a live connection now.
  size_t Connected() const;
  // Whether each member of `members` is slow now (one look under the lock).
  std::vector<bool> SlowNow(std::span<const cluster::Member> members) const;

  // Registered on every connected node now, and on each node as it connects (nodes whose
  // client has no UCX data plane take every call inline: none there).
  absl::Status RegisterMemory(void* ptr, size_t len);
  absl::Status UnregisterMemory(void* ptr);
  void AddNamespace(const NamespaceSpec& spec);
  // The first connected node's data-plane description; empty if none is connected.
  std::string FirstDescription() const;
  // "down: ID (ERROR), ...; slow: ID, ..." for the nodes marked so now; empty if none.
  std::string TroubleNow() const;

 private:
  struct Entry {
    std::string address;
    std::shared_ptr<GrpcStoreClient> client;
    // Spells are timed on SteadyNow(): a wall clock stepped back must not make one last.
    absl::Duration down_until = -absl::InfiniteDuration();
    absl::Status last_error;
    int strikes = 0;  // down spells since it last connected: each doubles the while
    absl::Duration slow_until = -absl::InfiniteDuration();
    int slow_strikes = 0;  // slow spells since a call last succeeded
  };
  void MarkDownLocked(Entry& e, absl::Status error) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void MarkSlowLocked(Entry& e) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // The clients connected now (copied under mu_, so that registering memory with them holds
  // no call up).
  std::vector<std::shared_ptr<GrpcStoreClient>> Clients() const;
  // A copy of the registered ranges.
  std::vector<std::pair<void*, size_t>> Memory() const ABSL_LOCKS_EXCLUDED(memory_mu_);

  const ClientOptions options_;
  // The registration of ranges with each client: held while memory is (un)registered and
  // while a new client takes the ranges and is published, so that no client misses a change.
  // Registration pins memory and can take long: calls, which take only mu_, do not wait for
  // it, and a connect waits for it until its deadline only. Taken before the mutexes.
  TimedTurn memory_turn_;
  mutable absl::Mutex memory_mu_ ABSL_ACQUIRED_BEFORE(mu_);
  std::vector<std::pair<void*, size_t>> memory_ ABSL_GUARDED_BY(memory_mu_);  // the ranges
  mutable absl::Mutex mu_;
  std::map<std::string, Entry> nodes_ ABSL_GUARDED_BY(mu_);
  std::vector<NamespaceSpec> specs_ ABSL_GUARDED_BY(mu_);
};

// A cluster client's own options: INVALID_ARGUMENT naming the one out of range.
absl::Status CheckClusterOptions(const ClientOptions& options);

// How many candidates a block has left to share a deadline over: the different nodes among
// cand[from, to) (to: at most cand.size()) that are not slow, the one at `from` always
// counted (a node asked twice while blocks move counts once; a slow one is asked last, with
// what time is left, so it takes no share from the others).
inline size_t DistinctLeft(const std::vector<int>& cand, size_t from, const std::vector<bool>& slow,
                           size_t to = SIZE_MAX) {
  to = std::min(to, cand.size());
  size_t n = 0;
  for (size_t k = from; k < to; ++k) {
    const bool first_time = std::find(cand.begin() + static_cast<std::ptrdiff_t>(from),
                                      cand.begin() + static_cast<std::ptrdiff_t>(k),
                                      cand[k]) == cand.begin() + static_cast<std::ptrdiff_t>(k);
    n += first_time && (k == from || !slow[cand[k]]);
  }
  return n;
}

// Where one attempt on a node ends when `left` different candidates (that node's included)
// remain for each block it is asked about, at the fewest (DistinctLeft): an even share of the
// time left, so that a node that hangs leaves the next replica time to answer. A call with a
// block on its last candidate gets all of it.
inline absl::Time AttemptEnd(absl::Time end, size_t left) {
  const absl::Time now = absl::Now();
  if (left <= 1 || left == SIZE_MAX || end <= now) return end;  // SIZE_MAX: no block
  return now + (end - now) / static_cast<int64_t>(std::min<size_t>(left, 64));
}

// Moves the slow members (ClusterNodes::SlowNow) to the end of a read's candidates, the
// others keeping their order.
inline void SlowLast(std::vector<int>& cand, const std::vector<bool>& slow) {
  std::stable_partition(cand.begin(), cand.end(), [&](int m) { return !slow[m]; });
}

}  // namespace strata::client::internal
