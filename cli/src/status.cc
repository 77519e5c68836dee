// `strata status`: what an operator asks first — which nodes are members, in which zones,
// at which epoch, and how full each node's tiers are. From etcd (--etcd: the registrations
// themselves, then each member's Stats) or from one node (--node).
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "cli_support.h"
#include "commands.h"
#include "strata/client/store_client.h"
#include "strata/cluster/etcd_client.h"
#include "strata/cluster/membership.h"
#include "strata/common/byte_size.h"

namespace strata::cli {
namespace {

struct StatusFlags {
  std::string node;
  std::string etcd;
  SecurityFlags security;
  std::string cluster = "default";
  double deadline_s = 5;
};

std::string Use(uint64_t used, uint64_t capacity) {
  if (capacity == 0) return "-";
  return absl::StrCat(FormatByteSize(used), "/", FormatByteSize(capacity), " (",
                      used * 100 / capacity, "%)");
}

// One table row: a member as registered, and what its Stats say (or why they could not be had:
// false).
bool PrintNode(const cluster::Member& m, double deadline_s, const SecurityFlags& security) {
  client::ClientOptions o;
  ApplySecurity(security, &o);
  o.address = m.address;
  o.data_plane = client::ClientOptions::DataPlane::kInline;
  o.default_deadline = absl::Milliseconds(static_cast<int64_t>(deadline_s * 1000));
  auto c = client::StoreClient::Connect(o);
  absl::StatusOr<client::NodeStats> s = c.ok() ? (*c)->Stats() : c.status();
  if (!s.ok()) {
    std::printf("%-12s %-21s %-8s %s\n", m.id.c_str(), m.address.c_str(),
                m.zone.empty() ? "-" : m.zone.c_str(), s.status().ToString().c_str());
    return false;
  }
  std::printf("%-12s %-21s %-8s epoch %-8llu warm %-26s cool %-26s cold %s%s\n", m.id.c_str(),
              m.address.c_str(), m.zone.empty() ? "-" : m.zone.c_str(),
              static_cast<unsigned long long>(s->epoch),
              Use(s->warm_bytes, s->warm_capacity_bytes).c_str(),
              Use(s->cool_stored_bytes, s->cool_capacity_bytes).c_str(),
              Use(s->cold_stored_bytes, s->cold_capacity_bytes).c_str(),
              s->cluster_mode == "etcd" && !s->etcd_connected ? "  (etcd unreachable)" : "");
  if (s->cluster_mode != "single" && !s->cluster_mode.empty()) {
    std::printf(
        "%-12s rebalance: keeps %u copies, %s, %llu passes, %llu copied, %llu handed over; "
        "%llu under-replicated blocks\n",
        "", s->replicas_kept,
        s->rebalance_pending > 0 ? absl::StrCat(s->rebalance_pending, " blocks to go").c_str()
                                 : "idle",
        static_cast<unsigned long long>(s->rebalance_passes),
        static_cast<unsigned long long>(s->rebalance_copied),
        static_cast<unsigned long long>(s->rebalance_dropped),
        static_cast<unsigned long long>(s->under_replicated));
  }
  return true;
}

int RunStatus(const StatusFlags& f) {
  if (f.etcd.empty() == f.node.empty()) {
    return Fail("status", absl::InvalidArgumentError("give exactly one of --etcd and --node"));
  }
  if (absl::Status s = CheckDeadline(f.deadline_s); !s.ok()) return Fail("status", s);
  if (!f.node.empty()) {
    client::ClientOptions o;
    ApplySecurity(f.security, &o);
    o.address = f.node;
    o.data_plane = client::ClientOptions::DataPlane::kInline;
    o.default_deadline = absl::Milliseconds(static_cast<int64_t>(f.deadline_s * 1000));
    auto c = client::StoreClient::Connect(o);
    if (!c.ok()) return Fail("status", c.status());
    auto s = (*c)->Stats();
    if (!s.ok()) return Fail("status", s.status());
    std::printf("node %s: cluster mode %s, epoch %llu, %u members%s\n", s->node_id.c_str(),
                s->cluster_mode.c_str(), static_cast<unsigned long long>(s->epoch), s->members,
                s->cluster_mode == "etcd"
                    ? (s->etcd_connected ? ", etcd reachable" : ", etcd UNREACHABLE")
                    : "");
    if (s->members_placing_otherwise > 0) {
      std::printf(
          "WARNING: %u members place blocks by another placement scheme: the rebalancer "
          "waits; upgrade all nodes together\n",
          s->members_placing_otherwise);
    }
    return PrintNode({.id = s->node_id, .address = f.node, .zone = s->zone}, f.deadline_s,
                     f.security)
               ? 0
               : 1;
  }
  std::vector<std::string> endpoints;
  for (absl::string_view e : absl::StrSplit(f.etcd, ',', absl::SkipWhitespace())) {
    endpoints.push_back(std::string(absl::StripAsciiWhitespace(e)));
  }
  auto etcd = cluster::EtcdClient::Create({.endpoints = endpoints});
  if (!etcd.ok()) return Fail("status", etcd.status());
  const std::string root = absl::StrCat("/strata/", f.cluster, "/");
  auto listed = (*etcd)->GetPrefix(root);
  if (!listed.ok()) return Fail("status", listed.status());
  std::vector<cluster::Member> members;
  std::string epoch = "none";
  size_t unreadable = 0;
  for (const cluster::KeyValue& kv : listed->kvs) {
    if (kv.key == root + "epoch") {
      epoch = std::string(absl::StripLeadingAsciiWhitespace(kv.value));
      while (epoch.size() > 1 && epoch[0] == '0') epoch.erase(0, 1);
    } else if (kv.key.starts_with(root + "nodes/") && kv.lease != 0) {
      // A key without a lease (written by hand) is no member, as the nodes and clients see it.
      auto m = cluster::DecodeMember(kv.key.substr(root.size() + 6), kv.value);
      if (m.ok()) {
        members.push_back(*m);
      } else {
        ++unreadable;
        std::fprintf(stderr, "strata status: registration %s unreadable: %s\n", kv.key.c_str(),
                     m.status().ToString().c_str());
      }
    }
  }
  cluster::Normalize(&members);
  std::vector<std::string> zones;
  for (const auto& m : members) {
    if (!m.zone.empty() && std::find(zones.begin(), zones.end(), m.zone) == zones.end()) {
      zones.push_back(m.zone);
    }
  }
  std::printf("cluster %s: %zu members, %zu zones, epoch %s (etcd revision %lld)\n",
              f.cluster.c_str(), members.size(), zones.size(), epoch.c_str(),
              static_cast<long long>(listed->revision));
  if (std::vector<std::string> others = cluster::MembersPlacingOtherwise(members);
      !others.empty()) {
    std::printf(
        "WARNING: %s place blocks by another placement scheme than this strata (%u): reads "
        "between the two groups miss and rebalancers wait; upgrade all nodes together\n",
        absl::StrJoin(others, ", ").c_str(), cluster::kPlacementScheme);
  }
  if (std::vector<std::string> differ = cluster::MembersKeepingOtherReplicas(members, 0);
      !differ.empty()) {
    std::printf(
        "WARNING: %s record fewer cluster_replicas than other members: every node keeps %d "
        "copies, the largest, until they agree\n",
        absl::StrJoin(differ, ", ").c_str(), cluster::ReplicasKept(members, 0));
  }
  // Exit 1 when a member did not answer (its row says why), a registration could not be
  // read, or there is no member at all (a wrong --cluster, or every node gone), so scripts
  // and probes notice.
  size_t unreachable = 0;
  for (const cluster::Member& m : members) unreachable += !PrintNode(m, f.deadline_s, f.security);
  if (unreachable > 0) {
    std::fprintf(stderr, "strata status: %zu of %zu members did not answer\n", unreachable,
                 members.size());
  }
  if (members.empty()) {
    std::fprintf(stderr,
                 "strata status: no member registered under %s in etcd (a wrong --cluster? "
                 "nodes stopped, or their leases lapsed)\n",
                 root.c_str());
  }
  return unreachable > 0 || unreadable > 0 || members.empty() ? 1 : 0;
}

}  // namespace

void AddStatusCommand(CLI::App& app, int* exit_code) {
  auto f = std::make_shared<StatusFlags>();
  CLI::App* cmd = app.add_subcommand("status", "Members, zones, epoch and tier use of a cluster");
  cmd->add_option("--etcd", f->etcd, "etcd endpoints host:port,... (the cluster's registrations)");
  cmd->add_option("--node", f->node, "One store node HOST:PORT instead");
  cmd->add_option("--cluster", f->cluster, "Cluster name")->capture_default_str();
  cmd->add_option("--deadline", f->deadline_s, "Per-call deadline, seconds")->capture_default_str();
  AddSecurityFlags(*cmd, f->security);
  cmd->callback([f, exit_code] { *exit_code = RunStatus(*f); });
}

}  // namespace strata::cli
