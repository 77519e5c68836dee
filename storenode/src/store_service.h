// StoreServiceImpl: the gRPC face of a store node. Validates every request against the
// node's limits (naming the offending field), then calls the TieredStore. Per-block outcomes go
// back as BlockStatus; whole-call failures as the gRPC status.
//
// Thread-safe: gRPC calls the methods from its own thread pool.
#pragma once

#include <atomic>

#include "metrics.h"
#include "strata/storenode/node_config.h"
#include "strata/storenode/tiered_store.h"
#include "strata/v1/store.grpc.pb.h"

namespace strata::storenode {

class StoreServiceImpl final : public strata::v1::StoreService::Service {
 public:
  StoreServiceImpl(const NodeConfig& config, TieredStore* store, NodeMetrics* metrics);

  grpc::Status RegisterNamespace(grpc::ServerContext*, const v1::RegisterNamespaceRequest*,
                                 v1::RegisterNamespaceResponse*) override;
  grpc::Status Lookup(grpc::ServerContext*, const v1::LookupRequest*, v1::LookupResponse*) override;
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

 private:
  // Checks namespace, scope, key count and hash lengths; fills *hashes and *scope.
  absl::Status ValidateKeys(uint64_t namespace_id, const std::string& scope_in,
                            const google::protobuf::RepeatedPtrField<std::string>& raw,
                            const char* field, std::vector<ChainHash>* hashes, std::string* scope,
                            NamespaceSpec* spec);
  absl::Status ValidateTtl(uint32_t ttl_ms, const char* field) const;

  const NodeConfig config_;
  TieredStore* const store_;
  NodeMetrics* const metrics_;
};

}  // namespace strata::storenode
