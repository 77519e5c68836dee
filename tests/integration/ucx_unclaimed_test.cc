// Two-sided PutData at the node, driven by hand against real strata-storenode processes over
// UCX_TLS=tcp. Messages no call claims (docs/design/transfer-protocol.md, "Messages no call
// claims"): dropped when their channel closes, when their PutData is refused, or with their
// channel once unclaimed for the timeout. Large blocks checked as they land ("Verifying puts
// as they land"): a corrupt or short one is DATA_LOSS, its neighbours are stored. Checksums
// sent after the blocks ("Checksums after the blocks"), and a node that does not take them.
#include <chrono>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "strata/client/local_node.h"
#include "strata/client/store_client.h"
#include "strata/common/checksum.h"
#include "strata/testutil/node_process.h"
#include "strata/testutil/prompts.h"
#include "strata/testutil/status_matchers.h"
#include "strata/transport/worker.h"
#include "strata/v1/store.grpc.pb.h"
#include "ucx_test_support.h"

namespace strata {
namespace {

using client::BlockRead;
using client::BlockWrite;
using client::ClientOptions;
using client::LocalNode;
using client::StoreClient;
using testutil::IsOk;
using ucx_test::CloseRawChannel;
using ucx_test::MetricValue;
using ucx_test::OpenRawChannel;
using ucx_test::RawChannel;
using ucx_test::RawStub;
using ucx_test::Spec;

constexpr char kDroppedMetric[] = "strata_ucx_unclaimed_messages_dropped_total";
constexpr char kCheckedMetric[] = "strata_ucx_put_blocks_checked_on_landing_total";
constexpr char kTrailingMetric[] = "strata_ucx_puts_with_trailing_checksums_total";

// A client of `node` on data plane `plane`, with the tests' namespace registered.
void ConnectWithNamespace(const LocalNode& node, ClientOptions::DataPlane plane,
                          std::unique_ptr<StoreClient>* client, client::Namespace* ns) {
  ClientOptions o;
  o.address = node.address();
  o.data_plane = plane;
  auto c = StoreClient::Connect(o);
  ASSERT_THAT(c, IsOk());
  auto registered = (*c)->RegisterNamespace(Spec());
  ASSERT_THAT(registered, IsOk());
  *client = std::move(*c);
  *ns = *registered;
}

// A node over UCX_TLS=tcp, a raw stub and data channel to it, and an inline client with the
// tests' namespace.
struct RawTcpNode {
  std::unique_ptr<LocalNode> node;
  std::unique_ptr<v1::StoreService::Stub> stub;
  std::unique_ptr<StoreClient> client;
  client::Namespace ns;
  RawChannel channel;
};

void StartRawTcpNode(RawTcpNode* out) {
  auto p = testutil::StartNode({"--warm-bytes", "64MiB", "--ucx-tls", "tcp"});
  ASSERT_THAT(p, IsOk());
  out->node = std::move(*p);
  out->stub = RawStub(out->node->address());
  ASSERT_NO_FATAL_FAILURE(
      ConnectWithNamespace(*out->node, ClientOptions::DataPlane::kInline, &out->client, &out->ns));
  ASSERT_NO_FATAL_FAILURE(OpenRawChannel(*out->stub, &out->channel));
}

// A two-sided PutData on channel c: block i of `size` bytes under hashes[i], with checksums[i],
// tagged c.Tag(i + 1).
v1::PutDataRequest TaggedPut(const RawChannel& c, const client::Namespace& ns,
                             const std::vector<ChainHash>& hashes, uint64_t size,
                             const std::vector<uint64_t>& checksums) {
  v1::PutDataRequest req;
  req.set_channel_id(c.channel.channel_id());
  req.set_namespace_id(ns.id);
  for (size_t i = 0; i < hashes.size(); ++i) {
    v1::PutBlock* b = req.add_blocks();
    b->set_chain_hash(hashes[i].ToBytes());
    b->set_size(size);
    req.add_checksums(checksums[i]);
    req.add_tags(c.Tag(static_cast<uint32_t>(i + 1)));
  }
  return req;
}

// PutData `req` on `stub` while channel c's first lane sends `sends` (10 s for both); the
// sends' outcome in *sent.
grpc::Status PutWhileSending(v1::StoreService::Stub& stub, const RawChannel& c,
                             const v1::PutDataRequest& req,
                             const std::vector<transport::TransferOp>& sends,
                             v1::PutDataResponse* resp, absl::Status* sent) {
  std::thread sender([&] {
    *sent = c.workers[0]->Transfer(c.endpoints[0], sends, absl::Now() + absl::Seconds(10));
  });
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  const grpc::Status called = stub.PutData(&ctx, req, resp);
  sender.join();
  return called;
}

// Resident memory of process `pid` in bytes (VmRSS), 0 if unreadable.
uint64_t ResidentBytes(pid_t pid) {
  std::ifstream status(absl::StrCat("/proc/", pid, "/status"));
  std::string text;
  while (std::getline(status, text)) {
    absl::string_view line = text;
    uint64_t kib = 0;
    if (absl::ConsumePrefix(&line, "VmRSS:") &&
        absl::SimpleAtoi(absl::StripSuffix(absl::StripAsciiWhitespace(line), " kB"), &kib)) {
      return kib << 10;
    }
  }
  return 0;
}

// A client's two-sided messages that no call claims (its PutData refused or lost, or never
// made) wait in UCX's unexpected queue with their bytes, which UCX would keep for as long as
// the node runs. They are dropped when their channel closes, and a channel whose oldest
// message stays unclaimed for ucx_unclaimed_timeout_ms is closed; ordinary traffic is
// untouched.
TEST(UcxConfigTest, MessagesNoCallClaimsAreDroppedNotKeptForever) {
  auto p = testutil::StartNode(
      {"--warm-bytes", "64MiB", "--ucx-tls", "tcp", "--ucx-unclaimed-timeout-ms", "1500"});
  ASSERT_THAT(p, IsOk());
  const LocalNode& node = **p;
  auto stub = RawStub(node.address());
  auto dropped_reaches = [&](double want) {
    for (int i = 0; i < 200 && MetricValue(node, kDroppedMetric) < want; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return MetricValue(node, kDroppedMetric);
  };
  // 60,000-byte messages go eagerly over tcp: their bytes travel before any receive exists.
  const std::vector<uint8_t> payload = testutil::RandomBytes(3, 60000);
  auto send_unclaimed = [&](const RawChannel& c, uint32_t n) {
    std::vector<transport::TransferOp> ops;
    for (uint32_t i = 0; i < n; ++i) {
      ops.push_back(transport::TransferOp::Send(payload.data(), payload.size(), c.Tag(i + 1)));
    }
    return c.workers[0]->Transfer(c.endpoints[0], ops, absl::Now() + absl::Seconds(10));
  };

  // Ordinary puts of the same size through a client are all claimed: nothing is dropped.
  std::unique_ptr<StoreClient> client;
  client::Namespace ns;
  ASSERT_NO_FATAL_FAILURE(ConnectWithNamespace(node, ClientOptions::DataPlane::kUcx, &client, &ns));
  const std::vector<ChainHash> hashes = testutil::PromptChain(ns, 5, 64);
  std::vector<BlockWrite> writes;
  for (const ChainHash& h : hashes) writes.push_back({h, payload.data(), payload.size()});
  ASSERT_THAT(client->Put(ns, "", writes), IsOk());
  absl::SleepFor(absl::Milliseconds(1200));  // a sweep and a metrics update
  EXPECT_EQ(MetricValue(node, kDroppedMetric), 0);
  auto data_channels = [&] {
    v1::StatsResponse stats;
    grpc::ClientContext ctx;
    return stub->Stats(&ctx, v1::StatsRequest(), &stats).ok() ? stats.data_channels() : 99;
  };
  ASSERT_EQ(data_channels(), 1u);  // the client's

  // Channels closed with 128 unclaimed messages each (7.7 MB): their messages go with them, so
  // six rounds cost what one does (measured: +0.2 MB; kept, resident memory grew 18 MB after
  // the first round, for 38 MB of messages).
  uint64_t resident_after_first = 0;
  for (int round = 0; round < 6; ++round) {
    RawChannel c;
    ASSERT_NO_FATAL_FAILURE(OpenRawChannel(*stub, &c));
    ASSERT_THAT(send_unclaimed(c, 128), IsOk());
    ASSERT_EQ(CloseRawChannel(*stub, c), grpc::StatusCode::OK);
    if (round == 0) resident_after_first = ResidentBytes(node.pid());
  }
  EXPECT_GE(dropped_reaches(6 * 128), 6 * 128);
  EXPECT_LT(ResidentBytes(node.pid()), resident_after_first + (8 << 20));

  // A channel left open with unclaimed messages: once the oldest waited 1.5 s the node closes
  // the channel and drops them.
  const double before = MetricValue(node, kDroppedMetric);
  RawChannel idle;
  ASSERT_NO_FATAL_FAILURE(OpenRawChannel(*stub, &idle));
  ASSERT_THAT(send_unclaimed(idle, 32), IsOk());
  EXPECT_GE(dropped_reaches(before + 32), before + 32);
  EXPECT_EQ(CloseRawChannel(*stub, idle), grpc::StatusCode::NOT_FOUND);

  // The client's own channel, whose messages were all claimed, is still open and carries its
  // blocks.
  EXPECT_EQ(data_channels(), 1u);
  std::vector<uint8_t> out(hashes.size() * payload.size());
  std::vector<BlockRead> reads;
  for (size_t i = 0; i < hashes.size(); ++i) {
    reads.push_back({hashes[i], out.data() + i * payload.size(), payload.size()});
  }
  auto got = client->Get(ns, "", reads);
  ASSERT_THAT(got, IsOk());
  for (size_t i = 0; i < hashes.size(); ++i) {
    ASSERT_THAT(got->blocks[i], IsOk());
    EXPECT_EQ(std::memcmp(out.data() + i * payload.size(), payload.data(), payload.size()), 0);
  }
}

// A PutData refused by admission never posts receives for its messages: the node notes the
// call's tags and its sweep drops them, and the channel stays open (closing it after the
// timeout would cost the client's other calls). One admission slot, held by a PutData whose
// message never comes, makes the refusal certain.
TEST(UcxConfigTest, ARefusedPutDatasMessagesAreDroppedAndItsChannelStays) {
  auto p =
      testutil::StartNode({"--warm-bytes", "64MiB", "--ucx-tls", "tcp",
                           "--ucx-unclaimed-timeout-ms", "2000", "--max-concurrent-calls", "1"});
  ASSERT_THAT(p, IsOk());
  const LocalNode& node = **p;
  auto stub = RawStub(node.address());
  std::unique_ptr<StoreClient> client;
  client::Namespace ns;
  ASSERT_NO_FATAL_FAILURE(
      ConnectWithNamespace(node, ClientOptions::DataPlane::kInline, &client, &ns));
  RawChannel holder, refused;
  ASSERT_NO_FATAL_FAILURE(OpenRawChannel(*stub, &holder));
  ASSERT_NO_FATAL_FAILURE(OpenRawChannel(*stub, &refused));
  const std::vector<uint8_t> payload = testutil::RandomBytes(4, 60000);
  auto tagged_put = [&](const RawChannel& c, uint32_t prompt, uint32_t n) {
    const std::vector<uint64_t> sums(n, BlockChecksum(payload.data(), payload.size()));
    return TaggedPut(c, ns, testutil::PromptChain(ns, prompt, n), payload.size(), sums);
  };
  grpc::ClientContext hold_ctx;
  hold_ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  std::thread hold([&] {
    v1::PutDataRequest req = tagged_put(holder, 20, 1);
    v1::PutDataResponse resp;
    stub->PutData(&hold_ctx, req, &resp);  // waits for a message that never comes
  });
  // The holder has the slot once its block is reserved (it then waits in its transfer).
  for (int i = 0; i < 200 && MetricValue(node, "strata_reservations") < 1; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  if (MetricValue(node, "strata_reservations") != 1) {
    hold_ctx.TryCancel();
    hold.join();
    FAIL() << "the holder's put never began";
  }
  std::vector<transport::TransferOp> sends;
  for (uint32_t i = 0; i < 16; ++i) {
    sends.push_back(
        transport::TransferOp::Send(payload.data(), payload.size(), refused.Tag(i + 1)));
  }
  ASSERT_THAT(
      refused.workers[0]->Transfer(refused.endpoints[0], sends, absl::Now() + absl::Seconds(5)),
      IsOk());
  const absl::Time refused_at = absl::Now();
  {
    v1::PutDataRequest req = tagged_put(refused, 21, 16);
    v1::PutDataResponse resp;
    grpc::ClientContext ctx;
    EXPECT_EQ(stub->PutData(&ctx, req, &resp).error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  }
  for (int i = 0; i < 60 && MetricValue(node, kDroppedMetric) < 16; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_GE(MetricValue(node, kDroppedMetric), 16);
  hold_ctx.TryCancel();
  hold.join();
  // Well past the timeout after the refusal: the refused call's channel is still open.
  absl::SleepFor(refused_at + absl::Milliseconds(3500) - absl::Now());
  EXPECT_EQ(CloseRawChannel(*stub, refused), grpc::StatusCode::OK);
}

// A PutData refused for its tags gets no receive per tag: 100,001 tags for one block, or tags
// naming another channel, are answered INVALID_ARGUMENT at once. Before, the node posted a
// receive for each tag it was sent (millions fit in one request) and held them, and the call,
// until the deadline: the caller saw DEADLINE_EXCEEDED.
TEST(UcxConfigTest, APutDataRefusedForItsTagsPostsNoReceivesForThem) {
  RawTcpNode t;
  ASSERT_NO_FATAL_FAILURE(StartRawTcpNode(&t));
  RawChannel other;
  ASSERT_NO_FATAL_FAILURE(OpenRawChannel(*t.stub, &other));
  const std::vector<ChainHash> hashes = testutil::PromptChain(t.ns, 30, 1);
  v1::PutDataRequest too_many = TaggedPut(t.channel, t.ns, hashes, 4096, {1});
  for (uint32_t i = 0; i < 100'000; ++i) too_many.add_tags(t.channel.Tag(i + 2));
  v1::PutDataRequest foreign = TaggedPut(t.channel, t.ns, hashes, 4096, {1});
  foreign.set_tags(0, other.Tag(1));
  for (const v1::PutDataRequest* req : {&too_many, &foreign}) {
    v1::PutDataResponse resp;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    const grpc::Status s = t.stub->PutData(&ctx, *req, &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
    EXPECT_THAT(s.error_message(), ::testing::HasSubstr("tags"));
  }
  EXPECT_EQ(CloseRawChannel(*t.stub, t.channel), grpc::StatusCode::OK) << "the channel stays";
}

// Blocks of 256 KiB are verified one by one as they land, while the rest of the call is in
// flight (counted), and the verdicts must reach the commit: a block whose bytes fail its
// checksum, and one whose message is short, are DATA_LOSS and not stored; the intact ones
// around them are.
TEST(UcxConfigTest, LargeTaggedPutsAreCheckedBlockByBlockAsTheyLand) {
  RawTcpNode t;
  ASSERT_NO_FATAL_FAILURE(StartRawTcpNode(&t));
  auto& [node, stub, client, ns, c] = t;
  constexpr size_t kBlocks = 4, kSize = 256 << 10;
  const std::vector<uint8_t> payload = testutil::RandomBytes(5, kBlocks * kSize);
  const std::vector<ChainHash> hashes = testutil::PromptChain(ns, 30, kBlocks);
  std::vector<uint64_t> sums;
  std::vector<transport::TransferOp> sends;
  for (size_t i = 0; i < kBlocks; ++i) {
    const uint8_t* bytes = payload.data() + i * kSize;
    sums.push_back(BlockChecksum(bytes, kSize) ^ (i == 1 ? 1 : 0));  // block 1: corrupt
    sends.push_back(transport::TransferOp::Send(bytes, i == 2 ? kSize / 3 : kSize, c.Tag(i + 1)));
  }
  const v1::PutDataRequest req = TaggedPut(c, ns, hashes, kSize, sums);
  const double checked_before = MetricValue(*node, kCheckedMetric);
  absl::Status sent;
  v1::PutDataResponse resp;
  const grpc::Status called = PutWhileSending(*stub, c, req, sends, &resp, &sent);
  ASSERT_TRUE(called.ok()) << called.error_message();
  EXPECT_THAT(sent, IsOk());
  ASSERT_EQ(resp.results_size(), static_cast<int>(kBlocks));
  EXPECT_EQ(resp.results(0).code(), 0) << resp.results(0).message();
  EXPECT_EQ(resp.results(1).code(), static_cast<int>(absl::StatusCode::kDataLoss));
  EXPECT_THAT(resp.results(1).message(), ::testing::HasSubstr("checksum"));
  EXPECT_EQ(resp.results(2).code(), static_cast<int>(absl::StatusCode::kDataLoss));
  EXPECT_THAT(resp.results(2).message(), ::testing::HasSubstr("bytes arrived"));
  EXPECT_EQ(resp.results(3).code(), 0) << resp.results(3).message();
  // Blocks 0, 1 and 3 were checked as they landed (the short one is left to the commit).
  for (int i = 0; i < 40 && MetricValue(*node, kCheckedMetric) < checked_before + 3; ++i) {
    absl::SleepFor(absl::Milliseconds(50));  // the metrics page may lag its counters
  }
  EXPECT_EQ(MetricValue(*node, kCheckedMetric), checked_before + 3);
  std::vector<uint8_t> out(kBlocks * kSize, 0);
  std::vector<BlockRead> reads;
  for (size_t i = 0; i < kBlocks; ++i) reads.push_back({hashes[i], out.data() + i * kSize, kSize});
  auto got = client->Get(ns, "", reads);
  ASSERT_THAT(got, IsOk());
  for (size_t i : {0, 3}) {
    ASSERT_THAT(got->blocks[i], IsOk()) << i;
    EXPECT_EQ(std::memcmp(out.data() + i * kSize, payload.data() + i * kSize, kSize), 0) << i;
  }
  EXPECT_THAT(got->blocks[1], testutil::StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(got->blocks[2], testutil::StatusIs(absl::StatusCode::kNotFound));
  EXPECT_EQ(CloseRawChannel(*stub, c), grpc::StatusCode::OK);
}

// Checksums sent after the blocks (PutDataRequest.checksums_tag) guard them as checksums in the
// request do: a block that fails its trailing checksum is DATA_LOSS beside stored neighbours; a
// short checksum message fails every block of its call and stores none; a request naming both
// is refused. A client sends them so by default for parts from 512 KiB, and not with
// ucx_trailing_checksum_bytes 0.
TEST(UcxConfigTest, ChecksumsSentAfterTheBlocksGuardThemAsChecksumsSentFirst) {
  RawTcpNode t;
  ASSERT_NO_FATAL_FAILURE(StartRawTcpNode(&t));
  auto& [node, stub, client, ns, c] = t;
  EXPECT_TRUE(c.channel.checksums_may_trail());
  constexpr size_t kBlocks = 4, kSize = 256 << 10;
  const std::vector<uint8_t> payload = testutil::RandomBytes(6, kBlocks * kSize);
  auto read_back = [&](const std::vector<ChainHash>& hashes) {
    std::vector<uint8_t> out(kBlocks * kSize, 0);
    std::vector<BlockRead> reads;
    for (size_t i = 0; i < kBlocks; ++i)
      reads.push_back({hashes[i], out.data() + i * kSize, kSize});
    auto got = client->Get(ns, "", reads);
    std::vector<int> intact;  // per block: 1 bit-exact, 0 absent, -1 anything else
    for (size_t i = 0; i < kBlocks; ++i) {
      const bool ok = got.ok() && got->blocks[i].ok();
      intact.push_back(
          ok && std::memcmp(out.data() + i * kSize, payload.data() + i * kSize, kSize) == 0
              ? 1
              : (got.ok() && absl::IsNotFound(got->blocks[i]) ? 0 : -1));
    }
    return intact;
  };
  // One raw call: the four blocks, then `trailer_bytes` of `sums` under the checksums tag.
  uint32_t sequence = 1;
  auto put = [&](const std::vector<ChainHash>& hashes, const std::vector<uint64_t>& sums,
                 size_t trailer_bytes, bool also_in_request, v1::PutDataResponse* resp) {
    v1::PutDataRequest req = TaggedPut(c, ns, hashes, kSize, sums);
    req.clear_tags();
    if (!also_in_request) req.clear_checksums();
    std::vector<transport::TransferOp> sends;
    for (size_t i = 0; i < kBlocks; ++i) {
      req.add_tags(c.Tag(sequence++));
      sends.push_back(transport::TransferOp::Send(payload.data() + i * kSize, kSize, req.tags(i)));
    }
    req.set_checksums_tag(c.Tag(sequence++));
    sends.push_back(transport::TransferOp::Send(sums.data(), trailer_bytes, req.checksums_tag()));
    absl::Status sent;
    const grpc::Status called = PutWhileSending(*stub, c, req, sends, resp, &sent);
    EXPECT_THAT(sent, IsOk());  // the node takes every message, also of a refused call
    return called;
  };
  std::vector<uint64_t> sums;
  for (size_t i = 0; i < kBlocks; ++i) {
    sums.push_back(BlockChecksum(payload.data() + i * kSize, kSize) ^ (i == 1 ? 1 : 0));
  }
  const double checked_before = MetricValue(*node, kCheckedMetric);
  v1::PutDataResponse resp;
  const std::vector<ChainHash> first = testutil::PromptChain(ns, 40, kBlocks);
  ASSERT_TRUE(put(first, sums, sizeof(uint64_t) * kBlocks, false, &resp).ok());
  ASSERT_EQ(resp.results_size(), static_cast<int>(kBlocks));
  EXPECT_EQ(resp.results(1).code(), static_cast<int>(absl::StatusCode::kDataLoss));
  EXPECT_THAT(resp.results(1).message(), ::testing::HasSubstr("checksum"));
  for (int i : {0, 2, 3}) EXPECT_EQ(resp.results(i).code(), 0) << resp.results(i).message();
  EXPECT_THAT(read_back(first), ::testing::ElementsAre(1, 0, 1, 1));
  for (int i = 0; i < 40 && MetricValue(*node, kCheckedMetric) < checked_before + 4; ++i) {
    absl::SleepFor(absl::Milliseconds(50));
  }
  EXPECT_EQ(MetricValue(*node, kCheckedMetric), checked_before + 4);  // hashed as they landed

  // Three checksums for four blocks: nothing of the call is stored.
  const std::vector<ChainHash> second = testutil::PromptChain(ns, 41, kBlocks);
  sums[1] ^= 1;
  resp.Clear();
  ASSERT_TRUE(put(second, sums, sizeof(uint64_t) * 3, false, &resp).ok());
  ASSERT_EQ(resp.results_size(), static_cast<int>(kBlocks));
  for (int i = 0; i < static_cast<int>(kBlocks); ++i) {
    EXPECT_EQ(resp.results(i).code(), static_cast<int>(absl::StatusCode::kDataLoss)) << i;
    EXPECT_THAT(resp.results(i).message(), ::testing::HasSubstr("24 bytes arrived for 4 blocks"));
  }
  EXPECT_THAT(read_back(second), ::testing::ElementsAre(0, 0, 0, 0));

  // Checksums both in the request and after the blocks: refused, nothing stored.
  const std::vector<ChainHash> third = testutil::PromptChain(ns, 42, kBlocks);
  const grpc::Status both = put(third, sums, sizeof(uint64_t) * kBlocks, true, &resp);
  EXPECT_EQ(both.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(both.error_message(), ::testing::HasSubstr("want none with checksums_tag"));
  EXPECT_THAT(read_back(third), ::testing::ElementsAre(0, 0, 0, 0));
  EXPECT_EQ(CloseRawChannel(*stub, c), grpc::StatusCode::OK);

  // The client library: a 1 MiB put sends its checksums last by default, not when told 0.
  for (uint64_t from : {uint64_t{0}, ClientOptions{}.ucx_trailing_checksum_bytes}) {
    ClientOptions o;
    o.address = node->address();
    o.data_plane = ClientOptions::DataPlane::kUcx;
    o.ucx_trailing_checksum_bytes = from;
    auto ucx = StoreClient::Connect(o);
    ASSERT_THAT(ucx, IsOk());
    auto uns = (*ucx)->RegisterNamespace(Spec());
    ASSERT_THAT(uns, IsOk());
    const std::vector<ChainHash> hashes = testutil::PromptChain(*uns, from == 0 ? 43 : 44, kBlocks);
    std::vector<BlockWrite> writes;
    for (size_t i = 0; i < kBlocks; ++i)
      writes.push_back({hashes[i], payload.data() + i * kSize, kSize});
    const double trailing_before = MetricValue(*node, kTrailingMetric);
    auto stored = (*ucx)->Put(*uns, "", writes);
    ASSERT_THAT(stored, IsOk());
    EXPECT_EQ(stored->stored, kBlocks);
    const double want = trailing_before + (from == 0 ? 0 : 1);
    for (int i = 0; i < 40 && MetricValue(*node, kTrailingMetric) < want; ++i) {
      absl::SleepFor(absl::Milliseconds(50));
    }
    absl::SleepFor(absl::Milliseconds(from == 0 ? 1100 : 0));  // nothing counted late either
    EXPECT_EQ(MetricValue(*node, kTrailingMetric), want) << from;
    EXPECT_THAT(read_back(hashes), ::testing::ElementsAre(1, 1, 1, 1)) << from;
  }
}

// A node restarted at the same address with ucx_trailing_checksums off (as an older build
// would be): it says so on ConnectData and refuses a checksums_tag, and the client's next puts
// carry their checksums in the request — decided by the channel each attempt runs on, not by
// what the node said before.
TEST(UcxConfigTest, APutToANodeRestartedWithoutTrailingChecksumsSendsThemFirst) {
  constexpr size_t kBlocks = 4, kSize = 256 << 10;
  const std::vector<uint8_t> payload = testutil::RandomBytes(7, kBlocks * kSize);
  auto first = testutil::StartNode({"--warm-bytes", "64MiB", "--ucx-tls", "tcp"});
  ASSERT_THAT(first, IsOk());
  const std::string address = (*first)->address();
  std::unique_ptr<StoreClient> ucx;
  client::Namespace ns;
  ASSERT_NO_FATAL_FAILURE(ConnectWithNamespace(**first, ClientOptions::DataPlane::kUcx, &ucx, &ns));
  auto put = [&](uint64_t prompt) {
    const std::vector<ChainHash> hashes = testutil::PromptChain(ns, prompt, kBlocks);
    std::vector<BlockWrite> writes;
    for (size_t i = 0; i < kBlocks; ++i)
      writes.push_back({hashes[i], payload.data() + i * kSize, kSize});
    absl::StatusOr<client::PutResult> r = ucx->Put(ns, "", writes);
    return r.ok() && r->stored != kBlocks ? absl::InternalError("not every block stored")
                                          : r.status();
  };
  ASSERT_THAT(put(50), IsOk());
  for (int i = 0; i < 40 && MetricValue(**first, kTrailingMetric) < 1; ++i) {
    absl::SleepFor(absl::Milliseconds(50));
  }
  EXPECT_EQ(MetricValue(**first, kTrailingMetric), 1);  // the checksums came last
  ASSERT_THAT((*first)->Stop(absl::Seconds(20)), IsOk());

  auto second = testutil::StartNode({"--warm-bytes", "64MiB", "--ucx-tls", "tcp", "--listen",
                                     address, "--ucx-trailing-checksums=false"});
  ASSERT_THAT(second, IsOk());
  ASSERT_EQ((*second)->address(), address);
  auto registered = ucx->RegisterNamespace(Spec());  // the new node knows no namespace yet
  ASSERT_THAT(registered, IsOk());
  ASSERT_EQ(registered->id, ns.id);
  // By hand: the channel says no, and a put with checksums_tag is refused (its messages are
  // taken all the same).
  std::unique_ptr<v1::StoreService::Stub> stub = RawStub(address);
  RawChannel c;
  ASSERT_NO_FATAL_FAILURE(OpenRawChannel(*stub, &c));
  EXPECT_FALSE(c.channel.checksums_may_trail());
  v1::PutDataRequest req =
      TaggedPut(c, ns, testutil::PromptChain(ns, 51, kBlocks), kSize, {0, 0, 0, 0});
  req.clear_checksums();
  req.set_checksums_tag(c.Tag(kBlocks + 1));
  std::vector<uint64_t> sums(kBlocks);
  std::vector<transport::TransferOp> sends;
  for (size_t i = 0; i < kBlocks; ++i) {
    sums[i] = BlockChecksum(payload.data() + i * kSize, kSize);
    sends.push_back(transport::TransferOp::Send(payload.data() + i * kSize, kSize, req.tags(i)));
  }
  sends.push_back(transport::TransferOp::Send(sums.data(), sums.size() * sizeof(uint64_t),
                                              req.checksums_tag()));
  absl::Status sent;
  v1::PutDataResponse resp;
  const grpc::Status refused = PutWhileSending(*stub, c, req, sends, &resp, &sent);
  EXPECT_THAT(sent, IsOk());
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(refused.error_message(), ::testing::HasSubstr("ucx_trailing_checksums is false"));
  EXPECT_EQ(CloseRawChannel(*stub, c), grpc::StatusCode::OK);

  // The client's channel died with the first node. Its next put finds that out (the node
  // answers NOT_FOUND for the channel it never opened, or the client's sends to the old lanes
  // fail), reconnects once and is stored, with the checksums in the request; so is every put
  // after it. (Until 2026-11-28 that first put could fail UNAVAILABLE.)
  for (uint64_t prompt : {52, 53, 54}) EXPECT_THAT(put(prompt), IsOk()) << prompt;
  EXPECT_EQ(MetricValue(**second, kTrailingMetric), 0);
  std::vector<uint8_t> out(kBlocks * kSize);
  std::vector<BlockRead> reads;
  const std::vector<ChainHash> hashes = testutil::PromptChain(ns, 54, kBlocks);
  for (size_t i = 0; i < kBlocks; ++i) reads.push_back({hashes[i], out.data() + i * kSize, kSize});
  auto got = ucx->Get(ns, "", reads);
  ASSERT_THAT(got, IsOk());
  for (size_t i = 0; i < kBlocks; ++i) EXPECT_THAT(got->blocks[i], IsOk()) << i;
  EXPECT_EQ(out, payload);
}

// A copy sent over UCX (PutData with copy set) of a block a writer deleted is refused like
// an inline one; the writer's own put of it is taken, over UCX.
TEST(UcxConfigTest, ACopyOverUcxOfADeletedBlockIsRefusedAndTheWritersPutIsTaken) {
  auto p = testutil::StartNode({"--warm-bytes", "64MiB", "--ucx-tls", "tcp"});
  ASSERT_THAT(p, IsOk());
  std::unique_ptr<StoreClient> c;
  client::Namespace ns;
  ASSERT_NO_FATAL_FAILURE(ConnectWithNamespace(**p, ClientOptions::DataPlane::kUcx, &c, &ns));
  constexpr size_t kBlocks = 3, kSize = 256 << 10;
  const std::vector<uint8_t> payload = testutil::RandomBytes(11, kBlocks * kSize);
  const std::vector<ChainHash> chain = testutil::PromptChain(ns, 11, kBlocks);
  std::vector<BlockWrite> writes;
  for (size_t i = 0; i < kBlocks; ++i) {
    writes.push_back({chain[i], payload.data() + i * kSize, kSize, static_cast<uint32_t>(i)});
  }
  auto put = c->Put(ns, "", writes);
  ASSERT_THAT(put, IsOk());
  ASSERT_EQ(put->stored, kBlocks);
  auto deleted = c->Delete(ns, "", chain);
  ASSERT_THAT(deleted, IsOk());
  EXPECT_EQ(*deleted, kBlocks);
  auto copied = c->Put(ns, "", writes, {}, {.copy = true});
  ASSERT_THAT(copied, IsOk());
  for (const absl::Status& st : copied->blocks) {
    EXPECT_THAT(st, testutil::StatusIs(absl::StatusCode::kFailedPrecondition,
                                       ::testing::HasSubstr("deleted")));
  }
  EXPECT_EQ(testutil::Metric(**p, "strata_copies_refused_total"), kBlocks);
  const double ucx_in =
      testutil::Metric(**p, "strata_transfer_bytes_total", "direction=\"in\",transport=\"ucx\"");
  auto again = c->Put(ns, "", writes);
  ASSERT_THAT(again, IsOk());
  EXPECT_EQ(again->stored, kBlocks);
  EXPECT_EQ(
      testutil::Metric(**p, "strata_transfer_bytes_total", "direction=\"in\",transport=\"ucx\"") -
          ucx_in,
      kBlocks * kSize)
      << "the writer's put went over UCX";
}

}  // namespace
}  // namespace strata
