// ClusterStoreClient: StoreClient over a whole cluster (docs/design/cluster.md). It watches the
// member set (cluster::Membership), places every block on its top-R rendezvous owners, and
// talks to each node through an ordinary GrpcStoreClient, so the data plane, checksums and
// batch splitting are the single-node client's. A batch becomes one call per node, all
// nodes in parallel.
//
// Reads fail over: a block that a node does not answer for (or, for Get, does not hold) is
// asked of its next owner, then of its owners under the previous member sets (a node that
// just joined has not received its blocks yet; after two joins in a row a block may still sit
// where the set before both placed it). A Get that finds a block away from its
// owners copies it to them (read-repair). A request routed by a stale epoch is refused by
// the node (FAILED_PRECONDITION); the client re-reads the member set and retries once.
#include <algorithm>
#include <map>
#include <optional>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "cluster_nodes.h"
#include "grpc_store_client.h"
#include "spdlog/spdlog.h"
#include "strata/cluster/membership.h"

namespace strata::client::internal {
namespace {

using cluster::Member;
using cluster::MemberSet;

// How long after a change of the member set reads also ask a block's owner under the
// previous set: the time read-repair and the rebalancer get to move blocks to new owners.
constexpr absl::Duration kPreviousSetGrace = absl::Minutes(10);

class ClusterStoreClient final : public StoreClient {
 public:
  explicit ClusterStoreClient(ClientOptions options) : options_(options), nodes_(options) {}

  absl::Status Start() {
    cluster::MembershipOptions mo;
    mo.cluster = options_.cluster_name;
    if (!options_.etcd_endpoints.empty()) {
      mo.mode = cluster::MembershipMode::kEtcd;
      for (absl::string_view e :
           absl::StrSplit(options_.etcd_endpoints, ',', absl::SkipWhitespace())) {
        mo.etcd_endpoints.push_back(std::string(absl::StripAsciiWhitespace(e)));
      }
      mo.startup_timeout = options_.default_deadline;
      mo.watch = options_.watch_members;
    } else {
      mo.mode = cluster::MembershipMode::kStatic;
      absl::StatusOr<std::vector<Member>> members =
          cluster::ParseStaticMembers(options_.cluster_members);
      if (!members.ok()) return members.status();
      mo.static_members = *std::move(members);
    }
    absl::StatusOr<std::unique_ptr<cluster::Membership>> m = cluster::Membership::Start(mo);
    if (!m.ok()) return m.status();
    membership_ = std::move(*m);
    std::shared_ptr<const MemberSet> set = membership_->Current();
    if (set->members.empty()) {
      return absl::UnavailableError(
          absl::StrCat("cluster ", options_.cluster_name, ": no live store node"));
    }
    WarnOfDisagreement(*set);
    membership_->OnChange([this](const MemberSet& now) {
      WarnOfDisagreement(now);
      // Nodes in neither the set nor the one before it (reads still ask those) are let go.
      std::vector<cluster::Member> keep = now.members;
      if (std::shared_ptr<const MemberSet> before = membership_->Previous(); before != nullptr) {
        keep.insert(keep.end(), before->members.begin(), before->members.end());
      }
      nodes_.Retain(keep);
    });
    return absl::OkStatus();
  }

  // Logs cluster::Disagreement when it changes (at start, then from the membership's thread).
  void WarnOfDisagreement(const MemberSet& set) {
    std::string now = cluster::Disagreement(set.members, Replicas(set));
    absl::MutexLock lock(&warned_mu_);
    if (now == warned_) return;
    warned_ = now;
    if (now.empty())
      spdlog::info("cluster {}: the members agree with this client", options_.cluster_name);
    else
      spdlog::warn("cluster {}: {}", options_.cluster_name, now);
  }

  absl::Status RegisterMemory(void* ptr, size_t len) override {
    return nodes_.RegisterMemory(ptr, len);
  }
  absl::Status UnregisterMemory(void* ptr) override { return nodes_.UnregisterMemory(ptr); }

  std::string DataPlaneDescription() const override {
    std::shared_ptr<const MemberSet> set = membership_->Current();
    const std::string first = nodes_.FirstDescription();
    const std::string trouble = nodes_.TroubleNow();
    const int replicas = Replicas(*set);
    std::string warnings = cluster::Disagreement(set->members, replicas);
    return absl::StrCat(
        "cluster ", options_.cluster_name, " (",
        std::string(cluster::MembershipModeName(membership_->mode())), ", ", set->members.size(),
        " nodes, ", nodes_.Connected(), " connected, epoch ", set->epoch, ", R=", replicas,
        " W=", Quorum(replicas), ")", warnings.empty() ? "" : "; WARNING: ", warnings,
        trouble.empty() ? "" : "; ", trouble, first.empty() ? "" : "; per node: ", first);
  }

