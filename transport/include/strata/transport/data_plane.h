// DataPlane: the serving side of the UCX data plane (docs/design/transfer-protocol.md): a store
// node's, and a GPU agent's for the peers that read its blocks. It registers the arena (the
// node's warm tier; the agent's staging memory) once, runs `lanes` transport::Workers (each with
// its own progress thread) and keeps the channels clients open with ConnectData: per channel, one
// endpoint from each node lane to the matching client lane. The node drives every transfer:
// PutData reads payloads out of client memory into reserved arena slots, GetData writes
// pinned blocks into client memory. Clients never address node memory.
//
// Thread-safe. Transfers run on the calling (gRPC) thread, which blocks on the lane's worker;
// the channel table has its own mutex, never held across a transfer.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "strata/transport/context.h"
#include "strata/transport/worker.h"

namespace strata::transport {

// Two-sided messages of a data channel carry tags whose high 32 bits are the low 32 bits of
// the channel's id (the node checks them; drops of a channel's messages go by them), and in
// the low 32 what the client chose (the store client: a sequence number hidden under the id's
// high 32 bits, ClientDataPlane::NextTag).
inline constexpr uint64_t kChannelTagMask = 0xffffffff00000000ull;
inline uint64_t ChannelTagPrefix(uint64_t channel_id) { return channel_id << 32; }
inline bool TagNamesChannel(uint64_t tag, uint64_t channel_id) {
  return (tag & kChannelTagMask) == ChannelTagPrefix(channel_id);
}

struct DataPlaneOptions {
  std::string tls;  // UCX_TLS; "shm" means "posix,sysv,cma,self" (peer-failure handling off)
  uint32_t lanes = 1;
  uint64_t max_channels = 1024;
  // Channels one owner (Connect's `owner`: a node's tenant) may hold open at most; 0: no cap
  // below max_channels. So one tenant cannot take every channel and lock the others out.
  uint64_t max_channels_per_owner = 0;
  absl::Duration channel_idle = absl::Minutes(10);  // unused channels are closed after this
  uint64_t max_block_bytes = 16 << 20;  // size of the discard buffer for refused messages
  // A client's two-sided message that no call claims for this long (its PutData never reached
  // the node) closes its channel, dropping the channel's unclaimed messages (SweepUnclaimed).
  absl::Duration unclaimed_timeout = absl::Seconds(30);
  // Over shared memory ("shm"): how often each lane is checked for a wedged receive queue
  // (data_plane_lanes.cc; 0: never). kLaneStrikes checks in a row that fail replace the lane.
  absl::Duration lane_check_interval = absl::Seconds(1);
  // Lanes replaced at most (their old workers are kept until the plane goes: UCX 1.13 can
  // crash destroying one). Past that a wedged lane stays as it is, counted in lanes_wedged().
  uint32_t max_replaced_lanes = 16;
};

class DataPlane {
 public:
  struct Channel {
    uint64_t id = 0;
    std::vector<std::string> worker_addresses;  // the node's, one per lane
    std::string transport;                      // ucp_ep_print_info's transport of lane 0
  };

  // Starts the lanes and registers [arena, arena + arena_bytes). INVALID_ARGUMENT for bad
  // options; other codes from UCX. Blocks while UCX starts (milliseconds).
  static absl::StatusOr<std::unique_ptr<DataPlane>> Create(const DataPlaneOptions& options,
                                                           void* arena, uint64_t arena_bytes);
  ~DataPlane();

  // The TLS string clients must use (expanded "shm"), and whether endpoints detect dead peers.
  const std::string& tls() const { return tls_; }
  bool peer_failure_handling() const { return peer_failure_handling_; }
  uint32_t lanes() const { return options_.lanes; }
  uint64_t channels() const;
  // Whether channel `channel_id` is open.
  bool Knows(uint64_t channel_id) const;

  // Connects lane i to client_addresses[i] for `owner` (empty: none, never capped).
  // INVALID_ARGUMENT: not exactly lanes() addresses or one is not a worker address;
  // RESOURCE_EXHAUSTED: max_channels open, or max_channels_per_owner of the owner's;
  // FAILED_PRECONDITION: the client's tcp segment sizes (zero fields: UCX's defaults) do not
  // fit ours (CheckTcpSegments).
  absl::StatusOr<Channel> Connect(std::span<const std::string> client_addresses,
                                  transport::TcpSegments client_tcp, absl::string_view owner = {});
  // Ours, for the client to check (ConnectDataResponse).
  transport::TcpSegments tcp_segments() const;
  // NOT_FOUND for an unknown channel.
  absl::Status Close(uint64_t channel_id);

