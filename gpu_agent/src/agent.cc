// GpuAgentImpl: the bookkeeping and the offload side of the agent (agent.h). Loads run in
// agent_load.cc; peers are served by peer_server.cc.
//
// Staging is split into three regions of `batch` blocks: offload (the offload thread's gathers
// and puts), load (the load thread's gets and scatters) and serve (the peer server's gathers).
// Blocks captured by OnBlocksFreed wait for the store in their own heap copies, bounded by
// capture_bytes.
#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "agent_impl.h"
#include "spdlog/spdlog.h"
#include "strata/common/block_key.h"
#include "strata/common/checksum.h"
#include "strata/common/threads.h"
#include "strata/proto/tls_files.h"

namespace strata::gpu_agent {

std::string_view LoadSourceName(LoadSource source) {
  switch (source) {
    case LoadSource::kPeer:
      return "peer";
    case LoadSource::kStore:
      return "store";
    case LoadSource::kNone:
      break;
  }
  return "none";
}

bool LoadHandle::Wait(absl::Duration timeout) const {
  const absl::Time until = absl::Now() + timeout;
  while (!Done() && absl::Now() < until) absl::SleepFor(absl::Milliseconds(1));
  return Done();
}

size_t LoadHandle::loaded_prefix() const {
  size_t n = 0;
  while (n < blocks_.size() && blocks_[n].status.ok()) ++n;
  return n;
}

NamespaceSpec AgentNamespace(const AgentOptions& options, const KvPoolSpec& shape) {
  NamespaceSpec ns;
  ns.model_id = options.model_id;
  ns.dtype = std::string(KvDtypeName(shape.dtype));
  ns.layout = StoredLayoutName(shape);
  ns.block_tokens = shape.block_tokens;
  ns.tp_rank = options.tp_rank;
  ns.tp_size = options.tp_size;
  ns.hash_algorithm = options.hash_algorithm;
  ns.block_bytes = 2ull * shape.layers * shape.block_tokens * shape.kv_heads * shape.head_dim *
                   KvDtypeBytes(shape.dtype);
  ns.head_dim = shape.head_dim;
  if (options.transfer_quant != KvQuant::kNone) {
    const KvQuantSpec q{options.transfer_quant, shape.dtype, shape.head_dim};
    ns.layout += absl::StrCat("+", std::string(KvQuantName(options.transfer_quant)));
    if (ValidateKvQuantSpec(q, ns.block_bytes).ok()) {
      ns.block_bytes = QuantizedPayloadSize(q, ns.block_bytes);
    }
  }
  return ns;
}

absl::StatusOr<std::unique_ptr<GpuAgent>> GpuAgent::Create(const AgentOptions& options) {
  if (options.model_id.empty()) return absl::InvalidArgumentError("model_id: empty");
  if (options.batch_blocks == 0) return absl::InvalidArgumentError("batch_blocks: must be >= 1");
  if (options.max_peer_clients == 0) {
    return absl::InvalidArgumentError("max_peer_clients: must be >= 1");
  }
  if (options.publish_ttl < absl::Seconds(1)) {
    return absl::InvalidArgumentError("publish_ttl: at least 1s");
  }
  if (options.peer_token_rotation != absl::ZeroDuration() &&
      options.peer_token_rotation < absl::Seconds(1)) {
    return absl::InvalidArgumentError("peer_token_rotation: 0 (never) or at least 1s");
  }
  // TLS files are read when the pool registers and at every peer connection: a bad path is
  // an error now, not a warning on every load.
  if (options.peer_tls_cert.empty() != options.peer_tls_key.empty()) {
    return absl::InvalidArgumentError("peer_tls_cert / peer_tls_key: give both or neither");
  }
  for (const auto& [path, field] : {std::pair{&options.peer_tls_cert, "peer_tls_cert"},
                                    std::pair{&options.peer_tls_key, "peer_tls_key"},
                                    std::pair{&options.peer_tls_ca, "peer_tls_ca"}}) {
    if (path->empty()) continue;
    if (absl::StatusOr<std::string> pem = proto::ReadPemFile(*path, field); !pem.ok()) {
      return pem.status();
    }
  }
  absl::StatusOr<std::unique_ptr<client::StoreClient>> client =
      client::StoreClient::Connect(options.store);
  if (!client.ok()) return client.status();
  auto agent = std::make_unique<GpuAgentImpl>(options, std::move(*client));
  if (absl::Status s = agent->StartMetrics(); !s.ok()) return s;
  return std::unique_ptr<GpuAgent>(std::move(agent));
}

GpuAgentImpl::GpuAgentImpl(AgentOptions options, std::unique_ptr<client::StoreClient> client)
    : options_(std::move(options)),
      scope_(options_.scope.empty() ? options_.store.default_scope : options_.scope),
      client_(std::move(client)) {}

GpuAgentImpl::~GpuAgentImpl() {
  // First: its handlers read stats_ under mu_, which go before it (declared after it). A
  // shutting-down agent is not ready.
  ready_.store(false);
  http_.reset();
  if (engine_ != nullptr) Flush(options_.call_deadline).IgnoreError();
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  if (offload_thread_.joinable()) offload_thread_.join();
  if (load_thread_.joinable()) load_thread_.join();
  peer_server_.reset();
  // Withdraw what this agent still advertises.
  std::vector<ChainHash> published;
  for (const auto& [id, b] : blocks_) {
    if (b.published) published.push_back(b.hash);
  }
  Publish(published, absl::ZeroDuration());
  if (staging_ != nullptr) client_->UnregisterMemory(staging_->data()).IgnoreError();
}

absl::Status GpuAgentImpl::RegisterKvPool(const KvPoolSpec& spec) {
  absl::MutexLock register_lock(&register_mu_);
  if (engine_ != nullptr) return absl::FailedPreconditionError("a KV pool is already registered");
  absl::StatusOr<KvPool> pool = ResolveKvPool(spec);
  if (!pool.ok()) return pool.status();
  absl::StatusOr<std::unique_ptr<CopyEngine>> engine = CreateCopyEngine(*pool);
  if (!engine.ok()) return engine.status();
  const uint64_t bb = pool->block_bytes;
  uint64_t stored = bb;
  if (options_.transfer_quant != KvQuant::kNone) {
    const KvQuantSpec q{options_.transfer_quant, pool->dtype, pool->head_dim};
    if (absl::Status v = ValidateKvQuantSpec(q, bb); !v.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("transfer_quant: ", v.message()));
    }
    stored = QuantizedPayloadSize(q, bb);
  }
  batch_ = static_cast<uint32_t>(
      std::min<uint64_t>(options_.batch_blocks, options_.staging_bytes / (3 * bb)));
  if (batch_ == 0) {
    return absl::InvalidArgumentError(absl::StrCat("staging_bytes: ", options_.staging_bytes,
                                                   " holds fewer than 3 blocks of ", bb, " bytes"));
  }
  absl::StatusOr<std::unique_ptr<StagingBuffer>> staging =
      (*engine)->AllocateStaging(3ull * batch_ * bb);
  if (!staging.ok()) return staging.status();
  std::unique_ptr<StagingBuffer> capture_staging;
  if (options_.offload_before_free && options_.capture_bytes > 0) {
    absl::StatusOr<std::unique_ptr<StagingBuffer>> cs =
        (*engine)->AllocateStaging(uint64_t{batch_} * bb);
    if (!cs.ok()) return cs.status();
    capture_staging = std::move(*cs);
  }

