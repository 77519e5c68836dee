// Where a prefix lookup stops: at the first block that no tier and no agent's GPU memory holds.
// Blocks past that gap are not part of the answer, so they are neither counted as hits nor
// made recent (eviction goes by recency), however the prefix got to the gap.
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "strata/client/store_client.h"
#include "strata/testutil/node_process.h"
#include "strata/testutil/prompts.h"
#include "strata/testutil/status_matchers.h"

namespace strata {
namespace {

using client::BlockWrite;
using client::StoreClient;
using client::Tier;
using testutil::IsOk;

constexpr uint64_t kBlock = 4096;

// Hits the node has counted so far (Stats).
uint64_t Hits(StoreClient& c) {
  auto s = c.Stats();
  EXPECT_THAT(s, IsOk());
  return s.ok() ? s->hits : 0;
}

void PutOne(StoreClient& c, const client::Namespace& ns, std::string_view scope,
            const ChainHash& hash) {
  std::vector<uint8_t> block = testutil::RandomBytes(hash.bytes[0], kBlock);
  BlockWrite w{hash, block.data(), block.size()};
  ASSERT_THAT(c.Put(ns, scope, {&w, 1}), IsOk());
}

// Blocks 0-3 stored, 4 only in an agent's GPU memory, 5 nowhere, 6-7 stored: the prefix is 5
// blocks and 4 of them are hits. Before 2026-11-29 any directory entry made the node look up
// every block on its own: 6 hits, 6 and 7 made recent. Then the same with `shared` consulted
// first, the prefix going from shared to the tenant's scope and on through a GPU.
TEST(LookupPrefixTest, BlocksPastTheFirstGapAreNotCounted) {
  auto node = testutil::StartNode({"--warm-bytes", "64MiB"});
  ASSERT_THAT(node, IsOk());
  auto connected = StoreClient::Connect({.address = (*node)->address()});
  ASSERT_THAT(connected, IsOk());
  StoreClient& c = **connected;
  auto ns = c.RegisterNamespace(testutil::RawSpec("lookup-prefix", kBlock));
  ASSERT_THAT(ns, IsOk());
  const client::PeerLocation gpu{"agent@127.0.0.1:9", "t"};
  const std::vector<uint64_t> size{kBlock};

  const std::vector<ChainHash> chain = testutil::PromptChain(*ns, 1, 8);
  for (int i : {0, 1, 2, 3, 6, 7}) PutOne(c, *ns, "", chain[i]);
  ASSERT_THAT(c.Publish(*ns, "", {&chain[4], 1}, size, gpu, absl::Minutes(5)), IsOk());
  uint64_t before = Hits(c);
  auto r = c.Lookup(*ns, "", chain);
  ASSERT_THAT(r, IsOk());
  EXPECT_EQ(r->matched_blocks, 5u);
  ASSERT_EQ(r->blocks.size(), 5u);
  EXPECT_EQ(r->blocks[4].tier, Tier::kHot);
  EXPECT_EQ(Hits(c) - before, 4u);
  // Block by block, the blocks past the gap are found (and counted).
  before = Hits(c);
  auto each = c.LookupEach(*ns, "", chain);
  ASSERT_THAT(each, IsOk());
  EXPECT_EQ((*each)[6].tier, Tier::kWarm);
  EXPECT_EQ(Hits(c) - before, 6u);

  // Tenant scope "t" reads `shared` first: block 0 in shared, 1 in t, 2 in a GPU (t), 3
  // nowhere, 4 in shared, 5 in t.
  const std::vector<ChainHash> mixed = testutil::PromptChain(*ns, 2, 6);
  PutOne(c, *ns, "shared", mixed[0]);
  PutOne(c, *ns, "t", mixed[1]);
  PutOne(c, *ns, "shared", mixed[4]);
  PutOne(c, *ns, "t", mixed[5]);
  ASSERT_THAT(c.Publish(*ns, "t", {&mixed[2], 1}, size, gpu, absl::Minutes(5)), IsOk());
  before = Hits(c);
  r = c.Lookup(*ns, "t", mixed);
  ASSERT_THAT(r, IsOk());
  EXPECT_EQ(r->matched_blocks, 3u);
  EXPECT_EQ(Hits(c) - before, 2u);
  // Without the GPU's block the prefix is the first two, from both scopes.
  ASSERT_THAT(c.Publish(*ns, "t", {&mixed[2], 1}, {}, gpu, absl::ZeroDuration()), IsOk());
  before = Hits(c);
  r = c.Lookup(*ns, "t", mixed);
  ASSERT_THAT(r, IsOk());
  EXPECT_EQ(r->matched_blocks, 2u);
  EXPECT_EQ(Hits(c) - before, 2u);
}

}  // namespace
}  // namespace strata
