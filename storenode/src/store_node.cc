#include "strata/storenode/store_node.h"

#include <malloc.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <fstream>
#include <iterator>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/resource_quota.h"
#include "metrics.h"
#include "rebalancer.h"
#include "spdlog/spdlog.h"
#include "store_service.h"
#include "strata/common/byte_size.h"
#include "strata/common/codec.h"
#include "strata/common/cpus.h"
#include "strata/common/http_endpoint.h"
#include "strata/common/listener_watch.h"
#include "strata/common/memory_limit.h"
#include "strata/common/random.h"
#include "strata/proto/server_connections.h"
#include "strata/proto/tls_files.h"
#include "strata/storenode/tiered_store.h"
#include "strata/transport/data_plane.h"

namespace strata::storenode {
namespace {

// Insecure without tls_cert; TLS, and with tls_client_ca mutual TLS (client certificates
// requested, or required with tls_require_client_cert, and verified against that CA).
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> ServerCredentials(const NodeConfig& c) {
  return proto::ServerTlsCredentials(c.tls_cert, c.tls_key, c.tls_client_ca,
                                     c.tls_require_client_cert);
}

// Writes atomically (temp file + rename) so a watcher never reads half a file.
absl::Status WritePortFile(const std::string& path, const std::string& grpc_addr,
                           const std::string& http_addr) {
  std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << "grpc=" << grpc_addr << "\nhttp=" << http_addr << "\n";
    if (!out.good()) return absl::InternalError(absl::StrCat("port_file: cannot write ", tmp));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    return absl::InternalError(absl::StrCat("port_file: cannot rename to ", path));
  }
  return absl::OkStatus();
}

class StoreNodeImpl final : public StoreNode {
 public:
  StoreNodeImpl(const NodeConfig& config, std::unique_ptr<TieredStore> warm,
                std::unique_ptr<DataPlane> data_plane, std::shared_ptr<Authenticator> auth,
                std::vector<int> ucx_ports)
      : config_(config),
        warm_(std::move(warm)),
        data_plane_(std::move(data_plane)),
        auth_(std::move(auth)),
        metrics_(config.node_id),
        service_(config, warm_.get(), data_plane_.get(), &metrics_, auth_),
        ucx_ports_(std::move(ucx_ports)) {}

  ~StoreNodeImpl() override { Shutdown(); }

