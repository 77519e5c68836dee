#include "strata/storenode/node_config.h"

#include <algorithm>
#include <tuple>
#include <utility>

#include "absl/strings/str_cat.h"
#include "strata/cluster/membership.h"
#include "strata/common/byte_size.h"
#include "strata/common/codec.h"
#include "strata/storenode/eviction_policy.h"

namespace strata::storenode {
namespace {

// rebalance_settle's ceiling: half the 10 minutes clients look for blocks at their earlier
// owners after a change (client/src/cluster_client.cc, kPreviousSetGrace).
constexpr uint64_t kMaxRebalanceSettleMs = 300000;

}  // namespace

void RegisterNodeOptions(ConfigSchema& s, NodeConfig* c) {
  s.AddString("node_id", &c->node_id, "Name of this node in logs, metrics and Stats.");
  s.AddString("listen", &c->listen, "gRPC listen address HOST:PORT (port 0: any free port).");
  s.AddString("http_listen", &c->http_listen,
              "HTTP address for /metrics, /healthz and /readyz (port 0: any free port).");
  s.AddString("port_file", &c->port_file,
              "If set, written once listening: lines grpc=HOST:PORT and http=HOST:PORT.");
  s.AddString("log_level", &c->log_level, "trace, debug, info, warn, error or off.");
  s.AddBytes("warm_bytes", &c->warm_bytes,
             "Size of the warm-tier DRAM arena (the node's memory budget for blocks).");
  s.AddBool("warm_prefault", &c->warm_prefault,
            "Touch every arena page at start so the budget is resident from the first put.");
  s.AddBytes("max_block_bytes", &c->max_block_bytes,
             "Largest block accepted; also the slab page size of the arena.");
  s.AddBytes("min_block_charge", &c->min_block_charge,
             "Least a block takes of its tier's budget (warm slot, cool/cold bytes), however "
             "small (at most max_block_bytes): bounds each tier's block count, so the RAM of its "
             "index (~0.6 KiB a block).");
  s.AddUint("max_keys_per_call", &c->max_keys_per_call, "Most blocks one call may name.");
  s.AddBytes("max_inline_bytes", &c->max_inline_bytes,
             "Most payload bytes one call may carry inline over gRPC.");
  s.AddUint("max_namespaces", &c->max_namespaces, "Most namespaces one node registers.");
  s.AddUint("tenant_namespaces", &c->tenant_namespaces,
            "New namespaces one tenant may register while the node runs, with auth_mode "
            "required (admins not counted; 0: up to max_namespaces).");
  s.AddString("ucx_tls", &c->ucx_tls,
              "UCX transports of the data plane (UCX_TLS): tcp, shm (posix,sysv,cma,self; "
              "co-located trusted clients), rc,sm ...; empty: inline gRPC payloads only.");
  s.AddUint("ucx_lanes", &c->ucx_lanes,
            "UCX workers (progress threads) carrying transfers, 1..64; 0: one per 4 usable "
            "CPUs (affinity mask and cgroup CPU limit), 1 to 4.");
  s.AddUint("max_data_channels", &c->max_data_channels, "Open UCX data channels at most.");
  s.AddUint("tenant_data_channels", &c->tenant_data_channels,
            "Open UCX data channels one tenant may hold with auth_mode required (0: up to "
            "max_data_channels): one tenant cannot lock the others out of the data plane.");
  s.AddUint("tenant_data_calls", &c->tenant_data_calls,
            "PutData and GetData calls one tenant may have in progress at once with auth_mode "
            "required, admins not counted (0: up to max_concurrent_calls): a client that stalls "
            "its transfers cannot hold every call slot of the node.");
  s.AddUint("ucx_unclaimed_timeout_ms", &c->ucx_unclaimed_timeout_ms,
            "A client's UCX message that no call claims for this long (its PutData never "
            "reached the node) closes its data channel and is dropped.");
  s.AddUint("ucx_max_replaced_lanes", &c->ucx_max_replaced_lanes,
            "Wedged shared-memory lanes the node replaces at most (each old worker is kept until "
            "it stops); past that a wedged lane makes /healthz answer 503, for a restart.");
  s.AddBool("ucx_trailing_checksums", &c->ucx_trailing_checksums,
            "Let a two-sided put send its blocks' checksums after the blocks (the client then "
            "hashes while they travel); false: clients send them in the request.");
  s.AddBytes("max_transfer_bytes", &c->max_transfer_bytes,
             "Payload bytes one PutData call may move (at least max_inline_bytes; a GetData is "
             "bounded by max_keys_per_call and the node's block size).");
  s.AddString("cool_path", &c->cool_path,
              "RocksDB directory of the cool tier (local NVMe); empty: no cool tier.");
  s.AddBytes("cool_bytes", &c->cool_bytes, "Byte budget of the cool tier (stored bytes).");
  s.AddString("cool_codec", &c->cool_codec, "Codec of cool blocks: none, lz4 or zstd.");
  s.AddString("cold_path", &c->cold_path,
              "RocksDB directory of the cold tier (may be a network mount); needs cool_path.");
  s.AddBytes("cold_bytes", &c->cold_bytes, "Byte budget of the cold tier (stored bytes).");
  s.AddString("cold_codec", &c->cold_codec, "Codec of cold blocks: none, lz4 or zstd.");
  for (auto [key, field, tier] : {std::tuple{"warm_policy", &c->warm_policy, "warm"},
                                  std::tuple{"cool_policy", &c->cool_policy, "cool"},
                                  std::tuple{"cold_policy", &c->cold_policy, "cold"}}) {
    s.AddString(key, field,
                absl::StrCat("Which ", tier, " blocks leave first: lru, lfu, prefix or cost."));
  }
  s.AddBool("sync_writes", &c->sync_writes,
            "fsync RocksDB's WAL for every block written to cool/cold (power-loss safety).");
  s.AddBool("promote_on_get", &c->promote_on_get,
            "Move a cool/cold block back to the warm tier when it is read.");
  s.AddDurationMs("session_idle", &c->session_idle_ms,
                  "Sessions without a put for this long move to the cool tier (0: never).");
  s.AddUint("warm_high_watermark_pct", &c->warm_high_watermark_pct,
            "Demote warm blocks to cool when the arena is fuller than this percentage.");
  s.AddUint("warm_low_watermark_pct", &c->warm_low_watermark_pct,
            "... until it is under this percentage.");
  s.AddUint("disk_high_watermark_pct", &c->disk_high_watermark_pct,
            "Move cool blocks to cold (cold blocks: drop) above this percentage of the budget.");
  s.AddUint("disk_low_watermark_pct", &c->disk_low_watermark_pct,
            "... until under this percentage.");
  s.AddDurationMs("reservation_ttl", &c->reservation_ttl_ms,
                  "Default lifetime of an uncommitted put reservation.");
  s.AddDurationMs("lease_ttl", &c->lease_ttl_ms, "Default lifetime of a read lease.");
  s.AddDurationMs("max_lease", &c->max_lease_ms,
                  "Longest lease or reservation lifetime a caller may ask for.");
  s.AddUint("max_leases", &c->max_leases,
            "Read leases kept past their call (BeginGet without payload) at once, at most.");
  s.AddBytes("max_lease_bytes", &c->max_lease_bytes,
             "Bytes those leases may pin in the warm tier (0: half of warm_bytes).");
  s.AddDurationMs("reaper_interval", &c->reaper_interval_ms,
                  "How often expired leases and reservations are released.");
  s.AddDurationMs("tombstone_ttl", &c->tombstone_ttl_ms,
                  "How long a deleted block's copies (rebalancer, read-repair) are refused.");
  s.AddUint("tombstone_capacity", &c->tombstone_capacity,
            "Most deletes remembered at once (~50 B each); the oldest go first.");
  s.AddDurationMs("drain_timeout", &c->drain_timeout_ms,
                  "On SIGTERM, how long in-flight calls may take before they are cancelled.");
  s.AddBool("debug_fault_injection", &c->debug_fault_injection,
            "Serve the InjectFault call that corrupts stored bytes. Tests only.");
  s.AddString("auth_mode", &c->auth_mode,
              "none (every caller is tenant default, all roles) or required (principals).");
  s.AddString("auth_principals_file", &c->auth_principals_file,
              "YAML principals: tenant, roles, token_sha256 / cert_cn (reloaded on SIGHUP).");
  s.AddString("tls_cert", &c->tls_cert, "PEM server certificate (chain) for gRPC; empty: no TLS.");
  s.AddString("tls_key", &c->tls_key, "PEM private key of tls_cert.");
  s.AddString("tls_client_ca", &c->tls_client_ca,
              "PEM CA bundle that signs client certificates (mTLS).");
  s.AddBool("tls_require_client_cert", &c->tls_require_client_cert,
            "Refuse clients without a certificate signed by tls_client_ca.");
  s.AddString("cluster_token", &c->cluster_token,
              "Bearer token this node presents to its peers (needs the admin role there).");
  s.AddString("cluster_mode", &c->cluster_mode,
              "single (this node alone), static (cluster_members) or etcd (etcd_endpoints).");
  s.AddString("cluster_name", &c->cluster_name, "etcd key prefix /strata/<cluster_name>/.");
  s.AddString("cluster_members", &c->cluster_members,
              "static mode: every member as id=host:port[@zone], comma-separated.");
  s.AddString("etcd_endpoints", &c->etcd_endpoints, "etcd mode: host:port,... of etcd.");
  s.AddDurationMs("etcd_lease", &c->etcd_lease_ms,
                  "etcd mode: lease of the node's registration; a dead node leaves after this.");
  s.AddDurationMs("etcd_startup", &c->etcd_startup_ms,
                  "etcd mode: how long a starting node waits for etcd before it exits.");
  s.AddString("zone", &c->zone, "Failure domain (rack, zone) for zone-aware replica placement.");
  s.AddUint("cluster_replicas", &c->cluster_replicas,
            "Copies of every block the rebalancer keeps (clients' replicas; static/etcd).");
  s.AddDurationMs("rebalance_interval", &c->rebalance_interval_ms,
                  "How often the rebalancer checks placement when the member set is unchanged.");
  s.AddDurationMs("rebalance_settle", &c->rebalance_settle_ms,
                  "How long a changed member set must stay unchanged before blocks move.");
  s.AddBytes("rebalance_batch_bytes", &c->rebalance_batch_bytes,
             "Block bytes the rebalancer holds read at once to copy them to their owners "
             "(at least max_block_bytes; 0: 64 MiB or max_block_bytes, the larger).");
  s.AddUint("max_directory_entries", &c->max_directory_entries,
            "Entries of the GPU-block directory (block, agent) this node keeps at most.");
  s.AddUint("max_concurrent_calls", &c->max_concurrent_calls,
            "Calls served at once; more fail at once with RESOURCE_EXHAUSTED.");
  s.AddBytes("max_inflight_bytes", &c->max_inflight_bytes,
             "Inline payload bytes of all calls in flight; more: RESOURCE_EXHAUSTED.");
  s.AddBytes("grpc_memory_bytes", &c->grpc_memory_bytes,
             "Memory gRPC may use for its buffers (its ResourceQuota).");
  s.AddUint("tenant_lookup_rate", &c->tenant_lookup_rate,
            "Blocks per second per tenant asked for by Lookup, Get and Prefetch (0: unlimited); "
            "more: RESOURCE_EXHAUSTED.");
  s.AddUint("tenant_lookup_burst", &c->tenant_lookup_burst,
            "Blocks a tenant may ask for at once above that rate (0: max_keys_per_call).");
  s.AddBytes("tenant_warm_quota", &c->tenant_warm_quota,
             "Warm-tier bytes a tenant may hold unless the principals file's tenants list says "
             "otherwise (0: no limit); over it puts are RESOURCE_EXHAUSTED.");
  s.AddBytes("tenant_cool_quota", &c->tenant_cool_quota,
             "Cool-tier bytes a tenant may hold unless the tenants list says otherwise (0: no "
             "limit); over it its blocks leaving warm are dropped.");
  s.AddBytes("tenant_cold_quota", &c->tenant_cold_quota,
             "Cold-tier bytes a tenant may hold unless the tenants list says otherwise (0: no "
             "limit); over it its blocks leaving cool are dropped.");
  s.AddString("advertise_address", &c->advertise_address,
              "HOST:PORT clients and peers dial (default: the bound listen address).");
}

uint32_t AutoUcxLanes(uint32_t usable_cpus) { return std::clamp<uint32_t>(usable_cpus / 4, 1, 4); }

absl::Status ValidateNodeConfig(const NodeConfig& c) {
  if (c.max_block_bytes < 64 || c.max_block_bytes > (1ull << 30)) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_block_bytes: ", c.max_block_bytes, ", want 64 B .. 1 GiB"));
  }
  if (c.warm_bytes < c.max_block_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "warm_bytes: ", FormatByteSize(c.warm_bytes), " is smaller than max_block_bytes ",
        FormatByteSize(c.max_block_bytes), " (the arena needs at least one slab page)"));
  }
  if (c.max_keys_per_call == 0 || c.max_keys_per_call > 65536) {
    return absl::InvalidArgumentError("max_keys_per_call: want 1..65536");
  }
  if (c.max_inline_bytes < c.max_block_bytes) {
    return absl::InvalidArgumentError(
        "max_inline_bytes: must be at least max_block_bytes (one block per call)");
  }
  if (c.max_inline_bytes > (1ull << 30)) {
    return absl::InvalidArgumentError("max_inline_bytes: at most 1 GiB (gRPC message limit)");
  }
  if (c.ucx_lanes > 64) {
    return absl::InvalidArgumentError(
        absl::StrCat("ucx_lanes: ", c.ucx_lanes, ", want 0 (one per 4 CPUs) or 1..64"));
  }
  if (c.max_namespaces == 0) return absl::InvalidArgumentError("max_namespaces: want >= 1");
  if (c.reservation_ttl_ms == 0 || c.lease_ttl_ms == 0) {
    return absl::InvalidArgumentError("reservation_ttl / lease_ttl: want > 0");
  }
  if (c.reservation_ttl_ms > c.max_lease_ms || c.lease_ttl_ms > c.max_lease_ms) {
    return absl::InvalidArgumentError("reservation_ttl / lease_ttl: exceed max_lease");
  }
  if (c.max_leases == 0 || c.max_lease_bytes > c.warm_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("max_leases: ", c.max_leases,
                                                   ", max_lease_bytes: ", c.max_lease_bytes,
                                                   "; want max_leases >= 1 and "
                                                   "max_lease_bytes <= warm_bytes"));
  }
  if (c.tombstone_capacity > (1ull << 24)) {
    return absl::InvalidArgumentError(
        absl::StrCat("tombstone_capacity: ", c.tombstone_capacity, ", want 0..16777216"));
  }
  if (c.tombstone_ttl_ms > 86400000) {
    return absl::InvalidArgumentError("tombstone_ttl: want at most 24h");
  }
  if (c.warm_low_watermark_pct >= c.warm_high_watermark_pct || c.warm_high_watermark_pct > 100 ||
      c.disk_low_watermark_pct >= c.disk_high_watermark_pct || c.disk_high_watermark_pct > 100) {
    return absl::InvalidArgumentError("*_watermark_pct: want low < high <= 100");
  }
  if (!c.cold_path.empty() && c.cool_path.empty()) {
    return absl::InvalidArgumentError("cold_path: a cold tier needs cool_path too");
  }
  for (const std::string* codec : {&c.cool_codec, &c.cold_codec}) {
    if (absl::Status s = ParseCodec(*codec).status(); !s.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(codec == &c.cool_codec ? "cool_codec: " : "cold_codec: ", s.message()));
    }
  }
  for (auto [key, value] :
       {std::pair{"warm_policy", &c.warm_policy}, std::pair{"cool_policy", &c.cool_policy},
        std::pair{"cold_policy", &c.cold_policy}}) {
    if (absl::Status s = ParsePolicyKind(*value).status(); !s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(key, ": ", s.message()));
    }
  }
  if (c.reaper_interval_ms == 0) return absl::InvalidArgumentError("reaper_interval: want > 0");
  absl::StatusOr<cluster::MembershipMode> mode = cluster::ParseMembershipMode(c.cluster_mode);
  if (!mode.ok())
    return absl::InvalidArgumentError(absl::StrCat("cluster_mode: ", mode.status().message()));
  if (*mode == cluster::MembershipMode::kStatic) {
    absl::StatusOr<std::vector<cluster::Member>> members =
        cluster::ParseStaticMembers(c.cluster_members);
    if (!members.ok()) return members.status();
    if (members->empty()) {
      return absl::InvalidArgumentError("cluster_members: static mode needs the member list");
    }
    bool self_listed = false;
    for (const cluster::Member& m : *members) self_listed = self_listed || m.id == c.node_id;
    if (!self_listed) {
      return absl::InvalidArgumentError(
          absl::StrCat("cluster_members: does not list this node (node_id ", c.node_id, ")"));
    }
  }
  if (*mode == cluster::MembershipMode::kEtcd && c.etcd_endpoints.empty()) {
    return absl::InvalidArgumentError("etcd_endpoints: etcd mode needs at least one endpoint");
  }
  if (c.etcd_lease_ms < 1000) return absl::InvalidArgumentError("etcd_lease: want >= 1 s");
  if (c.ucx_unclaimed_timeout_ms < 1000) {
    // The sweep runs once a second; shorter would take calls merely in flight for abandoned.
    return absl::InvalidArgumentError("ucx_unclaimed_timeout_ms: want >= 1000");
  }
  if (c.ucx_max_replaced_lanes > 1024) {
    return absl::InvalidArgumentError("ucx_max_replaced_lanes: want 0..1024");
  }
  if (c.cluster_replicas < 1 || c.cluster_replicas > 16) {
    return absl::InvalidArgumentError("cluster_replicas: want 1..16");
  }
  if (c.rebalance_interval_ms < 100) {
    return absl::InvalidArgumentError("rebalance_interval: want >= 100 ms");
  }
  if (c.rebalance_batch_bytes != 0 && c.rebalance_batch_bytes < c.max_block_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("rebalance_batch_bytes: ", FormatByteSize(c.rebalance_batch_bytes),
                     " is less than max_block_bytes ", FormatByteSize(c.max_block_bytes),
                     " (a block is read whole); 0 for the default"));
  }
  if (c.rebalance_settle_ms > kMaxRebalanceSettleMs) {
    return absl::InvalidArgumentError(absl::StrCat(
        "rebalance_settle: want <= ", kMaxRebalanceSettleMs,
        " ms (clients look for moving blocks at their earlier owners for 10 minutes)"));
  }
  if (c.cluster_name.empty() || c.cluster_name.find('/') != std::string::npos) {
    return absl::InvalidArgumentError("cluster_name: want a non-empty name without '/'");
  }
  if (c.auth_mode != "none" && c.auth_mode != "required") {
    return absl::InvalidArgumentError("auth_mode: want none or required");
  }
  if (c.auth_mode == "required" && c.auth_principals_file.empty()) {
    return absl::InvalidArgumentError("auth_principals_file: auth_mode required needs one");
  }
  if (c.tls_cert.empty() != c.tls_key.empty()) {
    return absl::InvalidArgumentError("tls_cert / tls_key: give both or neither");
  }
  if ((!c.tls_client_ca.empty() || c.tls_require_client_cert) && c.tls_cert.empty()) {
    return absl::InvalidArgumentError("tls_client_ca / tls_require_client_cert: need tls_cert");
  }
  if (c.tls_require_client_cert && c.tls_client_ca.empty()) {
    return absl::InvalidArgumentError("tls_require_client_cert: needs tls_client_ca");
  }
  if (c.max_concurrent_calls == 0 || c.max_concurrent_calls > 65536) {
    return absl::InvalidArgumentError("max_concurrent_calls: want 1..65536");
  }
  if (c.max_inflight_bytes < c.max_inline_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "max_inflight_bytes: ", FormatByteSize(c.max_inflight_bytes), " is below max_inline_bytes ",
        FormatByteSize(c.max_inline_bytes), " (one full call)"));
  }
  if (c.max_transfer_bytes < c.max_inline_bytes) {
    // Clients size a data-plane call by max_inline_bytes (the node's Stats); a PutData up to
    // that size must be taken, or every large batch fails for good.
    return absl::InvalidArgumentError(absl::StrCat(
        "max_transfer_bytes: ", FormatByteSize(c.max_transfer_bytes), " is below max_inline_bytes ",
        FormatByteSize(c.max_inline_bytes), " (clients send calls of up to that many bytes)"));
  }
  if (c.grpc_memory_bytes < 2 * c.max_inline_bytes + (16ull << 20)) {
    return absl::InvalidArgumentError(
        absl::StrCat("grpc_memory_bytes: want at least 2 x max_inline_bytes + 16 MiB (",
                     FormatByteSize(2 * c.max_inline_bytes + (16ull << 20)), ")"));
  }
  // Nodes of a cluster call each other (rebalancing): as principal `cluster` by
  // cluster_token, over TLS verified by tls_client_ca, presenting their own certificate.
  if (c.cluster_mode != "single") {
    if (c.auth_mode == "required" && c.cluster_token.empty()) {
      return absl::InvalidArgumentError(
          "cluster_token: auth_mode required in a cluster needs it (nodes call each other)");
    }
    if (!c.tls_cert.empty() && c.tls_client_ca.empty()) {
      return absl::InvalidArgumentError(
          "tls_client_ca: a TLS cluster needs it (nodes verify each other's certificates)");
    }
  }
  return absl::OkStatus();
}

}  // namespace strata::storenode
