#include "strata/cluster/membership.h"

#include <algorithm>
#include <atomic>
#include <map>
#include <set>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "spdlog/spdlog.h"
#include "strata/cluster/etcd_client.h"
#include "strata/common/threads.h"
#include "strata/common/timed_turn.h"

namespace strata::cluster {
namespace {

std::string PadEpoch(int64_t revision) {
  // Fixed width, so that etcd's byte-wise value comparison is numeric comparison.
  std::string digits = absl::StrCat(revision);
  return std::string(digits.size() < 20 ? 20 - digits.size() : 0, '0') + digits;
}

uint64_t ParseEpoch(std::string_view value) {
  uint64_t v = 0;
  return absl::SimpleAtoi(absl::string_view(value.data(), value.size()), &v) ? v : 0;
}

}  // namespace

absl::StatusOr<MembershipMode> ParseMembershipMode(std::string_view name) {
  if (name == "single" || name.empty()) return MembershipMode::kSingle;
  if (name == "static") return MembershipMode::kStatic;
  if (name == "etcd") return MembershipMode::kEtcd;
  return absl::InvalidArgumentError(
      absl::StrCat("cluster mode \"", std::string(name), "\": want single, static or etcd"));
}

std::string_view MembershipModeName(MembershipMode mode) {
  switch (mode) {
    case MembershipMode::kSingle:
      return "single";
    case MembershipMode::kStatic:
      return "static";
    case MembershipMode::kEtcd:
      return "etcd";
  }
  return "?";
}

absl::StatusOr<std::vector<Member>> ParseStaticMembers(std::string_view list) {
  std::vector<Member> out;
  for (absl::string_view raw :
       absl::StrSplit(absl::string_view(list.data(), list.size()), ',', absl::SkipWhitespace())) {
    absl::string_view entry = absl::StripAsciiWhitespace(raw);
    std::pair<absl::string_view, absl::string_view> id_rest = absl::StrSplit(entry, '=');
    std::pair<absl::string_view, absl::string_view> addr_zone = absl::StrSplit(id_rest.second, '@');
    if (id_rest.first.empty() || addr_zone.first.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("cluster members: entry \"", entry, "\" is not id=host:port[@zone]"));
    }
    Member m{.id = std::string(id_rest.first),
             .address = std::string(addr_zone.first),
             .zone = std::string(addr_zone.second)};
    for (const Member& seen : out) {
      if (seen.id == m.id) {
        return absl::InvalidArgumentError(
            absl::StrCat("cluster members: id \"", m.id, "\" appears twice"));
      }
    }
    out.push_back(std::move(m));
  }
  Normalize(&out);
  return out;
}

std::string EncodeMember(const Member& m) {
  return absl::StrCat("address=", m.address, "\nzone=", m.zone, "\nwarm_bytes=", m.warm_bytes,
                      "\ncool_bytes=", m.cool_bytes, "\ncold_bytes=", m.cold_bytes,
                      "\nreplicas=", m.replicas, "\nplacement=", m.placement, "\n");
}

absl::StatusOr<Member> DecodeMember(std::string_view id, std::string_view value) {
  Member m;
  m.id = std::string(id);
  m.placement = 1;  // a record without one predates the key (kPlacementScheme)
  for (absl::string_view line :
       absl::StrSplit(absl::string_view(value.data(), value.size()), '\n', absl::SkipEmpty())) {
    std::pair<absl::string_view, absl::string_view> kv = absl::StrSplit(line, '=');
    uint64_t n = 0;
    if (kv.first == "address") {
      m.address = std::string(kv.second);
    } else if (kv.first == "zone") {
      m.zone = std::string(kv.second);
    } else if (kv.first == "warm_bytes" && absl::SimpleAtoi(kv.second, &n)) {
      m.warm_bytes = n;
    } else if (kv.first == "cool_bytes" && absl::SimpleAtoi(kv.second, &n)) {
      m.cool_bytes = n;
    } else if (kv.first == "cold_bytes" && absl::SimpleAtoi(kv.second, &n)) {
      m.cold_bytes = n;
    } else if (kv.first == "replicas" && absl::SimpleAtoi(kv.second, &n) && n <= 16) {
      m.replicas = static_cast<uint32_t>(n);
    } else if (kv.first == "placement" && absl::SimpleAtoi(kv.second, &n) && n <= UINT32_MAX) {
      m.placement = static_cast<uint32_t>(n);
    }  // unknown keys: written by a newer version, ignored
  }
  if (m.id.empty() || m.address.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("member \"", std::string(id), "\" has no address"));
  }
  return m;
}

