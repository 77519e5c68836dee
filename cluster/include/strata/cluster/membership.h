// Membership: the live member set of a Strata cluster and its epoch (docs/design/cluster.md).
//
// Three modes share one interface, so placement runs the same code in each:
//   single — one node, no coordination (the laptop default and the demo);
//   static — a fixed member list from configuration, no etcd;
//   etcd   — nodes register /strata/<cluster>/nodes/<id> under a lease they keep alive;
//            nodes and clients list and watch the prefix.
//
// The epoch labels a member set and rises with every change of it. In etcd mode it is the
// value of /strata/<cluster>/epoch: the etcd revision of the latest join or leave, written
// by the nodes that see the change (a compare-and-set that only ever raises it, so many
// nodes writing the same change agree). A restarted node that re-registers under the same
// id before its old lease lapses is no change (its address may be). Requests carry the
// epoch their sender routed by; a node that knows a newer one answers FAILED_PRECONDITION.
//
// When etcd is unreachable, the last known set stays in force (connected() turns false and
// the loop keeps retrying); when it returns, nodes re-register under the same keys, so a
// member is never listed twice.
//
// Thread-safe.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "strata/cluster/placement.h"

namespace strata::cluster {

enum class MembershipMode { kSingle, kStatic, kEtcd };

// "single", "static" or "etcd"; INVALID_ARGUMENT otherwise.
absl::StatusOr<MembershipMode> ParseMembershipMode(std::string_view name);
std::string_view MembershipModeName(MembershipMode mode);

// "id=host:port[@zone],..." (whitespace around entries ignored). INVALID_ARGUMENT naming the
// entry for a missing id or address, or a duplicate id.
absl::StatusOr<std::vector<Member>> ParseStaticMembers(std::string_view list);

// The etcd value of a member (readable with etcdctl: one key=value per line), and back.
std::string EncodeMember(const Member& member);
absl::StatusOr<Member> DecodeMember(std::string_view id, std::string_view value);

struct MembershipOptions {
  MembershipMode mode = MembershipMode::kSingle;
  std::string cluster = "default";  // etcd key prefix /strata/<cluster>/
  // A node: the member it is (registered in etcd mode; the whole set in single mode).
  // A client: nullopt (it only watches).
  std::optional<Member> self;
  std::vector<Member> static_members;  // static mode
  std::vector<std::string> etcd_endpoints;
  absl::Duration lease_ttl = absl::Seconds(5);  // a dead node leaves after about this long
  absl::Duration retry_interval = absl::Milliseconds(500);  // while etcd is unreachable
  absl::Duration startup_timeout = absl::Seconds(10);       // first listing must succeed by then
  // etcd mode, clients only: false lists once and then only on Refresh (after a node said
  // the epoch is stale) instead of holding a watch — for fleets of clients too large for
  // every one to watch etcd. Nodes always watch.
  bool watch = true;
};

class Membership {
 public:
  // Starts membership. etcd mode: registers self (if any) and lists the members before
  // returning; UNAVAILABLE when etcd cannot be reached within startup_timeout.
  // INVALID_ARGUMENT for options that do not fit the mode (single without self, static with
  // no members, etcd without endpoints).
  static absl::StatusOr<std::unique_ptr<Membership>> Start(MembershipOptions options);
  // etcd mode: stops the watch and keepalive and revokes the lease, so this node leaves at
  // once instead of after lease_ttl (bounded by a short deadline).
  ~Membership();

  MembershipMode mode() const { return options_mode_; }
  // The current set (never null) and the one before the latest change (null if none yet).
  std::shared_ptr<const MemberSet> Current() const;
  std::shared_ptr<const MemberSet> Previous() const;
  // The sets before the current one that place blocks otherwise than it does, newest first,
  // each once: at most kPreviousSetsKept. Each set's successor's `since` is when it stopped
  // placing blocks (two joins in a row: a block may still sit where the set before both
  // placed it). A change that moves no block (an address, a capacity) keeps `since`.
  static constexpr size_t kPreviousSetsKept = 8;
  std::vector<std::shared_ptr<const MemberSet>> PreviousSets() const;
  uint64_t epoch() const { return Current()->epoch; }
  // Whether the last exchange with etcd succeeded (always true outside etcd mode).
  bool connected() const;
  // Re-lists from etcd now (a client told its epoch is stale). Outside etcd mode: OK.
  // DEADLINE_EXCEEDED at `deadline`, waiting for another refresh or for etcd.
  absl::Status Refresh(absl::Time deadline = absl::InfiniteFuture());
  // etcd mode: deregisters now (revokes the lease) and stops watching; the last set stays
  // readable. For a draining node. Idempotent; the destructor does it too.
  void Leave();
  // Called after every change of the set or its epoch, from an internal thread (or a Refresh
  // caller's), one set at a time, never an older set after a newer one. Must not call back
  // into this object's Refresh.
  void OnChange(std::function<void(const MemberSet&)> callback);

  class Impl;

 private:
  explicit Membership(std::unique_ptr<Impl> impl, MembershipMode mode);
  std::unique_ptr<Impl> impl_;
  MembershipMode options_mode_;
};

}  // namespace strata::cluster
