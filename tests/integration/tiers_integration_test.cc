// Cool and cold tiers across real store-node processes: demotion beyond the warm budget,
// bit-exact reads from every tier, survival across SIGTERM and kill -9 restarts, and byte
// flips in RocksDB's files caught as DATA_LOSS while the node keeps serving.
#include <signal.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "strata/client/store_client.h"
#include "strata/testutil/node_process.h"
#include "strata/testutil/prompts.h"
#include "strata/testutil/status_matchers.h"
#include "strata/testutil/synthetic_kv.h"
#include "strata/v1/store.grpc.pb.h"

namespace strata {
namespace {

using client::BlockRead;
using client::BlockWrite;
using client::LocalNode;
using client::StoreClient;
using testutil::IsOk;
using testutil::StatusIs;

constexpr uint64_t kBlock = 1 << 20;

class TieredNode {
 public:
  explicit TieredNode(std::string dir) : dir_(std::move(dir)) {}

  void Start(std::vector<std::string> extra = {}) {
    std::vector<std::string> args = {"--warm-bytes", "8MiB",         "--max-block-bytes", "1MiB",
                                     "--cool-path",  dir_ + "/cool", "--cool-bytes",      "12MiB",
                                     "--cold-path",  dir_ + "/cold", "--cold-bytes",      "64MiB"};
    args.insert(args.end(), extra.begin(), extra.end());
    auto p = testutil::StartNode(args);
    ASSERT_THAT(p, IsOk());
    process = std::move(*p);
    auto c = StoreClient::Connect({.address = process->address()});
    ASSERT_THAT(c, IsOk());
    client = std::move(*c);
    NamespaceSpec spec;
    spec.model_id = "tier-test";
    spec.dtype = "fp16";
    spec.layout = "raw";
    spec.block_tokens = 16;
    spec.block_bytes = kBlock;
    auto ns_or = client->RegisterNamespace(spec);
    ASSERT_THAT(ns_or, IsOk());
    ns = *ns_or;
  }

  std::vector<ChainHash> Chain(uint32_t prompt, size_t n) {
    return testutil::PromptChain(ns, prompt, n);
  }

