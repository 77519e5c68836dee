// PeerServer: how a GPU agent serves its published blocks to peer agents. It speaks the store
// node's own protocol (strata.v1.Store), so a peer reads with an ordinary StoreClient: Stats
// (limits and the UCX data plane), RegisterNamespace (only the agent's own), BeginGet / EndGet
// (inline payloads) and ConnectData / CloseData / GetData (UCX: tagged messages over TCP, RMA
// puts otherwise). Every other call is UNIMPLEMENTED: an agent stores nothing for others.
//
// Every call must carry `authorization: Bearer <options.token>` (UNAUTHENTICATED otherwise):
// the agent publishes the token with its address, and store nodes hand both only to callers
// allowed to read the agent's scope, so a peer's right to read follows the store's.
//
// Each read gathers the requested blocks out of the engine's pool into the server's staging
// region (through the agent's callback, which pins them against OnBlocksFreed while it copies),
// checksums them there and sends them; one read at a time uses the region.
//
// Thread-safe; gRPC threads run the calls.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "strata/common/block_key.h"

namespace strata::gpu_agent {

struct PeerServerOptions {
  std::string listen;   // host:port (port 0: any)
  std::string ucx_tls;  // "" = inline only
  uint64_t namespace_id = 0;
  std::string scope;  // the scope the agent's blocks are published under
  uint64_t block_bytes = 0;
  uint32_t max_blocks = 0;  // blocks one call may read (the region holds this many)
  std::string node_id;      // what Stats reports
  // A peer's data channel unused this long is closed (a peer that died without CloseData).
  absl::Duration channel_idle = absl::Minutes(10);
  // Data channels open at most, and at most per peer host (its IP address; 0: no cap below
  // max_channels): every reader of the directory may hold the token, and one host's readers
  // must not take every channel and lock the others out (RESOURCE_EXHAUSTED).
  uint64_t max_channels = 256;
  uint64_t max_channels_per_peer = 32;
  // The longest one read may hold the serve region, and the longest a read waits for it: a
  // reader kept waiting that long by others (not by its own deadline) is told
  // RESOURCE_EXHAUSTED, read from the store, as when every read place is taken.
  absl::Duration serve_timeout = absl::Seconds(5);
  // The bearer token every call must present: 1..128 characters (RandomPeerToken()).
  std::string token;
  // PEM files: with both, the server speaks TLS (no client certificates: the token
  // authenticates peers); with neither, plaintext.
  std::string tls_cert;
  std::string tls_key;
};

// 64 hex characters from the system's random generator (OpenSSL RAND_bytes).
std::string RandomPeerToken();

// Copies the blocks named by `hashes` into region + i × block_bytes and sets checksums[i] to
// the xxh3-64 of block i as the agent offloaded it (the bytes it put to the store). Per block
// OK, NOT_FOUND (this agent does not hold it) or DATA_LOSS (its slot was rewritten since).
// Readers check the bytes against that checksum too, so a rewritten slot is never read as the
// old block. Runs on a gRPC thread.
using GatherFn = std::function<std::vector<absl::Status>(std::span<const ChainHash> hashes,
                                                         uint8_t* region, uint64_t* checksums)>;

class PeerServer {
 public:
  // Starts serving. `region` (max_blocks × block_bytes, owned by the caller, outliving the
  // server) is registered with UCX when ucx_tls is set. INVALID_ARGUMENT for an empty or
  // longer token, or for one of tls_cert / tls_key without the other or unreadable;
  // UNAVAILABLE when the address cannot be bound; UCX errors as they come.
  static absl::StatusOr<std::unique_ptr<PeerServer>> Start(const PeerServerOptions& options,
                                                           uint8_t* region, GatherFn gather);
  virtual ~PeerServer() = default;
  virtual int port() const = 0;
  virtual uint64_t blocks_served() const = 0;
  // From now on calls must present `token` (1..128 characters), or the token it replaces until
  // `previous_until` (and earlier ones until theirs): the agent rotates its token and
  // republishes its entries with the new one, while readers that looked up an entry before, or
  // a node the republish did not reach yet, still hand out an old one.
  virtual void RotateToken(std::string token, absl::Time previous_until) = 0;
  // "" while the server can take new readers; otherwise why not (its gRPC listener stopped
  // accepting, UCX lanes wedged past ucx_max_replaced_lanes), for the agent's /healthz.
  virtual std::string Broken() const = 0;
};

}  // namespace strata::gpu_agent
