// GrpcStoreClient: the StoreClient implementation — the control plane over gRPC, payloads
// inline (store_client.cc) or over the UCX data plane (data_path.cc). Private to the client
// library; the public API is strata/client/store_client.h.
//
// Thread-safe, as StoreClient.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <deque>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "client_data_plane.h"
#include "grpcpp/grpcpp.h"
#include "strata/client/store_client.h"
#include "strata/common/checksum.h"
#include "strata/proto/status_convert.h"
#include "strata/transport/peer_order.h"
#include "strata/v1/store.grpc.pb.h"
#include "task_pool.h"

namespace strata::client::internal {

using Clock = std::chrono::system_clock;

using proto::FromBlockStatus;
using proto::FromGrpc;
using proto::ToGrpc;

inline Tier FromProtoTier(v1::Tier t) {
  switch (t) {
    case v1::TIER_HOT:
      return Tier::kHot;
    case v1::TIER_WARM:
      return Tier::kWarm;
    case v1::TIER_COOL:
      return Tier::kCool;
    case v1::TIER_COLD:
      return Tier::kCold;
    default:
      return Tier::kUnknown;
  }
}

inline BlockLocation FromProtoInfo(const v1::BlockInfo& b) {
  BlockLocation out{FromProtoTier(b.tier()), b.size(), {}};
  out.peers.reserve(b.hot_locations_size());
  for (int i = 0; i < b.hot_locations_size(); ++i) {
    out.peers.push_back(
        {b.hot_locations(i), i < b.hot_location_tokens_size() ? b.hot_location_tokens(i) : ""});
  }
  return out;
}

inline std::string HashAlgorithmName(ChainHashAlgorithm a) {
  return std::string(ChainHashAlgorithmName(a));
}

// Index ranges [begin, end) of a batch, each within the node's per-call limits.
template <typename SizeOf>
std::vector<std::pair<size_t, size_t>> SplitBatch(size_t n, uint64_t max_keys, uint64_t max_bytes,
                                                  SizeOf size_of) {
  std::vector<std::pair<size_t, size_t>> parts;
  size_t begin = 0;
  uint64_t bytes = 0;
  for (size_t i = 0; i < n; ++i) {
    uint64_t b = size_of(i);
    if (i > begin && (i - begin >= max_keys || bytes + b > max_bytes)) {
      parts.emplace_back(begin, i);
      begin = i;
      bytes = 0;
    }
    bytes += b;
  }
  if (begin < n) parts.emplace_back(begin, n);
  return parts;
}

// Runs fn(key, items) for every group in parallel; fn's own errors are its to record.
template <typename Key, typename Fn>
void ForEachGroup(const std::map<Key, std::vector<size_t>>& groups, Fn fn) {
  std::vector<std::pair<Key, const std::vector<size_t>*>> list;
  for (const auto& [k, v] : groups) list.emplace_back(k, &v);
  if (list.empty()) return;
  RunParts(list.size(), [&](size_t p) {
    fn(list[p].first, *list[p].second);
    return absl::OkStatus();
  }).IgnoreError();
}

// Adds one node's counters to a cluster's (the cluster client's Stats).
inline void AddNodeStats(const NodeStats& n, NodeStats* s) {
  s->warm_blocks += n.warm_blocks;
  s->warm_bytes += n.warm_bytes;
  s->warm_used_bytes += n.warm_used_bytes;
  s->warm_capacity_bytes += n.warm_capacity_bytes;
  s->hits += n.hits;
  s->misses += n.misses;
  s->evictions += n.evictions;
  s->leases += n.leases;
  s->reservations += n.reservations;
  s->data_loss += n.data_loss;
  s->cool_blocks += n.cool_blocks;
  s->cool_bytes += n.cool_bytes;
  s->cool_stored_bytes += n.cool_stored_bytes;
  s->cool_capacity_bytes += n.cool_capacity_bytes;
  s->cold_blocks += n.cold_blocks;
  s->cold_bytes += n.cold_bytes;
  s->cold_stored_bytes += n.cold_stored_bytes;
  s->cold_capacity_bytes += n.cold_capacity_bytes;
  s->demotions += n.demotions;
  s->promotions += n.promotions;
  s->prefetched += n.prefetched;
  s->prefetch_used += n.prefetch_used;
  s->prefetch_wasted += n.prefetch_wasted;
  s->data_channels += n.data_channels;
  s->namespaces = std::max(s->namespaces, n.namespaces);
  s->rebalance_passes += n.rebalance_passes;
  s->rebalance_pending += n.rebalance_pending;
  s->rebalance_copied += n.rebalance_copied;
  s->rebalance_dropped += n.rebalance_dropped;
  s->under_replicated += n.under_replicated;
  s->members_placing_otherwise =
      std::max(s->members_placing_otherwise, n.members_placing_otherwise);
  s->replicas_kept = std::max(s->replicas_kept, n.replicas_kept);
}

// The cluster client's error classes (cluster_client.cc): a node refused a request routed by an
// older member-set epoch than its own.
inline bool IsStaleEpoch(const absl::Status& s) {
  return s.code() == absl::StatusCode::kFailedPrecondition &&
         absl::StrContains(s.message(), "epoch");
}

// What a data-channel part answers when it goes inline instead (RefusedOnReconnect): a status
// marked with this payload.
inline constexpr char kInlineInstead[] = "strata.client/inline-instead";
inline bool IsInlineInstead(const absl::Status& s) {
  return s.GetPayload(kInlineInstead).has_value();
}

// The checksum a write sends for its bytes: the caller's (BlockWrite::checksum), else one
// computed now.
inline uint64_t ChecksumOf(const BlockWrite& w) {
  return w.checksum.has_value() ? *w.checksum : BlockChecksum(w.data, w.size);
}

// The caller's own mistakes in a put or a get, which no node need see: INVALID_ARGUMENT
// naming the block (a null buffer or payload with bytes claimed; a put block of 0 bytes or
// past the namespace's block_bytes; reads whose buffers overlap).
inline absl::Status CheckReads(std::span<const BlockRead> blocks) {
  for (size_t i = 0; i < blocks.size(); ++i) {
    if (blocks[i].buffer == nullptr && blocks[i].capacity > 0) {
      return absl::InvalidArgumentError(absl::StrCat("blocks[", i, "].buffer: null"));
    }
  }
  if (blocks.size() < 2) return absl::OkStatus();
  std::vector<size_t> order;  // of the reads with room, by address
  order.reserve(blocks.size());
  for (size_t i = 0; i < blocks.size(); ++i) {
    if (blocks[i].capacity > 0) order.push_back(i);
  }
  // Overlapping reads would each be verified where they land, and one's bytes then overwritten
  // by the other's: a block reported OK holding another's bytes.
  auto at = [&](size_t i) { return reinterpret_cast<uintptr_t>(blocks[i].buffer); };
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return at(a) < at(b); });
  for (size_t k = 1; k < order.size(); ++k) {
    const size_t a = order[k - 1], b = order[k];
    if (at(b) - at(a) < blocks[a].capacity) {
      return absl::InvalidArgumentError(absl::StrCat("blocks[", std::min(a, b), "].buffer, blocks[",
                                                     std::max(a, b), "].buffer: overlap"));
    }
  }
  return absl::OkStatus();
}
inline absl::Status CheckWrites(const Namespace& ns, std::span<const BlockWrite> blocks) {
  for (size_t i = 0; i < blocks.size(); ++i) {
    if (blocks[i].data == nullptr && blocks[i].size > 0) {
      return absl::InvalidArgumentError(absl::StrCat("blocks[", i, "].data: null"));
    }
    if (blocks[i].size == 0 || (ns.spec.block_bytes != 0 && blocks[i].size > ns.spec.block_bytes)) {
      return absl::InvalidArgumentError(
          ns.spec.block_bytes == 0
              ? absl::StrCat("blocks[", i, "].size: 0, want at least 1")
              : absl::StrCat("blocks[", i, "].size: ", blocks[i].size, ", want 1..",
                             ns.spec.block_bytes, " (the namespace's block_bytes)"));
    }
  }
  return absl::OkStatus();
}

