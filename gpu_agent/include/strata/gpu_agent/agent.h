// GpuAgent: the hot tier (DESIGN.md §6). An inference engine links it, registers its paged KV
// pool, and tells it when blocks are computed, freed or wanted; the agent moves blocks between
// that pool and the store (or a peer agent's pool), keyed by the same chain hashes.
//
//  - OnBlocksComputed: write-back. The agent gathers the blocks (copy_engine.h) into its staging
//    memory, puts them into the store with their importance scores, and publishes them in the
//    directory as living in this agent's GPU memory, reachable at peer_address().
//  - OnBlocksFreed: before the engine reuses a slot, the agent captures a block it has not
//    gathered yet (offload_before_free), then unpublishes it.
//  - Load: looks the prefix up, fetches each block from the best place — a peer agent that
//    published it (its pool, read through UCX), else the store (warm, cool, cold) — into the
//    engine's destination slots, and reports per block, through a handle the engine polls.
//  - Peer serving: the agent answers other agents' reads of its published blocks with the
//    store node's own protocol (strata.v1.Store: Stats, RegisterNamespace, BeginGet, and the UCX
//    data plane's ConnectData / GetData), gathering the blocks into staging and sending them
//    with checksums; a peer is an ordinary StoreClient. See docs/design/gpu-agent.md.
//
// No call made from the engine's step blocks on the network: OnBlocksComputed and Load return at
// once; OnBlocksFreed waits only for a copy out of the pool (a gather of the blocks it names),
// never for the store. Thread-safe.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "strata/client/store_client.h"
#include "strata/common/chain_hash.h"
#include "strata/common/kv_quant.h"
#include "strata/common/namespace.h"
#include "strata/gpu_agent/kv_pool.h"

namespace strata::gpu_agent {

struct AgentOptions {
  // How to reach the store: one node (address) or a cluster (etcd_endpoints/cluster_members).
  client::ClientOptions store;
  // The namespace of the pool's blocks (with the pool's dtype, block_tokens and shape).
  std::string model_id;
  uint32_t tp_rank = 0;
  uint32_t tp_size = 1;
  ChainHashAlgorithm hash_algorithm = ChainHashAlgorithm::kSha256;
  std::string scope;  // "" = the client's default scope
  // Blocks travel and are stored quantized by the copy engine as it gathers them (kv_quant.h:
  // int8 or fp8-e4m3 codes with one fp32 scale per head_dim vector, about half the bytes of
  // fp16), and restored to the pool's dtype as loads scatter them. Lossy (bounded per vector,
  // see kv_quant.h); needs an fp16 or bf16 pool. Part of the namespace (its layout name ends in
  // "+int8" / "+fp8-e4m3"), so exact and quantized copies of a block never mix.
  KvQuant transfer_quant = KvQuant::kNone;

  // Peer serving: the gRPC address this agent listens on for peers ("host:port"; port 0 picks
  // one), "" to serve no peers (and publish nothing). peer_advertise: the address published
  // (default: the listen host with the bound port). peer_ucx_tls: UCX transports for peers
  // ("tcp"; "" serves inline gRPC only).
  std::string peer_listen = "127.0.0.1:0";
  std::string peer_advertise;
  std::string peer_ucx_tls = "tcp";
  // TLS between agents (plaintext when unset). peer_tls_cert / peer_tls_key: PEM files; the
  // peer server speaks TLS with that certificate, whose names must cover the advertised
  // address. peer_tls_ca: PEM file; this agent reads peers over TLS, verifying them against
  // that CA. Agents that read each other must agree: a TLS reader and a plaintext peer (or the
  // reverse) fail to connect, and those blocks load from the store.
  std::string peer_tls_cert;
  std::string peer_tls_key;
  std::string peer_tls_ca;
  // A peer that could not be reached is not tried again for this long: loads meanwhile take
  // its blocks from the store at once instead of waiting out another connection attempt (up
  // to call_deadline for an unresponsive host) and logging again.
  absl::Duration peer_retry_after = absl::Seconds(5);
  // Clients of peer agents kept connected at once (each holds a gRPC channel, and over UCX a
  // context and worker of its own): past it, the one used longest ago is closed and
  // connected again when next needed.
  size_t max_peer_clients = 16;
  // Directory entries live this long and are refreshed every third of it while held.
  absl::Duration publish_ttl = absl::Seconds(30);
  // The peer token is drawn anew this often and every entry republished with the new one; the
  // old one is still served for publish_ttl (entries and lookups made before the change).
  // So a reader who lost the right to read the agent's scope loses its peer reads within
  // peer_token_rotation + publish_ttl. Zero: one token for the agent's lifetime.
  absl::Duration peer_token_rotation = absl::Hours(1);
  // Prefer a peer's copy over the store's when both exist (a GPU-to-GPU read beats DRAM over
  // the network only when the peer is close; turn off for far peers).
  bool prefer_peers = true;

