// Warm tier budgets: per-scope quotas and byte counts, and the smallest slot a block takes.
#include "warm_tier_test_fixture.h"

namespace strata::storenode::warm_tier_test {
namespace {

TEST_F(WarmTierTest, ScopeQuotaRefusesOnlyTheScopeOverIt) {
  Init(8 * kPage, 1024, PolicyKind::kLru, 2 * ClassBytes(1000));
  const Bytes p = Payload(1, 1000);
  EXPECT_THAT(Put(H(1), p, "a"), IsOk());
  EXPECT_THAT(Put(H(2), p, "a"), IsOk());
  EXPECT_THAT(Put(H(3), p, "a"),
              StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("tenant quota")));
  EXPECT_THAT(Put(H(3), p, "b"), IsOk()) << "another scope has its own quota";
  for (uint32_t n = 10; n < 13; ++n) EXPECT_THAT(Put(H(n), p, "shared"), IsOk());
  const ChainHash one = H(1);
  EXPECT_EQ(tier_->Delete(ns_, "a", {&one, 1}), 1u);
  EXPECT_THAT(Put(H(3), p, "a"), IsOk()) << "freed bytes count again";
  EXPECT_THAT(tier_->ScopeBytes(),
              ::testing::UnorderedElementsAre(
                  std::pair<std::string, uint64_t>{"a", 2 * ClassBytes(1000)},
                  std::pair<std::string, uint64_t>{"b", ClassBytes(1000)},
                  std::pair<std::string, uint64_t>{"shared", 3 * ClassBytes(1000)}));
}

// What each scope holds is counted without a quota too (for /metrics): reserved and committed
// slab bytes, back to nothing when its blocks go.
TEST_F(WarmTierTest, ScopeBytesAreCountedWithoutAQuota) {
  EXPECT_TRUE(tier_->ScopeBytes().empty());
  EXPECT_THAT(Put(H(1), Payload(1, 1000), "a"), IsOk());
  WarmTier::ReserveResult open = Reserve({{H(2), 3000}}, kTtl, "shared");  // not committed
  ASSERT_THAT(open.status[0], IsOk());
  EXPECT_THAT(tier_->ScopeBytes(),
              ::testing::UnorderedElementsAre(
                  std::pair<std::string, uint64_t>{"a", ClassBytes(1000)},
                  std::pair<std::string, uint64_t>{"shared", ClassBytes(3000)}));
  const ChainHash one = H(1);
  EXPECT_EQ(tier_->Delete(ns_, "a", {&one, 1}), 1u);
  ASSERT_THAT(tier_->AbortPut(open.reservation_id), IsOk());
  EXPECT_TRUE(tier_->ScopeBytes().empty());
}

// A tiny block takes a min_slot_bytes slot, so the arena holds capacity / min_slot_bytes of
// them (and their index entries) at most; without a minimum it holds every one.
TEST_F(WarmTierTest, TinyBlocksTakeAtLeastTheMinimumSlot) {
  for (uint64_t min_slot : {uint64_t{0}, kPage / 4}) {
    Init(8 * kPage, 1024, PolicyKind::kLru, 0, min_slot);
    EXPECT_EQ(tier_->SlotBytes(64), ClassBytes(min_slot == 0 ? 64 : min_slot)) << min_slot;
    EXPECT_EQ(tier_->SlotBytes(kPage), kPage) << min_slot;
    for (uint32_t n = 0; n < 64; ++n) ASSERT_THAT(PutN(n, 64), IsOk()) << n;
    const WarmTierStats s = tier_->Stats();
    EXPECT_EQ(s.blocks, min_slot == 0 ? 64u : 32u) << min_slot;
    EXPECT_EQ(s.evictions, min_slot == 0 ? 0u : 32u) << min_slot;
    EXPECT_EQ(s.used_bytes, s.blocks * tier_->SlotBytes(64)) << min_slot;
    EXPECT_EQ(Present(0), min_slot == 0) << "the oldest left first";
    EXPECT_TRUE(Present(63));
  }
}

// Leases a caller keeps (HoldLease) are capped by count and by the arena they pin (whole
// slots); one refused pins nothing, and leases ended, expired or never held (a transfer's)
// leave room.
TEST_F(WarmTierTest, HeldLeasesAreCappedByCountAndBytes) {
  max_held_leases_ = 2;
  max_held_bytes_ = 3 * ClassBytes(4000);
  Init(8 * kPage);
  for (uint32_t n = 1; n <= 5; ++n) ASSERT_THAT(PutN(n, 4000), IsOk()) << n;
  const uint64_t a = Pin({H(1)});
  const uint64_t b = Pin({H(2)});
  EXPECT_THAT(tier_->HoldLease(a), IsOk());
  EXPECT_THAT(tier_->HoldLease(b), IsOk());
  EXPECT_THAT(tier_->HoldLease(b), IsOk()) << "holding twice counts once";
  const uint64_t c = Pin({H(3)});
  EXPECT_THAT(tier_->HoldLease(c), StatusIs(Code::kResourceExhausted, HasSubstr("max_leases")));
  EXPECT_EQ(tier_->Stats().pinned_blocks, 2u) << "the refused lease pins nothing";
  EXPECT_THAT(tier_->EndGet(c), NotFound()) << "and is gone";
  for (int i = 0; i < 4; ++i) EXPECT_NE(Pin({H(4)}), 0u) << "leases not held are not capped";
  EXPECT_EQ(tier_->Stats().held_leases, 2u);
  ASSERT_THAT(tier_->EndGet(a), IsOk());
  const uint64_t d = Pin({H(3), H(4)});  // two slots beside b's one: the whole budget
  EXPECT_THAT(tier_->HoldLease(d), IsOk());
  EXPECT_EQ(tier_->Stats().held_bytes, 3 * ClassBytes(4000));
  ASSERT_THAT(tier_->EndGet(b), IsOk());
  const uint64_t e = Pin({H(4), H(5)});
  EXPECT_THAT(tier_->HoldLease(e),
              StatusIs(Code::kResourceExhausted, HasSubstr("max_lease_bytes")));
  now_ms_ += kTtl;
  tier_->ExpireNow();
  EXPECT_EQ(tier_->Stats().held_leases, 0u) << "expired leases leave the count";
  EXPECT_EQ(tier_->Stats().held_bytes, 0u);
  EXPECT_THAT(tier_->HoldLease(Pin({H(4), H(5)})), IsOk());
}

// A pin holds its block's whole slot: with a 16 KiB min_slot_bytes, 64-byte blocks are
// charged 16 KiB each against max_lease_bytes. Before, their payload bytes were, and held
// leases on small blocks could pin the whole arena under a cap of half of it.
TEST_F(WarmTierTest, HeldLeasesAreChargedTheSlotsTheyPin) {
  max_held_bytes_ = 4 * kPage;
  Init(8 * kPage, 1024, PolicyKind::kLru, 0, /*min_slot=*/16 << 10);
  for (uint32_t n = 1; n <= 32; ++n) ASSERT_THAT(PutN(n, 64), IsOk()) << n;
  std::vector<ChainHash> all;
  for (uint32_t n = 1; n <= 32; ++n) all.push_back(H(n));
  EXPECT_THAT(tier_->HoldLease(Pin(all)),
              StatusIs(Code::kResourceExhausted, HasSubstr("max_lease_bytes")));
  std::vector<ChainHash> half(all.begin(), all.begin() + 16);
  EXPECT_THAT(tier_->HoldLease(Pin(half)), IsOk());
  EXPECT_EQ(tier_->Stats().held_bytes, 16u * (16 << 10));
}

// Blocks reserved later may join an open reservation (TieredStore reserves a put's blocks
// that first found no room there again, after moving others down): one commit stores all.
TEST_F(WarmTierTest, BlocksReservedLaterJoinTheReservationNamed) {
  WarmTier::ReserveResult first = Reserve({{H(1), 1000}});
  ASSERT_NE(first.reservation_id, 0u);
  const WarmTier::PutBlock later{H(2), 1000};
  WarmTier::ReserveResult joined =
      tier_->BeginPut(ns_, "s", {&later, 1}, kTtl, /*may_evict=*/true, first.reservation_id);
  ASSERT_THAT(joined.status[0], IsOk());
  EXPECT_EQ(joined.reservation_id, first.reservation_id);
  auto done = Commit(first.reservation_id, {Block(1, 1000), Block(2, 1000)});
  ASSERT_THAT(done, IsOk());
  EXPECT_THAT((*done)[0], IsOk());
  EXPECT_THAT((*done)[1], IsOk());
  EXPECT_TRUE(Present(1) && Present(2));
  const WarmTier::PutBlock third{H(3), 1000};
  WarmTier::ReserveResult own =
      tier_->BeginPut(ns_, "s", {&third, 1}, kTtl, /*may_evict=*/true, first.reservation_id);
  EXPECT_NE(own.reservation_id, first.reservation_id) << "committed: a reservation of its own";
  EXPECT_NE(own.reservation_id, 0u);
}

}  // namespace
}  // namespace strata::storenode::warm_tier_test