  absl::Status Init() {
    grpc::ServerBuilder builder;
    int port = 0;
    absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> creds = ServerCredentials(config_);
    if (!creds.ok()) return creds.status();
    builder.AddListeningPort(config_.listen, *creds, &port);
    builder.RegisterService(&service_);
    // Room for a full inline batch plus per-block framing.
    int max_msg =
        static_cast<int>(config_.max_inline_bytes + (1 << 20) + config_.max_keys_per_call * 128);
    builder.SetMaxReceiveMessageSize(max_msg);
    builder.SetMaxSendMessageSize(max_msg);
    // gRPC's own memory and threads are bounded too: past them it refuses calls itself
    // (RESOURCE_EXHAUSTED) instead of growing. The service counts calls exactly
    // (max_concurrent_calls); the 8 extra threads keep the pollers and those refusals going.
    grpc::ResourceQuota quota("strata-node");
    quota.Resize(config_.grpc_memory_bytes);
    quota.SetMaxThreads(static_cast<int>(config_.max_concurrent_calls) + 8);
    builder.SetResourceQuota(quota);
    proto::BoundServerConnections(builder);
    server_ = builder.BuildAndStart();
    if (server_ == nullptr || port == 0) {
      return absl::UnavailableError(absl::StrCat("listen: cannot serve gRPC on ", config_.listen));
    }
    // gRPC stops accepting on a port for good after an accept error such as EMFILE, and UCX
    // closes its TCP listener: the node then says so on /healthz rather than look healthy to
    // a probe (listener_watch.h).
    std::vector<int> watched = ucx_ports_;
    watched.push_back(port);
    listener_watch_ = ListenerWatch::Start(std::move(watched));
    grpc_address_ = absl::StrCat(config_.listen.substr(0, config_.listen.rfind(':')), ":", port);
    if (absl::Status s = JoinCluster(); !s.ok()) return s;

    absl::StatusOr<std::unique_ptr<HttpEndpoint>> http = HttpEndpoint::Start(
        config_.http_listen,
        {[this] { return metrics_.Render(warm_->Stats(), ClusterNow(), warm_->ScopeBytes()); },
         [this] { return ready_.load(); },
         [this] {
           if (std::string why = listener_watch_->Broken(); !why.empty()) return why;
           const uint64_t wedged = data_plane_ != nullptr ? data_plane_->lanes_wedged() : 0;
           return wedged == 0 ? std::string()
                              : absl::StrCat(wedged,
                                             " UCX lanes wedged and not replaced "
                                             "(ucx_max_replaced_lanes reached, or no new worker)");
         }});
    if (!http.ok()) return http.status();
    http_ = std::move(*http);

    reaper_ = std::thread([this] { ReapLoop(); });
    if (!config_.port_file.empty()) {
      if (absl::Status s = WritePortFile(config_.port_file, grpc_address_, http_->address());
          !s.ok()) {
        return s;
      }
    }
    ready_ = true;
    spdlog::info("node {} serving grpc={} http={} warm={} max_block={}", config_.node_id,
                 grpc_address_, http_->address(),
                 FormatByteSize(warm_->Stats().warm.capacity_bytes),
                 FormatByteSize(config_.max_block_bytes));
    return absl::OkStatus();
  }

  absl::Status ReloadPrincipals() override {
    absl::Status s = auth_->Reload();
    if (s.ok()) {
      spdlog::info("principals reloaded");
    } else {
      spdlog::error("principals not reloaded, the old ones stay: {}", s.ToString());
    }
    return s;
  }

  const std::string& grpc_address() const override { return grpc_address_; }
  const std::string& http_address() const override { return http_->address(); }

  void Shutdown() override {
    if (shut_down_.exchange(true)) return;
    ready_ = false;
    // Leave first, so clients route around this node while it drains.
    if (membership_ != nullptr) membership_->Leave();
    if (rebalancer_ != nullptr) rebalancer_->Stop();
    if (listener_watch_ != nullptr) listener_watch_->Stop();  // the listeners close on purpose
    if (server_ != nullptr) {
      auto deadline =
          std::chrono::system_clock::now() + std::chrono::milliseconds(config_.drain_timeout_ms);
      server_->Shutdown(deadline);  // waits for in-flight calls, cancels them at the deadline
      server_->Wait();
      spdlog::debug("grpc server stopped");
    }
    stop_reaper_.Notify();
    if (reaper_.joinable()) reaper_.join();
    http_.reset();
    spdlog::debug("http endpoint stopped");
    WarmTierStats s = warm_->Stats().warm;
    spdlog::info("node {} stopped: {} blocks ({}) held, {} hits, {} misses, {} evictions",
                 config_.node_id, s.blocks, FormatByteSize(s.payload_bytes), s.hits, s.misses,
                 s.evictions);
  }

 private:
  ClusterFigures ClusterNow() const {
    ClusterFigures c;
    const cluster::Membership* m = membership_ready_.load();
    if (m == nullptr) return c;
    std::shared_ptr<const cluster::MemberSet> set = m->Current();
    c.members = set->members.size();
    c.members_placing_otherwise = cluster::MembersPlacingOtherwise(set->members).size();
    c.replicas_kept =
        cluster::ReplicasKept(set->members, static_cast<int>(config_.cluster_replicas));
    c.epoch = set->epoch;
    c.uses_etcd = m->mode() == cluster::MembershipMode::kEtcd;
    c.etcd_connected = m->connected();
    if (const Rebalancer* r = rebalancer_ready_.load(); r != nullptr) c.rebalance = r->progress();
    return c;
  }

