// GpuAgentImpl: the agent's state, shared by agent.cc (bookkeeping, offload, peer gathers) and
// agent_load.cc (loads). See agent.h for the contract and agent.cc for how staging is split.
#pragma once

#include <atomic>
#include <deque>
#include <map>
#include <set>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "peer_server.h"
#include "strata/common/http_endpoint.h"
#include "strata/gpu_agent/agent.h"
#include "strata/gpu_agent/copy_engine.h"

namespace strata::gpu_agent {

class GpuAgentImpl : public GpuAgent {
 public:
  GpuAgentImpl(AgentOptions options, std::unique_ptr<client::StoreClient> client);
  ~GpuAgentImpl() override;

  absl::Status RegisterKvPool(const KvPoolSpec& spec) override;
  const client::Namespace& ns() const override { return ns_; }
  std::string peer_address() const override { return peer_address_; }
  absl::Status OnBlocksComputed(std::span<const ComputedBlock> blocks) override;
  absl::Status OnBlocksFreed(std::span<const uint32_t> ids) override;
  absl::Status Flush(absl::Duration timeout) override;
  absl::StatusOr<size_t> MatchedBlocks(std::span<const ChainHash> prefix) override;
  absl::StatusOr<std::shared_ptr<LoadHandle>> Load(std::span<const ChainHash> prefix,
                                                   std::span<const uint32_t> destinations) override;
  AgentStats Stats() const override;
  std::string MetricsText() const override;
  std::string metrics_address() const override { return http_ ? http_->address() : ""; }

  absl::Status StartMetrics();

 private:
  struct BlockState {
    ChainHash hash;
    uint32_t depth = 0;
    float importance = 0;
    uint64_t generation = 0;  // which OnBlocksComputed filled the slot
    bool pending = false;     // queued for offload, not gathered yet
    bool published = false;   // in the directory under this agent's address
    // xxh3-64 of the stored form as offloaded (set when published): what peers are told the
    // block's bytes hash to, so a slot rewritten since fails their check.
    uint64_t checksum = 0;
  };
  struct Captured {  // gathered by OnBlocksFreed, waiting for the store
    ChainHash hash;
    uint64_t generation = 0;
    uint32_t depth = 0;
    float importance = 0;
    std::vector<uint8_t> bytes;
  };
  struct LoadJob {
    uint64_t id = 0;
    std::vector<ChainHash> prefix;
    std::vector<uint32_t> destinations;
    std::shared_ptr<LoadHandle> handle;
  };

