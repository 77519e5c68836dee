// DataPlane's handling of two-sided messages no call claims (data_plane.h: NoteRefused,
// SweepUnclaimed; docs/design/transfer-protocol.md, "Messages no call claims"). UCX keeps a
// message that arrived before its receive, bytes and all, until a receive matches it; a call
// that never reaches the node would leave its messages there for as long as the node runs.
#include <algorithm>
#include <optional>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "spdlog/spdlog.h"
#include "strata/transport/data_plane.h"

namespace strata::transport {
namespace {

// Closed channels whose late messages are still dropped; past this the oldest are forgotten
// (their messages then go when the sweep finds they name no open channel).
constexpr size_t kMaxClosedRemembered = 4096;

}  // namespace

void DataPlane::DropChannelMessages(uint64_t id, std::span<const std::shared_ptr<Worker>> workers) {
  const uint64_t prefix = ChannelTagPrefix(id);
  uint64_t n = 0;
  for (const auto& lane : workers) n += lane->DropUnclaimed({&prefix, 1}, kChannelTagMask);
  if (n > 0) {
    unclaimed_dropped_.fetch_add(n, std::memory_order_relaxed);
    spdlog::info("data channel {}: dropped {} messages no call claimed", id, n);
  }
  absl::MutexLock lock(&mu_);
  if (closed_.size() >= kMaxClosedRemembered) closed_.erase(closed_.begin());
  closed_.push_back({prefix, absl::Now() + options_.unclaimed_timeout});
}

void DataPlane::NoteRefused(uint64_t channel_id, uint32_t lane, std::span<const uint64_t> tags) {
  if (lane >= lanes() || tags.empty()) return;
  const absl::Time until = absl::Now() + options_.unclaimed_timeout;
  absl::MutexLock lock(&mu_);
  if (!channels_.contains(channel_id)) return;  // the full id: the capability to name it
  for (uint64_t tag : tags) {
    if (refused_.size() >= kMaxRefusedTags) break;  // the rest close the channel, later
    if (!TagNamesChannel(tag, channel_id)) continue;
    refused_.push_back({lane, tag, until});
  }
}

uint64_t DataPlane::SweepUnclaimed() {
  absl::MutexLock sweep(&sweep_mu_);
  const absl::Time now = absl::Now();
  std::vector<uint64_t> ids, prefixes;  // open channels
  const std::vector<std::shared_ptr<Worker>> lanes = Lanes();
  std::vector<std::vector<uint64_t>> refused(lanes.size());
  std::vector<uint64_t> closed;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [id, state] : channels_) {
      ids.push_back(id);
      prefixes.push_back(ChannelTagPrefix(id));
    }
    std::erase_if(refused_, [&](const Refused& r) { return r.until <= now; });
    for (const Refused& r : refused_) refused[r.lane].push_back(r.tag);
    std::erase_if(closed_, [&](const Closed& c) { return c.until <= now; });
    for (const Closed& c : closed_) closed.push_back(c.prefix);
  }
  oldest_seen_.resize(lanes.size());
  std::vector<uint64_t> stale;
  uint64_t dropped = 0;
  for (size_t lane = 0; lane < lanes.size(); ++lane) {
    Worker& w = *lanes[lane];
    // Refused calls' messages, and late ones of closed channels, including any that arrived
    // since the call was refused or the channel closed.
    dropped += w.DropUnclaimed(refused[lane], ~uint64_t{0});
    dropped += w.DropUnclaimed(closed, kChannelTagMask);
    // A message naming no open channel can never be claimed: drop those at the front (older
    // than any of an open channel's). Under mu_, so no channel opens meanwhile; the lane's
    // thread never takes mu_, and no holder of mu_ waits for a lane.
    {
      absl::MutexLock lock(&mu_);
      // Prefix 0 names no channel: the lane checker's messages (it drops any left over).
      std::vector<uint64_t> open;
      if (probe_ != nullptr) open.push_back(0);
      for (const auto& [id, state] : channels_) open.push_back(ChannelTagPrefix(id));
      dropped += w.DropUnclaimedUnless(open, kChannelTagMask);
    }
    // Per open channel: a message that stayed its oldest unclaimed one for unclaimed_timeout
    // was claimed by no call in all that time, so its call never reached the node. The
    // channel's newer messages cannot be told apart from those of calls still on their way,
    // so the channel goes (its client connects a new one on NOT_FOUND), and its messages with
    // it.
    const std::vector<std::optional<uint64_t>> oldest =
        w.OldestUnclaimed(prefixes, kChannelTagMask);
    absl::flat_hash_map<uint64_t, OldestSeen> seen;
    for (size_t i = 0; i < ids.size(); ++i) {
      if (!oldest[i].has_value()) continue;
      auto it = oldest_seen_[lane].find(ids[i]);
      const OldestSeen s = it != oldest_seen_[lane].end() && it->second.tag == *oldest[i]
                               ? it->second
                               : OldestSeen{*oldest[i], now};
      if (now - s.since >= options_.unclaimed_timeout) {
        spdlog::warn("data channel {} lane {}: message tag {:#x} unclaimed for {}; closing it",
                     ids[i], lane, s.tag, absl::FormatDuration(now - s.since));
        stale.push_back(ids[i]);
      } else {
        seen.emplace(ids[i], s);
      }
    }
    oldest_seen_[lane] = std::move(seen);
  }
  unclaimed_dropped_.fetch_add(dropped, std::memory_order_relaxed);
  std::sort(stale.begin(), stale.end());
  stale.erase(std::unique(stale.begin(), stale.end()), stale.end());
  uint64_t closed_now = 0;
  for (uint64_t id : stale) closed_now += Close(id).ok() ? 1 : 0;  // drops its messages
  return closed_now;
}

}  // namespace strata::transport
