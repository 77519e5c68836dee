#include "strata/client/store_client.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <functional>
#include <future>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "client_data_plane.h"
#include "grpcpp/grpcpp.h"
#include "strata/common/checksum.h"
#include "strata/proto/status_convert.h"
#include "strata/v1/store.grpc.pb.h"

namespace strata::client {
namespace {

using proto::FromBlockStatus;
using proto::FromGrpc;
using proto::ToGrpc;

Tier FromProtoTier(v1::Tier t) {
  switch (t) {
    case v1::TIER_HOT:
      return Tier::kHot;
    case v1::TIER_WARM:
      return Tier::kWarm;
    case v1::TIER_COOL:
      return Tier::kCool;
    case v1::TIER_COLD:
      return Tier::kCold;
    default:
      return Tier::kUnknown;
  }
}

std::string HashAlgorithmName(ChainHashAlgorithm a) {
  return std::string(ChainHashAlgorithmName(a));
}

// Index ranges [begin, end) of a batch, each within the node's per-call limits.
template <typename SizeOf>
std::vector<std::pair<size_t, size_t>> SplitBatch(size_t n, uint64_t max_keys, uint64_t max_bytes,
                                                  SizeOf size_of) {
  std::vector<std::pair<size_t, size_t>> parts;
  size_t begin = 0;
  uint64_t bytes = 0;
  for (size_t i = 0; i < n; ++i) {
    uint64_t b = size_of(i);
    if (i > begin && (i - begin >= max_keys || bytes + b > max_bytes)) {
      parts.emplace_back(begin, i);
      begin = i;
      bytes = 0;
    }
    bytes += b;
  }
  if (begin < n) parts.emplace_back(begin, n);
  return parts;
}

// Runs part(0..n-1) in parallel (part 0 on the calling thread); the first error wins.
template <typename Part>
absl::Status RunParts(size_t n, Part part) {
  std::vector<std::future<absl::Status>> pending;
  for (size_t p = 1; p < n; ++p) {
    pending.push_back(std::async(std::launch::async, [&part, p] { return part(p); }));
  }
  absl::Status first = part(0);
  for (auto& f : pending) {
    absl::Status s = f.get();
    if (first.ok()) first = s;
  }
  return first;
}

// Errors after which a data call is worth retrying on the same channel later; any other
// failure to open a channel means this node will not serve the client over UCX right now.
bool IsTransient(absl::StatusCode code) {
  return code == absl::StatusCode::kUnavailable || code == absl::StatusCode::kDeadlineExceeded ||
         code == absl::StatusCode::kCancelled;
}

// Whether the node's UCX_TLS list lets UCX carry the data plane over TCP (a leading '^'
// excludes the listed transports), where tagged messages beat RMA emulated by messages.
bool TlsIncludesTcp(const std::string& tls) {
  if (absl::StartsWith(tls, "^")) return false;
  for (absl::string_view t : absl::StrSplit(tls, ',')) {
    if (t == "tcp") return true;
  }
  return false;
}

// Where one block's bytes sit for a UCX transfer: inside a registered user range (zero-copy),
// or, with region null, in a bounce buffer.
struct Placement {
  std::shared_ptr<const transport::MemoryRegion> region;
  uint64_t length = 0;  // put: the payload size; get: the usable destination capacity
};

// Collects the distinct rkeys of one data request, in first-use order.
class RkeyTable {
 public:
  template <typename AddRkey>
  uint32_t IndexOf(const transport::MemoryRegion& region, AddRkey add) {
    for (size_t k = 0; k < regions_.size(); ++k) {
      if (regions_[k] == &region) return static_cast<uint32_t>(k);
    }
    regions_.push_back(&region);
    add(region.PackedRkey());
    return static_cast<uint32_t>(regions_.size() - 1);
  }

 private:
  std::vector<const transport::MemoryRegion*> regions_;
};

class GrpcStoreClient final : public StoreClient {
 public:
  GrpcStoreClient(ClientOptions options, std::shared_ptr<grpc::Channel> channel)
      : options_(std::move(options)),
        channel_(std::move(channel)),
        stub_(v1::StoreService::NewStub(channel_)) {}

  ~GrpcStoreClient() override {
    if (ucx_ != nullptr) {
      uint64_t channel = 0;
      {
        absl::MutexLock lock(&chan_mu_);
        channel = std::exchange(channel_id_, 0);
      }
      if (channel != 0) CloseDataQuietly(channel);
    }
    {
      absl::MutexLock lock(&quiet_mu_);
      quiet_mu_.Await(absl::Condition(
          +[](int* n) { return *n == 0; }, &quiet_calls_));
    }
    // Stops the workers before the registered ranges and bounce buffers they may touch.
    ucx_.reset();
  }

  absl::Status Init() {
    absl::StatusOr<NodeStats> s = Stats({});
    if (!s.ok()) return s.status();
    max_keys_ = std::max<uint32_t>(1, s->max_keys_per_call);
    max_inline_ = std::max<uint64_t>(1, s->max_inline_bytes);
    max_block_ = s->max_block_bytes;
    if (options_.data_plane == ClientOptions::DataPlane::kInline) return absl::OkStatus();
    if (s->ucx_tls.empty() || s->ucx_lanes == 0) {
      if (options_.data_plane == ClientOptions::DataPlane::kUcx) {
        return absl::FailedPreconditionError(
            Where("Connect") + ": data_plane is kUcx, but the node offers no UCX data plane");
      }
      return absl::OkStatus();
    }
    absl::Status started = StartDataPlane(*s);
    if (!started.ok()) {
      if (options_.data_plane == ClientOptions::DataPlane::kUcx) return started;
      // kAuto: inline still works; say why in DataPlaneDescription().
      ucx_.reset();
      inline_reason_ = absl::StrCat("ucx unavailable: ", started.message());
    }
    return absl::OkStatus();
  }

  absl::Status RegisterMemory(void* ptr, size_t len) override {
    if (ucx_ == nullptr) {
      return absl::FailedPreconditionError("RegisterMemory: the client has no UCX data plane (" +
                                           DataPlaneDescription() + ")");
    }
    return ucx_->Register(ptr, len);
  }

  absl::Status UnregisterMemory(void* ptr) override {
    if (ucx_ == nullptr) {
      return absl::NotFoundError("UnregisterMemory: no range registered (no data plane)");
    }
    return ucx_->Unregister(ptr);
  }

  std::string DataPlaneDescription() const override {
    if (ucx_ == nullptr) {
      return inline_reason_.empty() ? "inline" : absl::StrCat("inline (", inline_reason_, ")");
    }
    std::string transport;
    {
      absl::MutexLock lock(&chan_mu_);
      transport = transport_;
    }
    if (transport.empty()) transport = ucx_tls_;
    const uint32_t lanes = ucx_->lanes();
    return absl::StrCat("ucx ", transport, two_sided_ ? " (two-sided)" : "", ", ", lanes,
                        lanes == 1 ? " lane" : " lanes");
  }

