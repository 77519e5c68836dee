// StoreClient: the library prefill and decode workers link to talk to a Strata store node.
// Lookup finds how much of a prompt's prefix is stored; Put writes blocks (two-phase:
// reserve, send, commit with checksums); Get fetches blocks into the caller's buffers and
// verifies every checksum before reporting success, so a wrong byte is never handed over.
//
// Every call has a deadline (CallOptions, else ClientOptions::default_deadline) and never
// waits past it: a dead node is UNAVAILABLE, a slow one DEADLINE_EXCEEDED. Batches larger
// than the node's per-call limits are split and the parts sent in parallel.
//
// Payloads travel inline in gRPC messages, or, when the node offers a UCX data plane (Stats),
// over UCX: the node reads a put's bytes out of this process's memory and writes a get's
// bytes into it with one-sided RMA, through registered bounce buffers or, for buffers inside
// a range given to RegisterMemory, directly (zero-copy). Either way every byte is
// checksum-verified end to end.
//
// The library logs through spdlog's default logger (cluster membership changes, etcd
// outages); a program that keeps stdout for its own output should point that logger at
// stderr first (strata::InitLogging in strata/common/logging.h does).
//
// Thread-safe: one StoreClient may be shared by many threads. The *Async variants return at
// once; the buffers they name must stay valid until the future is ready.
#pragma once

#include <cstdint>
#include <future>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "strata/common/block_key.h"
#include "strata/common/chain_hash.h"
#include "strata/common/namespace.h"

namespace strata::client {

struct ClientOptions {
  std::string address;  // HOST:PORT of a store node
  absl::Duration default_deadline = absl::Seconds(10);
  // Scope of a call that names none. "" lets the node choose: the private scope of the
  // principal the call authenticates as (`default` on a node without authentication).
  // "shared" reads and (with the publisher role) writes the scope every tenant sees.
  std::string default_scope;

  // Security (docs/design/security.md). token: sent on every call as the gRPC metadata
  // "authorization: Bearer <token>". tls_ca: PEM file of the CA that signed the nodes'
  // certificates; set, the client speaks TLS and verifies the node. tls_cert / tls_key: PEM
  // client certificate and key for mutual TLS (the certificate's CN may name the principal).
  std::string token;
  std::string tls_ca;
  std::string tls_cert;
  std::string tls_key;

  // How payloads travel. kAuto: over UCX when the node's Stats offers a data plane (and the
  // client can set it up), else inline in gRPC. kInline: always inline. kUcx: UCX or nothing
  // (Connect fails with FAILED_PRECONDITION when the node offers no data plane).
  enum class DataPlane { kAuto, kInline, kUcx };
  DataPlane data_plane = DataPlane::kAuto;
  // Put/Get calls whose largest block is smaller than this go inline even with a data plane:
  // small payloads are cheaper in one gRPC message than in an RMA round trip.
  uint64_t ucx_min_block_bytes = 64 << 10;
  // An inline put call carrying at most this many payload bytes sends them with BeginPut (one
  // call) instead of in a CommitPut after it: a round trip saved, at the price of sending the
  // bytes of blocks the node already holds. 0: always two calls.
  uint64_t one_call_put_bytes = 512 << 10;
  // Registered bounce memory for blocks outside RegisterMemory ranges: buffers of the node's
  // max_block_bytes, as many as fit (at least 2). Allocated on first need.
  uint64_t bounce_bytes = 64 << 20;
  // With a node whose ucx_tls names tcp, payloads travel as UCX tagged messages (two-sided:
  // the client sends a put's blocks and receives a get's straight from and into the caller's
  // buffers, no registration or bounce copy needed) instead of the node's RMA, which UCX 1.13
  // emulates slowly over TCP. RDMA transports always use RMA. Turn off for a node that
  // predates tagged PutData/GetData.
  bool ucx_two_sided_on_tcp = true;
  // With a node whose ucx_tls is shared memory only ("shm"), puts travel as tagged messages,
  // and so do gets whose largest block is at least 512 KiB; smaller gets use the node's RMA.
  // UCX 1.13 has no one-sided put or get over posix/sysv shared memory: it emulates them with
  // messages copied twice through a shared FIFO and served by the other side's progress
  // thread, while a large tagged message is copied once (cma rendezvous). Measured in
  // docs/design/transfer-protocol.md. Off: every shared-memory transfer is the node's RMA.
  bool ucx_two_sided_on_shm = true;
  // With ucx_two_sided_on_shm: a get goes two-sided when its largest destination (capacity,
  // at most the node's max block size) is at least this big. Below that, the emulated RMA's
  // two copies, made by two threads at once, measured faster (2 cores, one stream: RMA 10 %
  // faster at 256 KiB, level to 20 % slower from 512 KiB). 0: every get.
  uint64_t ucx_shm_two_sided_get_bytes = 512 << 10;
  // A two-sided put of at least this many bytes (per call to one node's lane) sends its blocks
  // first and their checksums after them, hashing while the node already receives, where the
  // node takes that (docs/design/transfer-protocol.md, "Checksums after the blocks"). 0: the
  // checksums always go first, in the request.
  uint64_t ucx_trailing_checksum_bytes = 512 << 10;