  // Puts in small batches (`batch` blocks a call) and lets the demoter catch up between them,
  // so the warm tier never has to drop a block to make room.
  void PutAll(const std::vector<ChainHash>& hashes, uint64_t seed,
              const client::PutOptions& put = {}, size_t batch = 2) {
    for (size_t begin = 0; begin < hashes.size(); begin += batch) {
      std::vector<std::vector<uint8_t>> data;
      std::vector<BlockWrite> writes;
      for (size_t i = begin; i < std::min(hashes.size(), begin + batch); ++i) {
        data.push_back(testutil::RandomBytes(seed + i, kBlock));
      }
      for (size_t i = begin; i < std::min(hashes.size(), begin + batch); ++i) {
        writes.push_back({hashes[i], data[i - begin].data(), kBlock});
      }
      auto r = client->Put(ns, "", writes, {}, put);
      ASSERT_THAT(r, IsOk());
      for (const absl::Status& s : r->blocks) ASSERT_THAT(s, IsOk());
      for (int i = 0; i < 200; ++i) {  // bounded wait for the demoter (<= 4 s)
        auto st = client->Stats();
        ASSERT_THAT(st, IsOk());
        if (st->warm_used_bytes <= 7 * kBlock) break;
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
    }
  }

  // Fetches every block; returns how many came back bit-exact, and counts DATA_LOSS (and
  // NOT_FOUND where `not_found` is given; otherwise a miss is a failure).
  size_t VerifyAll(const std::vector<ChainHash>& hashes, uint64_t seed, size_t* data_loss,
                   size_t* not_found = nullptr) {
    size_t exact = 0;
    for (size_t i = 0; i < hashes.size(); ++i) {
      std::vector<uint8_t> out(kBlock, 0xee);
      BlockRead read{hashes[i], out.data(), kBlock};
      auto r = client->Get(ns, "", {&read, 1});
      EXPECT_THAT(r, IsOk());
      if (!r.ok()) continue;
      if (r->blocks[0].ok()) {
        EXPECT_EQ(out, testutil::RandomBytes(seed + i, kBlock))
            << "block " << i << " has wrong bytes";
        exact += out == testutil::RandomBytes(seed + i, kBlock) ? 1 : 0;
      } else if (r->blocks[0].code() == absl::StatusCode::kDataLoss) {
        ++*data_loss;
        EXPECT_EQ(out, std::vector<uint8_t>(kBlock, 0xee)) << "corrupt bytes reached the buffer";
      } else if (not_found != nullptr && r->blocks[0].code() == absl::StatusCode::kNotFound) {
        ++*not_found;
      } else {
        ADD_FAILURE() << "block " << i << ": " << r->blocks[0];
      }
    }
    return exact;
  }

  std::string dir_;
  std::unique_ptr<LocalNode> process;
  std::unique_ptr<StoreClient> client;
  client::Namespace ns;
};

class TiersTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/strata-tiers-XXXXXX";
    dir_ = mkdtemp(tmpl);
  }
  void TearDown() override {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  std::string dir_;
};

TEST_F(TiersTest, BlocksBeyondWarmBudgetReadBackBitExactFromCoolAndCold) {
  TieredNode n(dir_);
  ASSERT_NO_FATAL_FAILURE(n.Start());
  std::vector<ChainHash> hashes = n.Chain(1, 24);  // 24 MiB into 8 MiB warm + 12 MiB cool
  ASSERT_NO_FATAL_FAILURE(n.PutAll(hashes, 100));
  auto lookup = n.client->Lookup(n.ns, "", hashes);
  ASSERT_THAT(lookup, IsOk());
  EXPECT_EQ(lookup->matched_blocks, hashes.size());
  std::set<client::Tier> tiers;
  for (const auto& b : lookup->blocks) tiers.insert(b.tier);
  EXPECT_TRUE(tiers.count(client::Tier::kWarm)) << "no block stayed warm";
  EXPECT_TRUE(tiers.count(client::Tier::kCool)) << "no block was demoted to cool";
  EXPECT_TRUE(tiers.count(client::Tier::kCold)) << "no block was demoted to cold";
  size_t loss = 0;
  EXPECT_EQ(n.VerifyAll(hashes, 100, &loss), hashes.size());
  EXPECT_EQ(loss, 0u);
  // The moves and the lower tiers' hits are on /metrics too.
  auto metrics = testutil::HttpGet(n.process->http_address(), "/metrics");
  ASSERT_THAT(metrics, IsOk());
  EXPECT_THAT(metrics->second,
              ::testing::ContainsRegex(
                  "strata_tier_moves_total\\{from=\"warm\",to=\"cool\",[^}]*\\} [1-9]"));
  EXPECT_THAT(metrics->second, ::testing::ContainsRegex("strata_tier_hits_total\\{tier=\"cool\""));
  EXPECT_THAT(metrics->second, ::testing::HasSubstr("strata_codec_bytes_total{"));
}

// 8,000 blocks of 64 B, far under every byte budget: with min_block_charge at its default
// (16 KiB) each takes 16 KiB of its tier, so the node keeps at most 512 warm, 768 cool and
// 4,096 cold ones (and as many index entries) and drops the rest; charged only 64 B, it keeps
// all 8,000 warm.
TEST_F(TiersTest, TinyBlocksAreChargedAMinimumSoTheirCountStaysBounded) {
  constexpr size_t kTiny = 64, kCount = 8000, kBatch = 100;
  const std::vector<uint8_t> tiny(kTiny, 7);
  for (const std::string charge : {"", "64B"}) {
    TieredNode n(dir_ + "/charge" + charge);
    ASSERT_NO_FATAL_FAILURE(n.Start(charge.empty()
                                        ? std::vector<std::string>{}
                                        : std::vector<std::string>{"--min-block-charge", charge}));
    const std::vector<ChainHash> hashes = n.Chain(70, kCount);
    for (size_t begin = 0; begin < kCount; begin += kBatch) {
      std::vector<BlockWrite> writes;
      for (size_t i = begin; i < begin + kBatch; ++i)
        writes.push_back({hashes[i], tiny.data(), kTiny});
      auto r = n.client->Put(n.ns, "", writes);
      ASSERT_THAT(r, IsOk());
    }
    // Read at rest: the demoter (every 50 ms) has nothing left to move.
    absl::StatusOr<client::NodeStats> st = n.client->Stats();
    for (int i = 0; i < 100; ++i) {
      absl::SleepFor(absl::Milliseconds(100));
      absl::StatusOr<client::NodeStats> again = n.client->Stats();
      ASSERT_THAT(again, IsOk());
      const bool still = st.ok() && again->warm_blocks == st->warm_blocks &&
                         again->cool_blocks == st->cool_blocks &&
                         again->cold_blocks == st->cold_blocks;
      st = std::move(again);
      if (still) break;
    }
    const uint64_t held = st->warm_blocks + st->cool_blocks + st->cold_blocks;
    if (charge.empty()) {
      // What a disk tier holds against its budget is what /metrics calls used.
      EXPECT_EQ(testutil::Metric(*n.process, "strata_tier_used_bytes", "tier=\"cool\""),
                static_cast<double>(st->cool_blocks << 14));
      EXPECT_LT(st->cool_stored_bytes * 100, st->cool_blocks << 14);
      EXPECT_LE(st->warm_blocks, 512u);
      EXPECT_LE(st->cool_blocks, 768u);
      EXPECT_LE(st->cold_blocks, 4096u);
      EXPECT_GT(st->cold_blocks, 0u);
      EXPECT_LT(held, kCount);
    } else {
      EXPECT_EQ(held, kCount);
    }
  }
}

// The same 24 MiB as above, with a tenant quota on each disk tier (the node runs without
// authentication, so every block is tenant `default`'s): the tenant keeps at most its quota
// on cool and cold, the rest of what leaves the warm tier is dropped, and every block reads
// back exact or NOT_FOUND. Above, without quotas, all 24 stayed.
TEST_F(TiersTest, TenantDiskQuotasBoundWhatATenantKeepsOnDisk) {
  TieredNode n(dir_);
  ASSERT_NO_FATAL_FAILURE(n.Start({"--tenant-cool-quota", "3MiB", "--tenant-cold-quota", "2MiB"}));
  std::vector<ChainHash> hashes = n.Chain(2, 24);
  ASSERT_NO_FATAL_FAILURE(n.PutAll(hashes, 200));
  auto stats = n.client->Stats();
  ASSERT_THAT(stats, IsOk());
  EXPECT_LE(stats->cool_stored_bytes, 3u << 20);
  EXPECT_LE(stats->cold_stored_bytes, 2u << 20);
  EXPECT_GT(stats->evictions, 0u);
  size_t loss = 0;
  size_t missing = 0;
  const size_t exact = n.VerifyAll(hashes, 200, &loss, &missing);  // exact or NOT_FOUND each
  EXPECT_EQ(loss, 0u);
  EXPECT_GE(exact, 6u) << "the warm tier's blocks are gone too";
  EXPECT_LT(exact, hashes.size()) << "the quotas kept nothing out";
}

TEST_F(TiersTest, DiskBlocksSurviveSigtermAndKill9) {
  std::vector<ChainHash> hashes;
  size_t on_disk = 0;
  {
    TieredNode n(dir_);
    ASSERT_NO_FATAL_FAILURE(n.Start());
    hashes = n.Chain(2, 20);
    ASSERT_NO_FATAL_FAILURE(n.PutAll(hashes, 200));
    auto lookup = n.client->Lookup(n.ns, "", hashes);
    ASSERT_THAT(lookup, IsOk());
    for (const auto& b : lookup->blocks) on_disk += b.tier != client::Tier::kWarm ? 1 : 0;
    ASSERT_GT(on_disk, 0u);
    ASSERT_THAT(n.process->Stop(absl::Seconds(30), SIGTERM), IsOk());
  }
  // Restart after SIGTERM, then after kill -9, then check once more (signal 0: no stop).
  for (int signal : {SIGTERM, SIGKILL, 0}) {
    TieredNode n(dir_);
    ASSERT_NO_FATAL_FAILURE(n.Start());
    // Warm blocks are gone with the process; every block that had reached disk is back.
    size_t present = 0, loss = 0;
    std::vector<ChainHash> survivors;
    std::vector<size_t> index;
    for (size_t i = 0; i < hashes.size(); ++i) {
      auto one = n.client->Lookup(n.ns, "", {&hashes[i], 1});
      ASSERT_THAT(one, IsOk());
      if (one->matched_blocks == 1) {
        ++present;
        std::vector<uint8_t> out(kBlock);
        BlockRead read{hashes[i], out.data(), kBlock};
        auto r = n.client->Get(n.ns, "", {&read, 1});
        ASSERT_THAT(r, IsOk());
        EXPECT_THAT(r->blocks[0], IsOk()) << "block " << i;
        EXPECT_EQ(out, testutil::RandomBytes(200 + i, kBlock)) << "block " << i;
        loss += r->blocks[0].code() == absl::StatusCode::kDataLoss;
      }
    }
    EXPECT_GE(present, on_disk) << "after restart by signal " << signal;
    EXPECT_EQ(loss, 0u);
    if (signal != 0) {
      ASSERT_THAT(n.process->Stop(absl::Seconds(30), signal), IsOk());
    }
  }
}

TEST_F(TiersTest, FlippedBytesInRocksDbFilesAreDataLossNeverWrongBytes) {
  std::vector<ChainHash> hashes;
  {
    TieredNode n(dir_);
    ASSERT_NO_FATAL_FAILURE(n.Start({"--promote-on-get=false"}));
    hashes = n.Chain(3, 20);
    ASSERT_NO_FATAL_FAILURE(n.PutAll(hashes, 300));
    ASSERT_THAT(n.process->Stop(absl::Seconds(30), SIGTERM), IsOk());
  }
  // Flip one byte in the middle of every blob file (block payloads live there).
  size_t flipped = 0;
  for (const auto& e : std::filesystem::recursive_directory_iterator(dir_)) {
    if (e.path().extension() != ".blob" || e.file_size() < 4 * kBlock) continue;
    std::fstream f(e.path(), std::ios::in | std::ios::out | std::ios::binary);
    for (uint64_t off = kBlock; off + 64 < e.file_size(); off += 3 * kBlock) {
      f.seekg(off);
      char c = 0;
      f.read(&c, 1);
      c ^= 0x5a;
      f.seekp(off);
      f.write(&c, 1);
      ++flipped;
    }
  }
  ASSERT_GT(flipped, 0u) << "no blob files found under " << dir_;
  TieredNode n(dir_);
  ASSERT_NO_FATAL_FAILURE(n.Start({"--promote-on-get=false"}));
  size_t loss = 0;
  size_t ok = 0;
  for (size_t i = 0; i < hashes.size(); ++i) {
    auto one = n.client->Lookup(n.ns, "", {&hashes[i], 1});
    ASSERT_THAT(one, IsOk());
    if (one->matched_blocks == 0) continue;
    std::vector<uint8_t> out(kBlock, 0xee);
    BlockRead read{hashes[i], out.data(), kBlock};
    auto r = n.client->Get(n.ns, "", {&read, 1});
    ASSERT_THAT(r, IsOk());
    if (r->blocks[0].ok()) {
      EXPECT_EQ(out, testutil::RandomBytes(300 + i, kBlock)) << "wrong bytes for block " << i;
      ++ok;
    } else {
      EXPECT_THAT(r->blocks[0], StatusIs(absl::StatusCode::kDataLoss));
      EXPECT_EQ(out, std::vector<uint8_t>(kBlock, 0xee));
      ++loss;
    }
  }
  EXPECT_GT(loss, 0u) << "no flipped block was detected";
  EXPECT_GT(ok, 0u);
  auto stats = n.client->Stats();
  ASSERT_THAT(stats, IsOk());
  EXPECT_GE(stats->data_loss, loss);
  // A dropped block is a miss afterwards, and the node still serves.
  EXPECT_THAT(n.client->Stats(), IsOk());
}

// Tier of each block of `hashes` as Lookup reports it (kUnknown past the matched prefix).
std::vector<client::Tier> Tiers(TieredNode& n, const std::vector<ChainHash>& hashes) {
  std::vector<client::Tier> out(hashes.size(), client::Tier::kUnknown);
  for (size_t i = 0; i < hashes.size(); ++i) {
    auto r = n.client->Lookup(n.ns, "", {&hashes[i], 1});
    if (r.ok() && r->matched_blocks == 1) out[i] = r->blocks[0].tier;
  }
  return out;
}

size_t Count(const std::vector<client::Tier>& tiers, client::Tier t) {
  return std::count(tiers.begin(), tiers.end(), t);
}

TEST_F(TiersTest, PauseAndResumeSessionMoveItsBlocksBetweenTiers) {
  TieredNode n(dir_);
  ASSERT_NO_FATAL_FAILURE(n.Start());
  std::vector<ChainHash> chat = n.Chain(4, 3);
  std::vector<ChainHash> other = n.Chain(5, 2);
  ASSERT_NO_FATAL_FAILURE(n.PutAll(chat, 400, {.session_id = "chat-42"}));
  ASSERT_NO_FATAL_FAILURE(n.PutAll(other, 500));
  ASSERT_EQ(Count(Tiers(n, chat), client::Tier::kWarm), 3u);

  auto moved = n.client->PauseSession("chat-42", false);
  ASSERT_THAT(moved, IsOk());
  EXPECT_EQ(*moved, 3u);
  EXPECT_EQ(Count(Tiers(n, chat), client::Tier::kCool), 3u);
  EXPECT_EQ(Count(Tiers(n, other), client::Tier::kWarm), 2u) << "another session's blocks moved";

  auto colder = n.client->PauseSession("chat-42", true);
  ASSERT_THAT(colder, IsOk());
  EXPECT_EQ(Count(Tiers(n, chat), client::Tier::kCold), 3u);

  auto back = n.client->ResumeSession("chat-42");
  ASSERT_THAT(back, IsOk());
  EXPECT_EQ(*back, 3u);
  EXPECT_EQ(Count(Tiers(n, chat), client::Tier::kWarm), 3u);
  size_t loss = 0;
  EXPECT_EQ(n.VerifyAll(chat, 400, &loss), 3u);
  EXPECT_THAT(n.client->PauseSession("", false), StatusIs(absl::StatusCode::kInvalidArgument));
}

// A session move holds its blocks' read and encode buffers (two blocks) against
// max_inflight_bytes: with 1.5 MiB and 1 MiB blocks a pause and a resume are
// RESOURCE_EXHAUSTED and leave the blocks where they were. Before the sixth session of
// 2026-11-29 those buffers were outside every budget (up to max_concurrent_calls x 2 blocks).
TEST_F(TiersTest, SessionMovesAreHeldAgainstInflightBytes) {
  TieredNode n(dir_);
  ASSERT_NO_FATAL_FAILURE(
      n.Start({"--max-inline-bytes", "1MiB", "--max-inflight-bytes", "1536KiB"}));
  // 12 blocks of one session through an 8 MiB warm tier: the first ones spill to disk.
  std::vector<ChainHash> chat = n.Chain(14, 12);
  ASSERT_NO_FATAL_FAILURE(n.PutAll(chat, 1400, {.session_id = "held"}, /*batch=*/1));
  const std::vector<client::Tier> before = Tiers(n, chat);
  ASSERT_GT(Count(before, client::Tier::kWarm), 0u);
  ASSERT_LT(Count(before, client::Tier::kWarm), chat.size());
  EXPECT_THAT(
      n.client->PauseSession("held", false),
      StatusIs(absl::StatusCode::kResourceExhausted, ::testing::HasSubstr("max_inflight_bytes")));
  EXPECT_THAT(
      n.client->ResumeSession("held"),
      StatusIs(absl::StatusCode::kResourceExhausted, ::testing::HasSubstr("max_inflight_bytes")));
  EXPECT_EQ(Tiers(n, chat), before) << "a refused move moved blocks";
  size_t loss = 0;
  EXPECT_EQ(n.VerifyAll(chat, 1400, &loss), chat.size());
}

// A namespace that opts into int8 offload stores its demoted blocks at about half size and
// reads them back close to (not equal to) what was written; a namespace beside it that did not
// opt in reads back bit-exact. Both stay readable after promotion back to warm.
TEST_F(TiersTest, QuantizedOffloadIsOptInPerNamespace) {
  TieredNode n(dir_);
  ASSERT_NO_FATAL_FAILURE(n.Start());
  NamespaceSpec spec;
  spec.model_id = "quant-test";
  spec.dtype = "fp16";
  spec.layout = "[T,H,D]";
  spec.block_bytes = kBlock;
  spec.offload_quant = "int8";
  spec.head_dim = 128;
  auto quant_ns = n.client->RegisterNamespace(spec);
  ASSERT_THAT(quant_ns, IsOk());
  spec.offload_quant = "none";
  spec.model_id = "exact-test";
  auto exact_ns = n.client->RegisterNamespace(spec);
  ASSERT_THAT(exact_ns, IsOk());
  spec.offload_quant = "fp8-e4m3";  // a second writer may not change what the first chose
  EXPECT_THAT(n.client->RegisterNamespace(spec),
              StatusIs(absl::StatusCode::kFailedPrecondition, testing::HasSubstr("offload_quant")));

  const std::vector<uint8_t> kv = testutil::SyntheticKv(KvDtype::kFp16, 128, kBlock / 256, 11);
  uint64_t stored_before = 0;
  for (client::Namespace* ns : {&*quant_ns, &*exact_ns}) {
    const bool lossy = ns == &*quant_ns;
    SCOPED_TRACE(lossy ? "int8 namespace" : "lossless namespace");
    std::vector<uint32_t> tokens(16, lossy ? 1 : 2);
    std::vector<ChainHash> hash = *ns->HashTokens(tokens);
    BlockWrite write{hash[0], kv.data(), kBlock};
    auto put = n.client->Put(*ns, "", {&write, 1}, {}, {.session_id = lossy ? "q" : "e"});
    ASSERT_THAT(put, IsOk());
    ASSERT_THAT(put->blocks[0], IsOk());
    ASSERT_THAT(n.client->PauseSession(lossy ? "q" : "e", false), IsOk());
    auto stats = n.client->Stats();
    ASSERT_THAT(stats, IsOk());
    const uint64_t stored = stats->cool_stored_bytes - stored_before;
    stored_before = stats->cool_stored_bytes;
    if (lossy) {
      EXPECT_LT(stored, kBlock * 6 / 10);
    } else {
      EXPECT_GE(stored, kBlock);
    }
    for (int round = 0; round < 2; ++round) {  // from cool, then from warm after promotion
      std::vector<uint8_t> out(kBlock);
      BlockRead read{hash[0], out.data(), kBlock};
      auto got = n.client->Get(*ns, "", {&read, 1});
      ASSERT_THAT(got, IsOk());
      ASSERT_THAT(got->blocks[0], IsOk());
      if (!lossy) {
        EXPECT_EQ(out, kv);
        continue;
      }
      EXPECT_NE(out, kv);
      auto err = MeasureQuantError(kv, out, KvDtype::kFp16, 128);
      ASSERT_THAT(err, IsOk());
      EXPECT_GT(err->min_vector_cosine, 0.999);
      EXPECT_LT(err->max_relative_error, 0.01);
    }
  }
}

// A client that reads a cool block once asks the node not to promote it: the bytes come back
// exact and the block stays cool; a default read brings it back to warm.
TEST_F(TiersTest, ReadsMayLeaveColdBlocksWhereTheyAre) {
  TieredNode n(dir_);
  ASSERT_NO_FATAL_FAILURE(n.Start());
  std::vector<ChainHash> chat = n.Chain(9, 2);
  ASSERT_NO_FATAL_FAILURE(n.PutAll(chat, 900, {.session_id = "one-off"}));
  ASSERT_THAT(n.client->PauseSession("one-off", false), IsOk());
  ASSERT_EQ(Count(Tiers(n, chat), client::Tier::kCool), 2u);
  std::vector<uint8_t> out(kBlock);
  BlockRead read{chat[0], out.data(), kBlock};
  auto once = n.client->Get(n.ns, "", {&read, 1}, {}, {.promote = false});
  ASSERT_THAT(once, IsOk());
  ASSERT_THAT(once->blocks[0], IsOk());
  EXPECT_EQ(out, testutil::RandomBytes(900, kBlock));
  EXPECT_EQ(Count(Tiers(n, chat), client::Tier::kCool), 2u) << "promoted despite promote=false";
  std::fill(out.begin(), out.end(), 0);
  auto again = n.client->Get(n.ns, "", {&read, 1});
  ASSERT_THAT(again, IsOk());
  ASSERT_THAT(again->blocks[0], IsOk());
  EXPECT_EQ(out, testutil::RandomBytes(900, kBlock));
  EXPECT_EQ(Tiers(n, chat)[0], client::Tier::kWarm);
}

TEST_F(TiersTest, IdleSessionsDemoteOnTheirOwn) {
  TieredNode n(dir_);
  ASSERT_NO_FATAL_FAILURE(n.Start({"--session-idle", "300ms"}));
  std::vector<ChainHash> chat = n.Chain(6, 2);
  std::vector<ChainHash> plain = n.Chain(7, 2);
  ASSERT_NO_FATAL_FAILURE(n.PutAll(chat, 600, {.session_id = "idle-chat"}));
  ASSERT_NO_FATAL_FAILURE(n.PutAll(plain, 700));
  for (int i = 0; i < 150 && Count(Tiers(n, chat), client::Tier::kCool) < 2; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));  // bounded: 3 s
  }
  EXPECT_EQ(Count(Tiers(n, chat), client::Tier::kCool), 2u);
  EXPECT_EQ(Count(Tiers(n, plain), client::Tier::kWarm), 2u) << "blocks without a session moved";
}

