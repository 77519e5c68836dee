// NodeMetrics: the node's Prometheus metrics. Operation latency histograms and error
// counters live in a prometheus-cpp registry; tier gauges and hit/eviction counters are read
// from WarmTier::Stats() at scrape time, so /metrics and the Stats call never disagree.
//
// Thread-safe.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"
#include "rebalancer.h"
#include "strata/storenode/tiered_store.h"

namespace strata::storenode {

enum class Op {
  kRegisterNamespace,
  kLookup,
  kBeginPut,
  kCommitPut,
  kAbortPut,
  kBeginGet,
  kEndGet,
  kDelete,
  kStats,
  kInjectFault,
  kPauseSession,
  kResumeSession,
  kPrefetch,
  kConnectData,
  kCloseData,
  kPutData,
  kGetData,
  kPublish,
  kCount
};

const char* OpName(Op op);

// What /metrics says about the cluster (store_node.cc fills it from membership and the
// rebalancer).
struct ClusterFigures {
  uint64_t members = 0;
  uint64_t members_placing_otherwise = 0;  // cluster::MembersPlacingOtherwise
  uint64_t replicas_kept = 0;              // cluster::ReplicasKept
  uint64_t epoch = 0;
  bool uses_etcd = false;
  bool etcd_connected = false;
  std::optional<RebalanceProgress> rebalance;  // nodes in static or etcd mode
};

class NodeMetrics {
 public:
  explicit NodeMetrics(std::string node_id);

  // Records one call: latency, and an error counter labelled by code when !status.ok().
  void Observe(Op op, double seconds, const absl::Status& status);
  // Counts payload bytes moved over the inline gRPC path.
  void AddInlineBytes(bool inbound, uint64_t bytes);
  // Counts payload bytes moved over the UCX data plane.
  void AddUcxBytes(bool inbound, uint64_t bytes);
  // Counts two-sided UCX messages dropped because no call claimed them.
  void AddUnclaimedDropped(uint64_t messages);
  // Counts put blocks whose checksum was checked as they landed, before the commit.
  void AddCheckedOnLanding(uint64_t blocks);
  // Counts PutData calls whose checksums came after their blocks (checksums_tag).
  void AddTrailingChecksums();
  // Per tenant (label `tenant`, "" when unauthenticated; never a secret): a refused call, by
  // code; a Lookup's hits and misses in blocks; a put refused by the tenant's quota.
  void AddDenied(const std::string& tenant, absl::StatusCode code);
  void AddTenantLookup(const std::string& tenant, uint64_t hits, uint64_t misses);

  // Prometheus text exposition of everything, with tier figures from `stats` and what each
  // scope holds from `scopes` (per tier the kMaxTenantSeries largest; the rest summed as
  // tenant "(others)", a name no scope can have, so the series stay bounded however many scopes
  // hold data).
  std::string Render(const TieredStats& stats, const ClusterFigures& cluster,
                     std::vector<ScopeUse> scopes = {}) const;
  static constexpr size_t kMaxTenantSeries = 100;

 private:
  std::string node_id_;
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Histogram>* latency_;
  prometheus::Family<prometheus::Counter>* errors_;
  prometheus::Family<prometheus::Counter>* bytes_;
  prometheus::Family<prometheus::Counter>* tenant_denied_;
  prometheus::Family<prometheus::Counter>* tenant_lookup_;
  prometheus::Histogram* op_latency_[static_cast<int>(Op::kCount)];
  prometheus::Counter* bytes_in_;
  prometheus::Counter* bytes_out_;
  prometheus::Counter* ucx_in_;
  prometheus::Counter* ucx_out_;
  prometheus::Counter* unclaimed_dropped_;
  prometheus::Counter* checked_on_landing_;
  prometheus::Counter* trailing_checksums_;
};

}  // namespace strata::storenode
