#include "strata/cluster/placement.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "xxhash.h"

namespace strata::cluster {

int MemberSet::Find(std::string_view id) const {
  auto it = std::lower_bound(members.begin(), members.end(), id,
                             [](const Member& m, std::string_view v) { return m.id < v; });
  return it != members.end() && it->id == id ? static_cast<int>(it - members.begin()) : -1;
}

// The member id seeds the score: independent per member, stable across processes and
// versions (xxh3 is specified), and never dependent on the member's position.
uint64_t RendezvousSeed(std::string_view member_id) {
  return XXH3_64bits(member_id.data(), member_id.size());
}

uint64_t RendezvousScore(std::string_view member_id, const ChainHash& hash) {
  return RendezvousScore(RendezvousSeed(member_id), hash);
}

std::vector<uint64_t> RendezvousSeeds(std::span<const Member> members) {
  std::vector<uint64_t> seeds;
  seeds.reserve(members.size());
  for (const Member& m : members) seeds.push_back(RendezvousSeed(m.id));
  return seeds;
}

std::vector<int> Owners(std::span<const Member> members, const ChainHash& hash, int replicas) {
  return Owners(members, RendezvousSeeds(members), hash, replicas);
}

std::vector<int> Owners(std::span<const Member> members, std::span<const uint64_t> seeds,
                        const ChainHash& hash, int replicas) {
  const int n = static_cast<int>(members.size());
  const int want = std::clamp(replicas, 0, n);
  std::vector<std::pair<uint64_t, int>> ranked;  // (score, index), best first
  ranked.reserve(n);
  bool zoned = false;
  const uint64_t key = RendezvousKey(hash);
  for (int i = 0; i < n; ++i) {
    ranked.emplace_back(RendezvousScore(seeds[i], key), i);
    zoned = zoned || !members[i].zone.empty();
  }
  // Ties (astronomically unlikely) break by id order, so everyone agrees.
  std::sort(ranked.begin(), ranked.end(), [](const auto& a, const auto& b) {
    return a.first != b.first ? a.first > b.first : a.second < b.second;
  });
  std::vector<int> owners;
  owners.reserve(want);
  if (!zoned) {
    for (int k = 0; k < want; ++k) owners.push_back(ranked[k].second);
    return owners;
  }
  // First pass: the best member of each zone, in score order; second pass: the rest.
  std::vector<bool> taken(n, false);
  std::vector<std::string_view> zones_used;
  for (const auto& [score, i] : ranked) {
    if (static_cast<int>(owners.size()) == want) break;
    std::string_view zone = members[i].zone;
    if (std::find(zones_used.begin(), zones_used.end(), zone) != zones_used.end()) continue;
    zones_used.push_back(zone);
    owners.push_back(i);
    taken[i] = true;
  }
  for (const auto& [score, i] : ranked) {
    if (static_cast<int>(owners.size()) == want) break;
    if (!taken[i]) owners.push_back(i);
  }
  return owners;
}

int FirstOwner(std::span<const uint64_t> seeds, const ChainHash& hash) {
  int best = -1;
  uint64_t best_score = 0;
  const uint64_t key = RendezvousKey(hash);
  for (size_t i = 0; i < seeds.size(); ++i) {
    const uint64_t score = RendezvousScore(seeds[i], key);
    if (best < 0 || score > best_score) {
      best = static_cast<int>(i);
      best_score = score;
    }
  }
  return best;
}

ReadPlan PlanReads(const MemberSet& set,
                   std::span<const std::shared_ptr<const MemberSet>> previous) {
  ReadPlan plan{.set = &set, .seeds = RendezvousSeeds(set.members)};
  for (const std::shared_ptr<const MemberSet>& before : previous) {
    plan.past_seeds.push_back(RendezvousSeeds(before->members));
    std::vector<int>& to_now = plan.past_to_now.emplace_back();
    for (const Member& m : before->members) to_now.push_back(set.Find(m.id));
  }
  return plan;
}

std::vector<int> ReadCandidates(const ReadPlan& plan, const ChainHash& hash, int replicas) {
  std::vector<int> c = Owners(plan.set->members, plan.seeds, hash, replicas);
  if (!plan.past_seeds.empty()) {
    for (size_t k = 0; k < plan.past_seeds.size(); ++k) {
      const int old = FirstOwner(plan.past_seeds[k], hash);
      if (old < 0) continue;
      const int idx = plan.past_to_now[k][old];
      if (idx >= 0 && std::find(c.begin(), c.end(), idx) == c.end()) c.push_back(idx);
    }
    const size_t once = c.size();
    for (size_t k = 0; k < once; ++k) c.push_back(c[k]);
  }
  return c;
}

std::vector<std::string> MembersPlacingOtherwise(std::span<const Member> members) {
  std::vector<std::string> ids;
  for (const Member& m : members) {
    if (m.placement != kPlacementScheme) ids.push_back(m.id);
  }
  return ids;
}

int ReplicasKept(std::span<const Member> members, int own) {
  int kept = own;
  for (const Member& m : members) kept = std::max(kept, static_cast<int>(m.replicas));
  return kept;
}

std::vector<std::string> MembersKeepingOtherReplicas(std::span<const Member> members, int own) {
  const int kept = ReplicasKept(members, own);
  std::vector<std::string> out;
  for (const Member& m : members) {
    if (m.replicas != 0 && static_cast<int>(m.replicas) != kept) {
      out.push_back(absl::StrCat(m.id, "=", m.replicas));
    }
  }
  return out;
}

std::string Disagreement(std::span<const Member> members, int replicas) {
  std::string out;
  if (std::vector<std::string> others = MembersPlacingOtherwise(members); !others.empty()) {
    absl::StrAppend(&out, "members ", absl::StrJoin(others, ", "),
                    " place blocks by another placement scheme than this client's (",
                    kPlacementScheme,
                    "): blocks they own are looked for elsewhere; upgrade nodes and clients "
                    "together");
  }
  if (const int kept = ReplicasKept(members, 0); kept > 0 && kept != replicas) {
    absl::StrAppend(&out, out.empty() ? "" : "; ", "client replicas ", replicas,
                    " but the nodes keep ", kept, " copies of every block");
  }
  return out;
}

void Normalize(std::vector<Member>* members) {
  std::stable_sort(members->begin(), members->end(),
                   [](const Member& a, const Member& b) { return a.id < b.id; });
  members->erase(std::unique(members->begin(), members->end(),
                             [](const Member& a, const Member& b) { return a.id == b.id; }),
                 members->end());
}

}  // namespace strata::cluster
