// What the single-node client does with awkward input of its own: refused with the field
// named, never a crash and never a call that fails for a reason the caller did not give.
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "strata/client/store_client.h"
#include "strata/common/checksum.h"
#include "strata/testutil/node_process.h"
#include "strata/testutil/prompts.h"
#include "strata/testutil/status_matchers.h"

namespace strata {
namespace {

using client::BlockRead;
using client::BlockWrite;
using client::CallOptions;
using client::ClientOptions;
using client::StoreClient;
using ::testing::HasSubstr;
using testutil::IsOk;
using testutil::StatusIs;

// A node with a 64 MiB warm tier, a client of it, and namespace `model` of 4 KiB blocks.
struct Connected {
  std::unique_ptr<client::LocalNode> node;
  std::unique_ptr<StoreClient> client;
  client::Namespace ns;
};
void ConnectNew(const std::string& model, Connected* out) {
  auto node = testutil::StartNode({"--warm-bytes", "64MiB"});
  ASSERT_THAT(node, IsOk());
  out->node = *std::move(node);
  auto client = StoreClient::Connect({.address = out->node->address()});
  ASSERT_THAT(client, IsOk());
  out->client = *std::move(client);
  auto ns = out->client->RegisterNamespace(testutil::RawSpec(model, 4096));
  ASSERT_THAT(ns, IsOk());
  out->ns = *ns;
}

TEST(ClientInputTest, NullBuffersAreRefusedAndAnInfiniteDeadlineIsNone) {
  Connected c;
  ASSERT_NO_FATAL_FAILURE(ConnectNew("client-input", &c));
  const std::vector<ChainHash> chain = testutil::PromptChain(c.ns, 3, 2);
  std::vector<uint8_t> block = testutil::RandomBytes(3, 4096);
  // A null read buffer with room claimed: INVALID_ARGUMENT naming it (before: a crash in the
  // copy of the inline reply).
  BlockWrite w{chain[0], block.data(), block.size()};
  ASSERT_THAT(c.client->Put(c.ns, "", {&w, 1}), IsOk());
  std::vector<uint8_t> out(4096);
  std::vector<BlockRead> reads = {{chain[0], out.data(), out.size()}, {chain[1], nullptr, 4096}};
  EXPECT_THAT(c.client->Get(c.ns, "", reads),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("blocks[1].buffer")));
  // No deadline at all (infinite): the calls run (before: the deadline overflowed into the
  // past and every call was DEADLINE_EXCEEDED at once).
  const CallOptions forever{absl::InfiniteDuration()};
  EXPECT_THAT(c.client->Stats(forever), IsOk());
  auto got = c.client->Get(c.ns, "", {reads.data(), 1}, forever);
  ASSERT_THAT(got, IsOk());
  EXPECT_THAT(got->blocks[0], IsOk());
  EXPECT_EQ(out, block);
}

// Reads whose buffers overlap are refused before any transfer: each would be verified where it
// landed and then overwritten by the other, a block reported OK holding another's bytes.
TEST(ClientInputTest, OverlappingReadBuffersAreRefused) {
  Connected c;
  ASSERT_NO_FATAL_FAILURE(ConnectNew("client-overlap", &c));
  const std::vector<ChainHash> chain = testutil::PromptChain(c.ns, 4, 2);
  std::vector<std::vector<uint8_t>> data;
  std::vector<BlockWrite> writes;
  for (size_t i = 0; i < chain.size(); ++i) {
    data.push_back(testutil::RandomBytes(40 + i, 4096));
    writes.push_back({chain[i], data[i].data(), 4096});
  }
  ASSERT_THAT(c.client->Put(c.ns, "", writes), IsOk());
  std::vector<uint8_t> out(3 * 4096);
  // Side by side: both read.
  std::vector<BlockRead> reads = {{chain[1], out.data() + 4096, 4096},
                                  {chain[0], out.data(), 4096}};
  auto got = c.client->Get(c.ns, "", reads);
  ASSERT_THAT(got, IsOk());
  ASSERT_THAT(got->blocks[0], IsOk());
  ASSERT_THAT(got->blocks[1], IsOk());
  EXPECT_TRUE(std::equal(data[1].begin(), data[1].end(), out.begin() + 4096));
  EXPECT_EQ(got->checksums[0], BlockChecksum(data[1].data(), 4096));
  EXPECT_FALSE(got->may_land_late);
  // One byte into the next: refused, naming both.
  reads[0].buffer = out.data() + 4095;
  EXPECT_THAT(c.client->Get(c.ns, "", reads),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("blocks[0].buffer, blocks[1].buffer: overlap")));
  reads[0].buffer = out.data();
  EXPECT_THAT(c.client->Get(c.ns, "", reads),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("overlap")));
}

