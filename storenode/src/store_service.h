// StoreServiceImpl: the gRPC face of a store node. Validates every request against the
// node's limits (naming the offending field), then calls the TieredStore. Per-block outcomes go
// back as BlockStatus; whole-call failures as the gRPC status.
//
// Thread-safe: gRPC calls the methods from its own thread pool.
#pragma once

#include <atomic>
#include <memory>

#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "auth.h"
#include "cancel_watch.h"
#include "directory.h"
#include "metrics.h"
#include "rate_limiter.h"
#include "rebalancer.h"
#include "service_call.h"
#include "strata/cluster/membership.h"
#include "strata/storenode/node_config.h"
#include "strata/storenode/tiered_store.h"
#include "strata/transport/data_plane.h"
#include "strata/v1/store.grpc.pb.h"

namespace strata::storenode {

using transport::DataPlane;
using transport::DataPlaneOptions;

class StoreServiceImpl final : public strata::v1::StoreService::Service {
 public:
  // data_plane may be null (no UCX): the data RPCs then answer FAILED_PRECONDITION. auth
  // null: every caller is the anonymous principal of auth_mode none.
  StoreServiceImpl(const NodeConfig& config, TieredStore* store, DataPlane* data_plane,
                   NodeMetrics* metrics, std::shared_ptr<const Authenticator> auth = nullptr);
  // The node's cluster membership, once it started (after the server is listening); requests
  // carrying an epoch are checked against it. Must outlive the server.
  void SetMembership(const cluster::Membership* membership) { membership_.store(membership); }
  // Its rebalancer, whose progress Stats reports. Must outlive the server.
  void SetRebalancer(const Rebalancer* rebalancer) { rebalancer_.store(rebalancer); }

  grpc::Status RegisterNamespace(grpc::ServerContext*, const v1::RegisterNamespaceRequest*,
                                 v1::RegisterNamespaceResponse*) override;
  grpc::Status Lookup(grpc::ServerContext*, const v1::LookupRequest*, v1::LookupResponse*) override;
  grpc::Status Publish(grpc::ServerContext*, const v1::PublishRequest*,
                       v1::PublishResponse*) override;
  // Drops expired directory entries (the node's reaper calls it).
  uint64_t ExpireDirectory() { return directory_.Expire(); }
  grpc::Status BeginPut(grpc::ServerContext*, const v1::BeginPutRequest*,
                        v1::BeginPutResponse*) override;
  grpc::Status CommitPut(grpc::ServerContext*, const v1::CommitPutRequest*,
                         v1::CommitPutResponse*) override;
  grpc::Status AbortPut(grpc::ServerContext*, const v1::AbortPutRequest*,
                        v1::AbortPutResponse*) override;
  grpc::Status BeginGet(grpc::ServerContext*, const v1::BeginGetRequest*,
                        v1::BeginGetResponse*) override;
  grpc::Status EndGet(grpc::ServerContext*, const v1::EndGetRequest*, v1::EndGetResponse*) override;
  grpc::Status Delete(grpc::ServerContext*, const v1::DeleteRequest*, v1::DeleteResponse*) override;
  grpc::Status Stats(grpc::ServerContext*, const v1::StatsRequest*, v1::StatsResponse*) override;
  grpc::Status PauseSession(grpc::ServerContext*, const v1::PauseSessionRequest*,
                            v1::PauseSessionResponse*) override;
  grpc::Status ResumeSession(grpc::ServerContext*, const v1::ResumeSessionRequest*,
                             v1::ResumeSessionResponse*) override;
  grpc::Status Prefetch(grpc::ServerContext*, const v1::PrefetchRequest*,
                        v1::PrefetchResponse*) override;
  grpc::Status InjectFault(grpc::ServerContext*, const v1::InjectFaultRequest*,
                           v1::InjectFaultResponse*) override;
  grpc::Status ConnectData(grpc::ServerContext*, const v1::ConnectDataRequest*,
                           v1::ConnectDataResponse*) override;
  grpc::Status CloseData(grpc::ServerContext*, const v1::CloseDataRequest*,
                         v1::CloseDataResponse*) override;
  grpc::Status PutData(grpc::ServerContext*, const v1::PutDataRequest*,
                       v1::PutDataResponse*) override;
  grpc::Status GetData(grpc::ServerContext*, const v1::GetDataRequest*,
                       v1::GetDataResponse*) override;