  absl::StatusOr<client::Namespace> registered =
      client_->RegisterNamespace(AgentNamespace(options_, spec));
  if (!registered.ok()) return registered.status();

  // Zero-copy puts and gets from staging where the store offers UCX; inline otherwise.
  absl::Status reg = client_->RegisterMemory((*staging)->data(), (*staging)->size());
  if (!reg.ok() && reg.code() != absl::StatusCode::kFailedPrecondition) {
    spdlog::warn("gpu agent: staging not registered with the store's data plane ({})",
                 reg.ToString());
  }
  if (!options_.peer_listen.empty()) {
    PeerServerOptions po;
    po.listen = options_.peer_listen;
    po.ucx_tls = options_.peer_ucx_tls;
    po.namespace_id = registered->id;
    po.scope = scope_;
    po.block_bytes = stored;
    po.max_blocks = batch_;
    po.node_id = absl::StrCat("gpu-agent:", options_.model_id);
    po.token = RandomPeerToken();  // new for every process: no token outlives its agent
    po.tls_cert = options_.peer_tls_cert;
    po.tls_key = options_.peer_tls_key;
    uint8_t* serve_region = (*staging)->data() + 2ull * batch_ * bb;
    absl::StatusOr<std::unique_ptr<PeerServer>> server = PeerServer::Start(
        po, serve_region,
        [this](std::span<const ChainHash> hashes, uint8_t* region, uint64_t* checksums) {
          return GatherForPeer(hashes, region, checksums);
        });
    if (!server.ok()) {
      // The staging buffer goes with this call: it must not stay registered (a retry's buffer
      // may be mapped at the same address).
      if (reg.ok()) client_->UnregisterMemory((*staging)->data()).IgnoreError();
      return server.status();
    }
    peer_server_ = std::move(*server);
    {
      absl::MutexLock lock(&mu_);
      peer_token_ = po.token;
    }
    std::string host = options_.peer_listen.substr(0, options_.peer_listen.rfind(':'));
    peer_address_ = options_.peer_advertise.empty() ? absl::StrCat(host, ":", peer_server_->port())
                                                    : options_.peer_advertise;
  }
  pool_ = *pool;
  stored_bytes_ = stored;
  ns_ = *registered;
  staging_ = std::move(*staging);
  capture_staging_ = std::move(capture_staging);
  engine_ = std::move(*engine);
  if (absl::Status loops = StartLoops(); !loops.ok()) {
    // As if never registered: a pool without its loops would take offloads that never leave.
    peer_server_.reset();
    if (reg.ok()) client_->UnregisterMemory(staging_->data()).IgnoreError();
    staging_.reset();
    capture_staging_.reset();
    engine_.reset();
    return loops;
  }
  peer_server_ready_.store(peer_server_.get());
  ready_.store(true);
  spdlog::info("gpu agent: pool registered ({} blocks of {} bytes, {} layout, {} copy engine)",
               pool_.num_blocks, bb, KvLayoutName(pool_.layout), engine_->Describe());
  return absl::OkStatus();
}