  // Starts membership in the configured mode with this node as a member.
  absl::Status JoinCluster() {
    absl::StatusOr<cluster::MembershipMode> mode =
        cluster::ParseMembershipMode(config_.cluster_mode);
    if (!mode.ok()) return mode.status();
    const TieredStats ts = warm_->Stats();
    cluster::MembershipOptions mo;
    mo.mode = *mode;
    mo.cluster = config_.cluster_name;
    mo.self = cluster::Member{
        .id = config_.node_id,
        .address = config_.advertise_address.empty() ? grpc_address_ : config_.advertise_address,
        .zone = config_.zone,
        .warm_bytes = ts.warm.capacity_bytes,
        .cool_bytes = ts.cool.has_value() ? ts.cool->capacity_bytes : 0,
        .cold_bytes = ts.cold.has_value() ? ts.cold->capacity_bytes : 0,
        .replicas = static_cast<uint32_t>(config_.cluster_replicas)};
    if (*mode != cluster::MembershipMode::kSingle && mo.self->address.starts_with("0.0.0.0:")) {
      spdlog::warn("listening on {} without advertise_address: peers cannot dial {}",
                   config_.listen, mo.self->address);
    }
    if (*mode == cluster::MembershipMode::kStatic) {
      absl::StatusOr<std::vector<cluster::Member>> members =
          cluster::ParseStaticMembers(config_.cluster_members);
      if (!members.ok()) return members.status();
      mo.static_members = *std::move(members);
    }
    if (*mode == cluster::MembershipMode::kEtcd) {
      for (absl::string_view e :
           absl::StrSplit(config_.etcd_endpoints, ',', absl::SkipWhitespace())) {
        mo.etcd_endpoints.push_back(std::string(absl::StripAsciiWhitespace(e)));
      }
      mo.lease_ttl = absl::Milliseconds(config_.etcd_lease_ms);
      mo.startup_timeout = absl::Milliseconds(config_.etcd_startup_ms);
      spdlog::info("cluster {}: joining through etcd at {} (waiting up to {} for it)",
                   config_.cluster_name, config_.etcd_endpoints,
                   absl::FormatDuration(mo.startup_timeout));
    }
    absl::StatusOr<std::unique_ptr<cluster::Membership>> m = cluster::Membership::Start(mo);
    if (!m.ok()) return m.status();
    membership_ = std::move(*m);
    service_.SetMembership(membership_.get());
    membership_ready_.store(membership_.get());
    std::shared_ptr<const cluster::MemberSet> set = membership_->Current();
    spdlog::info("cluster {} ({}): {} members, epoch {}", config_.cluster_name,
                 cluster::MembershipModeName(*mode), set->members.size(), set->epoch);
    if (*mode != cluster::MembershipMode::kSingle) {
      rebalancer_ = std::make_unique<Rebalancer>(
          RebalancerOptions{
              .replicas = static_cast<int>(config_.cluster_replicas),
              .settle = absl::Milliseconds(config_.rebalance_settle_ms),
              .interval = absl::Milliseconds(config_.rebalance_interval_ms),
              .batch_bytes = config_.rebalance_batch_bytes != 0
                                 ? config_.rebalance_batch_bytes
                                 : std::max<uint64_t>(64ull << 20, config_.max_block_bytes),
              .token = config_.cluster_token,
              .tls_ca = config_.tls_client_ca,
              .tls_cert = config_.tls_cert,
              .tls_key = config_.tls_key},
          warm_.get(), membership_.get(), config_.node_id);
      service_.SetRebalancer(rebalancer_.get());
      rebalancer_ready_.store(rebalancer_.get());
    }
    WarnOfOtherPlacement(*membership_->Current());
    WarnOfOtherReplicas(*membership_->Current());
    membership_->OnChange([this](const cluster::MemberSet& now) {
      spdlog::info("member set changed: {} members, epoch {}", now.members.size(), now.epoch);
      WarnOfOtherPlacement(now);
      WarnOfOtherReplicas(now);
      if (rebalancer_ != nullptr) rebalancer_->OnMemberSet(now);
    });
    return absl::OkStatus();
  }