  absl::Status CheckSlots(std::span<const uint32_t> ids) const;
  // Whether a slot other than `id` holding `hash` is published (kNoSlot: any slot).
  static constexpr uint32_t kNoSlot = ~uint32_t{0};
  bool PublishedElsewhere(const ChainHash& hash, uint32_t id) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Forget(uint32_t id, BlockState& st) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Pin(uint32_t id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { ++busy_[id]; }
  void Unpin(uint32_t id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (--busy_[id] == 0) busy_.erase(id);
  }

  // The copy engine's gather / scatter in the stored form (quantized with transfer_quant).
  absl::Status GatherStored(std::span<const uint32_t> ids, uint8_t* out);
  absl::Status ScatterStored(const uint8_t* in, std::span<const uint32_t> ids);

  void OffloadLoop();
  std::vector<bool> PutBlocks(std::span<const client::BlockWrite> writes);
  void Publish(std::span<const ChainHash> hashes, absl::Duration ttl);
  void RefreshPublished();
  // Draws a new peer token; the peer server keeps the old one for publish_ttl.
  void RotatePeerToken();
  std::vector<absl::Status> GatherForPeer(std::span<const ChainHash> hashes, uint8_t* region,
                                          uint64_t* checksums);

  void LoadLoop();
  void RunLoad(LoadJob& job);
  // Fetches blocks `which` of the job from `from` (the store's client or a peer's) into the
  // load region and scatters the verified ones; fills their BlockLoad entries.
  void FetchInto(client::StoreClient& from, const client::Namespace& ns, LoadSource source,
                 const std::string& name, LoadJob& job, std::span<const size_t> which);
  // Those of blocks `which` (in order) whose destination slot is still this job's: not freed
  // by the engine since the load began.
  std::vector<size_t> TargetedSlots(const LoadJob& job, std::span<const size_t> which);
  // Starts the offload and load loops: both, or neither (RESOURCE_EXHAUSTED).
  absl::Status StartLoops();
  // A peer agent: its address and the token it asks for (its directory entry's).
  using PeerKey = std::pair<std::string, std::string>;
  // A client for the peer agent `peer` (cached), with the namespace id it serves.
  absl::StatusOr<std::pair<client::StoreClient*, client::Namespace>> PeerClient(
      const PeerKey& peer);
  // Whether a client for `peer` is cached (PeerClient).
  bool HasPeerClient(const PeerKey& peer);
  // Whether `peer` failed to connect less than options_.peer_retry_after ago.
  bool RecentlyUnreachable(const PeerKey& peer);

  const AgentOptions options_;
  const std::string scope_;
  std::unique_ptr<client::StoreClient> client_;

  absl::Mutex register_mu_;
  // Set once by RegisterKvPool, before the threads start; read-only afterwards.
  KvPool pool_;
  uint64_t stored_bytes_ = 0;  // a block as staged, sent and stored
  client::Namespace ns_;
  uint32_t batch_ = 0;
  std::unique_ptr<StagingBuffer> staging_;
  // Where OnBlocksFreed gathers blocks it captures, batch_ at a time (staging memory: the CUDA
  // engine copies to pinned host memory only); null without offload_before_free.
  std::unique_ptr<StagingBuffer> capture_staging_;
  absl::Mutex capture_mu_;  // one OnBlocksFreed gathers into capture_staging_ at a time
  std::unique_ptr<CopyEngine> engine_;
  std::unique_ptr<PeerServer> peer_server_;
  // peer_server_ for the HTTP thread, which serves before the pool (and the server) exist.
  std::atomic<const PeerServer*> peer_server_ready_{nullptr};
  std::string peer_address_;
  // What peers present to peer_server_ (published with the address); drawn anew every
  // peer_token_rotation by the offload thread.
  std::string peer_token_ ABSL_GUARDED_BY(mu_);
  std::unique_ptr<HttpEndpoint> http_;
  std::atomic<bool> ready_{false};
  std::thread offload_thread_;
  std::thread load_thread_;

  mutable absl::Mutex mu_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  absl::flat_hash_map<uint32_t, BlockState> blocks_ ABSL_GUARDED_BY(mu_);
  // The slots holding each block (two requests with one prompt put it in two), oldest first.
  absl::flat_hash_map<ChainHash, std::vector<uint32_t>> by_hash_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<uint32_t, int> busy_ ABSL_GUARDED_BY(mu_);  // slots being copied out
  std::deque<std::pair<uint32_t, uint64_t>> offload_queue_ ABSL_GUARDED_BY(mu_);  // id, generation
  std::deque<Captured> captured_ ABSL_GUARDED_BY(mu_);
  std::vector<ChainHash> unpublish_ ABSL_GUARDED_BY(mu_);
  uint64_t capture_used_ ABSL_GUARDED_BY(mu_) = 0;
  // Generations of the blocks computed and not yet stored (and published, with a peer port)
  // or given up (Flush waits for those up to its call's generation, not for blocks computed
  // after it).
  std::set<uint64_t> inflight_ ABSL_GUARDED_BY(mu_);
  uint64_t generation_ ABSL_GUARDED_BY(mu_) = 0;
  std::deque<LoadJob> loads_ ABSL_GUARDED_BY(mu_);
  // Until when the load region may still take a late write: a Get into it that timed out
  // (or lost its node, or said may_land_late) may have a copy the node queued land afterwards,
  // over shared memory or RDMA (docs/design/transfer-protocol.md, Deadlines). Meanwhile every
  // block loaded through the region is checked after its scatter against the checksum the
  // client verified. Load thread only.
  absl::Time region_suspect_until_ = absl::InfinitePast();
  uint64_t next_load_ ABSL_GUARDED_BY(mu_) = 1;
  // Slot -> the load that will write it. OnBlocksFreed revokes a slot (erases it): that load
  // then skips it (CANCELLED), so a load never writes a slot the engine has handed on.
  absl::flat_hash_map<uint32_t, uint64_t> load_targets_ ABSL_GUARDED_BY(mu_);
  AgentStats stats_ ABSL_GUARDED_BY(mu_);

  // Only the load thread uses peers_ (and the clients in it); tests read unreachable_ too.
  absl::Mutex peers_mu_;
  struct Peer {
    std::unique_ptr<client::StoreClient> client;
    client::Namespace ns;
    uint64_t last_used = 0;  // peer_uses_ when it was last handed out
  };
  std::map<PeerKey, Peer> peers_ ABSL_GUARDED_BY(peers_mu_);
  uint64_t peer_uses_ ABSL_GUARDED_BY(peers_mu_) = 0;
  // peers_.size(), for Stats without waiting on peers_mu_ (held while a peer connects).
  std::atomic<size_t> peer_clients_{0};
  // Peers whose connection failed, and when (entries older than peer_retry_after are dropped).
  std::map<PeerKey, absl::Time> unreachable_ ABSL_GUARDED_BY(peers_mu_);
};

}  // namespace strata::gpu_agent
