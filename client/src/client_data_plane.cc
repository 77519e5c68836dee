#include "client_data_plane.h"

#include <algorithm>
#include <iterator>
#include <limits>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "strata/common/threads.h"

namespace strata::client {
namespace {

std::string Addr(const void* p) {
  return absl::StrCat("0x", absl::Hex(reinterpret_cast<uintptr_t>(p)));
}

}  // namespace

bool TlsIncludesTcp(const std::string& tls) {
  if (absl::StartsWith(tls, "^")) return false;
  for (absl::string_view t : absl::StrSplit(tls, ',')) {
    if (t == "tcp") return true;
  }
  return false;
}

bool TlsIsSharedMemoryOnly(const std::string& tls) {
  if (tls.empty() || absl::StartsWith(tls, "^")) return false;
  bool memory = false;
  for (absl::string_view t : absl::StrSplit(tls, ',')) {
    if (t == "self") continue;
    if (t != "shm" && t != "sm" && t != "posix" && t != "sysv" && t != "cma" && t != "knem" &&
        t != "xpmem") {
      return false;
    }
    memory = true;
  }
  return memory;
}

absl::StatusOr<std::unique_ptr<ClientDataPlane>> ClientDataPlane::Create(
    const ClientDataPlaneOptions& options) {
  if (options.lanes == 0) return absl::InvalidArgumentError("ucx_lanes: 0");
  if (options.bounce_buffer_size == 0 || options.bounce_buffers == 0) {
    return absl::InvalidArgumentError(absl::StrCat("bounce pool: ", options.bounce_buffers, " x ",
                                                   options.bounce_buffer_size, " bytes"));
  }
  std::unique_ptr<ClientDataPlane> plane(new ClientDataPlane(options));
  transport::TransportOptions topts;
  topts.tls = options.tls;
  topts.peer_failure_handling = options.peer_failure_handling;
  absl::StatusOr<std::unique_ptr<transport::Context>> context = transport::Context::Create(topts);
  if (!context.ok()) {
    return absl::Status(context.status().code(), absl::StrCat("UCX context (tls=", options.tls,
                                                              "): ", context.status().message()));
  }
  plane->context_ = *std::move(context);
  for (uint32_t lane = 0; lane < options.lanes; ++lane) {
    absl::StatusOr<std::unique_ptr<transport::Worker>> worker = plane->context_->CreateWorker();
    if (!worker.ok()) {
      return absl::Status(worker.status().code(), absl::StrCat("UCX worker for lane ", lane, ": ",
                                                               worker.status().message()));
    }
    absl::MutexLock lock(&plane->wire_mu_);
    plane->workers_.push_back(*std::move(worker));
  }
  if (TlsIsSharedMemoryOnly(options.tls) && options.lane_check_interval > absl::ZeroDuration()) {
    absl::StatusOr<std::thread> checker =
        StartThread("the lane checker", [p = plane.get()] { p->CheckLanes(); });
    if (!checker.ok()) return checker.status();
    plane->checker_ = *std::move(checker);
  }
  return plane;
}

ClientDataPlane::~ClientDataPlane() {
  {
    absl::MutexLock lock(&check_mu_);
    stop_checking_ = true;
  }
  if (checker_.joinable()) checker_.join();
  probe_.reset();
  std::vector<std::shared_ptr<transport::Worker>> workers;
  {
    absl::MutexLock lock(&wire_mu_);
    DisconnectAll();
    workers.swap(workers_);
    workers.insert(workers.end(), retired_.begin(), retired_.end());
    retired_.clear();
  }
  // Workers first: until they stop, RMA the node already sent may still read or write the
  // registered ranges and bounce buffers.
  workers.clear();
  {
    absl::MutexLock lock(&regions_mu_);
    regions_.clear();
  }
  pool_ptr_.store(nullptr);
  {
    absl::MutexLock lock(&pool_mu_);
    pool_.reset();
  }
  context_.reset();
}

std::vector<std::string> ClientDataPlane::WorkerAddresses(uint64_t* generation) const {
  std::vector<std::string> out;
  absl::MutexLock lock(&wire_mu_);
  if (generation != nullptr) *generation = lane_generation_;
  out.reserve(workers_.size());
  for (const auto& w : workers_) out.push_back(w->Address());
  return out;
}

std::shared_ptr<transport::Worker> ClientDataPlane::Lane(size_t lane) {
  absl::MutexLock lock(&wire_mu_);
  return workers_[lane];
}

bool ClientDataPlane::Wired(uint64_t channel_id) {
  absl::MutexLock lock(&wire_mu_);
  return channel_id != 0 && channel_id == wired_channel_;
}

void ClientDataPlane::DisconnectAll() {
  for (size_t lane = 0; lane < endpoints_.size(); ++lane) {
    // An endpoint the node already dropped may have failed; closing it is all that is left.
    workers_[lane]->Disconnect(endpoints_[lane]).IgnoreError();
  }
  endpoints_.clear();
  wired_channel_ = 0;
}

void ClientDataPlane::DropChannelMessages(uint64_t channel_id) {
  const uint64_t prefix = transport::ChannelTagPrefix(channel_id);
  std::vector<std::shared_ptr<transport::Worker>> lanes;
  {
    absl::MutexLock lock(&wire_mu_);
    lanes = workers_;
  }
  for (auto& w : lanes) w->DropUnclaimed({&prefix, 1}, transport::kChannelTagMask);
}

bool ClientDataPlane::Fence(uint64_t channel_id) {
  absl::MutexLock lock(&wire_mu_);
  const bool wired = channel_id != 0 && channel_id == wired_channel_;
  if (wired) {
    for (size_t lane = 0; lane < endpoints_.size(); ++lane) {
      workers_[lane]->Abandon(endpoints_[lane]).IgnoreError();
    }
    endpoints_.clear();
    wired_channel_ = 0;
  }
  if (checker_.joinable()) {
    // A call gave up on a lane: it may be wedged (lanes_replaced()).
    absl::MutexLock check(&check_mu_);
    check_due_ = true;
  }
  return wired;
}

absl::Status ClientDataPlane::Wire(uint64_t channel_id,
                                   const std::vector<std::string>& node_addresses,
                                   std::optional<uint64_t> generation) {
  if (node_addresses.size() != lanes()) {
    return absl::InvalidArgumentError(absl::StrCat("node sent ", node_addresses.size(),
                                                   " worker addresses for ", lanes(), " lanes"));
  }
  absl::MutexLock lock(&wire_mu_);
  if (generation.has_value() && *generation != lane_generation_) {
    return absl::UnavailableError(
        "a client lane was replaced (wedged) while the channel was opened; connect again");
  }
  DisconnectAll();
  std::vector<transport::EndpointId> fresh;
  for (size_t lane = 0; lane < workers_.size(); ++lane) {
    absl::StatusOr<transport::EndpointId> ep = workers_[lane]->Connect(node_addresses[lane]);
    if (!ep.ok()) {
      for (size_t k = 0; k < fresh.size(); ++k) workers_[k]->Disconnect(fresh[k]).IgnoreError();
      return absl::Status(ep.status().code(),
                          absl::StrCat("node lane ", lane, ": ", ep.status().message()));
    }
    fresh.push_back(*ep);
  }
  endpoints_ = std::move(fresh);
  wired_channel_ = channel_id;
  return absl::OkStatus();
}

absl::Status ClientDataPlane::Transfer(uint32_t lane, std::span<const transport::TransferOp> ops,
                                       absl::Time deadline, const std::atomic<bool>* abort,
                                       uint64_t channel) {
  if (lane >= lanes()) {
    return absl::InvalidArgumentError(absl::StrCat("Transfer on lane ", lane, " of ", lanes()));
  }
  transport::EndpointId ep = 0;
  std::shared_ptr<transport::Worker> worker;
  {
    absl::MutexLock lock(&wire_mu_);
    if (endpoints_.empty()) {
      return absl::FailedPreconditionError(
          absl::StrCat("Transfer on lane ", lane, ": no data channel is wired"));
    }
    if (channel != 0 && channel != wired_channel_) {
      // Another call replaced the call's channel meanwhile: its tags would travel on the new
      // one's endpoints, and an abort of this batch would retire them under their calls.
      return absl::UnavailableError(absl::StrCat("Transfer on lane ", lane, ": data channel ",
                                                 channel, " was replaced; connect again"));
    }
    ep = endpoints_[lane];
    worker = workers_[lane];
  }
  // Not under wire_mu_: the batch may run until its deadline, and Wire() must not wait for it.
  absl::Status s = worker->Transfer(ep, ops, deadline, abort);
  if (s.code() == absl::StatusCode::kInvalidArgument) {
    // A Wire() between the copy and the post disconnected `ep`: the channel is what changed.
    absl::MutexLock lock(&wire_mu_);
    if (endpoints_.size() <= lane || endpoints_[lane] != ep) {
      return absl::UnavailableError(absl::StrCat(
          "Transfer on lane ", lane, ": the data channel was replaced (", s.message(), ")"));
    }
  }
  return s;
}

absl::Status ClientDataPlane::Register(void* ptr, size_t len) {
  if (ptr == nullptr || len == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("RegisterMemory: ptr ", Addr(ptr), ", len ", len));
  }
  const uintptr_t begin = reinterpret_cast<uintptr_t>(ptr);
  if (len > std::numeric_limits<uintptr_t>::max() - begin) {
    return absl::InvalidArgumentError("RegisterMemory: range wraps around the address space");
  }
  auto overlaps = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(regions_mu_) -> bool {
    auto next = regions_.lower_bound(begin);
    if (next != regions_.end() && next->first < begin + len) return true;
    if (next == regions_.begin()) return false;
    const auto& prev = std::prev(next)->second;
    return prev->remote_addr() + prev->size() > begin;
  };
  {
    absl::MutexLock lock(&regions_mu_);
    if (overlaps()) {
      return absl::InvalidArgumentError(absl::StrCat("RegisterMemory: [", Addr(ptr), ", +", len,
                                                     ") overlaps a registered range"));
    }
  }
  // Registration pins memory and may take long on RDMA devices: outside the lock.
  absl::StatusOr<std::unique_ptr<transport::MemoryRegion>> region = context_->Register(ptr, len);
  if (!region.ok()) {
    return absl::Status(region.status().code(),
                        absl::StrCat("RegisterMemory: ", region.status().message()));
  }
  absl::MutexLock lock(&regions_mu_);
  if (overlaps()) {  // a concurrent registration won the race
    return absl::InvalidArgumentError(
        absl::StrCat("RegisterMemory: [", Addr(ptr), ", +", len, ") overlaps a registered range"));
  }
  regions_.emplace(begin, std::shared_ptr<const transport::MemoryRegion>(*std::move(region)));
  return absl::OkStatus();
}