TEST_F(TiersTest, PrefetchPromotesAheadOfNeedAndCountsUse) {
  TieredNode n(dir_);
  ASSERT_NO_FATAL_FAILURE(n.Start({"--promote-on-get=false"}));
  std::vector<ChainHash> chat = n.Chain(8, 3);
  ASSERT_NO_FATAL_FAILURE(n.PutAll(chat, 800, {.session_id = "typing"}));
  ASSERT_THAT(n.client->PauseSession("typing", false), IsOk());
  ASSERT_EQ(Count(Tiers(n, chat), client::Tier::kCool), 3u);

  auto scheduled = n.client->Prefetch(n.ns, "", chat);
  ASSERT_THAT(scheduled, IsOk());
  EXPECT_EQ(*scheduled, 3u);
  for (int i = 0; i < 150 && Count(Tiers(n, chat), client::Tier::kWarm) < 3; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));  // bounded: 3 s
  }
  EXPECT_EQ(Count(Tiers(n, chat), client::Tier::kWarm), 3u);
  size_t loss = 0;
  EXPECT_EQ(n.VerifyAll({chat[0], chat[1]}, 800, &loss), 2u);
  auto stats = n.client->Stats();
  ASSERT_THAT(stats, IsOk());
  EXPECT_EQ(stats->prefetched, 3u);
  EXPECT_EQ(stats->prefetch_used, 2u);
  // A block only on disk in another scope is not scheduled.
  EXPECT_EQ(*n.client->Prefetch(n.ns, "someone-else", chat), 0u);
}

