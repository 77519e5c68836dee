#include "store_service.h"

#include <chrono>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "spdlog/spdlog.h"
#include "strata/common/byte_size.h"
#include "strata/common/chain_hash.h"
#include "strata/common/checksum.h"
#include "strata/proto/status_convert.h"

namespace strata::storenode {
namespace {

using proto::ToBlockStatus;
using proto::ToGrpc;

// Times a call and records it in the metrics whatever path it returns by.
class CallScope {
 public:
  CallScope(NodeMetrics* metrics, Op op)
      : metrics_(metrics), op_(op), start_(std::chrono::steady_clock::now()) {}
  grpc::Status Done(const absl::Status& s) {
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    metrics_->Observe(op_, secs, s);
    if (!s.ok() && s.code() != absl::StatusCode::kNotFound) {
      spdlog::debug("{} failed: {}", OpName(op_), s.ToString());
    }
    return ToGrpc(s);
  }

 private:
  NodeMetrics* metrics_;
  Op op_;
  std::chrono::steady_clock::time_point start_;
};

v1::Tier TierProto(int tier) {
  return v1::Tier_IsValid(tier) ? static_cast<v1::Tier>(tier) : v1::TIER_UNSPECIFIED;
}

void AddTier(v1::StatsResponse* resp, v1::Tier tier, uint64_t blocks, uint64_t bytes,
             uint64_t capacity, uint64_t used) {
  v1::TierStats* t = resp->add_tiers();
  t->set_tier(tier);
  t->set_blocks(blocks);
  t->set_bytes(bytes);
  t->set_capacity_bytes(capacity);
  t->set_used_bytes(used);
}

}  // namespace

StoreServiceImpl::StoreServiceImpl(const NodeConfig& config, TieredStore* store,
                                   DataPlane* data_plane, NodeMetrics* metrics)
    : config_(config),
      directory_(config.max_directory_entries),
      store_(store),
      data_plane_(data_plane),
      metrics_(metrics) {}

absl::Status StoreServiceImpl::ValidateKeys(
    uint64_t namespace_id, const std::string& scope_in,
    const google::protobuf::RepeatedPtrField<std::string>& raw, const char* field,
    std::vector<ChainHash>* hashes, std::string* scope, NamespaceSpec* spec) {
  absl::StatusOr<NamespaceSpec> ns = store_->GetNamespace(namespace_id);
  if (!ns.ok()) return absl::InvalidArgumentError(ns.status().message());
  if (spec != nullptr) *spec = *ns;
  *scope = scope_in.empty() ? std::string(kDefaultScope) : scope_in;
  if (absl::Status s = ValidateScope(*scope, "scope"); !s.ok()) return s;
  if (raw.empty()) return absl::InvalidArgumentError(absl::StrCat(field, ": empty"));
  if (static_cast<uint64_t>(raw.size()) > config_.max_keys_per_call) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, ": ", raw.size(), " keys exceed max_keys_per_call ", config_.max_keys_per_call));
  }
  hashes->reserve(raw.size());
  for (int i = 0; i < raw.size(); ++i) {
    // The field name is built only for an error: this loop runs for every key of every call.
    absl::StatusOr<ChainHash> h =
        raw[i].size() == kChainHashBytes
            ? ChainHash::FromBytes(raw[i], field)
            : ChainHash::FromBytes(raw[i], absl::StrCat(field, "[", i, "]"));
    if (!h.ok()) return h.status();
    hashes->push_back(*h);
  }
  return absl::OkStatus();
}

absl::Status StoreServiceImpl::ValidateTtl(uint32_t ttl_ms, const char* field) const {
  if (ttl_ms > config_.max_lease_ms) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": ", ttl_ms, " ms exceeds max_lease ", config_.max_lease_ms, " ms"));
  }
  return absl::OkStatus();
}

absl::Status StoreServiceImpl::CheckEpoch(uint64_t epoch) const {
  const cluster::Membership* m = membership_.load();
  if (epoch == 0 || m == nullptr) return absl::OkStatus();
  const uint64_t current = m->epoch();
  if (epoch < current) {
    return absl::FailedPreconditionError(
        absl::StrCat("epoch: request routed by member-set epoch ", epoch, ", node ",
                     config_.node_id, " is at ", current, "; refresh the member set and retry"));
  }
  return absl::OkStatus();
}

grpc::Status StoreServiceImpl::RegisterNamespace(grpc::ServerContext*,
                                                 const v1::RegisterNamespaceRequest* req,
                                                 v1::RegisterNamespaceResponse* resp) {
  CallScope call(metrics_, Op::kRegisterNamespace);
  const v1::NamespaceSpec& in = req->spec();
  absl::StatusOr<ChainHashAlgorithm> algo = ParseChainHashAlgorithm(in.hash_algorithm());
  if (!algo.ok()) {
    return call.Done(
        absl::InvalidArgumentError(absl::StrCat("spec.hash_algorithm: ", algo.status().message())));
  }
  NamespaceSpec spec{in.model_id(),      in.dtype(),   in.layout(), in.block_tokens(),
                     in.tp_rank(),       in.tp_size(), *algo,       in.block_bytes(),
                     in.offload_quant(), in.head_dim()};
  absl::StatusOr<NamespaceId> id = store_->RegisterNamespace(spec);
  if (!id.ok()) return call.Done(id.status());
  resp->set_namespace_id(*id);
  spdlog::info("namespace 0x{:016x} registered: model={} dtype={} block_tokens={} tp={}/{}", *id,
               spec.model_id, spec.dtype, spec.block_tokens, spec.tp_rank, spec.tp_size);
  return call.Done(absl::OkStatus());
}