  absl::StatusOr<Namespace> RegisterNamespace(const NamespaceSpec& spec,
                                              const CallOptions& call) override {
    if (absl::Status s = ValidateNamespaceSpec(spec); !s.ok()) return s;
    const absl::Time end = End(call);
    std::shared_ptr<const MemberSet> set = membership_->Current();
    std::vector<absl::StatusOr<Namespace>> out(set->members.size(),
                                               absl::UnavailableError("not tried"));
    RunParts(set->members.size(), [&](size_t i) {
      absl::StatusOr<std::shared_ptr<GrpcStoreClient>> c = nodes_.Node(set->members[i], end);
      out[i] = c.ok() ? (*c)->RegisterNamespace(spec, Left(end)) : c.status();
      return absl::OkStatus();
    }).IgnoreError();
    // Any node's namespace will do; nodes down now register it when they connect. Else
    // INVALID_ARGUMENT (a bad spec) before the last other error, and later connects do not
    // ask for it (calls in it register it again where they go).
    absl::Status first = absl::UnavailableError("no store node answered");
    for (auto& r : out) {
      if (r.ok()) {
        nodes_.AddNamespace(spec);
        return *r;
      }
      if (first.code() != absl::StatusCode::kInvalidArgument) first = r.status();
    }
    return first;
  }

  absl::StatusOr<LookupResult> Lookup(const Namespace& ns, std::string_view scope,
                                      std::span<const ChainHash> hashes,
                                      const CallOptions& call) override {
    return WithFreshEpoch(call, [&](absl::Time end) { return LookupOnce(ns, scope, hashes, end); });
  }

  absl::StatusOr<std::vector<BlockLocation>> LookupEach(const Namespace& ns, std::string_view scope,
                                                        std::span<const ChainHash> hashes,
                                                        const CallOptions& call) override {
    return WithFreshEpoch(call, [&](absl::Time end) -> absl::StatusOr<std::vector<BlockLocation>> {
      std::shared_ptr<const MemberSet> set = membership_->Current();
      const int replicas = Replicas(*set);
      const size_t n = hashes.size();
      std::vector<std::vector<int>> cand(n);
      const std::vector<bool> slow = nodes_.SlowNow(set->members);
      const bool any_slow = std::find(slow.begin(), slow.end(), true) != slow.end();
      const cluster::ReadPlan plan = cluster::PlanReads(*set, {});
      for (size_t i = 0; i < n; ++i) {
        cand[i] = cluster::ReadCandidates(plan, hashes[i], replicas);
        if (any_slow) SlowLast(cand[i], slow);
      }
      std::vector<BlockLocation> out(n);
      std::vector<size_t> tried(n, 0);
      std::vector<bool> answered(n, false);
      CallVerdict verdict;
      // Each block's first owner that answers (absent there means absent).
      for (int round = 0; round < replicas; ++round) {
        std::vector<std::vector<size_t>> groups(set->members.size());
        // Per member: the fewest candidates left for one block it is asked about.
        std::vector<size_t> left(set->members.size(), SIZE_MAX);
        for (size_t i = 0; i < n; ++i) {
          if (answered[i] || tried[i] >= cand[i].size()) continue;
          const int node = cand[i][tried[i]];
          groups[node].push_back(i);
          left[node] = std::min(left[node], DistinctLeft(cand[i], tried[i], slow, replicas));
        }
        LookupRound(*set, groups, ns, scope, hashes, end, left, out,
                    [&](const std::vector<size_t>& idx, const absl::Status& s) {
                      verdict.Note(s);
                      for (size_t i : idx) {
                        ++tried[i];
                        answered[i] = answered[i] || s.ok();
                      }
                    });
        if (!verdict.stale().ok()) return verdict.stale();
      }
      if (absl::Status s = verdict.FinalAnswered(); !s.ok()) return s;
      return out;
    });
  }

