// NodeConfig: every setting of a strata-storenode process, with laptop-friendly defaults.
// Registered in a ConfigSchema so each key is a YAML key, a STRATA_* variable and a flag.
//
// Plain value type; thread-compatible.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "strata/common/config.h"

namespace strata::storenode {

struct NodeConfig {
  std::string node_id = "node-0";
  std::string listen = "127.0.0.1:7070";       // gRPC; port 0 picks a free port
  std::string http_listen = "127.0.0.1:7071";  // /metrics /healthz /readyz; port 0 = free port
  std::string port_file;                       // written once listening: grpc=ADDR\nhttp=ADDR
  std::string log_level = "info";

  uint64_t warm_bytes = 1ull << 30;        // DRAM arena, preallocated at start
  bool warm_prefault = false;              // touch every arena page at start
  uint64_t max_block_bytes = 16ull << 20;  // also the slab page size
  // Every block takes at least this much (at most max_block_bytes) of its tier's budget (warm
  // slot, cool/cold bytes):
  // it bounds the blocks a tier holds, and so the RAM of their index entries (~0.6 KiB each).
  uint64_t min_block_charge = 16ull << 10;
  uint64_t max_keys_per_call = 4096;
  uint64_t max_inline_bytes = 64ull << 20;  // payload bytes per call on the gRPC path
  // UCX data plane: UCX_TLS ("tcp", "shm" = posix,sysv,cma,self for co-located trusted
  // clients, "rc,sm" on RDMA clusters...); empty: payloads travel inline over gRPC only.
  std::string ucx_tls = "tcp";
  uint64_t ucx_lanes = 0;             // workers (progress threads); 0: AutoUcxLanes()
  uint64_t max_data_channels = 1024;  // open ConnectData channels
  // Of those, one tenant's at most with auth_mode required (0: no cap below the node's).
  uint64_t tenant_data_channels = 256;
  // Data calls (PutData, GetData) one tenant may have in progress at once with auth_mode
  // required, of the node's max_concurrent_calls (0: no cap below the node's). A data call
  // may wait on its client until its transfer deadline: one tenant cannot hold every slot.
  uint64_t tenant_data_calls = 128;
  // A client's UCX message no call claims for this long closes its data channel (its bytes
  // would otherwise stay in UCX's unexpected queue for good).
  uint64_t ucx_unclaimed_timeout_ms = 30000;
  // Wedged shared-memory lanes replaced at most (each replaced worker is kept until the node
  // stops); past that a wedged lane makes /healthz answer 503, for a restart.
  uint64_t ucx_max_replaced_lanes = 16;
  // Two-sided puts may send their checksums after the blocks (ConnectDataResponse.
  // checksums_may_trail). False: this node asks for them in the request, as nodes before
  // 2026-11-28 did.
  bool ucx_trailing_checksums = true;
  // Payload bytes per PutData call (a GetData is bounded by max_keys_per_call and the node's
  // block size, and its pins last no longer than the call).
  uint64_t max_transfer_bytes = 1ull << 30;
  uint64_t max_namespaces = 1024;
  // New namespaces one tenant may add while the node runs, with auth_mode required (admins
  // not counted; 0: up to max_namespaces).
  uint64_t tenant_namespaces = 256;

  // Cool and cold tiers (RocksDB); an empty path leaves the tier out.
  std::string cool_path;
  uint64_t cool_bytes = 16ull << 30;
  std::string cool_codec = "lz4";
  std::string cold_path;
  uint64_t cold_bytes = 64ull << 30;
  std::string cold_codec = "zstd";
  bool sync_writes = false;      // fsync the RocksDB WAL on every block written
  bool promote_on_get = true;    // a read of a cool/cold block copies it back to warm
  uint64_t session_idle_ms = 0;  // sessions without puts for this long demote to cool; 0 = off
  uint64_t warm_high_watermark_pct = 90;  // demote warm → cool above this share of warm_bytes
  uint64_t warm_low_watermark_pct = 80;   // ... until under this one
  uint64_t disk_high_watermark_pct = 95;  // same for cool → cold and cold → dropped
  uint64_t disk_low_watermark_pct = 85;
  // Eviction/demotion policy per tier: lru, lfu, prefix or cost (eviction_policy.h). cost
  // measured best against Belady's bound (docs/design/eviction-policies.md).
  std::string warm_policy = "cost";
  std::string cool_policy = "cost";
  std::string cold_policy = "cost";