// A write that names the checksum its bytes were verified against (read-repair does) and whose
// bytes differ from it is refused DATA_LOSS and not stored, on every way a put travels; the
// other block of the call, its checksum right, is stored.
TEST(ClientInputTest, AWriteWhoseBytesDifferFromItsGivenChecksumIsNotStored) {
  auto node = testutil::StartNode({"--warm-bytes", "64MiB", "--ucx-tls", "tcp"});
  ASSERT_THAT(node, IsOk());
  struct Way {
    const char* name;
    ClientOptions::DataPlane plane;
    uint64_t one_call_bytes;
    bool two_sided;
    uint64_t trailing_bytes;
  };
  const Way ways[] = {{"inline, two calls", ClientOptions::DataPlane::kInline, 0, false, 0},
                      {"inline, one call", ClientOptions::DataPlane::kInline, 1 << 20, false, 0},
                      {"ucx rma", ClientOptions::DataPlane::kUcx, 0, false, 0},
                      {"ucx tagged", ClientOptions::DataPlane::kUcx, 0, true, 0},
                      {"ucx tagged, trailing", ClientOptions::DataPlane::kUcx, 0, true, 1}};
  uint32_t prompt = 50;
  for (const Way& way : ways) {
    SCOPED_TRACE(way.name);
    ClientOptions o{.address = (*node)->address()};
    o.data_plane = way.plane;
    o.ucx_min_block_bytes = 0;
    o.one_call_put_bytes = way.one_call_bytes;
    o.ucx_two_sided_on_tcp = way.two_sided;
    o.ucx_trailing_checksum_bytes = way.trailing_bytes;
    auto client = StoreClient::Connect(o);
    ASSERT_THAT(client, IsOk());
    auto ns = (*client)->RegisterNamespace(testutil::RawSpec("client-sum", 64 << 10));
    ASSERT_THAT(ns, IsOk());
    const std::vector<ChainHash> chain = testutil::PromptChain(*ns, prompt++, 2);
    std::vector<uint8_t> a = testutil::RandomBytes(prompt, 64 << 10);
    std::vector<uint8_t> b = testutil::RandomBytes(prompt + 100, 64 << 10);
    std::vector<BlockWrite> w = {{chain[0], a.data(), a.size()}, {chain[1], b.data(), b.size()}};
    w[0].checksum = BlockChecksum(a.data(), a.size());
    w[1].checksum = BlockChecksum(b.data(), b.size()) ^ 1;  // b changed after its check
    auto put = (*client)->Put(*ns, "", w);
    ASSERT_THAT(put, IsOk());
    EXPECT_THAT(put->blocks[0], IsOk());
    EXPECT_THAT(put->blocks[1], StatusIs(absl::StatusCode::kDataLoss));
    auto where = (*client)->LookupEach(*ns, "", chain);
    ASSERT_THAT(where, IsOk());
    EXPECT_NE((*where)[0].tier, client::Tier::kUnknown);
    EXPECT_EQ((*where)[1].tier, client::Tier::kUnknown);
  }
}

}  // namespace
}  // namespace strata