  // Runs `ops` (local side: arena addresses) on the channel's endpoint of `lane`.
  // NOT_FOUND: unknown or expired channel. INVALID_ARGUMENT: lane out of range, bad rkey.
  // UNAVAILABLE / DEADLINE_EXCEEDED: the transfer failed (Worker::Transfer); an UNAVAILABLE
  // channel (its client is gone) is closed. `hooks`, `abort`: as Worker::Transfer's (CANCELLED
  // once `abort` is set: the node's caller cancelled the call; the channel is closed unless the
  // transfer was only receives), `abort` only for receives or over shared memory (elsewhere the
  // transfer runs to its end or deadline).
  absl::Status Transfer(uint64_t channel_id, uint32_t lane,
                        std::span<const transport::TransferOp> ops, absl::Time deadline,
                        const transport::TransferHooks* hooks = nullptr,
                        const std::atomic<bool>* abort = nullptr);

  // Closes channels unused for longer than channel_idle. Returns how many.
  uint64_t CloseIdle();

  // Two-sided messages a client sent for a call that never reached the node (refused before
  // its receives were posted, lost, or never made) wait in UCX's unexpected queue holding
  // their bytes until claimed, for as long as the node runs (data_plane_unclaimed.cc). They
  // are dropped when their channel closes (any way; late arrivals for unclaimed_timeout after
  // that), for the tags of a refused call (NoteRefused), and the channel of a message that
  // stays unclaimed for unclaimed_timeout is closed (SweepUnclaimed).
  //
  // Remembers that the call on open channel `channel_id` carrying `tags` (on `lane`) was
  // refused before its receives were posted: SweepUnclaimed drops those messages, including
  // ones still on their way, for unclaimed_timeout. Cheap (no trip to the lane); ignores an
  // unknown channel, tags that do not name it, and entries past kMaxRefusedTags.
  void NoteRefused(uint64_t channel_id, uint32_t lane, std::span<const uint64_t> tags);
  // Called about once a second, from one thread. Returns how many channels it closed.
  uint64_t SweepUnclaimed();
  // Messages dropped unclaimed so far (every way above).
  uint64_t unclaimed_dropped() const { return unclaimed_dropped_.load(std::memory_order_relaxed); }
  static constexpr size_t kMaxRefusedTags = 1 << 16;

  // Where two-sided messages of blocks the node does not store are received and dropped on
  // `lane`: one buffer per lane (each lane's progress thread writes only its own; after a
  // lane is replaced its old worker's thread may too, for calls still on it), shared by that
  // lane's calls; its bytes are never read. Pages are mapped on first use only, so a
  // node that never refuses a block holds none of it. A lane the node lacks gets lane 0's
  // (Transfer refuses the lane itself).
  uint8_t* discard_buffer(uint32_t lane) {
    return discard_[lane < discard_.size() ? lane : 0].get();
  }
  uint64_t discard_bytes() const { return options_.max_block_bytes; }

  // A wedged lane. Over shared memory every peer writes its messages into a lane worker's one
  // receive queue in shared memory; a peer killed between claiming a slot there and filling
  // it leaves the slot unfilled for good, and UCX 1.13 reads no message past it, from anyone:
  // every later call on that lane times out (reproduced once in 580 kills of a client
  // putting over shm: scripts/shm_kill_check.sh). A checker thread sends each lane a one-byte
  // message from a worker of its own once per lane_check_interval; kLaneStrikes in a row that do
  // not arrive within kLaneProbeWait replace the lane's worker with a new one and close every
  // channel (their clients connect again, to the new worker). How many lanes were replaced so far.
  uint64_t lanes_replaced() const { return lanes_replaced_.load(std::memory_order_relaxed); }
  // Lanes found wedged now and not replaced (max_replaced_lanes reached, or no new worker):
  // the node reports itself unhealthy, for its supervisor to restart it.
  uint64_t lanes_wedged() const { return lanes_wedged_.load(std::memory_order_relaxed); }
  static constexpr int kLaneStrikes = 3;
  static constexpr absl::Duration kLaneProbeWait = absl::Seconds(2);
  // Test hook (InjectFault): lane `lane`'s current worker stops reading (Worker::StallForTest).
  // INVALID_ARGUMENT for a lane the node lacks.
  absl::Status StallLaneForTest(uint32_t lane);