  // A cluster (docs/design/cluster.md) instead of the one node at `address`: the member set
  // comes from etcd (etcd_endpoints, "host:port,...") or from a fixed list (cluster_members,
  // "id=host:port[@zone],...", as the nodes' own setting). Blocks are placed on the
  // `replicas` highest-scoring nodes (rendezvous hashing, zone-aware); a put succeeds once
  // `write_quorum` of them stored it (0: all of them); a get reads the first that answers.
  // replicas 0 follows the nodes' own setting (the largest cluster_replicas they register in
  // etcd, taken anew from each member set; 1 in static mode); a different explicit value is
  // used but warned about, since the nodes' rebalancer keeps their count of copies, not the
  // client's.
  std::string etcd_endpoints;
  std::string cluster_members;
  std::string cluster_name = "default";
  int replicas = 0;
  int write_quorum = 0;
  // etcd: watch the member set (default), or read it once and again only when a node says
  // this client routed by a stale epoch (lighter on etcd for very many clients).
  bool watch_members = true;
  // Lookups answer from the named scope only, never from `shared` (LookupRequest.exact_scope):
  // for a node's rebalancer asking whether a peer holds a tenant's own copy. Reads are
  // unchanged.
  bool exact_scope_lookups = false;
};

struct CallOptions {
  absl::Duration deadline = absl::ZeroDuration();  // zero: ClientOptions::default_deadline
};

enum class Tier { kUnknown, kHot, kWarm, kCool, kCold };
std::string_view TierName(Tier tier);

// A namespace registered with the node: its id plus the spec, which knows how to hash.
struct Namespace {
  NamespaceId id = 0;
  NamespaceSpec spec;
  // Chain hashes of the full blocks of `tokens` under this namespace's block_tokens and
  // hash algorithm.
  absl::StatusOr<std::vector<ChainHash>> HashTokens(std::span<const uint32_t> tokens,
                                                    const ExtraKeys& extra = {}) const;
};

// Where a GPU agent serves the blocks it published (Publish): `address` (opaque here; a gRPC
// target for issue 6's agents) and the `token` peers present to it as their bearer token ("":
// none). A node hands both out only to callers allowed to read the blocks' scope.
struct PeerLocation {
  std::string address;
  std::string token;
  bool operator==(const PeerLocation&) const = default;
};

struct BlockLocation {
  Tier tier = Tier::kUnknown;  // kHot: only in the GPU memory of `peers`
  uint64_t size = 0;
  // GPU agents that published the block and whose entries are live: where a decode worker may
  // pull it from directly.
  std::vector<PeerLocation> peers;
};

struct LookupResult {
  size_t matched_blocks = 0;          // longest stored prefix, in blocks
  std::vector<BlockLocation> blocks;  // one per matched block
};

struct BlockWrite {
  ChainHash hash;
  const void* data = nullptr;  // borrowed for the duration of the call
  uint64_t size = 0;
  uint32_t depth = 0;    // index of the block in its chain, for the node's tier policies
  float importance = 0;  // optional 0..1 attention-weighted retention score
  // The checksum (BlockChecksum) these bytes were verified against, for bytes read back from a
  // store (GetResult::checksums): sent instead of one computed now, so bytes that changed in
  // the buffer since are refused DATA_LOSS by the node, not stored under a checksum of their
  // own.
  std::optional<uint64_t> checksum;
};

struct GetOptions {
  // A block found only on the cool or cold tier is copied back into the node's DRAM tier
  // (dequantized, if its namespace offloads quantized) as it is served, unless this is false:
  // then it is served from disk — dequantized on read — and stays where it is (a one-off
  // read that should not push hot blocks out). The node's --promote-on-get=false wins.
  bool promote = true;
};

struct PutOptions {
  std::string session_id;  // optional: lets PauseSession/ResumeSession move these blocks
  // The blocks are copies of ones stored elsewhere in the cluster (read-repair, rebalancing):
  // a node refuses one that a writer deleted there lately (FAILED_PRECONDITION) rather than
  // bring it back. Leave false for an engine's own writes.
  bool copy = false;
};

struct PutResult {
  // Per block, in request order: OK stored now, ALREADY_EXISTS (stored before — dedup),
  // RESOURCE_EXHAUSTED (no room on the node), DATA_LOSS (corrupted on the way), ...
  std::vector<absl::Status> blocks;
  size_t stored = 0;
  size_t already_present = 0;
};

struct BlockRead {
  ChainHash hash;
  void* buffer = nullptr;  // caller-owned destination
  uint64_t capacity = 0;   // bytes available at buffer; no two reads of a call may overlap
};

struct GetResult {
  // Per block, in request order: OK (buffer holds the verified bytes), NOT_FOUND,
  // DATA_LOSS (bytes failed the checksum: buffer content is garbage, do not use),
  // OUT_OF_RANGE (block larger than the buffer's capacity).
  std::vector<absl::Status> blocks;
  std::vector<uint64_t> sizes;      // bytes written for OK blocks
  std::vector<uint64_t> checksums;  // of OK blocks: what their bytes were verified against
  size_t fetched = 0;
  // Some transfer of this call into the caller's buffers was given up on (a node that stalled,
  // a replica cut short), repeated, or failed its check and went again inline: a late write
  // of it may still land in the buffers. A caller that reads them again later (the GPU
  // agent's staging) compares them with `checksums` first.
  bool may_land_late = false;
};

// Whether a Get, or one of its blocks, that ended with `s` may still have a transfer land in
// the caller's buffers later: any failure but those a node gives before moving bytes
// (NOT_FOUND, INVALID_ARGUMENT, OUT_OF_RANGE, FAILED_PRECONDITION, PERMISSION_DENIED,
// UNAUTHENTICATED, ALREADY_EXISTS).
bool MayLandLate(const absl::Status& s);

struct NodeStats {
  std::string node_id;
  uint64_t warm_blocks = 0;
  uint64_t warm_bytes = 0;
  uint64_t warm_used_bytes = 0;
  uint64_t warm_capacity_bytes = 0;
  uint64_t hits = 0;
  uint64_t misses = 0;
  uint64_t evictions = 0;
  uint64_t leases = 0;
  uint64_t reservations = 0;
  uint64_t namespaces = 0;
  uint64_t data_loss = 0;
  uint32_t max_keys_per_call = 0;
  uint64_t max_block_bytes = 0;
  uint64_t max_inline_bytes = 0;
  uint64_t cool_blocks = 0;
  uint64_t cool_bytes = 0;         // payload bytes of the blocks held
  uint64_t cool_stored_bytes = 0;  // bytes on disk for them (after codecs and quantization)
  uint64_t cool_capacity_bytes = 0;
  uint64_t cold_blocks = 0;
  uint64_t cold_bytes = 0;
  uint64_t cold_stored_bytes = 0;
  uint64_t cold_capacity_bytes = 0;
  uint64_t demotions = 0;
  uint64_t promotions = 0;
  uint64_t prefetched = 0;
  uint64_t prefetch_used = 0;
  uint64_t prefetch_wasted = 0;
  // The node's UCX data plane: empty ucx_tls means none (payloads inline only).
  std::string ucx_tls;
  bool ucx_peer_failure_handling = false;
  uint32_t ucx_lanes = 0;
  uint64_t data_channels = 0;       // data channels clients hold open on the node
  uint64_t ucx_lanes_replaced = 0;  // lanes found wedged and given a new UCX worker
  // Cluster: the node's membership mode ("single", "static", "etcd"), the member-set epoch it
  // knows, how many members it sees, whether etcd answered it last, and its zone.
  std::string cluster_mode;
  uint64_t epoch = 0;
  uint32_t members = 0;
  bool etcd_connected = false;
  std::string zone;
  // Rebalancer: passes done, blocks left in the running pass (0: idle), copies made, blocks
  // handed over, blocks found short of their replicas by the last pass.
  uint64_t rebalance_passes = 0;
  uint64_t rebalance_pending = 0;
  uint64_t rebalance_copied = 0;
  uint64_t rebalance_dropped = 0;
  uint64_t under_replicated = 0;
  // Members that place blocks by another scheme than the node (its rebalancer waits).
  uint32_t members_placing_otherwise = 0;
  // Copies of every block the node's rebalancer keeps (the most any member is configured
  // for); 0 outside a cluster.
  uint32_t replicas_kept = 0;
  bool exact_scope_lookups = false;  // the node honours ClientOptions::exact_scope_lookups
};

class StoreClient {
 public:
  // Connects and reads the node's limits (one Stats call); then, when the UCX data plane is
  // to be used (ClientOptions::data_plane), starts the client's UCX workers, one per node
  // lane, and opens a data channel (ConnectData). UNAVAILABLE if the node cannot be reached
  // before the deadline; INVALID_ARGUMENT for an empty address; with DataPlane::kUcx,
  // FAILED_PRECONDITION when the node offers no data plane and the UCX error when the channel
  // cannot be set up (kAuto falls back to inline instead). Blocks.
  static absl::StatusOr<std::unique_ptr<StoreClient>> Connect(const ClientOptions& options);
  // Closes the data channel (best effort, bounded by a short deadline) and stops the UCX
  // workers before releasing registered memory. REQUIRES: no call in flight.
  virtual ~StoreClient() = default;