// ---------------------------------------------------------------------------------------

class Membership::Impl {
 public:
  explicit Impl(MembershipOptions options)
      : o_(std::move(options)),
        root_(absl::StrCat("/strata/", o_.cluster, "/")),
        nodes_prefix_(root_ + "nodes/"),
        epoch_key_(root_ + "epoch") {
    current_ = std::make_shared<MemberSet>();
  }

  ~Impl() { Leave(); }

  void Leave() {
    {
      absl::MutexLock lock(&mu_);
      stop_ = true;
    }
    if (thread_.joinable()) thread_.join();
    int64_t lease;
    {
      absl::MutexLock lock(&mu_);
      lease = lease_;
      lease_ = 0;
    }
    if (etcd_ != nullptr && lease != 0) {
      etcd_->StopKeepAlive(lease);
      absl::Status s = etcd_->RevokeLease(lease);
      if (!s.ok()) spdlog::warn("membership: leaving the cluster: {}", s.ToString());
    }
  }

  void SetFixed(std::vector<Member> members) {
    Normalize(&members);
    absl::MutexLock lock(&mu_);
    current_ = std::make_shared<MemberSet>(MemberSet{.epoch = 1, .members = std::move(members)});
    connected_ = true;
  }

  absl::Status StartEtcd() {
    absl::StatusOr<std::unique_ptr<EtcdClient>> etcd =
        EtcdClient::Create({.endpoints = o_.etcd_endpoints});
    if (!etcd.ok()) return etcd.status();
    etcd_ = std::move(*etcd);
    if (!o_.watch && !o_.self.has_value()) {
      absl::StatusOr<int64_t> listed = List(/*restart=*/true);
      absl::MutexLock lock(&mu_);
      connected_ = listed.ok();
      listed_once_ = listed.ok();
      if (!listed.ok()) {
        return absl::UnavailableError(absl::StrCat("cluster membership: etcd at ",
                                                   absl::StrJoin(o_.etcd_endpoints, ","), ": ",
                                                   listed.status().message()));
      }
      return absl::OkStatus();
    }
    absl::StatusOr<std::thread> thread =
        StartThread("the cluster membership watch", [this] { Loop(); });
    if (!thread.ok()) return thread.status();
    thread_ = *std::move(thread);
    absl::MutexLock lock(&mu_);
    auto ready = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return listed_once_ || !fatal_.ok(); };
    const bool done = mu_.AwaitWithTimeout(absl::Condition(&ready), o_.startup_timeout);
    if (!fatal_.ok()) return fatal_;
    if (!done) {
      return absl::UnavailableError(
          absl::StrCat("cluster membership: etcd at ", absl::StrJoin(o_.etcd_endpoints, ","),
                       " not reachable within ", absl::FormatDuration(o_.startup_timeout),
                       last_error_.empty() ? "" : ": ", last_error_));
    }
    return absl::OkStatus();
  }

  std::shared_ptr<const MemberSet> Current() const {
    absl::MutexLock lock(&mu_);
    return current_;
  }
  std::shared_ptr<const MemberSet> Previous() const {
    absl::MutexLock lock(&mu_);
    return previous_.empty() ? nullptr : previous_.front();
  }
  std::vector<std::shared_ptr<const MemberSet>> PreviousSets() const {
    absl::MutexLock lock(&mu_);
    return previous_;
  }
  bool connected() const {
    absl::MutexLock lock(&mu_);
    return connected_;
  }

  absl::Status Refresh(absl::Time deadline) {
    if (etcd_ == nullptr) return absl::OkStatus();
    // One at a time: without a watch a snapshot is applied whatever came before (an etcd that
    // lost its data counts revisions from 1 again), so two at once could apply the older
    // listing last — the newest epoch with an older member set, which no node refuses. Callers
    // refused together (one stale epoch) share one listing: a refresh begun after this call
    // asked answers it too, unless it failed for want of time this caller still has.
    const uint64_t asked = refreshes_begun_.load(std::memory_order_acquire);
    TimedTurn::Hold one(refresh_turn_, deadline);
    if (!one.taken()) {
      return absl::DeadlineExceededError("cluster membership: re-reading the member set");
    }
    if (refreshes_begun_.load(std::memory_order_relaxed) > asked &&
        (last_refresh_.ok() || last_refresh_until_ >= deadline)) {
      return last_refresh_;
    }
    refreshes_begun_.fetch_add(1, std::memory_order_release);
    // Without a watch nothing else applies changes: the snapshot is the state.
    absl::StatusOr<int64_t> listed = List(/*restart=*/!o_.watch, deadline);
    last_refresh_ = listed.status();
    last_refresh_until_ = deadline;
    absl::MutexLock lock(&mu_);
    // A caller out of time says nothing of etcd.
    if (listed.ok() || absl::Now() < deadline) connected_ = listed.ok();
    return listed.status();
  }

  void OnChange(std::function<void(const MemberSet&)> callback) {
    absl::MutexLock lock(&mu_);
    callbacks_.push_back(std::move(callback));
  }

 private:
  // The etcd loop: (re-)register, list, watch until the watch breaks; retry while etcd is
  // unreachable, keeping the last known set meanwhile.
  void Loop() {
    for (;;) {
      bool register_now;
      {
        absl::MutexLock lock(&mu_);
        if (stop_) return;
        register_now = o_.self.has_value() && need_register_;
      }
      if (register_now) {
        if (absl::Status s = Register(); !s.ok()) {
          {
            absl::MutexLock lock(&mu_);
            if (!fatal_.ok()) {
              // Start reports it; later (registering again) only this log can.
              if (registered_once_) {
                connected_ = false;
                spdlog::error(
                    "membership: {}; this node is a member no more and no longer watches the set",
                    fatal_.ToString());
              }
              return;
            }
          }
          Failed("register", s);
          continue;
        }
      }
      absl::StatusOr<int64_t> revision = List(/*restart=*/true);
      if (!revision.ok()) {
        Failed("list", revision.status());
        continue;
      }
      {
        absl::MutexLock lock(&mu_);
        if (!connected_) {
          // Nodes say it at info; a client (no self) only at debug.
          spdlog::log(o_.self.has_value() ? spdlog::level::info : spdlog::level::debug,
                      "membership: etcd reachable; {} members", current_->members.size());
        }
        connected_ = true;
        warned_ = false;
        listed_once_ = true;
        watch_failed_ = false;
      }
      absl::StatusOr<std::unique_ptr<EtcdClient::Watch>> watch = etcd_->WatchPrefix(
          root_, *revision + 1, [this](std::span<const WatchEvent> events) { OnEvents(events); },
          [this](absl::Status s) {
            absl::MutexLock lock(&mu_);
            watch_failed_ = true;
            last_error_ = s.ToString();
          });
      if (!watch.ok()) {
        Failed("watch", watch.status());
        continue;
      }
      // Until the watch breaks, the node must register again, or it stops; meanwhile an
      // epoch raise that failed is made again every retry_interval.
      bool failed;
      std::string why;
      for (;;) {
        int64_t raise = 0;
        {
          absl::MutexLock lock(&mu_);
          auto wake = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
            return stop_ || watch_failed_ || (o_.self.has_value() && need_register_);
          };
          auto wake_or_raise = [&]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
            return wake() || unraised_revision_ != 0;
          };
          mu_.Await(absl::Condition(&wake_or_raise));
          if (!wake() && !mu_.AwaitWithTimeout(absl::Condition(&wake), o_.retry_interval)) {
            raise = unraised_revision_;  // 0: raised meanwhile (the watch's own raise)
          }
          if (wake()) {
            failed = watch_failed_;
            why = last_error_;
            break;
          }
        }
        if (raise != 0) Bump(raise);
      }
      watch->reset();  // outside mu_: its callbacks take mu_
      if (failed) Failed("watch", absl::UnavailableError(why));
    }
  }

  // Marks etcd unreachable and waits retry_interval (or until stopped).
  void Failed(std::string_view what, const absl::Status& s) {
    absl::MutexLock lock(&mu_);
    if (connected_ || !warned_) {
      warned_ = true;
      spdlog::warn("membership: etcd {} failed ({}); keeping the last known {} members", what,
                   s.ToString(), current_->members.size());
    }
    connected_ = false;
    last_error_ = s.ToString();
    auto stopped = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return stop_; };
    mu_.AwaitWithTimeout(absl::Condition(&stopped), o_.retry_interval);
  }

  absl::Status Register() {
    const std::string key = nodes_prefix_ + o_.self->id;
    int64_t old_lease;
    {
      absl::MutexLock lock(&mu_);
      old_lease = lease_;
    }
    if (old_lease != 0) etcd_->StopKeepAlive(old_lease);
    // Still there from before a restart within its lease? Then at which address. Unread, it
    // could be another live node's (below): the loop tries again.
    absl::StatusOr<std::optional<KeyValue>> before = etcd_->Get(key);
    if (!before.ok()) return before.status();
    std::optional<std::string> was_at;
    bool places_alike = true;  // as the key from before placed blocks (or no key)
    if (before->has_value()) {
      absl::StatusOr<Member> m = DecodeMember(o_.self->id, (*before)->value);
      if (m.ok()) was_at = m->address;
      places_alike = m.ok() && PlacesAlike(*m, *o_.self);
    }
    if (was_at.has_value() && *was_at != o_.self->address && (*before)->lease != 0 &&
        (*before)->lease != old_lease) {
      // Held at another address under another lease: a previous run of this node (its lease
      // lapses within lease_ttl), or another live node with the same id, whose key a Put would
      // take over without a word (it keeps serving, and nobody asks it). One lease TTL tells
      // them apart. Also when registering again: a node cut off from etcd past its lease may
      // find its id taken by a replacement meanwhile (before, it took the key back).
      if (absl::Status s = WaitForOtherHolder(key, (*before)->lease, *was_at); !s.ok()) return s;
    }
    absl::StatusOr<int64_t> lease = etcd_->GrantLease(o_.lease_ttl);
    if (!lease.ok()) return lease.status();
    absl::StatusOr<int64_t> put = etcd_->Put(key, EncodeMember(*o_.self), *lease);
    if (!put.ok()) return put.status();
    absl::Status kept = etcd_->KeepAlive(*lease, o_.lease_ttl, [this](absl::Status s) {
      spdlog::warn("membership: lease lost ({}); registering again", s.ToString());
      absl::MutexLock lock(&mu_);
      need_register_ = true;
    });
    if (!kept.ok()) return kept;
    {
      absl::MutexLock lock(&mu_);
      lease_ = *lease;
      need_register_ = false;
      registered_once_ = true;
    }
    // A new key is a join: raise the epoch to its revision. A key that was still there (a
    // restart within the old lease) changes only the lease, and maybe the address, zone,
    // replicas or placement scheme: any of those raises the epoch too, so that clients that
    // do not watch re-read the set (else they dial the old address, or place by the old zone,
    // until some other change).
    absl::StatusOr<std::optional<KeyValue>> kv = etcd_->Get(key);
    if (kv.ok() && kv->has_value() &&
        ((*kv)->create_revision == (*kv)->mod_revision || !places_alike)) {
      Bump((*kv)->mod_revision);
    }
    spdlog::info("membership: registered {} at {} in cluster {}", o_.self->id, o_.self->address,
                 o_.cluster);
    return absl::OkStatus();
  }

  // Waits up to lease_ttl + 2 s for node key `key`, held under `lease` at `address`, to go
  // or change hands. FAILED_PRECONDITION (fatal_, ending the loop) if it stays: another live
  // node has this id.
  absl::Status WaitForOtherHolder(const std::string& key, int64_t lease,
                                  const std::string& address) {
    spdlog::info("membership: {} is registered at {}; waiting up to {} for that lease to lapse",
                 o_.self->id, address, absl::FormatDuration(o_.lease_ttl + absl::Seconds(2)));
    // Only what etcd answered counts: a wait through which etcd could not be read proves
    // nothing (the loop retries the registration), and the key must still be held at the end.
    bool held_at_end = false;
    for (absl::Time until = absl::Now() + o_.lease_ttl + absl::Seconds(2); absl::Now() < until;) {
      {
        absl::MutexLock lock(&mu_);
        auto stopped = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return stop_; };
        if (mu_.AwaitWithTimeout(absl::Condition(&stopped), absl::Milliseconds(200))) {
          return absl::CancelledError("membership: stopping");
        }
      }
      absl::StatusOr<std::optional<KeyValue>> now = etcd_->Get(key);
      held_at_end = now.ok() && now->has_value() && (*now)->lease == lease;
      if (now.ok() && !held_at_end) return absl::OkStatus();
    }
    if (!held_at_end) {
      return absl::UnavailableError(
          absl::StrCat("membership: could not read ", key, " while waiting for its lease"));
    }
    absl::Status in_use = absl::FailedPreconditionError(
        absl::StrCat("node_id ", o_.self->id, " is in use by a live node at ", address,
                     " (its lease is kept alive); give every node its own node_id"));
    absl::MutexLock lock(&mu_);
    fatal_ = in_use;
    return in_use;
  }

  // Lists members and epoch; returns the header revision the watch continues from. A Refresh
  // (not `restart`) keeps what the watch applied since its snapshot; the loop's List before a
  // new watch (`restart`) applies its snapshot whatever came before: an etcd that lost its data
  // starts its revisions again from 1.
  absl::StatusOr<int64_t> List(bool restart, absl::Time deadline = absl::InfiniteFuture()) {
    absl::StatusOr<RangeResult> range = etcd_->GetPrefix(root_, deadline);
    if (!range.ok()) return range.status();
    if (restart) {
      bool behind;
      {
        absl::MutexLock lock(&mu_);
        behind = listed_once_ && range->revision < applied_revision_;
      }
      // Older than what was applied: etcd reset, or a Refresh applied a newer listing while
      // this one was on its way. Read again: a reset etcd answers below again (else this
      // snapshot would undo the newer one, lower the epoch and pass for a reset).
      if (behind) {
        range = etcd_->GetPrefix(root_, deadline);
        if (!range.ok()) return range.status();
      }
    }
    std::map<std::string, Member> members;
    uint64_t epoch = 0;
    for (const KeyValue& kv : range->kvs) {
      if (kv.key == epoch_key_) {
        epoch = ParseEpoch(kv.value);
      } else if (kv.key.starts_with(nodes_prefix_)) {
        std::string id = kv.key.substr(nodes_prefix_.size());
        if (!UnderLease(kv)) continue;
        absl::StatusOr<Member> m = DecodeMember(id, kv.value);
        if (m.ok()) members[id] = *std::move(m);
      }
    }
    bool set_changed;
    {
      absl::MutexLock lock(&mu_);
      // A snapshot older than what the watch (or another List) applied meanwhile would undo
      // the changes since, and the watch does not deliver them again.
      if (!restart && range->revision < applied_revision_) return applied_revision_;
      set_changed = listed_once_ && MembersDiffer(members_, members);
      if (o_.self.has_value() && !members.contains(o_.self->id)) OwnKeyGoneLocked();
      members_ = std::move(members);
      // etcd's revisions went back (it lost its data, or was restored from a snapshot): the
      // epoch starts again from what it holds now. Kept at the old maximum, a node would
      // refuse as stale every client that read the new, smaller epoch, however often it
      // re-read it.
      const bool reset = restart && listed_once_ && range->revision < applied_revision_;
      if (reset && epoch_value_ > epoch) {
        spdlog::warn(
            "membership: etcd's revision went back from {} to {} (its data lost or restored); "
            "epoch {} -> {}",
            applied_revision_, range->revision, epoch_value_, epoch);
      }
      epoch_value_ = reset ? epoch : std::max<uint64_t>(epoch_value_, epoch);
      // A raise still to make for a revision this etcd never reached (it was reset): made
      // now, it would hold the epoch above every change to come.
      if (unraised_revision_ > range->revision) unraised_revision_ = 0;
      applied_revision_ = restart ? range->revision : std::max(applied_revision_, range->revision);
    }
    // Changes missed while disconnected, or a cluster without an epoch yet: raise it.
    if (o_.self.has_value() && (epoch == 0 || set_changed)) {
      if (Bump(range->revision)) {
        absl::MutexLock lock(&mu_);
        epoch_value_ = std::max<uint64_t>(epoch_value_, range->revision);
      }
    }
    Publish();
    return range->revision;
  }

  // This node's key is gone though its lease may live (deleted by hand, or by a process
  // with the same id): keepalives would go on succeeding with the node out of the set.
  void OwnKeyGoneLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (stop_ || need_register_ || lease_ == 0) return;
    spdlog::warn("membership: the key of {} is gone from etcd; registering again", o_.self->id);
    need_register_ = true;
  }

  // A node key is written under its node's lease, so that it goes with the node. One
  // without (an `etcdctl put` by hand, a test's leftover) would be a member for ever, owning
  // blocks no node stores: ignored, with a warning once per key.
  bool UnderLease(const KeyValue& kv) {
    if (kv.lease != 0) return true;
    absl::MutexLock lock(&warned_keys_mu_);
    if (warned_keys_.size() < 1024 && warned_keys_.insert(kv.key).second) {
      spdlog::warn("membership: {} has no lease (not written by a node); ignored", kv.key);
    }
    return false;
  }

  // Whether two records of a member place blocks alike and are reached alike: the fields a
  // client routes by (not the capacities, which are for operators).
  static bool PlacesAlike(const Member& a, const Member& b) {
    return a.address == b.address && a.zone == b.zone && a.replicas == b.replicas &&
           a.placement == b.placement;
  }
  static bool MembersDiffer(const std::map<std::string, Member>& a,
                            const std::map<std::string, Member>& b) {
    if (a.size() != b.size()) return true;
    for (auto ia = a.begin(), ib = b.begin(); ia != a.end(); ++ia, ++ib) {
      if (ia->first != ib->first || !PlacesAlike(ia->second, ib->second)) return true;
    }
    return false;
  }

  void OnEvents(std::span<const WatchEvent> events) {
    std::vector<int64_t> changes;
    {
      absl::MutexLock lock(&mu_);
      for (const WatchEvent& e : events) {
        if (e.kv.mod_revision <= applied_revision_) continue;  // already listed
        if (e.kv.key == epoch_key_) {
          if (e.type == WatchEvent::Type::kPut) {
            epoch_value_ = std::max<uint64_t>(epoch_value_, ParseEpoch(e.kv.value));
          }
          continue;
        }
        if (!e.kv.key.starts_with(nodes_prefix_)) continue;
        std::string id = e.kv.key.substr(nodes_prefix_.size());
        // A node key written without a lease is no member (UnderLease): over a member's key it
        // ends that membership, as a delete would, and as a listing would see it.
        if (e.type == WatchEvent::Type::kDelete || !UnderLease(e.kv)) {
          if (members_.erase(id) > 0) changes.push_back(e.kv.mod_revision);
          if (o_.self.has_value() && id == o_.self->id) OwnKeyGoneLocked();
          continue;
        }
        absl::StatusOr<Member> m = DecodeMember(id, e.kv.value);
        if (!m.ok()) {
          // A listing leaves it out: so does the watch (before, the old record stayed, and
          // watchers and listers placed by different sets until the next listing).
          if (members_.erase(id) > 0) changes.push_back(e.kv.mod_revision);
          if (o_.self.has_value() && id == o_.self->id) OwnKeyGoneLocked();
          continue;
        }
        auto was = members_.find(id);
        if (was == members_.end() || !PlacesAlike(was->second, *m)) {
          changes.push_back(e.kv.mod_revision);
        }
        members_[id] = *std::move(m);
      }
      // After the batch, not per event: the events of one revision (a transaction) share it.
      for (const WatchEvent& e : events) {
        applied_revision_ = std::max(applied_revision_, e.kv.mod_revision);
      }
    }
    // Nodes raise the epoch for what they saw (clients only watch).
    if (o_.self.has_value() && !changes.empty()) Bump(changes.back());
    Publish();
  }

  // Raises the epoch key to `revision` unless it is already there. True if it is now.
  bool Bump(int64_t revision) {
    const std::string value = PadEpoch(revision);
    const Compare absent{.target = Compare::Target::kVersion,
                         .op = Compare::Op::kEqual,
                         .key = epoch_key_,
                         .value = {},
                         .number = 0};
    const TxnOp put{.kind = TxnOp::Kind::kPut, .key = epoch_key_, .value = value};
    absl::StatusOr<bool> raised = etcd_->Txn({&absent, 1}, {&put, 1}, {});
    if (!raised.ok() || !*raised) {
      const Compare lower{.target = Compare::Target::kValue,
                          .op = Compare::Op::kLess,
                          .key = epoch_key_,
                          .value = value};
      raised = etcd_->Txn({&lower, 1}, {&put, 1}, {});
    }
    absl::MutexLock lock(&mu_);
    if (!raised.ok()) {
      // Once per spell of failures, not at every retry.
      spdlog::log(unraised_revision_ == 0 ? spdlog::level::warn : spdlog::level::debug,
                  "membership: raising the epoch to {}: {}; trying again every {}", revision,
                  raised.status().ToString(), absl::FormatDuration(o_.retry_interval));
      // The change is applied here, so no listing or event brings it up again: the loop
      // raises it later (else clients that do not watch would route by the old set).
      unraised_revision_ = std::max(unraised_revision_, revision);
      return false;
    }
    if (revision >= unraised_revision_) unraised_revision_ = 0;
    return true;
  }

  // Whether two sets place every block alike: the same ids, zones and schemes.
  static bool PlacesAlike(const MemberSet& a, const MemberSet& b) {
    return std::equal(a.members.begin(), a.members.end(), b.members.begin(), b.members.end(),
                      [](const Member& x, const Member& y) {
                        return x.id == y.id && x.zone == y.zone && x.placement == y.placement;
                      });
  }

  // Publishes members_/epoch_value_ as the current set when they differ from it.
  void Publish() {
    std::vector<std::function<void(const MemberSet&)>> callbacks;
    std::shared_ptr<const MemberSet> now;
    // One delivery at a time, each of the set current when it begins: a Refresh and the watch
    // publishing at once could otherwise deliver the older set last (a client would then let
    // go of a node that had just joined). A set may be delivered twice; never out of order.
    absl::MutexLock deliver(&deliver_mu_);
    {
      absl::MutexLock lock(&mu_);
      MemberSet next;
      next.epoch = epoch_value_;
      for (const auto& [id, m] : members_) next.members.push_back(m);
      const bool members_changed = next.members != current_->members;
      if (!members_changed && next.epoch == current_->epoch) return;
      if (members_changed && listed_once_ && !PlacesAlike(*current_, next)) {
        // Kept: the sets before that place blocks otherwise than the new one, newest first,
        // each once (a node restarted leaves and joins: the set without it comes once per
        // restart, the one with it is the new set again and tells readers nothing).
        previous_.insert(previous_.begin(), current_);
        std::vector<std::shared_ptr<const MemberSet>> kept;
        for (std::shared_ptr<const MemberSet>& s : previous_) {
          if (PlacesAlike(*s, next)) continue;
          if (std::any_of(kept.begin(), kept.end(),
                          [&](const auto& k) { return PlacesAlike(*k, *s); })) {
            continue;
          }
          if (kept.size() < Membership::kPreviousSetsKept) kept.push_back(std::move(s));
        }
        previous_ = std::move(kept);
        next.since = absl::Now();
      } else {
        next.since = current_->since;  // the same placement since then (address or capacity)
      }
      current_ = std::make_shared<MemberSet>(std::move(next));
      now = current_;
      callbacks = callbacks_;
    }
    for (auto& cb : callbacks) cb(*now);
  }

  const MembershipOptions o_;
  const std::string root_, nodes_prefix_, epoch_key_;
  std::unique_ptr<EtcdClient> etcd_;
  std::thread thread_;

  absl::Mutex warned_keys_mu_;
  std::set<std::string> warned_keys_ ABSL_GUARDED_BY(warned_keys_mu_);
  TimedTurn refresh_turn_;  // Refresh: one listing at a time; its holder owns the two below
  std::atomic<uint64_t> refreshes_begun_{0};
  absl::Status last_refresh_;
  absl::Time last_refresh_until_;                     // the deadline it ran under
  absl::Mutex deliver_mu_ ABSL_ACQUIRED_BEFORE(mu_);  // Publish: one set's callbacks at a time
  mutable absl::Mutex mu_;
  std::shared_ptr<const MemberSet> current_ ABSL_GUARDED_BY(mu_);
  // The sets before current_, newest first (Membership::kPreviousSetsKept at most).
  std::vector<std::shared_ptr<const MemberSet>> previous_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, Member> members_ ABSL_GUARDED_BY(mu_);
  uint64_t epoch_value_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t applied_revision_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t lease_ ABSL_GUARDED_BY(mu_) = 0;
  bool connected_ ABSL_GUARDED_BY(mu_) = false;
  bool listed_once_ ABSL_GUARDED_BY(mu_) = false;
  bool warned_ ABSL_GUARDED_BY(mu_) = false;  // an outage is logged once, not every retry
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  bool need_register_ ABSL_GUARDED_BY(mu_) = true;
  bool registered_once_ ABSL_GUARDED_BY(mu_) = false;
  // The highest revision of a change whose epoch raise failed (0: none): raised again from
  // the loop every retry_interval until it succeeds.
  int64_t unraised_revision_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Status fatal_ ABSL_GUARDED_BY(mu_);  // the loop stopped for it (a node id in use)
  bool watch_failed_ ABSL_GUARDED_BY(mu_) = false;
  std::string last_error_ ABSL_GUARDED_BY(mu_);
  std::vector<std::function<void(const MemberSet&)>> callbacks_ ABSL_GUARDED_BY(mu_);
};

