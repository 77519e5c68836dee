#include "strata/transport/data_plane.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "spdlog/spdlog.h"
#include "strata/common/random.h"
#include "strata/common/threads.h"

namespace strata::transport {

absl::StatusOr<std::unique_ptr<DataPlane>> DataPlane::Create(const DataPlaneOptions& options,
                                                             void* arena, uint64_t arena_bytes) {
  if (options.lanes == 0 || options.lanes > 64) {
    return absl::InvalidArgumentError(absl::StrCat("ucx_lanes: ", options.lanes, ", want 1..64"));
  }
  // Shared memory has no peer-failure support in UCX 1.13 (transport/worker.h): a co-located,
  // trusted deployment trades dead-peer detection (deadlines still bound every transfer) for
  // RMA through shared segments.
  const bool shm = options.tls == "shm";
  std::string tls = shm ? "posix,sysv,cma,self" : options.tls;
  std::unique_ptr<DataPlane> plane(new DataPlane(options, tls, !shm));
  // Left uninitialized (never read): malloc maps blocks this large, so untouched pages of
  // these buffers are not resident.
  for (uint32_t i = 0; i < options.lanes; ++i) {
    plane->discard_.emplace_back(new uint8_t[options.max_block_bytes]);
  }
  transport::TransportOptions topts;
  topts.tls = tls;
  topts.peer_failure_handling = !shm;
  absl::StatusOr<std::unique_ptr<transport::Context>> context = transport::Context::Create(topts);
  if (!context.ok()) {
    return absl::Status(context.status().code(), absl::StrCat("UCX (ucx_tls=", options.tls,
                                                              "): ", context.status().message()));
  }
  plane->context_ = std::move(*context);
  absl::StatusOr<std::unique_ptr<transport::MemoryRegion>> region =
      plane->context_->Register(arena, arena_bytes);
  if (!region.ok()) return region.status();
  plane->arena_region_ = std::move(*region);
  for (uint32_t i = 0; i < options.lanes; ++i) {
    absl::StatusOr<std::unique_ptr<transport::Worker>> w = plane->context_->CreateWorker();
    if (!w.ok()) return w.status();
    absl::MutexLock lock(&plane->mu_);
    plane->lanes_.push_back(std::move(*w));
  }
  if (shm && options.lane_check_interval > absl::ZeroDuration()) {
    absl::StatusOr<std::unique_ptr<transport::Worker>> w = plane->context_->CreateWorker();
    if (!w.ok()) return w.status();
    plane->probe_ = std::move(*w);
    plane->probes_.resize(options.lanes);
    absl::StatusOr<std::thread> checker =
        StartThread("the lane checker", [p = plane.get()] { p->CheckLanes(); });
    if (!checker.ok()) return checker.status();
    plane->checker_ = *std::move(checker);
  }
  spdlog::info("data plane: UCX tls={} lanes={} peer-failure-handling={}", tls, options.lanes,
               !shm);
  return plane;
}

DataPlane::DataPlane(DataPlaneOptions options, std::string tls, bool peer_failure_handling)
    : options_(std::move(options)),
      tls_(std::move(tls)),
      peer_failure_handling_(peer_failure_handling) {}

DataPlane::~DataPlane() {
  stop_checking_.Notify();
  if (checker_.joinable()) checker_.join();
  probes_.clear();
  probe_.reset();
  absl::flat_hash_map<uint64_t, ChannelState> open;
  {
    absl::MutexLock lock(&mu_);
    open.swap(channels_);
  }
  for (const auto& [id, channel] : open) Disconnect(id, channel);
  open.clear();
  {
    absl::MutexLock lock(&mu_);
    lanes_.clear();  // workers first: they may still reference the arena region
    retired_lanes_.clear();
  }
  arena_region_.reset();
}

std::vector<std::shared_ptr<transport::Worker>> DataPlane::Lanes() const {
  absl::MutexLock lock(&mu_);
  return lanes_;
}

bool DataPlane::Knows(uint64_t channel_id) const {
  absl::MutexLock lock(&mu_);
  return channels_.contains(channel_id);
}

uint64_t DataPlane::channels() const {
  absl::MutexLock lock(&mu_);
  return channels_.size();
}

void DataPlane::Disconnect(uint64_t id, const ChannelState& channel) {
  for (size_t lane = 0; lane < channel.endpoints.size(); ++lane) {
    channel.workers[lane]->Disconnect(channel.endpoints[lane]).IgnoreError();
  }
  if (id != 0) DropChannelMessages(id, channel.workers);
}

transport::TcpSegments DataPlane::tcp_segments() const { return context_->tcp_segments(); }

// Tags carry only a channel's low 32 bits (the sweep and the drops go by them): those are
// unique among open channels and those whose late messages are still dropped, so one
// channel's drop never takes another's messages.
bool DataPlane::LowBitsTaken(uint64_t id) const {
  for (const auto& [open, state] : channels_) {
    if (ChannelTagPrefix(open) == ChannelTagPrefix(id)) return true;
  }
  for (const Closed& c : closed_) {
    if (c.prefix == ChannelTagPrefix(id)) return true;
  }
  return false;
}

absl::StatusOr<DataPlane::Channel> DataPlane::Connect(std::span<const std::string> client_addresses,
                                                      transport::TcpSegments client_tcp,
                                                      absl::string_view owner) {
  if (client_addresses.size() != lanes()) {
    return absl::InvalidArgumentError(absl::StrCat("worker_addresses: ", client_addresses.size(),
                                                   " given, the node has ", lanes(),
                                                   " lanes (Stats.ucx_lanes)"));
  }
  if (absl::Status s = transport::CheckTcpSegments(context_->tcp_segments(), client_tcp, tls_);
      !s.ok()) {
    return absl::FailedPreconditionError(
        absl::StrCat("ConnectData: ", s.message(), " (this side: the node, peer: the client)"));
  }
  {
    // The slot is taken before connecting (outside the lock), so that connects at once cannot
    // each pass the check.
    absl::MutexLock lock(&mu_);
    if (channels_.size() + connecting_ >= options_.max_channels) {
      return absl::ResourceExhaustedError(
          absl::StrCat("data channels: the node holds its maximum of ", options_.max_channels));
    }
    if (options_.max_channels_per_owner > 0 && !owner.empty()) {
      // Counted over the open channels: ConnectData is rare next to the calls that use them.
      auto held = connecting_by_owner_.find(owner);
      uint64_t n = held == connecting_by_owner_.end() ? 0 : held->second;
      for (const auto& [id, open] : channels_) n += open.owner == owner ? 1 : 0;
      if (n >= options_.max_channels_per_owner) {
        return absl::ResourceExhaustedError(absl::StrCat(
            "data channels: ", owner, " holds ", n,
            ", its maximum (tenant_data_channels); close idle clients, or share one client"));
      }
    }
    ++connecting_;
    if (!owner.empty()) ++connecting_by_owner_[owner];
  }
  // Ends the connect's count, under mu_.
  auto connected = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    --connecting_;
    if (owner.empty()) return;
    auto it = connecting_by_owner_.find(owner);
    if (--it->second == 0) connecting_by_owner_.erase(it);
  };
  ChannelState state;
  state.last_used = absl::Now();
  state.owner = std::string(owner);
  const std::vector<std::shared_ptr<transport::Worker>> lanes = Lanes();
  Channel out;
  for (size_t lane = 0; lane < lanes.size(); ++lane) {
    absl::StatusOr<transport::EndpointId> ep = lanes[lane]->Connect(client_addresses[lane]);
    if (!ep.ok()) {
      Disconnect(0, state);
      absl::MutexLock lock(&mu_);
      connected();
      return absl::Status(ep.status().code(),
                          absl::StrCat("worker_addresses[", lane, "]: ", ep.status().message()));
    }
    state.endpoints.push_back(*ep);
    state.workers.push_back(lanes[lane]);
    out.worker_addresses.push_back(lanes[lane]->Address());
  }
  absl::StatusOr<std::string> info = lanes[0]->DescribeEndpoint(state.endpoints[0]);
  out.transport = info.ok() ? *info : "unknown";
  absl::Status failed =
      absl::UnavailableError("ConnectData: a lane was replaced meanwhile; connect again");
  {
    absl::MutexLock lock(&mu_);
    connected();
    // A lane replaced meanwhile (data_plane_lanes.cc) leaves this channel on a wedged worker.
    if (lanes_ == lanes) {
      // Random, not counted: naming a channel id in GetData/PutData/CloseData is the
      // capability to use it, so another client must not guess one. Nonzero in its low 32
      // bits (tags).
      absl::Status drawn;
      do {
        absl::StatusOr<uint64_t> id = RandomU64();
        drawn = id.status();
        out.id = id.value_or(0);
      } while (drawn.ok() && (ChannelTagPrefix(out.id) == 0 || LowBitsTaken(out.id)));
      if (drawn.ok()) {
        channels_.emplace(out.id, std::move(state));
        return out;
      }
      failed = absl::UnavailableError(absl::StrCat("ConnectData: ", drawn.message()));
    }
  }
  Disconnect(0, state);
  return failed;
}