 private:
  // --- Authentication and scopes (store_service_auth.cc, docs/design/security.md) ---
  // The call's principal: from its bearer token or verified client certificate.
  absl::StatusOr<Principal> Caller(const grpc::ServerContext* ctx) const;
  // The scope a request naming `requested` may use for `access` (*principal: who asked).
  absl::StatusOr<std::string> Authorize(const grpc::ServerContext* ctx,
                                        const std::string& requested, Access access,
                                        Principal* principal = nullptr);
  // PERMISSION_DENIED unless the caller holds one of `roles` (a bit mask).
  absl::Status RequireAnyRole(const grpc::ServerContext* ctx, uint8_t roles, const char* call);
  // A session id as stored: tenants' sessions never share a name.
  std::string SessionKey(const Principal& p, const std::string& session) const;
  // Whether a read in `scope` consults `shared` first (a tenant's own scope, once anything
  // was written to shared).
  bool SharedFirst(const std::string& scope) const;
  // Part of a prefix found in one scope: hashes [begin, begin + n) of a lookup. `scope` points
  // to the caller's scope or to a static "shared".
  struct StoreRun {
    const std::string* scope;
    size_t begin;
    size_t n;
  };
  // Every block on its own (each_block) or the present prefix, shared first where it applies
  // (not with `exact`: LookupRequest.exact_scope). Touches what it finds; counts hits and
  // misses unless !count. A prefix found in several runs (scopes in turn) is touched again,
  // last run first, so its first blocks stay its most recent (RetouchRuns), unless `runs` is
  // given: then the runs go there, for a caller that looks up the rest of the prefix itself.
  std::vector<std::optional<WarmTier::BlockMeta>> FindBlocks(
      NamespaceId ns, const std::string& scope, std::span<const ChainHash> hashes, bool each_block,
      bool exact = false, bool count = true, std::vector<StoreRun>* runs = nullptr);
  // Touches runs of one prefix again, the last first: each run's Lookup touched it after the
  // runs before it, which left the prefix's later blocks more recent than its first ones.
  void RetouchRuns(NamespaceId ns, std::span<const ChainHash> hashes,
                   std::span<const StoreRun> runs);
  // A read's blocks grouped by the scope holding them: those in `shared` first, the rest in
  // `scope`; one group (the request's scope) where shared is not consulted.
  struct ScopeGroup {
    std::string scope;
    std::vector<size_t> index;  // positions in the request
    std::vector<ChainHash> hashes;
  };
  std::vector<ScopeGroup> GroupByScope(NamespaceId ns, const std::string& scope,
                                       std::span<const ChainHash> hashes);
  void NoteWrite(const std::string& scope) {
    if (scope == kSharedScope) shared_used_.store(true, std::memory_order_relaxed);
  }