  // Staging memory (pinned host memory with CUDA), split between offload, load and peer
  // serving; bounds the agent's memory whatever the load. At least 3 × batch_blocks blocks.
  uint64_t staging_bytes = 256ull << 20;
  uint32_t batch_blocks = 16;  // blocks per gather / put / get
  // OnBlocksFreed captures blocks not yet offloaded (copies them out of the pool before
  // returning) so every computed block reaches the store; false drops them instead.
  bool offload_before_free = true;
  // Captured-on-free blocks waiting for the store are held in this much host memory; beyond it
  // further ones are dropped (counted in AgentStats::offload_dropped).
  uint64_t capture_bytes = 256ull << 20;
  absl::Duration call_deadline = absl::Seconds(10);  // each store / peer call
  // HOST:PORT for GET /metrics (Prometheus text: AgentStats as strata_agent_*), /healthz and
  // /readyz (ready once a pool is registered; /healthz answers 503 when the peer server's
  // listener stopped accepting or its UCX lanes are wedged past their cap); "" serves none
  // (MetricsText() still works for an engine that exports metrics itself).
  std::string metrics_listen;
};

// A block the engine finished computing.
struct ComputedBlock {
  uint32_t block_id = 0;  // slot in the engine's pool
  ChainHash hash;
  uint32_t depth = 0;    // position of the block in its chain (0 = first)
  float importance = 0;  // optional 0..1 attention-weighted score, for the store's policy
};

enum class LoadSource { kNone, kPeer, kStore };
std::string_view LoadSourceName(LoadSource source);

struct BlockLoad {
  // OK (the slot holds the verified block), NOT_FOUND (stored nowhere: recompute it),
  // DATA_LOSS / UNAVAILABLE / DEADLINE_EXCEEDED ... (fetch failed: recompute it).
  absl::Status status = absl::UnknownError("not loaded yet");
  LoadSource source = LoadSource::kNone;
  std::string from;  // the peer's address or "store"
};

// What Load returns: the engine polls Done() from its step; Wait() is for tools and tests.
class LoadHandle {
 public:
  bool Done() const { return done_.load(std::memory_order_acquire); }
  // Blocks until done or `timeout`; returns Done().
  bool Wait(absl::Duration timeout) const;
  // REQUIRES: Done(). One entry per requested block, in request order.
  const std::vector<BlockLoad>& blocks() const { return blocks_; }
  // REQUIRES: Done(). Leading blocks loaded OK: the tokens the engine need not recompute are
  // loaded_prefix() × block_tokens.
  size_t loaded_prefix() const;

 private:
  friend class GpuAgentImpl;
  std::vector<BlockLoad> blocks_;
  std::atomic<bool> done_{false};
};

struct AgentStats {
  uint64_t offloaded = 0;        // blocks the store acknowledged (stored or already present)
  uint64_t offload_failed = 0;   // puts that failed (block not in the store)
  uint64_t offload_dropped = 0;  // freed before capture with no room (or capture off)
  uint64_t captured_on_free = 0;
  uint64_t published = 0;  // directory entries currently held
  uint64_t loaded_from_peer = 0;
  uint64_t loaded_from_store = 0;
  uint64_t load_failed = 0;
  uint64_t peer_fallbacks = 0;  // blocks a peer could not serve, fetched from the store
  // Of those, blocks not even tried there: their peer could not be reached moments before
  // (peer_retry_after), so the load did not wait for it again, or other peers had already
  // cost the load call_deadline by failing it.
  uint64_t peer_skips = 0;
  uint64_t served_to_peers = 0;  // blocks this agent sent to peers
  // Blocks peers asked for whose slot the engine had rewritten since their offload, before
  // telling the agent: refused (DATA_LOSS) and withdrawn from the directory.
  uint64_t served_rewritten = 0;
  uint64_t peer_token_rotations = 0;          // times the peer token was drawn anew
  uint64_t peer_token_rotation_failures = 0;  // rotations skipped: no random bytes for a token
  uint64_t bytes_offloaded = 0;
  uint64_t bytes_loaded = 0;
  uint64_t peer_clients = 0;  // clients of peer agents connected now (max_peer_clients)
};

// The namespace an agent with `options` registers for a pool of `shape` (its dimensions and
// dtype; layer_bases unused): what a process without a pool (an engine's scheduler) looks
// blocks up under with a plain StoreClient. block_bytes is the stored block size (the packed
// size with transfer_quant).
NamespaceSpec AgentNamespace(const AgentOptions& options, const KvPoolSpec& shape);

class GpuAgent {
 public:
  // Connects to the store and starts the peer server. UNAVAILABLE when the store cannot be
  // reached; INVALID_ARGUMENT for bad options (naming the field).
  static absl::StatusOr<std::unique_ptr<GpuAgent>> Create(const AgentOptions& options);
  // Finishes queued offloads for up to call_deadline (Flush), gives up what is still queued
  // (counted dropped; queued loads end CANCELLED), unpublishes, stops the peer server.
  virtual ~GpuAgent() = default;