// Adds up the call-level answers of the nodes one cluster call asked. A stale epoch fails the
// whole call (retried after a refresh). INVALID_ARGUMENT fails it only when no node took the
// request: bad input, which every node refuses alike. One node refusing what others take (a
// namespace it lost in a restart and could not register again: its max_namespaces reached)
// is passed over as a node that is down is, its blocks tried on the next replica.
class CallVerdict {
 public:
  void Note(const absl::Status& s) {
    if (s.ok()) {
      any_ok_ = true;
    } else if (IsStaleEpoch(s)) {
      stale_ = s;
    } else if (s.code() == absl::StatusCode::kInvalidArgument) {
      invalid_ = s;
    } else {
      other_ = s;
    }
  }
  // A stale epoch seen: the call ends now.
  const absl::Status& stale() const { return stale_; }
  // What fails the whole call once every node was asked.
  absl::Status Final() const {
    if (!stale_.ok()) return stale_;
    return any_ok_ ? absl::OkStatus() : invalid_;
  }
  // As Final, and also the last other error when no node answered: for calls whose result
  // carries no status of its own per block (a lookup's "absent" must not stand for "no owner
  // could be asked").
  absl::Status FinalAnswered() const {
    absl::Status s = Final();
    return !s.ok() || any_ok_ ? s : other_;
  }
  // A node's refusal of the whole request, where other replicas may take it.
  static bool NodeRefused(const absl::Status& s) {
    return s.code() == absl::StatusCode::kInvalidArgument;
  }

 private:
  absl::Status stale_, invalid_, other_;
  bool any_ok_ = false;
};