  // Every owner of a block gets the entry, so its directory survives a node as its data do.
  absl::StatusOr<std::vector<absl::Status>> Publish(const Namespace& ns, std::string_view scope,
                                                    std::span<const ChainHash> hashes,
                                                    std::span<const uint64_t> sizes,
                                                    const PeerLocation& location,
                                                    absl::Duration ttl,
                                                    const CallOptions& call) override {
    if (!sizes.empty() && sizes.size() != hashes.size()) {
      return absl::InvalidArgumentError("Publish: sizes must be empty or one per hash");
    }
    // Refused by the owner alone, which would fail only its share (CallVerdict): the caller's.
    for (size_t i = 0; i < sizes.size(); ++i) {
      if (ns.spec.block_bytes != 0 && sizes[i] > ns.spec.block_bytes) {
        return absl::InvalidArgumentError(absl::StrCat(
            "sizes[", i, "]: ", sizes[i], " bytes, want at most ", ns.spec.block_bytes));
      }
    }
    return WithFreshEpoch(call, [&](absl::Time end) -> absl::StatusOr<std::vector<absl::Status>> {
      std::shared_ptr<const MemberSet> set = membership_->Current();
      std::map<int, std::vector<size_t>> groups;
      const std::vector<uint64_t> seeds = cluster::RendezvousSeeds(set->members);
      const int replicas = Replicas(*set);
      for (size_t i = 0; i < hashes.size(); ++i) {
        for (int o : cluster::Owners(set->members, seeds, hashes[i], replicas)) {
          groups[o].push_back(i);
        }
      }
      std::vector<absl::Status> out(hashes.size(),
                                    absl::UnavailableError("no owner of the block answered"));
      absl::Mutex mu;
      CallVerdict verdict;
      ForEachGroup(groups, [&](int node, const std::vector<size_t>& idx) {
        std::vector<ChainHash> mine;
        std::vector<uint64_t> my_sizes;
        for (size_t i : idx) {
          mine.push_back(hashes[i]);
          if (!sizes.empty()) my_sizes.push_back(sizes[i]);
        }
        auto r = WithNode(*set, node, end, [&](GrpcStoreClient& c) {
          return c.Publish(ns, scope, mine, my_sizes, location, ttl, Left(end));
        });
        absl::MutexLock lock(&mu);
        verdict.Note(r.status());
        for (size_t k = 0; k < idx.size(); ++k) {
          const absl::Status st = r.ok() ? (*r)[k] : r.status();
          if (st.ok() || !out[idx[k]].ok()) out[idx[k]] = st;  // OK if any owner took it
        }
      });
      if (absl::Status s = verdict.Final(); !s.ok()) return s;
      return out;
    });
  }

  absl::StatusOr<PutResult> Put(const Namespace& ns, std::string_view scope,
                                std::span<const BlockWrite> blocks, const CallOptions& call,
                                const PutOptions& put) override {
    if (absl::Status s = CheckWrites(ns, blocks); !s.ok()) return s;
    return WithFreshEpoch(call,
                          [&](absl::Time end) { return PutOnce(ns, scope, blocks, end, put); });
  }

  absl::StatusOr<GetResult> Get(const Namespace& ns, std::string_view scope,
                                std::span<const BlockRead> blocks, const CallOptions& call,
                                const GetOptions& get) override {
    if (absl::Status s = CheckReads(blocks); !s.ok()) return s;
    bool late = false;  // an attempt of a first run, ended by a stale epoch, counts too
    absl::StatusOr<GetResult> r = WithFreshEpoch(
        call, [&](absl::Time end) { return GetOnce(ns, scope, blocks, end, get, &late); });
    if (r.ok()) r->may_land_late = late;
    return r;
  }

  absl::StatusOr<uint64_t> Delete(const Namespace& ns, std::string_view scope,
                                  std::span<const ChainHash> hashes,
                                  const CallOptions& call) override {
    return WithFreshEpoch(call, [&](absl::Time end) -> absl::StatusOr<uint64_t> {
      std::shared_ptr<const MemberSet> set = membership_->Current();
      // Every member deletes, not only the owners: a copy on another node (a join's before its
      // hand-over, one kept under a larger replication factor) would otherwise be copied back
      // to the owners by that node's rebalancer. The count is the first owners' (each block
      // counted once): a node deletes its first-owned blocks in one call, the rest in another.
      const std::vector<uint64_t> seeds = cluster::RendezvousSeeds(set->members);
      std::vector<int> first(hashes.size(), -1);
      for (size_t i = 0; i < hashes.size(); ++i) first[i] = cluster::FirstOwner(seeds, hashes[i]);
      std::atomic<uint64_t> deleted{0};
      absl::Mutex err_mu;
      absl::Status err;
      RunParts(set->members.size(), [&](size_t p) {
        const int node = static_cast<int>(p);
        std::vector<ChainHash> owned, others;
        for (size_t i = 0; i < hashes.size(); ++i) {
          (first[i] == node ? owned : others).push_back(hashes[i]);
        }
        for (const std::vector<ChainHash>* part : {&owned, &others}) {
          if (part->empty()) continue;
          absl::StatusOr<uint64_t> n = WithNode(*set, node, end, [&](GrpcStoreClient& c) {
            return c.Delete(ns, scope, *part, Left(end));
          });
          if (n.ok() && part == &owned) deleted += *n;
          if (!n.ok()) {
            absl::MutexLock lock(&err_mu);
            if (err.ok() || IsStaleEpoch(n.status())) err = n.status();
            break;
          }
        }
        return absl::OkStatus();
      }).IgnoreError();
      if (IsStaleEpoch(err)) return err;
      // A member that did not delete may hold a copy its rebalancer brings back: say so.
      if (!err.ok()) {
        return absl::Status(err.code(), absl::StrCat("Delete: not every member answered (",
                                                     err.message(), "); call it again"));
      }
      return deleted.load();
    });
  }