absl::Status ClientDataPlane::Unregister(void* ptr) {
  std::shared_ptr<const transport::MemoryRegion> doomed;
  {
    absl::MutexLock lock(&regions_mu_);
    auto it = regions_.find(reinterpret_cast<uintptr_t>(ptr));
    if (it == regions_.end()) {
      return absl::NotFoundError(absl::StrCat("UnregisterMemory: no range starts at ", Addr(ptr)));
    }
    doomed = std::move(it->second);
    regions_.erase(it);
  }
  // Deregistration happens here, outside the lock (or later, if a call still holds it).
  doomed.reset();
  return absl::OkStatus();
}

std::shared_ptr<const transport::MemoryRegion> ClientDataPlane::FindRegion(const void* ptr,
                                                                           size_t len) const {
  const uintptr_t addr = reinterpret_cast<uintptr_t>(ptr);
  absl::MutexLock lock(&regions_mu_);
  auto it = regions_.upper_bound(addr);
  if (it == regions_.begin()) return nullptr;
  --it;
  return it->second->Contains(ptr, len) ? it->second : nullptr;
}

absl::StatusOr<std::vector<transport::BounceBuffer>> ClientDataPlane::AcquireBounce(
    size_t count, absl::Time deadline) {
  std::vector<transport::BounceBuffer> out;
  if (count == 0) return out;
  if (count > options_.bounce_buffers) {
    return absl::InternalError(
        absl::StrCat("asked for ", count, " bounce buffers of ", options_.bounce_buffers));
  }
  transport::BouncePool* pool = nullptr;
  {
    auto free_to_gather = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(pool_mu_) { return !acquiring_; };
    if (!pool_mu_.LockWhenWithDeadline(absl::Condition(&free_to_gather), deadline)) {
      pool_mu_.Unlock();
      return absl::DeadlineExceededError("deadline passed waiting for bounce buffers");
    }
    if (pool_ == nullptr) {
      // Memory registration, not network I/O: other gatherers may wait for it.
      absl::StatusOr<std::unique_ptr<transport::BouncePool>> created =
          transport::BouncePool::Create(*context_, options_.bounce_buffer_size,
                                        options_.bounce_buffers);
      if (!created.ok()) {
        pool_mu_.Unlock();
        return created.status();
      }
      pool_ = *std::move(created);
      pool_ptr_.store(pool_.get());
    }
    acquiring_ = true;
    pool = pool_.get();
    pool_mu_.Unlock();
  }
  absl::Status status;
  for (size_t i = 0; i < count; ++i) {
    absl::StatusOr<transport::BounceBuffer> b = pool->Acquire(deadline);
    if (!b.ok()) {
      status = absl::DeadlineExceededError(absl::StrCat(
          "deadline passed waiting for ", count, " bounce buffers (", b.status().message(), ")"));
      out.clear();  // returns what was gathered
      break;
    }
    out.push_back(*std::move(b));
  }
  {
    absl::MutexLock lock(&pool_mu_);
    acquiring_ = false;
  }
  if (!status.ok()) return status;
  return out;
}