grpc::Status StoreServiceImpl::Lookup(grpc::ServerContext*, const v1::LookupRequest* req,
                                      v1::LookupResponse* resp) {
  CallScope call(metrics_, Op::kLookup);
  if (absl::Status s = CheckEpoch(req->epoch()); !s.ok()) return call.Done(s);
  std::vector<ChainHash> hashes;
  std::string scope;
  absl::Status s = ValidateKeys(req->namespace_id(), req->scope(), req->chain_hashes(),
                                "chain_hashes", &hashes, &scope, nullptr);
  if (!s.ok()) return call.Done(s);
  const bool hot = directory_.entries() > 0;
  if (!req->each_block() && !hot) {
    std::vector<WarmTier::BlockMeta> found = store_->Lookup(req->namespace_id(), scope, hashes);
    resp->set_matched_blocks(static_cast<uint32_t>(found.size()));
    for (const WarmTier::BlockMeta& m : found) {
      v1::BlockInfo* b = resp->add_blocks();
      b->set_tier(TierProto(m.tier));
      b->set_size(m.size);
    }
    return call.Done(absl::OkStatus());
  }
  // Block by block: each_block (a node's share of a prefix, every block answered) or a
  // prefix that may continue in agents' GPU memory (the directory).
  std::vector<std::optional<WarmTier::BlockMeta>> each =
      store_->LookupEach(req->namespace_id(), scope, hashes);
  uint32_t present = 0;
  for (size_t i = 0; i < hashes.size(); ++i) {
    std::vector<Directory::Location> peers;
    if (hot) peers = directory_.Find({req->namespace_id(), scope, hashes[i]});
    if (!each[i].has_value() && peers.empty() && !req->each_block()) break;  // prefix ends
    v1::BlockInfo* b = resp->add_blocks();
    if (each[i].has_value()) {
      b->set_tier(TierProto(each[i]->tier));
      b->set_size(each[i]->size);
    } else if (!peers.empty()) {
      b->set_tier(v1::TIER_HOT);
      b->set_size(peers[0].size);
    }
    for (const Directory::Location& p : peers) b->add_hot_locations(p.address);
    if (each[i].has_value() || !peers.empty()) ++present;
  }
  resp->set_matched_blocks(present);
  return call.Done(absl::OkStatus());
}

grpc::Status StoreServiceImpl::Publish(grpc::ServerContext*, const v1::PublishRequest* req,
                                       v1::PublishResponse* resp) {
  CallScope call(metrics_, Op::kPublish);
  if (absl::Status s = CheckEpoch(req->epoch()); !s.ok()) return call.Done(s);
  std::vector<ChainHash> hashes;
  std::string scope;
  absl::Status s = ValidateKeys(req->namespace_id(), req->scope(), req->chain_hashes(),
                                "chain_hashes", &hashes, &scope, nullptr);
  if (!s.ok()) return call.Done(s);
  if (req->location().empty() || req->location().size() > 256) {
    return call.Done(absl::InvalidArgumentError(
        absl::StrCat("location: ", req->location().size(), " bytes, want 1..256")));
  }
  if (req->sizes_size() != 0 && req->sizes_size() != req->chain_hashes_size()) {
    return call.Done(absl::InvalidArgumentError(absl::StrCat(
        "sizes: ", req->sizes_size(), " entries for ", req->chain_hashes_size(), " hashes")));
  }
  if (absl::Status t = ValidateTtl(req->ttl_ms(), "ttl_ms"); !t.ok()) return call.Done(t);
  std::vector<uint64_t> sizes(req->sizes().begin(), req->sizes().end());
  std::vector<absl::Status> results =
      directory_.Publish(req->namespace_id(), scope, hashes, sizes, req->location(),
                         absl::Milliseconds(req->ttl_ms()));
  for (const absl::Status& st : results) ToBlockStatus(st, resp->add_results());
  return call.Done(absl::OkStatus());
}