  absl::StatusOr<NodeStats> Stats(const CallOptions& call) override {
    const absl::Time end = End(call);
    std::shared_ptr<const MemberSet> set = membership_->Current();
    std::vector<absl::StatusOr<NodeStats>> per(set->members.size(),
                                               absl::UnavailableError("not tried"));
    RunParts(set->members.size(), [&](size_t i) {
      per[i] = WithNode(*set, static_cast<int>(i), end,
                        [&](GrpcStoreClient& c) { return c.Stats(Left(end)); });
      return absl::OkStatus();
    }).IgnoreError();
    NodeStats sum;
    bool any = false;
    for (const auto& r : per) {
      if (!r.ok()) continue;
      if (any)
        AddNodeStats(*r, &sum);
      else
        sum = *r;  // limits and data-plane fields of the first node that answered
      any = true;
    }
    if (!any) return absl::UnavailableError("Stats: no store node answered");
    sum.node_id = absl::StrCat("cluster:", options_.cluster_name);
    sum.cluster_mode = std::string(cluster::MembershipModeName(membership_->mode()));
    sum.epoch = set->epoch;
    sum.members = static_cast<uint32_t>(set->members.size());
    sum.etcd_connected =
        membership_->mode() == cluster::MembershipMode::kEtcd && membership_->connected();
    return sum;
  }

  absl::StatusOr<uint64_t> PauseSession(std::string_view session_id, bool to_cold,
                                        const CallOptions& call) override {
    return Broadcast(call, [&](GrpcStoreClient& c, const CallOptions& left) {
      return c.PauseSession(session_id, to_cold, left);
    });
  }
  absl::StatusOr<uint64_t> ResumeSession(std::string_view session_id,
                                         const CallOptions& call) override {
    return Broadcast(call, [&](GrpcStoreClient& c, const CallOptions& left) {
      return c.ResumeSession(session_id, left);
    });
  }
  absl::StatusOr<uint64_t> Prefetch(const Namespace& ns, std::string_view scope,
                                    std::span<const ChainHash> hashes, std::string_view session_id,
                                    const CallOptions& call) override {
    return Broadcast(call, [&](GrpcStoreClient& c, const CallOptions& left) {
      return c.Prefetch(ns, scope, hashes, session_id, left);
    });
  }

 private:
  absl::Time End(const CallOptions& call) const {
    return absl::Now() +
           (call.deadline > absl::ZeroDuration() ? call.deadline : options_.default_deadline);
  }
  static CallOptions Left(absl::Time end) {
    return {.deadline = std::max(absl::Milliseconds(1), end - absl::Now())};
  }

  // Runs op, and once more after a refresh of the member set if a node found its epoch stale.
  // UNAVAILABLE without running it while the set has no member (every node left).
  // Both attempts and the refresh share the call's one deadline (`op(end)`): a refresh that
  // runs out of it (etcd slow or gone) ends the call with DEADLINE_EXCEEDED.
  template <typename Op>
  auto WithFreshEpoch(const CallOptions& call, Op op) -> decltype(op(absl::Time())) {
    if (membership_->Current()->members.empty()) return NoMember();
    const absl::Time end = End(call);
    auto r = op(end);
    if (!r.ok() && IsStaleEpoch(r.status()) && absl::Now() < end) {
      const absl::Status refreshed = membership_->Refresh(end);
      if (absl::Now() >= end) {
        return absl::DeadlineExceededError(
            absl::StrCat(r.status().message(), "; the deadline passed re-reading the member set",
                         refreshed.ok() ? "" : ": ", refreshed.message()));
      }
      r = op(end);
    }
    return r;
  }

  // Runs fn on member `index` of `set` with the set's epoch, connecting by `end`. `cut_short`:
  // `end` is an attempt's (AttemptEnd), before the call's own.
  template <typename Fn>
  auto WithNode(const MemberSet& set, int index, absl::Time end, Fn fn, bool cut_short = false)
      -> decltype(fn(std::declval<GrpcStoreClient&>())) {
    const Member& m = set.members[index];
    absl::StatusOr<std::shared_ptr<GrpcStoreClient>> c = nodes_.Node(m, end);
    if (!c.ok()) return c.status();
    (*c)->set_epoch(set.epoch);
    auto r = fn(**c);
    nodes_.NoteResult(m, *c, r.ok() ? absl::OkStatus() : r.status(), cut_short);
    return r;
  }

