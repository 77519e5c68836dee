#include "rebalancer.h"

#include <algorithm>
#include <utility>
#include <vector>

#include "spdlog/spdlog.h"

namespace strata::storenode {
namespace {

// Lease of the local read that feeds a batch's copies.
constexpr uint64_t kReadLeaseMs = 30000;
// A peer that could not be reached is not tried again for this long.
constexpr absl::Duration kPeerBackoff = absl::Seconds(2);
// Keys a pass takes from its walk at a time, in batches.
constexpr size_t kWalkBatches = 16;

}  // namespace

Rebalancer::Rebalancer(RebalancerOptions options, TieredStore* store,
                       cluster::Membership* membership, std::string self_id)
    : options_(std::move(options)),
      store_(store),
      membership_(membership),
      self_id_(std::move(self_id)) {
  OnMemberSet(*membership_->Current());  // the set of the first pass (kicked_ from the start)
  thread_ = std::thread([this] { Loop(); });
}

void Rebalancer::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

bool Rebalancer::Stopping() const {
  absl::MutexLock lock(&mu_);
  return stop_;
}

void Rebalancer::Kick() {
  absl::MutexLock lock(&mu_);
  const absl::Time now = absl::Now();
  if (!kicked_) first_kick_at_ = now;
  kicked_ = true;
  kicked_at_ = now;
}

void Rebalancer::OnMemberSet(const cluster::MemberSet& set) {
  std::vector<std::tuple<std::string, std::string, uint32_t>> placed_by;
  std::vector<std::string> addresses;
  placed_by.reserve(set.members.size());
  addresses.reserve(set.members.size());
  for (const cluster::Member& m : set.members) {
    placed_by.emplace_back(m.id, m.zone, m.placement);
    addresses.push_back(m.address);
  }
  const int replicas = cluster::ReplicasKept(set.members, options_.replicas);
  {
    absl::MutexLock lock(&mu_);
    const bool placed_alike = placed_by == placed_by_ && replicas == replicas_kept_;
    // A member reached at another address moves no block, but a pass under way would go on
    // calling it at the old one (striking it, counting its blocks unknown): that pass ends
    // and the next one dials the new address.
    if (placed_alike && addresses == addresses_) return;
    if (!placed_alike && replicas_kept_ != 0) ++progress_.placement_changes;  // not at start
    placed_by_ = std::move(placed_by);
    addresses_ = std::move(addresses);
    replicas_kept_ = replicas;
  }
  Kick();
}

RebalanceProgress Rebalancer::progress() const {
  absl::MutexLock lock(&mu_);
  return progress_;
}

void Rebalancer::Loop() {
  absl::Time last_pass = absl::Now();
  for (;;) {
    {
      absl::MutexLock lock(&mu_);
      // Wake for a kick that has settled, the periodic pass, or stop. No periodic pass while
      // a kick settles: it would move blocks under a set that is still changing. Changes that
      // keep coming (a member flapping) hold passes off for max(interval, settle) at most.
      auto due = [this, last_pass]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
        const absl::Time now = absl::Now();
        if (stop_) return true;
        if (kicked_) {
          return now - kicked_at_ >= options_.settle ||
                 now - first_kick_at_ >= std::max(options_.interval, options_.settle);
        }
        return now - last_pass >= options_.interval;
      };
      while (!due()) mu_.AwaitWithTimeout(absl::Condition(&stop_), absl::Milliseconds(100));
      if (stop_) return;
      kicked_ = false;
    }
    Pass();
    last_pass = absl::Now();
  }
}

