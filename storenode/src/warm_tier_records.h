// The warm tier's private records (warm_tier.cc, warm_tier_reads.cc): a block's index entry,
// a put's reservation and a read's lease.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "strata/storenode/warm_tier.h"

namespace strata::storenode {

struct WarmTier::Entry {
  enum class State { kReserved, kCommitting, kCommitted };
  BlockKey key;
  Slot slot;
  uint64_t size = 0;
  uint64_t checksum = 0;
  State state = State::kReserved;
  uint32_t pins = 0;
  uint64_t last_tick = 0;
  uint64_t commit_seq = 0;  // when committed: WarmTier::commits_ after its commit
  uint64_t handle = 0;      // PolicyHandle(key)
  uint64_t parent_handle = kNoBlock;
  uint32_t depth = 0;
  float importance = 0;
  bool prefetched = false;  // placed by Prefetch and not read yet
  bool deleted = false;     // a writer deleted it while reserved: its commit is aborted
  bool uncharged = false;   // its slot no longer counts in scope_used_ (quarantined: AbortPut)
  std::string session;
};

struct WarmTier::Reservation {
  int64_t expires_ms = 0;
  bool committing = false;
  std::vector<Entry*> entries;
};

struct WarmTier::DemoteVictim {
  Entry* entry;
  uint64_t size;
  BlockAttrs attrs;
};

struct WarmTier::Lease {
  int64_t expires_ms = 0;
  std::vector<Entry*> entries;
  bool held = false;   // HoldLease: outlives the call that took it, counted against the caps
  uint64_t bytes = 0;  // slot bytes of `entries` (a block in two leases counts in each)
};

}  // namespace strata::storenode