  // One LookupEach per member with blocks in groups[member] (indexes into `hashes`), all
  // members at once from this thread (GrpcStoreClient::LookupEachOnNodes, which fills
  // out[i] where a node answered) once any not connected yet are connected, in parallel.
  // Then fn(groups[member], status) for each. Member m's call ends at AttemptEnd(call_end,
  // left[m]): the fewest candidates that remain for one of the blocks it is asked about.
  template <typename Fn>
  void LookupRound(const MemberSet& set, const std::vector<std::vector<size_t>>& groups,
                   const Namespace& ns, std::string_view scope, std::span<const ChainHash> hashes,
                   absl::Time call_end, std::span<const size_t> left, std::span<BlockLocation> out,
                   Fn fn) {
    std::vector<int> nodes;
    std::vector<absl::StatusOr<std::shared_ptr<GrpcStoreClient>>> clients;
    std::vector<size_t> connect;
    for (size_t m = 0; m < groups.size(); ++m) {
      if (groups[m].empty()) continue;
      auto known = nodes_.Known(set.members[m]);
      if (!known) connect.push_back(nodes.size());
      nodes.push_back(static_cast<int>(m));
      clients.push_back(known ? *known : absl::UnknownError("not connected"));
    }
    const absl::Time round_start = absl::Now();
    std::vector<absl::Time> end(nodes.size());
    for (size_t k = 0; k < nodes.size(); ++k) end[k] = AttemptEnd(call_end, left[nodes[k]]);
    if (!connect.empty()) {
      RunParts(connect.size(), [&](size_t p) {
        clients[connect[p]] = nodes_.Node(set.members[nodes[connect[p]]], end[connect[p]]);
        return absl::OkStatus();
      }).IgnoreError();
    }
    // A node whose lookup ran out of a share that connecting others had mostly used up is not
    // to blame for it: marked slow only with half its share left when the lookups went out.
    const absl::Time sent = absl::Now();
    std::vector<GrpcStoreClient::LookupEachWork> work(nodes.size());
    for (size_t k = 0; k < nodes.size(); ++k) {
      work[k].idx = &groups[nodes[k]];
      if (!clients[k].ok()) {
        work[k].status = clients[k].status();
        continue;
      }
      work[k].node = clients[k]->get();
      work[k].node->set_epoch(set.epoch);
      work[k].call = Left(end[k]);
    }
    GrpcStoreClient::LookupEachOnNodes(work, hashes, ns, scope, Left(call_end), out);
    for (size_t k = 0; k < nodes.size(); ++k) {
      if (clients[k].ok()) {
        const bool fair = (end[k] - sent) * 2 >= end[k] - round_start;
        nodes_.NoteResult(set.members[nodes[k]], *clients[k], work[k].status,
                          end[k] < call_end && fair);
      }
      fn(*work[k].idx, work[k].status);
    }
  }

  template <typename Fn>
  absl::StatusOr<uint64_t> Broadcast(const CallOptions& call, Fn fn) {
    const absl::Time end = End(call);
    std::shared_ptr<const MemberSet> set = membership_->Current();
    std::vector<absl::StatusOr<uint64_t>> per(set->members.size(), uint64_t{0});
    RunParts(set->members.size(), [&](size_t i) {
      per[i] = WithNode(*set, static_cast<int>(i), end,
                        [&](GrpcStoreClient& c) { return fn(c, Left(end)); });
      return absl::OkStatus();
    }).IgnoreError();
    uint64_t total = 0;
    absl::Status first;
    for (const auto& r : per) {
      if (r.ok())
        total += *r;
      else if (first.ok())
        first = r.status();
    }
    if (total == 0 && !first.ok()) return first;
    return total;
  }

  // The member sets before `current` (newest first) while blocks may still sit where they
  // placed them: each until kPreviousSetGrace after the set that replaced it came. Two joins
  // in a row leave a block at its owner under the set before both until it moves.
  std::vector<std::shared_ptr<const MemberSet>> RecentPrevious(const MemberSet& current) const {
    std::vector<std::shared_ptr<const MemberSet>> sets = membership_->PreviousSets();
    // A change since `current` was read makes it one of them: only those before it count.
    for (size_t k = 0; k < sets.size(); ++k) {
      if (sets[k].get() == &current) {
        sets.erase(sets.begin(), sets.begin() + static_cast<std::ptrdiff_t>(k + 1));
        break;
      }
    }
    const absl::Time now = absl::Now();
    absl::Time replaced = current.since;  // when the set at `kept` stopped placing blocks
    size_t kept = 0;
    while (kept < sets.size() && now - replaced <= kPreviousSetGrace) {
      replaced = sets[kept]->since;
      ++kept;
    }
    sets.resize(kept);
    return sets;
  }

  absl::Status NoMember() const {
    return absl::UnavailableError(
        absl::StrCat("cluster ", options_.cluster_name, ": no live store node"));
  }