  absl::StatusOr<Namespace> RegisterNamespace(const NamespaceSpec& spec,
                                              const CallOptions& call) override {
    if (absl::Status s = ValidateNamespaceSpec(spec); !s.ok()) return s;
    v1::RegisterNamespaceRequest req;
    v1::NamespaceSpec* out = req.mutable_spec();
    out->set_model_id(spec.model_id);
    out->set_dtype(spec.dtype);
    out->set_layout(spec.layout);
    out->set_block_tokens(spec.block_tokens);
    out->set_tp_rank(spec.tp_rank);
    out->set_tp_size(spec.tp_size);
    out->set_hash_algorithm(HashAlgorithmName(spec.hash_algorithm));
    out->set_block_bytes(spec.block_bytes);
    out->set_offload_quant(spec.offload_quant);
    out->set_head_dim(spec.head_dim);
    v1::RegisterNamespaceResponse resp;
    grpc::ClientContext ctx;
    SetDeadline(ctx, Deadline(call));
    if (absl::Status s = FromGrpc(stub_->RegisterNamespace(&ctx, req, &resp), Where("Register"));
        !s.ok()) {
      return s;
    }
    if (resp.namespace_id() != ComputeNamespaceId(spec)) {
      return absl::InternalError(Where("RegisterNamespace") +
                                 ": node derived a different namespace id (version skew?)");
    }
    return Namespace{resp.namespace_id(), spec};
  }

  absl::StatusOr<LookupResult> Lookup(const Namespace& ns, std::string_view scope,
                                      std::span<const ChainHash> hashes,
                                      const CallOptions& call) override {
    LookupResult result;
    auto deadline = Deadline(call);
    // Sequential parts: a prefix that misses in one part cannot continue in the next.
    for (size_t begin = 0; begin < hashes.size(); begin += max_keys_) {
      size_t end = std::min(hashes.size(), begin + max_keys_);
      v1::LookupRequest req;
      req.set_namespace_id(ns.id);
      req.set_scope(Scope(scope));
      for (size_t i = begin; i < end; ++i) req.add_chain_hashes(hashes[i].ToBytes());
      v1::LookupResponse resp;
      grpc::ClientContext ctx;
      SetDeadline(ctx, deadline);
      if (absl::Status s = FromGrpc(stub_->Lookup(&ctx, req, &resp), Where("Lookup")); !s.ok()) {
        return s;
      }
      for (const v1::BlockInfo& b : resp.blocks()) {
        result.blocks.push_back({FromProtoTier(b.tier()), b.size()});
      }
      result.matched_blocks += resp.matched_blocks();
      if (resp.matched_blocks() < end - begin) break;
    }
    return result;
  }

  absl::StatusOr<PutResult> Put(const Namespace& ns, std::string_view scope,
                                std::span<const BlockWrite> blocks, const CallOptions& call,
                                const PutOptions& put) override {
    PutResult result;
    result.blocks.resize(blocks.size());
    if (blocks.empty()) return result;
    auto deadline = Deadline(call);
    std::string sc = Scope(scope);
    // Blocks the node rejects by size, and null payloads, keep the inline path's reporting.
    bool ucx_fits = true;
    uint64_t largest = 0;
    for (const BlockWrite& b : blocks) {
      ucx_fits = ucx_fits && b.data != nullptr && b.size > 0 && b.size <= max_block_;
      largest = std::max(largest, b.size);
    }
    absl::StatusOr<bool> use_ucx = UseDataChannel(ucx_fits, largest, deadline);
    if (!use_ucx.ok()) return use_ucx.status();
    absl::Status first;
    if (*use_ucx) {
      std::vector<Placement> placed(blocks.size());
      for (size_t i = 0; i < blocks.size(); ++i) {
        // Two-sided sends read the caller's buffer as it is: no region to look up.
        placed[i] = {two_sided_ ? nullptr : ucx_->FindRegion(blocks[i].data, blocks[i].size),
                     blocks[i].size};
      }
      auto parts = SplitForDataChannel(placed);
      const uint32_t lane0 = next_lane_.fetch_add(static_cast<uint32_t>(parts.size()));
      first = RunParts(parts.size(), [&](size_t p) {
        return PutDataPart(ns, sc, blocks, placed, parts[p], (lane0 + p) % ucx_->lanes(), deadline,
                           put, &result);
      });
    } else {
      auto parts = SplitBatch(blocks.size(), max_keys_, max_inline_,
                              [&](size_t i) { return blocks[i].size; });
      first = RunParts(parts.size(), [&](size_t p) {
        return PutPart(ns, sc, blocks, parts[p], deadline, put, &result);
      });
    }
    if (!first.ok()) return first;
    for (const absl::Status& s : result.blocks) {
      if (s.ok()) ++result.stored;
      if (s.code() == absl::StatusCode::kAlreadyExists) ++result.already_present;
    }
    return result;
  }

  absl::StatusOr<GetResult> Get(const Namespace& ns, std::string_view scope,
                                std::span<const BlockRead> blocks, const CallOptions& call,
                                const GetOptions& get) override {
    GetResult result;
    result.blocks.resize(blocks.size());
    result.sizes.resize(blocks.size());
    if (blocks.empty()) return result;
    auto deadline = Deadline(call);
    std::string sc = Scope(scope);
    // A block is at most max_block_ bytes, so that much of a larger buffer is all it can use.
    auto usable = [&](size_t i) { return std::min<uint64_t>(blocks[i].capacity, max_block_); };
    bool ucx_fits = true;
    uint64_t largest = 0;
    for (size_t i = 0; i < blocks.size(); ++i) {
      ucx_fits = ucx_fits && blocks[i].buffer != nullptr && usable(i) > 0;
      largest = std::max(largest, usable(i));
    }
    absl::StatusOr<bool> use_ucx = UseDataChannel(ucx_fits, largest, deadline);
    if (!use_ucx.ok()) return use_ucx.status();
    absl::Status first;
    if (*use_ucx) {
      std::vector<Placement> placed(blocks.size());
      for (size_t i = 0; i < blocks.size(); ++i) {
        placed[i] = {two_sided_ ? nullptr : ucx_->FindRegion(blocks[i].buffer, usable(i)),
                     usable(i)};
      }
      auto parts = SplitForDataChannel(placed);
      const uint32_t lane0 = next_lane_.fetch_add(static_cast<uint32_t>(parts.size()));
      first = RunParts(parts.size(), [&](size_t p) {
        return GetDataPart(ns, sc, blocks, placed, parts[p], (lane0 + p) % ucx_->lanes(), deadline,
                           get.promote, &result);
      });
    } else {
      auto parts = SplitBatch(blocks.size(), max_keys_, max_inline_, usable);
      first = RunParts(parts.size(), [&](size_t p) {
        return GetPart(ns, sc, blocks, parts[p], deadline, get.promote, &result);
      });
    }
    if (!first.ok()) return first;
    for (const absl::Status& s : result.blocks) result.fetched += s.ok() ? 1 : 0;
    return result;
  }