void Rebalancer::Pass() {
  std::shared_ptr<const cluster::MemberSet> set = membership_->Current();
  if (set->Find(self_id_) < 0) return;  // left the cluster (draining): nothing to place
  // Members of another placement scheme own other blocks: moving blocks now would hand them
  // back and forth. Wait (no pass counted) until every member places as we do; the node logs
  // who differs (docs/design/cluster.md, "Placement").
  if (!cluster::MembersPlacingOtherwise(set->members).empty()) return;
  // The largest count any member keeps: the same for every node that sees this set.
  const int replicas = cluster::ReplicasKept(set->members, options_.replicas);
  // Clients of members that left go (ids come and go with pods).
  std::erase_if(peers_, [&](const auto& p) { return set->Find(p.first) < 0; });
  // Walk the keys (TieredStore::NextKeys) rather than copy them all: a disk tier may hold
  // tens of millions. A pass examines as many blocks as the node holds when it starts, from
  // wherever the walk is, wrapping around at its end; a pass cut short by a newer member set
  // leaves the walk where it is, and the next pass goes on from there under the new set.
  // Restarted from the first key instead, passes under steady churn never reached the last.
  // `pending` counts down the pass's blocks.
  const TieredStats held = store_->Stats();
  const uint64_t total =
      held.warm.blocks + (held.cool ? held.cool->blocks : 0) + (held.cold ? held.cold->blocks : 0);
  uint64_t left = total;
  {
    absl::MutexLock lock(&mu_);
    progress_.pending = std::max<uint64_t>(left, 1);
    progress_.under_replicated = 0;
  }
  std::vector<BlockKey> keys;
  std::vector<ChainHash> hashes;
  bool wrapped = false;  // the walk started over in this pass
  while (left > 0) {
    keys.clear();
    if (!store_->NextKeys(&walk_, options_.batch * kWalkBatches, &keys)) {
      if (wrapped) break;  // nothing (left) to walk
      walk_ = {};
      wrapped = true;
      continue;
    }
    // Batches of one namespace and scope: the walk gives keys in runs of each.
    size_t begin = 0;
    while (begin < keys.size()) {
      size_t end = begin;
      hashes.clear();
      while (end < keys.size() && hashes.size() < options_.batch &&
             keys[end].namespace_id == keys[begin].namespace_id &&
             keys[end].scope == keys[begin].scope) {
        hashes.push_back(keys[end].hash);
        ++end;
      }
      Batch(*set, replicas, keys[begin].namespace_id, keys[begin].scope, hashes);
      left -= std::min<uint64_t>(left, end - begin);
      absl::MutexLock lock(&mu_);
      progress_.scanned += end - begin;
      progress_.pending = std::max<uint64_t>(left, 1);  // 0 only when idle
      if (stop_ || kicked_) {
        // A newer member set: the next pass goes on from the next batch with it. (The keys
        // of this walk step not yet batched are walked again in a later lap.)
        progress_.pending = 0;
        return;
      }
      begin = end;
    }
  }
  absl::MutexLock lock(&mu_);
  progress_.pending = 0;
  ++progress_.passes;
  progress_.epoch = set->epoch;
}

