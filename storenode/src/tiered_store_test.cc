#include "strata/storenode/tiered_store.h"

#include <stdlib.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "disk_tier_test_fixture.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "rocksdb/env.h"
#include "strata/common/checksum.h"
#include "strata/testutil/prompts.h"
#include "strata/testutil/status_matchers.h"

namespace strata::storenode {
namespace {

namespace fs = std::filesystem;
using ::strata::testutil::IsOk;

constexpr uint64_t kBlock = 4096;

class TieredStoreTest : public ::testing::Test {
 protected:
  void SetUp() override { Init({}); }

  // A store with `extra`'s settings (tiers as below); `reopen` keeps the disk tiers' files,
  // whose blocks are each charged at least `min_charge`.
  void Init(const TieredStoreOptions& extra, bool reopen = false, uint64_t min_charge = 0) {
    store_.reset();
    if (!reopen) {
      if (!dir_.empty()) fs::remove_all(dir_);
      std::string tmpl = (fs::temp_directory_path() / "strata-tiered-XXXXXX").string();
      dir_ = mkdtemp(tmpl.data());
    }
    TieredStoreOptions o = extra;
    o.warm.capacity_bytes = 4 << 20;
    o.warm.max_block_bytes = kBlock;
    for (auto [tier, name] : {std::pair{&o.cool, "cool"}, std::pair{&o.cold, "cold"}}) {
      DiskTierOptions d;
      d.name = name;
      d.path = dir_ + "/" + name;
      d.capacity_bytes = tier->has_value() ? (*tier)->capacity_bytes : 16 << 20;
      d.codec = Codec::kNone;
      d.min_block_charge = min_charge;
      if (tier->has_value()) {
        d.scope_quota = (*tier)->scope_quota;
        d.env = (*tier)->env;
      }
      *tier = d;
    }
    if (o.demote_interval_ms == TieredStoreOptions{}.demote_interval_ms) {
      o.demote_interval_ms = 3600 * 1000;  // nothing moves unless the test moves it
    }
    auto store = TieredStore::Create(std::move(o));
    ASSERT_THAT(store.status(), IsOk());
    store_ = std::move(*store);
    auto ns = store_->RegisterNamespace(testutil::RawSpec("m", kBlock));
    ASSERT_THAT(ns.status(), IsOk());
    ns_ = *ns;
  }
  void TearDown() override {
    store_.reset();
    fs::remove_all(dir_);
  }

  // Stores blocks first..first+count-1 (warm) under `session`; their keys.
  std::vector<BlockKey> Put(uint32_t first, uint32_t count, const std::string& session) {
    return Put(ns_, "", first, count, session);
  }
  std::vector<BlockKey> Put(NamespaceId ns, const std::string& scope, uint32_t first,
                            uint32_t count, const std::string& session) {
    std::vector<WarmTier::PutBlock> blocks;
    std::vector<std::vector<uint8_t>> payloads;
    std::vector<BlockKey> keys;
    for (uint32_t n = first; n < first + count; ++n) {
      BlockKey key{ns, scope, {}};
      std::memcpy(key.hash.bytes.data(), &n, sizeof(n));
      keys.push_back(key);
      blocks.push_back({.hash = key.hash, .size = kBlock, .session = session});
      payloads.emplace_back(kBlock, static_cast<uint8_t>(n));
    }
    WarmTier::ReserveResult r = store_->BeginPut(ns, scope, blocks, 10000);
    std::vector<WarmTier::CommitBlock> commits;
    for (size_t i = 0; i < keys.size(); ++i) {
      EXPECT_THAT(r.status[i], IsOk());
      commits.push_back(
          {keys[i].hash, BlockChecksum(payloads[i].data(), payloads[i].size()), payloads[i]});
    }
    auto done = store_->CommitPut(r.reservation_id, commits);
    EXPECT_THAT(done.status(), IsOk());
    return keys;
  }

  // An inline read of `key` that does not promote it; its bytes in *buf, its lease ended.
  WarmTier::GetResult ReadInline(const BlockKey& key, std::vector<uint8_t>* buf) {
    WarmTier::GetResult read = store_->BeginGet(
        key.namespace_id, key.scope, {&key.hash, 1}, 10000,
        [buf](size_t, uint64_t size) {
          buf->resize(size);
          return buf->data();
        },
        UINT64_MAX, /*promote=*/false);
    if (read.lease_id != 0) {
      EXPECT_THAT(store_->EndGet(read.lease_id), IsOk());
    }
    return read;
  }