  // Members of another placement scheme own other blocks for the same hash: reads miss across
  // the two groups, and the rebalancer waits (docs/design/cluster.md, "Placement"). Logged
  // when the list of such members changes.
  void WarnOfOtherPlacement(const cluster::MemberSet& set) {
    std::vector<std::string> others = cluster::MembersPlacingOtherwise(set.members);
    absl::MutexLock lock(&disagreement_mu_);
    if (others == placing_otherwise_) return;
    placing_otherwise_ = others;
    if (others.empty()) {
      spdlog::info("every member places blocks by placement scheme {} again",
                   cluster::kPlacementScheme);
      return;
    }
    spdlog::error(
        "members {} record no placement scheme or another one than this node's ({}): they "
        "may own other blocks for the same hash, so reads between them can miss; the "
        "rebalancer moves nothing until every node records the same scheme (upgrade all nodes "
        "of a cluster together)",
        absl::StrJoin(others, ", "), cluster::kPlacementScheme);
  }

  // Members configured for another cluster_replicas than the largest: every rebalancer keeps
  // the largest meanwhile (docs/design/cluster.md, "Replication factor"). Logged when the
  // list changes.
  void WarnOfOtherReplicas(const cluster::MemberSet& set) {
    const int own = static_cast<int>(config_.cluster_replicas);
    std::vector<std::string> differ = cluster::MembersKeepingOtherReplicas(set.members, own);
    absl::MutexLock lock(&disagreement_mu_);
    if (differ == other_replicas_) return;
    other_replicas_ = differ;
    const int kept = cluster::ReplicasKept(set.members, own);
    if (differ.empty()) {
      spdlog::info("every member records cluster_replicas {}", kept);
      return;
    }
    spdlog::warn(
        "members {} record fewer cluster_replicas than the largest ({}; this node: {}): the "
        "rebalancer keeps {} copies of every block until every node is configured alike",
        absl::StrJoin(differ, ", "), kept, own, kept);
  }

  void ReapLoop() {
    absl::Time directory_swept = absl::Now();
    absl::Time unclaimed_swept = absl::Now();
    uint64_t dropped_counted = 0;
    while (!stop_reaper_.WaitForNotificationWithTimeout(
        absl::Milliseconds(config_.reaper_interval_ms))) {
      // Expired directory entries are invisible at once; their memory goes once a second.
      if (absl::Now() - directory_swept >= absl::Seconds(1)) {
        service_.ExpireDirectory();
        directory_swept = absl::Now();
        // Free pages inside malloc's arenas (payload buffers of finished calls) go back to
        // the system, so RSS follows the memory in use rather than its peak.
        malloc_trim(0);
      }
      if (uint64_t n = warm_->ExpireNow(); n > 0) {
        spdlog::debug("expired {} leases/reservations", n);
      }
      if (data_plane_ != nullptr) {
        if (uint64_t n = data_plane_->CloseIdle(); n > 0) {
          spdlog::info("closed {} idle data channels", n);
        }
        if (absl::Now() - unclaimed_swept >= absl::Seconds(1)) {
          data_plane_->SweepUnclaimed();
          unclaimed_swept = absl::Now();
        }
        const uint64_t dropped = data_plane_->unclaimed_dropped();
        metrics_.AddUnclaimedDropped(dropped - dropped_counted);
        dropped_counted = dropped;
      }
    }
  }