  // Registers [ptr, ptr + len) with the UCX data plane, so blocks whose buffers (BlockWrite
  // data/size, BlockRead buffer/capacity) lie entirely inside it move without copies: the node
  // reads or writes that memory directly. The caller keeps ownership and must keep the memory
  // mapped until UnregisterMemory (or the client's destruction). A Put or Get that fails with
  // UNAVAILABLE or DEADLINE_EXCEEDED force-closes the data channel before it returns, so
  // over TCP bytes the node had already sent never land in its buffers afterwards (the next
  // call reconnects); over shared memory they still can for about a second
  // (docs/design/transfer-protocol.md, Deadlines).
  // INVALID_ARGUMENT: null ptr, len 0, or the range overlaps one already registered.
  // FAILED_PRECONDITION: the client has no data plane (DataPlaneDescription() is "inline" or
  // "inline (ucx unavailable: ...)"). A client whose node refused its channel for now
  // ("inline (ucx channel refused: ...)") registers: its calls use the range once a channel
  // opens. A cluster client is FAILED_PRECONDITION only with data_plane kInline; its nodes
  // without a data plane take their calls inline, the range registered with the others.
  // RESOURCE_EXHAUSTED: out of registration resources (pinned memory limits).
  // Blocks while the memory is registered (proportional to len on RDMA devices).
  virtual absl::Status RegisterMemory(void* ptr, size_t len) = 0;
  // Unregisters the range RegisterMemory started at `ptr`. NOT_FOUND if no range starts there.
  // REQUIRES: no call using the range is in flight.
  virtual absl::Status UnregisterMemory(void* ptr) = 0;
  // How payloads travel: "inline" (with the reason in parentheses when kAuto could not set up
  // UCX), or "ucx TRANSPORT, N lanes" (e.g. "ucx tcp/lo, 2 lanes"), with " (two-sided)" after
  // the transport when payloads travel as tagged messages (ucx_two_sided_on_tcp). Never blocks.
  virtual std::string DataPlaneDescription() const = 0;

