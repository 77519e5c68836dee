// The warm tier's unit-test fixture: a WarmTier over a small arena with a manual clock, and
// helpers to put, read and count blocks (warm_tier_test.cc, warm_tier_budget_test.cc).
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <deque>
#include <memory>
#include <ostream>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "strata/common/block_key.h"
#include "strata/common/checksum.h"
#include "strata/common/namespace.h"
#include "strata/storenode/slab_arena.h"
#include "strata/storenode/warm_tier.h"
#include "strata/testutil/status_matchers.h"

namespace strata::storenode::warm_tier_test {

using ::strata::testutil::IsOk;
using ::strata::testutil::StatusIs;
using ::testing::AnyOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using Code = absl::StatusCode;
using Hashes = std::vector<ChainHash>;
using Bytes = std::vector<uint8_t>;

inline constexpr uint64_t kPage = 64 * 1024;  // max_block_bytes, hence the slab page size
inline constexpr uint64_t kTtl = 60'000;

inline auto NotFound() { return StatusIs(absl::StatusCode::kNotFound); }

inline ChainHash H(uint32_t n) {
  ChainHash h;
  std::memcpy(h.bytes.data(), &n, sizeof(n));
  for (size_t i = sizeof(n); i < kChainHashBytes; ++i) h.bytes[i] = static_cast<uint8_t>(0xc0 + i);
  return h;
}

inline Hashes Keys(uint32_t from, uint32_t to) {
  Hashes out;
  for (uint32_t n = from; n < to; ++n) out.push_back(H(n));
  return out;
}

inline Bytes Payload(uint32_t n, size_t size) {
  Bytes p(size);
  for (size_t i = 0; i < size; ++i) p[i] = static_cast<uint8_t>(n * 167 + i * 31 + (i >> 8));
  return p;
}

inline uint64_t Sum(const Bytes& p) { return BlockChecksum(p.data(), p.size()); }

inline NamespaceSpec Spec(std::string model = "m", uint64_t block_bytes = 4096) {
  NamespaceSpec s;
  s.model_id = std::move(model);
  s.dtype = "fp16";
  s.layout = "l";
  s.block_tokens = 16;
  s.tp_size = 1;
  s.block_bytes = block_bytes;
  return s;
}

// Slab bytes a block of `size` takes (the warm tier's page is kPage).
inline uint64_t ClassBytes(uint64_t size) {
  static const std::unique_ptr<SlabArena> arena = *SlabArena::Create(kPage, kPage, false);
  return arena->ClassBytes(arena->ClassFor(size));
}

// Stats() occupancy, compared as a whole so that a mismatch prints every field.
struct Usage {
  uint64_t blocks = 0, payload = 0, used = 0, reserved = 0, leases = 0, pinned = 0;
  friend bool operator==(const Usage&, const Usage&) = default;
  friend std::ostream& operator<<(std::ostream& os, const Usage& u) {
    return os << "{blocks " << u.blocks << ", payload " << u.payload << ", used " << u.used
              << ", reservations " << u.reserved << ", leases " << u.leases << ", pinned "
              << u.pinned << "}";
  }
};

struct Read {
  WarmTier::GetResult result;
  std::vector<Bytes> data;  // what the sink received, per block
};

class WarmTierTest : public ::testing::Test {
 protected:
  void SetUp() override { Init(8 * kPage); }

  void Init(uint64_t capacity, uint64_t max_namespaces = 1024, PolicyKind policy = PolicyKind::kLru,
            uint64_t scope_quota = 0, uint64_t min_slot = 0) {
    WarmTierOptions o;
    o.policy = policy;
    o.min_slot_bytes = min_slot;
    if (scope_quota > 0) o.scope_quota = [scope_quota](const std::string&) { return scope_quota; };
    o.capacity_bytes = capacity;
    o.max_block_bytes = kPage;
    o.max_namespaces = max_namespaces;
    o.now_ms = [this] { return now_ms_.load(); };
    o.max_held_leases = max_held_leases_;
    o.max_held_bytes = max_held_bytes_;
    o.tombstone_capacity = tombstone_capacity_;
    absl::StatusOr<std::unique_ptr<WarmTier>> tier = WarmTier::Create(std::move(o));
    ASSERT_THAT(tier, IsOk());
    tier_ = std::move(*tier);
    absl::StatusOr<NamespaceId> ns = tier_->RegisterNamespace(Spec());
    ASSERT_THAT(ns, IsOk());
    ns_ = *ns;
  }

  WarmTier::ReserveResult Reserve(std::vector<WarmTier::PutBlock> blocks, uint64_t ttl = kTtl,
                                  const std::string& scope = "s") {
    return tier_->BeginPut(ns_, scope, blocks, ttl);
  }
  // Key n's payload of `size` bytes (kept alive by the fixture); sum_xor spoils the checksum.
  WarmTier::CommitBlock Block(uint32_t n, size_t size, uint64_t sum_xor = 0) {
    const Bytes& p = kept_.emplace_back(Payload(n, size));
    return {H(n), Sum(p) ^ sum_xor, p};
  }
  absl::StatusOr<std::vector<absl::Status>> Commit(uint64_t id,
                                                   std::vector<WarmTier::CommitBlock> blocks) {
    return tier_->CommitPut(id, blocks);
  }
  // BeginPut + CommitPut of one block with its true checksum; the first error on the way.
  absl::Status Put(const ChainHash& h, const Bytes& data, const std::string& scope = "s") {
    WarmTier::ReserveResult r = Reserve({{h, data.size()}}, kTtl, scope);
    if (!r.status[0].ok()) return r.status[0];
    absl::StatusOr<std::vector<absl::Status>> c = Commit(r.reservation_id, {{h, Sum(data), data}});
    return c.ok() ? (*c)[0] : c.status();
  }
  absl::Status PutN(uint32_t n, size_t size) { return Put(H(n), Payload(n, size)); }

  Read Get(const Hashes& hashes, const std::string& scope = "s", uint64_t max_copy = UINT64_MAX,
           uint64_t ttl = kTtl) {
    Read r;
    r.data.resize(hashes.size());
    WarmTier::CopySink sink = [&r](size_t i, uint64_t size) {
      r.data[i].resize(size);
      return r.data[i].data();
    };
    r.result = tier_->BeginGet(ns_, scope, hashes, ttl, sink, max_copy);
    return r;
  }
  // Pins without copying; the lease id.
  uint64_t Pin(const Hashes& hashes, uint64_t ttl = kTtl) {
    return tier_->BeginGet(ns_, "s", hashes, ttl, nullptr, 0).lease_id;
  }
  size_t Found(const Hashes& hashes, const std::string& scope = "s") {
    return tier_->Lookup(ns_, scope, hashes).size();
  }
  bool Present(uint32_t n) { return Found({H(n)}) == 1; }
  Usage Occupancy() {
    WarmTierStats s = tier_->Stats();
    return {s.blocks, s.payload_bytes, s.used_bytes, s.reservations, s.leases, s.pinned_blocks};
  }

  std::atomic<int64_t> now_ms_{1'000'000};
  uint64_t max_held_leases_ = 65'536;  // WarmTierOptions for the next Init
  uint64_t max_held_bytes_ = 0;
  size_t tombstone_capacity_ = 262'144;
  std::unique_ptr<WarmTier> tier_;
  NamespaceId ns_ = 0;
  std::deque<Bytes> kept_;
};

}  // namespace strata::storenode::warm_tier_test