void Rebalancer::Batch(const cluster::MemberSet& set, int replicas, NamespaceId ns,
                       const std::string& scope, std::span<const ChainHash> hashes) {
  const int self = set.Find(self_id_);
  // owners[i]: member indexes owning hashes[i]; which other owners must be asked.
  std::vector<std::vector<int>> owners(hashes.size());
  std::map<int, std::vector<size_t>> ask;  // peer → blocks it should hold
  std::vector<bool> mine(hashes.size(), false);
  const std::vector<uint64_t> seeds = cluster::RendezvousSeeds(set.members);
  for (size_t i = 0; i < hashes.size(); ++i) {
    owners[i] = cluster::Owners(set.members, seeds, hashes[i], replicas);
    for (int o : owners[i]) {
      if (o == self)
        mine[i] = true;
      else
        ask[o].push_back(i);
    }
  }
  // Which owners lack which blocks.
  std::map<int, std::vector<size_t>> lacking;
  std::vector<int> confirmed(hashes.size(), 0);  // other owners known to hold the block
  std::vector<bool> unknown(hashes.size(), false);
  for (const auto& [peer, idx] : ask) {
    if (Stopping()) {  // no more calls, each up to call_timeout: unknown, so nothing leaves
      for (size_t i : idx) unknown[i] = true;
      continue;
    }
    client::Namespace peer_ns;
    bool exact = false;
    client::StoreClient* c = Peer(set.members[peer], ns, &peer_ns, &exact);
    // A peer from before exact-scope lookups answers a tenant's from `shared` first: its
    // "present" may be a shared copy, so nothing is handed over to it (an absent is sure).
    const bool trust_present = exact || scope == kSharedScope;
    std::vector<ChainHash> subset;
    for (size_t i : idx) subset.push_back(hashes[i]);
    absl::StatusOr<std::vector<client::BlockLocation>> r =
        c == nullptr ? absl::UnavailableError("peer unreachable")
                     : c->LookupEach(peer_ns, scope, subset, {.deadline = options_.call_timeout});
    if (c != nullptr) NoteCall(set.members[peer], r.status());
    for (size_t k = 0; k < idx.size(); ++k) {
      if (!r.ok()) {
        unknown[idx[k]] = true;
      } else if ((*r)[k].tier == client::Tier::kUnknown || (*r)[k].tier == client::Tier::kHot) {
        // kHot: only an agent's GPU holds it, by the peer's directory, until its entry lapses;
        // not a stored copy to hand over to.
        lacking[peer].push_back(idx[k]);
      } else {
        ++confirmed[idx[k]];
        if (!trust_present) unknown[idx[k]] = true;
      }
    }
  }
  uint64_t under = 0;
  for (size_t i = 0; i < hashes.size(); ++i) {
    const int copies = confirmed[i] + (mine[i] ? 1 : 0);
    if (copies < static_cast<int>(owners[i].size())) ++under;
  }
  // Copy what is lacking, from a local read of those blocks.
  uint64_t copied = 0, failed = 0;
  std::vector<bool> copy_failed(hashes.size(), false);
  if (!lacking.empty()) {
    std::vector<size_t> need;
    for (const auto& [peer, idx] : lacking) need.insert(need.end(), idx.begin(), idx.end());
    std::sort(need.begin(), need.end());
    need.erase(std::unique(need.begin(), need.end()), need.end());
    // Read in rounds of at most batch_bytes (a block beyond it waits for the next round):
    // what a batch holds in memory is bounded by configuration, not by 64 blocks of the
    // largest size (1 GiB at defaults), and once more in the puts' requests.
    std::map<size_t, size_t> slot;  // batch index → position in need
    for (size_t k = 0; k < need.size(); ++k) slot[need[k]] = k;
    std::vector<bool> read(need.size(), false);  // read (or gone) in an earlier round
    // Puts one round's blocks (read into `bytes`, `at` their place in it) to the owners
    // lacking them.
    auto copy_round = [&](const WarmTier::GetResult& got, const std::vector<int>& at,
                          const std::vector<std::vector<uint8_t>>& bytes) {
      for (const auto& [peer, idx] : lacking) {
        std::vector<size_t> mine;  // this round's blocks of idx
        for (size_t i : idx) {
          if (at[slot[i]] >= 0) mine.push_back(i);
        }
        if (Stopping()) {
          for (size_t i : mine) copy_failed[i] = true;
          continue;
        }
        client::Namespace peer_ns;
        client::StoreClient* c = Peer(set.members[peer], ns, &peer_ns);
        std::vector<client::BlockWrite> writes;
        std::vector<size_t> which;
        for (size_t i : mine) {
          const size_t k = static_cast<size_t>(at[slot[i]]);
          if (!got.status[k].ok()) continue;  // gone meanwhile (evicted, deleted)
          // Depth and importance as put here: the owner's policies rank the copy as this
          // node ranked the block (a copy without them ranks as a chain's root).
          writes.push_back({hashes[i], bytes[k].data(), bytes[k].size(), got.blocks[k].depth,
                            got.blocks[k].importance});
          which.push_back(i);
        }
        if (writes.empty()) continue;
        absl::StatusOr<client::PutResult> put =
            c == nullptr ? absl::UnavailableError("peer unreachable")
                         : c->Put(peer_ns, scope, writes, {.deadline = options_.call_timeout},
                                  {.copy = true});
        if (c != nullptr) NoteCall(set.members[peer], put.status());
        for (size_t k = 0; k < which.size(); ++k) {
          const absl::Status st = put.ok() ? put->blocks[k] : put.status();
          if (IsBlockBeingWritten(st)) {
            // Another put holds the block's reservation there and may yet give up: not a
            // copy, so no hand-over this pass (the next one asks again).
            copy_failed[which[k]] = true;
          } else if (st.ok() || st.code() == absl::StatusCode::kAlreadyExists) {
            ++copied;
            ++confirmed[which[k]];
          } else if (put.ok() && (st.code() == absl::StatusCode::kFailedPrecondition ||
                                  st.code() == absl::StatusCode::kAborted)) {
            // A writer deleted it there lately (docs/design/cluster.md, "Deletes are
            // remembered"): not a failure, and no hand-over either.
            copy_failed[which[k]] = true;
          } else {
            ++failed;
            copy_failed[which[k]] = true;
          }
        }
      }
    };
    for (bool more = true; more;) {
      std::vector<size_t> round;             // positions in need
      std::vector<int> at(need.size(), -1);  // position in need → position in round
      std::vector<ChainHash> want;
      for (size_t k = 0; k < need.size(); ++k) {
        if (read[k]) continue;
        at[k] = static_cast<int>(round.size());
        round.push_back(k);
        want.push_back(hashes[need[k]]);
      }
      if (round.empty()) break;
      std::vector<std::vector<uint8_t>> bytes(want.size());
      WarmTier::GetResult got = store_->BeginGet(
          ns, scope, want, kReadLeaseMs,
          [&bytes](size_t index, uint64_t size) {
            bytes[index].resize(size);
            return bytes[index].data();
          },
          options_.batch_bytes, /*promote=*/false);
      more = false;
      bool settled = false;  // some block read, or found gone, in this round
      for (size_t j = 0; j < round.size(); ++j) {
        if (got.status[j].code() == absl::StatusCode::kResourceExhausted) {
          more = true;  // past this round's bytes: the next round
        } else {
          read[round[j]] = true;
          settled = true;
        }
      }
      // A round that settled nothing would not do better next time; one while stopping
      // makes no peer call (copy_round marks its blocks failed), nor does the next.
      more = more && settled && !Stopping();
      copy_round(got, at, bytes);
      if (got.lease_id != 0) store_->EndGet(got.lease_id).IgnoreError();
    }
  }
  // Hand-over: blocks this node does not own leave once every owner holds them.
  std::vector<ChainHash> drop;
  for (size_t i = 0; i < hashes.size(); ++i) {
    if (mine[i] || unknown[i] || copy_failed[i] || owners[i].empty()) continue;
    if (confirmed[i] >= static_cast<int>(owners[i].size())) drop.push_back(hashes[i]);
  }
  const uint64_t dropped = drop.empty() ? 0 : store_->Delete(ns, scope, drop);
  absl::MutexLock lock(&mu_);
  progress_.copied += copied;
  progress_.failed += failed;
  progress_.dropped += dropped;
  progress_.under_replicated += under;
}