  uint64_t reservation_ttl_ms = 30000;  // uncommitted puts expire after this
  uint64_t lease_ttl_ms = 30000;        // default read lease
  uint64_t max_lease_ms = 600000;       // longest lease or reservation a caller may ask for
  // Read leases a caller keeps after its call (BeginGet without payload): at most this many,
  // pinning at most this many bytes (0: half of warm_bytes). More: RESOURCE_EXHAUSTED.
  uint64_t max_leases = 65536;
  uint64_t max_lease_bytes = 0;
  uint64_t reaper_interval_ms = 50;
  uint64_t drain_timeout_ms = 10000;  // SIGTERM: in-flight calls get this long to finish
  // A writer's Delete is remembered this long (at most tombstone_capacity deletes, ~50 B
  // each): copies of those blocks are refused meanwhile (WarmTierOptions). 0: not remembered.
  uint64_t tombstone_ttl_ms = 60000;
  uint64_t tombstone_capacity = 262144;

  bool debug_fault_injection = false;  // serve InjectFault (tests only)

  // Security (docs/design/security.md). auth_mode "none": every caller is tenant `default`
  // with every role; "required": principals from auth_principals_file (bearer tokens by
  // SHA-256, client-certificate CNs). TLS on gRPC when tls_cert/tls_key are set; clients are
  // verified against tls_client_ca, and must present a certificate with
  // tls_require_client_cert. cluster_token: what this node presents to its peers (rebalancer).
  std::string auth_mode = "none";
  std::string auth_principals_file;
  std::string tls_cert;
  std::string tls_key;
  std::string tls_client_ca;
  bool tls_require_client_cert = false;
  std::string cluster_token;

  // Cluster (docs/design/cluster.md). single: this node alone; static: cluster_members;
  // etcd: register under /strata/<cluster_name>/nodes/<node_id> at etcd_endpoints.
  std::string cluster_mode = "single";
  std::string cluster_name = "default";
  std::string cluster_members;    // static: "id=host:port[@zone],..."
  std::string etcd_endpoints;     // etcd: "host:port,..."
  uint64_t etcd_lease_ms = 5000;  // a node that stops renewing leaves after this long
  // etcd: how long a starting node waits for etcd before it gives up and exits (etcd and the
  // nodes often start together; Kubernetes restarts a node that gave up, with back-off).
  uint64_t etcd_startup_ms = 60000;
  std::string zone;               // failure domain, for zone-aware replica placement
  std::string advertise_address;  // what clients and peers dial; "": the bound listen address
  uint64_t cluster_replicas = 1;  // R the rebalancer keeps (the clients' replicas)
  uint64_t rebalance_interval_ms = 30000;  // passes without a change of the member set
  // After a change of the member set, how long it must stay unchanged before a pass starts:
  // nodes joining one after another then move each block once. At most 5 minutes: clients
  // look for blocks where earlier sets placed them for 10 minutes after a change.
  uint64_t rebalance_settle_ms = 500;
  // Block bytes a rebalance batch holds read at once (its puts' requests about as much
  // again); 0: 64 MiB, or max_block_bytes when larger.
  uint64_t rebalance_batch_bytes = 0;
  uint64_t max_directory_entries = 1 << 20;  // GPU-block directory: (block, agent) entries

  // Admission (docs/design/security.md): at most max_concurrent_calls calls are served at
  // once and at most max_inflight_bytes of inline payload are in flight; past either a call
  // fails at once with RESOURCE_EXHAUSTED. grpc_memory_bytes bounds gRPC's own buffers.
  uint64_t max_concurrent_calls = 256;
  uint64_t max_inflight_bytes = 1ull << 30;
  uint64_t grpc_memory_bytes = 512ull << 20;
  // Per tenant: Lookup blocks per second (0: unlimited) and the burst allowed above it
  // (0: max_keys_per_call); admins (the cluster principal) are not limited.
  uint64_t tenant_lookup_rate = 0;
  uint64_t tenant_lookup_burst = 0;
  // Bytes one tenant's private scope may hold per tier (0: no limit; shared is exempt).
  uint64_t tenant_warm_quota = 0;
  uint64_t tenant_cool_quota = 0;
  uint64_t tenant_cold_quota = 0;
};

// Registers every NodeConfig field on `schema`, pointing at `config`.
void RegisterNodeOptions(ConfigSchema& schema, NodeConfig* config);

// The lanes an ucx_lanes of 0 means on a node that may use `usable_cpus` CPUs: one per 4,
// from 1 to 4. Measured (docs/design/transfer-protocol.md, "Lanes by cores"): on 2 vCPUs more
// than one lane is slower; on 16 cores 2-4 lanes move 1.5-2.5x what one does at 8 streams.
uint32_t AutoUcxLanes(uint32_t usable_cpus);

// Cross-field checks: INVALID_ARGUMENT naming the option (warm_bytes < max_block_bytes...).
absl::Status ValidateNodeConfig(const NodeConfig& config);

}  // namespace strata::storenode