absl::Status GpuAgentImpl::StartLoops() {
  absl::StatusOr<std::thread> offload =
      StartThread("the agent's offload loop", [this] { OffloadLoop(); });
  if (!offload.ok()) return offload.status();
  absl::StatusOr<std::thread> load = StartThread("the agent's load loop", [this] { LoadLoop(); });
  if (!load.ok()) {
    {
      absl::MutexLock lock(&mu_);
      stop_ = true;  // nothing is queued yet: the loop just ends
    }
    offload->join();
    absl::MutexLock lock(&mu_);
    stop_ = false;
    return load.status();
  }
  offload_thread_ = *std::move(offload);
  load_thread_ = *std::move(load);
  return absl::OkStatus();
}

absl::Status GpuAgentImpl::CheckSlots(std::span<const uint32_t> ids) const {
  if (engine_ == nullptr) return absl::FailedPreconditionError("no KV pool registered");
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] >= pool_.num_blocks) {
      return absl::InvalidArgumentError(
          absl::StrCat("block id ", ids[i], " (entry ", i, "): the pool has ", pool_.num_blocks));
    }
  }
  return absl::OkStatus();
}

absl::Status GpuAgentImpl::OnBlocksComputed(std::span<const ComputedBlock> blocks) {
  std::vector<uint32_t> ids;
  for (const ComputedBlock& b : blocks) ids.push_back(b.block_id);
  if (absl::Status s = CheckSlots(ids); !s.ok()) return s;
  absl::MutexLock lock(&mu_);
  for (const ComputedBlock& b : blocks) {
    auto [it, fresh] = blocks_.try_emplace(b.block_id);
    BlockState& st = it->second;
    if (!fresh) {
      Forget(b.block_id, st);  // remapped: the old content is gone
      st = BlockState{};
    }
    st.hash = b.hash;
    st.depth = b.depth;
    st.importance = b.importance;
    st.generation = ++generation_;
    st.pending = true;
    by_hash_[b.hash].push_back(b.block_id);
    offload_queue_.push_back({b.block_id, st.generation});
    inflight_.insert(st.generation);
  }
  return absl::OkStatus();
}

void GpuAgentImpl::Forget(uint32_t id, BlockState& st) {
  if (st.pending) {
    inflight_.erase(st.generation);
    ++stats_.offload_dropped;
  }
  // The directory entry (one per hash) goes with the last published slot holding it.
  if (st.published && !PublishedElsewhere(st.hash, id)) {
    unpublish_.push_back(st.hash);
    --stats_.published;
  }
  if (auto h = by_hash_.find(st.hash); h != by_hash_.end()) {
    std::erase(h->second, id);
    if (h->second.empty()) by_hash_.erase(h);
  }
}