// Errors after which another replica may still answer.
inline bool TryNextReplica(const absl::Status& s) {
  return s.code() == absl::StatusCode::kUnavailable ||
         s.code() == absl::StatusCode::kDeadlineExceeded ||
         s.code() == absl::StatusCode::kCancelled || s.code() == absl::StatusCode::kNotFound ||
         s.code() == absl::StatusCode::kDataLoss || s.code() == absl::StatusCode::kInternal ||
         s.code() == absl::StatusCode::kResourceExhausted;
}

// Errors after which a data call is worth retrying on the same channel later; any other
// failure to open a channel means this node will not serve the client over UCX right now.
inline bool IsTransient(absl::StatusCode code) {
  return code == absl::StatusCode::kUnavailable || code == absl::StatusCode::kDeadlineExceeded ||
         code == absl::StatusCode::kCancelled;
}

// Where one block's bytes sit for a UCX transfer: inside a registered user range (zero-copy),
// or, with region null, in a bounce buffer.
struct Placement {
  std::shared_ptr<const transport::MemoryRegion> region;
  uint64_t length = 0;  // put: the payload size; get: the usable destination capacity
};

// Collects the distinct rkeys of one data request, in first-use order.
class RkeyTable {
 public:
  template <typename AddRkey>
  uint32_t IndexOf(const transport::MemoryRegion& region, AddRkey add) {
    for (size_t k = 0; k < regions_.size(); ++k) {
      if (regions_[k] == &region) return static_cast<uint32_t>(k);
    }
    regions_.push_back(&region);
    add(region.PackedRkey());
    return static_cast<uint32_t>(regions_.size() - 1);
  }

 private:
  std::vector<const transport::MemoryRegion*> regions_;
};

class GrpcStoreClient final : public StoreClient {
 public:
  GrpcStoreClient(ClientOptions options, std::shared_ptr<grpc::Channel> channel)
      : options_(std::move(options)),
        bearer_(options_.token.empty() ? "" : absl::StrCat("Bearer ", options_.token)),
        channel_(std::move(channel)),
        stub_(v1::StoreService::NewStub(channel_)) {}

  ~GrpcStoreClient() override;  // data_path.cc

  absl::Status Init();

  absl::Status RegisterMemory(void* ptr, size_t len) override;
  // Whether calls may move payloads over UCX (else every call is inline and RegisterMemory
  // is FAILED_PRECONDITION). Fixed once Init returned.
  bool has_data_plane() const { return ucx_ != nullptr; }

  absl::Status UnregisterMemory(void* ptr) override;

  std::string DataPlaneDescription() const override;

  absl::StatusOr<Namespace> RegisterNamespace(const NamespaceSpec& spec,
                                              const CallOptions& call) override;

  absl::StatusOr<LookupResult> Lookup(const Namespace& ns, std::string_view scope,
                                      std::span<const ChainHash> hashes,
                                      const CallOptions& call) override;

  absl::StatusOr<PutResult> Put(const Namespace& ns, std::string_view scope,
                                std::span<const BlockWrite> blocks, const CallOptions& call,
                                const PutOptions& put) override;

  absl::StatusOr<GetResult> Get(const Namespace& ns, std::string_view scope,
                                std::span<const BlockRead> blocks, const CallOptions& call,
                                const GetOptions& get) override;

  absl::StatusOr<uint64_t> Delete(const Namespace& ns, std::string_view scope,
                                  std::span<const ChainHash> hashes,
                                  const CallOptions& call) override;

  absl::StatusOr<NodeStats> Stats(const CallOptions& call) override;

  absl::StatusOr<std::vector<BlockLocation>> LookupEach(const Namespace& ns, std::string_view scope,
                                                        std::span<const ChainHash> hashes,
                                                        const CallOptions& call) override;
  absl::StatusOr<std::vector<absl::Status>> Publish(const Namespace& ns, std::string_view scope,
                                                    std::span<const ChainHash> hashes,
                                                    std::span<const uint64_t> sizes,
                                                    const PeerLocation& location,
                                                    absl::Duration ttl,
                                                    const CallOptions& call) override;
  // For the cluster client (cluster_client.cc): the member-set epoch stamped on every routed
  // request. It only rises (as the nodes' own does): calls share this client, and one still
  // working through an older set must not stamp the requests of one routed by a newer set
  // with the old epoch (the node would refuse them as stale); its own requests then carry the
  // newer epoch, which nodes serve.
  void set_epoch(uint64_t epoch) {
    uint64_t seen = epoch_.load(std::memory_order_relaxed);
    while (seen < epoch && !epoch_.compare_exchange_weak(seen, epoch, std::memory_order_relaxed)) {
    }
  }

  // One node's share of a multi-node LookupEach: the blocks hashes[idx[j]], asked of `node`
  // (null: skipped, status left as it is).
  struct LookupEachWork {
    GrpcStoreClient* node = nullptr;
    const std::vector<size_t>* idx = nullptr;
    absl::Status status;  // as node->LookupEach would return
    CallOptions call;     // its own deadline; zero: the one given to LookupEachOnNodes
  };
  // Every work item's LookupEach at once from the calling thread: all calls are in flight
  // together on one completion queue, so asking N nodes costs no thread per node. Where a
  // node answered, out[idx[j]] is what its LookupEach gives for hashes[idx[j]]; where it did
  // not (status not OK), its blocks' entries are left as they were. Blocks until every call
  // has ended (each within its node's deadline for `call`).
  static void LookupEachOnNodes(std::span<LookupEachWork> work, std::span<const ChainHash> hashes,
                                const Namespace& ns, std::string_view scope,
                                const CallOptions& call, std::span<BlockLocation> out);
  const std::string& address() const { return options_.address; }