void Rebalancer::NoteCall(const cluster::Member& m, const absl::Status& s) {
  auto it = peers_.find(m.id);
  if (it == peers_.end()) return;
  PeerEntry& e = it->second;
  if (s.code() != absl::StatusCode::kDeadlineExceeded &&
      s.code() != absl::StatusCode::kUnavailable) {
    e.strikes = 0;
    return;
  }
  const absl::Duration wait = Strike(e);
  spdlog::warn("rebalancer: peer {} at {}: {}; skipped for {}", m.id, m.address, s.ToString(),
               absl::FormatDuration(wait));
}

absl::Duration Rebalancer::Strike(PeerEntry& e) {
  const absl::Duration wait =
      std::min(kPeerBackoff * (1 << std::min(e.strikes, 5)), absl::Minutes(1));
  ++e.strikes;
  e.client.reset();
  e.namespaces.clear();
  e.retry_after = absl::Now() + wait;
  return wait;
}

client::StoreClient* Rebalancer::Peer(const cluster::Member& m, NamespaceId ns,
                                      client::Namespace* out_ns, bool* exact) {
  PeerEntry& e = peers_[m.id];
  if (e.address != m.address) e = PeerEntry{.address = m.address};
  if (e.client == nullptr) {
    if (absl::Now() < e.retry_after) return nullptr;
    client::ClientOptions o;
    o.address = m.address;
    o.data_plane = client::ClientOptions::DataPlane::kInline;
    // "Does the peer hold this scope's copy?", not "may this scope read it there?": a tenant's
    // block must not count as held because the peer has it in `shared`.
    o.exact_scope_lookups = true;
    o.default_deadline = options_.call_timeout;
    o.token = options_.token;
    o.tls_ca = options_.tls_ca;
    o.tls_cert = options_.tls_cert;
    o.tls_key = options_.tls_key;
    absl::StatusOr<std::unique_ptr<client::StoreClient>> c = client::StoreClient::Connect(o);
    if (!c.ok()) {
      spdlog::debug("rebalancer: peer {} at {}: {}", m.id, m.address, c.status().ToString());
      Strike(e);
      return nullptr;
    }
    e.client = std::move(*c);
  }
  // Asked again each minute: a peer upgraded (or rolled back) in place keeps its address,
  // and a Stats refused under load must not leave it untrusted for good.
  if (exact != nullptr && absl::Now() - e.exact_checked >= absl::Minutes(1)) {
    absl::StatusOr<client::NodeStats> stats = e.client->Stats();
    e.exact = stats.ok() && stats->exact_scope_lookups;
    e.exact_checked = stats.ok() ? absl::Now() : absl::InfinitePast();
  }
  if (exact != nullptr) *exact = e.exact;
  auto it = e.namespaces.find(ns);
  if (it == e.namespaces.end()) {
    absl::StatusOr<NamespaceSpec> spec = store_->GetNamespace(ns);
    if (!spec.ok()) return nullptr;
    absl::StatusOr<client::Namespace> registered = e.client->RegisterNamespace(*spec);
    if (!registered.ok()) {
      Strike(e);
      return nullptr;
    }
    it = e.namespaces.emplace(ns, *registered).first;
  }
  *out_ns = it->second;
  return e.client.get();
}

}  // namespace strata::storenode