  // Registers (idempotently) a namespace. INVALID_ARGUMENT for a bad spec.
  virtual absl::StatusOr<Namespace> RegisterNamespace(const NamespaceSpec& spec,
                                                      const CallOptions& call = {}) = 0;

  // Longest stored prefix of `hashes` (chain order). INVALID_ARGUMENT for an unregistered
  // namespace or bad scope; scope "" means ClientOptions::default_scope.
  virtual absl::StatusOr<LookupResult> Lookup(const Namespace& ns, std::string_view scope,
                                              std::span<const ChainHash> hashes,
                                              const CallOptions& call = {}) = 0;
  // Presence of every block on its own, not a prefix: one entry per hash, tier kUnknown when
  // absent. What a node's rebalancer asks a peer before copying blocks to it.
  virtual absl::StatusOr<std::vector<BlockLocation>> LookupEach(const Namespace& ns,
                                                                std::string_view scope,
                                                                std::span<const ChainHash> hashes,
                                                                const CallOptions& call = {}) = 0;
  // The directory of GPU-resident blocks: tells the blocks' owner nodes that this process
  // holds them in GPU memory, reachable at `location`, for `ttl` (refresh before it lapses);
  // a zero ttl removes the entries (of location.address). Per block: OK, or
  // RESOURCE_EXHAUSTED (directory full). Lookups then report them (tier kHot when no node
  // tier has them) with `location` in peers. INVALID_ARGUMENT: an address of 0 or more than
  // 256 bytes, a token longer than 128 characters or outside [A-Za-z0-9._~+/=-].
  virtual absl::StatusOr<std::vector<absl::Status>> Publish(
      const Namespace& ns, std::string_view scope, std::span<const ChainHash> hashes,
      std::span<const uint64_t> sizes, const PeerLocation& location, absl::Duration ttl,
      const CallOptions& call = {}) = 0;
  // Same as Lookup, hashing the prompt's tokens first.
  absl::StatusOr<LookupResult> LookupTokens(const Namespace& ns, std::string_view scope,
                                            std::span<const uint32_t> tokens,
                                            const CallOptions& call = {});

