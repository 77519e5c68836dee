// The load side of the agent (agent.h: Load, MatchedBlocks): one lookup for the prefix, then
// each block from a peer agent that published it (when prefer_peers) or from the store, through
// the load region of staging, scattered into the engine's slots. What a peer cannot serve
// (gone, evicted, failed checksum) is fetched from the store instead.
#include <algorithm>
#include <cstring>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "agent_impl.h"
#include "spdlog/spdlog.h"
#include "strata/common/checksum.h"

namespace strata::gpu_agent {
namespace {
// How long after a Get into the load region timed out its blocks are checked again after the
// scatter. A node stalled with a copy queued delivers it when it runs again (usually within a
// second); this is a margin, not a bound: shared memory is for nodes the agent trusts on its
// own host.
constexpr absl::Duration kLateWriteWindow = absl::Seconds(60);
}  // namespace

absl::StatusOr<size_t> GpuAgentImpl::MatchedBlocks(std::span<const ChainHash> prefix) {
  if (engine_ == nullptr) return absl::FailedPreconditionError("no KV pool registered");
  absl::StatusOr<client::LookupResult> r =
      client_->Lookup(ns_, scope_, prefix, client::CallOptions{options_.call_deadline});
  if (!r.ok()) return r.status();
  return r->matched_blocks;
}

absl::StatusOr<std::shared_ptr<LoadHandle>> GpuAgentImpl::Load(
    std::span<const ChainHash> prefix, std::span<const uint32_t> destinations) {
  if (prefix.size() != destinations.size()) {
    return absl::InvalidArgumentError(absl::StrCat("destinations: ", destinations.size(),
                                                   " slots for ", prefix.size(), " blocks"));
  }
  if (absl::Status s = CheckSlots(destinations); !s.ok()) return s;
  std::vector<uint32_t> sorted(destinations.begin(), destinations.end());
  std::sort(sorted.begin(), sorted.end());
  if (auto twice = std::adjacent_find(sorted.begin(), sorted.end()); twice != sorted.end()) {
    // Two blocks scattered into one slot would leave a mix of both, each reported loaded.
    return absl::InvalidArgumentError(absl::StrCat("destinations: slot ", *twice, " named twice"));
  }
  auto handle = std::make_shared<LoadHandle>();
  handle->blocks_.resize(prefix.size());
  absl::MutexLock lock(&mu_);
  // The slots are about to hold other blocks: what they held is gone, as on a remap. Else a
  // peer asking for the old hash would be served the new bytes (with a checksum of what it
  // gathered, so it passes), and a pending offload would store them under the old hash. A
  // slot being copied out (offload gather, peer read) stays intact until that copy ends.
  auto idle = [&] {
    return std::none_of(destinations.begin(), destinations.end(),
                        [&](uint32_t slot) { return busy_.contains(slot); });
  };
  mu_.Await(absl::Condition(&idle));
  const uint64_t id = next_load_++;
  for (uint32_t slot : destinations) {
    if (auto it = blocks_.find(slot); it != blocks_.end()) {
      Forget(slot, it->second);
      blocks_.erase(it);
    }
    load_targets_[slot] = id;
  }
  loads_.push_back({id, std::vector<ChainHash>(prefix.begin(), prefix.end()),
                    std::vector<uint32_t>(destinations.begin(), destinations.end()), handle});
  return handle;
}

void GpuAgentImpl::LoadLoop() {
  while (true) {
    LoadJob job;
    bool stopping;
    {
      absl::MutexLock lock(&mu_);
      auto work = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stop_ || !loads_.empty(); };
      mu_.Await(absl::Condition(&work));
      if (loads_.empty()) break;  // stopping
      job = std::move(loads_.front());
      loads_.pop_front();
      stopping = stop_;
    }
    if (stopping) {
      // Shutting down: loads still queued end at once, each block CANCELLED, rather than
      // each waiting on the network.
      for (BlockLoad& b : job.handle->blocks_) b.status = absl::CancelledError("agent stopping");
    } else {
      RunLoad(job);
    }
    {
      absl::MutexLock lock(&mu_);
      for (uint32_t slot : job.destinations) {
        auto it = load_targets_.find(slot);
        if (it != load_targets_.end() && it->second == job.id) load_targets_.erase(it);
      }
    }
    job.handle->done_.store(true, std::memory_order_release);
  }
}

