// ClientDataPlane's lane check (client_data_plane.h, "A wedged lane"): over shared memory a
// node that died mid-send can leave a client lane worker's receive queue unreadable for
// everyone; after a call gave up (Fence), the checker finds such a lane and gives it a new
// worker. The node's own lanes have the same check (transport/src/data_plane_lanes.cc).
#include <utility>

#include "absl/strings/str_cat.h"
#include "client_data_plane.h"
#include "spdlog/spdlog.h"

namespace strata::client {

using transport::DataPlane;

void ClientDataPlane::CheckLanes() {
  auto due = [this]()
                 ABSL_EXCLUSIVE_LOCKS_REQUIRED(check_mu_) { return check_due_ || stop_checking_; };
  auto stopping = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(check_mu_) { return stop_checking_; };
  for (;;) {
    {
      absl::MutexLock lock(&check_mu_);
      check_mu_.Await(absl::Condition(&due));
      if (stop_checking_) return;
      check_due_ = false;  // a Fence during this check asks for another
    }
    for (size_t lane = 0; lane < lanes() && !Stopping(); ++lane) {
      int misses = 0;
      while (!ProbeLane(lane) && ++misses < DataPlane::kLaneStrikes) {
        absl::MutexLock lock(&check_mu_);
        if (check_mu_.AwaitWithTimeout(absl::Condition(&stopping), options_.lane_check_interval)) {
          return;
        }
      }
      if (misses == DataPlane::kLaneStrikes) ReplaceLane(lane);
    }
  }
}

bool ClientDataPlane::Stopping() {
  absl::MutexLock lock(&check_mu_);
  return stop_checking_;
}

bool ClientDataPlane::ProbeLane(size_t lane) {
  if (probe_ == nullptr) {
    absl::StatusOr<std::unique_ptr<transport::Worker>> w = context_->CreateWorker();
    if (!w.ok()) {
      spdlog::warn("client data plane: no worker for the lane check: {}", w.status().ToString());
      return true;  // nothing known against the lane
    }
    probe_ = *std::move(w);
  }
  std::shared_ptr<transport::Worker> worker = Lane(lane);
  absl::StatusOr<transport::EndpointId> to = probe_->Connect(worker->Address());
  absl::StatusOr<transport::EndpointId> from = worker->Connect(probe_->Address());
  absl::Status s = !to.ok() ? to.status() : from.status();
  if (s.ok()) s = transport::ExchangeLaneCheck(*probe_, *to, *worker, *from, ++probe_seq_);
  // A failed transfer retired its endpoints: abandoned, not closed gracefully.
  if (to.ok()) (s.ok() ? probe_->Disconnect(*to) : probe_->Abandon(*to)).IgnoreError();
  if (from.ok()) (s.ok() ? worker->Disconnect(*from) : worker->Abandon(*from)).IgnoreError();
  if (!s.ok()) {
    spdlog::warn("client data plane lane {}: its check message did not arrive: {}", lane,
                 s.ToString());
  }
  return s.ok();
}

void ClientDataPlane::ReplaceLane(size_t lane) {
  absl::StatusOr<std::unique_ptr<transport::Worker>> fresh = context_->CreateWorker();
  if (!fresh.ok()) {
    spdlog::error("client data plane lane {}: wedged, and no new worker: {}", lane,
                  fresh.status().ToString());
    return;
  }
  {
    absl::MutexLock lock(&wire_mu_);
    // The node's channel has an endpoint to the old worker on this lane: unwired, so the next
    // call connects again (a call on it fails UNAVAILABLE and goes again on a fresh channel).
    // Abandoned as a Fence does: the node's requests still to come no longer reach the
    // buffers of calls that are giving up.
    for (size_t k = 0; k < endpoints_.size(); ++k) {
      workers_[k]->Abandon(endpoints_[k]).IgnoreError();
    }
    endpoints_.clear();
    wired_channel_ = 0;
    retired_.push_back(std::exchange(workers_[lane], std::move(*fresh)));
    ++lane_generation_;
  }
  spdlog::error(
      "client data plane lane {}: {} checks in a row found it wedged (a node that died mid-send "
      "over shared memory leaves its receive queue unreadable); replaced its UCX worker",
      lane, DataPlane::kLaneStrikes);
  lanes_replaced_.fetch_add(1, std::memory_order_relaxed);
}

absl::Status ClientDataPlane::StallLaneForTest(uint32_t lane) {
  if (lane >= lanes()) {
    return absl::InvalidArgumentError(
        absl::StrCat("lane: ", lane, ", the plane has ", lanes(), " lanes"));
  }
  Lane(lane)->StallForTest();
  return absl::OkStatus();
}

}  // namespace strata::client