grpc::Status StoreServiceImpl::BeginPut(grpc::ServerContext*, const v1::BeginPutRequest* req,
                                        v1::BeginPutResponse* resp) {
  CallScope call(metrics_, Op::kBeginPut);
  if (absl::Status s = CheckEpoch(req->epoch()); !s.ok()) return call.Done(s);
  if (absl::Status s = ValidateTtl(req->ttl_ms(), "ttl_ms"); !s.ok()) return call.Done(s);
  std::vector<WarmTier::PutBlock> blocks;
  std::string scope;
  uint64_t total = 0;
  if (absl::Status s = ParsePutBlocks(req->namespace_id(), req->scope(), req->blocks(),
                                      req->session_id(), &blocks, &scope, &total);
      !s.ok()) {
    return call.Done(s);
  }
  if (total > config_.max_inline_bytes) {
    return call.Done(absl::ResourceExhaustedError(
        absl::StrCat("blocks: ", FormatByteSize(total), " in one call exceed max_inline_bytes ",
                     FormatByteSize(config_.max_inline_bytes), "; split the batch")));
  }
  uint64_t ttl = req->ttl_ms() != 0 ? req->ttl_ms() : config_.reservation_ttl_ms;
  WarmTier::ReserveResult r = store_->BeginPut(req->namespace_id(), scope, blocks, ttl);
  resp->set_reservation_id(r.reservation_id);
  resp->set_expires_in_ms(r.reservation_id != 0 ? ttl : 0);
  bool any_full = false;
  for (const absl::Status& st : r.status) {
    ToBlockStatus(st, resp->add_slots()->mutable_status());
    any_full |= st.code() == absl::StatusCode::kResourceExhausted;
  }
  if (any_full) spdlog::warn("warm tier full: put of {} blocks partly refused", blocks.size());
  return call.Done(absl::OkStatus());
}

absl::Status StoreServiceImpl::ParsePutBlocks(
    uint64_t namespace_id, const std::string& scope_in,
    const google::protobuf::RepeatedPtrField<v1::PutBlock>& raw, const std::string& session_id,
    std::vector<WarmTier::PutBlock>* blocks, std::string* scope, uint64_t* total) {
  absl::StatusOr<NamespaceSpec> ns = store_->GetNamespace(namespace_id);
  if (!ns.ok()) return absl::InvalidArgumentError(ns.status().message());
  *scope = scope_in.empty() ? std::string(kDefaultScope) : scope_in;
  if (absl::Status s = ValidateScope(*scope, "scope"); !s.ok()) return s;
  if (raw.empty()) return absl::InvalidArgumentError("blocks: empty");
  if (static_cast<uint64_t>(raw.size()) > config_.max_keys_per_call) {
    return absl::InvalidArgumentError(absl::StrCat(
        "blocks: ", raw.size(), " blocks exceed max_keys_per_call ", config_.max_keys_per_call));
  }
  if (session_id.size() > 128) {
    return absl::InvalidArgumentError(
        absl::StrCat("session_id: ", session_id.size(), " bytes, want at most 128"));
  }
  uint64_t limit = std::min(ns->block_bytes, config_.max_block_bytes);
  blocks->reserve(raw.size());
  *total = 0;
  for (int i = 0; i < raw.size(); ++i) {
    const v1::PutBlock& b = raw[i];
    absl::StatusOr<ChainHash> h =
        ChainHash::FromBytes(b.chain_hash(), absl::StrCat("blocks[", i, "].chain_hash"));
    if (!h.ok()) return h.status();
    if (b.size() == 0 || b.size() > limit) {
      return absl::InvalidArgumentError(absl::StrCat(
          "blocks[", i, "].size: ", b.size(), " bytes, want 1..", limit,
          b.size() > config_.max_block_bytes ? " (max_block_bytes)" : " (namespace block_bytes)"));
    }
    *total += b.size();
    blocks->push_back({*h, b.size(), b.depth(), b.importance(), session_id});
  }
  return absl::OkStatus();
}

grpc::Status StoreServiceImpl::CommitPut(grpc::ServerContext*, const v1::CommitPutRequest* req,
                                         v1::CommitPutResponse* resp) {
  CallScope call(metrics_, Op::kCommitPut);
  if (static_cast<uint64_t>(req->blocks_size()) > config_.max_keys_per_call) {
    return call.Done(absl::InvalidArgumentError(absl::StrCat(
        "blocks: ", req->blocks_size(), " exceed max_keys_per_call ", config_.max_keys_per_call)));
  }
  std::vector<WarmTier::CommitBlock> blocks;
  blocks.reserve(req->blocks_size());
  uint64_t bytes = 0;
  for (int i = 0; i < req->blocks_size(); ++i) {
    const v1::CommitBlock& b = req->blocks(i);
    absl::StatusOr<ChainHash> h =
        ChainHash::FromBytes(b.chain_hash(), absl::StrCat("blocks[", i, "].chain_hash"));
    if (!h.ok()) return call.Done(h.status());
    const auto* data = reinterpret_cast<const uint8_t*>(b.payload().data());
    blocks.push_back({*h, b.checksum(), {data, b.payload().size()}});
    bytes += b.payload().size();
  }
  absl::StatusOr<std::vector<absl::Status>> r = store_->CommitPut(req->reservation_id(), blocks);
  if (!r.ok()) return call.Done(r.status());
  metrics_->AddInlineBytes(true, bytes);
  for (const absl::Status& st : *r) ToBlockStatus(st, resp->add_results());
  return call.Done(absl::OkStatus());
}

grpc::Status StoreServiceImpl::AbortPut(grpc::ServerContext*, const v1::AbortPutRequest* req,
                                        v1::AbortPutResponse*) {
  CallScope call(metrics_, Op::kAbortPut);
  return call.Done(store_->AbortPut(req->reservation_id()));
}