  const NodeConfig config_;
  std::unique_ptr<TieredStore> warm_;
  std::unique_ptr<DataPlane> data_plane_;  // after warm_: destroyed before the arena it maps
  std::shared_ptr<Authenticator> auth_;
  NodeMetrics metrics_;
  StoreServiceImpl service_;
  std::unique_ptr<grpc::Server> server_;
  // Read by service_ calls; destroyed only after Shutdown stopped the server.
  std::unique_ptr<cluster::Membership> membership_;
  std::unique_ptr<Rebalancer> rebalancer_;  // after membership_: destroyed first
  // What WarnOfOtherPlacement and WarnOfOtherReplicas logged last.
  absl::Mutex disagreement_mu_;
  std::vector<std::string> placing_otherwise_ ABSL_GUARDED_BY(disagreement_mu_);
  std::vector<std::string> other_replicas_ ABSL_GUARDED_BY(disagreement_mu_);
  // For the HTTP thread, which starts serving before the cluster is joined.
  std::atomic<const cluster::Membership*> membership_ready_{nullptr};
  std::atomic<const Rebalancer*> rebalancer_ready_{nullptr};
  std::vector<int> ucx_ports_;  // the TCP ports the data plane's UCX workers listen on
  std::unique_ptr<ListenerWatch> listener_watch_;  // before http_, whose /healthz reads it
  std::unique_ptr<HttpEndpoint> http_;
  std::string grpc_address_;
  std::thread reaper_;
  absl::Notification stop_reaper_;
  std::atomic<bool> ready_{false};
  std::atomic<bool> shut_down_{false};
};

}  // namespace