bool GpuAgentImpl::PublishedElsewhere(const ChainHash& hash, uint32_t id) const {
  auto h = by_hash_.find(hash);
  if (h == by_hash_.end()) return false;
  return std::any_of(h->second.begin(), h->second.end(), [&](uint32_t other) {
    auto b = blocks_.find(other);
    return other != id && b != blocks_.end() && b->second.published;
  });
}

absl::Status GpuAgentImpl::OnBlocksFreed(std::span<const uint32_t> ids) {
  if (absl::Status s = CheckSlots(ids); !s.ok()) return s;
  std::vector<uint32_t> capture;
  std::vector<BlockState> captured_state;
  {
    absl::MutexLock lock(&mu_);
    // A slot being copied out (offload gather, peer read) must stay intact until the copy ends.
    auto idle = [&] {
      return std::none_of(ids.begin(), ids.end(), [&](uint32_t id) { return busy_.contains(id); });
    };
    mu_.Await(absl::Condition(&idle));
    for (uint32_t id : ids) {
      load_targets_.erase(id);
      auto it = blocks_.find(id);
      if (it == blocks_.end()) continue;
      BlockState st = it->second;
      if (st.pending && options_.offload_before_free &&
          capture_used_ + stored_bytes_ <= options_.capture_bytes) {
        capture_used_ += stored_bytes_;
        it->second.pending = false;  // handed to the capture below, still in flight
        capture.push_back(id);
        captured_state.push_back(st);
        Pin(id);
      }
      Forget(id, it->second);
      blocks_.erase(it);
    }
  }
  if (capture.empty()) return absl::OkStatus();
  // Through staging memory (the CUDA engine refuses to copy into pageable memory), batch_
  // blocks at a time, straight into each block's own copy that the offload thread sends later
  // (capture_bytes bounds them; no second buffer of the whole capture). A batch that fails
  // (with transfer_quant, a block holding NaN or infinity) is gathered again block by block,
  // so only the bad block is lost.
  std::vector<std::vector<uint8_t>> each(capture.size());
  std::vector<absl::Status> gathered(capture.size());
  {
    absl::MutexLock lock(&capture_mu_);
    auto take = [&](size_t first, size_t n) {
      absl::Status g = GatherStored({capture.data() + first, n}, capture_staging_->data());
      for (size_t k = first; k < first + n; ++k) {
        gathered[k] = g;
        if (!g.ok()) continue;
        const uint8_t* from = capture_staging_->data() + (k - first) * stored_bytes_;
        each[k].assign(from, from + stored_bytes_);
      }
      return g.ok();
    };
    for (size_t first = 0; first < capture.size(); first += batch_) {
      const size_t n = std::min<size_t>(batch_, capture.size() - first);
      if (take(first, n) || n == 1) continue;
      for (size_t k = first; k < first + n; ++k) take(k, 1);
    }
  }
  absl::Status first_error = absl::OkStatus();
  absl::MutexLock lock(&mu_);
  for (size_t i = 0; i < capture.size(); ++i) {
    Unpin(capture[i]);
    if (!gathered[i].ok()) {
      capture_used_ -= stored_bytes_;
      inflight_.erase(captured_state[i].generation);
      ++stats_.offload_failed;
      if (first_error.ok()) first_error = gathered[i];
      continue;
    }
    Captured c;
    c.hash = captured_state[i].hash;
    c.generation = captured_state[i].generation;
    c.depth = captured_state[i].depth;
    c.importance = captured_state[i].importance;
    c.bytes = std::move(each[i]);
    captured_.push_back(std::move(c));
    ++stats_.captured_on_free;
  }
  // The slots are freed either way; a block that could not be captured is counted
  // (offload_failed), not handed back to the engine as an error.
  if (!first_error.ok()) {
    spdlog::warn("gpu agent: freed blocks not captured for the store: {}", first_error.ToString());
  }
  return absl::OkStatus();
}

absl::Status GpuAgentImpl::Flush(absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  // A watermark: the blocks computed before this call, not those an engine under steady
  // load computes meanwhile (waiting for none in flight could wait for ever).
  const uint64_t mark = generation_;
  auto drained = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return inflight_.empty() || *inflight_.begin() > mark;
  };
  if (!mu_.AwaitWithTimeout(absl::Condition(&drained), timeout)) {
    const auto left = std::distance(inflight_.begin(), inflight_.upper_bound(mark));
    return absl::DeadlineExceededError(
        absl::StrCat(left, " blocks computed before the call still on their way to the store"));
  }
  return absl::OkStatus();
}