  absl::StatusOr<uint64_t> PauseSession(std::string_view session_id, bool to_cold,
                                        const CallOptions& call) override;

  absl::StatusOr<uint64_t> ResumeSession(std::string_view session_id,
                                         const CallOptions& call) override;

  absl::StatusOr<uint64_t> Prefetch(const Namespace& ns, std::string_view scope,
                                    std::span<const ChainHash> hashes, std::string_view session_id,
                                    const CallOptions& call) override;

 private:
  // A node that restarted without its namespaces (they live in its memory unless it has a disk
  // tier) answers INVALID_ARGUMENT kNamespaceNotRegistered. The call's Namespace carries the
  // spec: `op` (the call, taking what is left of its deadline) runs once more after the spec
  // is registered again. The public calls taking a Namespace are their ...Once under this
  // (call_retries.cc).
  template <typename Op>
  auto Reregistering(const Namespace& ns, const CallOptions& call, Op op) -> decltype(op(call));
  absl::StatusOr<LookupResult> LookupOnce(const Namespace& ns, std::string_view scope,
                                          std::span<const ChainHash> hashes,
                                          const CallOptions& call);
  absl::StatusOr<PutResult> PutOnce(const Namespace& ns, std::string_view scope,
                                    std::span<const BlockWrite> blocks, const CallOptions& call,
                                    const PutOptions& put);
  absl::StatusOr<GetResult> GetOnce(const Namespace& ns, std::string_view scope,
                                    std::span<const BlockRead> blocks, const CallOptions& call,
                                    const GetOptions& get);
  absl::StatusOr<uint64_t> DeleteOnce(const Namespace& ns, std::string_view scope,
                                      std::span<const ChainHash> hashes, const CallOptions& call);
  absl::StatusOr<std::vector<BlockLocation>> LookupEachOnce(const Namespace& ns,
                                                            std::string_view scope,
                                                            std::span<const ChainHash> hashes,
                                                            const CallOptions& call);
  absl::StatusOr<std::vector<absl::Status>> PublishOnce(const Namespace& ns, std::string_view scope,
                                                        std::span<const ChainHash> hashes,
                                                        std::span<const uint64_t> sizes,
                                                        const PeerLocation& location,
                                                        absl::Duration ttl,
                                                        const CallOptions& call);
  absl::StatusOr<uint64_t> PrefetchOnce(const Namespace& ns, std::string_view scope,
                                        std::span<const ChainHash> hashes,
                                        std::string_view session_id, const CallOptions& call);

  Clock::time_point Deadline(const CallOptions& call) const;
  // Sets the deadline and the credentials (ClientOptions::token) of a call.
  void SetDeadline(grpc::ClientContext& ctx, Clock::time_point deadline) const;
  std::string Where(std::string_view op) const;
  std::string Scope(std::string_view scope) const;

  // A Lookup request for hashes[idx[j]] (idx null: every hash), in the compact form unless
  // the node is older than it (packed_lookup_).
  void FillLookup(const Namespace& ns, std::string_view scope, std::span<const ChainHash> hashes,
                  const std::vector<size_t>* idx, size_t begin, size_t end, bool each_block,
                  v1::LookupRequest* req) const;
  // True when a node older than packed_chain_hashes refused `req`: packed_lookup_ is now
  // off and the caller sends it again.
  bool RefusedPacked(const v1::LookupRequest& req, const grpc::Status& status);
  // How many blocks a Lookup answer for `asked` blocks lists, compact or not; INTERNAL when
  // it does not fit the question.
  absl::StatusOr<size_t> CheckLookup(const v1::LookupResponse& resp, size_t asked,
                                     bool each_block) const;
  // Block j of an answer CheckLookup accepted.
  static BlockLocation LookupAnswer(const v1::LookupResponse& resp, size_t j);

  absl::Status PutPart(const Namespace& ns, const std::string& scope,
                       std::span<const BlockWrite> blocks, std::pair<size_t, size_t> range,
                       Clock::time_point deadline, const PutOptions& put, PutResult* result);

  absl::Status GetPart(const Namespace& ns, const std::string& scope,
                       std::span<const BlockRead> blocks, std::pair<size_t, size_t> range,
                       Clock::time_point deadline, bool promote, GetResult* result);