  absl::StatusOr<uint64_t> Delete(const Namespace& ns, std::string_view scope,
                                  std::span<const ChainHash> hashes,
                                  const CallOptions& call) override {
    uint64_t deleted = 0;
    auto deadline = Deadline(call);
    for (size_t begin = 0; begin < hashes.size(); begin += max_keys_) {
      size_t end = std::min(hashes.size(), begin + max_keys_);
      v1::DeleteRequest req;
      req.set_namespace_id(ns.id);
      req.set_scope(Scope(scope));
      for (size_t i = begin; i < end; ++i) req.add_chain_hashes(hashes[i].ToBytes());
      v1::DeleteResponse resp;
      grpc::ClientContext ctx;
      SetDeadline(ctx, deadline);
      if (absl::Status s = FromGrpc(stub_->Delete(&ctx, req, &resp), Where("Delete")); !s.ok()) {
        return s;
      }
      deleted += resp.deleted();
    }
    return deleted;
  }

  absl::StatusOr<NodeStats> Stats(const CallOptions& call) override {
    v1::StatsRequest req;
    v1::StatsResponse resp;
    grpc::ClientContext ctx;
    SetDeadline(ctx, Deadline(call));
    if (absl::Status s = FromGrpc(stub_->Stats(&ctx, req, &resp), Where("Stats")); !s.ok()) {
      return s;
    }
    NodeStats out;
    out.node_id = resp.node_id();
    for (const v1::TierStats& t : resp.tiers()) {
      if (t.tier() == v1::TIER_WARM) {
        out.warm_blocks = t.blocks();
        out.warm_bytes = t.bytes();
        out.warm_used_bytes = t.used_bytes();
        out.warm_capacity_bytes = t.capacity_bytes();
      } else if (t.tier() == v1::TIER_COOL) {
        out.cool_blocks = t.blocks();
        out.cool_bytes = t.bytes();
        out.cool_stored_bytes = t.used_bytes();
        out.cool_capacity_bytes = t.capacity_bytes();
      } else if (t.tier() == v1::TIER_COLD) {
        out.cold_blocks = t.blocks();
        out.cold_bytes = t.bytes();
        out.cold_stored_bytes = t.used_bytes();
        out.cold_capacity_bytes = t.capacity_bytes();
      }
    }
    out.demotions = resp.demotions();
    out.promotions = resp.promotions();
    out.prefetched = resp.prefetched();
    out.prefetch_used = resp.prefetch_used();
    out.prefetch_wasted = resp.prefetch_wasted();
    out.hits = resp.hits();
    out.misses = resp.misses();
    out.evictions = resp.evictions();
    out.leases = resp.leases();
    out.reservations = resp.reservations();
    out.namespaces = resp.namespaces();
    out.data_loss = resp.data_loss();
    out.max_keys_per_call = resp.max_keys_per_call();
    out.max_block_bytes = resp.max_block_bytes();
    out.max_inline_bytes = resp.max_inline_bytes();
    out.ucx_tls = resp.ucx_tls();
    out.ucx_peer_failure_handling = resp.ucx_peer_failure_handling();
    out.ucx_lanes = resp.ucx_lanes();
    out.data_channels = resp.data_channels();
    return out;
  }

  absl::StatusOr<uint64_t> PauseSession(std::string_view session_id, bool to_cold,
                                        const CallOptions& call) override {
    v1::PauseSessionRequest req;
    req.set_session_id(std::string(session_id));
    req.set_tier(to_cold ? v1::TIER_COLD : v1::TIER_COOL);
    v1::PauseSessionResponse resp;
    grpc::ClientContext ctx;
    SetDeadline(ctx, Deadline(call));
    absl::Status s = FromGrpc(stub_->PauseSession(&ctx, req, &resp), Where("PauseSession"));
    if (!s.ok()) return s;
    return resp.moved();
  }

  absl::StatusOr<uint64_t> ResumeSession(std::string_view session_id,
                                         const CallOptions& call) override {
    v1::ResumeSessionRequest req;
    req.set_session_id(std::string(session_id));
    v1::ResumeSessionResponse resp;
    grpc::ClientContext ctx;
    SetDeadline(ctx, Deadline(call));
    absl::Status s = FromGrpc(stub_->ResumeSession(&ctx, req, &resp), Where("ResumeSession"));
    if (!s.ok()) return s;
    return resp.promoted();
  }

  absl::StatusOr<uint64_t> Prefetch(const Namespace& ns, std::string_view scope,
                                    std::span<const ChainHash> hashes, std::string_view session_id,
                                    const CallOptions& call) override {
    v1::PrefetchRequest req;
    req.set_namespace_id(ns.id);
    req.set_scope(Scope(scope));
    req.set_session_id(std::string(session_id));
    for (const ChainHash& h : hashes) req.add_chain_hashes(h.ToBytes());
    v1::PrefetchResponse resp;
    grpc::ClientContext ctx;
    SetDeadline(ctx, Deadline(call));
    absl::Status s = FromGrpc(stub_->Prefetch(&ctx, req, &resp), Where("Prefetch"));
    if (!s.ok()) return s;
    return resp.scheduled();
  }

 private:
  using Clock = std::chrono::system_clock;

  Clock::time_point Deadline(const CallOptions& call) const {
    absl::Duration d =
        call.deadline > absl::ZeroDuration() ? call.deadline : options_.default_deadline;
    return Clock::now() + absl::ToChronoMilliseconds(d);
  }
  static void SetDeadline(grpc::ClientContext& ctx, Clock::time_point deadline) {
    ctx.set_deadline(deadline);
  }
  std::string Where(std::string_view op) const {
    return absl::StrCat(std::string(op), " ", options_.address);
  }
  std::string Scope(std::string_view scope) const {
    return scope.empty() ? options_.default_scope : std::string(scope);
  }