void GpuAgentImpl::OffloadLoop() {
  const uint64_t bb = stored_bytes_;
  uint8_t* region = staging_->data();
  absl::Time next_refresh = absl::Now() + options_.publish_ttl / 3;
  const bool rotates =
      peer_server_ != nullptr && options_.peer_token_rotation > absl::ZeroDuration();
  absl::Time next_rotation =
      rotates ? absl::Now() + options_.peer_token_rotation : absl::InfiniteFuture();
  while (true) {
    std::vector<uint32_t> ids;
    std::vector<BlockState> states;
    std::vector<Captured> captured;
    std::vector<ChainHash> unpublish;
    {
      absl::MutexLock lock(&mu_);
      auto work = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return stop_ || !offload_queue_.empty() || !captured_.empty() || !unpublish_.empty();
      };
      mu_.AwaitWithDeadline(absl::Condition(&work), std::min(next_refresh, next_rotation));
      if (stop_) {
        // Shutting down after Flush had its call_deadline: what is still queued is given up
        // (counted dropped), so a store that stopped answering costs the destructor that
        // deadline, not one per batch of the queue. Unpublishing is one bounded call.
        for (const auto& [id, gen] : offload_queue_) {
          auto it = blocks_.find(id);
          if (it == blocks_.end() || it->second.generation != gen || !it->second.pending) continue;
          it->second.pending = false;
          inflight_.erase(gen);
          ++stats_.offload_dropped;
        }
        offload_queue_.clear();
        for (const Captured& c : captured_) inflight_.erase(c.generation);
        stats_.offload_dropped += captured_.size();
        capture_used_ -= captured_.size() * bb;
        captured_.clear();
        if (unpublish_.empty()) break;
      }
      // A hash published again since (another slot computed it, its put just done) keeps
      // its entry: the removal queued before that publish would take it away.
      for (const ChainHash& h : unpublish_) {
        if (!PublishedElsewhere(h, kNoSlot)) unpublish.push_back(h);
      }
      unpublish_.clear();
      while (!captured_.empty() && captured.size() < batch_) {
        captured.push_back(std::move(captured_.front()));
        captured_.pop_front();
      }
      while (!offload_queue_.empty() && ids.size() < batch_) {
        auto [id, gen] = offload_queue_.front();
        offload_queue_.pop_front();
        auto it = blocks_.find(id);
        if (it == blocks_.end() || it->second.generation != gen || !it->second.pending) continue;
        it->second.pending = false;
        Pin(id);
        ids.push_back(id);
        states.push_back(it->second);
      }
    }
    Publish(unpublish, absl::ZeroDuration());
    if (!ids.empty()) {
      std::vector<absl::Status> gathered(ids.size(), GatherStored(ids, region));
      if (!gathered[0].ok() && options_.transfer_quant != KvQuant::kNone) {
        // A block holding NaN or infinity cannot be quantized: only that one stays behind.
        for (size_t i = 0; i < ids.size(); ++i)
          gathered[i] = GatherStored({&ids[i], 1}, region + i * bb);
      }
      {
        absl::MutexLock lock(&mu_);
        for (uint32_t id : ids) Unpin(id);
      }
      std::vector<client::BlockWrite> writes;
      std::vector<size_t> sent;  // index into ids of writes[k]
      for (size_t i = 0; i < ids.size(); ++i) {
        if (!gathered[i].ok()) {
          spdlog::error("gpu agent: gather for offload failed: {}", gathered[i].ToString());
          continue;
        }
        writes.push_back(
            {states[i].hash, region + i * bb, bb, states[i].depth, states[i].importance});
        sent.push_back(i);
      }
      std::vector<bool> ok = PutBlocks(writes);
      // What peers will be told each block hashes to (the bytes just stored), only for blocks
      // this agent advertises.
      std::vector<uint64_t> sums(sent.size());
      for (size_t k = 0; k < sent.size() && !options_.peer_listen.empty(); ++k) {
        if (ok[k]) sums[k] = BlockChecksum(region + sent[k] * bb, bb);
      }
      std::vector<ChainHash> publish;
      {
        absl::MutexLock lock(&mu_);
        stats_.offload_failed += ids.size() - sent.size();
        for (size_t k = 0; k < sent.size(); ++k) {
          const size_t i = sent[k];
          auto it = blocks_.find(ids[i]);
          // Still the same block in that slot: advertise it to peers.
          if (ok[k] && !options_.peer_listen.empty() && it != blocks_.end() &&
              it->second.generation == states[i].generation && !it->second.published) {
            // Another slot holding the same block (two requests with one prompt) already
            // advertises it: one entry, one count.
            const bool already = PublishedElsewhere(states[i].hash, ids[i]);
            it->second.published = true;
            it->second.checksum = sums[k];
            if (already) continue;
            ++stats_.published;
            publish.push_back(states[i].hash);
          }
        }
      }
      Publish(publish, options_.publish_ttl);
      // Only now: Flush returns once the blocks are stored and advertised, so the decode a
      // prefill hands over to finds them at this agent (until 2026-11-29 the entries could
      // land after Flush returned: the decode read the store, flaky in tests).
      absl::MutexLock lock(&mu_);
      for (const BlockState& st : states) inflight_.erase(st.generation);
    }
    if (!captured.empty()) {
      std::vector<client::BlockWrite> writes;
      for (const Captured& c : captured) {
        writes.push_back({c.hash, c.bytes.data(), bb, c.depth, c.importance});
      }
      PutBlocks(writes);
      absl::MutexLock lock(&mu_);
      capture_used_ -= captured.size() * bb;
      for (const Captured& c : captured) inflight_.erase(c.generation);
    }
    if (absl::Now() >= next_rotation) {
      RotatePeerToken();
      next_rotation = absl::Now() + options_.peer_token_rotation;
      next_refresh = absl::InfinitePast();  // republish under the new token now
    }
    if (absl::Now() >= next_refresh) {
      RefreshPublished();
      next_refresh = absl::Now() + options_.publish_ttl / 3;
    }
  }
}

