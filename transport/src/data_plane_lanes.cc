// DataPlane's lane checker (data_plane.h, "A wedged lane"): over shared memory a peer that
// died mid-send can leave a lane worker's receive queue unreadable for everyone; the checker
// finds such a lane and gives it a new worker.
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "spdlog/spdlog.h"
#include "strata/transport/data_plane.h"

namespace strata::transport {

void DataPlane::CheckLanes() {
  while (!stop_checking_.WaitForNotificationWithTimeout(options_.lane_check_interval)) {
    for (size_t lane = 0; lane < probes_.size() && !stop_checking_.HasBeenNotified(); ++lane) {
      Probe& p = probes_[lane];
      if (ProbeLane(lane)) {
        p.misses = 0;
        p.capped = false;
        if (std::exchange(p.wedged, false)) lanes_wedged_.fetch_sub(1, std::memory_order_relaxed);
        continue;
      }
      // One left wedged at the cap is not tried again unless it recovers; one that got no new
      // worker (descriptors short, say) is tried again every kLaneStrikes checks.
      if (p.capped || ++p.misses < kLaneStrikes) continue;
      p.misses = 0;
      if (!ReplaceLane(lane, &p.capped) && !std::exchange(p.wedged, true)) {
        lanes_wedged_.fetch_add(1, std::memory_order_relaxed);
      }
    }
  }
}

bool DataPlane::ProbeLane(size_t lane) {
  Probe& p = probes_[lane];
  std::shared_ptr<Worker> worker = Lanes()[lane];
  auto forget = [&] {
    if (p.to_lane != 0) probe_->Abandon(p.to_lane).IgnoreError();
    if (p.lane != nullptr && p.from_lane != 0) p.lane->Abandon(p.from_lane).IgnoreError();
    p.lane = nullptr;
    p.to_lane = p.from_lane = 0;
  };
  if (p.lane != worker) {
    forget();
    absl::StatusOr<EndpointId> to = probe_->Connect(worker->Address());
    absl::StatusOr<EndpointId> from = worker->Connect(probe_->Address());
    p.lane = worker;
    p.to_lane = to.ok() ? *to : 0;
    p.from_lane = from.ok() ? *from : 0;
    if (!to.ok() || !from.ok()) {
      spdlog::warn("data plane lane {}: check cannot connect: {}", lane,
                   (!to.ok() ? to.status() : from.status()).ToString());
      forget();
      return false;
    }
  }
  absl::Status s = ExchangeLaneCheck(*probe_, p.to_lane, *worker, p.from_lane, ++probe_seq_);
  if (!s.ok()) {
    if (!p.wedged) {  // a lane known wedged was reported already
      spdlog::warn("data plane lane {}: its check message did not arrive: {}", lane, s.ToString());
    }
    forget();  // a failed transfer retires its endpoints: the next check connects anew
  }
  return s.ok();
}

bool DataPlane::ReplaceLane(size_t lane, bool* capped) {
  {
    absl::MutexLock lock(&mu_);
    *capped = retired_lanes_.size() >= options_.max_replaced_lanes;
    if (*capped) {
      // Each replaced worker is kept (below): past the cap the lane stays wedged, and the node
      // says so (/healthz) instead of growing by a worker, its thread and descriptors each time.
      spdlog::error(
          "data plane lane {}: wedged, and {} lanes were replaced already (ucx_max_replaced_lanes)"
          ": left as it is; restart the node",
          lane, retired_lanes_.size());
      return false;
    }
  }
  absl::StatusOr<std::unique_ptr<Worker>> fresh = context_->CreateWorker();
  if (!fresh.ok()) {
    spdlog::error("data plane lane {}: wedged, and no new worker: {}", lane,
                  fresh.status().ToString());
    return false;
  }
  absl::flat_hash_map<uint64_t, ChannelState> closing;
  {
    absl::MutexLock lock(&mu_);
    // Kept until the plane goes: UCX 1.13 can crash destroying a worker whose sends still wait
    // on a shared-memory peer that reads nothing (ucp_worker_destroy purging them), which is
    // what a wedged lane's peers may be.
    retired_lanes_.push_back(std::exchange(lanes_[lane], std::move(*fresh)));
    // Every channel has an endpoint on the old worker: none can use this lane any more.
    closing.swap(channels_);
  }
  spdlog::error(
      "data plane lane {}: {} checks in a row found it wedged (a peer that died mid-send over "
      "shared memory leaves its receive queue unreadable); replaced its UCX worker and closed "
      "{} channels, whose clients connect again",
      lane, kLaneStrikes, closing.size());
  for (const auto& [id, channel] : closing) Disconnect(id, channel);
  lanes_replaced_.fetch_add(1, std::memory_order_relaxed);
  return true;
}

absl::Status ExchangeLaneCheck(Worker& probe, EndpointId to_lane, Worker& lane,
                               EndpointId from_probe, uint64_t tag) {
  // Tags of channel messages carry a nonzero channel prefix: these name none.
  tag &= ~kChannelTagMask;
  const uint8_t sent = 1;
  uint8_t got = 0;
  size_t received = 0;
  const TransferOp send = TransferOp::Send(&sent, 1, tag);
  const TransferOp recv = TransferOp::Recv(&got, 1, tag, &received);
  absl::Status s = probe.Transfer(to_lane, {&send, 1}, absl::Now() + DataPlane::kLaneProbeWait);
  if (s.ok()) s = lane.Transfer(from_probe, {&recv, 1}, absl::Now() + DataPlane::kLaneProbeWait);
  const uint64_t none = 0;
  lane.DropUnclaimed({&none, 1}, kChannelTagMask);
  return s;
}

absl::Status DataPlane::StallLaneForTest(uint32_t lane) {
  if (lane >= lanes()) {
    return absl::InvalidArgumentError(
        absl::StrCat("lane: ", lane, ", the node has ", lanes(), " lanes"));
  }
  Lanes()[lane]->StallForTest();
  return absl::OkStatus();
}

}  // namespace strata::transport