  // Fire-and-forget release; the node's lease expiry covers a lost message. The destructor
  // waits for these calls, a bounded time (QuietCalls).
  template <typename Req, typename Resp, typename Start>
  void CallQuietly(Start start, Req req, std::chrono::milliseconds timeout = kQuietCallTimeout) {
    struct Call {
      grpc::ClientContext ctx;
      Req req;
      Resp resp;
    };
    auto* c = new Call;
    c->req = std::move(req);
    SetDeadline(c->ctx, Clock::now() + timeout);
    quiet_->Add(1);
    start(&c->ctx, &c->req, &c->resp, [quiet = quiet_, c](grpc::Status) {
      delete c;
      quiet->Add(-1);
    });
  }
  void EndGetQuietly(uint64_t lease_id);
  void AbortQuietly(uint64_t reservation_id);

  void CloseDataQuietly(uint64_t channel_id);

  // ---- UCX data plane ----

  // Starts the lane workers and opens the first channel by `deadline`.
  absl::Status StartDataPlane(const NodeStats& stats, Clock::time_point deadline);
  // Whether gRPC runs this client's callbacks: one callback call, waited for until `deadline`
  // and a second (data_path.cc says why).
  absl::Status CheckCallbacksRun(Clock::time_point deadline);
  void LeaveChannelToLateCallbacks();

  // Whether a Put/Get goes over the data channel: there is a data plane, every block suits it
  // and the largest is big enough. Opens (or reopens) the channel; a kAuto client whose node
  // refuses a channel for a lasting reason sends the call inline, and its calls stay inline
  // without asking again for a while (ChannelRefused). Errors: the channel could not be opened
  // for a transient reason (UNAVAILABLE, DEADLINE_EXCEEDED).
  absl::StatusOr<bool> UseDataChannel(bool fits, uint64_t largest, Clock::time_point deadline);
  // kAuto: the node refused a channel (at connect, or when UseDataChannel opened one). Calls
  // go inline until the back-off ends (1 s, doubling to kChannelRetryMax while refusals go
  // on); then one call asks again, spending at most kChannelAskWait of its deadline on it,
  // while the others stay inline. A channel opened clears it.
  void ChannelRefused(const absl::Status& why);
  // A channel refused (`refusal`) when first asked for, or when asked for again after it was
  // lost (NOT_FOUND: the node restarted, or closed it; a get's endpoints failed UNAVAILABLE or
  // CANCELLED): a kAuto client refused for good (not a transient failure) notes the refusal
  // and answers it marked kInlineInstead, so the part goes inline (InlineRange) instead of
  // failing; otherwise the call fails with `failure`.
  absl::Status RefusedOnReconnect(const absl::Status& refusal, const absl::Status& failure);
  // Runs call(sub-range) over `range` of a batch in inline-sized pieces, one after another:
  // a data-channel part that went inline instead. size_of(i): block i's bytes.
  template <typename SizeOf, typename Call>
  absl::Status InlineRange(std::pair<size_t, size_t> range, SizeOf size_of, Call call) {
    auto pieces = SplitBatch(range.second - range.first, max_keys_, max_inline_,
                             [&](size_t k) { return size_of(range.first + k); });
    for (const auto& [begin, end] : pieces) {
      if (absl::Status s = call(std::pair{range.first + begin, range.first + end}); !s.ok()) {
        return s;
      }
    }
    return absl::OkStatus();
  }
  static constexpr absl::Duration kChannelRetryFirst = absl::Seconds(1);
  static constexpr absl::Duration kChannelRetryMax = absl::Seconds(30);
  static constexpr absl::Duration kChannelAskWait = absl::Seconds(1);

  // The open channel, opening one (ConnectData and wiring) if there is none. Concurrent callers
  // wait for the one that connects, never holding chan_mu_ across the RPC.
  // A kAuto client whose node refused a channel lately gets RESOURCE_EXHAUSTED unless `asking`
  // (the one call UseDataChannel lets ask again).
  absl::StatusOr<uint64_t> AcquireChannel(Clock::time_point deadline, bool asking = false);

  // ConnectData, then wires each client lane to the node lane of the same index (the node
  // initiates every transfer, but UCX wires up best with endpoints in both directions).
  // Returns the channel id and the condensed transport of lane 0.
  absl::StatusOr<std::pair<uint64_t, std::string>> OpenChannel(Clock::time_point deadline);

  // Forgets `stale` (if still current), so the next call opens a new channel. The node is told
  // to close it (CloseData, which also drops its unclaimed messages) once no call uses it.
  void MarkBroken(uint64_t stale);
  // Counts the calls using a channel, so a broken one is closed on the node when the last
  // one leaves (EndChannelUse) rather than left to idle out there.
  void BeginChannelUse(uint64_t channel);
  void EndChannelUse(uint64_t channel);