grpc::Status StoreServiceImpl::BeginGet(grpc::ServerContext*, const v1::BeginGetRequest* req,
                                        v1::BeginGetResponse* resp) {
  CallScope call(metrics_, Op::kBeginGet);
  if (absl::Status s = CheckEpoch(req->epoch()); !s.ok()) return call.Done(s);
  std::vector<ChainHash> hashes;
  std::string scope;
  absl::Status s = ValidateKeys(req->namespace_id(), req->scope(), req->chain_hashes(),
                                "chain_hashes", &hashes, &scope, nullptr);
  if (!s.ok()) return call.Done(s);
  if (s = ValidateTtl(req->lease_ms(), "lease_ms"); !s.ok()) return call.Done(s);
  uint64_t ttl = req->lease_ms() != 0 ? req->lease_ms() : config_.lease_ttl_ms;
  for (size_t i = 0; i < hashes.size(); ++i) resp->add_blocks();
  WarmTier::CopySink sink;
  if (req->include_payload()) {
    sink = [resp](size_t i, uint64_t size) {
      std::string* p = resp->mutable_blocks(static_cast<int>(i))->mutable_payload();
      p->resize(size);
      return reinterpret_cast<uint8_t*>(p->data());
    };
  }
  WarmTier::GetResult r = store_->BeginGet(req->namespace_id(), scope, hashes, ttl, sink,
                                           config_.max_inline_bytes, !req->skip_promotion());
  resp->set_lease_id(r.lease_id);
  resp->set_expires_in_ms(r.lease_id != 0 ? ttl : 0);
  uint64_t bytes = 0;
  for (size_t i = 0; i < hashes.size(); ++i) {
    v1::GetBlock* b = resp->mutable_blocks(static_cast<int>(i));
    ToBlockStatus(r.status[i], b->mutable_status());
    if (!r.status[i].ok()) {
      b->clear_payload();  // never hand out bytes that failed verification
      if (r.status[i].code() == absl::StatusCode::kDataLoss) {
        spdlog::error("DATA_LOSS: block {} of namespace 0x{:016x} failed its checksum; dropped",
                      hashes[i].ToHex(), req->namespace_id());
      }
      continue;
    }
    b->set_tier(TierProto(r.blocks[i].tier));
    b->set_size(r.blocks[i].size);
    b->set_checksum(r.blocks[i].checksum);
    bytes += b->payload().size();
  }
  metrics_->AddInlineBytes(false, bytes);
  return call.Done(absl::OkStatus());
}

grpc::Status StoreServiceImpl::EndGet(grpc::ServerContext*, const v1::EndGetRequest* req,
                                      v1::EndGetResponse*) {
  CallScope call(metrics_, Op::kEndGet);
  return call.Done(store_->EndGet(req->lease_id()));
}

grpc::Status StoreServiceImpl::Delete(grpc::ServerContext*, const v1::DeleteRequest* req,
                                      v1::DeleteResponse* resp) {
  CallScope call(metrics_, Op::kDelete);
  if (absl::Status s = CheckEpoch(req->epoch()); !s.ok()) return call.Done(s);
  std::vector<ChainHash> hashes;
  std::string scope;
  absl::Status s = ValidateKeys(req->namespace_id(), req->scope(), req->chain_hashes(),
                                "chain_hashes", &hashes, &scope, nullptr);
  if (!s.ok()) return call.Done(s);
  resp->set_deleted(static_cast<uint32_t>(store_->Delete(req->namespace_id(), scope, hashes)));
  return call.Done(absl::OkStatus());
}

grpc::Status StoreServiceImpl::Stats(grpc::ServerContext*, const v1::StatsRequest*,
                                     v1::StatsResponse* resp) {
  CallScope call(metrics_, Op::kStats);
  TieredStats ts = store_->Stats();
  const WarmTierStats& s = ts.warm;
  resp->set_node_id(config_.node_id);
  resp->set_zone(config_.zone);
  if (const cluster::Membership* m = membership_.load(); m != nullptr) {
    std::shared_ptr<const cluster::MemberSet> set = m->Current();
    resp->set_cluster_mode(std::string(cluster::MembershipModeName(m->mode())));
    resp->set_epoch(set->epoch);
    resp->set_members(static_cast<uint32_t>(set->members.size()));
    resp->set_etcd_connected(m->mode() == cluster::MembershipMode::kEtcd && m->connected());
  }
  if (const Rebalancer* r = rebalancer_.load(); r != nullptr) {
    RebalanceProgress p = r->progress();
    resp->set_rebalance_passes(p.passes);
    resp->set_rebalance_pending(p.pending);
    resp->set_rebalance_copied(p.copied);
    resp->set_rebalance_dropped(p.dropped);
    resp->set_under_replicated(p.under_replicated);
  }
  AddTier(resp, v1::TIER_WARM, s.blocks, s.payload_bytes, s.capacity_bytes, s.used_bytes);
  if (ts.cool) {
    AddTier(resp, v1::TIER_COOL, ts.cool->blocks, ts.cool->payload_bytes, ts.cool->capacity_bytes,
            ts.cool->stored_bytes);
  }
  if (ts.cold) {
    AddTier(resp, v1::TIER_COLD, ts.cold->blocks, ts.cold->payload_bytes, ts.cold->capacity_bytes,
            ts.cold->stored_bytes);
  }
  resp->set_hits(s.hits + ts.cool_hits + ts.cold_hits);
  resp->set_misses(s.misses);
  resp->set_evictions(s.evictions + ts.disk_evictions);
  resp->set_leases(s.leases);
  resp->set_reservations(s.reservations);
  resp->set_namespaces(s.namespaces);
  resp->set_data_loss(s.data_loss + (ts.cool ? ts.cool->data_loss : 0) +
                      (ts.cold ? ts.cold->data_loss : 0));
  resp->set_demotions(s.demotions + ts.cool_demotions);
  resp->set_promotions(ts.promotions);
  resp->set_prefetched(ts.prefetched);
  resp->set_prefetch_used(s.prefetch_used);
  resp->set_prefetch_wasted(s.prefetch_wasted);
  resp->set_max_keys_per_call(static_cast<uint32_t>(config_.max_keys_per_call));
  resp->set_max_block_bytes(config_.max_block_bytes);
  resp->set_max_inline_bytes(config_.max_inline_bytes);
  if (data_plane_ != nullptr) {
    resp->set_ucx_tls(data_plane_->tls());
    resp->set_ucx_peer_failure_handling(data_plane_->peer_failure_handling());
    resp->set_ucx_lanes(data_plane_->lanes());
    resp->set_data_channels(data_plane_->channels());
  }
  return call.Done(absl::OkStatus());
}

