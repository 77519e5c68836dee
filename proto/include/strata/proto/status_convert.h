// Conversions between absl::Status and the wire: grpc::Status for whole calls and
// strata.v1.BlockStatus for per-block outcomes. Codes map one to one.
#pragma once

#include <string_view>

#include "absl/status/status.h"
#include "grpcpp/support/status.h"
#include "strata/v1/store.pb.h"

namespace strata::proto {

inline grpc::Status ToGrpc(const absl::Status& s) {
  if (s.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::string(s.message()));
}

// Adds `context` in front of the message ("BeginPut 127.0.0.1:7070: ...").
inline absl::Status FromGrpc(const grpc::Status& s, std::string_view context) {
  if (s.ok()) return absl::OkStatus();
  std::string msg(context);
  msg += ": ";
  msg += s.error_message();
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()), msg);
}

inline void ToBlockStatus(const absl::Status& s, strata::v1::BlockStatus* out) {
  out->set_code(static_cast<int32_t>(s.code()));
  if (!s.ok()) out->set_message(std::string(s.message()));
}

inline absl::Status FromBlockStatus(const strata::v1::BlockStatus& s) {
  if (s.code() == 0) return absl::OkStatus();
  if (s.code() < 0 || s.code() > 16) {
    return absl::UnknownError("peer sent an invalid per-block status code");
  }
  return absl::Status(static_cast<absl::StatusCode>(s.code()), s.message());
}

}  // namespace strata::proto