  // Runs one data RPC (`rpc(channel_id, ctx)`) on the channel. The node forgets channels (idle
  // expiry, restart, a transfer that failed): NOT_FOUND reconnects once and retries.
  // UNAVAILABLE or CANCELLED fences the channel and reconnects once to retry; DEADLINE_EXCEEDED
  // fences it and fails (the next call reconnects).
  // `*repeated` (if given) says whether the attempt that answered followed one that failed
  // UNAVAILABLE or CANCELLED, which the node may still be carrying out.
  template <typename Rpc>
  absl::Status CallOnChannel(std::string_view op, Clock::time_point deadline, Rpc rpc,
                             bool* repeated = nullptr) {
    absl::StatusOr<uint64_t> channel = AcquireChannel(deadline);
    // kAuto: another part of the call (or another call) may have been refused a channel
    // since UseDataChannel chose UCX for this one; it goes inline too.
    if (!channel.ok()) return RefusedOnReconnect(channel.status(), channel.status());
    for (int attempt = 0;; ++attempt) {
      // A call whose deadline has passed is not sent: gRPC would fail it with DEADLINE_EXCEEDED
      // before it leaves, and that code fences the channel below, failing every other call on
      // it for nothing.
      if (Clock::now() >= deadline) {
        return absl::DeadlineExceededError(
            absl::StrCat(Where(op), ": the deadline passed before the call was sent"));
      }
      grpc::ClientContext ctx;
      SetDeadline(ctx, deadline);
      // The node reads or writes our registered memory during the call (peer_order.h).
      transport::ReleaseToPeers();
      BeginChannelUse(*channel);
      absl::Status s = FromGrpc(rpc(*channel, &ctx), Where(op));
      EndChannelUse(*channel);
      transport::AcquireFromPeers();
      if (s.code() == absl::StatusCode::kNotFound) {
        MarkBroken(*channel);
        if (attempt == 0) {
          channel = AcquireChannel(deadline);
          if (!channel.ok()) return RefusedOnReconnect(channel.status(), channel.status());
          continue;
        }
        // NOT_FOUND means "miss" to our callers; a channel lost twice is a node problem.
        return absl::UnavailableError(
            absl::StrCat(s.message(), " (data channel lost again after reconnecting)"));
      }
      // INTERNAL and UNKNOWN: the call broke in gRPC (a stream reset, a connection torn down),
      // which says nothing of the node's transfer either; fenced, not repeated.
      const bool broke =
          s.code() == absl::StatusCode::kInternal || s.code() == absl::StatusCode::kUnknown;
      if (broke || s.code() == absl::StatusCode::kUnavailable ||
          s.code() == absl::StatusCode::kDeadlineExceeded ||
          s.code() == absl::StatusCode::kCancelled) {
        // We give up while the node may still be reading or writing our buffers (its transfer
        // runs to its own deadline and then drains): cut it off before the caller gets them
        // back. The next call opens a fresh channel.
        ucx_->Fence(*channel);
        MarkBroken(*channel);
        // The failure may be the channel's, not the node's: another call fenced it under ours
        // (it gave up on its deadline), or the node restarted and our endpoints lead to its old
        // lanes. Once, time allowing, the call goes again on a fresh channel (a data call
        // repeats safely: it carries its whole put, or reads into the same buffers). A node
        // that is down refuses the reconnect at once.
        if (attempt == 0 && !broke && s.code() != absl::StatusCode::kDeadlineExceeded) {
          channel = AcquireChannel(deadline);
          if (repeated != nullptr) *repeated = true;  // inline or on the new channel
          // A put goes inline only after NOT_FOUND: after a failed attempt the node may still
          // hold its blocks "being written", which a repeat over the channel reports as not
          // stored (TakePutReply) and the inline path would count as stored before.
          if (!channel.ok()) {
            return op == "GetData" ? RefusedOnReconnect(channel.status(), s) : s;
          }
          continue;
        }
      }
      return s;
    }
  }

  // Index ranges of a data-channel batch: at most max_keys_ blocks, the batch spread over the
  // lanes but no part below kMinPartBytes where the batch allows (each part is a call of its
  // own: splitting a small batch costs more calls than the lanes give back), in RMA mode at most a
  // lane's share of the bounce pool (so parts on different lanes can run at once; two-sided mode
  // needs none), and at most max_inline_ bytes (a GetData reply may carry blocks inline).
  static constexpr uint64_t kMinPartBytes = 1 << 20;
  std::vector<std::pair<size_t, size_t>> SplitForDataChannel(const std::vector<Placement>& placed,
                                                             bool two_sided) const;

  // One bounce buffer for each block of the part that lies outside registered memory.
  absl::StatusOr<std::vector<transport::BounceBuffer>> AcquirePartBounce(
      std::string_view op, const std::vector<Placement>& placed, std::pair<size_t, size_t> range,
      Clock::time_point deadline);

  absl::Status PutDataPart(const Namespace& ns, const std::string& scope,
                           std::span<const BlockWrite> blocks, const std::vector<Placement>& placed,
                           std::pair<size_t, size_t> range, uint32_t lane, bool two_sided,
                           Clock::time_point deadline, const PutOptions& put, PutResult* result);