  absl::StatusOr<LookupResult> LookupOnce(const Namespace& ns, std::string_view scope,
                                          std::span<const ChainHash> hashes, absl::Time end) {
    std::shared_ptr<const MemberSet> set = membership_->Current();
    if (set->members.empty()) return NoMember();  // the set may have emptied since the check
    const std::vector<std::shared_ptr<const MemberSet>> prev = RecentPrevious(*set);
    const cluster::ReadPlan plan = cluster::PlanReads(*set, prev);
    const int replicas = Replicas(*set);
    const size_t n = hashes.size();
    const std::vector<uint64_t>& seeds = plan.seeds;
    // Where each block was found (tier kUnknown: not yet); its prefix becomes the result.
    std::vector<BlockLocation> loc(n);
    auto found = [&](size_t i) { return loc[i].tier != Tier::kUnknown; };
    // A block's full list of candidates, built when it goes on past its first owner.
    std::vector<std::vector<int>> cand;
    std::vector<uint8_t> tried(n, 0);
    std::vector<bool> absent(n, false);  // a node that should hold it said it does not
    absl::Status fatal;
    CallVerdict verdict;
    // Round 1 asks every block's first owner; later rounds only go on where the answer
    // matters: blocks whose node did not answer, and the first block reported absent — or
    // every block reported absent shortly after a change of the member set (its new owner may
    // not have it yet), or once a block its first owner lacked turned up at another (the
    // owners' copies have drifted apart: evictions differ per node).
    bool wide = !prev.empty();
    const std::vector<bool> slow = nodes_.SlowNow(set->members);
    const bool any_slow = std::find(slow.begin(), slow.end(), true) != slow.end();
    // (Each block's list walked twice, past owners included, and a few rounds to spare.)
    const int rounds = 2 * (replicas + static_cast<int>(prev.size())) + 4;
    for (int round = 0; round < rounds; ++round) {
      std::vector<std::vector<size_t>> groups(set->members.size());
      for (auto& g : groups) g.reserve(round == 0 ? n / groups.size() + 64 : 0);
      bool any = false;
      // Per member: the fewest candidates left for one block it is asked about.
      std::vector<size_t> left(set->members.size(), SIZE_MAX);
      size_t first_absent = n;
      for (size_t i = 0; i < n; ++i) {
        if (!found(i) && absent[i]) {
          first_absent = i;
          break;
        }
      }
      for (size_t i = 0; i < n; ++i) {
        if (found(i)) continue;
        if ((round > 0 && absent[i] && i != first_absent) || i > first_absent) {
          if (!wide) continue;
        }
        int node = tried[i] == 0 ? cluster::FirstOwner(seeds, hashes[i]) : -1;
        if (node >= 0 && !slow[node]) {
          left[node] = std::min(left[node], std::min<size_t>(replicas, set->members.size()));
        } else {
          // Past its first owner, or that owner is slow: the block's whole list, slow last.
          if (cand.empty()) cand.resize(n);
          if (cand[i].empty()) {
            cand[i] = cluster::ReadCandidates(plan, hashes[i], replicas);
            if (any_slow) SlowLast(cand[i], slow);
          }
          node = tried[i] < cand[i].size() ? cand[i][tried[i]] : -1;
          if (node >= 0) left[node] = std::min(left[node], DistinctLeft(cand[i], tried[i], slow));
        }
        if (node < 0) continue;
        groups[node].push_back(i);
        any = true;
      }
      if (!any) break;
      LookupRound(*set, groups, ns, scope, hashes, end, left, loc,
                  [&](const std::vector<size_t>& idx, const absl::Status& s) {
                    for (size_t i : idx) {
                      ++tried[i];
                      if (s.ok() && !found(i)) absent[i] = true;
                    }
                    verdict.Note(s);
                    if (!s.ok() &&
                        (IsStaleEpoch(s) || (!TryNextReplica(s) && !CallVerdict::NodeRefused(s)))) {
                      fatal = s;
                    }
                  });
      if (!fatal.ok()) return fatal;
      for (size_t i = 0; i < n && !wide; ++i) wide = found(i) && absent[i];
    }
    if (absl::Status s = verdict.FinalAnswered(); !s.ok()) return s;
    LookupResult out;
    while (out.matched_blocks < n && found(out.matched_blocks)) ++out.matched_blocks;
    loc.resize(out.matched_blocks);
    out.blocks = std::move(loc);
    return out;
  }

