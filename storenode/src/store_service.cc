#include "store_service.h"

#include <algorithm>
#include <chrono>
#include <string_view>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "service_call.h"
#include "spdlog/spdlog.h"
#include "strata/common/byte_size.h"
#include "strata/common/chain_hash.h"
#include "strata/common/checksum.h"
#include "strata/proto/status_convert.h"

namespace strata::storenode {
namespace {

using proto::ToBlockStatus;
using proto::ToGrpc;

// How long a reservation outlives the deadline of the BeginPut that made it (BeginPut).
constexpr int64_t kReservationGraceMs = 2000;

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
                                   DataPlane* data_plane, NodeMetrics* metrics,
                                   std::shared_ptr<const Authenticator> auth)
    : config_(config),
      auth_(std::move(auth)),
      admission_(config.max_concurrent_calls, config.max_inflight_bytes),
      lookup_limiter_(
          static_cast<double>(config.tenant_lookup_rate),
          static_cast<double>(config.tenant_lookup_burst != 0 ? config.tenant_lookup_burst
                                                              : config.max_keys_per_call)),
      tenant_data_calls_(config.tenant_data_calls),
      directory_(config.max_directory_entries),
      store_(store),
      data_plane_(data_plane),
      metrics_(metrics) {
  // Shared blocks kept on disk from an earlier run.
  for (const ScopeUse& use : store_->ScopeBytes()) {
    if (use.scope == kSharedScope) shared_used_ = true;
  }
}

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

grpc::Status StoreServiceImpl::RegisterNamespace(grpc::ServerContext* ctx,
                                                 const v1::RegisterNamespaceRequest* req,
                                                 v1::RegisterNamespaceResponse* resp) {
  CallScope call(metrics_, Op::kRegisterNamespace, &admission_);
  if (call.refused()) return call.Done(call.Refusal());
  if (absl::Status s = RequireAnyRole(ctx, kAnyRole, "RegisterNamespace"); !s.ok()) {
    return call.Done(s);
  }
  const v1::NamespaceSpec& in = req->spec();
  absl::StatusOr<ChainHashAlgorithm> algo = ParseChainHashAlgorithm(in.hash_algorithm());
  if (!algo.ok()) {
    return call.Done(
        absl::InvalidArgumentError(absl::StrCat("spec.hash_algorithm: ", algo.status().message())));
  }
  NamespaceSpec spec{in.model_id(),      in.dtype(),   in.layout(), in.block_tokens(),
                     in.tp_rank(),       in.tp_size(), *algo,       in.block_bytes(),
                     in.offload_quant(), in.head_dim()};
  // Lossy offload changes what every tenant of the namespace reads back from disk (and it is
  // not part of the id): only an admin sets it. Others may state the setting it already has.
  if (ValidateNamespaceSpec(spec).ok() && OffloadQuantOf(spec).method != KvQuant::kNone) {
    absl::StatusOr<NamespaceSpec> known = store_->GetNamespace(ComputeNamespaceId(spec));
    if (!known.ok() || known->offload_quant != spec.offload_quant ||
        known->head_dim != spec.head_dim) {
      if (absl::Status s = RequireAnyRole(ctx, kRoleAdmin,
                                          "RegisterNamespace with a lossy offload_quant (admin)");
          !s.ok()) {
        return call.Done(s);
      }
    }
  }
  // block_bytes is not part of the id either: a larger one widens what every tenant of the
  // namespace may put and what its inline reads reserve of max_inflight_bytes. Only a writer
  // (or an admin) widens it; others may state it or less.
  if (ValidateNamespaceSpec(spec).ok()) {
    absl::StatusOr<NamespaceSpec> known = store_->GetNamespace(ComputeNamespaceId(spec));
    if (known.ok() && spec.block_bytes > known->block_bytes) {
      if (absl::Status s = RequireAnyRole(ctx, kRoleWriter | kRoleAdmin,
                                          "RegisterNamespace widening block_bytes (writer)");
          !s.ok()) {
        return call.Done(s);
      }
    }
  }
  // One tenant must not use up the node's max_namespaces for every other: a namespace it adds
  // (not one already here) counts against its tenant_namespaces.
  std::string counted;
  if (auth_ != nullptr && auth_->required() && config_.tenant_namespaces > 0 &&
      ValidateNamespaceSpec(spec).ok() && !store_->GetNamespace(ComputeNamespaceId(spec)).ok()) {
    absl::StatusOr<Principal> who = Caller(ctx);
    if (who.ok() && !who->Has(kRoleAdmin)) {
      absl::MutexLock lock(&tenant_namespaces_mu_);
      uint64_t& added = tenant_namespaces_[who->tenant];
      if (added >= config_.tenant_namespaces) {
        metrics_->AddDenied(who->tenant, absl::StatusCode::kResourceExhausted);
        return call.Done(absl::ResourceExhaustedError(absl::StrCat(
            "namespaces: tenant ", who->tenant, " added ", added,
            " to this node, its maximum (tenant_namespaces); reuse a registered one")));
      }
      ++added;  // taken before registering, so registrations at once cannot overshoot
      counted = who->tenant;
    }
  }
  bool added = false;
  absl::StatusOr<NamespaceId> id = store_->RegisterNamespace(spec, &added);
  if (!counted.empty() && !added) {
    // Refused, or another call added it first (every worker of a model registers its
    // namespace at once at a roll-out): only the call that added it keeps the charge.
    absl::MutexLock lock(&tenant_namespaces_mu_);
    --tenant_namespaces_[counted];
  }
  if (!id.ok()) return call.Done(id.status());
  resp->set_namespace_id(*id);
  spdlog::info("namespace 0x{:016x} registered: model={} dtype={} block_tokens={} tp={}/{}", *id,
               spec.model_id, spec.dtype, spec.block_tokens, spec.tp_rank, spec.tp_size);
  return call.Done(absl::OkStatus());
}

grpc::Status StoreServiceImpl::BeginPut(grpc::ServerContext* ctx, const v1::BeginPutRequest* req,
                                        v1::BeginPutResponse* resp) {
  CallScope call(metrics_, Op::kBeginPut, &admission_);
  if (call.refused()) return call.Done(call.Refusal());
  Principal who;
  absl::StatusOr<std::string> allowed = Authorize(ctx, req->scope(), Access::kWrite, &who);
  if (!allowed.ok()) return call.Done(allowed.status());
  if (absl::Status s = CheckEpoch(req->epoch()); !s.ok()) return call.Done(s);
  if (absl::Status s = ValidateTtl(req->ttl_ms(), "ttl_ms"); !s.ok()) return call.Done(s);
  std::vector<WarmTier::PutBlock> blocks;
  std::string scope;
  uint64_t total = 0;
  if (absl::Status s = ParsePutBlocks(req->namespace_id(), *allowed, req->blocks(),
                                      req->session_id(), &blocks, &scope, &total);
      !s.ok()) {
    return call.Done(s);
  }
  for (WarmTier::PutBlock& b : blocks) {
    b.session = SessionKey(who, b.session);
    b.copy = req->copy();
  }
  if (total > config_.max_inline_bytes) {
    return call.Done(absl::ResourceExhaustedError(
        absl::StrCat("blocks: ", FormatByteSize(total), " in one call exceed max_inline_bytes ",
                     FormatByteSize(config_.max_inline_bytes), "; split the batch")));
  }
  const bool one_call = req->payloads_size() > 0 || req->checksums_size() > 0;
  if (one_call) {
    if (absl::Status s = CheckOneCallPayloads(*req); !s.ok()) return call.Done(s);
  }
  // Refused here, the payload is never sent: cheaper than refusing the CommitPut carrying it.
  // (A one-call put's payload came with it: it is held against max_inflight_bytes.)
  InflightBytes held(&admission_, one_call ? total : 0);
  if (!held.status().ok()) return call.Done(held.status());
  if (!one_call && !admission_.HasRoom(total)) {
    return call.Done(InflightBytes(&admission_, UINT64_MAX / 2).status());
  }
  uint64_t ttl = req->ttl_ms() != 0 ? req->ttl_ms() : config_.reservation_ttl_ms;
  // Without a ttl of its own, its writer commits within the deadline this call came with: a
  // reservation that outlives it only keeps slots from others (a put cut short whose AbortPut
  // was refused as well).
  const auto deadline = ctx->deadline();
  if (req->ttl_ms() == 0 && deadline != std::chrono::system_clock::time_point::max()) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::system_clock::now());
    ttl = std::min<uint64_t>(ttl, std::max<int64_t>(left.count(), 0) + kReservationGraceMs);
  }
  NoteWrite(scope);
  WarmTier::ReserveResult r = store_->BeginPut(req->namespace_id(), scope, blocks, ttl);
  if (one_call && r.reservation_id != 0) {
    // Commit what was reserved from the payloads in hand; each slot answers the outcome.
    std::vector<WarmTier::CommitBlock> commits;
    std::vector<size_t> which;
    for (size_t i = 0; i < blocks.size(); ++i) {
      if (!r.status[i].ok()) continue;
      const std::string& p = req->payloads(static_cast<int>(i));
      commits.push_back({blocks[i].hash,
                         req->checksums(static_cast<int>(i)),
                         {reinterpret_cast<const uint8_t*>(p.data()), p.size()}});
      which.push_back(i);
    }
    absl::StatusOr<std::vector<absl::Status>> done = store_->CommitPut(r.reservation_id, commits);
    for (size_t k = 0; k < which.size(); ++k) {
      r.status[which[k]] = done.ok() ? (*done)[k] : done.status();
    }
    r.reservation_id = 0;
  }
  if (one_call) metrics_->AddInlineBytes(true, total);  // received, stored or not
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