void GpuAgentImpl::RunLoad(LoadJob& job) {
  std::vector<BlockLoad>& out = job.handle->blocks_;
  if (job.prefix.empty()) return;
  std::vector<size_t> every(job.destinations.size());
  std::iota(every.begin(), every.end(), size_t{0});
  if (TargetedSlots(job, every).empty()) {
    // The engine freed every slot (OnBlocksFreed) while the load waited: nothing to ask for.
    for (BlockLoad& b : out) b.status = absl::CancelledError("slot freed before the load ran");
    return;
  }
  absl::StatusOr<client::LookupResult> found =
      client_->Lookup(ns_, scope_, job.prefix, client::CallOptions{options_.call_deadline});
  if (!found.ok()) {
    for (BlockLoad& b : out) b.status = found.status();
    return;
  }
  // Blocks past the stored prefix are useless to the engine (it recomputes from the first gap).
  for (size_t i = found->matched_blocks; i < out.size(); ++i) {
    out[i].status = absl::NotFoundError("not stored (past the longest stored prefix)");
  }
  std::map<PeerKey, std::vector<size_t>> by_peer;
  std::vector<size_t> from_store;
  // The peer each block is read from (null: the store): of the agents the directory lists,
  // not this one, and one not found unreachable lately where there is such (the entries of a
  // dead agent live until their TTL; until 2026-11-29 only the first listed was tried).
  std::vector<const client::PeerLocation*> source(found->matched_blocks, nullptr);
  std::map<PeerKey, bool> down;  // asked once per location, not once per block
  for (size_t i = 0; i < found->matched_blocks; ++i) {
    const client::BlockLocation& loc = found->blocks[i];
    if (!options_.prefer_peers && loc.tier != client::Tier::kHot) continue;
    for (const client::PeerLocation& at : loc.peers) {
      if (at.address == peer_address_) continue;
      if (source[i] == nullptr) source[i] = &at;  // the first, should every one be down
      const PeerKey key{at.address, at.token};
      auto [known, fresh] = down.try_emplace(key, false);
      if (fresh) known->second = RecentlyUnreachable(key);
      if (!known->second) {
        source[i] = &at;
        break;
      }
    }
  }
  // One token per peer address in a load: right after the peer rotated its token, entries may
  // carry the old and the new one (it serves both for a while), and a client per token would
  // replace the other's at every load. The one a cached client uses wins, else the first.
  std::map<std::string, std::string> token_at;
  for (size_t i = 0; i < found->matched_blocks; ++i) {
    if (source[i] == nullptr) continue;
    const client::PeerLocation& at = *source[i];
    auto [chosen, fresh] = token_at.emplace(at.address, at.token);
    if (!fresh && chosen->second != at.token && HasPeerClient({at.address, at.token})) {
      chosen->second = at.token;
    }
  }
  for (size_t i = 0; i < found->matched_blocks; ++i) {
    if (source[i] != nullptr) {
      const std::string& address = source[i]->address;
      by_peer[{address, token_at[address]}].push_back(i);
    } else {
      from_store.push_back(i);
    }
  }
  // Peers that fail a load (no connection, gone, or silent; each for its whole attempt) cost
  // it about call_deadline in all: past that, the blocks of the peers not asked yet come from
  // the store at once (the peer that crosses the line may take it past: connecting a client is
  // three calls). The entries of several dead agents (they live until their TTL) would
  // otherwise hold this load, and every load queued behind it, for that long each.
  absl::Duration lost_to_peers;
  for (auto& [key, which] : by_peer) {
    const std::string& address = key.first;
    const bool skip = RecentlyUnreachable(key) || lost_to_peers >= options_.call_deadline;
    const absl::Time began = absl::Now();
    absl::StatusOr<std::pair<client::StoreClient*, client::Namespace>> peer =
        skip ? absl::UnavailableError("unreachable moments ago, or peers failed this load")
             : PeerClient(key);
    if (peer.ok()) {
      FetchInto(*peer->first, peer->second, LoadSource::kPeer, address, job, which);
    } else if (!skip) {
      spdlog::warn("gpu agent: peer {} unreachable ({}); loading from the store for {}", address,
                   peer.status().ToString(), absl::FormatDuration(options_.peer_retry_after));
      absl::MutexLock lock(&peers_mu_);
      unreachable_[key] = absl::Now();
    }
    uint64_t fallbacks = 0;
    bool gone = !peer.ok() && !skip;  // a skipped peer keeps its client (it was not asked)
    bool silent = false;
    const std::vector<size_t> live = TargetedSlots(job, which);  // `which` is in order
    for (size_t i : which) {
      if (out[i].status.ok()) continue;
      // UNAVAILABLE: the peer went away; UNAUTHENTICATED: it restarted with a new token;
      // DEADLINE_EXCEEDED: it stopped answering (a hung process keeps its sockets).
      gone |= out[i].status.code() == absl::StatusCode::kUnavailable ||
              out[i].status.code() == absl::StatusCode::kUnauthenticated;
      silent |= out[i].status.code() == absl::StatusCode::kDeadlineExceeded;
      // A block whose slot the engine freed meanwhile is read from nowhere: not a fallback
      // (until the sixth session of 2026-11-29 it was counted as one).
      if (!std::binary_search(live.begin(), live.end(), i)) {
        out[i].status = absl::CancelledError("slot freed during the load");
        continue;
      }
      from_store.push_back(i);
      ++fallbacks;
    }
    if (gone || silent) {  // reconnect next time: the peer may have restarted elsewhere
      lost_to_peers += absl::Now() - began;
      absl::MutexLock lock(&peers_mu_);
      peers_.erase(key);
      peer_clients_.store(peers_.size(), std::memory_order_relaxed);
      // One that hangs is skipped for peer_retry_after, as one that refused to connect.
      if (silent && !skip) unreachable_[key] = absl::Now();
    }
    absl::MutexLock lock(&mu_);
    stats_.peer_fallbacks += fallbacks;
    if (skip) stats_.peer_skips += fallbacks;
  }
  std::sort(from_store.begin(), from_store.end());
  FetchInto(*client_, ns_, LoadSource::kStore, "store", job, from_store);
}

