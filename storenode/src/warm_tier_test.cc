#include "warm_tier_test_fixture.h"

namespace strata::storenode::warm_tier_test {
namespace {

TEST_F(WarmTierTest, CreateRejectsArenaSmallerThanOneBlock) {
  WarmTierOptions o;
  o.capacity_bytes = kPage - 64;
  o.max_block_bytes = kPage;
  EXPECT_THAT(WarmTier::Create(std::move(o)), StatusIs(Code::kInvalidArgument));
}

TEST_F(WarmTierTest, RegisterNamespaceIsIdempotentAndWidensBlockBytes) {
  absl::StatusOr<NamespaceId> again = tier_->RegisterNamespace(Spec("m", 1024));
  ASSERT_THAT(again, IsOk());
  EXPECT_EQ(*again, ns_);
  EXPECT_EQ(*again, ComputeNamespaceId(Spec()));
  EXPECT_EQ(tier_->Stats().namespaces, 1u);
  ASSERT_THAT(tier_->GetNamespace(ns_), IsOk());
  EXPECT_EQ(tier_->GetNamespace(ns_)->block_bytes, 4096u);  // never narrowed
  ASSERT_THAT(tier_->RegisterNamespace(Spec("m", 8192)), IsOk());
  EXPECT_EQ(tier_->GetNamespace(ns_)->block_bytes, 8192u);
  EXPECT_EQ(tier_->GetNamespace(ns_)->model_id, "m");
  EXPECT_THAT(tier_->GetNamespace(ns_ + 1), StatusIs(Code::kNotFound, HasSubstr("not registered")));
}

TEST_F(WarmTierTest, RegisterNamespaceRejectsInvalidSpecs) {
  NamespaceSpec bad_dtype = Spec();
  bad_dtype.dtype = "fp64";
  EXPECT_THAT(tier_->RegisterNamespace(Spec("")), StatusIs(Code::kInvalidArgument));
  EXPECT_THAT(tier_->RegisterNamespace(bad_dtype), StatusIs(Code::kInvalidArgument));
  EXPECT_THAT(tier_->RegisterNamespace(Spec("m2", 0)), StatusIs(Code::kInvalidArgument));
  EXPECT_THAT(tier_->RegisterNamespace(Spec("m2", kPage + 1)),
              StatusIs(Code::kInvalidArgument, HasSubstr("max_block_bytes")));
  ASSERT_THAT(tier_->RegisterNamespace(Spec("m2", kPage)), IsOk());  // the limit itself is fine
  EXPECT_EQ(tier_->Stats().namespaces, 2u);
}

TEST_F(WarmTierTest, RegisterNamespacePastMaximumIsResourceExhausted) {
  Init(8 * kPage, /*max_namespaces=*/2);
  ASSERT_THAT(tier_->RegisterNamespace(Spec("m2")), IsOk());
  EXPECT_THAT(tier_->RegisterNamespace(Spec("m3")), StatusIs(Code::kResourceExhausted));
  EXPECT_THAT(tier_->RegisterNamespace(Spec("m")), IsOk());  // known ones still re-register
  EXPECT_THAT(tier_->GetNamespace(ComputeNamespaceId(Spec("m3"))), StatusIs(Code::kNotFound));
  EXPECT_EQ(tier_->Stats().namespaces, 2u);
}

TEST_F(WarmTierTest, PutThenGetRoundTripsBitExact) {
  const std::vector<uint64_t> sizes = {1, 63, 64, 65, 1000, 4097, kPage};
  std::vector<WarmTier::PutBlock> put;
  std::vector<WarmTier::CommitBlock> commit;
  for (uint32_t i = 0; i < sizes.size(); ++i) {
    put.push_back({H(i), sizes[i]});
    commit.push_back(Block(i, sizes[i]));
  }
  WarmTier::ReserveResult r = Reserve(put);
  ASSERT_NE(r.reservation_id, 0u);
  for (const absl::Status& s : r.status) EXPECT_THAT(s, IsOk());
  absl::StatusOr<std::vector<absl::Status>> c = Commit(r.reservation_id, commit);
  ASSERT_THAT(c, IsOk());
  ASSERT_EQ(c->size(), sizes.size());
  for (const absl::Status& s : *c) EXPECT_THAT(s, IsOk());
  for (Bytes& p : kept_) std::fill(p.begin(), p.end(), 0);  // the tier holds its own copy

  Read got = Get(Keys(0, sizes.size()));
  ASSERT_NE(got.result.lease_id, 0u);
  for (uint32_t i = 0; i < sizes.size(); ++i) {
    EXPECT_THAT(got.result.status[i], IsOk()) << i;
    EXPECT_EQ(got.result.blocks[i].size, sizes[i]) << i;
    EXPECT_EQ(got.result.blocks[i].checksum, Sum(Payload(i, sizes[i]))) << i;
    EXPECT_EQ(got.data[i], Payload(i, sizes[i])) << "block " << i;
  }
  const uint64_t payload = 1 + 63 + 64 + 65 + 1000 + 4097 + kPage;
  const uint64_t used = 64 + 64 + 64 + 128 + 1024 + 4928 + kPage;
  EXPECT_EQ(Occupancy(),
            (Usage{.blocks = 7, .payload = payload, .used = used, .leases = 1, .pinned = 7}));
  EXPECT_EQ(tier_->Stats().hits, 7u);
  EXPECT_THAT(tier_->EndGet(got.result.lease_id), IsOk());
  EXPECT_THAT(tier_->EndGet(got.result.lease_id), StatusIs(Code::kNotFound));
  EXPECT_EQ(Occupancy(), (Usage{.blocks = 7, .payload = payload, .used = used}));
}

TEST_F(WarmTierTest, ReservedBlocksAreInvisibleUntilCommitted) {
  WarmTier::ReserveResult r = Reserve({{H(7), 3000}});
  ASSERT_THAT(r.status, ElementsAre(IsOk()));
  EXPECT_EQ(Found({H(7)}), 0u);
  Read got = Get({H(7)});
  EXPECT_THAT(got.result.status, ElementsAre(StatusIs(Code::kNotFound)));
  EXPECT_EQ(got.result.lease_id, 0u);
  EXPECT_EQ(tier_->Delete(ns_, "s", Hashes{H(7)}), 0u);
  EXPECT_THAT(tier_->CorruptForTest({ns_, "s", H(7)}, 0), StatusIs(Code::kNotFound));
  EXPECT_EQ(Occupancy(), (Usage{.used = 3456, .reserved = 1}));  // slot taken

  ASSERT_THAT(Commit(r.reservation_id, {Block(7, 3000)}), IsOk());
  EXPECT_EQ(Get({H(7)}).data[0], Payload(7, 3000));
  EXPECT_EQ(Occupancy(),
            (Usage{.blocks = 1, .payload = 3000, .used = 3456, .leases = 1, .pinned = 1}));
}

TEST_F(WarmTierTest, DuplicateBeginPutIsAlreadyExists) {
  ASSERT_THAT(PutN(0, 100), IsOk());
  WarmTier::ReserveResult open = Reserve({{H(1), 100}});
  ASSERT_NE(open.reservation_id, 0u);
  WarmTier::ReserveResult r = Reserve({{H(0), 100}, {H(1), 100}, {H(2), 100}, {H(2), 100}});
  EXPECT_NE(r.reservation_id, 0u);
  EXPECT_NE(r.reservation_id, open.reservation_id);
  EXPECT_THAT(r.status, ElementsAre(StatusIs(Code::kAlreadyExists, "present"),
                                    StatusIs(Code::kAlreadyExists, "being written"), IsOk(),
                                    StatusIs(Code::kAlreadyExists, "being written")));
  WarmTier::ReserveResult none = Reserve({{H(0), 100}});
  EXPECT_EQ(none.reservation_id, 0u);  // nothing reserved, nothing to commit
  EXPECT_THAT(none.status, ElementsAre(StatusIs(Code::kAlreadyExists, "present")));
  EXPECT_EQ(tier_->Stats().reservations, 2u);
}

TEST_F(WarmTierTest, CommitWithWrongChecksumDropsTheBlockAndFreesItsSlot) {
  WarmTier::ReserveResult r = Reserve({{H(0), 3000}, {H(1), 3000}});
  absl::StatusOr<std::vector<absl::Status>> c =
      Commit(r.reservation_id, {Block(0, 3000), Block(1, 3000, /*sum_xor=*/1)});
  ASSERT_THAT(c, IsOk());
  EXPECT_THAT(*c, ElementsAre(IsOk(), StatusIs(Code::kDataLoss, HasSubstr("blocks[1]"))));
  EXPECT_EQ(Found({H(1)}), 0u);
  EXPECT_EQ(Found({H(0)}), 1u);
  EXPECT_EQ(Occupancy(), (Usage{.blocks = 1, .payload = 3000, .used = 3456}));
  EXPECT_EQ(tier_->Stats().data_loss, 1u);
  EXPECT_THAT(PutN(1, 3000), IsOk());  // the key is free again
  EXPECT_EQ(Get({H(1)}).data[0], Payload(1, 3000));
}

TEST_F(WarmTierTest, CommitRejectsWrongSizeUnreservedAndRepeatedBlocks) {
  WarmTier::ReserveResult r = Reserve({{H(0), 500}, {H(1), 3000}});
  absl::StatusOr<std::vector<absl::Status>> c =
      Commit(r.reservation_id, {Block(0, 500), Block(5, 500), Block(0, 500), Block(1, 2999)});
  ASSERT_THAT(c, IsOk());
  EXPECT_THAT(*c, ElementsAre(IsOk(), StatusIs(Code::kFailedPrecondition),
                              StatusIs(Code::kInvalidArgument, HasSubstr("named twice")),
                              StatusIs(Code::kInvalidArgument, HasSubstr("reserved 3000"))));
  EXPECT_EQ(Found({H(5)}), 0u);
  EXPECT_EQ(Found({H(1)}), 0u);
  EXPECT_EQ(Occupancy(), (Usage{.blocks = 1, .payload = 500, .used = 512}));  // 1 released
  EXPECT_EQ(Get({H(0)}).data[0], Payload(0, 500));
}

TEST_F(WarmTierTest, CommitReleasesReservedBlocksItDoesNotName) {
  WarmTier::ReserveResult r = Reserve({{H(0), 1000}, {H(1), 1000}, {H(2), 1000}});
  EXPECT_EQ(tier_->Stats().used_bytes, 3 * 1024u);
  ASSERT_THAT(Commit(r.reservation_id, {Block(1, 1000)}), IsOk());
  EXPECT_EQ(tier_->Stats().used_bytes, 1024u);
  EXPECT_EQ(Found({H(1)}), 1u);
  EXPECT_EQ(Found({H(0)}), 0u);
  EXPECT_EQ(Found({H(2)}), 0u);
  EXPECT_THAT(Reserve({{H(0), 1000}, {H(2), 1000}}).status, ElementsAre(IsOk(), IsOk()));
  // An empty commit publishes nothing and releases everything.
  WarmTier::ReserveResult r2 = Reserve({{H(3), 1000}});
  absl::StatusOr<std::vector<absl::Status>> c = Commit(r2.reservation_id, {});
  ASSERT_THAT(c, IsOk());
  EXPECT_THAT(*c, IsEmpty());
  EXPECT_EQ(Found({H(3)}), 0u);
  EXPECT_EQ(tier_->Stats().reservations, 1u);  // the {0, 2} one
  EXPECT_EQ(tier_->Stats().used_bytes, 3 * 1024u);
}

TEST_F(WarmTierTest, AbortPutReleasesAndUnknownReservationsAreNotFound) {
  EXPECT_THAT(Commit(12345, {}), StatusIs(Code::kNotFound));
  EXPECT_THAT(tier_->AbortPut(12345), StatusIs(Code::kNotFound));
  WarmTier::ReserveResult r = Reserve({{H(0), 5000}, {H(1), 100}});
  EXPECT_EQ(Occupancy(), (Usage{.used = 5824 + 128, .reserved = 1}));
  EXPECT_THAT(tier_->AbortPut(r.reservation_id), IsOk());
  EXPECT_EQ(Occupancy(), Usage{});
  EXPECT_THAT(tier_->AbortPut(r.reservation_id), StatusIs(Code::kNotFound));
  EXPECT_THAT(Commit(r.reservation_id, {}), StatusIs(Code::kNotFound));
  EXPECT_EQ(Found({H(0)}), 0u);
  // A reservation is consumed by its commit, too.
  WarmTier::ReserveResult r2 = Reserve({{H(0), 5000}});
  ASSERT_THAT(Commit(r2.reservation_id, {Block(0, 5000)}), IsOk());
  EXPECT_THAT(Commit(r2.reservation_id, {Block(0, 5000)}), StatusIs(Code::kNotFound));
  EXPECT_THAT(tier_->AbortPut(r2.reservation_id), StatusIs(Code::kNotFound));
  EXPECT_EQ(Occupancy(), (Usage{.blocks = 1, .payload = 5000, .used = 5824}));
}

// A put whose transfer UCX could not cancel (its requests abandoned at the deadline) may
// still be written into: the abort frees the keys (and the writer's quota) at once, so the
// writer's retry goes through, but not the slots, which nobody else gets until the quarantine
// ends.
TEST_F(WarmTierTest, AQuarantinedAbortKeepsItsSlotsFromOtherBlocksUntilItEnds) {
  WarmTier::ReserveResult r = Reserve({{H(0), 5000}, {H(1), 5000}});
  ASSERT_THAT(r.status, ElementsAre(IsOk(), IsOk()));
  const std::vector<uint8_t*> held = r.addresses;
  ASSERT_THAT(tier_->AbortPut(r.reservation_id, /*quarantine_ms=*/30'000), IsOk());
  EXPECT_EQ(Occupancy(), (Usage{.used = 2 * 5824, .pinned = 2}));
  EXPECT_THAT(tier_->ScopeBytes(), IsEmpty()) << "the writer's quota counts no held slot";
  // The same keys (a retry) and another block: none lands in a held slot.
  WarmTier::ReserveResult again = Reserve({{H(0), 5000}, {H(1), 5000}, {H(2), 5000}});
  ASSERT_THAT(again.status, ElementsAre(IsOk(), IsOk(), IsOk()));
  for (uint8_t* a : again.addresses) EXPECT_THAT(held, ::testing::Not(::testing::Contains(a)));
  ASSERT_THAT(tier_->AbortPut(again.reservation_id), IsOk());
  now_ms_ += 29'999;
  tier_->ExpireNow();
  EXPECT_EQ(Occupancy(), (Usage{.used = 2 * 5824, .pinned = 2}));
  now_ms_ += 1;
  tier_->ExpireNow();
  EXPECT_EQ(Occupancy(), Usage{});
  // Freed: the slots serve blocks again.
  WarmTier::ReserveResult after = Reserve({{H(3), 5000}, {H(4), 5000}});
  ASSERT_THAT(after.status, ElementsAre(IsOk(), IsOk()));
  EXPECT_THAT(after.addresses, ::testing::UnorderedElementsAreArray(held));
}

TEST_F(WarmTierTest, ExpireNowReleasesReservationsPastTheirTtl) {
  WarmTier::ReserveResult r = Reserve({{H(0), 1000}}, /*ttl=*/100);
  now_ms_ += 99;
  EXPECT_EQ(tier_->ExpireNow(), 0u);
  EXPECT_EQ(tier_->Stats().reservations, 1u);
  now_ms_ += 1;
  EXPECT_EQ(tier_->ExpireNow(), 1u);
  EXPECT_EQ(Occupancy(), Usage{});
  EXPECT_THAT(Commit(r.reservation_id, {Block(0, 1000)}), StatusIs(Code::kNotFound));
  EXPECT_EQ(Found({H(0)}), 0u);
  EXPECT_THAT(PutN(0, 1000), IsOk());
}

TEST_F(WarmTierTest, ExpireNowReleasesLeasesSoBlocksCanBeEvicted) {
  for (uint32_t i = 0; i < 8; ++i) ASSERT_THAT(PutN(i, kPage), IsOk());
  uint64_t lease = Pin(Keys(0, 8), /*ttl=*/50);
  ASSERT_NE(lease, 0u);
  EXPECT_EQ(tier_->Stats().pinned_blocks, 8u);
  EXPECT_THAT(Reserve({{H(8), kPage}}).status, ElementsAre(StatusIs(Code::kResourceExhausted)));
  now_ms_ += 49;
  EXPECT_EQ(tier_->ExpireNow(), 0u);
  now_ms_ += 1;
  EXPECT_EQ(tier_->ExpireNow(), 1u);
  // Expiry unpins; it does not delete.
  EXPECT_EQ(Occupancy(), (Usage{.blocks = 8, .payload = 8 * kPage, .used = 8 * kPage}));
  EXPECT_THAT(tier_->EndGet(lease), StatusIs(Code::kNotFound));
  EXPECT_THAT(PutN(8, kPage), IsOk());
  EXPECT_EQ(tier_->Stats().evictions, 1u);
}

TEST_F(WarmTierTest, LookupStopsAtTheFirstMissingBlock) {
  ASSERT_THAT(PutN(0, 100), IsOk());
  ASSERT_THAT(PutN(1, 200), IsOk());
  ASSERT_THAT(PutN(3, 300), IsOk());
  std::vector<WarmTier::BlockMeta> metas = tier_->Lookup(ns_, "s", Keys(0, 4));
  ASSERT_EQ(metas.size(), 2u);
  EXPECT_EQ(metas[0].size, 100u);
  EXPECT_EQ(metas[0].checksum, Sum(Payload(0, 100)));
  EXPECT_EQ(metas[1].size, 200u);
  EXPECT_EQ(metas[1].checksum, Sum(Payload(1, 200)));
  EXPECT_EQ(tier_->Stats().hits, 2u);
  EXPECT_EQ(tier_->Stats().misses, 2u);  // 2 and the unexamined 3
  EXPECT_EQ(Found({H(2), H(0)}), 0u);
  EXPECT_THAT(tier_->Lookup(ns_, "s", {}), IsEmpty());
}

TEST_F(WarmTierTest, EvictsLeastRecentlyUsedAndLookupProtects) {
  for (uint32_t i = 0; i < 8; ++i) ASSERT_THAT(PutN(i, kPage), IsOk());
  EXPECT_EQ(tier_->Stats().used_bytes, 8 * kPage);
  ASSERT_EQ(Found({H(0)}), 1u);  // 0 becomes the most recent
  ASSERT_THAT(PutN(8, kPage), IsOk());
  EXPECT_EQ(tier_->Stats().evictions, 1u);
  ASSERT_THAT(PutN(9, kPage), IsOk());
  EXPECT_EQ(tier_->Stats().evictions, 2u);
  EXPECT_EQ(tier_->Stats().blocks, 8u);
  EXPECT_FALSE(Present(1));
  EXPECT_FALSE(Present(2));
  for (uint32_t i : {0, 3, 4, 5, 6, 7, 8, 9}) EXPECT_TRUE(Present(i)) << i;
}

TEST_F(WarmTierTest, ChainAncestorsOutliveTheirDescendants) {
  // Put one by one (3 newest), then a prefix lookup makes ancestors the most recent.
  for (uint32_t i = 0; i < 4; ++i) ASSERT_THAT(PutN(i, kPage), IsOk());
  ASSERT_EQ(Found(Keys(0, 4)), 4u);
  for (uint32_t i = 10; i < 14; ++i) ASSERT_THAT(PutN(i, kPage), IsOk());
  for (uint32_t i = 20; i < 23; ++i) ASSERT_THAT(PutN(i, kPage), IsOk());
  EXPECT_EQ(tier_->Stats().evictions, 3u);
  EXPECT_EQ(Found(Keys(0, 4)), 1u);  // 3, 2, 1 went in that order
  for (uint32_t i : {10, 11, 12, 13, 20, 21, 22}) EXPECT_TRUE(Present(i)) << i;
}

// A prefix looked up in runs (a block in between only in GPU memory, or runs in two scopes)
// is touched again run by run, the last first (StoreServiceImpl::RetouchRuns): its first
// blocks end the most recent, as after one Lookup. Touched first to last instead, blocks 0
// and 1 went first.
TEST_F(WarmTierTest, TouchingRunsLastFirstKeepsAChainsFirstBlocksMostRecent) {
  for (uint32_t i = 0; i < 4; ++i) ASSERT_THAT(PutN(i, kPage), IsOk());
  const std::vector<ChainHash> chain = Keys(0, 4);
  tier_->Touch(ns_, "s", std::span(chain).subspan(2, 2));
  tier_->Touch(ns_, "s", std::span(chain).subspan(0, 2));
  for (uint32_t i = 10; i < 14; ++i) ASSERT_THAT(PutN(i, kPage), IsOk());
  for (uint32_t i = 20; i < 23; ++i) ASSERT_THAT(PutN(i, kPage), IsOk());
  EXPECT_EQ(tier_->Stats().evictions, 3u);
  EXPECT_TRUE(Present(0));
  for (uint32_t i : {1, 2, 3}) EXPECT_FALSE(Present(i)) << i;
}

TEST_F(WarmTierTest, ChainCommittedTogetherEvictsDescendantsFirst) {
  for (uint32_t i = 10; i < 14; ++i) ASSERT_THAT(PutN(i, kPage), IsOk());
  WarmTier::ReserveResult r = Reserve({{H(0), kPage}, {H(1), kPage}, {H(2), kPage}, {H(3), kPage}});
  ASSERT_THAT(Commit(r.reservation_id,
                     {Block(0, kPage), Block(1, kPage), Block(2, kPage), Block(3, kPage)}),
              IsOk());
  ASSERT_EQ(Found(Keys(10, 14)), 4u);  // fillers now newer than the chain
  ASSERT_THAT(PutN(20, kPage), IsOk());
  ASSERT_THAT(PutN(21, kPage), IsOk());
  EXPECT_EQ(Found(Keys(0, 4)), 2u);
  for (uint32_t i : {10, 11, 12, 13, 20, 21}) EXPECT_TRUE(Present(i)) << i;
}

// A chain put in one call links each block to the one before it, so the prefix policy never
// evicts an ancestor while a descendant stays; LRU, after the tail was read alone, does.
TEST_F(WarmTierTest, PrefixPolicyKeepsAncestorsOfResidentBlocks) {
  for (PolicyKind policy : {PolicyKind::kLru, PolicyKind::kPrefix}) {
    SCOPED_TRACE(PolicyKindName(policy));
    Init(8 * kPage, 1024, policy);
    std::vector<WarmTier::PutBlock> chain;
    for (uint32_t d = 0; d < 4; ++d) chain.push_back({H(d), kPage, d});
    WarmTier::ReserveResult r = Reserve(chain);
    ASSERT_THAT(Commit(r.reservation_id,
                       {Block(0, kPage), Block(1, kPage), Block(2, kPage), Block(3, kPage)}),
                IsOk());
    for (uint32_t i = 10; i < 14; ++i) ASSERT_THAT(PutN(i, kPage), IsOk());
    ASSERT_EQ(Found({H(3)}), 1u);  // the tail alone, as a non-prefix read would
    ASSERT_EQ(Found({H(2)}), 1u);
    ASSERT_THAT(PutN(20, kPage), IsOk());
    ASSERT_THAT(PutN(21, kPage), IsOk());
    EXPECT_EQ(tier_->Stats().evictions, 2u);
    if (policy == PolicyKind::kLru) {
      EXPECT_EQ(Found(Keys(0, 4)), 0u) << "LRU took the root first";
      EXPECT_TRUE(Present(3));
    } else {
      EXPECT_EQ(Found(Keys(0, 4)), 4u);
      EXPECT_FALSE(Present(10));
      EXPECT_FALSE(Present(11));
    }
  }
}

TEST_F(WarmTierTest, PinnedBlocksAreNeverEvicted) {
  for (uint32_t i = 0; i < 8; ++i) ASSERT_THAT(PutN(i, kPage), IsOk());
  uint64_t lease = Pin({H(0)});
  ASSERT_NE(lease, 0u);
  // Touch the rest (7 first): 0 is the least recently used, but pinned; 7 is next.
  ASSERT_EQ(Found(Keys(1, 8)), 7u);
  ASSERT_THAT(PutN(8, kPage), IsOk());
  EXPECT_EQ(tier_->Stats().evictions, 1u);
  EXPECT_FALSE(Present(7));
  for (uint32_t i : {0, 1, 2, 3, 4, 5, 6, 8}) EXPECT_TRUE(Present(i)) << i;
  EXPECT_THAT(tier_->EndGet(lease), IsOk());
}

TEST_F(WarmTierTest, EverythingPinnedOrReservedIsResourceExhaustedUntilEndGet) {
  for (uint32_t i = 0; i < 4; ++i) ASSERT_THAT(PutN(i, kPage), IsOk());
  uint64_t lease = Pin(Keys(0, 4));  // touched last-to-first: 0 newest, 3 oldest
  WarmTier::ReserveResult open =
      Reserve({{H(10), kPage}, {H(11), kPage}, {H(12), kPage}, {H(13), kPage}});
  ASSERT_THAT(open.status, ElementsAre(IsOk(), IsOk(), IsOk(), IsOk()));
  WarmTier::ReserveResult full = Reserve({{H(20), kPage}, {H(21), 64}});
  EXPECT_EQ(full.reservation_id, 0u);
  EXPECT_THAT(full.status, ElementsAre(StatusIs(Code::kResourceExhausted, HasSubstr("full")),
                                       StatusIs(Code::kResourceExhausted)));
  EXPECT_EQ(tier_->Stats().evictions, 0u);
  EXPECT_EQ(Occupancy(), (Usage{.blocks = 4,
                                .payload = 4 * kPage,
                                .used = 8 * kPage,
                                .reserved = 1,
                                .leases = 1,
                                .pinned = 4}));

  EXPECT_THAT(tier_->EndGet(lease), IsOk());
  EXPECT_THAT(PutN(20, kPage), IsOk());
  EXPECT_EQ(tier_->Stats().evictions, 1u);
  EXPECT_FALSE(Present(3));
  for (uint32_t i : {0, 1, 2, 20}) EXPECT_TRUE(Present(i)) << i;
}

TEST_F(WarmTierTest, DeleteOfPinnedBlockHidesItNowAndFreesOnEndGet) {
  ASSERT_THAT(PutN(0, 5000), IsOk());
  ASSERT_THAT(PutN(1, 5000), IsOk());
  uint64_t lease = Pin({H(0)});
  EXPECT_EQ(tier_->Delete(ns_, "s", Hashes{H(0), H(1), H(9)}), 2u);
  EXPECT_EQ(Found({H(0)}), 0u);
  EXPECT_THAT(Get({H(0)}).result.status, ElementsAre(StatusIs(Code::kNotFound)));
  // Block 1 is freed now, block 0 when its lease ends.
  EXPECT_EQ(Occupancy(), (Usage{.used = 5824, .leases = 1, .pinned = 1}));
  // The key is free for a new writer while the old bytes are still leased.
  ASSERT_THAT(Put(H(0), Payload(99, 700)), IsOk());
  EXPECT_EQ(tier_->Stats().used_bytes, 5824u + 768u);
  EXPECT_THAT(tier_->EndGet(lease), IsOk());
  EXPECT_EQ(Occupancy(), (Usage{.blocks = 1, .payload = 700, .used = 768}));
  Read got = Get({H(0)});
  EXPECT_THAT(got.result.status, ElementsAre(IsOk()));
  EXPECT_EQ(got.data[0], Payload(99, 700));
}

TEST_F(WarmTierTest, CorruptBlockIsDroppedOnReadWithDataLoss) {
  ASSERT_THAT(PutN(0, 5000), IsOk());
  const BlockKey key{ns_, "s", H(0)};
  EXPECT_THAT(tier_->CorruptForTest(key, 5000), StatusIs(Code::kOutOfRange));
  EXPECT_THAT(tier_->CorruptForTest({ns_, "other", H(0)}, 0), StatusIs(Code::kNotFound));
  ASSERT_THAT(tier_->CorruptForTest(key, 4999), IsOk());
  Read got = Get({H(0)});
  EXPECT_THAT(got.result.status, ElementsAre(StatusIs(Code::kDataLoss)));
  EXPECT_EQ(got.result.lease_id, 0u);
  ASSERT_EQ(got.data[0].size(), 5000u);  // copied, then found bad: the last byte flipped
  EXPECT_EQ(got.data[0][4999], Payload(0, 5000)[4999] ^ 0xff);
  EXPECT_EQ(tier_->Stats().data_loss, 1u);
  EXPECT_EQ(Occupancy(), Usage{});
  EXPECT_EQ(Found({H(0)}), 0u);
  EXPECT_THAT(Get({H(0)}).result.status, ElementsAre(StatusIs(Code::kNotFound)));
  EXPECT_THAT(tier_->CorruptForTest(key, 0), StatusIs(Code::kNotFound));
}

TEST_F(WarmTierTest, CorruptBlockLeasedElsewhereFreesWhenThatLeaseEnds) {
  ASSERT_THAT(PutN(0, 5000), IsOk());
  ASSERT_THAT(PutN(1, 100), IsOk());
  uint64_t other = Pin({H(0)});
  ASSERT_THAT(tier_->CorruptForTest({ns_, "s", H(0)}, 0), IsOk());
  Read got = Get({H(0), H(1)});
  EXPECT_THAT(got.result.status, ElementsAre(StatusIs(Code::kDataLoss), IsOk()));
  EXPECT_NE(got.result.lease_id, 0u);  // block 1 is leased
  EXPECT_EQ(got.data[1], Payload(1, 100));
  EXPECT_EQ(Found({H(0)}), 0u);
  EXPECT_EQ(Occupancy(),
            (Usage{.blocks = 1, .payload = 100, .used = 5824 + 128, .leases = 2, .pinned = 2}));
  EXPECT_THAT(tier_->EndGet(other), IsOk());
  EXPECT_THAT(tier_->EndGet(got.result.lease_id), IsOk());
  EXPECT_EQ(Occupancy(), (Usage{.blocks = 1, .payload = 100, .used = 128}));
}

TEST_F(WarmTierTest, MaxCopyBytesStopsCopyingAndDoesNotPin) {
  for (uint32_t i = 0; i < 3; ++i) ASSERT_THAT(PutN(i, 1000), IsOk());
  Read got = Get({H(0), H(50), H(1), H(2)}, "s", /*max_copy=*/2500);
  EXPECT_THAT(got.result.status,
              ElementsAre(IsOk(), StatusIs(Code::kNotFound), IsOk(),
                          StatusIs(Code::kResourceExhausted, HasSubstr("2500"))));
  EXPECT_EQ(got.data[0], Payload(0, 1000));
  EXPECT_EQ(got.data[2], Payload(1, 1000));
  EXPECT_THAT(got.data[3], IsEmpty());  // never handed to the sink
  EXPECT_EQ(got.result.blocks[3].size, 0u);
  EXPECT_EQ(tier_->Stats().pinned_blocks, 2u);
  EXPECT_THAT(tier_->EndGet(got.result.lease_id), IsOk());
  // The limit is inclusive, and without a sink nothing is copied so nothing is limited.
  Read exact = Get(Keys(0, 3), "s", /*max_copy=*/3000);
  EXPECT_THAT(exact.result.status, ElementsAre(IsOk(), IsOk(), IsOk()));
  EXPECT_THAT(tier_->EndGet(exact.result.lease_id), IsOk());
  WarmTier::GetResult pinned = tier_->BeginGet(ns_, "s", Keys(0, 3), kTtl, nullptr, 0);
  EXPECT_THAT(pinned.status, ElementsAre(IsOk(), IsOk(), IsOk()));
  EXPECT_EQ(pinned.blocks[2].size, 1000u);
  EXPECT_EQ(tier_->Stats().pinned_blocks, 3u);
}

TEST_F(WarmTierTest, SinkReturningNullLeavesBlockPinnedUncopied) {
  ASSERT_THAT(PutN(0, 1000), IsOk());
  ASSERT_THAT(tier_->CorruptForTest({ns_, "s", H(0)}, 3), IsOk());
  int calls = 0;
  WarmTier::CopySink sink = [&calls](size_t, uint64_t size) -> uint8_t* {
    ++calls;
    EXPECT_EQ(size, 1000u);
    return nullptr;
  };
  WarmTier::GetResult r = tier_->BeginGet(ns_, "s", Hashes{H(0)}, kTtl, sink, UINT64_MAX);
  EXPECT_EQ(calls, 1);
  EXPECT_THAT(r.status, ElementsAre(IsOk()));  // not copied, so not verified
  EXPECT_EQ(r.blocks[0].checksum, Sum(Payload(0, 1000)));
  EXPECT_EQ(tier_->Stats().pinned_blocks, 1u);
  EXPECT_EQ(tier_->Stats().data_loss, 0u);
}

TEST_F(WarmTierTest, ReclaimsAWholePageOfAnotherClass) {
  for (uint32_t i = 0; i < 128; ++i) ASSERT_THAT(PutN(i, 4096), IsOk());  // 16 per page
  EXPECT_EQ(tier_->Stats().used_bytes, 8 * kPage);
  ASSERT_THAT(PutN(1000, kPage), IsOk());
  EXPECT_EQ(tier_->Stats().evictions, 16u);
  EXPECT_EQ(Occupancy(), (Usage{.blocks = 113, .payload = 112 * 4096 + kPage, .used = 8 * kPage}));
  for (uint32_t i = 0; i < 128; ++i) EXPECT_EQ(Present(i), i >= 16) << i;
  EXPECT_EQ(Get({H(1000)}).data[0], Payload(1000, kPage));
}

TEST_F(WarmTierTest, PageReclaimSkipsPagesWithPinnedBlocks) {
  for (uint32_t i = 0; i < 128; ++i) ASSERT_THAT(PutN(i, 4096), IsOk());
  uint64_t lease = Pin({H(0)});
  ASSERT_EQ(Found(Keys(16, 128)), 112u);  // 127 touched first: its page is now the oldest
  ASSERT_THAT(PutN(1000, kPage), IsOk());
  EXPECT_EQ(tier_->Stats().evictions, 16u);
  for (uint32_t i = 0; i < 128; ++i) EXPECT_EQ(Present(i), i < 112) << i;
  EXPECT_THAT(tier_->EndGet(lease), IsOk());
}

TEST_F(WarmTierTest, ScopesAndNamespacesSeparateBlocks) {
  ASSERT_THAT(Put(H(1), Payload(1, 2000), "a"), IsOk());
  ASSERT_THAT(Put(H(1), Payload(2, 2000), "b"), IsOk());
  EXPECT_EQ(Get({H(1)}, "a").data[0], Payload(1, 2000));
  EXPECT_EQ(Get({H(1)}, "b").data[0], Payload(2, 2000));
  EXPECT_EQ(Found({H(1)}, "c"), 0u);
  absl::StatusOr<NamespaceId> other = tier_->RegisterNamespace(Spec("m2"));
  ASSERT_THAT(other, IsOk());
  ASSERT_NE(*other, ns_);
  EXPECT_THAT(tier_->Lookup(*other, "a", Hashes{H(1)}), IsEmpty());
  EXPECT_EQ(tier_->Delete(ns_, "a", Hashes{H(1)}), 1u);
  EXPECT_EQ(Found({H(1)}, "a"), 0u);
  EXPECT_EQ(Get({H(1)}, "b").data[0], Payload(2, 2000));
  EXPECT_EQ(tier_->Stats().blocks, 1u);
}

TEST_F(WarmTierTest, StatsTrackEveryCounter) {
  WarmTierStats st = tier_->Stats();
  EXPECT_EQ(st.capacity_bytes, 8 * kPage);
  EXPECT_EQ(st.namespaces, 1u);
  EXPECT_EQ(Occupancy(), Usage{});
  EXPECT_EQ(st.hits + st.misses + st.evictions + st.data_loss, 0u);
  ASSERT_THAT(PutN(0, 100), IsOk());
  ASSERT_THAT(PutN(1, 1000), IsOk());
  ASSERT_THAT(PutN(2, 5000), IsOk());
  WarmTier::ReserveResult r = Reserve({{H(3), 64}});
  EXPECT_EQ(Occupancy(), (Usage{.blocks = 3, .payload = 6100, .used = 7040, .reserved = 1}));
  ASSERT_EQ(Found({H(0), H(1), H(9), H(2)}), 2u);
  uint64_t lease = Pin({H(0), H(9)});
  uint64_t lease2 = Pin({H(0)});
  // pinned_blocks counts blocks, not pins.
  EXPECT_EQ(
      Occupancy(),
      (Usage{.blocks = 3, .payload = 6100, .used = 7040, .reserved = 1, .leases = 2, .pinned = 1}));
  EXPECT_EQ(tier_->Stats().hits, 4u);
  EXPECT_EQ(tier_->Stats().misses, 3u);
  EXPECT_THAT(tier_->AbortPut(r.reservation_id), IsOk());
  EXPECT_THAT(tier_->EndGet(lease), IsOk());
  EXPECT_EQ(Occupancy(),
            (Usage{.blocks = 3, .payload = 6100, .used = 6976, .leases = 1, .pinned = 1}));
  EXPECT_THAT(tier_->EndGet(lease2), IsOk());
  EXPECT_EQ(Occupancy(), (Usage{.blocks = 3, .payload = 6100, .used = 6976}));
  st = tier_->Stats();
  EXPECT_EQ(st.evictions + st.data_loss, 0u);
  EXPECT_EQ(st.hits, 4u);  // Stats itself counts nothing
}

TEST_F(WarmTierTest, ConcurrentPutGetLookupDeleteServeOnlyWrittenBytes) {
  constexpr uint32_t kKeys = 24;
  constexpr uint64_t kShortTtl = 20;
  std::vector<Bytes> payload;
  std::vector<uint64_t> sum;
  for (uint32_t k = 0; k < kKeys; ++k) {
    payload.push_back(Payload(k, 700 + k * 1300));  // many classes: page reclaim happens
    sum.push_back(Sum(payload.back()));
  }
  std::atomic<uint64_t> bytes_verified{0};
  auto worker = [&](int t) {
    std::mt19937 rng(1234 + t);
    for (int op = 0; op < 300; ++op) {
      if (t == 0 && op % 50 == 0) {
        now_ms_ += 5;
        tier_->ExpireNow();
      }
      const uint32_t k = static_cast<uint32_t>(rng() % kKeys);
      const uint32_t end = std::min(k + 1 + static_cast<uint32_t>(rng() % 4), kKeys);
      switch (rng() % 4) {
        case 0: {  // put, sometimes abandoned
          WarmTier::ReserveResult r = Reserve({{H(k), payload[k].size()}}, kShortTtl);
          EXPECT_THAT(r.status[0], AnyOf(IsOk(), StatusIs(Code::kAlreadyExists),
                                         StatusIs(Code::kResourceExhausted)));
          if (!r.status[0].ok()) break;
          if (rng() % 8 == 0) {  // NOT_FOUND: expired first
            EXPECT_THAT(tier_->AbortPut(r.reservation_id), AnyOf(IsOk(), NotFound()));
            break;
          }
          absl::StatusOr<std::vector<absl::Status>> res =
              Commit(r.reservation_id, {{H(k), sum[k], payload[k]}});
          if (!res.ok()) {
            EXPECT_THAT(res, NotFound());  // expired first
          } else {
            EXPECT_THAT(*res, ElementsAre(IsOk()));
          }
          break;
        }
        case 1: {  // read a few consecutive keys
          Read got = Get(Keys(k, end), "s", UINT64_MAX, kShortTtl);
          for (uint32_t i = 0; i < end - k; ++i) {
            if (got.result.status[i].code() == Code::kNotFound) continue;
            EXPECT_THAT(got.result.status[i], IsOk());
            EXPECT_EQ(got.result.blocks[i].size, payload[k + i].size());
            EXPECT_EQ(got.result.blocks[i].checksum, sum[k + i]);
            EXPECT_TRUE(got.data[i] == payload[k + i]) << "key " << k + i;
            bytes_verified += got.data[i].size();
          }
          if (got.result.lease_id == 0) break;
          EXPECT_THAT(tier_->EndGet(got.result.lease_id), AnyOf(IsOk(), NotFound()));
          break;
        }
        case 2: {
          std::vector<WarmTier::BlockMeta> metas = tier_->Lookup(ns_, "s", Keys(k, end));
          EXPECT_LE(metas.size(), end - k);
          for (size_t i = 0; i < metas.size(); ++i) {
            EXPECT_EQ(metas[i].size, payload[k + i].size());
            EXPECT_EQ(metas[i].checksum, sum[k + i]);
          }
          break;
        }
        default:
          EXPECT_LE(tier_->Delete(ns_, "s", Keys(k, k + 1)), 1u);
      }
    }
  };
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) threads.emplace_back(worker, t);
  for (std::thread& th : threads) th.join();
  EXPECT_GT(bytes_verified.load(), 0u);
  // ~20 classes share 8 pages: whole-page reclaim cannot be avoided, whatever the schedule.
  EXPECT_GT(tier_->Stats().evictions, 0u);

  now_ms_ += 1'000'000;
  tier_->ExpireNow();
  EXPECT_EQ(tier_->Stats().data_loss, 0u);
  // The accounting matches exactly what is left, and what is left is intact.
  uint64_t blocks = 0, payload_bytes = 0, used = 0;
  for (uint32_t k = 0; k < kKeys; ++k) {
    Read got = Get({H(k)});
    if (got.result.status[0].code() == Code::kNotFound) continue;
    ASSERT_THAT(got.result.status[0], IsOk());
    EXPECT_EQ(got.data[0], payload[k]) << k;
    ++blocks;
    payload_bytes += payload[k].size();
    used += ClassBytes(payload[k].size());
  }
  now_ms_ += 1'000'000;
  tier_->ExpireNow();  // the leases taken just now; no reservation or lease may be left after it
  EXPECT_EQ(Occupancy(), (Usage{.blocks = blocks, .payload = payload_bytes, .used = used}));
}

}  // namespace
}  // namespace strata::storenode::warm_tier_test
