// Placement: which store nodes own a block (DESIGN.md §5, docs/design/cluster.md).
//
// Rendezvous (highest-random-weight) hashing: every member scores every block with a hash
// of (member id, chain hash); the R highest scores own it. A join or leave moves only the
// blocks whose top R change (about R/N of them), every party computes the same owners from
// the same member set without talking to anyone, and consecutive blocks of one prefix land
// on unrelated nodes, so a long prefix stripes across the cluster.
//
// Zone-aware: when members carry zones, the owners are picked zone by zone first (the best
// member of the best zone, then the best member of the next zone ...) so R replicas sit in
// min(R, zones) distinct zones; the remaining places go by score.
#pragma once

#include <bit>
#include <cstdint>
#include <cstring>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "strata/common/block_key.h"

namespace strata::cluster {

// The placement scheme of this build: which RendezvousScore a member computes. Members of
// different schemes own different blocks for the same hash, so they miss each other's blocks
// and their rebalancers would hand blocks back and forth; a member records its scheme in etcd
// and a node's rebalancer waits while any member's differs (docs/design/cluster.md,
// "Placement"). 1: xxh3_64(chain hash, seed), until 2026-11-27 (a member record without a
// scheme); 2: the 64-bit finalizer of seed ^ key, below.
inline constexpr uint32_t kPlacementScheme = 2;

struct Member {
  std::string id;           // unique in the cluster; the rendezvous identity (not the address)
  std::string address;      // gRPC host:port clients and peers dial
  std::string zone;         // failure domain; "" when the cluster does not use zones
  uint64_t warm_bytes = 0;  // capacities, for operators (placement does not weigh them)
  uint64_t cool_bytes = 0;
  uint64_t cold_bytes = 0;
  uint32_t replicas = 0;  // copies the node's rebalancer keeps (cluster_replicas); 0 = unknown
  uint32_t placement = kPlacementScheme;  // the scheme it places blocks by

  bool operator==(const Member&) const = default;
};

// A member set as every party sees it: members sorted by id, labelled with its epoch (which
// rises with every change of the set; 0 = unknown).
struct MemberSet {
  uint64_t epoch = 0;
  std::vector<Member> members;
  // When this process saw the member list become this one (InfinitePast: from the start).
  absl::Time since = absl::InfinitePast();

  // Index of the member with this id, or -1.
  int Find(std::string_view id) const;
};

// The rendezvous score of `member_id` for a block; higher wins. Part of the cluster's
// contract: every node and client must compute the same scores (PlacementTest pins some).
uint64_t RendezvousScore(std::string_view member_id, const ChainHash& hash);

// The same score in parts, for callers scoring many blocks: the member's seed (xxh3_64 of
// its id) once per member, the block's key (its chain hash folded to 64 bits) once per
// block, then a 64-bit mix of the two per member and block (a few ns: a 2,048-block lookup
// scores 6,144 pairs before its first call leaves).
uint64_t RendezvousSeed(std::string_view member_id);

inline uint64_t RendezvousKey(const ChainHash& hash) {
  uint64_t key = 0;
  for (size_t w = 0; w < kChainHashBytes / 8; ++w) {
    uint64_t word;  // little-endian, as every party reads it
    std::memcpy(&word, hash.bytes.data() + 8 * w, 8);
    if constexpr (std::endian::native == std::endian::big) word = __builtin_bswap64(word);
    key ^= std::rotl(word, static_cast<int>(16 * w));
  }
  return key;
}

inline uint64_t RendezvousScore(uint64_t seed, uint64_t key) {
  uint64_t x = seed ^ key;  // then MurmurHash3's 64-bit finalizer: every bit moves every bit
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ULL;
  x ^= x >> 33;
  return x;
}

inline uint64_t RendezvousScore(uint64_t seed, const ChainHash& hash) {
  return RendezvousScore(seed, RendezvousKey(hash));
}

// RendezvousSeed of every member, in order: for callers placing many blocks with one set.
std::vector<uint64_t> RendezvousSeeds(std::span<const Member> members);

// Indexes into `members` of the min(replicas, members.size()) owners of `hash`, best first.
std::vector<int> Owners(std::span<const Member> members, const ChainHash& hash, int replicas);
// The same with the members' seeds (RendezvousSeeds(members)) computed once by the caller.
std::vector<int> Owners(std::span<const Member> members, std::span<const uint64_t> seeds,
                        const ChainHash& hash, int replicas);
// Owners(...)[0] without building the list: the member with the top rendezvous score (the
// lower index on a tie). Zones do not change it: the first zone picked is the top scorer's.
// -1 when no member owns anything. seeds[i]: RendezvousSeed of member i.
int FirstOwner(std::span<const uint64_t> seeds, const ChainHash& hash);

// A reader's view of `set` and the sets before it (newest first), prepared once per call
// for ReadCandidates of each of its blocks: the members' seeds, and each earlier member's
// index in `set` (-1: it left).
struct ReadPlan {
  const MemberSet* set = nullptr;
  std::vector<uint64_t> seeds;
  std::vector<std::vector<uint64_t>> past_seeds;
  std::vector<std::vector<int>> past_to_now;
};
ReadPlan PlanReads(const MemberSet& set,
                   std::span<const std::shared_ptr<const MemberSet>> previous);

// Where a block may be, in the order a reader asks: its `replicas` owners under the plan's
// set, then its first owner under each earlier set that is not among them yet. Member
// indexes of the set (earlier owners are mapped by id; one that left is skipped). While
// blocks move (earlier sets in the plan) the list is walked twice: a block may leave its old
// owner after its new owner was asked and before the old one is.
std::vector<int> ReadCandidates(const ReadPlan& plan, const ChainHash& hash, int replicas);

// Ids of the members whose placement scheme is not this build's (kPlacementScheme).
std::vector<std::string> MembersPlacingOtherwise(std::span<const Member> members);

// Copies a node's rebalancer keeps of every block: the most any member records (its
// cluster_replicas) and `own`, the node's own setting, whichever is larger. Every node that
// sees the same member set keeps the same count, so while a changed cluster_replicas rolls
// through the nodes nobody drops a copy that another node would make again
// (docs/design/cluster.md, "Replication factor").
int ReplicasKept(std::span<const Member> members, int own);
// "id=R" of every member whose recorded replicas differ from ReplicasKept(members, own), and
// of none when they all agree.
std::vector<std::string> MembersKeepingOtherReplicas(std::span<const Member> members, int own);

// What `members` disagree on with a client that places by this build's scheme and writes
// `replicas` copies, in words ("" when nothing): members placing otherwise, and nodes that keep
// another count of copies (ReplicasKept) than `replicas`.
std::string Disagreement(std::span<const Member> members, int replicas);

// Sorts by id and drops later duplicates of an id. Members as every function here wants them.
void Normalize(std::vector<Member>* members);

}  // namespace strata::cluster