std::vector<size_t> GpuAgentImpl::TargetedSlots(const LoadJob& job, std::span<const size_t> which) {
  std::vector<size_t> live;
  absl::MutexLock lock(&mu_);
  for (size_t i : which) {
    auto it = load_targets_.find(job.destinations[i]);
    if (it != load_targets_.end() && it->second == job.id) live.push_back(i);
  }
  return live;
}

void GpuAgentImpl::FetchInto(client::StoreClient& from, const client::Namespace& ns,
                             LoadSource source, const std::string& name, LoadJob& job,
                             std::span<const size_t> asked) {
  // Blocks whose slot the engine freed since the load began are not fetched at all (those
  // freed while a batch runs are skipped after it, below).
  const std::vector<size_t> which = TargetedSlots(job, asked);
  for (size_t i : asked) {
    if (!std::binary_search(which.begin(), which.end(), i)) {
      job.handle->blocks_[i].status = absl::CancelledError("slot freed during the load");
    }
  }
  const uint64_t bb = stored_bytes_;
  uint8_t* region = staging_->data() + uint64_t{batch_} * pool_.block_bytes;
  std::vector<BlockLoad>& out = job.handle->blocks_;
  for (size_t begin = 0; begin < which.size(); begin += batch_) {
    const size_t n = std::min<size_t>(batch_, which.size() - begin);
    std::vector<client::BlockRead> reads;
    for (size_t k = 0; k < n; ++k) {
      reads.push_back({job.prefix[which[begin + k]], region + k * bb, bb});
    }
    absl::StatusOr<client::GetResult> got =
        from.Get(ns, scope_, reads, client::CallOptions{options_.call_deadline});
    bool late = got.ok() ? got->may_land_late : client::MayLandLate(got.status());
    for (size_t k = 0; got.ok() && k < n; ++k) late |= client::MayLandLate(got->blocks[k]);
    if (late) region_suspect_until_ = absl::Now() + kLateWriteWindow;
    const bool suspect = absl::Now() < region_suspect_until_;
    // Move the verified blocks together, then scatter them in one call.
    std::vector<uint32_t> slots;
    std::vector<size_t> loaded;
    std::vector<uint64_t> sums;  // of each moved block: the checksum it was verified against
    for (size_t k = 0; k < n; ++k) {
      BlockLoad& b = out[which[begin + k]];
      b.source = source;
      b.from = name;
      absl::Status s = got.ok() ? got->blocks[k] : got.status();
      if (s.ok() && got->sizes[k] != bb) {
        s = absl::DataLossError(
            absl::StrCat("block is ", got->sizes[k], " bytes, a stored block ", bb));
      }
      b.status = s;
      if (!s.ok()) continue;
      sums.push_back(got->checksums[k]);
      if (slots.size() != k) std::memmove(region + slots.size() * bb, region + k * bb, bb);
      slots.push_back(job.destinations[which[begin + k]]);
      loaded.push_back(which[begin + k]);
    }
    // Slots freed since the load began are the engine's again: skip them. The others are
    // pinned while scattering, so OnBlocksFreed waits for the copy instead.
    std::vector<uint32_t> kept;
    std::vector<size_t> kept_index;  // the block of kept[k]
    {
      absl::MutexLock lock(&mu_);
      for (size_t k = 0; k < slots.size(); ++k) {
        auto it = load_targets_.find(slots[k]);
        if (it == load_targets_.end() || it->second != job.id) {
          out[loaded[k]].status = absl::CancelledError("slot freed during the load");
          continue;
        }
        if (kept.size() != k) std::memmove(region + kept.size() * bb, region + k * bb, bb);
        sums[kept.size()] = sums[k];
        kept.push_back(slots[k]);
        kept_index.push_back(loaded[k]);
        Pin(slots[k]);
      }
    }
    absl::Status scattered = ScatterStored(region, kept);
    if (suspect && scattered.ok()) {
      // Bytes that changed in the region since they were verified (a late write of a timed-out
      // transfer, landing any time after the client's check) may be in the slot now: that
      // block is not loaded.
      for (size_t k = 0; k < kept.size(); ++k) {
        if (BlockChecksum(region + k * bb, bb) == sums[k]) continue;
        out[kept_index[k]].status = absl::DataLossError(
            "changed in staging after it was verified (a late write of a timed-out transfer)");
      }
    }
    absl::MutexLock lock(&mu_);
    for (uint32_t slot : kept) Unpin(slot);
    for (size_t i : loaded) {
      if (!scattered.ok() && out[i].status.ok()) out[i].status = scattered;
    }
    for (size_t k = 0; k < n; ++k) {
      const BlockLoad& b = out[which[begin + k]];
      if (b.status.ok()) {
        (source == LoadSource::kPeer ? stats_.loaded_from_peer : stats_.loaded_from_store) += 1;
        stats_.bytes_loaded += bb;
      } else if (source == LoadSource::kStore) {
        ++stats_.load_failed;
      }
    }
    // A source that stopped answering (hung, or gone) costs this load one call, not one per
    // batch: the rest of a peer's blocks go to the store (RunLoad) at once, and the rest of
    // the store's fail, for the engine to recompute. So does a busy peer (it may have kept
    // the call waiting serve_timeout), and the rest of any source's once the agent is
    // stopping.
    absl::Status rest;
    if (!got.ok() && (got.status().code() == absl::StatusCode::kDeadlineExceeded ||
                      got.status().code() == absl::StatusCode::kUnavailable ||
                      (source == LoadSource::kPeer &&
                       got.status().code() == absl::StatusCode::kResourceExhausted))) {
      rest = got.status();
    } else if (stop_) {
      rest = absl::CancelledError("agent stopping");
    }
    if (!rest.ok()) {
      for (size_t k = begin + n; k < which.size(); ++k) out[which[k]].status = rest;
      if (source == LoadSource::kStore) stats_.load_failed += which.size() - (begin + n);
      return;
    }
  }
}