  // Stores blocks. The whole call fails only when nothing could be attempted (bad input,
  // node unreachable, deadline); otherwise per-block outcomes are in PutResult.
  virtual absl::StatusOr<PutResult> Put(const Namespace& ns, std::string_view scope,
                                        std::span<const BlockWrite> blocks,
                                        const CallOptions& call = {},
                                        const PutOptions& put = {}) = 0;

  // Fetches blocks into caller buffers, verifying each block's checksum. Only a block
  // answered OK holds what was stored; the buffer of any other may hold bytes that failed
  // their checksum.
  virtual absl::StatusOr<GetResult> Get(const Namespace& ns, std::string_view scope,
                                        std::span<const BlockRead> blocks,
                                        const CallOptions& call = {},
                                        const GetOptions& get = {}) = 0;

  // Removes blocks; returns how many were present.
  virtual absl::StatusOr<uint64_t> Delete(const Namespace& ns, std::string_view scope,
                                          std::span<const ChainHash> hashes,
                                          const CallOptions& call = {}) = 0;

  virtual absl::StatusOr<NodeStats> Stats(const CallOptions& call = {}) = 0;

  // Moves a session's blocks down to the cool tier (to_cold: the cold tier); returns how many
  // moved. FAILED_PRECONDITION when the node has no such tier.
  virtual absl::StatusOr<uint64_t> PauseSession(std::string_view session_id, bool to_cold,
                                                const CallOptions& call = {}) = 0;
  // Brings a paused session's blocks back to the warm tier; returns how many.
  virtual absl::StatusOr<uint64_t> ResumeSession(std::string_view session_id,
                                                 const CallOptions& call = {}) = 0;
  // Asks the node to promote blocks (or a whole session) into DRAM ahead of need — e.g. when
  // the user starts typing. Returns at once with how many blocks were scheduled.
  virtual absl::StatusOr<uint64_t> Prefetch(const Namespace& ns, std::string_view scope,
                                            std::span<const ChainHash> hashes,
                                            std::string_view session_id = {},
                                            const CallOptions& call = {}) = 0;

  // Asynchronous variants: run on the client's own threads; the spans' contents (and the
  // buffers they point to) must outlive the returned future.
  std::future<absl::StatusOr<LookupResult>> LookupAsync(const Namespace& ns, std::string scope,
                                                        std::vector<ChainHash> hashes,
                                                        CallOptions call = {});
  std::future<absl::StatusOr<PutResult>> PutAsync(const Namespace& ns, std::string scope,
                                                  std::vector<BlockWrite> blocks,
                                                  CallOptions call = {});
  std::future<absl::StatusOr<GetResult>> GetAsync(const Namespace& ns, std::string scope,
                                                  std::vector<BlockRead> blocks,
                                                  CallOptions call = {});
};

// Put, then again the blocks that another put was still writing (ALREADY_EXISTS "being
// written", IsBlockBeingWritten), pausing between rounds, until that put settled (committed:
// ALREADY_EXISTS "present"; gave up: this one stores them) or `end`. For a writer that must
// know its blocks are stored (a GPU agent's offload, a cluster client's write quorum): a
// block being written may never be. Blocks still being written at `end` keep that answer.
absl::StatusOr<PutResult> PutSettled(StoreClient& client, const Namespace& ns,
                                     std::string_view scope, std::span<const BlockWrite> blocks,
                                     absl::Time end, const PutOptions& put = {});

}  // namespace strata::client