  absl::Status PutPart(const Namespace& ns, const std::string& scope,
                       std::span<const BlockWrite> blocks, std::pair<size_t, size_t> range,
                       Clock::time_point deadline, const PutOptions& put, PutResult* result) {
    v1::BeginPutRequest begin;
    begin.set_namespace_id(ns.id);
    begin.set_scope(scope);
    begin.set_session_id(put.session_id);
    for (size_t i = range.first; i < range.second; ++i) {
      if (blocks[i].data == nullptr && blocks[i].size > 0) {
        return absl::InvalidArgumentError(absl::StrCat("blocks[", i, "].data: null"));
      }
      v1::PutBlock* b = begin.add_blocks();
      b->set_chain_hash(blocks[i].hash.ToBytes());
      b->set_size(blocks[i].size);
      b->set_depth(blocks[i].depth);
      b->set_importance(blocks[i].importance);
    }
    v1::BeginPutResponse reserved;
    {
      grpc::ClientContext ctx;
      SetDeadline(ctx, deadline);
      absl::Status s = FromGrpc(stub_->BeginPut(&ctx, begin, &reserved), Where("BeginPut"));
      if (!s.ok()) return s;
    }
    if (reserved.slots_size() != static_cast<int>(range.second - range.first)) {
      return absl::InternalError(Where("BeginPut") + ": reply has the wrong number of slots");
    }
    v1::CommitPutRequest commit;
    commit.set_reservation_id(reserved.reservation_id());
    std::vector<size_t> committed;
    for (size_t i = range.first; i < range.second; ++i) {
      absl::Status slot =
          FromBlockStatus(reserved.slots(static_cast<int>(i - range.first)).status());
      result->blocks[i] = slot;
      if (!slot.ok()) continue;
      v1::CommitBlock* c = commit.add_blocks();
      c->set_chain_hash(blocks[i].hash.ToBytes());
      c->set_checksum(BlockChecksum(blocks[i].data, blocks[i].size));
      c->set_payload(blocks[i].data, blocks[i].size);
      committed.push_back(i);
    }
    if (committed.empty()) return absl::OkStatus();
    v1::CommitPutResponse done;
    grpc::ClientContext ctx;
    SetDeadline(ctx, deadline);
    absl::Status s = FromGrpc(stub_->CommitPut(&ctx, commit, &done), Where("CommitPut"));
    if (!s.ok()) {
      // The reservation would expire on its own; releasing it now frees the node sooner.
      AbortQuietly(reserved.reservation_id());
      return s;
    }
    if (done.results_size() != static_cast<int>(committed.size())) {
      return absl::InternalError(Where("CommitPut") + ": reply has the wrong number of results");
    }
    for (size_t k = 0; k < committed.size(); ++k) {
      result->blocks[committed[k]] = FromBlockStatus(done.results(static_cast<int>(k)));
    }
    return absl::OkStatus();
  }

  absl::Status GetPart(const Namespace& ns, const std::string& scope,
                       std::span<const BlockRead> blocks, std::pair<size_t, size_t> range,
                       Clock::time_point deadline, bool promote, GetResult* result) {
    v1::BeginGetRequest req;
    req.set_namespace_id(ns.id);
    req.set_scope(scope);
    req.set_include_payload(true);
    req.set_skip_promotion(!promote);
    for (size_t i = range.first; i < range.second; ++i) {
      req.add_chain_hashes(blocks[i].hash.ToBytes());
    }
    v1::BeginGetResponse resp;
    grpc::ClientContext ctx;
    SetDeadline(ctx, deadline);
    if (absl::Status s = FromGrpc(stub_->BeginGet(&ctx, req, &resp), Where("BeginGet")); !s.ok()) {
      return s;
    }
    if (resp.blocks_size() != static_cast<int>(range.second - range.first)) {
      return absl::InternalError(Where("BeginGet") + ": reply has the wrong number of blocks");
    }
    for (size_t i = range.first; i < range.second; ++i) {
      const v1::GetBlock& b = resp.blocks(static_cast<int>(i - range.first));
      absl::Status st = FromBlockStatus(b.status());
      if (st.ok() && b.payload().size() != b.size()) {
        st = absl::DataLossError(
            absl::StrCat("payload is ", b.payload().size(), " bytes, node said ", b.size()));
      }
      if (st.ok() && BlockChecksum(b.payload().data(), b.payload().size()) != b.checksum()) {
        // End-to-end check: whatever happened on the way, a wrong byte never reaches the
        // caller's buffer.
        st = absl::DataLossError("payload failed its checksum after transfer");
      }
      if (st.ok() && b.size() > blocks[i].capacity) {
        st = absl::OutOfRangeError(
            absl::StrCat("block is ", b.size(), " bytes, buffer holds ", blocks[i].capacity));
      }
      if (st.ok()) {
        std::memcpy(blocks[i].buffer, b.payload().data(), b.size());
        result->sizes[i] = b.size();
      }
      result->blocks[i] = std::move(st);
    }
    if (resp.lease_id() != 0) EndGetQuietly(resp.lease_id());
    return absl::OkStatus();
  }

  // Fire-and-forget release; the node's lease expiry covers a lost message. The destructor
  // waits for these calls: their callbacks must not outlive the stub.
  template <typename Req, typename Resp, typename Start>
  void CallQuietly(Start start, Req req,
                   std::chrono::milliseconds timeout = std::chrono::seconds(2)) {
    struct Call {
      grpc::ClientContext ctx;
      Req req;
      Resp resp;
    };
    auto* c = new Call;
    c->req = std::move(req);
    c->ctx.set_deadline(Clock::now() + timeout);
    {
      absl::MutexLock lock(&quiet_mu_);
      ++quiet_calls_;
    }
    start(&c->ctx, &c->req, &c->resp, [this, c](grpc::Status) {
      delete c;
      absl::MutexLock lock(&quiet_mu_);
      --quiet_calls_;
    });
  }
  void EndGetQuietly(uint64_t lease_id) {
    v1::EndGetRequest req;
    req.set_lease_id(lease_id);
    CallQuietly<v1::EndGetRequest, v1::EndGetResponse>(
        [this](auto* ctx, auto* rq, auto* rs, auto cb) {
          stub_->async()->EndGet(ctx, rq, rs, std::move(cb));
        },
        std::move(req));
  }
  void AbortQuietly(uint64_t reservation_id) {
    v1::AbortPutRequest req;
    req.set_reservation_id(reservation_id);
    CallQuietly<v1::AbortPutRequest, v1::AbortPutResponse>(
        [this](auto* ctx, auto* rq, auto* rs, auto cb) {
          stub_->async()->AbortPut(ctx, rq, rs, std::move(cb));
        },
        std::move(req));
  }

  void CloseDataQuietly(uint64_t channel_id) {
    v1::CloseDataRequest req;
    req.set_channel_id(channel_id);
    // Short: a node that is gone must not hold up the caller; idle channels expire anyway.
    CallQuietly<v1::CloseDataRequest, v1::CloseDataResponse>(
        [this](auto* ctx, auto* rq, auto* rs, auto cb) {
          stub_->async()->CloseData(ctx, rq, rs, std::move(cb));
        },
        std::move(req), std::chrono::milliseconds(500));
  }

  // ---- UCX data plane ----

  // Starts the lane workers and opens the first channel.
  absl::Status StartDataPlane(const NodeStats& stats) {
    if (max_block_ == 0) {
      return absl::FailedPreconditionError(Where("Stats") + ": node reports max_block_bytes 0");
    }
    ClientDataPlaneOptions opts;
    opts.tls = stats.ucx_tls;
    opts.peer_failure_handling = stats.ucx_peer_failure_handling;
    opts.lanes = stats.ucx_lanes;
    opts.bounce_buffer_size = max_block_;
    opts.bounce_buffers = std::max<uint64_t>(2, options_.bounce_bytes / max_block_);
    absl::StatusOr<std::unique_ptr<ClientDataPlane>> plane = ClientDataPlane::Create(opts);
    if (!plane.ok()) return plane.status();
    ucx_ = *std::move(plane);
    ucx_tls_ = stats.ucx_tls;
    two_sided_ = options_.ucx_two_sided_on_tcp && TlsIncludesTcp(stats.ucx_tls);
    absl::StatusOr<uint64_t> channel = AcquireChannel(Deadline({}));
    return channel.status();
  }