// A BeginGet whose caller gave up while the node read its disk blocks (a 5 ms deadline, a warm
// block and 16 disk ones) releases the lease it would have handed out: with max_leases 1, the
// next reader gets a lease at once. Before, the lease held its warm block and the node's one
// lease place for its whole ttl (60 s here), and every other reader was RESOURCE_EXHAUSTED.
TEST_F(TiersTest, ALeaseItsCallerNeverReceivedIsReleased) {
  TieredNode n(dir_);
  ASSERT_NO_FATAL_FAILURE(n.Start({"--max-leases", "1"}));
  std::vector<ChainHash> chain = n.Chain(12, 24);
  ASSERT_NO_FATAL_FAILURE(n.PutAll(chain, 1200));
  const std::vector<client::Tier> tiers = Tiers(n, chain);
  std::vector<ChainHash> warm, disk;
  for (size_t i = 0; i < chain.size(); ++i) {
    (tiers[i] == client::Tier::kWarm ? warm : disk).push_back(chain[i]);
  }
  ASSERT_FALSE(warm.empty());
  ASSERT_GE(disk.size(), 16u);
  auto stub = v1::StoreService::NewStub(
      grpc::CreateChannel(n.process->address(), grpc::InsecureChannelCredentials()));
  auto begin_get = [&](const std::vector<ChainHash>& hashes, std::chrono::milliseconds within,
                       v1::BeginGetResponse* resp) {
    v1::BeginGetRequest req;
    req.set_namespace_id(n.ns.id);
    for (const ChainHash& h : hashes) req.add_chain_hashes(h.ToBytes());
    req.set_lease_ms(60000);
    req.set_skip_promotion(true);  // the disk blocks are read, and stay where they are
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + within);
    return stub->BeginGet(&ctx, req, resp);
  };
  v1::StatsResponse stats;  // the channel connected before the timed calls
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub->Stats(&ctx, v1::StatsRequest(), &stats).ok());
  }
  std::vector<ChainHash> slow = {warm[0]};
  slow.insert(slow.end(), disk.begin(), disk.end());
  // A call the node ran to its end after its caller gave up (on a busy machine a try may
  // reach the node too late to run, or finish in time: then it is tried again).
  bool outlived = false;
  for (int attempt = 0; attempt < 5 && !outlived; ++attempt) {
    const uint64_t calls = testutil::OpCount(*n.process, "begin_get");
    v1::BeginGetResponse got;
    const grpc::Status s = begin_get(slow, std::chrono::milliseconds(5), &got);
    if (s.ok()) {  // in time: its lease is the caller's, and ends here
      v1::EndGetRequest end;
      end.set_lease_id(got.lease_id());
      v1::EndGetResponse ended;
      grpc::ClientContext ctx;
      stub->EndGet(&ctx, end, &ended);
      continue;
    }
    ASSERT_EQ(s.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << s.error_message();
    for (int i = 0; i < 300 && testutil::OpCount(*n.process, "begin_get") == calls; ++i) {
      absl::SleepFor(absl::Milliseconds(10));  // bounded: 3 s
    }
    outlived = testutil::OpCount(*n.process, "begin_get") > calls;
  }
  ASSERT_TRUE(outlived) << "no call outlived its caller's deadline on the node";
  // The node's one lease place is free: the next reader gets a lease.
  v1::BeginGetResponse next;
  grpc::Status s = begin_get({warm[0]}, std::chrono::seconds(10), &next);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_NE(next.lease_id(), 0u);
}