 private:
  struct ChannelState {
    std::vector<transport::EndpointId> endpoints;  // per lane
    // Per lane, the worker endpoints[lane] is on (a lane's worker may be replaced since).
    std::vector<std::shared_ptr<transport::Worker>> workers;
    absl::Time last_used;
    std::string owner;
  };
  // The lane checker's view of one lane: its endpoints to and from the worker it checked.
  struct Probe {
    std::shared_ptr<transport::Worker> lane;
    transport::EndpointId to_lane = 0;    // on probe_
    transport::EndpointId from_lane = 0;  // on `lane`
    int misses = 0;
    bool wedged = false;  // counted in lanes_wedged_ (not replaced)
    bool capped = false;  // not replaced for max_replaced_lanes: not tried again
  };

  DataPlane(DataPlaneOptions options, std::string tls, bool peer_failure_handling);
  // Closes the channel's endpoints and drops its unclaimed messages (id 0: none to drop).
  void Disconnect(uint64_t id, const ChannelState& channel);
  // Drops, on `workers` (the channel's, one per lane), the unclaimed messages whose tags name
  // channel `id`, now and (in SweepUnclaimed, on the lanes' current workers) for
  // unclaimed_timeout after, for messages still on their way.
  void DropChannelMessages(uint64_t id, std::span<const std::shared_ptr<Worker>> workers);
  bool LowBitsTaken(uint64_t id) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The lanes' current workers.
  std::vector<std::shared_ptr<transport::Worker>> Lanes() const;
  // The lane checker (data_plane_lanes.cc): the thread's loop, one check of a lane (true: its
  // message arrived), and the replacement of a lane's worker.
  void CheckLanes();
  bool ProbeLane(size_t lane);
  // False when the lane was not replaced: max_replaced_lanes reached (*capped), or no new
  // worker.
  bool ReplaceLane(size_t lane, bool* capped);

  const DataPlaneOptions options_;
  const std::string tls_;
  const bool peer_failure_handling_;
  std::unique_ptr<transport::Context> context_;
  // The region must outlive the workers: a transfer still on the wire after a deadline may
  // touch arena bytes until the worker is destroyed.
  std::unique_ptr<transport::MemoryRegion> arena_region_;
  std::vector<std::unique_ptr<uint8_t[]>> discard_;  // per lane, max_block_bytes each
  // The lane checker's own worker, its per-lane state and its thread (shared memory only).
  std::unique_ptr<transport::Worker> probe_;
  std::vector<Probe> probes_;  // checker thread only
  uint32_t probe_seq_ = 0;     // checker thread only
  absl::Notification stop_checking_;
  std::thread checker_;
  std::atomic<uint64_t> lanes_replaced_{0};
  std::atomic<uint64_t> lanes_wedged_{0};

  std::atomic<uint64_t> unclaimed_dropped_{0};
  // SweepUnclaimed's view of each lane: per open channel, its oldest unclaimed tag and since
  // when that was its oldest.
  struct OldestSeen {
    uint64_t tag = 0;
    absl::Time since;
  };
  absl::Mutex sweep_mu_;
  std::vector<absl::flat_hash_map<uint64_t, OldestSeen>> oldest_seen_ ABSL_GUARDED_BY(sweep_mu_);
  // Tags of refused calls and tag prefixes of closed channels, dropped until `until`.
  struct Refused {
    uint32_t lane;
    uint64_t tag;
    absl::Time until;
  };
  struct Closed {
    uint64_t prefix;
    absl::Time until;
  };

  mutable absl::Mutex mu_;
  // Per lane its current worker (ReplaceLane swaps one); channels keep the ones they use.
  std::vector<std::shared_ptr<transport::Worker>> lanes_ ABSL_GUARDED_BY(mu_);
  // Workers ReplaceLane took out, destroyed with the plane (data_plane_lanes.cc says why).
  std::vector<std::shared_ptr<transport::Worker>> retired_lanes_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<uint64_t, ChannelState> channels_ ABSL_GUARDED_BY(mu_);
  // Channels being connected: counted against max_channels with channels_.
  size_t connecting_ ABSL_GUARDED_BY(mu_) = 0;
  // The same per owner (those with a connect under way only).
  absl::flat_hash_map<std::string, uint64_t> connecting_by_owner_ ABSL_GUARDED_BY(mu_);
  std::vector<Refused> refused_ ABSL_GUARDED_BY(mu_);
  std::vector<Closed> closed_ ABSL_GUARDED_BY(mu_);
};

// One check of a lane (DataPlane's "A wedged lane", and the client's): a one-byte message
// sent by `probe` over `to_lane` and received by `lane` over `from_probe`, each within
// DataPlane::kLaneProbeWait, under `tag` (prefix 0: no channel's); then `lane` drops any
// other message left under prefix 0 (a late check's). OK when the message arrived.
absl::Status ExchangeLaneCheck(Worker& probe, EndpointId to_lane, Worker& lane,
                               EndpointId from_probe, uint64_t tag);

}  // namespace strata::transport