  // Whether a Put/Get goes over the data channel: there is a data plane, every block suits it
  // and the largest is big enough. Opens (or reopens) the channel; a kAuto client whose node
  // refuses a channel for a lasting reason sends the call inline. Errors: the channel could not
  // be opened for a transient reason (UNAVAILABLE, DEADLINE_EXCEEDED).
  absl::StatusOr<bool> UseDataChannel(bool fits, uint64_t largest, Clock::time_point deadline) {
    if (ucx_ == nullptr || !fits || largest < options_.ucx_min_block_bytes) return false;
    absl::StatusOr<uint64_t> channel = AcquireChannel(deadline);
    if (channel.ok()) return true;
    if (options_.data_plane == ClientOptions::DataPlane::kAuto &&
        !IsTransient(channel.status().code())) {
      return false;
    }
    return channel.status();
  }

  // The open channel, opening one (ConnectData and wiring) if there is none. Concurrent callers
  // wait for the one that connects, never holding chan_mu_ across the RPC.
  absl::StatusOr<uint64_t> AcquireChannel(Clock::time_point deadline) {
    auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(chan_mu_) { return !connecting_; };
    if (!chan_mu_.LockWhenWithDeadline(absl::Condition(&idle), absl::FromChrono(deadline))) {
      chan_mu_.Unlock();
      return absl::DeadlineExceededError(Where("ConnectData") +
                                         ": deadline passed waiting for the data channel");
    }
    if (channel_id_ != 0) {
      const uint64_t id = channel_id_;
      chan_mu_.Unlock();
      return id;
    }
    connecting_ = true;
    chan_mu_.Unlock();

    absl::StatusOr<std::pair<uint64_t, std::string>> opened = OpenChannel(deadline);
    absl::MutexLock lock(&chan_mu_);
    connecting_ = false;
    if (!opened.ok()) return opened.status();
    channel_id_ = opened->first;
    transport_ = std::move(opened->second);
    return channel_id_;
  }

  // ConnectData, then wires each client lane to the node lane of the same index (the node
  // initiates every transfer, but UCX wires up best with endpoints in both directions).
  // Returns the channel id and the condensed transport of lane 0.
  absl::StatusOr<std::pair<uint64_t, std::string>> OpenChannel(Clock::time_point deadline) {
    v1::ConnectDataRequest req;
    for (std::string& a : ucx_->WorkerAddresses()) req.add_worker_addresses(std::move(a));
    v1::ConnectDataResponse resp;
    grpc::ClientContext ctx;
    SetDeadline(ctx, deadline);
    if (absl::Status s = FromGrpc(stub_->ConnectData(&ctx, req, &resp), Where("ConnectData"));
        !s.ok()) {
      return s;
    }
    if (resp.channel_id() == 0) {
      return absl::InternalError(Where("ConnectData") + ": node answered channel_id 0");
    }
    std::vector<std::string> node_lanes(resp.worker_addresses().begin(),
                                        resp.worker_addresses().end());
    if (absl::Status s = ucx_->Wire(node_lanes); !s.ok()) {
      CloseDataQuietly(resp.channel_id());
      return absl::Status(s.code(), absl::StrCat(Where("ConnectData"), ": ", s.message()));
    }
    return std::make_pair(resp.channel_id(), CondenseTransport(resp.transport()));
  }

  // Forgets `stale` (if still current), so the next call opens a new channel.
  void MarkBroken(uint64_t stale) {
    absl::MutexLock lock(&chan_mu_);
    if (channel_id_ == stale) channel_id_ = 0;
  }

  // Runs one data RPC (`rpc(channel_id, ctx)`) on the channel. The node forgets channels (idle
  // expiry, restart, a transfer that failed): NOT_FOUND reconnects once and retries.
  // UNAVAILABLE marks the channel broken; the next call reconnects.
  template <typename Rpc>
  absl::Status CallOnChannel(std::string_view op, Clock::time_point deadline, Rpc rpc) {
    absl::StatusOr<uint64_t> channel = AcquireChannel(deadline);
    if (!channel.ok()) return channel.status();
    for (int attempt = 0;; ++attempt) {
      grpc::ClientContext ctx;
      SetDeadline(ctx, deadline);
      absl::Status s = FromGrpc(rpc(*channel, &ctx), Where(op));
      if (s.code() == absl::StatusCode::kNotFound) {
        MarkBroken(*channel);
        if (attempt == 0) {
          channel = AcquireChannel(deadline);
          if (!channel.ok()) return channel.status();
          continue;
        }
        // NOT_FOUND means "miss" to our callers; a channel lost twice is a node problem.
        return absl::UnavailableError(
            absl::StrCat(s.message(), " (data channel lost again after reconnecting)"));
      }
      if (s.code() == absl::StatusCode::kUnavailable) MarkBroken(*channel);
      return s;
    }
  }

  // Index ranges of a data-channel batch: at most max_keys_ blocks, the batch spread over the
  // lanes, in RMA mode at most a lane's share of the bounce pool (so parts on different lanes
  // can run at once; two-sided mode needs none), and at most max_inline_ bytes (a GetData
  // reply may carry blocks inline).
  std::vector<std::pair<size_t, size_t>> SplitForDataChannel(
      const std::vector<Placement>& placed) const {
    const size_t n = placed.size();
    const size_t lanes = ucx_->lanes();
    const size_t spread = (n + std::min(lanes, n) - 1) / std::min(lanes, n);
    const size_t max_blocks = std::min<size_t>(max_keys_, spread);
    const size_t max_bounce = std::max<size_t>(1, ucx_->bounce_capacity() / lanes);
    std::vector<std::pair<size_t, size_t>> parts;
    size_t begin = 0;
    size_t bounce = 0;
    uint64_t bytes = 0;
    for (size_t i = 0; i < n; ++i) {
      const size_t b = !two_sided_ && placed[i].region == nullptr ? 1 : 0;
      if (i > begin && (i - begin >= max_blocks || bounce + b > max_bounce ||
                        bytes + placed[i].length > max_inline_)) {
        parts.emplace_back(begin, i);
        begin = i;
        bounce = 0;
        bytes = 0;
      }
      bounce += b;
      bytes += placed[i].length;
    }
    if (begin < n) parts.emplace_back(begin, n);
    return parts;
  }

  // One bounce buffer for each block of the part that lies outside registered memory.
  absl::StatusOr<std::vector<transport::BounceBuffer>> AcquirePartBounce(
      std::string_view op, const std::vector<Placement>& placed, std::pair<size_t, size_t> range,
      Clock::time_point deadline) {
    size_t needed = 0;
    for (size_t i = range.first; i < range.second; ++i) {
      needed += placed[i].region == nullptr ? 1 : 0;
    }
    absl::StatusOr<std::vector<transport::BounceBuffer>> bounce =
        ucx_->AcquireBounce(needed, absl::FromChrono(deadline));
    if (!bounce.ok()) {
      return absl::Status(bounce.status().code(),
                          absl::StrCat(Where(op), ": ", bounce.status().message()));
    }
    return bounce;
  }