namespace {
absl::Status ValidateSession(const std::string& session) {
  if (session.empty() || session.size() > 128) {
    return absl::InvalidArgumentError(
        absl::StrCat("session_id: ", session.size(), " bytes, want 1..128"));
  }
  return absl::OkStatus();
}
}  // namespace

grpc::Status StoreServiceImpl::PauseSession(grpc::ServerContext*,
                                            const v1::PauseSessionRequest* req,
                                            v1::PauseSessionResponse* resp) {
  CallScope call(metrics_, Op::kPauseSession);
  if (absl::Status s = ValidateSession(req->session_id()); !s.ok()) return call.Done(s);
  if (req->tier() != v1::TIER_UNSPECIFIED && req->tier() != v1::TIER_COOL &&
      req->tier() != v1::TIER_COLD) {
    return call.Done(absl::InvalidArgumentError("tier: want TIER_COOL or TIER_COLD"));
  }
  absl::StatusOr<uint64_t> n =
      store_->PauseSession(req->session_id(), req->tier() == v1::TIER_COLD);
  if (!n.ok()) return call.Done(n.status());
  resp->set_moved(static_cast<uint32_t>(*n));
  return call.Done(absl::OkStatus());
}

grpc::Status StoreServiceImpl::ResumeSession(grpc::ServerContext*,
                                             const v1::ResumeSessionRequest* req,
                                             v1::ResumeSessionResponse* resp) {
  CallScope call(metrics_, Op::kResumeSession);
  if (absl::Status s = ValidateSession(req->session_id()); !s.ok()) return call.Done(s);
  absl::StatusOr<uint64_t> n = store_->ResumeSession(req->session_id());
  if (!n.ok()) return call.Done(n.status());
  resp->set_promoted(static_cast<uint32_t>(*n));
  return call.Done(absl::OkStatus());
}

grpc::Status StoreServiceImpl::Prefetch(grpc::ServerContext*, const v1::PrefetchRequest* req,
                                        v1::PrefetchResponse* resp) {
  CallScope call(metrics_, Op::kPrefetch);
  std::vector<ChainHash> hashes;
  std::string scope;
  if (req->session_id().empty() || req->chain_hashes_size() > 0) {
    absl::Status s = ValidateKeys(req->namespace_id(), req->scope(), req->chain_hashes(),
                                  "chain_hashes", &hashes, &scope, nullptr);
    if (!s.ok()) return call.Done(s);
  }
  if (!req->session_id().empty()) {
    if (absl::Status s = ValidateSession(req->session_id()); !s.ok()) return call.Done(s);
  }
  resp->set_scheduled(static_cast<uint32_t>(
      store_->Prefetch(req->namespace_id(), scope, hashes, req->session_id())));
  return call.Done(absl::OkStatus());
}

grpc::Status StoreServiceImpl::InjectFault(grpc::ServerContext*, const v1::InjectFaultRequest* req,
                                           v1::InjectFaultResponse*) {
  CallScope call(metrics_, Op::kInjectFault);
  if (!config_.debug_fault_injection) {
    return call.Done(
        absl::FailedPreconditionError("InjectFault: node runs without --debug-fault-injection"));
  }
  absl::StatusOr<ChainHash> h = ChainHash::FromBytes(req->chain_hash(), "chain_hash");
  if (!h.ok()) return call.Done(h.status());
  std::string scope = req->scope().empty() ? std::string(kDefaultScope) : req->scope();
  absl::Status s =
      store_->CorruptForTest(BlockKey{req->namespace_id(), scope, *h}, req->flip_byte_offset());
  if (s.ok())
    spdlog::warn("fault injected: flipped byte {} of {}", req->flip_byte_offset(), h->ToHex());
  return call.Done(s);
}

// ---------------------------------------------------------------------------------------
// UCX data plane.

