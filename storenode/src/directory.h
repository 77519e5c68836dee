// Directory: which peers hold a block in GPU memory (the hot tier), as GPU agents publish it
// to the block's owner node (DESIGN.md §5, docs/design/cluster.md). Entries carry a TTL and
// vanish when it lapses or when the agent removes them; Lookup returns them beside the
// node's own tiers, so a decode worker can pull a prefix straight from a prefill worker's GPU.
//
// Bounded: at most max_entries (key, location) pairs, and past three quarters of them a scope
// holding a quarter takes no more (the last quarter stays for the others); a publish beyond
// either is RESOURCE_EXHAUSTED for the blocks that do not fit (expired entries are
// purged first, at most once a second: a full directory is not rescanned by every call). At most
// max_per_block locations per block: a new one past that replaces the one whose TTL ends
// first, so a Lookup answer stays within max_per_block locations a block however many agents
// publish one block.
//
// Thread-safe.
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "strata/common/block_key.h"

namespace strata::storenode {

class Directory {
 public:
  struct Location {
    std::string address;  // how peers reach the agent holding the block
    std::string token;    // what the agent asks its peers to present ("" = none)
    uint64_t size = 0;    // block bytes, as published
  };

  static constexpr size_t kMaxPerBlock = 8;
  explicit Directory(uint64_t max_entries, size_t max_per_block = kMaxPerBlock)
      : max_entries_(max_entries),
        max_per_block_(max_per_block),
        max_per_scope_(std::max<uint64_t>(1, max_entries / 4)) {}

  // Publishes (ttl > 0: adds, or refreshes size and token) or removes (ttl == 0) the entry of
  // `address` for each key. Returns per key OK, RESOURCE_EXHAUSTED (directory full), or what
  // `admit` (when given) answers for a key it refuses to add: it is asked under the
  // directory's lock, so a Remove of the key that follows a change `admit` sees (a writer's
  // delete) cannot come between its answer and the insert.
  using Admit = std::function<absl::Status(const BlockKey&)>;
  std::vector<absl::Status> Publish(NamespaceId ns, const std::string& scope,
                                    std::span<const ChainHash> hashes,
                                    std::span<const uint64_t> sizes, const std::string& address,
                                    const std::string& token, absl::Duration ttl,
                                    const Admit& admit = nullptr);
  // Drops every location of each key (a writer deleted the blocks); returns how many.
  uint64_t Remove(NamespaceId ns, const std::string& scope, std::span<const ChainHash> hashes);
  // Live locations of one block (empty: none).
  std::vector<Location> Find(const BlockKey& key) const;
  // Drops expired entries; returns how many.
  uint64_t Expire();
  uint64_t entries() const;

 private:
  struct Entry {
    std::string address;
    // Shared by the entries of one Publish call: an agent's token is one string, not one per
    // block it holds.
    std::shared_ptr<const std::string> token;
    uint64_t size = 0;
    absl::Time expires;
  };

  uint64_t ExpireLocked(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Adds `delta` entries of `scope` to the counts.
  void Count(const std::string& scope, int64_t delta) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const uint64_t max_entries_;
  const size_t max_per_block_;
  const uint64_t max_per_scope_;  // a quarter of max_entries (see above)
  mutable absl::Mutex mu_;
  absl::Time last_purge_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  absl::flat_hash_map<BlockKey, std::vector<Entry>> map_ ABSL_GUARDED_BY(mu_);
  uint64_t entries_ ABSL_GUARDED_BY(mu_) = 0;
  absl::flat_hash_map<std::string, uint64_t> per_scope_ ABSL_GUARDED_BY(mu_);
};

}  // namespace strata::storenode