  // Per-block outcomes of a PutData reply into *result.
  // A data request without its transfer fields (sources, destinations, tags): routing,
  // namespace, lane and, for a put, every block's description and checksum.
  v1::PutDataRequest PutDataRequestFor(const Namespace& ns, const std::string& scope,
                                       std::span<const BlockWrite> blocks,
                                       std::pair<size_t, size_t> range, uint32_t lane,
                                       const PutOptions& put, bool checksums = true) const;
  v1::GetDataRequest GetDataRequestFor(const Namespace& ns, const std::string& scope, uint32_t lane,
                                       bool promote) const;
  // `repeated`: the reply is a repeated attempt's (CallOnChannel), and a block "being written"
  // may be held by the abandoned attempt itself, which the node ends at its deadline without
  // storing it: such a block is reported UNAVAILABLE, not ALREADY_EXISTS.
  absl::Status TakePutReply(const v1::PutDataResponse& resp, std::pair<size_t, size_t> range,
                            bool repeated, PutResult* result);

  // `*late` (GetResult::may_land_late): set when an attempt was repeated or blocks went again
  // inline.
  absl::Status GetDataPart(const Namespace& ns, const std::string& scope,
                           std::span<const BlockRead> blocks, const std::vector<Placement>& placed,
                           std::pair<size_t, size_t> range, uint32_t lane, bool two_sided,
                           Clock::time_point deadline, bool promote, GetResult* result, char* late);

  // ---- Two-sided (tagged message) mode ----

  // Names `channel` in the request and gives each op the channel's next tag, listing the tags
  // in the request in op order.
  template <typename Request>
  void AssignTags(uint64_t channel, std::span<transport::TransferOp> ops, Request* req) {
    req->set_channel_id(channel);
    req->clear_tags();
    for (transport::TransferOp& op : ops) {
      op.tag = ucx_->NextTag(channel);
      req->add_tags(op.tag);
    }
  }
  //
  // Each attempt of the RPC (CallOnChannel reconnects once on NOT_FOUND, which changes the
  // channel id carried in the tags) runs its own transfer on the part's lane: started before
  // the RPC, joined before the attempt returns, so no buffer outlives its call. A transfer that
  // fails on its own cancels the RPC (the node would wait for its messages until the deadline)
  // and the attempt answers UNAVAILABLE-like codes, so CallOnChannel marks the channel broken.
  // An RPC that fails sets `abort`: for sends that retires the lane endpoint (they cannot be
  // withdrawn), so the channel is marked broken and the next call reconnects; receives are just
  // cancelled. A message the node sends anyway for an abandoned receive never matches a later
  // one: every tag is fresh.

  // One attempt's transfer, run beside its RPC.
  struct TaggedTransfer {
    uint64_t channel = 0;  // the channel the call's tags name: its transfers use no other
    std::atomic<bool> abort{false};
    std::atomic<bool> failed_alone{false};  // failed before the RPC ended (cancelled it)
    bool no_thread = false;  // StartTagged had no thread for the transfer: nothing moved
    JoiningFuture<absl::Status> done;
    absl::Status trailer;  // the trailing checksums' send (PutDataTrailing), when there is one
  };

  void StartTagged(TaggedTransfer* t, uint32_t lane, std::span<const transport::TransferOp> ops,
                   Clock::time_point deadline, grpc::ClientContext* ctx);

  // Ends the attempt: aborts the transfer if the RPC failed, joins it, and picks the attempt's
  // answer (the transfer's own failure beats the CANCELLED it caused). `*transfer` gets the
  // transfer's status.
  grpc::Status FinishTagged(TaggedTransfer* t, grpc::Status rpc, absl::Status* transfer);

  // PutData with the checksums after the blocks (req.checksums_tag): sends the RPC, hashes the
  // blocks of `range` into *sums (once, on the first attempt) while the node receives them,
  // sends the checksums on `lane` as one more tagged message, and waits for the reply. A send
  // that fails cancels the RPC, as in StartTagged; an RPC that fails aborts the send.
  grpc::Status PutDataTrailing(TaggedTransfer* t, uint32_t lane, std::span<const BlockWrite> blocks,
                               std::pair<size_t, size_t> range, Clock::time_point deadline,
                               grpc::ClientContext* ctx, const v1::PutDataRequest& req,
                               v1::PutDataResponse* resp, std::vector<uint64_t>* sums);

  // After the last attempt: a transfer that failed (aborted sends, deadline, dead endpoint)
  // may have retired the lane endpoint, so the next call reconnects. An aborted receive-only
  // batch leaves its endpoint in service.
  void AfterTagged(uint64_t channel, const absl::Status& transfer, bool receives_only);

  absl::Status PutDataPartTwoSided(const Namespace& ns, const std::string& scope,
                                   std::span<const BlockWrite> blocks,
                                   std::pair<size_t, size_t> range, uint32_t lane,
                                   Clock::time_point deadline, const PutOptions& put,
                                   PutResult* result);

  absl::Status GetDataPartTwoSided(const Namespace& ns, const std::string& scope,
                                   std::span<const BlockRead> blocks,
                                   const std::vector<Placement>& placed,
                                   std::pair<size_t, size_t> range, uint32_t lane,
                                   Clock::time_point deadline, bool promote, GetResult* result,
                                   char* late);

