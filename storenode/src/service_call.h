// What every StoreServiceImpl call shares (store_service.cc, store_service_data.cc): timing
// and error metrics per call, and the proto tier of a store tier number. Private.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "grpcpp/support/status.h"
#include "metrics.h"
#include "spdlog/spdlog.h"
#include "strata/common/byte_size.h"
#include "strata/proto/status_convert.h"
#include "strata/v1/store.pb.h"

namespace strata::storenode {

// The node's admission limits: calls served at once and inline payload bytes in flight.
// Lock-free; a refusal is immediate (never queued), so an overloaded node answers
// RESOURCE_EXHAUSTED quickly and its memory stays within the configured budgets.
class Admission {
 public:
  Admission(uint64_t max_calls, uint64_t max_bytes)
      : max_calls_(max_calls), max_bytes_(max_bytes) {}

  bool EnterCall() {
    if (calls_.fetch_add(1, std::memory_order_acq_rel) < max_calls_) return true;
    calls_.fetch_sub(1, std::memory_order_acq_rel);
    return false;
  }
  void LeaveCall() { calls_.fetch_sub(1, std::memory_order_acq_rel); }
  bool TakeBytes(uint64_t n) {
    // More than the whole budget never fits, and is not added even for a moment: concurrent
    // takes of huge amounts would wrap the sum around and pass the check.
    if (n > max_bytes_) return false;
    if (bytes_.fetch_add(n, std::memory_order_acq_rel) + n <= max_bytes_) return true;
    bytes_.fetch_sub(n, std::memory_order_acq_rel);
    return false;
  }
  void ReturnBytes(uint64_t n) { bytes_.fetch_sub(n, std::memory_order_acq_rel); }
  // Whether `n` more bytes would fit now (a hint: nothing is taken).
  bool HasRoom(uint64_t n) const {
    return bytes_.load(std::memory_order_acquire) + n <= max_bytes_;
  }
  uint64_t max_calls() const { return max_calls_; }
  uint64_t max_bytes() const { return max_bytes_; }

 private:
  const uint64_t max_calls_;
  const uint64_t max_bytes_;
  std::atomic<uint64_t> calls_{0};
  std::atomic<uint64_t> bytes_{0};
};

// Data calls (PutData, GetData) each tenant has in progress, at most `cap` at once (0: no
// cap). A data call may wait for its client's messages until its transfer deadline (minutes),
// so without a share one tenant's calls could hold every one of max_concurrent_calls and lock
// the other tenants out. Thread-safe; a tenant leaves the map when its last call ends.
class TenantCalls {
 public:
  explicit TenantCalls(uint64_t cap) : cap_(cap) {}

  // One call's place, given back when it goes out of scope (empty: nothing was taken).
  class Slot {
   public:
    Slot() = default;
    ~Slot() {
      if (owner_ != nullptr) owner_->Leave(tenant_);
    }
    Slot(const Slot&) = delete;
    Slot& operator=(const Slot&) = delete;

   private:
    friend class TenantCalls;
    TenantCalls* owner_ = nullptr;
    std::string tenant_;
  };

  // Takes a place of `tenant`'s into the empty *slot, or false (nothing taken) when the tenant
  // holds `cap` already. The number in progress, before this one, in *held.
  bool Enter(const std::string& tenant, Slot* slot, uint64_t* held) {
    absl::MutexLock lock(&mu_);
    uint64_t& n = calls_[tenant];
    *held = n;
    if (cap_ > 0 && n >= cap_) return false;  // n > 0: the entry stays for the calls it counts
    ++n;
    slot->owner_ = this;
    slot->tenant_ = tenant;
    return true;
  }
  uint64_t cap() const { return cap_; }

 private:
  void Leave(const std::string& tenant) {
    absl::MutexLock lock(&mu_);
    auto it = calls_.find(tenant);
    if (it != calls_.end() && --it->second == 0) calls_.erase(it);
  }

  const uint64_t cap_;
  absl::Mutex mu_;
  absl::flat_hash_map<std::string, uint64_t> calls_ ABSL_GUARDED_BY(mu_);
};

// Inline payload bytes held by one call (Admission::TakeBytes), returned when it ends.
class InflightBytes {
 public:
  InflightBytes(Admission* a, uint64_t n) : a_(a), n_(a != nullptr && a->TakeBytes(n) ? n : 0) {
    ok_ = a == nullptr || n == 0 || n_ == n;
  }
  ~InflightBytes() {
    if (n_ > 0) a_->ReturnBytes(n_);
  }
  InflightBytes(const InflightBytes&) = delete;
  InflightBytes& operator=(const InflightBytes&) = delete;
  // Raises what the call holds to at least `n` bytes, taking at least `step` more at a time
  // (fewer trips to the shared counter for a reply that grows); false when it does not fit.
  bool HoldAtLeast(uint64_t n, uint64_t step) {
    if (n <= n_ || a_ == nullptr) return true;
    const uint64_t more = std::max(n - n_, step);
    if (a_->TakeBytes(more)) {
      n_ += more;
      return true;
    }
    if (more > n - n_ && a_->TakeBytes(n - n_)) {  // the step did not fit, the need may
      n_ = n;
      return true;
    }
    ok_ = false;
    return false;
  }
  absl::Status status() const {
    if (ok_) return absl::OkStatus();
    return absl::ResourceExhaustedError(
        absl::StrCat("node busy: inline payload in flight at max_inflight_bytes ",
                     FormatByteSize(a_->max_bytes()), "; retry with backoff"));
  }

 private:
  Admission* a_;
  uint64_t n_;
  bool ok_ = true;
};

// Times a call and records it in the metrics whatever path it returns by. With an Admission,
// counts the call against max_concurrent_calls: refused() says it is over.
class CallScope {
 public:
  CallScope(NodeMetrics* metrics, Op op, Admission* admission = nullptr)
      : metrics_(metrics),
        op_(op),
        start_(std::chrono::steady_clock::now()),
        admission_(admission != nullptr && admission->EnterCall() ? admission : nullptr),
        refused_(admission != nullptr && admission_ == nullptr) {}
  ~CallScope() {
    if (admission_ != nullptr) admission_->LeaveCall();
  }
  CallScope(const CallScope&) = delete;
  CallScope& operator=(const CallScope&) = delete;
  bool refused() const { return refused_; }
  absl::Status Refusal() const {
    return absl::ResourceExhaustedError(
        absl::StrCat("node busy: max_concurrent_calls calls in progress; retry with backoff"));
  }
  grpc::Status Done(const absl::Status& s) {
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    metrics_->Observe(op_, secs, s);
    if (!s.ok() && s.code() != absl::StatusCode::kNotFound) {
      spdlog::debug("{} failed: {}", OpName(op_), s.ToString());
    }
    return proto::ToGrpc(s);
  }

 private:
  NodeMetrics* metrics_;
  Op op_;
  std::chrono::steady_clock::time_point start_;
  Admission* admission_;
  bool refused_;
};

inline v1::Tier TierProto(int tier) {
  return v1::Tier_IsValid(tier) ? static_cast<v1::Tier>(tier) : v1::TIER_UNSPECIFIED;
}

}  // namespace strata::storenode