std::vector<bool> GpuAgentImpl::PutBlocks(std::span<const client::BlockWrite> writes) {
  std::vector<bool> ok(std::max<size_t>(writes.size(), batch_), false);
  if (writes.empty()) return ok;
  // A block another put is still writing (a second prefill of the same prompt, or one that
  // died mid-put) is stored only if that put commits: asked about again until it settled.
  absl::StatusOr<client::PutResult> r =
      client::PutSettled(*client_, ns_, scope_, writes, absl::Now() + options_.call_deadline);
  absl::MutexLock lock(&mu_);
  for (size_t i = 0; i < writes.size(); ++i) {
    const absl::Status& s = r.ok() ? r->blocks[i] : r.status();
    ok[i] = s.ok() || (s.code() == absl::StatusCode::kAlreadyExists && !IsBlockBeingWritten(s));
    if (ok[i]) {
      ++stats_.offloaded;
      stats_.bytes_offloaded += writes[i].size;
    } else {
      ++stats_.offload_failed;
      spdlog::warn("gpu agent: offload of block {} failed: {}", writes[i].hash.ToHex(),
                   s.ToString());
    }
  }
  return ok;
}

void GpuAgentImpl::Publish(std::span<const ChainHash> hashes, absl::Duration ttl) {
  if (hashes.empty() || peer_address_.empty()) return;
  std::vector<uint64_t> sizes(hashes.size(), stored_bytes_);
  client::CallOptions call{options_.call_deadline};
  std::string token;
  {
    absl::MutexLock lock(&mu_);
    token = peer_token_;
  }
  auto r = client_->Publish(ns_, scope_, hashes, sizes, {peer_address_, token}, ttl, call);
  if (!r.ok()) {
    spdlog::warn("gpu agent: publishing {} blocks (ttl {}) failed: {}", hashes.size(),
                 absl::FormatDuration(ttl), r.status().ToString());
    return;
  }
  if (ttl <= absl::ZeroDuration()) return;
  absl::MutexLock lock(&mu_);
  for (size_t i = 0; i < hashes.size() && i < r->size(); ++i) {
    if ((*r)[i].code() != absl::StatusCode::kFailedPrecondition) continue;
    // A writer deleted the block lately: it is neither refreshed nor served to peers any
    // more (a block computed again is offloaded and published anew).
    auto h = by_hash_.find(hashes[i]);
    if (h == by_hash_.end()) continue;
    bool was = false;
    for (uint32_t id : h->second) {
      auto b = blocks_.find(id);
      if (b == blocks_.end() || !b->second.published) continue;
      b->second.published = false;
      was = true;
    }
    if (was) --stats_.published;
  }
}