  // Where a block's bytes arrived over UCX: `length` bytes at `bytes` (exact: the message's
  // length, which must be the block's size; else a capacity the block must fit).
  struct Landing {
    const void* bytes;
    uint64_t length;
    bool exact;
  };

  // Takes a GetData reply: per block its status, and for OK blocks the end-to-end check of
  // the bytes where they arrived (or inline in the reply, for blocks the node could not stage),
  // copying them into the caller's buffer when they arrived elsewhere. Returns the blocks that
  // failed the check (to fetch again inline).
  std::vector<size_t> AcceptGetReply(const v1::GetDataResponse& resp,
                                     std::span<const BlockRead> blocks,
                                     std::pair<size_t, size_t> range, GetResult* result,
                                     const std::function<Landing(size_t)>& landed);

  // Fetches blocks whose data-channel bytes failed their checksum once more, inline (BeginGet
  // with payloads); a block that fails again is DATA_LOSS.
  void RetryInline(const Namespace& ns, const std::string& scope, std::span<const BlockRead> blocks,
                   const std::vector<size_t>& which, Clock::time_point deadline, bool promote,
                   GetResult* result);

  const ClientOptions options_;
  const std::string bearer_;  // "Bearer <token>", or empty without a token
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::StoreService::Stub> stub_;
  uint32_t max_keys_ = 4096;
  uint64_t max_inline_ = 64ull << 20;
  uint64_t max_block_ = 16ull << 20;
  std::atomic<uint64_t> epoch_{0};
  // Whether small inline puts go in one call (ClientOptions::one_call_put_bytes); off once the
  // node answered one with a reservation (it predates them).
  std::atomic<bool> one_call_puts_{true};
  // Lookups send packed_chain_hashes; cleared for good when the node turns out to predate it.
  std::atomic<bool> packed_lookup_{true};
  // Release calls in flight, shared with their callbacks: gRPC runs a callback on a thread
  // of its own, and where it has none (the process at its thread limit) late or never, so
  // the destructor waits at most kQuietCallTimeout and a second, and a late callback touches
  // only this.
  struct QuietCalls {
    absl::Mutex mu;
    int n ABSL_GUARDED_BY(mu) = 0;
    void Add(int d) {
      absl::MutexLock lock(&mu);
      n += d;
    }
  };
  static constexpr std::chrono::milliseconds kQuietCallTimeout{2000};
  const std::shared_ptr<QuietCalls> quiet_ = std::make_shared<QuietCalls>();

  // The UCX data plane; null: payloads go inline. Set in Init, fixed afterwards. A kAuto
  // client keeps it when only the channel was refused at connect (ChannelRefused).
  std::unique_ptr<ClientDataPlane> ucx_;
  std::string ucx_tls_;  // the node's, for DataPlaneDescription()
  // Which calls move their blocks as tagged messages instead of the node's RMA (set in
  // StartDataPlane): puts, and gets whose largest block is at least two_sided_get_bytes_.
  bool two_sided_puts_ = false;
  uint64_t two_sided_get_bytes_ = UINT64_MAX;
  // The last channel opened, if its node takes trailing checksums (ConnectData); else 0.
  std::atomic<uint64_t> trailing_checksums_channel_{0};
  std::string inline_reason_;  // why kAuto runs inline although the node offers UCX
  std::atomic<uint32_t> next_lane_{0};
  mutable absl::Mutex chan_mu_;
  uint64_t channel_id_ ABSL_GUARDED_BY(chan_mu_) = 0;  // 0: none open (or marked broken)
  bool connecting_ ABSL_GUARDED_BY(chan_mu_) = false;  // one ConnectData at a time
  absl::flat_hash_map<uint64_t, int> channel_users_ ABSL_GUARDED_BY(chan_mu_);
  std::string transport_ ABSL_GUARDED_BY(chan_mu_);  // of the last channel opened
  // kAuto after a refused channel (ChannelRefused): why, when calls ask again, and the next
  // back-off. Empty refusal: none since the last channel opened.
  std::string refusal_ ABSL_GUARDED_BY(chan_mu_);
  absl::Time retry_at_ ABSL_GUARDED_BY(chan_mu_) = absl::InfinitePast();
  absl::Duration retry_backoff_ ABSL_GUARDED_BY(chan_mu_) = kChannelRetryFirst;
  bool asking_ ABSL_GUARDED_BY(chan_mu_) = false;  // a call is asking again after a refusal
};

// Channel credentials for options' TLS settings (insecure without tls_ca).
absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> ChannelCredentials(
    const ClientOptions& options);
// Connects to the one node at options.address (StoreClient::Connect without a cluster).
absl::StatusOr<std::unique_ptr<GrpcStoreClient>> ConnectNode(const ClientOptions& options);
// Sets result->stored and already_present from its per-block answers.
void TallyPut(PutResult* result);
// A client of a whole cluster (cluster_client.cc): options.etcd_endpoints or cluster_members.
absl::StatusOr<std::unique_ptr<StoreClient>> ConnectCluster(const ClientOptions& options);

}  // namespace strata::client::internal