  absl::Status PutDataPart(const Namespace& ns, const std::string& scope,
                           std::span<const BlockWrite> blocks, const std::vector<Placement>& placed,
                           std::pair<size_t, size_t> range, uint32_t lane,
                           Clock::time_point deadline, const PutOptions& put, PutResult* result) {
    if (two_sided_) {
      return PutDataPartTwoSided(ns, scope, blocks, range, lane, deadline, put, result);
    }
    absl::StatusOr<std::vector<transport::BounceBuffer>> bounce =
        AcquirePartBounce("PutData", placed, range, deadline);
    if (!bounce.ok()) return bounce.status();
    v1::PutDataRequest req;
    req.set_namespace_id(ns.id);
    req.set_scope(scope);
    req.set_session_id(put.session_id);
    req.set_lane(lane);
    RkeyTable rkeys;
    auto add_rkey = [&req](const std::string& rkey) { req.add_rkeys(rkey); };
    size_t next_bounce = 0;
    for (size_t i = range.first; i < range.second; ++i) {
      const BlockWrite& w = blocks[i];
      v1::PutBlock* b = req.add_blocks();
      b->set_chain_hash(w.hash.ToBytes());
      b->set_size(w.size);
      b->set_depth(w.depth);
      b->set_importance(w.importance);
      req.add_checksums(BlockChecksum(w.data, w.size));
      v1::RemoteBuffer* src = req.add_sources();
      src->set_length(w.size);
      if (placed[i].region != nullptr) {
        src->set_addr(reinterpret_cast<uintptr_t>(w.data));
        src->set_rkey_index(rkeys.IndexOf(*placed[i].region, add_rkey));
      } else {
        transport::BounceBuffer& buf = (*bounce)[next_bounce++];
        std::memcpy(buf.data(), w.data, w.size);
        src->set_addr(reinterpret_cast<uintptr_t>(buf.data()));
        src->set_rkey_index(rkeys.IndexOf(ucx_->bounce_region(), add_rkey));
      }
    }
    v1::PutDataResponse resp;
    absl::Status s =
        CallOnChannel("PutData", deadline, [&](uint64_t channel, grpc::ClientContext* ctx) {
          req.set_channel_id(channel);
          return stub_->PutData(ctx, req, &resp);
        });
    if (!s.ok()) return s;
    return TakePutReply(resp, range, result);
  }

  // Per-block outcomes of a PutData reply into *result.
  absl::Status TakePutReply(const v1::PutDataResponse& resp, std::pair<size_t, size_t> range,
                            PutResult* result) {
    if (resp.results_size() != static_cast<int>(range.second - range.first)) {
      return absl::InternalError(Where("PutData") + ": reply has the wrong number of results");
    }
    for (size_t i = range.first; i < range.second; ++i) {
      result->blocks[i] = FromBlockStatus(resp.results(static_cast<int>(i - range.first)));
    }
    return absl::OkStatus();
  }

  absl::Status GetDataPart(const Namespace& ns, const std::string& scope,
                           std::span<const BlockRead> blocks, const std::vector<Placement>& placed,
                           std::pair<size_t, size_t> range, uint32_t lane,
                           Clock::time_point deadline, bool promote, GetResult* result) {
    if (two_sided_) {
      return GetDataPartTwoSided(ns, scope, blocks, placed, range, lane, deadline, promote, result);
    }
    absl::StatusOr<std::vector<transport::BounceBuffer>> bounce =
        AcquirePartBounce("GetData", placed, range, deadline);
    if (!bounce.ok()) return bounce.status();
    v1::GetDataRequest req;
    req.set_skip_promotion(!promote);
    req.set_namespace_id(ns.id);
    req.set_scope(scope);
    req.set_lane(lane);
    RkeyTable rkeys;
    auto add_rkey = [&req](const std::string& rkey) { req.add_rkeys(rkey); };
    // Where each block lands: the caller's buffer (zero-copy) or its bounce buffer.
    std::vector<const void*> landing(range.second - range.first);
    size_t next_bounce = 0;
    for (size_t i = range.first; i < range.second; ++i) {
      req.add_chain_hashes(blocks[i].hash.ToBytes());
      v1::RemoteBuffer* dst = req.add_destinations();
      dst->set_length(placed[i].length);
      if (placed[i].region != nullptr) {
        landing[i - range.first] = blocks[i].buffer;
        dst->set_rkey_index(rkeys.IndexOf(*placed[i].region, add_rkey));
      } else {
        landing[i - range.first] = (*bounce)[next_bounce++].data();
        dst->set_rkey_index(rkeys.IndexOf(ucx_->bounce_region(), add_rkey));
      }
      dst->set_addr(reinterpret_cast<uintptr_t>(landing[i - range.first]));
    }
    v1::GetDataResponse resp;
    absl::Status s =
        CallOnChannel("GetData", deadline, [&](uint64_t channel, grpc::ClientContext* ctx) {
          req.set_channel_id(channel);
          return stub_->GetData(ctx, req, &resp);
        });
    if (!s.ok()) return s;
    if (resp.blocks_size() != static_cast<int>(range.second - range.first)) {
      return absl::InternalError(Where("GetData") + ": reply has the wrong number of blocks");
    }
    std::vector<size_t> retry = AcceptGetReply(resp, blocks, range, result, [&](size_t i) {
      return Landing{landing[i - range.first], placed[i].length, /*exact=*/false};
    });
    bounce->clear();  // back to the pool before the (rare) retry
    if (!retry.empty()) RetryInline(ns, scope, blocks, retry, deadline, promote, result);
    return absl::OkStatus();
  }

  // ---- Two-sided (tagged message) mode ----
  //
  // Each attempt of the RPC (CallOnChannel reconnects once on NOT_FOUND, which changes the
  // channel id carried in the tags) runs its own transfer on the part's lane: started before
  // the RPC, joined before the attempt returns, so no buffer outlives its call. A transfer that
  // fails on its own cancels the RPC (the node would wait for its messages until the deadline)
  // and the attempt answers UNAVAILABLE-like codes, so CallOnChannel marks the channel broken.
  // An RPC that fails sets `abort`: for sends that retires the lane endpoint (they cannot be
  // withdrawn), so the channel is marked broken and the next call reconnects; receives are just
  // cancelled. A message the node sends anyway for an abandoned receive never matches a later
  // one: every tag is fresh.

  // One attempt's transfer, run beside its RPC.
  struct TaggedTransfer {
    std::atomic<bool> abort{false};
    std::atomic<bool> failed_alone{false};  // failed before the RPC ended (cancelled it)
    std::future<absl::Status> done;
  };

  void StartTagged(TaggedTransfer* t, uint32_t lane, std::span<const transport::TransferOp> ops,
                   Clock::time_point deadline, grpc::ClientContext* ctx) {
    t->done = std::async(std::launch::async, [this, t, lane, ops, deadline, ctx] {
      absl::Status s = ucx_->Transfer(lane, ops, absl::FromChrono(deadline), &t->abort);
      if (!s.ok() && !t->abort.load(std::memory_order_acquire)) {
        t->failed_alone.store(true, std::memory_order_release);
        ctx->TryCancel();  // valid before, during and after the call
      }
      return s;
    });
  }

