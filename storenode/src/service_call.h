// What every StoreServiceImpl call shares (store_service.cc, store_service_data.cc): timing
// and error metrics per call, and the proto tier of a store tier number. Private.
#pragma once

#include <chrono>

#include "absl/status/status.h"
#include "grpcpp/support/status.h"
#include "metrics.h"
#include "spdlog/spdlog.h"
#include "strata/proto/status_convert.h"
#include "strata/v1/store.pb.h"

namespace strata::storenode {

// Times a call and records it in the metrics whatever path it returns by.
class CallScope {
 public:
  CallScope(NodeMetrics* metrics, Op op)
      : metrics_(metrics), op_(op), start_(std::chrono::steady_clock::now()) {}
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
};

inline v1::Tier TierProto(int tier) {
  return v1::Tier_IsValid(tier) ? static_cast<v1::Tier>(tier) : v1::TIER_UNSPECIFIED;
}

}  // namespace strata::storenode
