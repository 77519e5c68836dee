// A writer's delete against copies on their way: tombstones (tombstones.h) and puts that a
// delete overtakes.
#define XXH_INLINE_ALL  // the internals ForgedHash needs
#include <xxhash.h>

#include "strata/storenode/eviction_policy.h"
#include "strata/storenode/tombstones.h"
#include "warm_tier_test_fixture.h"

namespace strata::storenode::warm_tier_test {
namespace {

TEST(TombstonesTest, TheyLapseAfterTheirTtlAndTheOldestGoFirstPastCapacity) {
  Tombstones t(/*capacity=*/2, /*ttl_ms=*/100);
  t.Add(1, 1000);
  int64_t age = 0;
  EXPECT_TRUE(t.Live(1, 1099, &age));
  EXPECT_EQ(age, 99);
  EXPECT_FALSE(t.Live(1, 1100)) << "lapsed";
  EXPECT_EQ(t.size(), 0u);
  t.Add(1, 2000);
  t.Add(2, 2001);
  t.Add(3, 2002);
  EXPECT_FALSE(t.Live(1, 2003)) << "the oldest went past capacity";
  EXPECT_TRUE(t.Live(2, 2003) && t.Live(3, 2003));
  t.Clear(2);
  EXPECT_FALSE(t.Live(2, 2003));
  EXPECT_TRUE(t.Live(3, 2003));
  // Deleted again: the second delete's time counts.
  t.Add(3, 2050);
  EXPECT_TRUE(t.Live(3, 2120));
  // Clears and repeated deletes leave stale entries behind; sweeping them keeps the live
  // tombstones (3 here), however many there were.
  for (int i = 0; i < 1000; ++i) {
    t.Add(7, 2060 + i % 50);
    t.Clear(7);
  }
  EXPECT_TRUE(t.Live(3, 2120)) << "pushed out by stale entries";
  EXPECT_EQ(t.size(), 1u);
  Tombstones off(0, 100);
  off.Add(1, 0);
  EXPECT_FALSE(off.Live(1, 1));
}

// Past capacity the owner holding the most gives up its oldest: a tenant deleting without
// end pushes out its own tombstones, not another's. Before, one queue for all: B's flood
// pushed out all of A's.
TEST(TombstonesTest, PastCapacityTheLargestOwnerGivesUpItsOwnOldest) {
  Tombstones t(/*capacity=*/100, /*ttl_ms=*/60'000);
  for (uint64_t h = 0; h < 30; ++h) t.Add(h, 1000, /*owner=*/'A');
  for (uint64_t h = 1000; h < 11'000; ++h) t.Add(h, 1000 + static_cast<int64_t>(h), 'B');
  EXPECT_EQ(t.size(), 100u);
  for (uint64_t h = 0; h < 30; ++h) EXPECT_TRUE(t.Live(h, 20'000)) << "A's tombstone " << h;
  EXPECT_TRUE(t.Live(10'999, 20'000)) << "B keeps its newest";
  EXPECT_FALSE(t.Live(10'929, 20'000)) << "B holds 70, its newest";
  EXPECT_TRUE(t.Live(10'930, 20'000));
  // A third owner joins: B, the largest, gives up a tombstone for each of C's.
  for (uint64_t h = 20'000; h < 20'010; ++h) t.Add(h, 20'000, 'C');
  EXPECT_TRUE(t.Live(0, 20'001) && t.Live(20'000, 20'001));
  EXPECT_FALSE(t.Live(10'939, 20'001));
  EXPECT_EQ(t.owners(), 3u);
  // Clearing or lapsing all of an owner's tombstones forgets the owner.
  for (uint64_t h = 20'000; h < 20'010; ++h) t.Clear(h);
  EXPECT_EQ(t.owners(), 2u);
  EXPECT_FALSE(t.Live(0, 1000 + 60'000));
  EXPECT_EQ(t.owners(), 1u) << "A's lapsed";
}

// A copy (rebalancer, read-repair, promotion) of a block a writer deleted is refused for the
// tombstone's lifetime, present before or not; copies of other blocks, and copies after a
// delete that was a hand-over (no tombstone), are taken.
TEST_F(WarmTierTest, AWritersDeleteRefusesCopiesOfItsBlocksUntilTheTombstoneLapses) {
  ASSERT_THAT(PutN(1, 1000), IsOk());
  ASSERT_THAT(PutN(3, 1000), IsOk());
  const Hashes deleted = {H(1), H(2)};  // 2 was never here
  EXPECT_EQ(tier_->Delete(ns_, "s", deleted, /*tombstone=*/true), 1u);
  const Hashes handed_over = {H(3)};
  EXPECT_EQ(tier_->Delete(ns_, "s", handed_over), 1u);
  auto copy = [&](uint32_t n) {
    WarmTier::PutBlock b{H(n), 1000};
    b.copy = true;
    return Reserve({b}).status[0];
  };
  EXPECT_THAT(copy(1), StatusIs(Code::kFailedPrecondition, HasSubstr("deleted by a writer")));
  EXPECT_THAT(copy(2), StatusIs(Code::kFailedPrecondition));
  EXPECT_THAT(copy(3), IsOk()) << "a hand-over leaves no tombstone";
  EXPECT_THAT(copy(4), IsOk());
  EXPECT_EQ(tier_->Stats().tombstones, 2u);
  EXPECT_EQ(tier_->Stats().copies_refused, 2u);
  EXPECT_TRUE(tier_->DeletedLately(BlockKey{ns_, "s", H(1)}));
  EXPECT_FALSE(tier_->DeletedLately(BlockKey{ns_, "other", H(1)})) << "per scope";
  now_ms_ += 60'001;
  EXPECT_THAT(copy(1), IsOk()) << "the tombstone lapsed";
  EXPECT_EQ(tier_->Stats().tombstones, 0u);
}

// A tenant deleting past the tombstone capacity pushes out its own tombstones: another
// tenant's deletes still refuse copies.
TEST_F(WarmTierTest, ATenantDeletingWithoutEndPushesOutOnlyItsOwnTombstones) {
  tombstone_capacity_ = 64;
  ASSERT_NO_FATAL_FAILURE(Init(8 * kPage));
  const Hashes a = {H(1), H(2), H(3)};
  tier_->Delete(ns_, "tenant-a", a, /*tombstone=*/true);
  Hashes flood;
  for (uint32_t n = 100; n < 1100; ++n) flood.push_back(H(n));
  tier_->Delete(ns_, "tenant-b", flood, /*tombstone=*/true);
  EXPECT_EQ(tier_->Stats().tombstones, 64u);
  for (const ChainHash& h : a) {
    EXPECT_TRUE(tier_->DeletedLately(BlockKey{ns_, "tenant-a", h}));
  }
  EXPECT_TRUE(tier_->DeletedLately(BlockKey{ns_, "tenant-b", H(1099)}));
  EXPECT_FALSE(tier_->DeletedLately(BlockKey{ns_, "tenant-b", H(100)})) << "B's oldest went";
}

// A writer's put of a deleted block is taken at once, and forgets the delete.
TEST_F(WarmTierTest, AWritersPutOfADeletedBlockIsTakenAndForgetsTheDelete) {
  ASSERT_THAT(PutN(1, 1000), IsOk());
  const Hashes one = {H(1)};
  EXPECT_EQ(tier_->Delete(ns_, "s", one, /*tombstone=*/true), 1u);
  EXPECT_THAT(PutN(1, 1000), IsOk());
  EXPECT_FALSE(tier_->DeletedLately(BlockKey{ns_, "s", H(1)}));
  EXPECT_EQ(tier_->Delete(ns_, "s", one), 1u);  // handed over
  WarmTier::PutBlock b{H(1), 1000};
  b.copy = true;
  EXPECT_THAT(Reserve({b}).status[0], IsOk());
}

// A writer's delete that comes between a put's reservation and its commit wins: the commit
// answers ABORTED for that block and stores it nowhere; the rest of the put is stored. A
// hand-over (no tombstone) leaves the put alone.
TEST_F(WarmTierTest, ADeleteThatOvertakesAPutAbortsThatBlocksCommit) {
  WarmTier::ReserveResult r = Reserve({{H(1), 1000}, {H(2), 1000}, {H(3), 1000}});
  ASSERT_NE(r.reservation_id, 0u);
  const Hashes deleted = {H(1)}, handed_over = {H(3)};
  EXPECT_EQ(tier_->Delete(ns_, "s", deleted, /*tombstone=*/true), 0u);
  EXPECT_EQ(tier_->Delete(ns_, "s", handed_over), 0u);
  auto done = Commit(r.reservation_id, {Block(1, 1000), Block(2, 1000), Block(3, 1000)});
  ASSERT_THAT(done, IsOk());
  EXPECT_THAT((*done)[0], StatusIs(Code::kAborted, HasSubstr("deleted by a writer")));
  EXPECT_THAT((*done)[1], IsOk());
  EXPECT_THAT((*done)[2], IsOk());
  EXPECT_FALSE(Present(1));
  EXPECT_TRUE(Present(2) && Present(3));
  EXPECT_EQ(Occupancy(), (Usage{.blocks = 2,
                                .payload = 2000,
                                .used = 2 * ClassBytes(1000),
                                .reserved = 0,
                                .leases = 0,
                                .pinned = 0}));
}

// A writer who puts a block again while a put of it that a Delete overtook is still being
// written is told it exists (dedup): that earlier put's commit then stores it after all,
// rather than the writer being told of a block that never comes.
TEST_F(WarmTierTest, AWritersPutAfterTheDeleteLetsTheOvertakenPutStoreTheBlock) {
  WarmTier::PutBlock copy{H(1), 1000};
  copy.copy = true;
  WarmTier::ReserveResult r = Reserve({copy, {H(2), 1000}});
  ASSERT_NE(r.reservation_id, 0u);
  const Hashes deleted = {H(1), H(2)};
  EXPECT_EQ(tier_->Delete(ns_, "s", deleted, /*tombstone=*/true), 0u);
  EXPECT_THAT(Reserve({{H(1), 1000}}).status[0],
              StatusIs(Code::kAlreadyExists, HasSubstr("being written")));
  auto done = Commit(r.reservation_id, {Block(1, 1000), Block(2, 1000)});
  ASSERT_THAT(done, IsOk());
  EXPECT_THAT((*done)[0], IsOk()) << "wanted again by a writer";
  EXPECT_THAT((*done)[1], StatusIs(Code::kAborted)) << "only deleted";
  EXPECT_TRUE(Present(1));
  EXPECT_FALSE(Present(2));
}

// A chain hash in `scope` (8 bytes long) whose PolicyHandle (unkeyed XXH3 over namespace,
// scope and hash) equals `target`'s: for these 49-byte inputs the last 16 bytes enter XXH3
// through one mixing step, which can be solved for. Any tenant can do this.
ChainHash ForgedHash(const BlockKey& target, NamespaceId ns, const std::string& scope) {
  std::string b;
  b.append(reinterpret_cast<const char*>(&ns), sizeof(ns));
  b.push_back(static_cast<char>(scope.size()));
  b += scope;
  b.append(32, '\x5c');
  const uint8_t* in = reinterpret_cast<const uint8_t*>(b.data());
  const uint8_t* secret = XXH3_kSecret;
  const size_t len = b.size();
  uint64_t acc = len * XXH_PRIME64_1;
  acc += XXH3_mix16B(in + 16, secret + 32, 0);
  acc += XXH3_mix16B(in + len - 32, secret + 48, 0);
  acc += XXH3_mix16B(in, secret, 0);
  // Undo the final avalanche of the target's hash: what the last mixing step must add.
  auto inverse = [](uint64_t a) {
    uint64_t x = a;
    for (int i = 0; i < 6; ++i) x *= 2 - a * x;
    return x;
  };
  uint64_t h = PolicyHandle(target);
  h ^= h >> 32;
  h *= inverse(0x165667919E3779F9ULL);
  h ^= h >> 37;
  const uint64_t need = h - acc;
  const uint64_t lo = XXH_readLE64(secret + 16) ^ 1, hi = need ^ XXH_readLE64(secret + 24);
  std::memcpy(&b[len - 16], &lo, 8);
  std::memcpy(&b[len - 8], &hi, 8);
  ChainHash forged;
  std::memcpy(forged.bytes.data(), b.data() + len - 32, 32);
  return forged;
}

// Tombstones are not held as the PolicyHandle: a tenant deleting (in its own scope) a hash
// crafted to share a `shared` block's handle plants no tombstone on that block, whose copies
// are still taken; a delete of the block itself still refuses them. Before, the forged delete
// refused every copy of the shared block (rebalancer, read-repair, promotion) for 60 s.
TEST_F(WarmTierTest, AForgedHandleCollisionPlantsNoTombstoneOnAnotherScopesBlock) {
  const BlockKey target{ns_, "shared", H(1)};
  const ChainHash forged = ForgedHash(target, ns_, "tenant-b");
  ASSERT_EQ(PolicyHandle(BlockKey{ns_, "tenant-b", forged}), PolicyHandle(target))
      << "the forgery must collide for this test to mean anything";
  EXPECT_EQ(tier_->Delete(ns_, "tenant-b", {&forged, 1}, /*tombstone=*/true), 0u);
  WarmTier::PutBlock copy{H(1), 1000};
  copy.copy = true;
  EXPECT_THAT(Reserve({copy}, kTtl, "shared").status[0], IsOk());
  EXPECT_FALSE(tier_->DeletedLately(target));
  const Hashes one = {H(1)};
  tier_->Delete(ns_, "shared", one, /*tombstone=*/true);
  EXPECT_THAT(Reserve({copy}, kTtl, "shared").status[0], StatusIs(Code::kFailedPrecondition));
}

// A reader that finds the bytes it pinned bad drops that entry only: if a writer deleted the
// block and put it again meanwhile, the new copy (another slot) stays. Before, the drop went
// by key and took the good copy.
TEST_F(WarmTierTest, ABadCopyFoundByAReaderIsDroppedNotTheCopyPutSince) {
  ASSERT_THAT(PutN(1, 1000), IsOk());
  const Hashes one = {H(1)};
  WarmTier::GetResult pinned = tier_->BeginGet(ns_, "s", one, kTtl, nullptr, 0);
  ASSERT_THAT(pinned.status[0], IsOk());
  const uint8_t* read_at = pinned.blocks[0].address;
  EXPECT_EQ(tier_->Delete(ns_, "s", one, /*tombstone=*/true), 1u);
  ASSERT_THAT(PutN(1, 1000), IsOk()) << "a writer puts it again";
  tier_->DropCorrupt(BlockKey{ns_, "s", H(1)}, read_at);
  EXPECT_TRUE(Present(1));
  EXPECT_EQ(tier_->Stats().data_loss, 0u);
  ASSERT_THAT(tier_->EndGet(pinned.lease_id), IsOk());
  WarmTier::GetResult now = tier_->BeginGet(ns_, "s", one, kTtl, nullptr, 0);
  ASSERT_THAT(now.status[0], IsOk());
  tier_->DropCorrupt(BlockKey{ns_, "s", H(1)}, now.blocks[0].address);
  EXPECT_FALSE(Present(1)) << "the entry read is dropped";
  EXPECT_EQ(tier_->Stats().data_loss, 1u);
  ASSERT_THAT(tier_->EndGet(now.lease_id), IsOk());
}

// Keys() walks the arena a page at a time, taking the lock per page (the rebalancer's walk):
// committed blocks only, each resident one once, also while puts and deletes go on between
// pages; not a reservation, nor a block deleted while a reader still pins it.
TEST_F(WarmTierTest, KeysListsEachCommittedBlockOnceWhilePutsAndDeletesGoOn) {
  for (uint32_t n = 0; n < 100; ++n) ASSERT_THAT(PutN(n, 1000), IsOk());
  WarmTier::ReserveResult open = Reserve({{H(100), 1000}});
  ASSERT_THAT(open.status[0], IsOk());
  const uint64_t lease = Pin({H(5)});
  ASSERT_NE(lease, 0u);
  ASSERT_EQ(tier_->Delete(ns_, "s", Hashes{H(5)}), 1u);
  std::vector<ChainHash> want;
  for (uint32_t n = 0; n < 100; ++n) {
    if (n != 5) want.push_back(H(n));
  }
  auto listed = [&] {
    std::vector<ChainHash> got;
    for (const BlockKey& k : tier_->Keys()) got.push_back(k.hash);
    return got;
  };
  EXPECT_THAT(listed(), ::testing::UnorderedElementsAreArray(want));
  std::atomic<bool> stop{false};
  std::thread churn([&] {
    for (uint32_t round = 0; !stop.load(); ++round) {
      const uint32_t n = 200 + round % 100;
      PutN(n, 1000).IgnoreError();
      if (round % 3 == 0) tier_->Delete(ns_, "s", Hashes{H(200 + (round / 3) % 100)});
    }
  });
  for (int walk = 0; walk < 50; ++walk) {
    std::vector<ChainHash> got = listed();
    std::vector<ChainHash> steady;
    for (const ChainHash& h : got) {
      uint32_t n = 0;
      std::memcpy(&n, h.bytes.data(), sizeof(n));
      if (n < 200) steady.push_back(h);
    }
    // Each exactly once (a churned block may come twice: dropped from a page already read
    // and stored again in one not read yet).
    ASSERT_THAT(steady, ::testing::UnorderedElementsAreArray(want)) << "walk " << walk;
  }
  stop = true;
  churn.join();
  ASSERT_THAT(tier_->EndGet(lease), IsOk());
  ASSERT_THAT(tier_->AbortPut(open.reservation_id), IsOk());
}

// A walk (BeginKeys, NextKeys) lists the blocks committed before it began: not one put after,
// nor one deleted and put again after (ResidentSince says the same of each), while it holds
// no more than the pages it read (the rebalancer's walk keeps no list of the warm blocks).
TEST_F(WarmTierTest, AWalkListsTheBlocksCommittedBeforeItBegan) {
  Init(16 * kPage);  // 15 blocks, a page each, none evicted
  for (uint32_t n = 0; n < 10; ++n) ASSERT_THAT(PutN(n, kPage), IsOk());
  WarmTier::KeyCursor walk = tier_->BeginKeys();
  for (uint32_t n = 10; n < 15; ++n) ASSERT_THAT(PutN(n, kPage), IsOk());
  ASSERT_EQ(tier_->Delete(ns_, "s", Hashes{H(3)}), 1u);
  ASSERT_THAT(PutN(3, kPage), IsOk());
  std::vector<ChainHash> got;
  std::vector<BlockKey> keys;
  int calls = 0;
  while (tier_->NextKeys(&walk, 2, &keys)) {
    ++calls;
    // Pages of one block each: a call reads two pages at most.
    ASSERT_LE(keys.size(), 2u) << "call " << calls;
    for (const BlockKey& k : keys) got.push_back(k.hash);
    keys.clear();
  }
  EXPECT_GE(calls, 5);
  std::vector<ChainHash> want;
  for (uint32_t n = 0; n < 10; ++n) {
    if (n != 3) want.push_back(H(n));
  }
  EXPECT_THAT(got, ::testing::UnorderedElementsAreArray(want));
  const uint64_t before = walk.before;
  EXPECT_TRUE(tier_->ResidentSince(BlockKey{ns_, "s", H(0)}, before));
  EXPECT_FALSE(tier_->ResidentSince(BlockKey{ns_, "s", H(3)}, before)) << "put again since";
  EXPECT_FALSE(tier_->ResidentSince(BlockKey{ns_, "s", H(12)}, before)) << "put since";
  EXPECT_TRUE(tier_->ResidentSince(BlockKey{ns_, "s", H(12)}, tier_->BeginKeys().before));
  EXPECT_EQ(tier_->Keys().size(), 15u);
}

// Demote of a session (a pause) takes the session's committed blocks that nobody pins: not
// another session's, nor one deleted, still being written or pinned by a reader; and once they
// moved, a second pause finds none of them (the tier's per-session index follows commits and
// removals).
TEST_F(WarmTierTest, DemotingASessionTakesItsCommittedUnpinnedBlocksOnly) {
  Init(16 * kPage);
  auto put = [&](uint32_t n, const std::string& session) {
    WarmTier::PutBlock pb{H(n), 1000};
    pb.session = session;
    WarmTier::ReserveResult r = Reserve({pb});
    ASSERT_THAT(r.status[0], IsOk());
    ASSERT_THAT(Commit(r.reservation_id, {Block(n, 1000)}).status(), IsOk());
  };
  for (uint32_t n = 0; n < 6; ++n) put(n, "chat-a");
  for (uint32_t n = 10; n < 13; ++n) put(n, "chat-b");
  ASSERT_EQ(tier_->Delete(ns_, "s", Hashes{H(1)}), 1u);
  const uint64_t lease = Pin({H(2)});
  ASSERT_NE(lease, 0u);
  WarmTier::PutBlock writing{H(7), 1000};
  writing.session = "chat-a";
  WarmTier::ReserveResult open = Reserve({writing});
  ASSERT_THAT(open.status[0], IsOk());
  std::vector<uint32_t> taken;
  auto take = [&](const std::string& session) {
    taken.clear();
    return tier_->Demote(
        0,
        [&](const BlockKey& key, std::span<const uint8_t>, const WarmTier::BlockAttrs& a) {
          EXPECT_EQ(a.session, session);
          uint32_t n = 0;
          std::memcpy(&n, key.hash.bytes.data(), sizeof(n));
          taken.push_back(n);
          return WarmTier::Demoted::kMoved;
        },
        &session);
  };
  EXPECT_EQ(take("chat-a"), 4u);
  EXPECT_THAT(taken, ::testing::UnorderedElementsAre(0u, 3u, 4u, 5u));
  EXPECT_EQ(take("chat-a"), 0u) << "moved blocks are gone from the session";
  EXPECT_EQ(Found({H(0), H(3), H(4), H(5)}), 0u);
  ASSERT_THAT(tier_->EndGet(lease), IsOk());
  EXPECT_EQ(take("chat-a"), 1u) << "unpinned now";
  EXPECT_THAT(taken, ::testing::ElementsAre(2u));
  ASSERT_THAT(Commit(open.reservation_id, {Block(7, 1000)}).status(), IsOk());
  EXPECT_EQ(take("chat-a"), 1u) << "committed now";
  EXPECT_EQ(take("chat-b"), 3u);
  EXPECT_EQ(take("none"), 0u);
}

}  // namespace
}  // namespace strata::storenode::warm_tier_test