absl::Status DataPlane::Close(uint64_t channel_id) {
  ChannelState closing;
  {
    absl::MutexLock lock(&mu_);
    auto it = channels_.find(channel_id);
    if (it == channels_.end()) {
      return absl::NotFoundError(absl::StrCat("channel_id ", channel_id, ": unknown or closed"));
    }
    closing = std::move(it->second);
    channels_.erase(it);
  }
  Disconnect(channel_id, closing);  // outside the lock: it waits for the lanes' threads
  return absl::OkStatus();
}

absl::Status DataPlane::Transfer(uint64_t channel_id, uint32_t lane,
                                 std::span<const transport::TransferOp> ops, absl::Time deadline,
                                 const transport::TransferHooks* hooks,
                                 const std::atomic<bool>* abort) {
  if (lane >= lanes()) {
    return absl::InvalidArgumentError(
        absl::StrCat("lane: ", lane, ", the node has ", lanes(), " lanes"));
  }
  transport::EndpointId ep = 0;
  std::shared_ptr<transport::Worker> worker;
  {
    absl::MutexLock lock(&mu_);
    auto it = channels_.find(channel_id);
    if (it == channels_.end()) {
      return absl::NotFoundError(
          absl::StrCat("channel_id ", channel_id, ": unknown or closed (ConnectData again)"));
    }
    it->second.last_used = absl::Now();
    ep = it->second.endpoints[lane];
    worker = it->second.workers[lane];
  }
  // A cancelled call's transfer stops at once only where that is safe for a live peer: its
  // receives, or anything over shared memory. Elsewhere (TCP, RDMA) a force-close with emulated
  // RMA in flight can abort the peer process (the deadline path gives it a drain grace), and
  // UCX notices a dead peer by itself there.
  const bool receives_only =
      std::all_of(ops.begin(), ops.end(), [](const transport::TransferOp& op) {
        return op.kind == transport::TransferOp::Kind::kRecv;
      });
  const bool may_abort = !peer_failure_handling_ || receives_only;
  absl::Status s = worker->Transfer(ep, ops, deadline, may_abort ? abort : nullptr, hooks);
  if (s.code() == absl::StatusCode::kInvalidArgument && !Knows(channel_id)) {
    // Closed under the call (another call's failure, the idle reaper, the sweep): the lane no
    // longer knows the endpoint. The caller's request was sound; NOT_FOUND makes it reconnect.
    return absl::NotFoundError(
        absl::StrCat("channel_id ", channel_id, ": closed during the call (ConnectData again)"));
  }
  if (s.code() == absl::StatusCode::kUnavailable ||
      s.code() == absl::StatusCode::kDeadlineExceeded ||
      (s.code() == absl::StatusCode::kCancelled && !receives_only)) {
    // The endpoint is retired (peer gone, force-closed after the deadline, or after an abort
    // with sends or one-sided ops): the channel is of no further use; the client connects a
    // new one.
    spdlog::warn("data channel {} lane {}: {}; closing the channel", channel_id, lane,
                 s.ToString());
    Close(channel_id).IgnoreError();
  }
  return s;
}

uint64_t DataPlane::CloseIdle() {
  absl::Time cutoff = absl::Now() - options_.channel_idle;
  std::vector<std::pair<uint64_t, ChannelState>> idle;
  {
    absl::MutexLock lock(&mu_);
    for (auto it = channels_.begin(); it != channels_.end();) {
      if (it->second.last_used < cutoff) {
        idle.emplace_back(it->first, std::move(it->second));
        channels_.erase(it++);
      } else {
        ++it;
      }
    }
  }
  for (const auto& [id, c] : idle) Disconnect(id, c);
  return idle.size();
}

}  // namespace strata::transport