absl::StatusOr<std::unique_ptr<StoreNode>> StoreNode::Start(const NodeConfig& config) {
  if (absl::Status s = ValidateNodeConfig(config); !s.ok()) return s;
  if (absl::Status s = CheckRandomSource(); !s.ok()) return s;
  // The arena is mapped without reserving memory: a warm tier larger than what this process
  // may use would start, report ready and be killed by the kernel as it filled.
  if (const uint64_t usable = UsableMemoryBytes(); usable > 0) {
    if (config.warm_bytes > usable) {
      return absl::InvalidArgumentError(
          absl::StrCat("warm_bytes: ", FormatByteSize(config.warm_bytes),
                       " exceeds the memory this process may use (", FormatByteSize(usable),
                       ": the machine's, or its cgroup's limit)"));
    }
    const uint64_t wanted =
        config.warm_bytes + config.max_inflight_bytes + config.grpc_memory_bytes;
    if (wanted > usable) {
      spdlog::warn(
          "warm_bytes + max_inflight_bytes + grpc_memory_bytes = {} of {} this process may use: "
          "leave room for the disk tiers' indexes and RocksDB, or the kernel may kill the node",
          FormatByteSize(wanted), FormatByteSize(usable));
    }
  }
  TieredStoreOptions opts;
  opts.warm.capacity_bytes = config.warm_bytes;
  opts.warm.max_block_bytes = config.max_block_bytes;
  // No block takes more than the largest block would.
  const uint64_t min_charge = std::min(config.min_block_charge, config.max_block_bytes);
  opts.warm.min_slot_bytes = min_charge;
  opts.warm.max_namespaces = config.max_namespaces;
  opts.warm.tombstone_ttl_ms = static_cast<int64_t>(config.tombstone_ttl_ms);
  opts.warm.tombstone_capacity = config.tombstone_capacity;
  opts.warm.max_held_leases = config.max_leases;
  opts.warm.max_held_bytes = config.max_lease_bytes;
  opts.warm.prefault = config.warm_prefault;
  opts.warm.policy = *ParsePolicyKind(config.warm_policy);
  // Per-tenant values come from the principals file once the authenticator has read it.
  auto quotas = std::make_shared<TenantQuotas>(std::array<uint64_t, 3>{
      config.tenant_warm_quota, config.tenant_cool_quota, config.tenant_cold_quota});
  auto quota_of = [quotas](TenantQuotas::Tier tier) {
    return [quotas, tier](const std::string& scope) { return quotas->For(scope, tier); };
  };
  opts.warm.scope_quota = quota_of(TenantQuotas::kWarm);
  auto disk_tier = [&](const char* name, const std::string& path, uint64_t bytes,
                       const std::string& codec, const std::string& policy) {
    DiskTierOptions d;
    d.name = name;
    d.path = path;
    d.capacity_bytes = bytes;
    d.min_block_charge = min_charge;
    d.codec = *ParseCodec(codec);  // validated by ValidateNodeConfig
    d.sync_writes = config.sync_writes;
    d.policy = *ParsePolicyKind(policy);
    return d;
  };
  if (!config.cool_path.empty()) {
    opts.cool = disk_tier("cool", config.cool_path, config.cool_bytes, config.cool_codec,
                          config.cool_policy);
    opts.cool->scope_quota = quota_of(TenantQuotas::kCool);
  }
  if (!config.cold_path.empty()) {
    opts.cold = disk_tier("cold", config.cold_path, config.cold_bytes, config.cold_codec,
                          config.cold_policy);
    opts.cold->scope_quota = quota_of(TenantQuotas::kCold);
  }
  opts.warm_high_watermark = config.warm_high_watermark_pct / 100.0;
  opts.warm_low_watermark = config.warm_low_watermark_pct / 100.0;
  opts.disk_high_watermark = config.disk_high_watermark_pct / 100.0;
  opts.disk_low_watermark = config.disk_low_watermark_pct / 100.0;
  opts.promote_on_get = config.promote_on_get;
  opts.session_idle_ms = config.session_idle_ms;
  spdlog::info("eviction policies: warm {}, cool {}, cold {}", config.warm_policy,
               config.cool_path.empty() ? "-" : config.cool_policy,
               config.cold_path.empty() ? "-" : config.cold_policy);
  absl::StatusOr<std::unique_ptr<TieredStore>> warm = TieredStore::Create(std::move(opts));
  if (!warm.ok()) return warm.status();
  std::unique_ptr<DataPlane> data_plane;
  std::vector<int> ucx_ports;
  if (!config.ucx_tls.empty()) {
    DataPlaneOptions dp;
    dp.tls = config.ucx_tls;
    const uint32_t cpus = UsableCpus();
    dp.lanes = config.ucx_lanes != 0 ? static_cast<uint32_t>(config.ucx_lanes) : AutoUcxLanes(cpus);
    spdlog::info("ucx lanes: {}{}", dp.lanes,
                 config.ucx_lanes != 0 ? std::string()
                                       : absl::StrCat(" (ucx_lanes 0: ", cpus, " usable CPUs)"));
    dp.max_channels = config.max_data_channels;
    dp.max_channels_per_owner = config.tenant_data_channels;
    dp.unclaimed_timeout = absl::Milliseconds(config.ucx_unclaimed_timeout_ms);
    dp.max_replaced_lanes = static_cast<uint32_t>(config.ucx_max_replaced_lanes);
    dp.max_block_bytes = config.max_block_bytes;
    const std::vector<int> before = ListeningPorts();
    absl::StatusOr<std::unique_ptr<DataPlane>> plane =
        DataPlane::Create(dp, (*warm)->arena_base(), (*warm)->arena_bytes());
    if (!plane.ok()) return plane.status();
    data_plane = std::move(*plane);
    const std::vector<int> after = ListeningPorts();
    std::set_difference(after.begin(), after.end(), before.begin(), before.end(),
                        std::back_inserter(ucx_ports));
  }
  absl::StatusOr<std::unique_ptr<Authenticator>> auth = Authenticator::Create(
      config.auth_mode, config.auth_principals_file, config.cluster_token, quotas);
  if (!auth.ok()) return auth.status();
  auto node = std::make_unique<StoreNodeImpl>(config, std::move(*warm), std::move(data_plane),
                                              std::move(*auth), std::move(ucx_ports));
  if (absl::Status s = node->Init(); !s.ok()) return s;
  return node;
}

}  // namespace strata::storenode