bool GpuAgentImpl::RecentlyUnreachable(const PeerKey& peer) {
  const absl::Time now = absl::Now();
  absl::MutexLock lock(&peers_mu_);
  std::erase_if(unreachable_,
                [&](const auto& u) { return now - u.second >= options_.peer_retry_after; });
  return unreachable_.contains(peer);
}

bool GpuAgentImpl::HasPeerClient(const PeerKey& peer) {
  absl::MutexLock lock(&peers_mu_);
  return peers_.contains(peer);
}

absl::StatusOr<std::pair<client::StoreClient*, client::Namespace>> GpuAgentImpl::PeerClient(
    const PeerKey& peer) {
  absl::MutexLock lock(&peers_mu_);
  auto it = peers_.find(peer);
  if (it != peers_.end()) {
    it->second.last_used = ++peer_uses_;
    return std::make_pair(it->second.client.get(), it->second.ns);
  }
  const std::string& address = peer.first;
  client::ClientOptions o;
  o.address = address;
  o.token = peer.second;  // the peer's own token, from its directory entry
  o.tls_ca = options_.peer_tls_ca;
  o.default_deadline = options_.call_deadline;
  o.default_scope = scope_;
  absl::StatusOr<std::unique_ptr<client::StoreClient>> c = client::StoreClient::Connect(o);
  if (!c.ok()) return c.status();
  // Only the load region, where a peer's blocks land: with RMA, a registered range is one the
  // peer may write, and the offload and serve regions hold blocks on their way to the store
  // and to other readers.
  absl::Status reg = (*c)->RegisterMemory(staging_->data() + uint64_t{batch_} * pool_.block_bytes,
                                          uint64_t{batch_} * pool_.block_bytes);
  if (!reg.ok() && reg.code() != absl::StatusCode::kFailedPrecondition) {
    spdlog::warn("gpu agent: staging not registered for peer {}: {}", address, reg.ToString());
  }
  absl::StatusOr<client::Namespace> ns = (*c)->RegisterNamespace(ns_.spec);
  if (!ns.ok()) return ns.status();
  // A new token at a known address: the agent there restarted, its old client is useless.
  std::erase_if(peers_, [&](const auto& p) { return p.first.first == address; });
  // At the cap, the client used longest ago goes (the load thread, the only user of these
  // clients, is here: none is in use).
  while (!peers_.empty() && peers_.size() >= options_.max_peer_clients) {
    auto oldest = std::min_element(peers_.begin(), peers_.end(), [](const auto& a, const auto& b) {
      return a.second.last_used < b.second.last_used;
    });
    peers_.erase(oldest);
  }
  Peer& entry = peers_[peer];
  entry = {std::move(*c), *ns, ++peer_uses_};
  peer_clients_.store(peers_.size(), std::memory_order_relaxed);
  return std::make_pair(entry.client.get(), entry.ns);
}

}  // namespace strata::gpu_agent