// A BeginGet without payload reads its disk blocks into buffers of their own (the stored value
// and the block), held against max_inflight_bytes: here 1.5 MiB, less than the 2 MiB a 1 MiB
// block's read needs, so a BeginGet's disk blocks are RESOURCE_EXHAUSTED while its warm block is
// served. Before 2026-11-29 such reads were outside every budget: 256 calls of 4096 disk blocks
// read 8 GiB at once whatever max_inflight_bytes said. A Get that stages the blocks in DRAM (one
// block's buffer) still reads them.
TEST_F(TiersTest, DiskReadsAreHeldAgainstInflightBytes) {
  TieredNode n(dir_);
  ASSERT_NO_FATAL_FAILURE(
      n.Start({"--max-inline-bytes", "1MiB", "--max-inflight-bytes", "1536KiB"}));
  std::vector<ChainHash> chain = n.Chain(13, 12);
  ASSERT_NO_FATAL_FAILURE(n.PutAll(chain, 1300, {}, /*batch=*/1));
  const std::vector<client::Tier> tiers = Tiers(n, chain);
  std::vector<size_t> warm, disk;
  for (size_t i = 0; i < chain.size(); ++i) {
    (tiers[i] == client::Tier::kWarm ? warm : disk).push_back(i);
  }
  ASSERT_FALSE(warm.empty());
  ASSERT_FALSE(disk.empty());
  auto stub = v1::StoreService::NewStub(
      grpc::CreateChannel(n.process->address(), grpc::InsecureChannelCredentials()));
  v1::BeginGetRequest req;
  req.set_namespace_id(n.ns.id);
  req.set_skip_promotion(true);
  req.add_chain_hashes(chain[warm[0]].ToBytes());
  req.add_chain_hashes(chain[disk[0]].ToBytes());
  v1::BeginGetResponse resp;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  grpc::Status s = stub->BeginGet(&ctx, req, &resp);
  ASSERT_TRUE(s.ok()) << s.error_message();
  ASSERT_EQ(resp.blocks_size(), 2);
  EXPECT_EQ(resp.blocks(0).status().code(), static_cast<int>(absl::StatusCode::kOk));
  EXPECT_EQ(resp.blocks(1).status().code(), static_cast<int>(absl::StatusCode::kResourceExhausted));
  EXPECT_THAT(resp.blocks(1).status().message(), ::testing::HasSubstr("max_inflight_bytes"));
  if (resp.lease_id() != 0) {
    v1::EndGetRequest end;
    end.set_lease_id(resp.lease_id());
    v1::EndGetResponse ended;
    grpc::ClientContext end_ctx;
    stub->EndGet(&end_ctx, end, &ended);
  }
  std::vector<uint8_t> out(kBlock);
  BlockRead read{chain[disk[0]], out.data(), kBlock};
  auto got = n.client->Get(n.ns, "", {&read, 1});
  ASSERT_THAT(got, IsOk());
  ASSERT_THAT(got->blocks[0], IsOk());
  EXPECT_EQ(out, testutil::RandomBytes(1300 + disk[0], kBlock));
}

}  // namespace
}  // namespace strata
