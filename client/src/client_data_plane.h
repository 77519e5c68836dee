// ClientDataPlane: the client's side of the UCX data plane (the node's is storenode's
// DataPlane). It owns the UCX context, one Worker per lane (each wired to the node lane of the
// same index), the memory ranges the user registered for zero-copy transfers and the bounce
// pool that stages every other block. It knows nothing of gRPC: the StoreClient opens and
// closes channels (ConnectData) and hands the node's worker addresses to Wire().
//
// One-sided (RMA) mode: the node drives every transfer; the client's workers only answer it
// (their progress threads serve the node's RMA). Two-sided (tagged message) mode, the fast path
// over TCP: the client sends a put's blocks and receives a get's blocks itself with Transfer(),
// on the lane the call names, under tags from NextTag().
//
// Thread-safe. Teardown order is the point of the destructor: workers first (a put the node
// sent before giving up may still be applied while they run), then the user's regions and the
// bounce pool they could touch, then the context.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "strata/transport/bounce_pool.h"
#include "strata/transport/context.h"
#include "strata/transport/data_plane.h"
#include "strata/transport/worker.h"

namespace strata::client {

// Whether the node's UCX_TLS list lets UCX carry the data plane over TCP (a leading '^'
// excludes the listed transports), where tagged messages beat RMA emulated by messages.
bool TlsIncludesTcp(const std::string& tls);

// Whether it names shared-memory transports only ("shm", "posix,sysv,cma,self"), where UCX
// 1.13 emulates RMA too (docs/design/transfer-protocol.md, "Shared memory: which operation").
bool TlsIsSharedMemoryOnly(const std::string& tls);

struct ClientDataPlaneOptions {
  std::string tls;  // the node's Stats.ucx_tls, exactly
  bool peer_failure_handling = true;
  uint32_t lanes = 1;             // the node's Stats.ucx_lanes
  size_t bounce_buffer_size = 0;  // the node's max_block_bytes
  size_t bounce_buffers = 2;      // at least 2
  // Over shared memory only: how long the lane check waits between tries of a lane (see
  // lanes_replaced()); zero: no lane checks.
  absl::Duration lane_check_interval = absl::Seconds(1);
};

class ClientDataPlane {
 public:
  // Creates the context and the lane workers. INVALID_ARGUMENT: no lanes, no bounce geometry;
  // other codes from UCX. Blocks while UCX starts (milliseconds).
  static absl::StatusOr<std::unique_ptr<ClientDataPlane>> Create(
      const ClientDataPlaneOptions& options);
  ~ClientDataPlane();
  ClientDataPlane(const ClientDataPlane&) = delete;
  ClientDataPlane& operator=(const ClientDataPlane&) = delete;

  uint32_t lanes() const { return options_.lanes; }
  size_t bounce_buffer_size() const { return options_.bounce_buffer_size; }
  size_t bounce_capacity() const { return options_.bounce_buffers; }
  // One Worker::Address() per lane, in lane order (ConnectDataRequest.worker_addresses), and
  // which lane workers they are (for Wire: a lane may be replaced meanwhile).
  std::vector<std::string> WorkerAddresses(uint64_t* generation = nullptr) const;
  // Our UCX tcp segment sizes (ConnectDataRequest), and whether a node's fit them
  // (FAILED_PRECONDITION otherwise: transport::CheckTcpSegments).
  transport::TcpSegments tcp_segments() const { return context_->tcp_segments(); }
  absl::Status CheckNodeTcpSegments(transport::TcpSegments node) const {
    return transport::CheckTcpSegments(context_->tcp_segments(), node, options_.tls);
  }

  // Connects lane i's worker to node_addresses[i] for data channel `channel_id`, replacing the
  // endpoints of an earlier channel. INVALID_ARGUMENT: not one address per lane, or one is not
  // a worker address (names the lane); UNAVAILABLE: a node lane cannot be reached. On error no
  // endpoint is left. Blocks until the workers have created the endpoints. With `generation`
  // (WorkerAddresses'), UNAVAILABLE when a lane was replaced since: the node connected to the
  // old worker.
  absl::Status Wire(uint64_t channel_id, const std::vector<std::string>& node_addresses,
                    std::optional<uint64_t> generation = std::nullopt);

