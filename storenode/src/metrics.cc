#include "metrics.h"

#include <algorithm>
#include <vector>

#include "prometheus/text_serializer.h"

namespace strata::storenode {

const char* OpName(Op op) {
  switch (op) {
    case Op::kRegisterNamespace:
      return "register_namespace";
    case Op::kLookup:
      return "lookup";
    case Op::kBeginPut:
      return "begin_put";
    case Op::kCommitPut:
      return "commit_put";
    case Op::kAbortPut:
      return "abort_put";
    case Op::kBeginGet:
      return "begin_get";
    case Op::kEndGet:
      return "end_get";
    case Op::kConnectData:
      return "connect_data";
    case Op::kCloseData:
      return "close_data";
    case Op::kPutData:
      return "put_data";
    case Op::kGetData:
      return "get_data";
    case Op::kDelete:
      return "delete";
    case Op::kStats:
      return "stats";
    case Op::kInjectFault:
      return "inject_fault";
    case Op::kPauseSession:
      return "pause_session";
    case Op::kResumeSession:
      return "resume_session";
    case Op::kPrefetch:
      return "prefetch";
    case Op::kPublish:
      return "publish";
    case Op::kCount:
      break;
  }
  return "unknown";
}

NodeMetrics::NodeMetrics(std::string node_id)
    : node_id_(std::move(node_id)), registry_(std::make_shared<prometheus::Registry>()) {
  latency_ = &prometheus::BuildHistogram()
                  .Name("strata_op_latency_seconds")
                  .Help("Store-node call latency by operation")
                  .Register(*registry_);
  errors_ = &prometheus::BuildCounter()
                 .Name("strata_op_errors_total")
                 .Help("Calls that failed, by operation and status code")
                 .Register(*registry_);
  bytes_ = &prometheus::BuildCounter()
                .Name("strata_transfer_bytes_total")
                .Help("Payload bytes moved, by transport and direction")
                .Register(*registry_);
  tenant_denied_ = &prometheus::BuildCounter()
                        .Name("strata_tenant_denied_total")
                        .Help(
                            "Calls refused by authentication, authorization or limits, by "
                            "tenant and status code")
                        .Register(*registry_);
  tenant_lookup_ = &prometheus::BuildCounter()
                        .Name("strata_tenant_lookup_blocks_total")
                        .Help("Blocks asked for by Lookup, by tenant and result (hit, miss)")
                        .Register(*registry_);
  // 50 us .. ~3 s, doubling.
  prometheus::Histogram::BucketBoundaries buckets;
  for (double b = 50e-6; b < 4.0; b *= 2) buckets.push_back(b);
  for (int i = 0; i < static_cast<int>(Op::kCount); ++i) {
    op_latency_[i] = &latency_->Add({{"op", OpName(static_cast<Op>(i))}}, buckets);
  }
  bytes_in_ = &bytes_->Add({{"transport", "grpc_inline"}, {"direction", "in"}});
  bytes_out_ = &bytes_->Add({{"transport", "grpc_inline"}, {"direction", "out"}});
  ucx_in_ = &bytes_->Add({{"transport", "ucx"}, {"direction", "in"}});
  ucx_out_ = &bytes_->Add({{"transport", "ucx"}, {"direction", "out"}});
  unclaimed_dropped_ = &prometheus::BuildCounter()
                            .Name("strata_ucx_unclaimed_messages_dropped_total")
                            .Help(
                                "Clients' UCX messages dropped because no call claimed them "
                                "(refused or lost calls, closed channels)")
                            .Register(*registry_)
                            .Add({});
  checked_on_landing_ = &prometheus::BuildCounter()
                             .Name("strata_ucx_put_blocks_checked_on_landing_total")
                             .Help(
                                 "Put blocks whose checksum was checked as they landed, while "
                                 "the rest of their call was in flight (the others: at commit)")
                             .Register(*registry_)
                             .Add({});
  trailing_checksums_ = &prometheus::BuildCounter()
                             .Name("strata_ucx_puts_with_trailing_checksums_total")
                             .Help(
                                 "PutData calls whose checksums came after their blocks "
                                 "(the client hashed while the node received)")
                             .Register(*registry_)
                             .Add({});
}

void NodeMetrics::AddUnclaimedDropped(uint64_t messages) {
  unclaimed_dropped_->Increment(static_cast<double>(messages));
}

void NodeMetrics::AddCheckedOnLanding(uint64_t blocks) {
  checked_on_landing_->Increment(static_cast<double>(blocks));
}

void NodeMetrics::AddTrailingChecksums() { trailing_checksums_->Increment(); }

void NodeMetrics::AddUcxBytes(bool inbound, uint64_t bytes) {
  (inbound ? ucx_in_ : ucx_out_)->Increment(static_cast<double>(bytes));
}

void NodeMetrics::Observe(Op op, double seconds, const absl::Status& status) {
  op_latency_[static_cast<int>(op)]->Observe(seconds);
  if (!status.ok()) {
    errors_->Add({{"op", OpName(op)}, {"code", absl::StatusCodeToString(status.code())}})
        .Increment();
  }
}

void NodeMetrics::AddDenied(const std::string& tenant, absl::StatusCode code) {
  tenant_denied_->Add({{"tenant", tenant}, {"code", absl::StatusCodeToString(code)}}).Increment();
}

void NodeMetrics::AddTenantLookup(const std::string& tenant, uint64_t hits, uint64_t misses) {
  if (hits > 0) tenant_lookup_->Add({{"tenant", tenant}, {"result", "hit"}}).Increment(hits);
  if (misses > 0) tenant_lookup_->Add({{"tenant", tenant}, {"result", "miss"}}).Increment(misses);
}

void NodeMetrics::AddInlineBytes(bool inbound, uint64_t bytes) {
  (inbound ? bytes_in_ : bytes_out_)->Increment(static_cast<double>(bytes));
}

namespace {

prometheus::MetricFamily Family(std::string name, std::string help, prometheus::MetricType type) {
  prometheus::MetricFamily f;
  f.name = std::move(name);
  f.help = std::move(help);
  f.type = type;
  return f;
}

void AddValue(prometheus::MetricFamily& f, double value,
              std::vector<prometheus::ClientMetric::Label> labels = {}) {
  prometheus::ClientMetric m;
  m.label = std::move(labels);
  if (f.type == prometheus::MetricType::Counter) {
    m.counter.value = value;
  } else {
    m.gauge.value = value;
  }
  f.metric.push_back(std::move(m));
}

}  // namespace

std::string NodeMetrics::Render(const TieredStats& ts, const ClusterFigures& c,
                                std::vector<ScopeUse> scopes) const {
  using prometheus::MetricType;
  const WarmTierStats& s = ts.warm;
  std::vector<prometheus::MetricFamily> families = registry_->Collect();
  std::vector<prometheus::ClientMetric::Label> warm = {{"tier", "warm"}};

  auto blocks = Family("strata_tier_blocks", "Blocks stored per tier", MetricType::Gauge);
  AddValue(blocks, s.blocks, warm);
  auto bytes = Family("strata_tier_bytes", "Payload bytes stored per tier", MetricType::Gauge);
  AddValue(bytes, s.payload_bytes, warm);
  auto disk_hits =
      Family("strata_tier_hits_total", "Blocks served from each lower tier", MetricType::Counter);
  auto moves = Family("strata_tier_moves_total", "Blocks moved between tiers", MetricType::Counter);
  AddValue(moves, s.demotions, {{"from", "warm"}, {"to", "cool"}});
  AddValue(moves, ts.cool_demotions, {{"from", "cool"}, {"to", "cold"}});
  AddValue(moves, ts.promotions, {{"from", "disk"}, {"to", "warm"}});
  auto prefetch =
      Family("strata_prefetch_blocks_total", "Blocks promoted by Prefetch, and what became of them",
             MetricType::Counter);
  AddValue(prefetch, ts.prefetched, {{"result", "promoted"}});
  AddValue(prefetch, s.prefetch_used, {{"result", "used"}});
  AddValue(prefetch, s.prefetch_wasted, {{"result", "wasted"}});
  auto codec =
      Family("strata_codec_bytes_total", "Bytes through the disk-tier codecs", MetricType::Counter);
  auto used = Family("strata_tier_used_bytes",
                     "Bytes taken per tier against its budget: warm slots (slack and reservations "
                     "included), disk stored bytes (each block at least min_block_charge)",
                     MetricType::Gauge);
  AddValue(used, s.used_bytes, warm);
  auto cap = Family("strata_tier_capacity_bytes", "Byte budget per tier", MetricType::Gauge);
  AddValue(cap, s.capacity_bytes, warm);
  for (auto [name, d, hits] :
       {std::tuple{"cool", &ts.cool, ts.cool_hits}, std::tuple{"cold", &ts.cold, ts.cold_hits}}) {
    if (!d->has_value()) continue;
    std::vector<prometheus::ClientMetric::Label> tier = {{"tier", name}};
    AddValue(blocks, (*d)->blocks, tier);
    AddValue(bytes, (*d)->payload_bytes, tier);
    AddValue(used, (*d)->charged_bytes, tier);
    AddValue(cap, (*d)->capacity_bytes, tier);
    AddValue(disk_hits, hits, tier);
    AddValue(codec, (*d)->codec_bytes_in, {{"tier", name}, {"direction", "in"}});
    AddValue(codec, (*d)->codec_bytes_out, {{"tier", name}, {"direction", "out"}});
  }
  auto hits =
      Family("strata_lookup_blocks_total", "Blocks asked for, by result", MetricType::Counter);
  AddValue(hits, s.hits, {{"result", "hit"}});
  AddValue(hits, s.misses, {{"result", "miss"}});
  auto ratio = Family("strata_prefix_hit_ratio", "Hits over blocks asked for since start",
                      MetricType::Gauge);
  uint64_t asked = s.hits + s.misses;
  AddValue(ratio, asked == 0 ? 0.0 : static_cast<double>(s.hits) / asked);
  auto evict = Family("strata_evictions_total", "Blocks evicted per tier", MetricType::Counter);
  AddValue(evict, s.evictions, warm);
  AddValue(evict, ts.disk_evictions, {{"tier", "disk"}});
  auto leases = Family("strata_leases_held", "Read leases held", MetricType::Gauge);
  AddValue(leases, s.leases);
  auto pinned = Family("strata_pinned_blocks",
                       "Blocks pinned by leases, and slots of aborted puts held in quarantine",
                       MetricType::Gauge);
  AddValue(pinned, s.pinned_blocks);
  auto res = Family("strata_reservations", "Open put reservations", MetricType::Gauge);
  AddValue(res, s.reservations);
  auto ns = Family("strata_namespaces", "Registered namespaces", MetricType::Gauge);
  AddValue(ns, s.namespaces);
  auto loss = Family("strata_data_loss_total", "Blocks dropped for failing their checksum",
                     MetricType::Counter);
  AddValue(loss,
           s.data_loss + (ts.cool ? ts.cool->data_loss : 0) + (ts.cold ? ts.cold->data_loss : 0));
  auto tombs = Family("strata_tombstones",
                      "Writers' deletes remembered so that copies do not bring blocks back",
                      MetricType::Gauge);
  AddValue(tombs, s.tombstones);
  auto refused = Family("strata_copies_refused_total",
                        "Copies (rebalancer, read-repair, promotion) of blocks a writer deleted "
                        "lately, refused or aborted",
                        MetricType::Counter);
  AddValue(refused, s.copies_refused);
  auto members =
      Family("strata_cluster_members", "Members of the cluster this node sees", MetricType::Gauge);
  AddValue(members, c.members);
  auto otherwise = Family("strata_cluster_members_placing_otherwise",
                          "Members that place blocks by another scheme than this node "
                          "(upgrade all nodes together; the rebalancer waits meanwhile)",
                          MetricType::Gauge);
  AddValue(otherwise, c.members_placing_otherwise);
  auto kept = Family("strata_cluster_replicas_kept",
                     "Copies of every block the rebalancer keeps: the largest "
                     "cluster_replicas of any member and this node's",
                     MetricType::Gauge);
  AddValue(kept, c.replicas_kept);
  auto epoch =
      Family("strata_cluster_epoch", "Member-set epoch this node knows", MetricType::Gauge);
  AddValue(epoch, c.epoch);
  auto etcd = Family("strata_etcd_connected",
                     "1 while etcd answers (etcd mode); 0: serving with the last member set",
                     MetricType::Gauge);
  if (c.uses_etcd) AddValue(etcd, c.etcd_connected ? 1 : 0);
  auto rebal = Family("strata_rebalance_blocks_total",
                      "Rebalancer: blocks copied to owners and "
                      "handed over (dropped here)",
                      MetricType::Counter);
  auto pending =
      Family("strata_rebalance_pending_blocks",
             "Blocks the running rebalance pass has still to examine", MetricType::Gauge);
  auto under =
      Family("strata_under_replicated_blocks",
             "Blocks the last rebalance pass found short of their replicas", MetricType::Gauge);
  auto passes =
      Family("strata_rebalance_passes_total", "Rebalance passes completed", MetricType::Counter);
  auto placements = Family("strata_rebalance_placement_changes_total",
                           "Member-set changes that placed blocks otherwise (or changed the "
                           "copies kept), each calling for a rebalance pass; an address or "
                           "epoch change does not",
                           MetricType::Counter);
  if (c.rebalance.has_value()) {
    AddValue(passes, c.rebalance->passes);
    AddValue(placements, c.rebalance->placement_changes);
    AddValue(rebal, c.rebalance->copied, {{"action", "copied"}});
    AddValue(rebal, c.rebalance->dropped, {{"action", "dropped"}});
    AddValue(pending, c.rebalance->pending);
    AddValue(under, c.rebalance->under_replicated);
  }
  auto tenant = Family("strata_tenant_bytes",
                       "Bytes each tenant's scope (and shared) holds per tier: warm slab bytes, "
                       "cool/cold stored bytes",
                       MetricType::Gauge);
  // Largest first within each tier; past kMaxTenantSeries per tier, one "(others)" line.
  std::sort(scopes.begin(), scopes.end(), [](const ScopeUse& a, const ScopeUse& b) {
    return a.tier != b.tier ? a.tier < b.tier : a.bytes > b.bytes;
  });
  for (size_t i = 0, rank = 0; i < scopes.size(); ++i) {
    rank = i > 0 && scopes[i].tier == scopes[i - 1].tier ? rank + 1 : 0;
    if (rank < kMaxTenantSeries) {
      AddValue(tenant, static_cast<double>(scopes[i].bytes),
               {{"tenant", scopes[i].scope}, {"tier", scopes[i].tier}});
      continue;
    }
    uint64_t rest = 0;
    size_t j = i;
    for (; j < scopes.size() && scopes[j].tier == scopes[i].tier; ++j) rest += scopes[j].bytes;
    AddValue(tenant, static_cast<double>(rest), {{"tenant", "(others)"}, {"tier", scopes[i].tier}});
    i = j - 1;
  }
  for (auto* f : {&blocks,  &bytes,     &used,    &cap,    &disk_hits, &moves, &prefetch, &codec,
                  &hits,    &ratio,     &evict,   &leases, &pinned,    &res,   &ns,       &loss,
                  &members, &otherwise, &kept,    &epoch,  &etcd,      &rebal, &pending,  &under,
                  &tenant,  &tombs,     &refused, &passes, &placements}) {
    families.push_back(std::move(*f));
  }
  for (auto& f : families) {
    for (auto& m : f.metric) m.label.push_back({"node", node_id_});
  }
  return prometheus::TextSerializer().Serialize(families);
}

}  // namespace strata::storenode