const transport::MemoryRegion& ClientDataPlane::bounce_region() const {
  return pool_ptr_.load()->region();
}

std::string CondenseTransport(const std::string& description) {
  if (description.find('\n') == std::string::npos) return description;
  // Lane lines look like "#   lane[0]:  1:tcp/lo.0 md[0]  -> md[0]/tcp/sysdev[255] am am_bw#0".
  std::vector<std::string> transports;
  for (absl::string_view line : absl::StrSplit(description, '\n')) {
    size_t at = line.find("lane[");
    if (at == absl::string_view::npos) continue;
    at = line.find("]:", at);
    if (at == absl::string_view::npos) continue;
    absl::string_view rest = absl::StripLeadingAsciiWhitespace(line.substr(at + 2));
    size_t colon = rest.find(':');
    if (colon == absl::string_view::npos) continue;
    rest = rest.substr(colon + 1);
    absl::string_view tl = rest.substr(0, rest.find_first_of(" \t"));
    if (tl.empty() || tl.find('/') == absl::string_view::npos) continue;
    // UCX appends the path index ("tcp/lo.0"); the device name alone reads better.
    const size_t dot = tl.rfind('.');
    if (dot != absl::string_view::npos && dot + 1 < tl.size() &&
        tl.find_first_not_of("0123456789", dot + 1) == absl::string_view::npos) {
      tl = tl.substr(0, dot);
    }
    if (std::find(transports.begin(), transports.end(), tl) == transports.end()) {
      transports.emplace_back(tl);
    }
  }
  if (transports.empty()) return "unknown";
  return absl::StrJoin(transports, ",");
}

}  // namespace strata::client
