#include "cluster_nodes.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "spdlog/spdlog.h"

namespace strata::client::internal {
namespace {

// A node marked down is not tried again for this long, doubled per failure up to the most.
constexpr absl::Duration kDownBackoff = absl::Seconds(1);
constexpr int kMostDoublings = 5;  // 32 s
// Deadline of connecting to one node (its Stats call), within the caller's deadline.
constexpr absl::Duration kConnectTimeout = absl::Seconds(2);

// The while a node stays marked after its strikes'th spell in a row.
absl::Duration Backoff(int strikes) {
  return kDownBackoff * (1 << std::min(strikes, kMostDoublings));
}

}  // namespace

void ClusterNodes::MarkDownLocked(Entry& e, absl::Status error) {
  const absl::Duration now = SteadyNow();
  e.client.reset();
  e.last_error = std::move(error);
  if (now < e.down_until) return;  // calls failing together make one spell, not many
  e.down_until = now + Backoff(e.strikes);
  ++e.strikes;
}

absl::StatusOr<std::shared_ptr<GrpcStoreClient>> ClusterNodes::Node(const cluster::Member& m,
                                                                    absl::Time end) {
  if (auto known = Known(m)) return *known;
  std::vector<NamespaceSpec> specs;
  {
    absl::MutexLock lock(&mu_);
    specs = specs_;
  }
  const auto left = [end] {
    return CallOptions{.deadline = std::max(absl::Milliseconds(1), end - absl::Now())};
  };
  ClientOptions o = options_;
  o.address = m.address;
  o.etcd_endpoints.clear();
  o.cluster_members.clear();
  o.default_deadline = std::min(kConnectTimeout, left().deadline);
  const bool budget_short = o.default_deadline < kConnectTimeout;
  absl::StatusOr<std::unique_ptr<GrpcStoreClient>> c = ConnectNode(o);
  absl::Status s = c.status();
  for (size_t i = 0; s.ok() && i < specs.size(); ++i) {
    absl::Status registered = (*c)->RegisterNamespace(specs[i], left()).status();
    // The node answered, and refused this namespace (its max_block_bytes, its namespace table
    // full, the caller's role): it still serves the others. Calls in this namespace meet the
    // refusal there (they register again on use) and go to the other owners.
    if (!registered.ok() && !IsTransient(registered.code())) {
      spdlog::debug("node {} ({}) refused namespace {}: {}", m.id, m.address, specs[i].model_id,
                    registered.ToString());
      continue;
    }
    s = registered;
  }
  // The ranges registered now, holding the turn RegisterMemory and UnregisterMemory take
  // until the client is published: from a copy taken before connecting, a range unregistered
  // meanwhile would stay registered in this client (its memory perhaps freed and reused), and
  // one registered meanwhile would be missing. Waited for until `end` only (registering a
  // large range pins it, which can take long). A node without a UCX data plane for this
  // client takes every call inline: nothing to register with it, no turn to wait for.
  std::optional<TimedTurn::Hold> memory_turn;
  bool turn_missed = false;
  if (s.ok() && (*c)->has_data_plane()) {
    memory_turn.emplace(memory_turn_, end);
    turn_missed = !memory_turn->taken();
    if (turn_missed) {
      s = absl::DeadlineExceededError(
          "registered memory was being (un)registered until the call's deadline");
    }
  }
  if (s.ok() && memory_turn.has_value()) {
    const std::vector<std::pair<void*, size_t>> memory = Memory();
    for (size_t i = 0; s.ok() && i < memory.size(); ++i) {
      s = (*c)->RegisterMemory(memory[i].first, memory[i].second);
    }
  }
  absl::MutexLock lock(&mu_);
  Entry& e = nodes_[m.id];
  // Another call connected meanwhile (perhaps after a RegisterNamespace that ours missed):
  // its client stands, whatever became of ours.
  if (e.address == m.address && e.client != nullptr) return e.client;
  if (e.address != m.address) e = Entry{};  // another node under the id
  e.address = m.address;
  if (!s.ok()) {
    absl::Status error(s.code(), absl::StrCat("node ", m.id, " (", m.address, "): ", s.message()));
    // Out of the caller's time, perhaps not the node's: slow (reads ask others first), not
    // down (writes still try it).
    if ((budget_short || turn_missed) && s.code() == absl::StatusCode::kDeadlineExceeded) {
      MarkSlowLocked(e);
      return error;
    }
    MarkDownLocked(e, std::move(error));
    return e.last_error;
  }
  e.client = std::shared_ptr<GrpcStoreClient>(std::move(*c));
  e.strikes = 0;
  return e.client;
}

std::optional<absl::StatusOr<std::shared_ptr<GrpcStoreClient>>> ClusterNodes::Known(
    const cluster::Member& m) {
  absl::MutexLock lock(&mu_);
  Entry& e = nodes_[m.id];
  if (e.address != m.address) return std::nullopt;
  if (e.client != nullptr) return e.client;
  if (SteadyNow() < e.down_until) return e.last_error;
  return std::nullopt;
}

void ClusterNodes::NoteResult(const cluster::Member& m, const std::shared_ptr<GrpcStoreClient>& c,
                              const absl::Status& s, bool cut_short) {
  const bool down = s.code() == absl::StatusCode::kUnavailable;
  const bool slow = cut_short && s.code() == absl::StatusCode::kDeadlineExceeded;
  if (!down && !slow && !(s.ok() && cut_short)) return;  // nothing to note: no lock taken
  absl::MutexLock lock(&mu_);
  Entry& e = nodes_[m.id];
  if (e.client != c) return;  // reconnected meanwhile: about another client
  if (s.ok()) {
    // Only a read answered within a share shows the node keeps pace (a node that stalls on
    // reads may well answer a Stats or a small put).
    if (cut_short) {
      e.slow_strikes = 0;
      e.slow_until = -absl::InfiniteDuration();
    }
  } else if (down) {
    MarkDownLocked(e, s);
  } else {
    MarkSlowLocked(e);
  }
}

void ClusterNodes::MarkSlowLocked(Entry& e) {
  const absl::Duration now = SteadyNow();
  if (now < e.slow_until) return;  // one spell, however many calls ran out in it
  e.slow_until = now + Backoff(e.slow_strikes);
  ++e.slow_strikes;
}

void ClusterNodes::Retain(std::span<const cluster::Member> keep) {
  std::vector<std::shared_ptr<GrpcStoreClient>> gone;  // closed outside the lock
  {
    absl::MutexLock lock(&mu_);
    for (auto it = nodes_.begin(); it != nodes_.end();) {
      const bool kept = std::any_of(keep.begin(), keep.end(),
                                    [&](const cluster::Member& m) { return m.id == it->first; });
      if (kept) {
        ++it;
        continue;
      }
      if (it->second.client != nullptr) gone.push_back(std::move(it->second.client));
      it = nodes_.erase(it);
    }
  }
}

size_t ClusterNodes::Connected() const {
  absl::MutexLock lock(&mu_);
  return std::count_if(nodes_.begin(), nodes_.end(),
                       [](const auto& n) { return n.second.client != nullptr; });
}

std::vector<bool> ClusterNodes::SlowNow(std::span<const cluster::Member> members) const {
  std::vector<bool> out(members.size(), false);
  const absl::Duration now = SteadyNow();
  absl::MutexLock lock(&mu_);
  for (size_t i = 0; i < members.size(); ++i) {
    auto it = nodes_.find(members[i].id);
    out[i] = it != nodes_.end() && it->second.address == members[i].address &&
             now < it->second.slow_until;
  }
  return out;
}

std::vector<std::shared_ptr<GrpcStoreClient>> ClusterNodes::Clients() const {
  std::vector<std::shared_ptr<GrpcStoreClient>> out;
  absl::MutexLock lock(&mu_);
  for (const auto& [id, node] : nodes_) {
    if (node.client != nullptr) out.push_back(node.client);
  }
  return out;
}

std::vector<std::pair<void*, size_t>> ClusterNodes::Memory() const {
  absl::MutexLock lock(&memory_mu_);
  return memory_;
}

absl::Status ClusterNodes::RegisterMemory(void* ptr, size_t len) {
  if (options_.data_plane == ClientOptions::DataPlane::kInline) {
    return absl::FailedPreconditionError(
        "RegisterMemory: the client has no UCX data plane (data_plane inline)");
  }
  TimedTurn::Hold memory_turn(memory_turn_);
  {
    absl::MutexLock lock(&memory_mu_);
    for (const auto& [p, l] : memory_) {
      if (static_cast<uint8_t*>(ptr) < static_cast<uint8_t*>(p) + l &&
          static_cast<uint8_t*>(p) < static_cast<uint8_t*>(ptr) + len) {
        return absl::InvalidArgumentError("RegisterMemory: overlaps a registered range");
      }
    }
  }
  // A client published after this list takes the range itself (Node, in memory_turn_); one
  // dropped meanwhile releases it with its data plane. One without a data plane takes its
  // calls inline: nothing to register there.
  std::vector<std::shared_ptr<GrpcStoreClient>> clients = Clients();
  std::erase_if(clients, [](const auto& c) { return !c->has_data_plane(); });
  for (size_t i = 0; i < clients.size(); ++i) {
    if (absl::Status s = clients[i]->RegisterMemory(ptr, len); !s.ok()) {
      // All or nothing: a range some clients kept would be refused as an overlap on a retry,
      // and UnregisterMemory would not know it.
      for (size_t k = 0; k < i; ++k) clients[k]->UnregisterMemory(ptr).IgnoreError();
      return s;
    }
  }
  absl::MutexLock lock(&memory_mu_);
  memory_.emplace_back(ptr, len);
  return absl::OkStatus();
}

absl::Status ClusterNodes::UnregisterMemory(void* ptr) {
  TimedTurn::Hold memory_turn(memory_turn_);
  {
    absl::MutexLock lock(&memory_mu_);
    auto it = std::find_if(memory_.begin(), memory_.end(),
                           [ptr](const auto& m) { return m.first == ptr; });
    if (it == memory_.end()) return absl::NotFoundError("UnregisterMemory: no range starts there");
    memory_.erase(it);
  }
  for (const std::shared_ptr<GrpcStoreClient>& c : Clients()) {
    if (c->has_data_plane()) c->UnregisterMemory(ptr).IgnoreError();
  }
  return absl::OkStatus();
}

void ClusterNodes::AddNamespace(const NamespaceSpec& spec) {
  absl::MutexLock lock(&mu_);
  for (const NamespaceSpec& s : specs_) {
    if (ComputeNamespaceId(s) == ComputeNamespaceId(spec)) return;
  }
  specs_.push_back(spec);
}

std::string ClusterNodes::TroubleNow() const {
  std::string down, slow;
  const absl::Duration now = SteadyNow();
  absl::MutexLock lock(&mu_);
  for (const auto& [id, node] : nodes_) {
    if (node.client == nullptr && now < node.down_until) {
      absl::StrAppend(&down, down.empty() ? "down: " : ", ", id, " (", node.last_error.message(),
                      ")");
    }
    if (now < node.slow_until) absl::StrAppend(&slow, slow.empty() ? "slow: " : ", ", id);
  }
  return absl::StrCat(down, !down.empty() && !slow.empty() ? "; " : "", slow);
}

std::string ClusterNodes::FirstDescription() const {
  absl::MutexLock lock(&mu_);
  for (const auto& [id, node] : nodes_) {
    if (node.client != nullptr) return node.client->DataPlaneDescription();
  }
  return "";
}

absl::Status CheckClusterOptions(const ClientOptions& options) {
  if (!options.etcd_endpoints.empty() && !options.cluster_members.empty()) {
    return absl::InvalidArgumentError("etcd_endpoints and cluster_members: choose one");
  }
  if (options.replicas < 0 || options.replicas > 16) {
    return absl::InvalidArgumentError(
        absl::StrCat("replicas: ", options.replicas, ", want 0 (the nodes') or 1..16"));
  }
  if (options.write_quorum < 0 ||
      (options.replicas > 0 && options.write_quorum > options.replicas)) {
    return absl::InvalidArgumentError(
        absl::StrCat("write_quorum: ", options.write_quorum, ", want 0..replicas (0 = all)"));
  }
  return absl::OkStatus();
}

}  // namespace strata::client::internal