  // Registers the engine's pool (once): resolves the layout, creates the copy engine (CUDA for
  // a device pool, the host twin for a host pool), allocates staging and registers the
  // namespace. INVALID_ARGUMENT for a bad spec, FAILED_PRECONDITION when a pool is already
  // registered, UNIMPLEMENTED / UNAVAILABLE for a device pool without CUDA.
  virtual absl::Status RegisterKvPool(const KvPoolSpec& spec) = 0;
  // The namespace the pool's blocks live in. REQUIRES: RegisterKvPool succeeded.
  virtual const client::Namespace& ns() const = 0;
  // The address peers reach this agent at ("" when it serves none).
  virtual std::string peer_address() const = 0;

  // Write-back of finished blocks; returns at once. INVALID_ARGUMENT for an id outside the
  // pool (nothing queued). A block id already mapped to another hash is remapped; until then
  // peers asking for the old block are refused (its slot no longer matches the checksum
  // recorded at its offload) and it is withdrawn, never served with the new bytes.
  virtual absl::Status OnBlocksComputed(std::span<const ComputedBlock> blocks) = 0;
  // The engine is about to reuse these slots. Waits only while one of them is being copied
  // out of the pool (gather for offload or for a peer) or into it (a load's scatter); a load
  // still fetching into a freed slot skips it (that block's BlockLoad is CANCELLED).
  // INVALID_ARGUMENT for an id outside the pool; otherwise OK, the slots freed: a block that
  // could not be captured for the store (a NaN under transfer_quant) counts as offload_failed.
  virtual absl::Status OnBlocksFreed(std::span<const uint32_t> ids) = 0;
  // Waits until every block computed before this call was offloaded (or failed), and with a
  // peer port its directory entries were published (or that failed) — a
  // watermark: blocks computed meanwhile are not waited for — or `timeout`:
  // DEADLINE_EXCEEDED then. For shutdown and for a prefill that must hand over before it
  // reports a request done; not for every engine step (docs/design/engine-integration.md).
  virtual absl::Status Flush(absl::Duration timeout) = 0;

  // How many leading blocks of `prefix` are stored anywhere (store tiers or a peer's GPU).
  // One lookup round trip: for a scheduler deciding what to load.
  virtual absl::StatusOr<size_t> MatchedBlocks(std::span<const ChainHash> prefix) = 0;
  // Loads prefix[i] into pool slot destinations[i] for every i, in the background. `prefix`
  // may start anywhere in a chain (blocks the engine already holds are simply not named).
  // What a destination slot held before is forgotten at once (unpublished, not offloaded),
  // as when OnBlocksComputed remaps it: call OnBlocksFreed first to have it captured.
  // INVALID_ARGUMENT (no handle) when the sizes differ, a slot is outside the pool, or a slot
  // is named twice.
  virtual absl::StatusOr<std::shared_ptr<LoadHandle>> Load(
      std::span<const ChainHash> prefix, std::span<const uint32_t> destinations) = 0;

  virtual AgentStats Stats() const = 0;
  // Stats() in Prometheus text format, for an engine's own exporter.
  virtual std::string MetricsText() const = 0;
  // HOST:PORT the metrics endpoint is bound to ("" when metrics_listen is empty).
  virtual std::string metrics_address() const = 0;
};

}  // namespace strata::gpu_agent