  // If the endpoints are wired for `channel_id`: force-closes every lane's endpoint
  // (Worker::Abandon), so the node's requests still to come on this channel no longer reach
  // our memory, and returns true; the next Wire() connects afresh. For a call the client gave
  // up on (deadline) while the node may still move bytes in or out of its buffers. False when
  // another call fenced the channel first, or it was replaced: its endpoints are closed already,
  // and those of a newer channel are left alone.
  bool Fence(uint64_t channel_id);
  // Drops the node's messages on channel `channel_id` that no receive claimed (they would wait
  // in UCX's unexpected queue for good): for a channel no call uses any more. Not at Fence,
  // while other calls on the channel may still post their receives (a message that came
  // before its receive was dropped, and that call waited out its deadline). Over TCP no more
  // come once the endpoints are closed; over shared memory the node's sends do not need our
  // endpoint, so a late one can still arrive (bounded by the node's cut-off at its deadline)
  // and stays.
  void DropChannelMessages(uint64_t channel_id);

  // Registers a user range (see StoreClient::RegisterMemory for the codes).
  absl::Status Register(void* ptr, size_t len);
  // NOT_FOUND unless a registered range starts at `ptr`.
  absl::Status Unregister(void* ptr);
  // The registered region holding all of [ptr, ptr + len), or null. The region stays valid
  // while the returned pointer lives, even if unregistered meanwhile.
  std::shared_ptr<const transport::MemoryRegion> FindRegion(const void* ptr, size_t len) const;

  // `count` bounce buffers (count <= bounce_capacity()), all or none, creating the pool on first
  // use. Callers take their whole set one at a time, so parts that each need several buffers
  // cannot starve each other into a deadlock. DEADLINE_EXCEEDED when they did not come free by
  // `deadline`; other codes: the pool could not be allocated. Blocks up to `deadline`.
  absl::StatusOr<std::vector<transport::BounceBuffer>> AcquireBounce(size_t count,
                                                                     absl::Time deadline);
  // The bounce pool's region (its PackedRkey()); REQUIRES: AcquireBounce succeeded once.
  const transport::MemoryRegion& bounce_region() const;

  // Runs `ops` on lane `lane`'s worker over its endpoint to the node, with Worker::Transfer's
  // semantics: buffer rules, `deadline`, `abort` and codes (an aborted batch with sends retires
  // the endpoint: UNAVAILABLE until the next Wire()). INVALID_ARGUMENT: no such lane, or a bad
  // op. FAILED_PRECONDITION: the lanes are not wired (no channel open). UNAVAILABLE also when
  // a concurrent Wire() replaced the endpoint before the batch was posted, or when the lanes
  // are wired for another channel than `channel` (nonzero: the channel the call's tags
  // name, whose endpoints it must use). Blocks until the batch has completed, failed, been
  // aborted or timed out; no lock is held meanwhile.
  absl::Status Transfer(uint32_t lane, std::span<const transport::TransferOp> ops,
                        absl::Time deadline, const std::atomic<bool>* abort = nullptr,
                        uint64_t channel = 0);
  // Whether the lanes are wired for `channel_id` (a Fence, a newer Wire or a lane replaced
  // since unwires it).
  bool Wired(uint64_t channel_id);

  // A wedged lane (client_data_plane_lanes.cc). Over shared memory every peer writes its
  // messages into a worker's one receive queue, and a node (or agent) killed between claiming
  // a slot there and filling it leaves the queue unreadable for good (transport/data_plane.h,
  // "A wedged lane", is the node's side): every later call on that lane would time out, also
  // once the node is back. After each Fence a checker thread sends every lane a one-byte
  // message from a worker of its own, up to DataPlane::kLaneStrikes tries lane_check_interval
  // apart; a lane whose message never arrives gets a new worker (the old one is kept until the
  // plane goes: UCX 1.13 can crash destroying it) and the lanes are unwired, so the next
  // ConnectData carries the new address. How many lanes were replaced so far.
  uint64_t lanes_replaced() const { return lanes_replaced_.load(std::memory_order_relaxed); }
  // Test hook: lane `lane`'s current worker stops reading (Worker::StallForTest).
  // INVALID_ARGUMENT for a lane the plane lacks.
  absl::Status StallLaneForTest(uint32_t lane);