  std::string dir_;
  std::unique_ptr<TieredStore> store_;
  NamespaceId ns_ = 0;
};

// A walk gives every block once, a few keys at a time, though tiers hold copies of each other's
// blocks: warm and cool (a resumed session), cool and cold (paused to cold, resumed, paused to
// cool), and blocks on one tier only. In a named scope: the warm keys the walk hands out must
// still rule out their disk copies (before, they were moved out first, and each block held
// warm and on disk came twice).
TEST_F(TieredStoreTest, AKeyWalkGivesEveryBlockOnceWhereverItsCopiesAre) {
  const std::string scope = "tenant-a";
  std::vector<BlockKey> all = Put(ns_, scope, 0, 8, "");
  for (auto [first, session] : {std::pair{100u, "cool"}, std::pair{200u, "cold"},
                                std::pair{300u, "warm+cool"}, std::pair{400u, "cool+cold"}}) {
    std::vector<BlockKey> keys = Put(ns_, scope, first, 8, session);
    all.insert(all.end(), keys.begin(), keys.end());
  }
  // Another namespace and scope, on cool.
  auto other = store_->RegisterNamespace(testutil::RawSpec("m2", kBlock));
  ASSERT_THAT(other.status(), IsOk());
  std::vector<BlockKey> elsewhere = Put(*other, "tenant-b", 500, 8, "cool");
  all.insert(all.end(), elsewhere.begin(), elsewhere.end());
  ASSERT_THAT(store_->PauseSession("cool", false).status(), IsOk());
  ASSERT_THAT(store_->PauseSession("cold", true).status(), IsOk());
  ASSERT_THAT(store_->PauseSession("warm+cool", false).status(), IsOk());
  ASSERT_THAT(store_->ResumeSession("warm+cool").status(), IsOk());
  ASSERT_THAT(store_->PauseSession("cool+cold", true).status(), IsOk());
  ASSERT_THAT(store_->ResumeSession("cool+cold").status(), IsOk());
  ASSERT_THAT(store_->PauseSession("cool+cold", false).status(), IsOk());
  const TieredStats st = store_->Stats();
  // 16 warm (8 never moved, 8 resumed), 32 cool (8 + 8 resumed + 8 paused again + 8 of the
  // other namespace), 16 cold.
  EXPECT_EQ(st.warm.blocks, 16u);
  EXPECT_EQ(st.cool->blocks, 32u);
  EXPECT_EQ(st.cold->blocks, 16u);

  std::map<uint32_t, int> seen;
  TieredStore::KeyWalk walk;
  int calls = 0;
  for (std::vector<BlockKey> got; store_->NextKeys(&walk, 3, &got); got.clear()) {
    if (++calls == 1) {
      // The warm keys are taken now. A cool block read with promotion becomes warm too (its
      // disk copy stays): it comes from cool, once.
      std::vector<uint8_t> buf;
      WarmTier::GetResult read = store_->BeginGet(
          ns_, scope, {&all[8].hash, 1}, 10000,
          [&buf](size_t, uint64_t size) {
            buf.resize(size);
            return buf.data();
          },
          UINT64_MAX, /*promote=*/true);
      ASSERT_THAT(read.status[0], IsOk());
      if (read.lease_id != 0) {
        ASSERT_THAT(store_->EndGet(read.lease_id), IsOk());
      }
      EXPECT_EQ(store_->Stats().warm.blocks, 17u) << "not promoted";
    }
    ASSERT_LE(got.size(), 3u);
    ASSERT_FALSE(got.empty());
    // A page holds one block here: the walk reads 4 calls' worth ahead (12 keys) and keeps
    // at most the 9 it did not give (it used to keep a list of every warm key, 13 here).
    EXPECT_LE(walk.warm_keys.size(), 9u) << "call " << calls;
    for (const BlockKey& k : got) {
      uint32_t n = 0;
      std::memcpy(&n, k.hash.bytes.data(), sizeof(n));
      ++seen[n];
    }
  }
  EXPECT_GE(calls, 48 / 3);
  EXPECT_EQ(seen.size(), all.size());
  for (const auto& [n, times] : seen) EXPECT_EQ(times, 1) << "block " << n;
  std::vector<BlockKey> keys;
  TieredStore::KeyWalk done = walk;
  EXPECT_FALSE(store_->NextKeys(&done, 3, &keys)) << "a finished walk gave more";
  EXPECT_TRUE(keys.empty());
}

// Blocks held warm and on cool (a session paused, then resumed): a Delete counts each block
// once (before: once per tier, 8 for 4), and a warm copy gone bad is read from cool instead of
// failing DATA_LOSS while an intact copy sits on disk.
TEST_F(TieredStoreTest, BlocksOnTwoTiersCountOnceAndABadWarmCopyFallsBackToDisk) {
  const std::vector<BlockKey> keys = Put(ns_, "tenant-a", 0, 4, "both");
  ASSERT_THAT(store_->PauseSession("both", false).status(), IsOk());
  ASSERT_THAT(store_->ResumeSession("both").status(), IsOk());
  ASSERT_EQ(store_->Stats().warm.blocks, 4u);
  ASSERT_EQ(store_->Stats().cool->blocks, 4u);
  ASSERT_THAT(store_->CorruptForTest(keys[0], 7), IsOk());
  std::vector<uint8_t> buf;
  WarmTier::GetResult read = ReadInline(keys[0], &buf);
  ASSERT_THAT(read.status[0], IsOk());
  EXPECT_EQ(read.blocks[0].tier, 3) << "served from cool";
  EXPECT_EQ(buf, std::vector<uint8_t>(kBlock, 0)) << "block 0's bytes";
  std::vector<ChainHash> hashes;
  for (const BlockKey& k : keys) hashes.push_back(k.hash);
  EXPECT_EQ(store_->Delete(ns_, "tenant-a", hashes), 4u);
}

// A block on cool and cold (paused to cold, resumed, paused to cool) whose cool copy is
// corrupt is read from cold. Before, an inline read stopped at cool's DATA_LOSS, and the
// block was reported lost with an intact copy a tier below.
TEST_F(TieredStoreTest, ACorruptCoolCopyFallsBackToAnIntactColdOne) {
  const std::vector<BlockKey> keys = Put(0, 2, "two");
  ASSERT_THAT(store_->PauseSession("two", true).status(), IsOk());
  ASSERT_THAT(store_->ResumeSession("two").status(), IsOk());
  ASSERT_THAT(store_->PauseSession("two", false).status(), IsOk());
  ASSERT_EQ(store_->Stats().warm.blocks, 0u);
  ASSERT_EQ(store_->Stats().cool->blocks, 2u);
  ASSERT_EQ(store_->Stats().cold->blocks, 2u);
  store_.reset();
  {
    disk_test::RawStore raw(dir_ + "/cool");
    ASSERT_TRUE(raw.status.ok()) << raw.status.ToString();
    std::string value;
    const std::string key = EncodeDiskKey(keys[0]);
    ASSERT_TRUE(raw.db->Get({}, raw.handles[0], key, &value).ok());
    value[value.size() / 2] ^= 0x40;  // a payload byte: the stored checksum no longer matches
    ASSERT_TRUE(raw.db->Put({}, raw.handles[0], key, value).ok());
  }
  Init({}, /*reopen=*/true);
  std::vector<uint8_t> buf;
  WarmTier::GetResult read = ReadInline(keys[0], &buf);
  ASSERT_THAT(read.status[0], IsOk());
  EXPECT_EQ(read.blocks[0].tier, 4) << "served from cold";
  EXPECT_EQ(buf, std::vector<uint8_t>(kBlock, 0)) << "block 0's bytes";
  EXPECT_EQ(store_->Stats().cool->data_loss, 1u) << "the corrupt cool copy was found";
}

// Under the watermark a slot class can be out of slots and free pages (blocks of mixed
// sizes): the warm tier is half empty, every page half full of 1,000-byte blocks, and each
// 4 KiB block needs a whole page. The blocks of the pages they take go to cool, not away.
// Before, the put evicted them (6 blocks dropped while cool had room).
TEST_F(TieredStoreTest, APutThatNeedsAnotherSlotClassMovesBlocksDownInsteadOfDroppingThem) {
  TieredStoreOptions o;
  o.warm_high_watermark = 1.0;
  o.warm_low_watermark = 0.95;
  Init(o);
  const uint32_t kSmall = 4096;  // 1,000-byte blocks fill the 4 MiB arena, 4 to a page
  std::vector<WarmTier::PutBlock> blocks;
  std::vector<std::vector<uint8_t>> payloads;
  std::vector<ChainHash> hashes;
  for (uint32_t n = 0; n < kSmall; ++n) {
    ChainHash h;
    std::memcpy(h.bytes.data(), &n, sizeof(n));
    hashes.push_back(h);
    blocks.push_back({.hash = h, .size = 1000});
    payloads.emplace_back(1000, static_cast<uint8_t>(n));
  }
  auto put = [&](std::span<const WarmTier::PutBlock> b, std::span<const std::vector<uint8_t>> p) {
    WarmTier::ReserveResult r = store_->BeginPut(ns_, "", b, 10000);
    std::vector<WarmTier::CommitBlock> commits;
    for (size_t i = 0; i < b.size(); ++i) {
      EXPECT_THAT(r.status[i], IsOk()) << i;
      commits.push_back({b[i].hash, BlockChecksum(p[i].data(), p[i].size()), p[i]});
    }
    auto done = store_->CommitPut(r.reservation_id, commits);
    ASSERT_THAT(done.status(), IsOk());
    for (const absl::Status& st : *done) EXPECT_THAT(st, IsOk());
  };
  for (uint32_t from = 0; from < kSmall; from += 1024) {
    put(std::span(blocks).subspan(from, 1024), std::span(payloads).subspan(from, 1024));
  }
  ASSERT_EQ(store_->Stats().warm.blocks, kSmall);
  std::vector<ChainHash> odd, kept;
  for (uint32_t n = 0; n < kSmall; ++n) (n % 2 ? odd : kept).push_back(hashes[n]);
  ASSERT_EQ(store_->Delete(ns_, "", odd), kSmall / 2);
  std::vector<WarmTier::PutBlock> big;
  std::vector<std::vector<uint8_t>> big_bytes;
  for (uint8_t b = 0; b < 3; ++b) {
    WarmTier::PutBlock block{.size = kBlock};
    block.hash.bytes.fill(0xb1 + b);
    big.push_back(block);
    big_bytes.emplace_back(kBlock, 0xb1 + b);
  }
  put(big, big_bytes);
  const TieredStats st = store_->Stats();
  EXPECT_EQ(st.warm.evictions, 0u);
  EXPECT_EQ(st.cool->blocks, 6u) << "three pages' two blocks each";
  size_t found = 0;
  for (const auto& m : store_->LookupEach(ns_, "", kept)) found += m.has_value();
  EXPECT_EQ(found, kept.size()) << "every block not deleted is still held";
}

// A read reports each block's depth and importance as put, from warm and from disk: what the
// rebalancer sends along with a copy, so that its new owner ranks it as this node did.
TEST_F(TieredStoreTest, AReadReportsDepthAndImportanceFromEveryTier) {
  ChainHash h;
  h.bytes.fill(0x5d);
  const WarmTier::PutBlock block{
      .hash = h, .size = kBlock, .depth = 7, .importance = 0.75f, .session = "ranked"};
  const std::vector<uint8_t> bytes(kBlock, 0x5d);
  WarmTier::ReserveResult r = store_->BeginPut(ns_, "", {&block, 1}, 10000);
  ASSERT_THAT(r.status[0], IsOk());
  const WarmTier::CommitBlock commit{h, BlockChecksum(bytes.data(), bytes.size()), bytes};
  ASSERT_THAT(store_->CommitPut(r.reservation_id, {&commit, 1}).status(), IsOk());
  for (const char* where : {"warm", "cool"}) {
    SCOPED_TRACE(where);
    std::vector<uint8_t> buf;
    WarmTier::GetResult read = store_->BeginGet(
        ns_, "", {&h, 1}, 10000,
        [&buf](size_t, uint64_t size) {
          buf.resize(size);
          return buf.data();
        },
        UINT64_MAX, /*promote=*/false);
    ASSERT_THAT(read.status[0], IsOk());
    EXPECT_EQ(read.blocks[0].depth, 7u);
    EXPECT_FLOAT_EQ(read.blocks[0].importance, 0.75f);
    if (read.lease_id != 0) {
      ASSERT_THAT(store_->EndGet(read.lease_id), IsOk());
    }
    ASSERT_THAT(store_->PauseSession("ranked", false).status(), IsOk());
  }
}

// A client that names a new session on every put: the node tracks at most max_sessions of
// them, and the ones that put longest ago are paused early (their blocks move to cool) instead
// of the table growing. Without the cap all 40 would be tracked until session_idle.
TEST_F(TieredStoreTest, SessionsBeyondTheCapPauseEarlyInsteadOfPilingUp) {
  TieredStoreOptions o;
  o.session_idle_ms = 3600 * 1000;
  o.max_sessions = 8;
  o.demote_interval_ms = 10;
  ASSERT_NO_FATAL_FAILURE(Init(o));
  for (uint32_t n = 0; n < 40; ++n) Put(1000 + n, 1, absl::StrCat("session-", n));
  EXPECT_LE(store_->tracked_sessions(), 8u);
  // The demoter pauses the sessions let go of: their blocks leave the warm tier.
  for (int i = 0; i < 3000 && store_->Stats().sessions_paused < 32; ++i) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  const TieredStats st = store_->Stats();
  EXPECT_GE(st.sessions_paused, 32u);
  EXPECT_GE(st.cool->blocks, 32u);
  EXPECT_LE(st.warm.blocks, 8u);
}

// Pausing and resuming a session stop at the calling RPC's deadline with what they moved by
// then (here: a deadline already past moves nothing), rather than moving the whole session
// after the caller gave up; with time left they move all of it.
TEST_F(TieredStoreTest, PauseAndResumeStopAtTheirDeadline) {
  Put(8200, 4, "deadline");
  const absl::Time past = absl::Now() - absl::Seconds(1);
  auto moved = [](absl::StatusOr<uint64_t> n) {
    EXPECT_THAT(n.status(), IsOk());
    return n.value_or(~0ull);
  };
  EXPECT_EQ(moved(store_->PauseSession("deadline", false, past)), 0u);
  EXPECT_EQ(store_->Stats().warm.blocks, 4u);
  EXPECT_EQ(moved(store_->PauseSession("deadline", false)), 4u);
  EXPECT_EQ(store_->Stats().warm.blocks, 0u);
  EXPECT_EQ(moved(store_->ResumeSession("deadline", past)), 0u);
  EXPECT_EQ(moved(store_->ResumeSession("deadline")), 4u);
}

// Sessions that went idle together are paused a bounded number per demoter tick (each pause
// scans the warm index under its lock): 200 idle at once take two ticks of at most 128.
// Before, one tick paused all of them, however many.
TEST_F(TieredStoreTest, SessionsIdleTogetherArePausedAFewPerTick) {
  TieredStoreOptions o;
  o.session_idle_ms = 1;
  o.demote_interval_ms = 3600 * 1000;  // no tick of its own: the test calls them
  ASSERT_NO_FATAL_FAILURE(Init(o));
  for (uint32_t n = 0; n < 200; ++n) Put(7000 + n, 1, absl::StrCat("idle-", n));
  absl::SleepFor(absl::Milliseconds(5));
  store_->PauseIdleSessions();
  EXPECT_EQ(store_->Stats().sessions_paused, 128u);
  EXPECT_EQ(store_->tracked_sessions(), 72u);
  store_->PauseIdleSessions();
  EXPECT_EQ(store_->Stats().sessions_paused, 200u);
  EXPECT_EQ(store_->tracked_sessions(), 0u);
}

// Writers that find the warm tier at its high watermark together make room for what they
// bring, not each for the whole gap down to the low watermark: the bytes already on their way
// to disk count. Before, each of them demoted the gap (disk writes in its own thread): eight
// of them emptied the warm tier.
TEST_F(TieredStoreTest, WritersAtTheHighWatermarkDemoteOnlyWhatTheyNeedBetweenThem) {
  // 1,024 slots of 4 KiB; high 90 %, low 80 %. 900 in use; each writer brings 24 more.
  for (uint32_t n = 0; n < 900; n += 20) Put(3000 + n, 20, "fill");
  const uint64_t capacity = store_->Stats().warm.capacity_bytes;
  ASSERT_EQ(store_->Stats().cool->blocks, 0u);
  std::vector<std::thread> writers;
  std::atomic<int> ready{0};
  for (uint32_t w = 0; w < 8; ++w) {
    writers.emplace_back([&, w] {
      ready.fetch_add(1);
      while (ready.load() < 8) {
      }
      Put(5000 + w * 24, 24, "w");
    });
  }
  for (std::thread& t : writers) t.join();
  const TieredStats st = store_->Stats();
  EXPECT_GE(st.warm.used_bytes, capacity * 7 / 10)
      << st.cool->blocks << " blocks went to cool for 192 incoming";
  EXPECT_EQ(st.warm.evictions, 0u) << "blocks dropped instead of demoted";
  EXPECT_EQ(st.warm.blocks + st.cool->blocks, 900u + 192u);
  std::printf("[ figures  ] 8 writers of 24 blocks at 900 of 1,024 warm slots: %llu demoted\n",
              static_cast<unsigned long long>(st.cool->blocks));
}

// A cool victim the cold tier refuses (here: a cold tier smaller than one block) leaves the
// node as an eviction, counted as one; it used to vanish uncounted.
TEST_F(TieredStoreTest, CoolVictimsTheColdTierRefusesAreCountedAsEvicted) {
  TieredStoreOptions o;
  o.cool = DiskTierOptions{.capacity_bytes = 20 * kBlock};
  o.cold = DiskTierOptions{.capacity_bytes = kBlock / 2};
  ASSERT_NO_FATAL_FAILURE(Init(o));
  Put(7000, 40, "m");
  // Pausing moves all 40 to cool, which makes room for them by moving its victims to cold.
  ASSERT_THAT(store_->PauseSession("m", /*to_cold=*/false), IsOk());
  const TieredStats st = store_->Stats();
  EXPECT_EQ(st.cold->blocks, 0u);
  EXPECT_EQ(st.cool_demotions, 0u);
  EXPECT_EQ(st.disk_evictions, 40u - st.cool->blocks);
  EXPECT_GT(st.disk_evictions, 0u);
}

// A warm victim whose tenant holds its whole cool quota leaves the node: it is counted as an
// eviction, not as a demotion too (before, every such block was counted twice).
TEST_F(TieredStoreTest, BlocksDroppedForACoolQuotaCountAsEvictedNotDemoted) {
  TieredStoreOptions o;
  o.cool = DiskTierOptions{.capacity_bytes = 16 << 20};
  o.cool->scope_quota = [](const std::string& scope) -> uint64_t {
    return scope == "tenant-a" ? 8 * kBlock : 0;
  };
  ASSERT_NO_FATAL_FAILURE(Init(o));
  // 1,024 warm slots: writers past the 90 % watermark demote, and the tenant's quota fills.
  for (uint32_t n = 0; n < 1200; n += 40) Put(ns_, "tenant-a", 9000 + n, 40, "");
  const TieredStats st = store_->Stats();
  ASSERT_GT(st.cool->blocks, 0u);
  EXPECT_EQ(st.warm.demotions, st.cool->blocks) << "a dropped block counted as demoted";
  EXPECT_GT(st.warm.evictions, 0u);
  EXPECT_EQ(st.warm.evictions + st.disk_evictions, 1200u - st.warm.blocks - st.cool->blocks)
      << "every block that left the node counted once";
}

// The data plane's read of a disk block: pinned warm (a miss), staged from cool, pinned
// again. One cool hit, and neither a warm hit nor a miss (Stats counts a warm miss served
// from disk as that tier's hit); before, a warm miss and a warm hit and no cool hit
// (strata_disk_hits stayed at 0 for reads over UCX).
TEST_F(TieredStoreTest, AReadStagedFromDiskCountsADiskHitNotAWarmHit) {
  std::vector<BlockKey> keys = Put(8000, 1, "staged");
  ASSERT_THAT(store_->PauseSession("staged", /*to_cold=*/false), IsOk());
  const TieredStats before = store_->Stats();
  WarmTier::GetResult first = store_->PinWarm(ns_, "", {&keys[0].hash, 1}, 10000);
  ASSERT_EQ(first.status[0].code(), absl::StatusCode::kNotFound);
  ASSERT_THAT(store_->StageInWarm(keys[0]), IsOk());
  WarmTier::GetResult second = store_->PinWarm(ns_, "", {&keys[0].hash, 1}, 10000, /*count=*/false);
  ASSERT_THAT(second.status[0], IsOk());
  ASSERT_THAT(store_->EndGet(second.lease_id), IsOk());
  const TieredStats after = store_->Stats();
  EXPECT_EQ(after.warm.misses - before.warm.misses, 0u);
  EXPECT_EQ(after.warm.hits - before.warm.hits, 0u);
  EXPECT_EQ(after.cool_hits - before.cool_hits, 1u);
}

// A read staging a disk block into warm waits while a writer makes room there (a writer's
// turn can move a batch's worth of blocks to disk) no longer than its deadline: then it takes
// the free room, or is served from disk. Before, it waited for the writer however long.
TEST_F(TieredStoreTest, AReadStagingABlockWaitsForAWriterMakingRoomOnlyUntilItsDeadline) {
  std::vector<BlockKey> keys = Put(8100, 1, "waits");
  ASSERT_THAT(store_->PauseSession("waits", /*to_cold=*/false), IsOk());
  absl::Notification staged;
  bool warm = false;
  std::thread reader;
  {
    auto writer_turn = store_->HoldWritersRoomForTest();
    reader = std::thread([&] {
      warm = store_->StageInWarm(keys[0], absl::Now() + absl::Milliseconds(200)).ok();
      staged.Notify();
    });
    EXPECT_TRUE(staged.WaitForNotificationWithTimeout(absl::Seconds(20)))
        << "the read waited for the writer past its deadline";
  }
  reader.join();
  EXPECT_TRUE(warm) << "warm had free room";
  // The block is warm now.
  WarmTier::GetResult pinned = store_->PinWarm(ns_, "", {&keys[0].hash, 1}, 10000, false);
  ASSERT_THAT(pinned.status[0], IsOk());
  EXPECT_THAT(store_->EndGet(pinned.lease_id), IsOk());
}

// ResumeSession waits for a writer making room in warm no longer than its deadline either
// (before, each promotion waited for the writer's turn however long).
TEST_F(TieredStoreTest, AResumeWaitsForAWriterMakingRoomOnlyUntilItsDeadline) {
  Put(8150, 2, "resume-waits");
  ASSERT_THAT(store_->PauseSession("resume-waits", /*to_cold=*/false), IsOk());
  absl::Notification resumed;
  absl::StatusOr<uint64_t> promoted = 0;
  std::thread resumer;
  {
    auto writer_turn = store_->HoldWritersRoomForTest();
    resumer = std::thread([&] {
      promoted = store_->ResumeSession("resume-waits", absl::Now() + absl::Milliseconds(200));
      resumed.Notify();
    });
    EXPECT_TRUE(resumed.WaitForNotificationWithTimeout(absl::Seconds(20)))
        << "the resume waited for the writer past its deadline";
  }
  resumer.join();
  EXPECT_THAT(promoted.status(), IsOk());
}

// Resuming a session larger than warm promotes what fits below the low watermark (819 of
// 1,024 slots here) and stops: before, every further promotion demoted one made before it,
// and all 1,200 went through warm.
TEST_F(TieredStoreTest, ResumingASessionLargerThanWarmPromotesWhatFits) {
  TieredStoreOptions o;
  o.cool = DiskTierOptions{.capacity_bytes = 64 << 20};
  ASSERT_NO_FATAL_FAILURE(Init(o));
  for (uint32_t n = 0; n < 1200; n += 100) {
    Put(20000 + n, 100, "big");
    ASSERT_THAT(store_->PauseSession("big", /*to_cold=*/false), IsOk());
  }
  ASSERT_EQ(store_->Stats().cool->blocks, 1200u);
  absl::StatusOr<uint64_t> resumed = store_->ResumeSession("big");
  ASSERT_THAT(resumed.status(), IsOk());
  EXPECT_GT(*resumed, 700u);
  EXPECT_LE(*resumed, 819u);
  EXPECT_EQ(store_->Stats().promotions, *resumed);
}

// A Prefetch queues at most max_prefetch_queued blocks, and a block once: a client asking for
// the same disk blocks in a loop, or for more than warm holds, cannot grow the queue.
TEST_F(TieredStoreTest, PrefetchQueuesAtMostItsCapAndEachBlockOnce) {
  TieredStoreOptions o;
  o.max_prefetch_queued = 8;
  ASSERT_NO_FATAL_FAILURE(Init(o));
  std::vector<BlockKey> keys = Put(2000, 40, "p");
  ASSERT_THAT(store_->PauseSession("p", /*to_cold=*/false), IsOk());
  std::vector<ChainHash> hashes;
  for (const BlockKey& k : keys) hashes.push_back(k.hash);
  // One call holds the queue's lock throughout: the prefetch thread takes none meanwhile.
  EXPECT_EQ(store_->Prefetch(ns_, "", hashes, ""), 8u);
  store_->WaitForPrefetch();
  EXPECT_EQ(store_->Stats().prefetched, 8u);
  // A block named eight times takes one place in the queue (each naming counts as scheduled),
  // so another one still fits.
  std::vector<ChainHash> repeated(8, hashes[20]);
  repeated.push_back(hashes[21]);
  EXPECT_EQ(store_->Prefetch(ns_, "", repeated, ""), 9u);
  store_->WaitForPrefetch();
  EXPECT_EQ(store_->Stats().prefetched, 10u);
}

// 300 cool blocks of 4 KiB fit 16 MiB as stored; reopened with a 64 KiB charge they take
// 19 MiB of it. The demoter brings the tier back under its high watermark on its own (no warm
// block is demoted meanwhile), moving the excess to cold, a step at a time.
TEST_F(TieredStoreTest, ADiskTierOverItsBudgetAfterARestartDrainsOnItsOwn) {
  Put(2000, 300, "parked");
  ASSERT_THAT(store_->PauseSession("parked", false).status(), IsOk());
  ASSERT_EQ(store_->Stats().cool->blocks, 300u);
  // Reopened with the demoter off first: its first tick (10 ms) could otherwise move blocks
  // before this reads the charge (opening writes the namespace with two fsyncs).
  ASSERT_NO_FATAL_FAILURE(Init({}, /*reopen=*/true, /*min_charge=*/64 << 10));
  EXPECT_EQ(store_->Stats().cool->charged_bytes, 300u << 16);  // over the 16 MiB budget
  TieredStoreOptions o;
  o.demote_interval_ms = 10;
  ASSERT_NO_FATAL_FAILURE(Init(o, /*reopen=*/true, /*min_charge=*/64 << 10));
  // One step drains to the low watermark: read once it is there, when nothing moves any more
  // (below the high one a block may still be between cool and cold, counted in both).
  const uint64_t high = static_cast<uint64_t>((16u << 20) * 0.95);
  const uint64_t low = static_cast<uint64_t>((16u << 20) * 0.85);
  TieredStats st = store_->Stats();
  for (int i = 0; i < 1000 && st.cool->charged_bytes > low; ++i) {
    absl::SleepFor(absl::Milliseconds(10));
    st = store_->Stats();
  }
  EXPECT_LE(st.cool->charged_bytes, high);
  EXPECT_EQ(st.cool->blocks + st.cold->blocks, 300u) << "moved, not dropped";
  EXPECT_GT(st.cold->blocks, 0u);
}

// A cool tier that cannot write (a write error made its RocksDB read-only) cannot delete its
// victims either: MakeRoom stops at the first and leaves the tier alone for a while. Before,
// each call copied the same victims into cold again and kept them in cool (here 840 copies
// for the 10 blocks paused, and more every demoter tick).
TEST_F(TieredStoreTest, ACoolTierThatCannotDeleteItsVictimsStopsCopyingThemDown) {
  Put(2000, 300, "parked");
  ASSERT_THAT(store_->PauseSession("parked", false).status(), IsOk());
  auto fs = std::make_shared<disk_test::SyncTrackingFs>();
  std::unique_ptr<rocksdb::Env> env = rocksdb::NewCompositeEnv(fs);
  absl::Cleanup store_first = [this] { store_.reset(); };  // before the env it writes through
  TieredStoreOptions o;
  o.cool = DiskTierOptions{.capacity_bytes = 16 << 20, .env = env.get()};
  o.disk_room_pause_ms = 3'600'000;  // no pause ends during the test
  // Reopened with a 64 KiB charge: 19 MiB of 16 (ADiskTierOverItsBudgetAfterARestart...).
  ASSERT_NO_FATAL_FAILURE(Init(o, /*reopen=*/true, /*min_charge=*/64 << 10));
  fs->fail_appends = true;
  Put(9000, 10, "more");
  // Each block paused asks cool for room: it is refused (cool cannot write) and stays warm.
  EXPECT_EQ(store_->PauseSession("more", false).value_or(99), 0u);
  const TieredStats st = store_->Stats();
  // The first victim's copy, then the pause.
  EXPECT_LE(st.cold->codec_bytes_in, kBlock) << "victims copied into cold";
  EXPECT_EQ(st.cool->blocks, 300u);
  EXPECT_EQ(st.warm.blocks, 10u);
  EXPECT_EQ(st.disk_evictions, 0u);
  EXPECT_EQ(st.cool_demotions, 0u) << "a copy whose cool original stays is no demotion";
}

}  // namespace
}  // namespace strata::storenode
