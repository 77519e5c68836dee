#include "strata/transport/data_plane.h"

#include <openssl/rand.h>

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "spdlog/spdlog.h"

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
  plane->discard_.resize(options.max_block_bytes);
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
    plane->lanes_.push_back(std::move(*w));
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
  absl::flat_hash_map<uint64_t, ChannelState> open;
  {
    absl::MutexLock lock(&mu_);
    open.swap(channels_);
  }
  for (const auto& [id, channel] : open) Disconnect(id, channel);
  lanes_.clear();  // workers first: they may still reference the arena region
  arena_region_.reset();
}

uint64_t DataPlane::channels() const {
  absl::MutexLock lock(&mu_);
  return channels_.size();
}

namespace {
// A two-sided tag carries the low 32 bits of its channel's id in its high 32 bits.
constexpr uint64_t kChannelTagMask = 0xffffffff00000000ull;
uint64_t ChannelTagPrefix(uint64_t channel_id) { return channel_id << 32; }
}  // namespace

void DataPlane::Disconnect(uint64_t id, const ChannelState& channel) {
  for (size_t lane = 0; lane < channel.endpoints.size(); ++lane) {
    lanes_[lane]->Disconnect(channel.endpoints[lane]).IgnoreError();
  }
  if (id != 0) DropChannelMessages(id);
}

void DataPlane::DropChannelMessages(uint64_t id) {
  uint64_t n = 0;
  for (auto& lane : lanes_) n += lane->DropUnclaimed(ChannelTagPrefix(id), kChannelTagMask);
  if (n > 0) {
    unclaimed_dropped_.fetch_add(n, std::memory_order_relaxed);
    spdlog::info("data channel {}: dropped {} messages no call claimed", id, n);
  }
}

void DataPlane::DropUnclaimed(uint64_t channel_id, uint32_t lane, std::span<const uint64_t> tags) {
  if (lane >= lanes_.size()) return;
  uint64_t n = 0;
  for (uint64_t tag : tags) {
    if ((tag & kChannelTagMask) != ChannelTagPrefix(channel_id)) continue;
    n += lanes_[lane]->DropUnclaimed(tag, ~uint64_t{0});
  }
  unclaimed_dropped_.fetch_add(n, std::memory_order_relaxed);
}

uint64_t DataPlane::SweepUnclaimed() {
  absl::MutexLock sweep(&sweep_mu_);
  oldest_seen_.resize(lanes_.size());
  const absl::Time now = absl::Now();
  uint64_t closed = 0;
  for (size_t lane = 0; lane < lanes_.size(); ++lane) {
    OldestSeen& seen = oldest_seen_[lane];
    const std::optional<uint64_t> tag = lanes_[lane]->OldestUnclaimed(0, 0);
    if (tag != seen.tag) {
      seen = {tag, now};
      continue;
    }
    if (!tag.has_value() || now - seen.since < options_.unclaimed_timeout) continue;
    // UCX matches in arrival order, so every call of this channel since that message arrived
    // had its receives posted and this one was passed over: its call never reached the node.
    // Its neighbours cannot be told apart from messages of calls still on their way, so the
    // channel goes (the client connects a new one) and takes all of its messages with it.
    const uint64_t low = *tag >> 32;
    std::optional<uint64_t> channel;
    {
      absl::MutexLock lock(&mu_);
      for (const auto& [id, state] : channels_) {
        if ((id & 0xffffffffu) == low) channel = id;
      }
    }
    spdlog::warn("data plane lane {}: message tag {:#x} unclaimed for {}; {}", lane, *tag,
                 absl::FormatDuration(now - seen.since),
                 channel ? absl::StrCat("closing data channel ", *channel)
                         : std::string("its channel is gone, dropping it"));
    if (channel.has_value() && Close(*channel).ok()) {
      ++closed;
    } else {
      DropChannelMessages(low);
    }
    seen = {};
  }
  return closed;
}

transport::TcpSegments DataPlane::tcp_segments() const { return context_->tcp_segments(); }

absl::StatusOr<DataPlane::Channel> DataPlane::Connect(std::span<const std::string> client_addresses,
                                                      transport::TcpSegments client_tcp) {
  if (client_addresses.size() != lanes_.size()) {
    return absl::InvalidArgumentError(absl::StrCat("worker_addresses: ", client_addresses.size(),
                                                   " given, the node has ", lanes_.size(),
                                                   " lanes (Stats.ucx_lanes)"));
  }
  if (absl::Status s = transport::CheckTcpSegments(context_->tcp_segments(), client_tcp, tls_);
      !s.ok()) {
    return absl::FailedPreconditionError(
        absl::StrCat("ConnectData: ", s.message(), " (this side: the node, peer: the client)"));
  }
  {
    absl::MutexLock lock(&mu_);
    if (channels_.size() >= options_.max_channels) {
      return absl::ResourceExhaustedError(
          absl::StrCat("data channels: the node holds its maximum of ", options_.max_channels));
    }
  }
  ChannelState state;
  state.last_used = absl::Now();
  Channel out;
  for (size_t lane = 0; lane < lanes_.size(); ++lane) {
    absl::StatusOr<transport::EndpointId> ep = lanes_[lane]->Connect(client_addresses[lane]);
    if (!ep.ok()) {
      Disconnect(0, state);
      return absl::Status(ep.status().code(),
                          absl::StrCat("worker_addresses[", lane, "]: ", ep.status().message()));
    }
    state.endpoints.push_back(*ep);
    out.worker_addresses.push_back(lanes_[lane]->Address());
  }
  absl::StatusOr<std::string> info = lanes_[0]->DescribeEndpoint(state.endpoints[0]);
  out.transport = info.ok() ? *info : "unknown";
  absl::MutexLock lock(&mu_);
  // Random, not counted: naming a channel id in GetData/PutData/CloseData is the capability
  // to use it, so another client must not guess one. Nonzero in its low 32 bits (tags).
  do {
    if (RAND_bytes(reinterpret_cast<unsigned char*>(&out.id), sizeof(out.id)) != 1) {
      out.id = next_channel_++;
    }
  } while ((out.id & 0xffffffffu) == 0 || channels_.contains(out.id));
  channels_.emplace(out.id, std::move(state));
  return out;
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
                                 std::span<const transport::TransferOp> ops, absl::Time deadline) {
  if (lane >= lanes_.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("lane: ", lane, ", the node has ", lanes_.size(), " lanes"));
  }
  transport::EndpointId ep = 0;
  {
    absl::MutexLock lock(&mu_);
    auto it = channels_.find(channel_id);
    if (it == channels_.end()) {
      return absl::NotFoundError(
          absl::StrCat("channel_id ", channel_id, ": unknown or closed (ConnectData again)"));
    }
    it->second.last_used = absl::Now();
    ep = it->second.endpoints[lane];
  }
  absl::Status s = lanes_[lane]->Transfer(ep, ops, deadline);
  if (s.code() == absl::StatusCode::kUnavailable ||
      s.code() == absl::StatusCode::kDeadlineExceeded) {
    // The endpoint is retired (peer gone, or force-closed after the deadline): the channel
    // is of no further use; the client connects a new one.
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