namespace {

absl::Status NoDataPlane() {
  return absl::FailedPreconditionError(
      "this node has no UCX data plane (ucx_tls is empty): send payloads inline");
}

// Checks one RemoteBuffer against the request's rkeys.
absl::Status CheckRemote(const v1::RemoteBuffer& r, int rkeys, const std::string& field) {
  if (r.rkey_index() >= static_cast<uint32_t>(rkeys)) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ".rkey_index: ", r.rkey_index(), ", the request has ", rkeys));
  }
  if (r.addr() == 0 || r.addr() + r.length() < r.addr()) {
    return absl::InvalidArgumentError(absl::StrCat(field, ": null or wrapping address range"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Time StoreServiceImpl::TransferDeadline(const grpc::ServerContext* ctx) const {
  absl::Time client = absl::FromChrono(ctx->deadline());
  absl::Time cap = absl::Now() + absl::Milliseconds(config_.max_lease_ms);
  return std::min(client, cap);
}

grpc::Status StoreServiceImpl::ConnectData(grpc::ServerContext*, const v1::ConnectDataRequest* req,
                                           v1::ConnectDataResponse* resp) {
  CallScope call(metrics_, Op::kConnectData);
  if (data_plane_ == nullptr) return call.Done(NoDataPlane());
  std::vector<std::string> addresses(req->worker_addresses().begin(),
                                     req->worker_addresses().end());
  absl::StatusOr<DataPlane::Channel> ch = data_plane_->Connect(addresses);
  if (!ch.ok()) return call.Done(ch.status());
  resp->set_channel_id(ch->id);
  for (const std::string& a : ch->worker_addresses) resp->add_worker_addresses(a);
  resp->set_transport(ch->transport);
  spdlog::info("data channel {} opened: {} lanes over {}", ch->id, addresses.size(), ch->transport);
  return call.Done(absl::OkStatus());
}

grpc::Status StoreServiceImpl::CloseData(grpc::ServerContext*, const v1::CloseDataRequest* req,
                                         v1::CloseDataResponse*) {
  CallScope call(metrics_, Op::kCloseData);
  if (data_plane_ == nullptr) return call.Done(NoDataPlane());
  return call.Done(data_plane_->Close(req->channel_id()));
}

grpc::Status StoreServiceImpl::PutData(grpc::ServerContext* ctx, const v1::PutDataRequest* req,
                                       v1::PutDataResponse* resp) {
  CallScope call(metrics_, Op::kPutData);
  if (data_plane_ == nullptr) return call.Done(NoDataPlane());
  const absl::Time deadline = TransferDeadline(ctx);
  const bool two_sided = req->tags_size() > 0;
  std::vector<WarmTier::PutBlock> blocks;
  std::string scope;
  uint64_t total = 0;
  absl::Status valid = ParsePutBlocks(req->namespace_id(), req->scope(), req->blocks(),
                                      req->session_id(), &blocks, &scope, &total);
  const int n = req->blocks_size();
  if (valid.ok()) valid = CheckEpoch(req->epoch());
  if (valid.ok() && req->checksums_size() != n) {
    valid = absl::InvalidArgumentError(
        absl::StrCat("checksums: ", req->checksums_size(), " entries for ", n, " blocks"));
  }
  if (valid.ok() && total > config_.max_transfer_bytes) {
    valid = absl::ResourceExhaustedError(
        absl::StrCat("blocks: ", FormatByteSize(total), " in one call exceed max_transfer_bytes ",
                     FormatByteSize(config_.max_transfer_bytes), "; split the batch"));
  }
  if (valid.ok() && two_sided) {
    if (req->tags_size() != n) {
      valid = absl::InvalidArgumentError(
          absl::StrCat("tags: ", req->tags_size(), " entries for ", n, " blocks"));
    }
    for (int i = 0; valid.ok() && i < req->tags_size(); ++i) {
      if (req->tags(i) >> 32 != (req->channel_id() & 0xffffffffu)) {
        valid = absl::InvalidArgumentError(
            absl::StrCat("tags[", i, "]: high 32 bits must be the channel id ", req->channel_id()));
      }
    }
  } else if (valid.ok()) {
    if (req->sources_size() != n) {
      valid = absl::InvalidArgumentError(
          absl::StrCat("sources: ", req->sources_size(), " entries for ", n, " blocks"));
    }
    for (int i = 0; valid.ok() && i < n; ++i) {
      const std::string field = absl::StrCat("sources[", i, "]");
      valid = CheckRemote(req->sources(i), req->rkeys_size(), field);
      if (valid.ok() && req->sources(i).length() != blocks[i].size) {
        valid =
            absl::InvalidArgumentError(absl::StrCat(field, ".length: ", req->sources(i).length(),
                                                    ", blocks[", i, "].size is ", blocks[i].size));
      }
    }
  }
  if (!valid.ok()) {
    // The client's tagged messages are on their way: take them into the discard buffer so its
    // sends complete, then refuse the call.
    if (two_sided) ConsumeTagged(*req, deadline);
    return call.Done(valid);
  }
  const uint64_t ttl = static_cast<uint64_t>(
      std::max<int64_t>(1000, absl::ToInt64Milliseconds(deadline - absl::Now()) + 1000));
  WarmTier::ReserveResult r = store_->BeginPut(req->namespace_id(), scope, blocks, ttl);
  std::vector<transport::TransferOp> ops;
  std::vector<size_t> received(n, 0);
  for (int i = 0; i < n; ++i) {
    const bool reserved = r.status[i].ok();
    if (two_sided) {
      // Every tag gets a receive: blocks not stored land in the discard buffer.
      ops.push_back(transport::TransferOp::Recv(
          reserved ? r.addresses[i] : data_plane_->discard_buffer(),
          reserved ? blocks[i].size : data_plane_->discard_bytes(), req->tags(i), &received[i]));
    } else if (reserved) {
      const v1::RemoteBuffer& src = req->sources(i);
      ops.push_back({transport::TransferOp::Kind::kGet, r.addresses[i], blocks[i].size, src.addr(),
                     req->rkeys(static_cast<int>(src.rkey_index()))});
    }
  }
  std::vector<absl::Status> results = r.status;
  if (!ops.empty()) {
    absl::Status moved = data_plane_->Transfer(req->channel_id(), req->lane(), ops, deadline);
    if (!moved.ok()) {
      // Nothing of this call becomes visible: the reserved slots are released.
      if (r.reservation_id != 0) store_->AbortPut(r.reservation_id).IgnoreError();
      return call.Done(moved);
    }
  }
  std::vector<WarmTier::CommitBlock> commit;
  std::vector<int> committed;
  for (int i = 0; i < n; ++i) {
    if (!r.status[i].ok()) continue;
    if (two_sided && received[i] != blocks[i].size) {
      results[i] =
          absl::DataLossError(absl::StrCat("blocks[", i, "]: ", received[i],
                                           " bytes arrived for a ", blocks[i].size, "-byte block"));
      continue;  // released with the reservation
    }
    commit.push_back({blocks[i].hash, req->checksums(i), {}, /*landed=*/true, blocks[i].size});
    committed.push_back(i);
  }
  if (r.reservation_id != 0) {
    absl::StatusOr<std::vector<absl::Status>> done = store_->CommitPut(r.reservation_id, commit);
    if (!done.ok()) return call.Done(done.status());
    uint64_t bytes = 0;
    for (size_t k = 0; k < committed.size(); ++k) {
      results[committed[k]] = (*done)[k];
      bytes += (*done)[k].ok() ? blocks[committed[k]].size : 0;
    }
    metrics_->AddUcxBytes(true, bytes);
  }
  for (const absl::Status& st : results) ToBlockStatus(st, resp->add_results());
  return call.Done(absl::OkStatus());
}

void StoreServiceImpl::ConsumeTagged(const v1::PutDataRequest& req, absl::Time deadline) {
  std::vector<transport::TransferOp> ops;
  for (uint64_t tag : req.tags()) {
    ops.push_back(transport::TransferOp::Recv(data_plane_->discard_buffer(),
                                              data_plane_->discard_bytes(), tag));
  }
  data_plane_->Transfer(req.channel_id(), req.lane(), ops, deadline).IgnoreError();
}

grpc::Status StoreServiceImpl::GetData(grpc::ServerContext* ctx, const v1::GetDataRequest* req,
                                       v1::GetDataResponse* resp) {
  CallScope call(metrics_, Op::kGetData);
  if (data_plane_ == nullptr) return call.Done(NoDataPlane());
  if (absl::Status s = CheckEpoch(req->epoch()); !s.ok()) return call.Done(s);
  std::vector<ChainHash> hashes;
  std::string scope;
  absl::Status s = ValidateKeys(req->namespace_id(), req->scope(), req->chain_hashes(),
                                "chain_hashes", &hashes, &scope, nullptr);
  if (!s.ok()) return call.Done(s);
  const int n = static_cast<int>(hashes.size());
  const bool two_sided = req->tags_size() > 0;
  if (two_sided) {
    if (req->tags_size() != n || req->capacities_size() != n) {
      return call.Done(absl::InvalidArgumentError(
          absl::StrCat("tags / capacities: ", req->tags_size(), " / ", req->capacities_size(),
                       " entries for ", n, " blocks")));
    }
    for (int i = 0; i < n; ++i) {
      if (req->tags(i) >> 32 != (req->channel_id() & 0xffffffffu)) {
        return call.Done(absl::InvalidArgumentError(absl::StrCat(
            "tags[", i, "]: high 32 bits must be the channel id ", req->channel_id())));
      }
    }
  } else {
    if (req->destinations_size() != n) {
      return call.Done(absl::InvalidArgumentError(
          absl::StrCat("destinations: ", req->destinations_size(), " entries for ", n, " blocks")));
    }
    for (int i = 0; i < n; ++i) {
      if (absl::Status c = CheckRemote(req->destinations(i), req->rkeys_size(),
                                       absl::StrCat("destinations[", i, "]"));
          !c.ok()) {
        return call.Done(c);
      }
    }
  }
  const absl::Time deadline = TransferDeadline(ctx);
  const uint64_t ttl = static_cast<uint64_t>(
      std::max<int64_t>(1000, absl::ToInt64Milliseconds(deadline - absl::Now()) + 1000));
  // Pin what is warm; stage cool/cold blocks in the arena and pin those too.
  WarmTier::GetResult first = store_->PinWarm(req->namespace_id(), scope, hashes, ttl);
  std::vector<absl::Status> status = first.status;
  std::vector<WarmTier::BlockMeta> meta = first.blocks;
  std::vector<uint64_t> leases = {first.lease_id};
  std::vector<int> missing;
  for (int i = 0; i < n; ++i) {
    if (status[i].code() == absl::StatusCode::kNotFound) missing.push_back(i);
  }
  if (!missing.empty() && store_->promote_on_get() && !req->skip_promotion()) {
    std::vector<ChainHash> staged;
    std::vector<int> staged_index;
    for (int i : missing) {
      if (store_->StageInWarm(BlockKey{req->namespace_id(), scope, hashes[i]})) {
        staged.push_back(hashes[i]);
        staged_index.push_back(i);
      }
    }
    if (!staged.empty()) {
      WarmTier::GetResult second = store_->PinWarm(req->namespace_id(), scope, staged, ttl);
      leases.push_back(second.lease_id);
      for (size_t k = 0; k < staged.size(); ++k) {
        status[staged_index[k]] = second.status[k];
        meta[staged_index[k]] = second.blocks[k];
      }
    }
    missing.clear();
    for (int i = 0; i < n; ++i) {
      if (status[i].code() == absl::StatusCode::kNotFound) missing.push_back(i);
    }
  }
  for (int i = 0; i < n; ++i) resp->add_blocks();
  // What could not be staged (no room, or promotion off) is read from disk and sent inline.
  if (!missing.empty()) {
    std::vector<ChainHash> rest;
    for (int i : missing) rest.push_back(hashes[i]);
    WarmTier::CopySink sink = [&](size_t k, uint64_t size) {
      std::string* p = resp->mutable_blocks(missing[k])->mutable_payload();
      p->resize(size);
      return reinterpret_cast<uint8_t*>(p->data());
    };
    WarmTier::GetResult inline_result =
        store_->BeginGet(req->namespace_id(), scope, rest, ttl, sink, config_.max_inline_bytes,
                         !req->skip_promotion());
    leases.push_back(inline_result.lease_id);
    for (size_t k = 0; k < missing.size(); ++k) {
      status[missing[k]] = inline_result.status[k];
      meta[missing[k]] = inline_result.blocks[k];
      meta[missing[k]].address = nullptr;  // served inline
    }
  }
  std::vector<transport::TransferOp> ops;
  uint64_t bytes = 0;
  for (int i = 0; i < n; ++i) {
    const uint64_t capacity = two_sided ? req->capacities(i) : req->destinations(i).length();
    const bool pinned = status[i].ok() && meta[i].address != nullptr;
    // Verified before it leaves (the pin keeps the bytes still): a block gone bad in memory
    // is dropped and reported here, and never lands in the client's buffer.
    if (pinned && BlockChecksum(meta[i].address, meta[i].size) != meta[i].checksum) {
      status[i] = absl::DataLossError("block failed its checksum on the node; dropped");
      store_->DropCorrupt(BlockKey{req->namespace_id(), scope, hashes[i]});
      spdlog::error("DATA_LOSS: block {} of namespace 0x{:016x} failed its checksum; dropped",
                    hashes[i].ToHex(), req->namespace_id());
    }
    if (status[i].ok() && meta[i].address != nullptr && meta[i].size > capacity) {
      status[i] = absl::OutOfRangeError(
          absl::StrCat("block is ", meta[i].size, " bytes, destination holds ", capacity));
    }
    const bool send = status[i].ok() && meta[i].address != nullptr;
    if (two_sided) {
      // Exactly one message per tag: the block, or an empty one (not found, too big, inline).
      ops.push_back(transport::TransferOp::Send(send ? meta[i].address : nullptr,
                                                send ? meta[i].size : 0, req->tags(i)));
    } else if (send) {
      const v1::RemoteBuffer& dst = req->destinations(i);
      ops.push_back({transport::TransferOp::Kind::kPut, meta[i].address, meta[i].size, dst.addr(),
                     req->rkeys(static_cast<int>(dst.rkey_index()))});
    }
    bytes += send ? meta[i].size : 0;
  }
  absl::Status moved = absl::OkStatus();
  if (!ops.empty()) moved = data_plane_->Transfer(req->channel_id(), req->lane(), ops, deadline);
  for (uint64_t lease : leases) {
    if (lease != 0) store_->EndGet(lease).IgnoreError();
  }
  if (!moved.ok()) return call.Done(moved);
  metrics_->AddUcxBytes(false, bytes);
  for (int i = 0; i < n; ++i) {
    v1::GetBlock* b = resp->mutable_blocks(i);
    ToBlockStatus(status[i], b->mutable_status());
    if (!status[i].ok()) {
      b->clear_payload();
      continue;
    }
    b->set_tier(TierProto(meta[i].tier));
    b->set_size(meta[i].size);
    b->set_checksum(meta[i].checksum);
  }
  return call.Done(absl::OkStatus());
}

}  // namespace strata::storenode
