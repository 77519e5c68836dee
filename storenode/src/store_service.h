// StoreServiceImpl: the gRPC face of a store node. Validates every request against the
// node's limits (naming the offending field), then calls the TieredStore. Per-block outcomes go
// back as BlockStatus; whole-call failures as the gRPC status.
//
// Thread-safe: gRPC calls the methods from its own thread pool.
#pragma once

#include <atomic>

#include "directory.h"
#include "metrics.h"
#include "rebalancer.h"
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
  // data_plane may be null (no UCX): the data RPCs then answer FAILED_PRECONDITION.
  StoreServiceImpl(const NodeConfig& config, TieredStore* store, DataPlane* data_plane,
                   NodeMetrics* metrics);
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
  // Checks namespace, scope, key count and hash lengths; fills *hashes and *scope.
  absl::Status ValidateKeys(uint64_t namespace_id, const std::string& scope_in,
                            const google::protobuf::RepeatedPtrField<std::string>& raw,
                            const char* field, std::vector<ChainHash>* hashes, std::string* scope,
                            NamespaceSpec* spec);
  absl::Status ValidateTtl(uint32_t ttl_ms, const char* field) const;
  // A routed request's epoch (CheckEpoch), then its namespace, scope and chain_hashes
  // (ValidateKeys).
  template <typename Request>
  absl::Status RoutedKeys(const Request& req, std::vector<ChainHash>* hashes, std::string* scope) {
    if (absl::Status s = CheckEpoch(req.epoch()); !s.ok()) return s;
    return ValidateKeys(req.namespace_id(), req.scope(), req.chain_hashes(), "chain_hashes", hashes,
                        scope, nullptr);
  }
  // Checks a put's namespace, scope, block count, sizes and session; fills *blocks, *scope
  // and *total (payload bytes).
  absl::Status ParsePutBlocks(uint64_t namespace_id, const std::string& scope_in,
                              const google::protobuf::RepeatedPtrField<v1::PutBlock>& raw,
                              const std::string& session_id,
                              std::vector<WarmTier::PutBlock>* blocks, std::string* scope,
                              uint64_t* total);
  // Receives every tagged message of a refused two-sided PutData into the discard buffer.
  void ConsumeTagged(const v1::PutDataRequest& req, absl::Time deadline);
  // The transfer deadline of a data call: the client's, capped at what the node allows.
  absl::Time TransferDeadline(const grpc::ServerContext* ctx) const;

  // FAILED_PRECONDITION when a request routed by an older member-set epoch than the node's.
  absl::Status CheckEpoch(uint64_t epoch) const;

  const NodeConfig config_;
  std::atomic<const cluster::Membership*> membership_{nullptr};
  std::atomic<const Rebalancer*> rebalancer_{nullptr};
  Directory directory_;
  TieredStore* const store_;
  DataPlane* const data_plane_;
  NodeMetrics* const metrics_;
};

}  // namespace strata::storenode
