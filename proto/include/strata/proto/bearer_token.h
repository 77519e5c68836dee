// The bearer token a gRPC call presents (`authorization: Bearer <token>`), read the same way
// by the store node's authentication and the GPU agent's peer server.
#pragma once

#include <grpcpp/server_context.h>

#include <optional>
#include <string_view>

#include "absl/status/statusor.h"

namespace strata::proto {

// The token, or nullopt when the call has no authorization header; UNAUTHENTICATED
// ("authorization: want \"Bearer <token>\"") for another scheme or an empty token.
inline absl::StatusOr<std::optional<std::string_view>> BearerToken(const grpc::ServerContext& ctx) {
  constexpr std::string_view kBearer = "Bearer ";
  const auto& metadata = ctx.client_metadata();
  auto it = metadata.find("authorization");
  if (it == metadata.end()) return std::optional<std::string_view>();
  const std::string_view value(it->second.data(), it->second.size());
  if (!value.starts_with(kBearer) || value.size() == kBearer.size()) {
    return absl::UnauthenticatedError("authorization: want \"Bearer <token>\"");
  }
  return std::optional<std::string_view>(value.substr(kBearer.size()));
}

}  // namespace strata::proto