  // Ends the attempt: aborts the transfer if the RPC failed, joins it, and picks the attempt's
  // answer (the transfer's own failure beats the CANCELLED it caused). `*transfer` gets the
  // transfer's status.
  grpc::Status FinishTagged(TaggedTransfer* t, grpc::Status rpc, absl::Status* transfer) {
    if (!rpc.ok()) t->abort.store(true, std::memory_order_release);
    *transfer = t->done.get();
    // An RPC that succeeded keeps its answer: PutData's results stand (the node took every
    // message), and GetDataPartTwoSided checks `*transfer` itself.
    if (!rpc.ok() && t->failed_alone.load(std::memory_order_acquire)) {
      absl::Status s = *transfer;
      // A batch the deadline ended is DEADLINE_EXCEEDED; anything else means the lane's
      // endpoint cannot carry the call: UNAVAILABLE, so CallOnChannel marks the channel broken.
      const absl::StatusCode code = s.code() == absl::StatusCode::kDeadlineExceeded
                                        ? s.code()
                                        : absl::StatusCode::kUnavailable;
      return ToGrpc(absl::Status(code, s.message()));
    }
    return rpc;
  }

  // After the last attempt: a transfer that failed (aborted sends, deadline, dead endpoint)
  // may have retired the lane endpoint, so the next call reconnects. An aborted receive-only
  // batch leaves its endpoint in service.
  void AfterTagged(uint64_t channel, const absl::Status& transfer, bool receives_only) {
    if (transfer.ok() || channel == 0) return;
    if (receives_only && transfer.code() == absl::StatusCode::kCancelled) return;
    MarkBroken(channel);
  }

  absl::Status PutDataPartTwoSided(const Namespace& ns, const std::string& scope,
                                   std::span<const BlockWrite> blocks,
                                   std::pair<size_t, size_t> range, uint32_t lane,
                                   Clock::time_point deadline, const PutOptions& put,
                                   PutResult* result) {
    v1::PutDataRequest req;
    req.set_namespace_id(ns.id);
    req.set_scope(scope);
    req.set_session_id(put.session_id);
    req.set_lane(lane);
    std::vector<transport::TransferOp> sends(range.second - range.first);
    for (size_t i = range.first; i < range.second; ++i) {
      const BlockWrite& w = blocks[i];
      v1::PutBlock* b = req.add_blocks();
      b->set_chain_hash(w.hash.ToBytes());
      b->set_size(w.size);
      b->set_depth(w.depth);
      b->set_importance(w.importance);
      req.add_checksums(BlockChecksum(w.data, w.size));
      // UCX only reads a send's buffer; two-sided ops need no registration.
      transport::TransferOp& op = sends[i - range.first];
      op.kind = transport::TransferOp::Kind::kSend;
      op.local = const_cast<void*>(w.data);
      op.length = w.size;
    }
    v1::PutDataResponse resp;
    uint64_t used_channel = 0;
    absl::Status sent;
    absl::Status s =
        CallOnChannel("PutData", deadline, [&](uint64_t channel, grpc::ClientContext* ctx) {
          used_channel = channel;
          req.set_channel_id(channel);
          req.clear_tags();
          for (transport::TransferOp& op : sends) {
            op.tag = ucx_->NextTag(channel);
            req.add_tags(op.tag);
          }
          TaggedTransfer t;
          StartTagged(&t, lane, sends, deadline, ctx);
          return FinishTagged(&t, stub_->PutData(ctx, req, &resp), &sent);
        });
    AfterTagged(used_channel, sent, /*receives_only=*/false);
    if (!s.ok()) return s;
    // The node answers only after it has taken every message, so its results stand even if
    // the sends' local completion reported trouble (that only retired the endpoint).
    return TakePutReply(resp, range, result);
  }

  absl::Status GetDataPartTwoSided(const Namespace& ns, const std::string& scope,
                                   std::span<const BlockRead> blocks,
                                   const std::vector<Placement>& placed,
                                   std::pair<size_t, size_t> range, uint32_t lane,
                                   Clock::time_point deadline, bool promote, GetResult* result) {
    v1::GetDataRequest req;
    req.set_skip_promotion(!promote);
    req.set_namespace_id(ns.id);
    req.set_scope(scope);
    req.set_lane(lane);
    const size_t n = range.second - range.first;
    std::vector<size_t> received(n, 0);
    std::vector<transport::TransferOp> receives(n);
    for (size_t i = range.first; i < range.second; ++i) {
      const size_t k = i - range.first;
      req.add_chain_hashes(blocks[i].hash.ToBytes());
      // Straight into the caller's buffer: receives need no registration, and the end-to-end
      // checksum below still guards what the caller gets.
      req.add_capacities(placed[i].length);
      transport::TransferOp& op = receives[k];
      op.kind = transport::TransferOp::Kind::kRecv;
      op.local = blocks[i].buffer;
      op.length = placed[i].length;
      op.received = &received[k];
    }
    v1::GetDataResponse resp;
    uint64_t used_channel = 0;
    absl::Status got;
    absl::Status s =
        CallOnChannel("GetData", deadline, [&](uint64_t channel, grpc::ClientContext* ctx) {
          used_channel = channel;
          req.set_channel_id(channel);
          req.clear_tags();
          std::fill(received.begin(), received.end(), 0);
          for (transport::TransferOp& op : receives) {
            op.tag = ucx_->NextTag(channel);
            req.add_tags(op.tag);
          }
          // Posted before the RPC; a message that still arrives first waits in UCX's
          // unexpected queue until its receive is posted.
          TaggedTransfer t;
          StartTagged(&t, lane, receives, deadline, ctx);
          return FinishTagged(&t, stub_->GetData(ctx, req, &resp), &got);
        });
    AfterTagged(used_channel, got, /*receives_only=*/true);
    if (!s.ok()) return s;
    if (!got.ok()) {
      // The node sent every message, but they did not all arrive in time (or the worker failed):
      // the buffers' contents are undefined.
      return absl::Status(got.code(), absl::StrCat(Where("GetData"), ": receiving blocks on lane ",
                                                   lane, ": ", got.message()));
    }
    if (resp.blocks_size() != static_cast<int>(n)) {
      return absl::InternalError(Where("GetData") + ": reply has the wrong number of blocks");
    }
    std::vector<size_t> retry = AcceptGetReply(resp, blocks, range, result, [&](size_t i) {
      return Landing{blocks[i].buffer, received[i - range.first], /*exact=*/true};
    });
    if (!retry.empty()) RetryInline(ns, scope, blocks, retry, deadline, promote, result);
    return absl::OkStatus();
  }

  // Where a block's bytes arrived over UCX: `length` bytes at `bytes` (exact: the message's
  // length, which must be the block's size; else a capacity the block must fit).
  struct Landing {
    const void* bytes;
    uint64_t length;
    bool exact;
  };