absl::Status StoreServiceImpl::CheckOneCallPayloads(const v1::BeginPutRequest& req) const {
  const int n = req.blocks_size();
  if (req.payloads_size() != n || req.checksums_size() != n) {
    return absl::InvalidArgumentError(absl::StrCat("payloads, checksums: ", req.payloads_size(),
                                                   " and ", req.checksums_size(), " for ", n,
                                                   " blocks; want one each or none"));
  }
  for (int i = 0; i < n; ++i) {
    if (req.payloads(i).size() != req.blocks(i).size()) {
      return absl::InvalidArgumentError(absl::StrCat("payloads[", i, "]: ", req.payloads(i).size(),
                                                     " bytes, blocks[", i, "].size says ",
                                                     req.blocks(i).size()));
    }
  }
  return absl::OkStatus();
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

grpc::Status StoreServiceImpl::CommitPut(grpc::ServerContext* ctx, const v1::CommitPutRequest* req,
                                         v1::CommitPutResponse* resp) {
  CallScope call(metrics_, Op::kCommitPut, &admission_);
  // The reservation id (random, from BeginPut) names the scope; the caller must still write.
  if (absl::Status s = RequireAnyRole(ctx, kRoleWriter | kRolePublisher | kRoleAdmin, "CommitPut");
      !s.ok()) {
    return call.Done(s);
  }
  // A commit refused for load gives its reservation back now: the writer's AbortPut, sent
  // into the same overload, might not get through, and the slots would stay taken until
  // reservation_ttl.
  auto refuse = [&](absl::Status why) {
    store_->AbortPut(req->reservation_id()).IgnoreError();
    return call.Done(std::move(why));
  };
  if (call.refused()) return refuse(call.Refusal());
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
  InflightBytes held(&admission_, bytes);
  if (!held.status().ok()) return refuse(held.status());
  absl::StatusOr<std::vector<absl::Status>> r = store_->CommitPut(req->reservation_id(), blocks);
  if (!r.ok()) return call.Done(r.status());
  metrics_->AddInlineBytes(true, bytes);
  for (const absl::Status& st : *r) ToBlockStatus(st, resp->add_results());
  return call.Done(absl::OkStatus());
}

grpc::Status StoreServiceImpl::AbortPut(grpc::ServerContext* ctx, const v1::AbortPutRequest* req,
                                        v1::AbortPutResponse*) {
  CallScope call(metrics_, Op::kAbortPut);
  if (absl::Status s = RequireAnyRole(ctx, kRoleWriter | kRolePublisher | kRoleAdmin, "AbortPut");
      !s.ok()) {
    return call.Done(s);
  }
  return call.Done(store_->AbortPut(req->reservation_id()));
}

grpc::Status StoreServiceImpl::BeginGet(grpc::ServerContext* ctx, const v1::BeginGetRequest* req,
                                        v1::BeginGetResponse* resp) {
  CallScope call(metrics_, Op::kBeginGet, &admission_);
  if (call.refused()) return call.Done(call.Refusal());
  std::vector<ChainHash> hashes;
  std::string scope;
  Principal who;
  if (absl::Status s = RoutedKeys(ctx, *req, Access::kRead, &hashes, &scope, &who); !s.ok()) {
    return call.Done(s);
  }
  if (absl::Status s = ValidateTtl(req->lease_ms(), "lease_ms"); !s.ok()) return call.Done(s);
  if (absl::Status r = TakeLookupBudget(who, hashes.size()); !r.ok()) return call.Done(r);
  uint64_t ttl = req->lease_ms() != 0 ? req->lease_ms() : config_.lease_ttl_ms;
  // The payload this call may copy: at most its blocks at the namespace's block size.
  absl::StatusOr<NamespaceSpec> spec = store_->GetNamespace(req->namespace_id());
  const uint64_t block_bytes = spec.ok() ? spec->block_bytes : 0;
  uint64_t most = 0;
  if (req->include_payload()) {
    most = std::min<uint64_t>(config_.max_inline_bytes, hashes.size() * block_bytes);
  }
  InflightBytes held(&admission_, most);
  // Blocks read from disk go through buffers of their own, and not past the caller's deadline:
  // before 2026-11-29 a call read every disk block it named, however long ago the caller had
  // given up, and one without payload (most 0) outside max_inflight_bytes. A call with payload
  // has its blocks' bytes held already; one without holds a read's buffers.
  std::optional<InflightBytes> disk_room;
  const TieredStore::DiskReadGate gate = DiskReadGate(
      ctx, absl::FromChrono(ctx->deadline()), req->include_payload() ? 0 : block_bytes, &disk_room);
  if (!held.status().ok()) return call.Done(held.status());
  for (size_t i = 0; i < hashes.size(); ++i) resp->add_blocks();
  uint64_t bytes = 0;
  uint64_t lease_id = 0;
  // A tenant's read may take its first blocks from `shared`: one store call per scope, one
  // lease for the caller.
  for (const ScopeGroup& g : GroupByScope(req->namespace_id(), scope, hashes)) {
    WarmTier::CopySink sink;
    if (req->include_payload()) {
      sink = [resp, &g](size_t k, uint64_t size) {
        std::string* p = resp->mutable_blocks(static_cast<int>(g.index[k]))->mutable_payload();
        p->resize(size);
        return reinterpret_cast<uint8_t*>(p->data());
      };
    }
    WarmTier::GetResult r =
        store_->BeginGet(req->namespace_id(), g.scope, g.hashes, ttl, sink,
                         config_.max_inline_bytes - std::min(bytes, config_.max_inline_bytes),
                         !req->skip_promotion(), /*count_warm=*/true, gate);
    if (req->include_payload() && r.lease_id != 0) {
      // Every block it pinned is in the reply now (BeginGet pins no block it did not copy):
      // the pins have done their work, and the caller need not send an EndGet.
      store_->EndGet(r.lease_id).IgnoreError();
    } else if (r.lease_id != 0 && lease_id != 0) {
      // The first lease lapsed meanwhile (a short lease_ms and slow disk reads): this one's
      // pins are released rather than left to a lease no one was told of.
      if (!store_->JoinLease(lease_id, r.lease_id).ok()) store_->EndGet(r.lease_id).IgnoreError();
    } else if (r.lease_id != 0) {
      lease_id = r.lease_id;
    }
    for (size_t k = 0; k < g.index.size(); ++k) {
      v1::GetBlock* b = resp->mutable_blocks(static_cast<int>(g.index[k]));
      ToBlockStatus(r.status[k], b->mutable_status());
      if (!r.status[k].ok()) {
        b->clear_payload();  // never hand out bytes that failed verification
        if (r.status[k].code() == absl::StatusCode::kDataLoss) {
          spdlog::error("DATA_LOSS: block {} of namespace 0x{:016x} failed its checksum; dropped",
                        g.hashes[k].ToHex(), req->namespace_id());
        }
        continue;
      }
      b->set_tier(TierProto(r.blocks[k].tier));
      b->set_size(r.blocks[k].size);
      b->set_checksum(r.blocks[k].checksum);
      bytes += b->payload().size();
    }
  }
  // A caller that gave up meanwhile (its deadline passed while the call read disk blocks, or
  // it cancelled) never learns of the lease: release it now rather than at its ttl, when
  // it would have held its blocks and a place under max_leases all along.
  if (lease_id != 0 && ctx->IsCancelled()) {
    store_->EndGet(lease_id).IgnoreError();
    return call.Done(absl::DeadlineExceededError(
        "the caller's deadline passed (or it cancelled) while the blocks were read; lease "
        "released"));
  }
  // The caller keeps this lease past the call: it counts against max_leases/max_lease_bytes.
  if (lease_id != 0) {
    // NOT_FOUND: a short lease lapsed while the call read disk blocks: no lease to give.
    if (absl::Status s = store_->HoldLease(lease_id); absl::IsNotFound(s)) {
      lease_id = 0;
    } else if (!s.ok()) {
      return call.Done(s);
    }
  }
  resp->set_lease_id(lease_id);
  resp->set_expires_in_ms(lease_id != 0 ? ttl : 0);
  metrics_->AddInlineBytes(false, bytes);
  return call.Done(absl::OkStatus());
}

grpc::Status StoreServiceImpl::EndGet(grpc::ServerContext* ctx, const v1::EndGetRequest* req,
                                      v1::EndGetResponse*) {
  CallScope call(metrics_, Op::kEndGet);
  if (absl::Status s = RequireAnyRole(ctx, kAnyRole, "EndGet"); !s.ok()) return call.Done(s);
  return call.Done(store_->EndGet(req->lease_id()));
}

grpc::Status StoreServiceImpl::Delete(grpc::ServerContext* ctx, const v1::DeleteRequest* req,
                                      v1::DeleteResponse* resp) {
  CallScope call(metrics_, Op::kDelete, &admission_);
  if (call.refused()) return call.Done(call.Refusal());
  std::vector<ChainHash> hashes;
  std::string scope;
  if (absl::Status s = RoutedKeys(ctx, *req, Access::kWrite, &hashes, &scope); !s.ok()) {
    return call.Done(s);
  }
  resp->set_deleted(static_cast<uint32_t>(
      store_->Delete(req->namespace_id(), scope, hashes, /*tombstone=*/true)));
  // GPU agents' copies too: no longer advertised, and not again while the delete is
  // remembered (Publish), unless a writer puts the block again.
  directory_.Remove(req->namespace_id(), scope, hashes);
  return call.Done(absl::OkStatus());
}

grpc::Status StoreServiceImpl::Stats(grpc::ServerContext* ctx, const v1::StatsRequest*,
                                     v1::StatsResponse* resp) {
  CallScope call(metrics_, Op::kStats, &admission_);
  if (call.refused()) return call.Done(call.Refusal());
  if (absl::Status s = RequireAnyRole(ctx, kAnyRole, "Stats"); !s.ok()) return call.Done(s);
  TieredStats ts = store_->Stats();
  const WarmTierStats& s = ts.warm;
  resp->set_node_id(config_.node_id);
  resp->set_zone(config_.zone);
  resp->set_exact_scope_lookups(true);
  if (const cluster::Membership* m = membership_.load(); m != nullptr) {
    std::shared_ptr<const cluster::MemberSet> set = m->Current();
    resp->set_cluster_mode(std::string(cluster::MembershipModeName(m->mode())));
    resp->set_epoch(set->epoch);
    resp->set_members(static_cast<uint32_t>(set->members.size()));
    resp->set_etcd_connected(m->mode() == cluster::MembershipMode::kEtcd && m->connected());
    resp->set_members_placing_otherwise(
        static_cast<uint32_t>(cluster::MembersPlacingOtherwise(set->members).size()));
    resp->set_replicas_kept(static_cast<uint32_t>(
        cluster::ReplicasKept(set->members, static_cast<int>(config_.cluster_replicas))));
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
    resp->set_ucx_lanes_replaced(data_plane_->lanes_replaced());
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

// What a session move holds while it runs: a block's read and encode buffers (two blocks, of
// the largest moved so far) against max_inflight_bytes. Before the sixth session of 2026-11-29
// they were outside it (up to max_concurrent_calls x 2 blocks at once).
TieredStore::SessionRoom SessionRoom(InflightBytes* held) {
  return [held](uint64_t block_bytes) -> absl::Status {
    return held->HoldAtLeast(2 * block_bytes, 2 * block_bytes) ? absl::OkStatus() : held->status();
  };
}

}  // namespace

grpc::Status StoreServiceImpl::PauseSession(grpc::ServerContext* ctx,
                                            const v1::PauseSessionRequest* req,
                                            v1::PauseSessionResponse* resp) {
  CallScope call(metrics_, Op::kPauseSession, &admission_);
  if (call.refused()) return call.Done(call.Refusal());
  Principal who;
  if (absl::StatusOr<std::string> a = Authorize(ctx, "", Access::kWrite, &who); !a.ok()) {
    return call.Done(a.status());
  }
  if (absl::Status s = ValidateSession(req->session_id()); !s.ok()) return call.Done(s);
  if (req->tier() != v1::TIER_UNSPECIFIED && req->tier() != v1::TIER_COOL &&
      req->tier() != v1::TIER_COLD) {
    return call.Done(absl::InvalidArgumentError("tier: want TIER_COOL or TIER_COLD"));
  }
  InflightBytes held(&admission_, 0);
  absl::StatusOr<uint64_t> n =
      store_->PauseSession(SessionKey(who, req->session_id()), req->tier() == v1::TIER_COLD,
                           absl::FromChrono(ctx->deadline()), SessionRoom(&held));
  if (!n.ok()) return call.Done(n.status());
  resp->set_moved(static_cast<uint32_t>(*n));
  return call.Done(absl::OkStatus());
}

grpc::Status StoreServiceImpl::ResumeSession(grpc::ServerContext* ctx,
                                             const v1::ResumeSessionRequest* req,
                                             v1::ResumeSessionResponse* resp) {
  CallScope call(metrics_, Op::kResumeSession, &admission_);
  if (call.refused()) return call.Done(call.Refusal());
  Principal who;
  if (absl::StatusOr<std::string> a = Authorize(ctx, "", Access::kWrite, &who); !a.ok()) {
    return call.Done(a.status());
  }
  if (absl::Status s = ValidateSession(req->session_id()); !s.ok()) return call.Done(s);
  InflightBytes held(&admission_, 0);
  absl::StatusOr<uint64_t> n = store_->ResumeSession(
      SessionKey(who, req->session_id()), absl::FromChrono(ctx->deadline()), SessionRoom(&held));
  if (!n.ok()) return call.Done(n.status());
  resp->set_promoted(static_cast<uint32_t>(*n));
  return call.Done(absl::OkStatus());
}

grpc::Status StoreServiceImpl::Prefetch(grpc::ServerContext* ctx, const v1::PrefetchRequest* req,
                                        v1::PrefetchResponse* resp) {
  CallScope call(metrics_, Op::kPrefetch, &admission_);
  if (call.refused()) return call.Done(call.Refusal());
  Principal who;
  absl::StatusOr<std::string> allowed = Authorize(ctx, req->scope(), Access::kRead, &who);
  if (!allowed.ok()) return call.Done(allowed.status());
  std::vector<ChainHash> hashes;
  std::string scope = *allowed;
  if (req->session_id().empty() || req->chain_hashes_size() > 0) {
    absl::Status s = ValidateKeys(req->namespace_id(), *allowed, req->chain_hashes(),
                                  "chain_hashes", &hashes, &scope, nullptr);
    if (!s.ok()) return call.Done(s);
  }
  if (!req->session_id().empty()) {
    if (absl::Status s = ValidateSession(req->session_id()); !s.ok()) return call.Done(s);
  }
  if (absl::Status r = TakeLookupBudget(who, hashes.size()); !r.ok()) return call.Done(r);
  const std::string session = SessionKey(who, req->session_id());
  uint64_t scheduled = 0;
  if (hashes.empty()) {
    scheduled = store_->Prefetch(req->namespace_id(), scope, hashes, session);
  } else {
    for (const ScopeGroup& g : GroupByScope(req->namespace_id(), scope, hashes)) {
      scheduled += store_->Prefetch(req->namespace_id(), g.scope, g.hashes, session);
    }
  }
  resp->set_scheduled(static_cast<uint32_t>(scheduled));
  return call.Done(absl::OkStatus());
}

grpc::Status StoreServiceImpl::InjectFault(grpc::ServerContext* ctx,
                                           const v1::InjectFaultRequest* req,
                                           v1::InjectFaultResponse*) {
  CallScope call(metrics_, Op::kInjectFault, &admission_);
  if (call.refused()) return call.Done(call.Refusal());
  if (absl::Status s = RequireAnyRole(ctx, kRoleAdmin, "InjectFault"); !s.ok()) return call.Done(s);
  if (!config_.debug_fault_injection) {
    return call.Done(
        absl::FailedPreconditionError("InjectFault: node runs without --debug-fault-injection"));
  }
  if (req->stall_lane() != 0) {
    if (data_plane_ == nullptr) {
      return call.Done(absl::FailedPreconditionError("stall_lane: the node has no data plane"));
    }
    absl::Status s = data_plane_->StallLaneForTest(req->stall_lane() - 1);
    if (s.ok()) spdlog::warn("fault injected: data lane {} stops reading", req->stall_lane() - 1);
    return call.Done(s);
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

}  // namespace strata::storenode