  absl::StatusOr<PutResult> PutOnce(const Namespace& ns, std::string_view scope,
                                    std::span<const BlockWrite> blocks, absl::Time end,
                                    const PutOptions& put) {
    std::shared_ptr<const MemberSet> set = membership_->Current();
    const size_t n = blocks.size();
    std::map<int, std::vector<size_t>> groups;
    std::vector<int> want(n);
    const std::vector<uint64_t> seeds = cluster::RendezvousSeeds(set->members);
    const int replicas = Replicas(*set);
    const int quorum = Quorum(replicas);
    for (size_t i = 0; i < n; ++i) {
      std::vector<int> owners = cluster::Owners(set->members, seeds, blocks[i].hash, replicas);
      want[i] = std::min<int>(quorum, static_cast<int>(owners.size()));
      for (int o : owners) groups[o].push_back(i);
    }
    std::vector<int> stored(n, 0), existed(n, 0);
    std::vector<absl::Status> error(n);
    absl::Mutex mu;
    CallVerdict verdict;
    ForEachGroup(groups, [&](int node, const std::vector<size_t>& idx) {
      std::vector<BlockWrite> mine;
      for (size_t i : idx) mine.push_back(blocks[i]);
      absl::StatusOr<PutResult> r = WithNode(*set, node, end, [&](GrpcStoreClient& c) {
        return client::PutSettled(c, ns, scope, mine, end, put);
      });
      absl::MutexLock lock(&mu);
      verdict.Note(r.status());
      for (size_t k = 0; k < idx.size(); ++k) {
        size_t i = idx[k];
        absl::Status st = r.ok() ? r->blocks[k] : r.status();
        if (st.ok()) {
          ++stored[i];
        } else if (st.code() == absl::StatusCode::kAlreadyExists && !IsBlockBeingWritten(st)) {
          ++existed[i];  // a copy being written by another put is not one yet
        } else if (error[i].ok()) {
          error[i] = IsBlockBeingWritten(st)
                         ? absl::DeadlineExceededError("another put was still writing the block")
                         : st;
        }
      }
    });
    if (absl::Status s = verdict.Final(); !s.ok()) return s;
    PutResult out;
    out.blocks.resize(n);
    for (size_t i = 0; i < n; ++i) {
      if (want[i] == 0) {
        out.blocks[i] = absl::UnavailableError("no live store node owns this block");
      } else if (stored[i] + existed[i] >= want[i]) {
        out.blocks[i] =
            stored[i] > 0 ? absl::OkStatus() : absl::AlreadyExistsError("stored before");
        if (stored[i] > 0)
          ++out.stored;
        else
          ++out.already_present;
      } else {
        out.blocks[i] = absl::Status(
            error[i].code(), absl::StrCat(stored[i] + existed[i], " of ", want[i],
                                          " replicas stored the block: ", error[i].message()));
      }
    }
    return out;
  }