  // Takes a GetData reply: per block its status, and for OK blocks the end-to-end check of
  // the bytes where they arrived (or inline in the reply, for blocks the node could not stage),
  // copying them into the caller's buffer when they arrived elsewhere. Returns the blocks that
  // failed the check (to fetch again inline).
  std::vector<size_t> AcceptGetReply(const v1::GetDataResponse& resp,
                                     std::span<const BlockRead> blocks,
                                     std::pair<size_t, size_t> range, GetResult* result,
                                     const std::function<Landing(size_t)>& landed) {
    std::vector<size_t> retry;
    for (size_t i = range.first; i < range.second; ++i) {
      const v1::GetBlock& b = resp.blocks(static_cast<int>(i - range.first));
      absl::Status st = FromBlockStatus(b.status());
      if (st.ok() && b.size() > blocks[i].capacity) {
        st = absl::OutOfRangeError(
            absl::StrCat("block is ", b.size(), " bytes, buffer holds ", blocks[i].capacity));
      }
      if (st.ok()) {
        const bool came_inline = !b.payload().empty();
        const Landing at =
            came_inline ? Landing{b.payload().data(), b.payload().size(), true} : landed(i);
        const bool intact = (at.exact ? at.length == b.size() : b.size() <= at.length) &&
                            BlockChecksum(at.bytes, b.size()) == b.checksum();
        if (!intact) {
          retry.push_back(i);
          continue;
        }
        if (at.bytes != blocks[i].buffer) std::memcpy(blocks[i].buffer, at.bytes, b.size());
        result->sizes[i] = b.size();
      }
      result->blocks[i] = std::move(st);
    }
    return retry;
  }

  // Fetches blocks whose data-channel bytes failed their checksum once more, inline (BeginGet
  // with payloads); a block that fails again is DATA_LOSS.
  void RetryInline(const Namespace& ns, const std::string& scope, std::span<const BlockRead> blocks,
                   const std::vector<size_t>& which, Clock::time_point deadline, bool promote,
                   GetResult* result) {
    std::vector<BlockRead> reads;
    for (size_t i : which) reads.push_back(blocks[i]);
    GetResult again;
    again.blocks.resize(reads.size());
    again.sizes.resize(reads.size());
    auto parts = SplitBatch(reads.size(), max_keys_, max_inline_, [&](size_t k) {
      return std::min<uint64_t>(reads[k].capacity, max_block_);
    });
    for (const auto& part : parts) {
      absl::Status call = GetPart(ns, scope, reads, part, deadline, promote, &again);
      for (size_t k = part.first; !call.ok() && k < part.second; ++k) again.blocks[k] = call;
    }
    for (size_t k = 0; k < which.size(); ++k) {
      const size_t i = which[k];
      const absl::Status& st = again.blocks[k];
      if (st.ok()) {
        result->sizes[i] = again.sizes[k];
        result->blocks[i] = absl::OkStatus();
      } else {
        result->sizes[i] = 0;
        result->blocks[i] = absl::DataLossError(absl::StrCat(
            "bytes failed their checksum after the UCX transfer; inline retry: ", st.ToString()));
      }
    }
  }

  const ClientOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::StoreService::Stub> stub_;
  uint32_t max_keys_ = 4096;
  uint64_t max_inline_ = 64ull << 20;
  uint64_t max_block_ = 16ull << 20;
  absl::Mutex quiet_mu_;
  int quiet_calls_ ABSL_GUARDED_BY(quiet_mu_) = 0;

  // The UCX data plane; null: payloads go inline. Set in Init, fixed afterwards.
  std::unique_ptr<ClientDataPlane> ucx_;
  std::string ucx_tls_;        // the node's, for DataPlaneDescription()
  bool two_sided_ = false;     // tagged messages instead of RMA (TCP); set in Init
  std::string inline_reason_;  // why kAuto runs inline although the node offers UCX
  std::atomic<uint32_t> next_lane_{0};
  mutable absl::Mutex chan_mu_;
  uint64_t channel_id_ ABSL_GUARDED_BY(chan_mu_) = 0;  // 0: none open (or marked broken)
  bool connecting_ ABSL_GUARDED_BY(chan_mu_) = false;  // one ConnectData at a time
  std::string transport_ ABSL_GUARDED_BY(chan_mu_);    // of the last channel opened
};

}  // namespace

std::string_view TierName(Tier tier) {
  switch (tier) {
    case Tier::kHot:
      return "hot";
    case Tier::kWarm:
      return "warm";
    case Tier::kCool:
      return "cool";
    case Tier::kCold:
      return "cold";
    case Tier::kUnknown:
      break;
  }
  return "unknown";
}

absl::StatusOr<std::vector<ChainHash>> Namespace::HashTokens(std::span<const uint32_t> tokens,
                                                             const ExtraKeys& extra) const {
  return HashPrefix(spec.hash_algorithm, tokens, spec.block_tokens, extra);
}

absl::StatusOr<std::unique_ptr<StoreClient>> StoreClient::Connect(const ClientOptions& options) {
  if (options.address.empty()) return absl::InvalidArgumentError("address: empty");
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(1 << 30);
  args.SetMaxSendMessageSize(1 << 30);
  // Reconnect quickly after a node restarts instead of backing off for up to two minutes.
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  auto channel =
      grpc::CreateCustomChannel(options.address, grpc::InsecureChannelCredentials(), args);
  auto client = std::make_unique<GrpcStoreClient>(options, std::move(channel));
  if (absl::Status s = client->Init(); !s.ok()) return s;
  return client;
}

absl::StatusOr<LookupResult> StoreClient::LookupTokens(const Namespace& ns, std::string_view scope,
                                                       std::span<const uint32_t> tokens,
                                                       const CallOptions& call) {
  absl::StatusOr<std::vector<ChainHash>> hashes = ns.HashTokens(tokens);
  if (!hashes.ok()) return hashes.status();
  return Lookup(ns, scope, *hashes, call);
}

std::future<absl::StatusOr<LookupResult>> StoreClient::LookupAsync(const Namespace& ns,
                                                                   std::string scope,
                                                                   std::vector<ChainHash> hashes,
                                                                   CallOptions call) {
  return std::async(std::launch::async,
                    [this, ns, scope = std::move(scope), hashes = std::move(hashes), call] {
                      return Lookup(ns, scope, hashes, call);
                    });
}

std::future<absl::StatusOr<PutResult>> StoreClient::PutAsync(const Namespace& ns, std::string scope,
                                                             std::vector<BlockWrite> blocks,
                                                             CallOptions call) {
  return std::async(std::launch::async,
                    [this, ns, scope = std::move(scope), blocks = std::move(blocks), call] {
                      return Put(ns, scope, blocks, call);
                    });
}

std::future<absl::StatusOr<GetResult>> StoreClient::GetAsync(const Namespace& ns, std::string scope,
                                                             std::vector<BlockRead> blocks,
                                                             CallOptions call) {
  return std::async(std::launch::async,
                    [this, ns, scope = std::move(scope), blocks = std::move(blocks), call] {
                      return Get(ns, scope, blocks, call, {});
                    });
}

}  // namespace strata::client