  // A fresh two-sided tag for a message on channel `channel_id`: the channel in the high 32 bits
  // (the node checks it), a per-plane sequence in the low 32 (unique for 2^32 tags, so a
  // message left over from an abandoned call never matches a later receive), hidden under
  // the channel id's high 32 bits, which only this client and the node know. The node matches
  // tags on a worker that every channel's endpoints share: with a plain sequence, a client
  // that learnt a channel's 32-bit prefix could guess its next tags and send messages its
  // puts would take. Thread-safe.
  uint64_t NextTag(uint64_t channel_id) {
    const uint32_t secret = static_cast<uint32_t>(channel_id >> 32);
    return transport::ChannelTagPrefix(channel_id) |
           (tag_sequence_.fetch_add(1, std::memory_order_relaxed) ^ secret);
  }

 private:
  explicit ClientDataPlane(const ClientDataPlaneOptions& options) : options_(options) {}
  void DisconnectAll() ABSL_EXCLUSIVE_LOCKS_REQUIRED(wire_mu_);
  // The lane checker's thread, one check of a lane (true: its message arrived), and the
  // replacement of a lane's worker.
  void CheckLanes();
  bool ProbeLane(size_t lane);
  bool Stopping() ABSL_LOCKS_EXCLUDED(check_mu_);
  void ReplaceLane(size_t lane);
  std::shared_ptr<transport::Worker> Lane(size_t lane) ABSL_LOCKS_EXCLUDED(wire_mu_);

  const ClientDataPlaneOptions options_;
  std::unique_ptr<transport::Context> context_;

  mutable absl::Mutex pool_mu_;
  std::unique_ptr<transport::BouncePool> pool_ ABSL_GUARDED_BY(pool_mu_);
  bool acquiring_ ABSL_GUARDED_BY(pool_mu_) = false;  // one caller gathers its set at a time
  // Set once pool_ exists; the pool is never replaced before the destructor.
  std::atomic<transport::BouncePool*> pool_ptr_{nullptr};

  mutable absl::Mutex regions_mu_;
  // Keyed by base address; ranges never overlap.
  std::map<uintptr_t, std::shared_ptr<const transport::MemoryRegion>> regions_
      ABSL_GUARDED_BY(regions_mu_);

  mutable absl::Mutex wire_mu_;
  // One per lane; a lane's worker changes only when the lane check replaces it.
  std::vector<std::shared_ptr<transport::Worker>> workers_ ABSL_GUARDED_BY(wire_mu_);
  // Replaced lane workers, kept until the plane goes (after the current ones).
  std::vector<std::shared_ptr<transport::Worker>> retired_ ABSL_GUARDED_BY(wire_mu_);
  uint64_t lane_generation_ ABSL_GUARDED_BY(wire_mu_) = 0;                  // lanes replaced so far
  std::vector<transport::EndpointId> endpoints_ ABSL_GUARDED_BY(wire_mu_);  // per lane, or none
  uint64_t wired_channel_ ABSL_GUARDED_BY(wire_mu_) = 0;  // endpoints_'s channel; 0: none
  std::atomic<uint32_t> tag_sequence_{0};

  // The lane checker (shared memory only): its own worker, its thread and what wakes it.
  std::unique_ptr<transport::Worker> probe_;  // checker thread only
  uint32_t probe_seq_ = 0;                    // checker thread only
  absl::Mutex check_mu_;
  bool check_due_ ABSL_GUARDED_BY(check_mu_) = false;
  bool stop_checking_ ABSL_GUARDED_BY(check_mu_) = false;
  std::thread checker_;
  std::atomic<uint64_t> lanes_replaced_{0};
};

// Condenses UCX's endpoint description (ucp_ep_print_info, as ConnectDataResponse.transport
// carries it) to its transports, e.g. "tcp/lo" or "cma/memory,posix/memory". A one-line
// string comes back as it is.
std::string CondenseTransport(const std::string& description);

}  // namespace strata::client