void GpuAgentImpl::RotatePeerToken() {
  std::string token = RandomPeerToken();
  if (token.empty()) {
    spdlog::error("gpu agent: no random bytes for a new peer token; keeping the old one");
    absl::MutexLock lock(&mu_);
    ++stats_.peer_token_rotation_failures;
    return;
  }
  // Entries published with the old token last publish_ttl at most; readers who looked one up
  // meanwhile may still come with it until then.
  peer_server_->RotateToken(token, absl::Now() + options_.publish_ttl);
  absl::MutexLock lock(&mu_);
  peer_token_ = std::move(token);
  ++stats_.peer_token_rotations;
}

void GpuAgentImpl::RefreshPublished() {
  std::vector<ChainHash> held;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [id, b] : blocks_) {
      if (b.published) held.push_back(b.hash);
    }
  }
  Publish(held, options_.publish_ttl);
}

std::vector<absl::Status> GpuAgentImpl::GatherForPeer(std::span<const ChainHash> hashes,
                                                      uint8_t* region, uint64_t* checksums) {
  std::vector<absl::Status> status(hashes.size(), absl::OkStatus());
  std::vector<uint32_t> ids;
  std::vector<size_t> at;  // staged position of ids[k]
  const std::vector<uint32_t> none;
  {
    absl::MutexLock lock(&mu_);
    for (size_t i = 0; i < hashes.size(); ++i) {
      // A slot whose block was published (offloaded, its checksum known): the newest such.
      // One only computed again in another slot, not yet offloaded, is not served from there.
      auto h = by_hash_.find(hashes[i]);
      const std::vector<uint32_t>& slots = h == by_hash_.end() ? none : h->second;
      auto slot = std::find_if(slots.rbegin(), slots.rend(), [&](uint32_t id) {
        auto b = blocks_.find(id);
        return b != blocks_.end() && b->second.published;
      });
      if (slot == slots.rend()) {
        status[i] = absl::NotFoundError("not in this agent's GPU memory");
        continue;
      }
      ids.push_back(*slot);
      at.push_back(i);
      checksums[i] = blocks_.at(*slot).checksum;
      Pin(*slot);
    }
  }
  // Gather into the first ids.size() slots, then spread to each block's position.
  absl::Status gathered = GatherStored(ids, region);
  {
    absl::MutexLock lock(&mu_);
    for (uint32_t id : ids) Unpin(id);
    if (gathered.ok()) stats_.served_to_peers += ids.size();
  }
  const uint64_t bb = stored_bytes_;
  for (size_t k = ids.size(); k-- > 0;) {
    if (!gathered.ok()) {
      status[at[k]] = gathered;
    } else if (at[k] != k) {
      std::memmove(region + at[k] * bb, region + k * bb, bb);
    }
  }
  // A slot the engine rewrote after its block was offloaded, before telling the agent (as an
  // engine that remaps slots does: OnBlocksComputed comes after the forward pass wrote them)
  // no longer holds that block. The reader would catch it (its checksum is the recorded
  // one); refused here and withdrawn from the directory, later readers are spared the trip.
  std::vector<size_t> rewritten;  // k of ids[k]
  for (size_t k = 0; gathered.ok() && k < ids.size(); ++k) {
    if (BlockChecksum(region + at[k] * bb, bb) != checksums[at[k]]) rewritten.push_back(k);
  }
  if (!rewritten.empty()) {
    absl::MutexLock lock(&mu_);
    for (size_t k : rewritten) {
      const ChainHash& hash = hashes[at[k]];
      status[at[k]] = absl::DataLossError(
          "the slot holding this block was rewritten since it was offloaded; withdrawn");
      auto b = blocks_.find(ids[k]);
      if (b != blocks_.end() && b->second.published && b->second.hash == hash) {
        b->second.published = false;
        if (!PublishedElsewhere(hash, ids[k])) {
          unpublish_.push_back(hash);
          --stats_.published;
        }
      }
    }
    stats_.served_to_peers -= rewritten.size();
    stats_.served_rewritten += rewritten.size();
    spdlog::error(
        "gpu agent: {} published block(s) found rewritten in their slots when a peer read them "
        "(the engine reused the slots before OnBlocksFreed / OnBlocksComputed); refused and "
        "withdrawn",
        rewritten.size());
  }
  return status;
}