// ---------------------------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<Membership>> Membership::Start(MembershipOptions options) {
  const MembershipMode mode = options.mode;
  auto impl = std::make_unique<Impl>(options);
  switch (mode) {
    case MembershipMode::kSingle:
      if (!options.self.has_value() && options.static_members.size() != 1) {
        return absl::InvalidArgumentError("cluster mode single: needs the node itself");
      }
      impl->SetFixed({options.self.has_value() ? *options.self : options.static_members[0]});
      break;
    case MembershipMode::kStatic: {
      if (options.static_members.empty()) {
        return absl::InvalidArgumentError("cluster mode static: cluster_members is empty");
      }
      impl->SetFixed(options.static_members);
      break;
    }
    case MembershipMode::kEtcd:
      if (options.etcd_endpoints.empty()) {
        return absl::InvalidArgumentError("cluster mode etcd: etcd_endpoints is empty");
      }
      if (options.self.has_value() && (options.self->id.empty() || options.self->address.empty())) {
        return absl::InvalidArgumentError("cluster mode etcd: the node needs an id and an address");
      }
      if (absl::Status s = impl->StartEtcd(); !s.ok()) return s;
      break;
  }
  return std::unique_ptr<Membership>(new Membership(std::move(impl), mode));
}

Membership::Membership(std::unique_ptr<Impl> impl, MembershipMode mode)
    : impl_(std::move(impl)), options_mode_(mode) {}
Membership::~Membership() = default;

std::shared_ptr<const MemberSet> Membership::Current() const { return impl_->Current(); }
std::shared_ptr<const MemberSet> Membership::Previous() const { return impl_->Previous(); }
std::vector<std::shared_ptr<const MemberSet>> Membership::PreviousSets() const {
  return impl_->PreviousSets();
}
bool Membership::connected() const { return impl_->connected(); }
absl::Status Membership::Refresh(absl::Time deadline) { return impl_->Refresh(deadline); }
void Membership::Leave() { impl_->Leave(); }
void Membership::OnChange(std::function<void(const MemberSet&)> callback) {
  impl_->OnChange(std::move(callback));
}

}  // namespace strata::cluster