  absl::StatusOr<GetResult> GetOnce(const Namespace& ns, std::string_view scope,
                                    std::span<const BlockRead> blocks, absl::Time end,
                                    const GetOptions& get, bool* late) {
    std::shared_ptr<const MemberSet> set = membership_->Current();
    const std::vector<std::shared_ptr<const MemberSet>> prev = RecentPrevious(*set);
    const size_t n = blocks.size();
    GetResult out;
    out.blocks.assign(n, absl::NotFoundError("block not stored"));
    out.sizes.assign(n, 0);
    out.checksums.assign(n, 0);
    const int replicas = Replicas(*set);
    std::vector<std::vector<int>> cand(n);
    const std::vector<bool> slow = nodes_.SlowNow(set->members);
    const bool any_slow = std::find(slow.begin(), slow.end(), true) != slow.end();
    const cluster::ReadPlan plan = cluster::PlanReads(*set, prev);
    for (size_t i = 0; i < n; ++i) {
      cand[i] = cluster::ReadCandidates(plan, blocks[i].hash, replicas);
      if (any_slow) SlowLast(cand[i], slow);
    }
    std::vector<size_t> tried(n, 0);
    std::vector<bool> done(n, false);
    std::vector<std::vector<int>> lacking(n);  // owners that answered NOT_FOUND
    absl::Mutex mu;
    CallVerdict verdict;
    for (;;) {
      std::map<int, std::vector<size_t>> groups;
      std::map<int, size_t> left;  // the fewest candidates left for one block of each group
      for (size_t i = 0; i < n; ++i) {
        if (done[i] || tried[i] >= cand[i].size()) continue;
        const int node = cand[i][tried[i]];
        groups[node].push_back(i);
        const size_t mine = DistinctLeft(cand[i], tried[i], slow);
        auto [at, fresh] = left.emplace(node, mine);
        if (!fresh) at->second = std::min(at->second, mine);
      }
      if (groups.empty() || absl::Now() >= end) break;
      ForEachGroup(groups, [&](int node, const std::vector<size_t>& idx) {
        std::vector<BlockRead> mine;
        for (size_t i : idx) mine.push_back(blocks[i]);
        const absl::Time stop = AttemptEnd(end, left.at(node));
        absl::StatusOr<GetResult> r = WithNode(
            *set, node, stop,
            [&](GrpcStoreClient& c) { return c.Get(ns, scope, mine, Left(stop), get); },
            stop < end);
        absl::MutexLock lock(&mu);
        verdict.Note(r.status());
        if (r.ok() && r->may_land_late) *late = true;
        for (size_t k = 0; k < idx.size(); ++k) {
          size_t i = idx[k];
          ++tried[i];
          absl::Status st = r.ok() ? r->blocks[k] : r.status();
          if (st.ok()) {
            done[i] = true;
            out.blocks[i] = absl::OkStatus();
            out.sizes[i] = r->sizes[k];
            out.checksums[i] = r->checksums[k];
            continue;
          }
          // An attempt given up on (cut short for the next replica, or the node stalled) may
          // still write into the buffer after another replica's bytes were verified there.
          *late |= MayLandLate(st);
          if (st.code() == absl::StatusCode::kNotFound) {
            // Read-repair puts to current owners only. Their tries come first, unless slow
            // ones were moved back: then the owners are computed.
            const bool owner =
                !any_slow ? tried[i] <= static_cast<size_t>(replicas)
                          : std::ranges::count(
                                cluster::Owners(set->members, blocks[i].hash, replicas), node) > 0;
            if (owner && std::ranges::count(lacking[i], node) == 0) lacking[i].push_back(node);
          } else if (!TryNextReplica(st) && !(!r.ok() && CallVerdict::NodeRefused(st))) {
            done[i] = true;  // e.g. OUT_OF_RANGE: the buffer is too small everywhere
          }
          // Keep the most telling error: anything beats "not stored" from a node that
          // cannot have had it.
          if (out.blocks[i].code() == absl::StatusCode::kNotFound ||
              st.code() != absl::StatusCode::kNotFound) {
            out.blocks[i] = st;
          }
        }
      });
      if (!verdict.stale().ok()) return verdict.stale();
    }
    if (absl::Status s = verdict.Final(); !s.ok()) return s;
    for (size_t i = 0; i < n; ++i) out.fetched += out.blocks[i].ok() ? 1 : 0;
    ReadRepair(ns, scope, blocks, out, lacking, *set, end);
    return out;
  }

  // Copies blocks that were found away from owners which lack them back to those owners.
  void ReadRepair(const Namespace& ns, std::string_view scope, std::span<const BlockRead> blocks,
                  const GetResult& got, const std::vector<std::vector<int>>& lacking,
                  const MemberSet& set, absl::Time end) {
    std::map<int, std::vector<size_t>> groups;
    for (size_t i = 0; i < blocks.size(); ++i) {
      if (!got.blocks[i].ok()) continue;
      for (int node : lacking[i]) groups[node].push_back(i);
    }
    ForEachGroup(groups, [&](int node, const std::vector<size_t>& idx) {
      std::vector<BlockWrite> writes;
      // With the checksum the bytes were verified against: a buffer changed since (a late
      // write) is refused by the owner, not stored there under a checksum of its own.
      for (size_t i : idx) {
        writes.push_back({.hash = blocks[i].hash,
                          .data = blocks[i].buffer,
                          .size = got.sizes[i],
                          .checksum = got.checksums[i]});
      }
      WithNode(set, node, end, [&](GrpcStoreClient& c) {
        return c.Put(ns, scope, writes, Left(end), {.copy = true});
      }).IgnoreError();
    });
  }

  ClientOptions options_;
  // R for a member set: ClientOptions::replicas, or unset, the nodes' replication factor (what
  // their rebalancers keep, cluster::ReplicasKept), followed as members come and go; each call
  // uses that of the set it routes by. W: write_quorum, at most R (0: R).
  int Replicas(const MemberSet& set) const {
    return options_.replicas > 0 ? options_.replicas
                                 : std::max(1, cluster::ReplicasKept(set.members, 0));
  }
  int Quorum(int replicas) const {
    return options_.write_quorum <= 0 ? replicas : std::min(options_.write_quorum, replicas);
  }
  // What WarnOfDisagreement logged last, and the nodes: before membership_, whose thread
  // calls back into both (it stops first).
  absl::Mutex warned_mu_;
  std::string warned_ ABSL_GUARDED_BY(warned_mu_);
  ClusterNodes nodes_;
  std::unique_ptr<cluster::Membership> membership_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<StoreClient>> ConnectCluster(const ClientOptions& options) {
  if (absl::Status s = CheckClusterOptions(options); !s.ok()) return s;
  auto client = std::make_unique<ClusterStoreClient>(options);
  if (absl::Status s = client->Start(); !s.ok()) return s;
  return std::unique_ptr<StoreClient>(std::move(client));
}

}  // namespace strata::client::internal
