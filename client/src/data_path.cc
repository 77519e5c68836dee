// The UCX data path of GrpcStoreClient: channels to the node, batches split into parts over
// lanes, one-sided (RMA, shared memory and RDMA) and two-sided (tagged messages, TCP) transfers,
// and the end-to-end check of what arrived.
#include <algorithm>
#include <bit>
#include <future>
#include <optional>
#include <utility>

#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "grpc_store_client.h"
#include "spdlog/spdlog.h"
#include "strata/common/checksum.h"
#include "strata/common/logging.h"

namespace strata::client::internal {

absl::Status GrpcStoreClient::StartDataPlane(const NodeStats& stats, Clock::time_point deadline) {
  if (max_block_ == 0) {
    return absl::FailedPreconditionError(Where("Stats") + ": node reports max_block_bytes 0");
  }
  // A two-sided put with trailing checksums waits for its gRPC callback.
  if (absl::Status runs = CheckCallbacksRun(deadline); !runs.ok()) return runs;
  ClientDataPlaneOptions opts;
  opts.tls = stats.ucx_tls;
  opts.peer_failure_handling = stats.ucx_peer_failure_handling;
  opts.lanes = stats.ucx_lanes;
  opts.bounce_buffer_size = max_block_;
  opts.bounce_buffers = std::max<uint64_t>(2, options_.bounce_bytes / max_block_);
  absl::StatusOr<std::unique_ptr<ClientDataPlane>> plane = ClientDataPlane::Create(opts);
  if (!plane.ok()) return plane.status();
  ucx_ = *std::move(plane);
  ucx_tls_ = stats.ucx_tls;
  if (options_.ucx_two_sided_on_tcp && TlsIncludesTcp(stats.ucx_tls)) {
    two_sided_puts_ = true;
    two_sided_get_bytes_ = 0;
  } else if (options_.ucx_two_sided_on_shm && TlsIsSharedMemoryOnly(stats.ucx_tls)) {
    two_sided_puts_ = true;
    two_sided_get_bytes_ = options_.ucx_shm_two_sided_get_bytes;
  }
  absl::StatusOr<uint64_t> channel = AcquireChannel(deadline);
  return channel.status();
}

// gRPC runs callbacks on threads it starts when a channel first needs them, and where none
// can start (the process at its thread limit) it never runs them: a call waiting for its
// callback (PutDataTrailing) would wait for good. One callback call while the client connects
// starts them or finds out; its state outlives a wait that gives up.
absl::Status GrpcStoreClient::CheckCallbacksRun(Clock::time_point deadline) {
  struct Probe {
    grpc::ClientContext ctx;
    v1::StatsRequest req;
    v1::StatsResponse resp;
    absl::Notification done;
  };
  auto probe = std::make_shared<Probe>();
  SetDeadline(probe->ctx, deadline);
  stub_->async()->Stats(&probe->ctx, &probe->req, &probe->resp,
                        [probe](grpc::Status) { probe->done.Notify(); });
  const absl::Duration wait = absl::FromChrono(deadline - Clock::now()) + absl::Seconds(1);
  if (probe->done.WaitForNotificationWithTimeout(wait)) return absl::OkStatus();
  LeaveChannelToLateCallbacks();
  return absl::ResourceExhaustedError(
      Where("Connect") + ": gRPC ran no callback for a call past its deadline (no thread?)");
}

void GrpcStoreClient::LeaveChannelToLateCallbacks() {
  // A callback that comes after all may hold the channel's last reference, and a channel
  // destroyed on gRPC's own callback thread can wait for that thread. Kept for the process.
  [[maybe_unused]] auto* kept = new std::shared_ptr<grpc::Channel>(channel_);
}

GrpcStoreClient::~GrpcStoreClient() {
  if (ucx_ != nullptr) {
    uint64_t channel = 0;
    {
      absl::MutexLock lock(&chan_mu_);
      channel = std::exchange(channel_id_, 0);
    }
    if (channel != 0) CloseDataQuietly(channel);
  }
  {
    QuietCalls& q = *quiet_;
    absl::MutexLock lock(&q.mu);
    auto none = [&q]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(q.mu) { return q.n == 0; };
    if (!q.mu.AwaitWithTimeout(absl::Condition(&none),
                               absl::FromChrono(kQuietCallTimeout) + absl::Seconds(1))) {
      spdlog::warn(
          "client {}: {} release calls not finished past their deadline (gRPC runs no "
          "callbacks: no thread?); leaving them",
          options_.address, q.n);
      LeaveChannelToLateCallbacks();
    }
  }
  // Stops the workers before the registered ranges and bounce buffers they may touch.
  ucx_.reset();
}

void GrpcStoreClient::CloseDataQuietly(uint64_t channel_id) {
  if (ucx_ != nullptr) ucx_->DropChannelMessages(channel_id);
  v1::CloseDataRequest req;
  req.set_channel_id(channel_id);
  // Short: a node that is gone must not hold up the caller; idle channels expire anyway.
  CallQuietly<v1::CloseDataRequest, v1::CloseDataResponse>(
      [this](auto* ctx, auto* rq, auto* rs, auto cb) {
        stub_->async()->CloseData(ctx, rq, rs, std::move(cb));
      },
      std::move(req), std::chrono::milliseconds(500));
}

absl::StatusOr<bool> GrpcStoreClient::UseDataChannel(bool fits, uint64_t largest,
                                                     Clock::time_point deadline) {
  if (ucx_ == nullptr || !fits || largest < options_.ucx_min_block_bytes) return false;
  const bool automatic = options_.data_plane == ClientOptions::DataPlane::kAuto;
  bool asking_again = false;  // after a refusal: this call asks, and any failure goes inline
  if (automatic) {
    absl::MutexLock lock(&chan_mu_);
    if (channel_id_ == 0 && !refusal_.empty()) {
      // Refused lately, being asked or connected by another call, or too little time left to
      // ask (a failure of ours would count as the node's refusal): inline.
      if (asking_ || connecting_ || absl::Now() < retry_at_ ||
          deadline - Clock::now() < absl::ToChronoNanoseconds(kChannelAskWait)) {
        return false;
      }
      asking_ = true;  // this call asks; the others go inline without waiting for it
      asking_again = true;
    }
  }
  // Asking again costs a call at most kChannelAskWait of its time: the rest goes inline.
  const Clock::time_point ask_until =
      asking_again ? std::min(deadline, Clock::now() + absl::ToChronoNanoseconds(kChannelAskWait))
                   : deadline;
  absl::StatusOr<uint64_t> channel = AcquireChannel(ask_until, asking_again);
  if (channel.ok()) {
    if (asking_again) {
      absl::MutexLock lock(&chan_mu_);
      asking_ = false;
    }
    return true;
  }
  if (automatic && (asking_again || !IsTransient(channel.status().code()))) {
    ChannelRefused(channel.status());
    return false;
  }
  return channel.status();
}

absl::Status GrpcStoreClient::RefusedOnReconnect(const absl::Status& refusal,
                                                 const absl::Status& failure) {
  if (options_.data_plane != ClientOptions::DataPlane::kAuto || IsTransient(refusal.code())) {
    return failure;
  }
  bool noted;  // "refused lately" (AcquireChannel): the refusal is noted already
  {
    absl::MutexLock lock(&chan_mu_);
    noted = channel_id_ == 0 && !refusal_.empty();
  }
  if (!noted) ChannelRefused(refusal);
  absl::Status inline_instead = refusal;
  inline_instead.SetPayload(kInlineInstead, absl::Cord("1"));
  return inline_instead;
}

void GrpcStoreClient::ChannelRefused(const absl::Status& why) {
  absl::MutexLock lock(&chan_mu_);
  asking_ = false;
  if (channel_id_ != 0) return;  // another call opened one meanwhile
  if (refusal_.empty()) {
    spdlog::warn("{}: no UCX data channel ({}); calls go inline and ask again in {}",
                 Where("ConnectData"), why.ToString(), absl::FormatDuration(retry_backoff_));
  }
  refusal_ = std::string(why.message());
  // One back-off per window: calls refused together (before the first refusal was noted)
  // do not lengthen it each.
  const absl::Time now = absl::Now();
  if (now >= retry_at_) {
    retry_at_ = now + retry_backoff_;
    retry_backoff_ = std::min(2 * retry_backoff_, kChannelRetryMax);
  }
}

absl::StatusOr<uint64_t> GrpcStoreClient::AcquireChannel(Clock::time_point deadline, bool asking) {
  auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(chan_mu_) { return !connecting_; };
  if (!chan_mu_.LockWhenWithDeadline(absl::Condition(&idle), absl::FromChrono(deadline))) {
    chan_mu_.Unlock();
    return absl::DeadlineExceededError(Where("ConnectData") +
                                       ": deadline passed waiting for the data channel");
  }
  if (channel_id_ == 0 && !refusal_.empty() && !asking) {
    // Refused while this call waited (kAuto): one call at a time asks again (UseDataChannel).
    const std::string why = refusal_;
    chan_mu_.Unlock();
    return absl::ResourceExhaustedError(
        absl::StrCat(Where("ConnectData"), ": data channel refused lately: ", why));
  }
  uint64_t unwired = 0;
  if (channel_id_ != 0 && !ucx_->Wired(channel_id_)) {
    // The lanes were wired away from it: a lane replaced (ClientDataPlane, "A wedged lane").
    unwired = std::exchange(channel_id_, 0);
    if (channel_users_.contains(unwired)) unwired = 0;  // the last user closes it
  }
  if (channel_id_ != 0) {
    const uint64_t id = channel_id_;
    chan_mu_.Unlock();
    return id;
  }
  connecting_ = true;
  chan_mu_.Unlock();
  if (unwired != 0) CloseDataQuietly(unwired);

  absl::StatusOr<std::pair<uint64_t, std::string>> opened = OpenChannel(deadline);
  absl::MutexLock lock(&chan_mu_);
  connecting_ = false;
  if (!opened.ok()) return opened.status();
  refusal_.clear();
  retry_backoff_ = kChannelRetryFirst;
  channel_id_ = opened->first;
  transport_ = std::move(opened->second);
  return channel_id_;
}

absl::StatusOr<std::pair<uint64_t, std::string>> GrpcStoreClient::OpenChannel(
    Clock::time_point deadline) {
  v1::ConnectDataRequest req;
  uint64_t lanes_generation = 0;
  for (std::string& a : ucx_->WorkerAddresses(&lanes_generation)) {
    req.add_worker_addresses(std::move(a));
  }
  req.set_ucx_tcp_tx_seg_bytes(ucx_->tcp_segments().tx);
  req.set_ucx_tcp_rx_seg_bytes(ucx_->tcp_segments().rx);
  v1::ConnectDataResponse resp;
  grpc::ClientContext ctx;
  SetDeadline(ctx, deadline);
  if (absl::Status s = FromGrpc(stub_->ConnectData(&ctx, req, &resp), Where("ConnectData"));
      !s.ok()) {
    return s;
  }
  if (resp.channel_id() == 0) {
    return absl::InternalError(Where("ConnectData") + ": node answered channel_id 0");
  }
  // A node older than the size check sends no sizes: then ours must fit UCX's defaults, or the
  // node would abort on our first segment.
  if (absl::Status s =
          ucx_->CheckNodeTcpSegments({resp.ucx_tcp_tx_seg_bytes(), resp.ucx_tcp_rx_seg_bytes()});
      !s.ok()) {
    CloseDataQuietly(resp.channel_id());
    return absl::FailedPreconditionError(absl::StrCat(Where("ConnectData"), ": ", s.message(),
                                                      " (this side: the client, peer: the node)"));
  }
  trailing_checksums_channel_.store(resp.checksums_may_trail() ? resp.channel_id() : 0,
                                    std::memory_order_relaxed);
  std::vector<std::string> node_lanes(resp.worker_addresses().begin(),
                                      resp.worker_addresses().end());
  if (absl::Status s = ucx_->Wire(resp.channel_id(), node_lanes, lanes_generation); !s.ok()) {
    CloseDataQuietly(resp.channel_id());
    return absl::Status(s.code(), absl::StrCat(Where("ConnectData"), ": ", s.message()));
  }
  return std::make_pair(resp.channel_id(), CondenseTransport(resp.transport()));
}

void GrpcStoreClient::MarkBroken(uint64_t stale) {
  {
    absl::MutexLock lock(&chan_mu_);
    if (channel_id_ != stale) return;  // another call already let it go
    channel_id_ = 0;
    if (channel_users_.contains(stale)) return;  // the last user closes it
  }
  CloseDataQuietly(stale);
}

void GrpcStoreClient::BeginChannelUse(uint64_t channel) {
  absl::MutexLock lock(&chan_mu_);
  ++channel_users_[channel];
}

void GrpcStoreClient::EndChannelUse(uint64_t channel) {
  {
    absl::MutexLock lock(&chan_mu_);
    auto it = channel_users_.find(channel);
    if (--it->second > 0) return;
    channel_users_.erase(it);
    if (channel == channel_id_) return;  // still the channel in use
  }
  // A broken channel the node would otherwise keep until it idles out, with any of our
  // messages that no call claimed.
  CloseDataQuietly(channel);
}

std::vector<std::pair<size_t, size_t>> GrpcStoreClient::SplitForDataChannel(
    const std::vector<Placement>& placed, bool two_sided) const {
  const size_t n = placed.size();
  const size_t lanes = ucx_->lanes();
  uint64_t total = 0;
  for (const Placement& p : placed) total += p.length;
  // Measured on 16 cores (docs/design/transfer-protocol.md, "Lanes by cores"): 1 MiB parts
  // move a 4 MiB batch fastest; 5 blocks of 256 KiB on 3 parts ran at half the speed of one.
  const size_t ways = std::min({lanes, n, std::max<size_t>(1, total / kMinPartBytes)});
  const size_t spread = (n + ways - 1) / ways;
  const size_t max_blocks = std::min<size_t>(max_keys_, spread);
  const size_t max_bounce = std::max<size_t>(1, ucx_->bounce_capacity() / lanes);
  std::vector<std::pair<size_t, size_t>> parts;
  size_t begin = 0;
  size_t bounce = 0;
  uint64_t bytes = 0;
  for (size_t i = 0; i < n; ++i) {
    const size_t b = !two_sided && placed[i].region == nullptr ? 1 : 0;
    if (i > begin && (i - begin >= max_blocks || bounce + b > max_bounce ||
                      bytes + placed[i].length > max_inline_)) {
      parts.emplace_back(begin, i);
      begin = i;
      bounce = 0;
      bytes = 0;
    }
    bounce += b;
    bytes += placed[i].length;
  }
  if (begin < n) parts.emplace_back(begin, n);
  return parts;
}

absl::StatusOr<std::vector<transport::BounceBuffer>> GrpcStoreClient::AcquirePartBounce(
    std::string_view op, const std::vector<Placement>& placed, std::pair<size_t, size_t> range,
    Clock::time_point deadline) {
  size_t needed = 0;
  for (size_t i = range.first; i < range.second; ++i) {
    needed += placed[i].region == nullptr ? 1 : 0;
  }
  absl::StatusOr<std::vector<transport::BounceBuffer>> bounce =
      ucx_->AcquireBounce(needed, absl::FromChrono(deadline));
  if (!bounce.ok()) {
    return absl::Status(bounce.status().code(),
                        absl::StrCat(Where(op), ": ", bounce.status().message()));
  }
  return bounce;
}

absl::Status GrpcStoreClient::PutDataPart(const Namespace& ns, const std::string& scope,
                                          std::span<const BlockWrite> blocks,
                                          const std::vector<Placement>& placed,
                                          std::pair<size_t, size_t> range, uint32_t lane,
                                          bool two_sided, Clock::time_point deadline,
                                          const PutOptions& put, PutResult* result) {
  if (two_sided) {
    return PutDataPartTwoSided(ns, scope, blocks, range, lane, deadline, put, result);
  }
  absl::StatusOr<std::vector<transport::BounceBuffer>> bounce =
      AcquirePartBounce("PutData", placed, range, deadline);
  if (!bounce.ok()) return bounce.status();
  v1::PutDataRequest req = PutDataRequestFor(ns, scope, blocks, range, lane, put);
  RkeyTable rkeys;
  auto add_rkey = [&req](const std::string& rkey) { req.add_rkeys(rkey); };
  size_t next_bounce = 0;
  for (size_t i = range.first; i < range.second; ++i) {
    const BlockWrite& w = blocks[i];
    v1::RemoteBuffer* src = req.add_sources();
    src->set_length(w.size);
    if (placed[i].region != nullptr) {
      src->set_addr(reinterpret_cast<uintptr_t>(w.data));
      src->set_rkey_index(rkeys.IndexOf(*placed[i].region, add_rkey));
    } else {
      transport::BounceBuffer& buf = (*bounce)[next_bounce++];
      std::memcpy(buf.data(), w.data, w.size);
      src->set_addr(reinterpret_cast<uintptr_t>(buf.data()));
      src->set_rkey_index(rkeys.IndexOf(ucx_->bounce_region(), add_rkey));
    }
  }
  v1::PutDataResponse resp;
  bool repeated = false;
  absl::Status s = CallOnChannel(
      "PutData", deadline,
      [&](uint64_t channel, grpc::ClientContext* ctx) {
        req.set_channel_id(channel);
        return stub_->PutData(ctx, req, &resp);
      },
      &repeated);
  if (!s.ok()) return s;
  return TakePutReply(resp, range, repeated, result);
}

v1::PutDataRequest GrpcStoreClient::PutDataRequestFor(const Namespace& ns, const std::string& scope,
                                                      std::span<const BlockWrite> blocks,
                                                      std::pair<size_t, size_t> range,
                                                      uint32_t lane, const PutOptions& put,
                                                      bool checksums) const {
  v1::PutDataRequest req;
  req.set_epoch(epoch_.load(std::memory_order_relaxed));
  req.set_namespace_id(ns.id);
  req.set_scope(scope);
  req.set_session_id(put.session_id);
  req.set_copy(put.copy);
  req.set_lane(lane);
  for (size_t i = range.first; i < range.second; ++i) {
    const BlockWrite& w = blocks[i];
    v1::PutBlock* b = req.add_blocks();
    b->set_chain_hash(w.hash.ToBytes());
    b->set_size(w.size);
    b->set_depth(w.depth);
    b->set_importance(w.importance);
    if (checksums) req.add_checksums(ChecksumOf(w));
  }
  return req;
}

v1::GetDataRequest GrpcStoreClient::GetDataRequestFor(const Namespace& ns, const std::string& scope,
                                                      uint32_t lane, bool promote) const {
  v1::GetDataRequest req;
  req.set_epoch(epoch_.load(std::memory_order_relaxed));
  req.set_skip_promotion(!promote);
  req.set_namespace_id(ns.id);
  req.set_scope(scope);
  req.set_lane(lane);
  return req;
}

absl::Status GrpcStoreClient::TakePutReply(const v1::PutDataResponse& resp,
                                           std::pair<size_t, size_t> range, bool repeated,
                                           PutResult* result) {
  if (resp.results_size() != static_cast<int>(range.second - range.first)) {
    return absl::InternalError(Where("PutData") + ": reply has the wrong number of results");
  }
  for (size_t i = range.first; i < range.second; ++i) {
    absl::Status st = FromBlockStatus(resp.results(static_cast<int>(i - range.first)));
    if (repeated && IsBlockBeingWritten(st)) {
      st = absl::UnavailableError(Where("PutData") +
                                  ": an attempt of this put that was cut off may hold the block's "
                                  "reservation until its deadline; not stored, put it again later");
    }
    result->blocks[i] = std::move(st);
  }
  return absl::OkStatus();
}

absl::Status GrpcStoreClient::GetDataPart(const Namespace& ns, const std::string& scope,
                                          std::span<const BlockRead> blocks,
                                          const std::vector<Placement>& placed,
                                          std::pair<size_t, size_t> range, uint32_t lane,
                                          bool two_sided, Clock::time_point deadline, bool promote,
                                          GetResult* result, char* late) {
  if (two_sided) {
    return GetDataPartTwoSided(ns, scope, blocks, placed, range, lane, deadline, promote, result,
                               late);
  }
  absl::StatusOr<std::vector<transport::BounceBuffer>> bounce =
      AcquirePartBounce("GetData", placed, range, deadline);
  if (!bounce.ok()) return bounce.status();
  v1::GetDataRequest req = GetDataRequestFor(ns, scope, lane, promote);
  RkeyTable rkeys;
  auto add_rkey = [&req](const std::string& rkey) { req.add_rkeys(rkey); };
  // Where each block lands: the caller's buffer (zero-copy) or its bounce buffer.
  std::vector<const void*> landing(range.second - range.first);
  size_t next_bounce = 0;
  for (size_t i = range.first; i < range.second; ++i) {
    req.add_chain_hashes(blocks[i].hash.ToBytes());
    v1::RemoteBuffer* dst = req.add_destinations();
    dst->set_length(placed[i].length);
    if (placed[i].region != nullptr) {
      landing[i - range.first] = blocks[i].buffer;
      dst->set_rkey_index(rkeys.IndexOf(*placed[i].region, add_rkey));
    } else {
      landing[i - range.first] = (*bounce)[next_bounce++].data();
      dst->set_rkey_index(rkeys.IndexOf(ucx_->bounce_region(), add_rkey));
    }
    dst->set_addr(reinterpret_cast<uintptr_t>(landing[i - range.first]));
  }
  v1::GetDataResponse resp;
  bool repeated = false;
  absl::Status s = CallOnChannel(
      "GetData", deadline,
      [&](uint64_t channel, grpc::ClientContext* ctx) {
        req.set_channel_id(channel);
        return stub_->GetData(ctx, req, &resp);
      },
      &repeated);
  *late = repeated;
  if (!s.ok()) return s;
  if (resp.blocks_size() != static_cast<int>(range.second - range.first)) {
    return absl::InternalError(Where("GetData") + ": reply has the wrong number of blocks");
  }
  std::vector<size_t> retry = AcceptGetReply(resp, blocks, range, result, [&](size_t i) {
    return Landing{landing[i - range.first], placed[i].length, /*exact=*/false};
  });
  bounce->clear();  // back to the pool before the (rare) retry
  if (!retry.empty()) {
    *late = 1;
    RetryInline(ns, scope, blocks, retry, deadline, promote, result);
  }
  return absl::OkStatus();
}

void GrpcStoreClient::StartTagged(TaggedTransfer* t, uint32_t lane,
                                  std::span<const transport::TransferOp> ops,
                                  Clock::time_point deadline, grpc::ClientContext* ctx) {
  std::optional<JoiningFuture<absl::Status>> done =
      TaskPool::Shared().TryRun([this, t, lane, ops, deadline, ctx] {
        absl::Status s =
            ucx_->Transfer(lane, ops, absl::FromChrono(deadline), &t->abort, t->channel);
        if (!s.ok() && !t->abort.load(std::memory_order_acquire)) {
          t->failed_alone.store(true, std::memory_order_release);
          ctx->TryCancel();  // valid before, during and after the call
        }
        return s;
      });
  if (done.has_value()) {
    t->done = *std::move(done);
    return;
  }
  // No thread beside the RPC (the process at its thread limit). Run first on the caller, the
  // transfer would wait for the RPC sent after it, until its deadline: the call is refused
  // at once instead (its RPC cancelled before it leaves), and the channel stays.
  std::promise<absl::Status> refused;
  refused.set_value(absl::ResourceExhaustedError(
      "no thread for the UCX side of the call (the process is at its thread limit)"));
  t->done = JoiningFuture<absl::Status>(refused.get_future());
  t->no_thread = true;
  t->failed_alone.store(true, std::memory_order_release);
  ctx->TryCancel();
}

grpc::Status GrpcStoreClient::FinishTagged(TaggedTransfer* t, grpc::Status rpc,
                                           absl::Status* transfer) {
  if (!rpc.ok()) t->abort.store(true, std::memory_order_release);
  *transfer = t->done.get();
  if (transfer->ok() && !t->trailer.ok()) *transfer = t->trailer;
  // An RPC that succeeded keeps its answer: PutData's results stand (the node took every
  // message), and GetDataPartTwoSided checks `*transfer` itself. So does one the node failed
  // before our cancel reached it: NOT_FOUND (a node that restarted no longer knows the
  // channel, and our sends to its old lanes failed too) reconnects in CallOnChannel.
  if (rpc.error_code() == grpc::StatusCode::CANCELLED && t->no_thread) {
    const absl::Status refused = std::exchange(*transfer, absl::OkStatus());  // nothing moved
    return ToGrpc(refused);
  }
  if (rpc.error_code() == grpc::StatusCode::CANCELLED &&
      t->failed_alone.load(std::memory_order_acquire)) {
    absl::Status s = *transfer;
    // A batch the deadline ended is DEADLINE_EXCEEDED; anything else means the lane's
    // endpoint cannot carry the call: UNAVAILABLE, so CallOnChannel marks the channel broken.
    const absl::StatusCode code =
        s.code() == absl::StatusCode::kDeadlineExceeded ? s.code() : absl::StatusCode::kUnavailable;
    return ToGrpc(absl::Status(code, s.message()));
  }
  return rpc;
}

void GrpcStoreClient::AfterTagged(uint64_t channel, const absl::Status& transfer,
                                  bool receives_only) {
  if (transfer.ok() || channel == 0) return;
  if (receives_only && transfer.code() == absl::StatusCode::kCancelled) return;
  MarkBroken(channel);
}

absl::Status GrpcStoreClient::PutDataPartTwoSided(const Namespace& ns, const std::string& scope,
                                                  std::span<const BlockWrite> blocks,
                                                  std::pair<size_t, size_t> range, uint32_t lane,
                                                  Clock::time_point deadline, const PutOptions& put,
                                                  PutResult* result) {
  uint64_t part_bytes = 0;
  for (size_t i = range.first; i < range.second; ++i) part_bytes += blocks[i].size;
  const uint64_t trail_from = options_.ucx_trailing_checksum_bytes;
  const bool may_trail = trail_from != 0 && part_bytes >= trail_from;
  // Whether the checksums trail is decided per attempt, by the channel it runs on: a node that
  // restarted (NOT_FOUND, then a new channel) may no longer take them after the blocks. Once
  // an attempt put them in the request they stay there.
  v1::PutDataRequest req = PutDataRequestFor(ns, scope, blocks, range, lane, put, !may_trail);
  std::vector<uint64_t> sums;  // trailing: the blocks' checksums, hashed by the first attempt
  std::vector<transport::TransferOp> sends(range.second - range.first);
  for (size_t i = range.first; i < range.second; ++i) {
    const BlockWrite& w = blocks[i];
    // UCX only reads a send's buffer; two-sided ops need no registration.
    transport::TransferOp& op = sends[i - range.first];
    op.kind = transport::TransferOp::Kind::kSend;
    op.local = const_cast<void*>(w.data);
    op.length = w.size;
  }
  v1::PutDataResponse resp;
  uint64_t used_channel = 0;
  absl::Status sent;
  bool repeated = false;
  absl::Status s = CallOnChannel(
      "PutData", deadline,
      [&](uint64_t channel, grpc::ClientContext* ctx) {
        used_channel = channel;
        AssignTags(channel, sends, &req);
        const bool trailing =
            req.checksums_size() == 0 &&
            channel == trailing_checksums_channel_.load(std::memory_order_relaxed);
        req.set_checksums_tag(trailing ? ucx_->NextTag(channel) : 0);
        if (!trailing && req.checksums_size() == 0) {
          for (size_t i = range.first; i < range.second; ++i) {
            req.add_checksums(sums.empty() ? ChecksumOf(blocks[i]) : sums[i - range.first]);
          }
        }
        TaggedTransfer t;
        t.channel = channel;
        StartTagged(&t, lane, sends, deadline, ctx);
        grpc::Status rpc =
            trailing ? PutDataTrailing(&t, lane, blocks, range, deadline, ctx, req, &resp, &sums)
                     : stub_->PutData(ctx, req, &resp);
        return FinishTagged(&t, std::move(rpc), &sent);
      },
      &repeated);
  AfterTagged(used_channel, sent, /*receives_only=*/false);
  if (!s.ok()) return s;
  // The node answers only after it has taken every message, so its results stand even if
  // the sends' local completion reported trouble (that only retired the endpoint).
  return TakePutReply(resp, range, repeated, result);
}

// The trailing checksums go as they are in memory: 8 bytes each, little-endian on the wire.
static_assert(std::endian::native == std::endian::little);

grpc::Status GrpcStoreClient::PutDataTrailing(
    TaggedTransfer* t, uint32_t lane, std::span<const BlockWrite> blocks,
    std::pair<size_t, size_t> range, Clock::time_point deadline, grpc::ClientContext* ctx,
    const v1::PutDataRequest& req, v1::PutDataResponse* resp, std::vector<uint64_t>* sums) {
  absl::Notification replied;
  grpc::Status rpc;
  stub_->async()->PutData(ctx, &req, resp, [&](grpc::Status s) {
    // A refused call takes no more messages of ours: stop waiting for the node to.
    if (!s.ok()) t->abort.store(true, std::memory_order_release);
    rpc = std::move(s);
    replied.Notify();
  });
  if (sums->empty()) {
    for (size_t i = range.first; i < range.second; ++i) {
      sums->push_back(ChecksumOf(blocks[i]));
    }
  }
  const transport::TransferOp trailer = transport::TransferOp::Send(
      sums->data(), sums->size() * sizeof(uint64_t), req.checksums_tag());
  // Refused while we hashed: the node takes nothing more, and a send aborted once posted
  // would retire the lane's endpoint for nothing.
  if (!t->abort.load(std::memory_order_acquire)) {
    t->trailer =
        ucx_->Transfer(lane, {&trailer, 1}, absl::FromChrono(deadline), &t->abort, t->channel);
  }
  if (!t->trailer.ok() && !t->abort.load(std::memory_order_acquire)) {
    t->failed_alone.store(true, std::memory_order_release);
    ctx->TryCancel();
  }
  replied.WaitForNotification();
  return rpc;
}

absl::Status GrpcStoreClient::GetDataPartTwoSided(const Namespace& ns, const std::string& scope,
                                                  std::span<const BlockRead> blocks,
                                                  const std::vector<Placement>& placed,
                                                  std::pair<size_t, size_t> range, uint32_t lane,
                                                  Clock::time_point deadline, bool promote,
                                                  GetResult* result, char* late) {
  v1::GetDataRequest req = GetDataRequestFor(ns, scope, lane, promote);
  const size_t n = range.second - range.first;
  std::vector<size_t> received(n, 0);
  std::vector<transport::TransferOp> receives(n);
  for (size_t i = range.first; i < range.second; ++i) {
    const size_t k = i - range.first;
    req.add_chain_hashes(blocks[i].hash.ToBytes());
    // Straight into the caller's buffer: receives need no registration, and the end-to-end
    // checksum below still guards what the caller gets.
    req.add_capacities(placed[i].length);
    transport::TransferOp& op = receives[k];
    op.kind = transport::TransferOp::Kind::kRecv;
    op.local = blocks[i].buffer;
    op.length = placed[i].length;
    op.received = &received[k];
  }
  v1::GetDataResponse resp;
  uint64_t used_channel = 0;
  absl::Status got;
  bool repeated = false;
  absl::Status s = CallOnChannel(
      "GetData", deadline,
      [&](uint64_t channel, grpc::ClientContext* ctx) {
        used_channel = channel;
        std::fill(received.begin(), received.end(), 0);
        AssignTags(channel, receives, &req);
        // Posted before the RPC; a message that still arrives first waits in UCX's
        // unexpected queue until its receive is posted.
        TaggedTransfer t;
        t.channel = channel;
        StartTagged(&t, lane, receives, deadline, ctx);
        return FinishTagged(&t, stub_->GetData(ctx, req, &resp), &got);
      },
      &repeated);
  *late = repeated;
  AfterTagged(used_channel, got, /*receives_only=*/true);
  if (!s.ok()) return s;
  if (got.code() == absl::StatusCode::kDeadlineExceeded) {
    // The node sent every message, but they did not all arrive in time.
    return absl::Status(got.code(), absl::StrCat(Where("GetData"), ": receiving blocks on lane ",
                                                 lane, ": ", got.message()));
  }
  // Otherwise the receives ended (the worker cancels what is left when a transfer fails, e.g.
  // its endpoint fenced by another call that gave up): a block that landed whole and matches
  // its checksum stands (a receive's length is set only when it completed); the others go
  // again inline, below. Until 2026-11-29 every length was zeroed here, and all went again.
  if (resp.blocks_size() != static_cast<int>(n)) {
    return absl::InternalError(Where("GetData") + ": reply has the wrong number of blocks");
  }
  std::vector<size_t> retry = AcceptGetReply(resp, blocks, range, result, [&](size_t i) {
    return Landing{blocks[i].buffer, received[i - range.first], /*exact=*/true};
  });
  if (!retry.empty()) {
    *late = 1;
    RetryInline(ns, scope, blocks, retry, deadline, promote, result);
  }
  return absl::OkStatus();
}

std::vector<size_t> GrpcStoreClient::AcceptGetReply(const v1::GetDataResponse& resp,
                                                    std::span<const BlockRead> blocks,
                                                    std::pair<size_t, size_t> range,
                                                    GetResult* result,
                                                    const std::function<Landing(size_t)>& landed) {
  std::vector<size_t> retry;
  for (size_t i = range.first; i < range.second; ++i) {
    const v1::GetBlock& b = resp.blocks(static_cast<int>(i - range.first));
    absl::Status st = FromBlockStatus(b.status());
    if (st.ok() && b.size() > blocks[i].capacity) {
      st = absl::OutOfRangeError(
          absl::StrCat("block is ", b.size(), " bytes, buffer holds ", blocks[i].capacity));
    }
    if (st.ok()) {
      const bool came_inline = !b.payload().empty();
      const Landing at =
          came_inline ? Landing{b.payload().data(), b.payload().size(), true} : landed(i);
      const bool fits = at.exact ? at.length == b.size() : b.size() <= at.length;
      // Copied first, then verified where the caller reads it: a bounce buffer may take a late
      // write (a node past an earlier call's deadline) between a check there and the copy.
      if (fits && at.bytes != blocks[i].buffer) std::memcpy(blocks[i].buffer, at.bytes, b.size());
      if (!fits || BlockChecksum(blocks[i].buffer, b.size()) != b.checksum()) {
        retry.push_back(i);
        continue;
      }
      result->sizes[i] = b.size();
      result->checksums[i] = b.checksum();
    }
    result->blocks[i] = std::move(st);
  }
  return retry;
}

void GrpcStoreClient::RetryInline(const Namespace& ns, const std::string& scope,
                                  std::span<const BlockRead> blocks,
                                  const std::vector<size_t>& which, Clock::time_point deadline,
                                  bool promote, GetResult* result) {
  // Rare, and a sign of trouble on the way (a flaky link, a late write of an earlier call):
  // said, at most once in 10 s per process.
  static std::atomic<int64_t> last_warned{0};
  if (DueForWarning(last_warned)) {
    spdlog::warn(
        "{}: {} block(s) arrived short or failed their checksum over UCX; read again "
        "inline",
        Where("GetData"), which.size());
  }
  std::vector<BlockRead> reads;
  for (size_t i : which) reads.push_back(blocks[i]);
  GetResult again;
  again.blocks.resize(reads.size());
  again.sizes.resize(reads.size());
  again.checksums.resize(reads.size());
  auto parts = SplitBatch(reads.size(), max_keys_, max_inline_, [&](size_t k) {
    return std::min<uint64_t>(reads[k].capacity, max_block_);
  });
  for (const auto& part : parts) {
    absl::Status call = GetPart(ns, scope, reads, part, deadline, promote, &again);
    for (size_t k = part.first; !call.ok() && k < part.second; ++k) again.blocks[k] = call;
  }
  for (size_t k = 0; k < which.size(); ++k) {
    const size_t i = which[k];
    const absl::Status& st = again.blocks[k];
    if (st.ok()) {
      result->sizes[i] = again.sizes[k];
      result->checksums[i] = again.checksums[k];
      result->blocks[i] = absl::OkStatus();
    } else {
      // The retry's own code: DATA_LOSS only where its bytes failed their checksum too (a
      // block evicted meanwhile is NOT_FOUND, not corruption).
      result->sizes[i] = 0;
      result->blocks[i] = absl::Status(
          st.code(),
          absl::StrCat("not received whole or intact over UCX; inline retry: ", st.message()));
    }
  }
}

}  // namespace strata::client::internal