absl::Status GpuAgentImpl::GatherStored(std::span<const uint32_t> ids, uint8_t* out) {
  if (options_.transfer_quant == KvQuant::kNone) return engine_->Gather(ids, out);
  return engine_->GatherQuantized(ids, options_.transfer_quant, out);
}

absl::Status GpuAgentImpl::ScatterStored(const uint8_t* in, std::span<const uint32_t> ids) {
  if (options_.transfer_quant == KvQuant::kNone) return engine_->Scatter(in, ids);
  return engine_->ScatterDequantized(in, options_.transfer_quant, ids);
}

AgentStats GpuAgentImpl::Stats() const {
  absl::MutexLock lock(&mu_);
  AgentStats s = stats_;
  s.peer_clients = peer_clients_.load(std::memory_order_relaxed);
  return s;
}

absl::Status GpuAgentImpl::StartMetrics() {
  if (options_.metrics_listen.empty()) return absl::OkStatus();
  HttpEndpoint::Handlers h;
  h.metrics = [this] { return MetricsText(); };
  h.ready = [this] { return ready_.load(); };
  h.broken = [this] {
    const PeerServer* server = peer_server_ready_.load();
    return server != nullptr ? server->Broken() : std::string();
  };
  absl::StatusOr<std::unique_ptr<HttpEndpoint>> http =
      HttpEndpoint::Start(options_.metrics_listen, std::move(h));
  if (!http.ok()) return http.status();
  http_ = std::move(*http);
  return absl::OkStatus();
}

std::string GpuAgentImpl::MetricsText() const {
  const AgentStats st = Stats();
  struct Metric {
    const char* name;
    const char* type;
    const char* help;
    uint64_t value;
  };
  const Metric metrics[] = {
      {"strata_agent_offloaded_blocks_total", "counter", "Blocks the store acknowledged",
       st.offloaded},
      {"strata_agent_offload_failed_blocks_total", "counter", "Offloads that failed",
       st.offload_failed},
      {"strata_agent_offload_dropped_blocks_total", "counter",
       "Blocks freed before capture with no room", st.offload_dropped},
      {"strata_agent_captured_on_free_blocks_total", "counter",
       "Blocks copied out by OnBlocksFreed before the store had them", st.captured_on_free},
      {"strata_agent_published_blocks", "gauge", "Directory entries this agent holds",
       st.published},
      {"strata_agent_loaded_blocks_total{source=\"peer\"}", "counter", "Blocks loaded",
       st.loaded_from_peer},
      {"strata_agent_loaded_blocks_total{source=\"store\"}", "counter", "Blocks loaded",
       st.loaded_from_store},
      {"strata_agent_load_failed_blocks_total", "counter", "Blocks no source could load",
       st.load_failed},
      {"strata_agent_peer_fallback_blocks_total", "counter",
       "Blocks a peer could not serve, loaded from the store", st.peer_fallbacks},
      {"strata_agent_peer_skipped_blocks_total", "counter",
       "Blocks loaded from the store without trying their peer: unreachable moments before, "
       "or after failing peers had cost the load call_deadline",
       st.peer_skips},
      {"strata_agent_served_blocks_total", "counter", "Blocks sent to peer agents",
       st.served_to_peers},
      {"strata_agent_served_rewritten_blocks_total", "counter",
       "Blocks peers asked for whose slot the engine had rewritten before telling the agent: "
       "refused and withdrawn",
       st.served_rewritten},
      {"strata_agent_peer_token_rotations_total", "counter",
       "Times the peer token was drawn anew (peer_token_rotation)", st.peer_token_rotations},
      {"strata_agent_peer_token_rotation_failures_total", "counter",
       "Rotations skipped for want of random bytes: the old token stays in use",
       st.peer_token_rotation_failures},
      {"strata_agent_offloaded_bytes_total", "counter", "Bytes offloaded", st.bytes_offloaded},
      {"strata_agent_loaded_bytes_total", "counter", "Bytes loaded", st.bytes_loaded},
  };
  std::string out;
  std::string_view last;
  for (const Metric& m : metrics) {
    std::string_view base(m.name);
    base = base.substr(0, base.find('{'));
    if (base != last) {
      absl::StrAppend(&out, "# HELP ", std::string(base), " ", m.help, "\n# TYPE ",
                      std::string(base), " ", m.type, "\n");
      last = base;
    }
    absl::StrAppend(&out, m.name, " ", m.value, "\n");
  }
  return out;
}

}  // namespace strata::gpu_agent
