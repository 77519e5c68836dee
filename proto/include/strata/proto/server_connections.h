// What every Strata gRPC server (a store node, a GPU agent's peer server) sets about its
// connections, so that connections nobody uses do not pile up and hold the process's file
// descriptors (security.md, "Connections"). A header: only targets that link gRPC include it.
#pragma once

#include <grpc/grpc.h>
#include <grpcpp/server_builder.h>

namespace strata::proto {

// A connection has this long to finish its TLS handshake and send HTTP/2's preface and
// SETTINGS (gRPC's default: 120 s), so one opened and left silent goes within seconds.
inline constexpr int kServerHandshakeTimeoutMs = 10'000;
// With no call on it for this long, a connection is closed (GOAWAY); the client's channel
// connects again at its next call.
inline constexpr int kServerConnectionIdleMs = 15 * 60 * 1000;
// Every connection, with calls or not, is pinged this often and closed when no answer comes
// within the timeout, so those of clients that died without closing them go in ~80 s rather
// than after the kernel's TCP timeouts.
inline constexpr int kServerKeepaliveMs = 60'000;
inline constexpr int kServerKeepaliveTimeoutMs = 20'000;

// Sets the above, and a fixed HTTP/2 window instead of one grown by bandwidth probing: what
// clients can have in flight towards the server stays bounded (window x streams), not up to
// 16 MiB each.
inline void BoundServerConnections(grpc::ServerBuilder& builder) {
  builder.AddChannelArgument(GRPC_ARG_SERVER_HANDSHAKE_TIMEOUT_MS, kServerHandshakeTimeoutMs);
  builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_IDLE_MS, kServerConnectionIdleMs);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, kServerKeepaliveMs);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, kServerKeepaliveTimeoutMs);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_BDP_PROBE, 0);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 1 << 20);
}

}  // namespace strata::proto
