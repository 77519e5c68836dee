#include "strata/client/store_client.h"

#include <algorithm>
#include <chrono>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "grpcpp/grpcpp.h"
#include "strata/common/checksum.h"
#include "strata/proto/status_convert.h"
#include "strata/v1/store.grpc.pb.h"

namespace strata::client {
namespace {

using proto::FromBlockStatus;
using proto::FromGrpc;

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

class GrpcStoreClient final : public StoreClient {
 public:
  GrpcStoreClient(ClientOptions options, std::shared_ptr<grpc::Channel> channel)
      : options_(std::move(options)),
        channel_(std::move(channel)),
        stub_(v1::StoreService::NewStub(channel_)) {}

  ~GrpcStoreClient() override {
    absl::MutexLock lock(&quiet_mu_);
    quiet_mu_.Await(absl::Condition(
        +[](int* n) { return *n == 0; }, &quiet_calls_));
  }

  absl::Status Init() {
    absl::StatusOr<NodeStats> s = Stats({});
    if (!s.ok()) return s.status();
    max_keys_ = std::max<uint32_t>(1, s->max_keys_per_call);
    max_inline_ = std::max<uint64_t>(1, s->max_inline_bytes);
    max_block_ = s->max_block_bytes;
    return absl::OkStatus();
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
    auto parts =
        SplitBatch(blocks.size(), max_keys_, max_inline_, [&](size_t i) { return blocks[i].size; });
    std::vector<std::future<absl::Status>> pending;
    for (size_t p = 1; p < parts.size(); ++p) {
      pending.push_back(std::async(std::launch::async, [&, p] {
        return PutPart(ns, sc, blocks, parts[p], deadline, put, &result);
      }));
    }
    absl::Status first = PutPart(ns, sc, blocks, parts[0], deadline, put, &result);
    for (auto& f : pending) {
      absl::Status s = f.get();
      if (first.ok()) first = s;
    }
    if (!first.ok()) return first;
    for (const absl::Status& s : result.blocks) {
      if (s.ok()) ++result.stored;
      if (s.code() == absl::StatusCode::kAlreadyExists) ++result.already_present;
    }
    return result;
  }

  absl::StatusOr<GetResult> Get(const Namespace& ns, std::string_view scope,
                                std::span<const BlockRead> blocks,
                                const CallOptions& call) override {
    GetResult result;
    result.blocks.resize(blocks.size());
    result.sizes.resize(blocks.size());
    if (blocks.empty()) return result;
    auto deadline = Deadline(call);
    std::string sc = Scope(scope);
    auto parts = SplitBatch(blocks.size(), max_keys_, max_inline_, [&](size_t i) {
      return std::min<uint64_t>(blocks[i].capacity, max_block_);
    });
    std::vector<std::future<absl::Status>> pending;
    for (size_t p = 1; p < parts.size(); ++p) {
      pending.push_back(std::async(std::launch::async, [&, p] {
        return GetPart(ns, sc, blocks, parts[p], deadline, &result);
      }));
    }
    absl::Status first = GetPart(ns, sc, blocks, parts[0], deadline, &result);
    for (auto& f : pending) {
      absl::Status s = f.get();
      if (first.ok()) first = s;
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
                       Clock::time_point deadline, GetResult* result) {
    v1::BeginGetRequest req;
    req.set_namespace_id(ns.id);
    req.set_scope(scope);
    req.set_include_payload(true);
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
  void CallQuietly(Start start, Req req) {
    struct Call {
      grpc::ClientContext ctx;
      Req req;
      Resp resp;
    };
    auto* c = new Call;
    c->req = std::move(req);
    c->ctx.set_deadline(Clock::now() + std::chrono::seconds(2));
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

  const ClientOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::StoreService::Stub> stub_;
  uint32_t max_keys_ = 4096;
  uint64_t max_inline_ = 64ull << 20;
  uint64_t max_block_ = 16ull << 20;
  absl::Mutex quiet_mu_;
  int quiet_calls_ ABSL_GUARDED_BY(quiet_mu_) = 0;
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
                      return Get(ns, scope, blocks, call);
                    });
}

}  // namespace strata::client