  // Checks namespace, scope, key count and hash lengths; fills *hashes and *scope.
  absl::Status ValidateKeys(uint64_t namespace_id, const std::string& scope_in,
                            const google::protobuf::RepeatedPtrField<std::string>& raw,
                            const char* field, std::vector<ChainHash>* hashes, std::string* scope,
                            NamespaceSpec* spec);
  absl::Status ValidateTtl(uint32_t ttl_ms, const char* field) const;
  // The scope a routed request's principal may use for `access` (Authorize: first, so a
  // caller without credentials learns nothing else, the node's epoch included), its epoch
  // (CheckEpoch), then its namespace and chain_hashes (ValidateKeys).
  template <typename Request>
  absl::Status RoutedKeys(const grpc::ServerContext* ctx, const Request& req, Access access,
                          std::vector<ChainHash>* hashes, std::string* scope,
                          Principal* principal = nullptr) {
    absl::StatusOr<std::string> allowed = Authorize(ctx, req.scope(), access, principal);
    if (!allowed.ok()) return allowed.status();
    if (absl::Status s = CheckEpoch(req.epoch()); !s.ok()) return s;
    return ValidateKeys(req.namespace_id(), *allowed, req.chain_hashes(), "chain_hashes", hashes,
                        scope, nullptr);
  }
  // Checks a put's namespace, scope, block count, sizes and session; fills *blocks, *scope
  // and *total (payload bytes).
  // A one-call BeginPut's payloads and checksums: one each per block, each payload of its
  // block's size (INVALID_ARGUMENT naming the field otherwise).
  absl::Status CheckOneCallPayloads(const v1::BeginPutRequest& req) const;
  absl::Status ParsePutBlocks(uint64_t namespace_id, const std::string& scope_in,
                              const google::protobuf::RepeatedPtrField<v1::PutBlock>& raw,
                              const std::string& session_id,
                              std::vector<WarmTier::PutBlock>* blocks, std::string* scope,
                              uint64_t* total);
  // GetData's steps for the blocks of one scope group: pin what is warm, stage cool/cold
  // blocks in the arena and pin those, read the rest inline; fills *status and *meta at the
  // group's positions and adds the leases taken. Staging waits for room behind writers until
  // `deadline` at most.
  // Inline bytes are held against max_inflight_bytes in `held`; when they do not fit, the
  // blocks that would have gone inline are RESOURCE_EXHAUSTED and the rest are served.
  void ServeGroup(const v1::GetDataRequest& req, const ScopeGroup& g, uint64_t ttl,
                  absl::Time deadline, v1::GetDataResponse* resp, std::vector<absl::Status>* status,
                  std::vector<WarmTier::BlockMeta>* meta, std::vector<uint64_t>* leases,
                  std::vector<std::unique_ptr<InflightBytes>>* held);
  // Receives the tagged messages of a refused two-sided PutData into the discard buffer, for
  // a short while at most; the sweep drops what has not come by then.
  void ConsumeTagged(const grpc::ServerContext* ctx, const v1::PutDataRequest& req,
                     absl::Time deadline);
  // The transfer deadline of a data call: the client's, capped at what the node allows.
  absl::Time TransferDeadline(const grpc::ServerContext* ctx) const;

  // FAILED_PRECONDITION when a request routed by an older member-set epoch than the node's.
  absl::Status CheckEpoch(uint64_t epoch) const;
  // Takes `keys` blocks of the caller's tenant's tenant_lookup_rate: every read that tells
  // whether blocks exist (Lookup, BeginGet, GetData, Prefetch) does, so no call probes past
  // the rate. The cluster principal (admin, with auth required) is not limited.
  // RESOURCE_EXHAUSTED, counted as a denial, when the bucket is short.
  absl::Status TakeLookupBudget(const Principal& who, size_t keys);
  // Takes a place of the caller's tenant's tenant_data_calls into *slot (auth required; not
  // for admins, nor a caller with no principal, whose call is refused anyway):
  // RESOURCE_EXHAUSTED, counted as a denial, when the tenant has its cap in progress.
  absl::Status EnterDataCall(const Principal& who, TenantCalls::Slot* slot);
  // The gate of a call's disk reads (TieredStore::BeginGet): DEADLINE_EXCEEDED once
  // `deadline` passed or the caller (ctx, if given) went; RESOURCE_EXHAUSTED when
  // max_inflight_bytes has no room for a read's buffers (the stored value and the block,
  // 2 × block_bytes; 0: a call whose payload hold covers them), which the first read takes
  // into *room for the rest of the call.
  TieredStore::DiskReadGate DiskReadGate(grpc::ServerContext* ctx, absl::Time deadline,
                                         uint64_t block_bytes, std::optional<InflightBytes>* room);

  const NodeConfig config_;
  const std::shared_ptr<const Authenticator> auth_;
  Admission admission_;
  LookupRateLimiter lookup_limiter_;
  TenantCalls tenant_data_calls_;
  // Set once a block or directory entry was written to `shared` (or found there at start):
  // until then private reads skip the shared probe.
  std::atomic<bool> shared_used_{false};
  // New namespaces each tenant added since the node started (tenant_namespaces; auth required,
  // admins not counted): max_namespaces is the node's, shared by every tenant.
  absl::Mutex tenant_namespaces_mu_;
  absl::flat_hash_map<std::string, uint64_t> tenant_namespaces_
      ABSL_GUARDED_BY(tenant_namespaces_mu_);
  std::atomic<const cluster::Membership*> membership_{nullptr};
  std::atomic<const Rebalancer*> rebalancer_{nullptr};
  Directory directory_;
  CancelWatch cancel_watch_;  // PutData and GetData: their transfers end when the client cancels
  TieredStore* const store_;
  DataPlane* const data_plane_;
  NodeMetrics* const metrics_;
};

}  // namespace strata::storenode
