// Store node + client library across real processes: round trips, prefix lookups, leases,
// reservations, budgets, malformed requests, checksums, metrics, failure and shutdown.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "strata/client/store_client.h"
#include "strata/common/checksum.h"
#include "strata/testutil/node_process.h"
#include "strata/testutil/prompts.h"
#include "strata/testutil/status_matchers.h"
#include "strata/v1/store.grpc.pb.h"

namespace strata {
namespace {

using client::BlockRead;
using client::BlockWrite;
using client::LocalNode;
using client::StoreClient;
using ::testing::HasSubstr;
using testutil::IsOk;
using testutil::StatusIs;

constexpr uint64_t kBlock = 64 * 1024;

NamespaceSpec TestSpec(uint64_t block_bytes = 1 << 20) {
  NamespaceSpec spec;
  spec.model_id = "test-model";
  spec.dtype = "fp16";
  spec.layout = "test-layout";
  spec.block_tokens = 16;
  spec.block_bytes = block_bytes;
  return spec;
}

struct Node {
  std::unique_ptr<LocalNode> process;
  std::unique_ptr<StoreClient> client;
  client::Namespace ns;
};

Node StartNode(std::vector<std::string> args) {
  Node n;
  auto p = testutil::StartNode(args);
  EXPECT_THAT(p, IsOk());
  if (!p.ok()) return n;
  n.process = std::move(*p);
  auto c = StoreClient::Connect({.address = n.process->address()});
  EXPECT_THAT(c, IsOk());
  if (!c.ok()) return n;
  n.client = std::move(*c);
  auto ns = n.client->RegisterNamespace(TestSpec());
  EXPECT_THAT(ns, IsOk());
  if (ns.ok()) n.ns = *ns;
  return n;
}

std::unique_ptr<v1::StoreService::Stub> RawStub(const std::string& address) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(1 << 30);
  args.SetMaxSendMessageSize(1 << 30);
  return v1::StoreService::NewStub(
      grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args));
}

// One BeginGet of `keys` through a raw stub (lease_ms 0: the node's default).
grpc::Status RawBeginGet(v1::StoreService::Stub& stub, NamespaceId ns,
                         std::span<const ChainHash> keys, bool payload, v1::BeginGetResponse* resp,
                         uint64_t lease_ms = 0) {
  v1::BeginGetRequest get;
  get.set_namespace_id(ns);
  for (const ChainHash& h : keys) get.add_chain_hashes(h.ToBytes());
  get.set_include_payload(payload);
  get.set_lease_ms(lease_ms);
  grpc::ClientContext ctx;
  return stub.BeginGet(&ctx, get, resp);
}

// One Lookup through a raw stub; the answer goes to `resp` when given.
grpc::Status RawLookup(v1::StoreService::Stub& stub, const v1::LookupRequest& req,
                       v1::LookupResponse* resp = nullptr) {
  v1::LookupResponse ignored;
  grpc::ClientContext ctx;
  return stub.Lookup(&ctx, req, resp != nullptr ? resp : &ignored);
}

absl::Status PutBlocks(Node& n, const std::vector<ChainHash>& hashes, size_t size,
                       uint64_t seed_base) {
  std::vector<std::vector<uint8_t>> data;
  std::vector<BlockWrite> writes;
  for (size_t i = 0; i < hashes.size(); ++i)
    data.push_back(testutil::RandomBytes(seed_base + i, size));
  for (size_t i = 0; i < hashes.size(); ++i) writes.push_back({hashes[i], data[i].data(), size});
  auto r = n.client->Put(n.ns, "", writes);
  if (!r.ok()) return r.status();
  for (const absl::Status& s : r->blocks) {
    if (!s.ok() && s.code() != absl::StatusCode::kAlreadyExists) return s;
  }
  return absl::OkStatus();
}

class StoreNodeTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    shared_ = new Node(StartNode(
        {"--warm-bytes", "256MiB", "--max-block-bytes", "4MiB", "--debug-fault-injection"}));
  }
  static void TearDownTestSuite() {
    delete shared_;
    shared_ = nullptr;
  }
  static Node* shared_;
};
Node* StoreNodeTest::shared_ = nullptr;

TEST_F(StoreNodeTest, RoundTripIsBitExactForAwkwardSizes) {
  Node& n = *shared_;
  ASSERT_NE(n.client, nullptr);
  const std::vector<size_t> sizes = {1, 63, 64, 4097, kBlock, (1 << 20) - 1, 1 << 20};
  std::vector<ChainHash> hashes = testutil::PromptChain(n.ns, 1, sizes.size());
  std::vector<std::vector<uint8_t>> data;
  std::vector<BlockWrite> writes;
  for (size_t i = 0; i < sizes.size(); ++i) data.push_back(testutil::RandomBytes(i, sizes[i]));
  for (size_t i = 0; i < sizes.size(); ++i) writes.push_back({hashes[i], data[i].data(), sizes[i]});
  auto put = n.client->Put(n.ns, "", writes);
  ASSERT_THAT(put, IsOk());
  EXPECT_EQ(put->stored, sizes.size());

  std::vector<std::vector<uint8_t>> out(sizes.size(), std::vector<uint8_t>(1 << 20, 0xee));
  std::vector<BlockRead> reads;
  for (size_t i = 0; i < sizes.size(); ++i) reads.push_back({hashes[i], out[i].data(), 1 << 20});
  auto got = n.client->Get(n.ns, "", reads);
  ASSERT_THAT(got, IsOk());
  ASSERT_EQ(got->fetched, sizes.size());
  for (size_t i = 0; i < sizes.size(); ++i) {
    ASSERT_EQ(got->sizes[i], sizes[i]);
    EXPECT_EQ(0, std::memcmp(out[i].data(), data[i].data(), sizes[i])) << "block " << i;
  }
}

TEST_F(StoreNodeTest, SecondPutOfSameBlocksIsDeduplicated) {
  Node& n = *shared_;
  std::vector<ChainHash> hashes = testutil::PromptChain(n.ns, 2, 4);
  ASSERT_THAT(PutBlocks(n, hashes, kBlock, 20), IsOk());
  std::vector<uint8_t> other = testutil::RandomBytes(999, kBlock);
  std::vector<BlockWrite> writes;
  for (const ChainHash& h : hashes) writes.push_back({h, other.data(), kBlock});
  auto again = n.client->Put(n.ns, "", writes);
  ASSERT_THAT(again, IsOk());
  EXPECT_EQ(again->stored, 0u);
  EXPECT_EQ(again->already_present, 4u);
  // The first writer's bytes stay.
  std::vector<uint8_t> out(kBlock);
  BlockRead read{hashes[0], out.data(), kBlock};
  auto got = n.client->Get(n.ns, "", {&read, 1});
  ASSERT_THAT(got, IsOk());
  EXPECT_EQ(out, testutil::RandomBytes(20, kBlock));
}

TEST_F(StoreNodeTest, LookupStopsAtFirstMissingBlock) {
  Node& n = *shared_;
  std::vector<ChainHash> hashes = testutil::PromptChain(n.ns, 3, 6);
  std::vector<ChainHash> stored = {hashes[0], hashes[1], hashes[2], hashes[4], hashes[5]};
  ASSERT_THAT(PutBlocks(n, stored, kBlock, 30), IsOk());
  auto r = n.client->Lookup(n.ns, "", hashes);
  ASSERT_THAT(r, IsOk());
  EXPECT_EQ(r->matched_blocks, 3u);
  ASSERT_EQ(r->blocks.size(), 3u);
  EXPECT_EQ(r->blocks[0].tier, client::Tier::kWarm);
  EXPECT_EQ(r->blocks[0].size, kBlock);
  // Tokens path: the same prompt hashed by the client library matches too.
  auto t = n.client->LookupTokens(n.ns, "", testutil::PromptTokens(3, 3 * 16));
  ASSERT_THAT(t, IsOk());
  EXPECT_EQ(t->matched_blocks, 3u);
}

TEST_F(StoreNodeTest, ScopesAreSeparateKeySpaces) {
  Node& n = *shared_;
  std::vector<ChainHash> hashes = testutil::PromptChain(n.ns, 4, 2);
  std::vector<uint8_t> data = testutil::RandomBytes(40, kBlock);
  std::vector<BlockWrite> writes = {{hashes[0], data.data(), kBlock},
                                    {hashes[1], data.data(), kBlock}};
  ASSERT_THAT(n.client->Put(n.ns, "tenant-a", writes), IsOk());
  EXPECT_EQ(n.client->Lookup(n.ns, "tenant-a", hashes)->matched_blocks, 2u);
  EXPECT_EQ(n.client->Lookup(n.ns, "tenant-b", hashes)->matched_blocks, 0u);
}

// The compact Lookup (packed_chain_hashes in, one tier byte and a size per block out) answers
// what the repeated form answers, and a malformed packed request names what is wrong.
TEST_F(StoreNodeTest, PackedLookupAnswersCompactlyAndNamesBadInput) {
  Node& n = *shared_;
  std::vector<ChainHash> hashes = testutil::PromptChain(n.ns, 77, 4);
  ASSERT_THAT(PutBlocks(n, {hashes[0], hashes[1]}, kBlock, 770), IsOk());
  auto stub = RawStub(n.process->address());
  auto code = [](const grpc::Status& s) { return static_cast<absl::StatusCode>(s.error_code()); };
  std::string packed;
  for (const ChainHash& h : hashes)
    packed.append(reinterpret_cast<const char*>(h.bytes.data()), 32);
  {
    v1::LookupRequest req;
    req.set_namespace_id(n.ns.id);
    req.set_packed_chain_hashes(packed);
    req.set_each_block(true);
    v1::LookupResponse resp;
    ASSERT_TRUE(RawLookup(*stub, req, &resp).ok());
    EXPECT_EQ(resp.blocks_size(), 0) << "the compact answer replaces blocks";
    ASSERT_EQ(resp.tiers().size(), 4u);
    ASSERT_EQ(resp.sizes_size(), 4);
    EXPECT_EQ(resp.matched_blocks(), 2u);
    EXPECT_EQ(resp.tiers()[0], static_cast<char>(v1::TIER_WARM));
    EXPECT_EQ(resp.sizes(1), kBlock);
    EXPECT_EQ(resp.tiers()[2], static_cast<char>(v1::TIER_UNSPECIFIED));
    EXPECT_EQ(resp.sizes(3), 0u);
  }
  {
    v1::LookupRequest req;
    req.set_namespace_id(n.ns.id);
    req.set_packed_chain_hashes(packed.substr(0, 40));
    grpc::Status s = RawLookup(*stub, req);
    EXPECT_EQ(code(s), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(s.error_message(), HasSubstr("packed_chain_hashes: 40 bytes"));
  }
  {
    v1::LookupRequest req;
    req.set_namespace_id(n.ns.id);
    req.set_packed_chain_hashes(packed);
    req.add_chain_hashes(packed.substr(0, 32));
    grpc::Status s = RawLookup(*stub, req);
    EXPECT_EQ(code(s), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(s.error_message(), HasSubstr("set one of the two"));
  }
}

TEST_F(StoreNodeTest, MalformedRequestsNameTheField) {
  Node& n = *shared_;
  auto stub = RawStub(n.process->address());
  std::string good(32, 'a');
  auto code = [](const grpc::Status& s) { return static_cast<absl::StatusCode>(s.error_code()); };
  {
    v1::LookupRequest req;
    req.set_namespace_id(n.ns.id);
    req.add_chain_hashes(good);
    req.add_chain_hashes(std::string(31, 'b'));
    grpc::Status s = RawLookup(*stub, req);
    EXPECT_EQ(code(s), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(s.error_message(), HasSubstr("chain_hashes[1]: 31 bytes"));
  }
  {
    v1::LookupRequest req;
    req.set_namespace_id(0x1234);
    req.add_chain_hashes(good);
    grpc::Status s = RawLookup(*stub, req);
    EXPECT_EQ(code(s), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(s.error_message(), HasSubstr("namespace_id 0x0000000000001234"));
  }
  {
    v1::LookupRequest req;
    req.set_namespace_id(n.ns.id);
    for (int i = 0; i < 4097; ++i) req.add_chain_hashes(good);
    grpc::Status s = RawLookup(*stub, req);
    EXPECT_EQ(code(s), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(s.error_message(), HasSubstr("max_keys_per_call"));
  }
  for (uint64_t size : {uint64_t{0}, uint64_t{5} << 20}) {
    v1::BeginPutRequest req;
    req.set_namespace_id(n.ns.id);
    v1::PutBlock* b = req.add_blocks();
    b->set_chain_hash(good);
    b->set_size(size);
    v1::BeginPutResponse resp;
    grpc::ClientContext ctx;
    grpc::Status s = stub->BeginPut(&ctx, req, &resp);
    EXPECT_EQ(code(s), absl::StatusCode::kInvalidArgument) << size;
    EXPECT_THAT(s.error_message(), HasSubstr("blocks[0].size")) << size;
  }
  {
    v1::BeginPutRequest req;
    req.set_namespace_id(n.ns.id);
    req.set_scope("Tenant A");
    v1::PutBlock* b = req.add_blocks();
    b->set_chain_hash(good);
    b->set_size(10);
    v1::BeginPutResponse resp;
    grpc::ClientContext ctx;
    grpc::Status s = stub->BeginPut(&ctx, req, &resp);
    EXPECT_EQ(code(s), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(s.error_message(), HasSubstr("scope"));
  }
  {
    v1::RegisterNamespaceRequest req;
    req.mutable_spec()->set_model_id("m");
    req.mutable_spec()->set_dtype("fp13");
    req.mutable_spec()->set_layout("l");
    req.mutable_spec()->set_block_tokens(16);
    req.mutable_spec()->set_tp_size(1);
    req.mutable_spec()->set_block_bytes(1024);
    v1::RegisterNamespaceResponse resp;
    grpc::ClientContext ctx;
    grpc::Status s = stub->RegisterNamespace(&ctx, req, &resp);
    EXPECT_EQ(code(s), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(s.error_message(), HasSubstr("dtype"));
  }
  // Still serving after all of that.
  EXPECT_THAT(n.client->Stats(), IsOk());
}

// A small inline put goes in one call (its payloads with BeginPut): the node stores and
// answers each block as CommitPut would, dedup included, and no CommitPut is sent. A payload
// that fails its checksum is DATA_LOSS and not stored; payloads that do not match the blocks
// fail the call, naming the field.
TEST_F(StoreNodeTest, ASmallInlinePutTakesOneCallAndIsCheckedLikeACommit) {
  Node& n = *shared_;
  ASSERT_NE(n.client, nullptr);
  std::vector<ChainHash> hashes = testutil::PromptChain(n.ns, 50, 4);
  const uint64_t begins = testutil::OpCount(*n.process, "begin_put");
  const uint64_t commits = testutil::OpCount(*n.process, "commit_put");
  ASSERT_THAT(PutBlocks(n, hashes, 8192, 500), IsOk());
  EXPECT_EQ(testutil::OpCount(*n.process, "begin_put") - begins, 1u);
  EXPECT_EQ(testutil::OpCount(*n.process, "commit_put"), commits);
  std::vector<std::vector<uint8_t>> out(hashes.size(), std::vector<uint8_t>(8192));
  std::vector<BlockRead> reads;
  for (size_t i = 0; i < hashes.size(); ++i) reads.push_back({hashes[i], out[i].data(), 8192});
  auto got = n.client->Get(n.ns, "", reads);
  ASSERT_THAT(got, IsOk());
  ASSERT_EQ(got->fetched, hashes.size());
  for (size_t i = 0; i < hashes.size(); ++i)
    EXPECT_EQ(out[i], testutil::RandomBytes(500 + i, 8192));
  std::vector<BlockWrite> again;
  for (size_t i = 0; i < hashes.size(); ++i) again.push_back({hashes[i], out[i].data(), 8192});
  auto dedup = n.client->Put(n.ns, "", again);
  ASSERT_THAT(dedup, IsOk());
  EXPECT_EQ(dedup->already_present, hashes.size());

  auto stub = RawStub(n.process->address());
  auto one_call = [&](const ChainHash& h, const std::string& payload, uint64_t size,
                      uint64_t checksum, int payloads, v1::BeginPutResponse* resp) {
    v1::BeginPutRequest req;
    req.set_namespace_id(n.ns.id);
    v1::PutBlock* b = req.add_blocks();
    b->set_chain_hash(h.ToBytes());
    b->set_size(size);
    for (int k = 0; k < payloads; ++k) {
      req.add_payloads(payload);
      req.add_checksums(checksum);
    }
    grpc::ClientContext ctx;
    return stub->BeginPut(&ctx, req, resp);
  };
  const ChainHash fresh = testutil::PromptChain(n.ns, 51, 1)[0];
  const std::string bytes(100, 'x');
  const uint64_t sum = BlockChecksum(bytes.data(), bytes.size());
  v1::BeginPutResponse resp;
  ASSERT_TRUE(one_call(fresh, bytes, 100, sum ^ 1, 1, &resp).ok());
  EXPECT_EQ(resp.reservation_id(), 0u);
  ASSERT_EQ(resp.slots_size(), 1);
  EXPECT_EQ(resp.slots(0).status().code(), static_cast<int>(absl::StatusCode::kDataLoss));
  EXPECT_EQ(n.client->Lookup(n.ns, "", {&fresh, 1})->matched_blocks, 0u);
  grpc::Status s = one_call(fresh, bytes, 101, sum, 1, &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("payloads[0]: 100 bytes"));
  s = one_call(fresh, bytes, 100, sum, 2, &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("payloads, checksums: 2 and 2 for 1 blocks"));
  ASSERT_TRUE(one_call(fresh, bytes, 100, sum, 1, &resp).ok());
  EXPECT_EQ(resp.slots(0).status().code(), 0);
  EXPECT_EQ(n.client->Lookup(n.ns, "", {&fresh, 1})->matched_blocks, 1u);
}

TEST_F(StoreNodeTest, InlineBatchOverLimitIsResourceExhaustedAndClientSplits) {
  Node& n = *shared_;
  auto stub = RawStub(n.process->address());
  v1::BeginPutRequest req;
  req.set_namespace_id(n.ns.id);
  std::vector<ChainHash> hashes = testutil::PromptChain(n.ns, 5, 80);
  for (const ChainHash& h : hashes) {
    v1::PutBlock* b = req.add_blocks();
    b->set_chain_hash(h.ToBytes());
    b->set_size(1 << 20);  // 80 MiB > 64 MiB max_inline_bytes
  }
  v1::BeginPutResponse resp;
  grpc::ClientContext ctx;
  grpc::Status s = stub->BeginPut(&ctx, req, &resp);
  EXPECT_EQ(static_cast<absl::StatusCode>(s.error_code()), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(s.error_message(), HasSubstr("max_inline_bytes"));
  // The client library splits the same batch into parts within the limit.
  ASSERT_THAT(PutBlocks(n, hashes, 1 << 20, 500), IsOk());
  EXPECT_EQ(n.client->Lookup(n.ns, "", hashes)->matched_blocks, 80u);
}

TEST_F(StoreNodeTest, CorruptedBytesInMemoryAreDataLossNeverWrongBytes) {
  Node& n = *shared_;
  std::vector<ChainHash> hashes = testutil::PromptChain(n.ns, 6, 3);
  ASSERT_THAT(PutBlocks(n, hashes, kBlock, 60), IsOk());
  auto stub = RawStub(n.process->address());
  v1::InjectFaultRequest fault;
  fault.set_namespace_id(n.ns.id);
  fault.set_chain_hash(hashes[1].ToBytes());
  fault.set_flip_byte_offset(12345);
  v1::InjectFaultResponse fault_resp;
  grpc::ClientContext ctx;
  ASSERT_TRUE(stub->InjectFault(&ctx, fault, &fault_resp).ok());
  uint64_t loss_before = n.client->Stats()->data_loss;

  std::vector<std::vector<uint8_t>> out(3, std::vector<uint8_t>(kBlock, 0xee));
  std::vector<BlockRead> reads;
  for (int i = 0; i < 3; ++i) reads.push_back({hashes[i], out[i].data(), kBlock});
  auto got = n.client->Get(n.ns, "", reads);
  ASSERT_THAT(got, IsOk());
  EXPECT_THAT(got->blocks[0], IsOk());
  EXPECT_THAT(got->blocks[1], StatusIs(absl::StatusCode::kDataLoss));
  EXPECT_THAT(got->blocks[2], IsOk());
  EXPECT_EQ(out[0], testutil::RandomBytes(60, kBlock));
  EXPECT_EQ(out[1], std::vector<uint8_t>(kBlock, 0xee));  // untouched: no wrong byte handed over
  EXPECT_EQ(out[2], testutil::RandomBytes(62, kBlock));
  // The corrupt block is dropped: the prefix now ends before it.
  EXPECT_EQ(n.client->Lookup(n.ns, "", hashes)->matched_blocks, 1u);
  EXPECT_EQ(n.client->Stats()->data_loss, loss_before + 1);
}

TEST_F(StoreNodeTest, MetricsAndHealthEndpoints) {
  Node& n = *shared_;
  ASSERT_THAT(PutBlocks(n, testutil::PromptChain(n.ns, 7, 2), kBlock, 70), IsOk());
  auto stats = n.client->Stats();
  ASSERT_THAT(stats, IsOk());
  auto metrics = testutil::HttpGet(n.process->http_address(), "/metrics");
  ASSERT_THAT(metrics, IsOk());
  EXPECT_EQ(metrics->first, 200);
  EXPECT_THAT(metrics->second, HasSubstr("strata_tier_capacity_bytes{tier=\"warm\""));
  EXPECT_THAT(metrics->second, HasSubstr("strata_op_latency_seconds_bucket{op=\"begin_put\""));
  EXPECT_THAT(metrics->second, HasSubstr("strata_lookup_blocks_total{result=\"hit\""));
  EXPECT_THAT(metrics->second, HasSubstr(absl::StrCat("strata_tier_capacity_bytes{tier=\"warm\","
                                                      "node=\"node-0\"} ",
                                                      256 << 20)));
  EXPECT_EQ(testutil::HttpGet(n.process->http_address(), "/healthz")->first, 200);
  EXPECT_EQ(testutil::HttpGet(n.process->http_address(), "/readyz")->first, 200);
  EXPECT_EQ(testutil::HttpGet(n.process->http_address(), "/nope")->first, 404);
}

// `strata get --output` writes the blocks it fetched, and a file it cannot write is an error
// (exit 2, a bad argument, before fetching), not "N of N blocks fetched" with exit 0 and no
// file.
TEST_F(StoreNodeTest, CliGetWritesItsOutputOrFails) {
  Node& n = *shared_;
  const std::string common =
      absl::StrCat(" --node ", n.process->address(),
                   " --model-id cli-out --block-bytes 64KiB --tokens 0..256 > /dev/null 2>&1");
  const std::string strata = testutil::ProjectBinary("strata");
  ASSERT_EQ(std::system((strata + " put" + common).c_str()), 0);
  const std::string file =
      (std::filesystem::temp_directory_path() / absl::StrCat("strata-cli-get-", getpid())).string();
  EXPECT_EQ(std::system((strata + " get --max-block 64KiB --output " + file + common).c_str()), 0);
  std::error_code ec;
  EXPECT_EQ(std::filesystem::file_size(file, ec), 256u / 16 * (64u << 10));
  std::filesystem::remove(file, ec);
  const int refused = std::system(
      (strata + " get --max-block 64KiB --output /nonexistent-dir/x.bin" + common).c_str());
  EXPECT_TRUE(WIFEXITED(refused) && WEXITSTATUS(refused) != 0);
  // Sizes past what a command can hold are refused (exit 2: bad argument), not an abort
  // (bad_alloc).
  const int huge = std::system((strata + " put --block-size 64GiB" + common).c_str());
  EXPECT_TRUE(WIFEXITED(huge) && WEXITSTATUS(huge) == 2) << huge;
}

TEST_F(StoreNodeTest, DemoRunsPrefillAndDecodeInOtherProcesses) {
  Node& n = *shared_;
  std::string cmd = absl::StrCat(testutil::ProjectBinary("strata"), " demo --node ",
                                 n.process->address(), " --prompt-tokens 1024 > /dev/null");
  EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
}

// Nodes with their own configuration.

// A warm tier larger than this machine's memory (or its cgroup's limit) is refused at start.
// The arena is mapped without reserving memory: before, the node started, reported ready, and
// the kernel would have killed it as the tier filled.
TEST(StoreNodeConfigTest, AWarmTierLargerThanMemoryIsRefusedAtStart) {
  auto node = testutil::StartNode({"--warm-bytes", "64TiB", "--max-inflight-bytes", "1GiB"});
  EXPECT_FALSE(node.ok()) << "a 64 TiB warm tier started";
}

TEST(StoreNodeConfigTest, LeaseKeepsBlockAliveUnderEvictionPressure) {
  // LRU: once unpinned, the block's reads no longer protect it (cost would keep it: below).
  Node n = StartNode({"--warm-bytes", "8MiB", "--max-block-bytes", "1MiB", "--warm-policy", "lru"});
  ASSERT_NE(n.client, nullptr);
  std::vector<ChainHash> pinned = testutil::PromptChain(n.ns, 10, 1);
  ASSERT_THAT(PutBlocks(n, pinned, 1 << 20, 100), IsOk());
  auto stub = RawStub(n.process->address());
  v1::BeginGetResponse lease;
  ASSERT_TRUE(RawBeginGet(*stub, n.ns.id, pinned, false, &lease, 60000).ok());
  ASSERT_NE(lease.lease_id(), 0u);
  // Three times the arena's worth of new blocks, in batches that fit beside the pin.
  for (uint32_t round = 0; round < 6; ++round) {
    ASSERT_THAT(PutBlocks(n, testutil::PromptChain(n.ns, 11 + round, 4), 1 << 20, 200 + 10 * round),
                IsOk());
  }
  EXPECT_GT(n.client->Stats()->evictions, 0u);
  EXPECT_EQ(n.client->Lookup(n.ns, "", pinned)->matched_blocks, 1u) << "pinned block evicted";
  std::vector<uint8_t> out(1 << 20);
  BlockRead read{pinned[0], out.data(), out.size()};
  ASSERT_THAT(n.client->Get(n.ns, "", {&read, 1})->blocks[0], IsOk());
  EXPECT_EQ(out, testutil::RandomBytes(100, 1 << 20));
  // Once released, the same pressure evicts it.
  v1::EndGetRequest end;
  end.set_lease_id(lease.lease_id());
  v1::EndGetResponse end_resp;
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub->EndGet(&ctx, end, &end_resp).ok());
  }
  for (uint32_t round = 0; round < 6; ++round) {
    ASSERT_THAT(PutBlocks(n, testutil::PromptChain(n.ns, 30 + round, 4), 1 << 20, 300 + 10 * round),
                IsOk());
  }
  EXPECT_EQ(n.client->Lookup(n.ns, "", pinned)->matched_blocks, 0u);
}

// A read with its payload inline leaves nothing pinned: the node ends the lease with the
// call (no EndGet needed), and the op counts show the client sent none. Without the payload
// the pin stays until EndGet.
TEST_F(StoreNodeTest, AnInlineReadLeavesNoLeaseBehind) {
  Node& n = *shared_;
  ASSERT_NE(n.client, nullptr);
  std::vector<ChainHash> hashes = testutil::PromptChain(n.ns, 40, 3);
  ASSERT_THAT(PutBlocks(n, hashes, 4096, 400), IsOk());
  auto stub = RawStub(n.process->address());
  v1::BeginGetResponse inline_read;
  ASSERT_TRUE(RawBeginGet(*stub, n.ns.id, hashes, true, &inline_read).ok());
  ASSERT_EQ(inline_read.blocks_size(), 3);
  const std::vector<uint8_t> want = testutil::RandomBytes(402, 4096);
  EXPECT_EQ(inline_read.blocks(2).payload(), std::string(want.begin(), want.end()));
  EXPECT_EQ(inline_read.lease_id(), 0u);
  EXPECT_EQ(n.client->Stats()->leases, 0u);
  const uint64_t end_gets = testutil::OpCount(*n.process, "end_get");
  std::vector<uint8_t> out(4096);
  BlockRead read{hashes[0], out.data(), out.size()};
  ASSERT_THAT(n.client->Get(n.ns, "", {&read, 1})->blocks[0], IsOk());
  EXPECT_EQ(testutil::OpCount(*n.process, "end_get"), end_gets);
  // Pinned without the payload: held until EndGet.
  v1::BeginGetResponse pinned;
  ASSERT_TRUE(RawBeginGet(*stub, n.ns.id, hashes, false, &pinned).ok());
  EXPECT_NE(pinned.lease_id(), 0u);
  EXPECT_EQ(n.client->Stats()->leases, 1u);
  v1::EndGetRequest end;
  end.set_lease_id(pinned.lease_id());
  v1::EndGetResponse ended;
  grpc::ClientContext ctx;
  EXPECT_TRUE(stub->EndGet(&ctx, end, &ended).ok());
}

// Leases kept past their call are capped (max_leases, max_lease_bytes: half of warm_bytes
// by default): readers cannot pin the arena full. Reads with the payload are not capped.
TEST(StoreNodeConfigTest, KeptReadLeasesAreCapped) {
  Node n = StartNode({"--warm-bytes", "8MiB", "--max-block-bytes", "1MiB", "--max-leases", "2"});
  ASSERT_NE(n.client, nullptr);
  std::vector<ChainHash> hashes = testutil::PromptChain(n.ns, 45, 5);
  ASSERT_THAT(PutBlocks(n, hashes, 1 << 20, 450), IsOk());
  auto stub = RawStub(n.process->address());
  auto begin = [&](std::span<const ChainHash> keys, bool payload, v1::BeginGetResponse* resp) {
    return RawBeginGet(*stub, n.ns.id, keys, payload, resp);
  };
  v1::BeginGetResponse resp;
  grpc::Status all = begin(hashes, false, &resp);
  EXPECT_EQ(all.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(all.error_message(), HasSubstr("max_lease_bytes"));
  EXPECT_EQ(n.client->Stats()->leases, 0u) << "the refused lease pins nothing";
  EXPECT_TRUE(begin(hashes, true, &resp).ok()) << "a read with the payload is not capped";
  std::vector<uint64_t> kept;
  for (size_t i = 0; i < 2; ++i) {
    ASSERT_TRUE(begin({&hashes[i], 1}, false, &resp).ok()) << i;
    kept.push_back(resp.lease_id());
  }
  grpc::Status third = begin({&hashes[2], 1}, false, &resp);
  EXPECT_EQ(third.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(third.error_message(), HasSubstr("max_leases"));
  v1::EndGetRequest end;
  end.set_lease_id(kept[0]);
  v1::EndGetResponse ended;
  grpc::ClientContext ctx;
  ASSERT_TRUE(stub->EndGet(&ctx, end, &ended).ok());
  EXPECT_TRUE(begin({&hashes[2], 1}, false, &resp).ok()) << "an ended lease makes room";
}

// The warm tier's policy is chosen by config: a block read often survives a scan of blocks
// written once under cost and lfu, and is the first to go under lru.
TEST(StoreNodeConfigTest, WarmPolicyDecidesWhoSurvivesAScan) {
  for (const char* policy : {"lru", "lfu", "cost"}) {
    SCOPED_TRACE(policy);
    Node n =
        StartNode({"--warm-bytes", "8MiB", "--max-block-bytes", "1MiB", "--warm-policy", policy});
    ASSERT_NE(n.client, nullptr);
    std::vector<ChainHash> hot = testutil::PromptChain(n.ns, 50, 1);
    ASSERT_THAT(PutBlocks(n, hot, 1 << 20, 500), IsOk());
    std::vector<uint8_t> out(1 << 20);
    for (int i = 0; i < 5; ++i) {
      BlockRead read{hot[0], out.data(), out.size()};
      ASSERT_THAT(n.client->Get(n.ns, "", {&read, 1})->blocks[0], IsOk());
    }
    for (uint32_t round = 0; round < 24; ++round) {
      ASSERT_THAT(PutBlocks(n, testutil::PromptChain(n.ns, 60 + round, 1), 1 << 20, 600 + round),
                  IsOk());
    }
    EXPECT_GT(n.client->Stats()->evictions, 0u);
    bool survived = n.client->Lookup(n.ns, "", hot)->matched_blocks == 1;
    EXPECT_EQ(survived, std::string_view(policy) != "lru");
  }
}

TEST(StoreNodeConfigTest, UncommittedPutIsInvisibleAndExpires) {
  Node n = StartNode({"--warm-bytes", "8MiB", "--max-block-bytes", "1MiB", "--reservation-ttl",
                      "2s", "--reaper-interval", "20ms"});
  ASSERT_NE(n.client, nullptr);
  std::vector<ChainHash> hashes = testutil::PromptChain(n.ns, 90, 2);
  auto stub = RawStub(n.process->address());
  v1::BeginPutRequest req;
  req.set_namespace_id(n.ns.id);
  for (const ChainHash& h : hashes) {
    v1::PutBlock* b = req.add_blocks();
    b->set_chain_hash(h.ToBytes());
    b->set_size(kBlock);
  }
  v1::BeginPutResponse reserved;
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub->BeginPut(&ctx, req, &reserved).ok());
  }
  ASSERT_NE(reserved.reservation_id(), 0u);
  EXPECT_EQ(n.client->Lookup(n.ns, "", hashes)->matched_blocks, 0u);
  EXPECT_EQ(n.client->Stats()->reservations, 1u);
  EXPECT_GT(n.client->Stats()->warm_used_bytes, 0u);
  // Bounded wait for the reaper (the TTL is 2 s so that the three calls above see the
  // reservation however slow the machine; 300 ms was a tight fit).
  for (int i = 0; i < 500 && n.client->Stats()->reservations != 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(n.client->Stats()->reservations, 0u);
  EXPECT_EQ(n.client->Stats()->warm_used_bytes, 0u);
  v1::CommitPutRequest commit;
  commit.set_reservation_id(reserved.reservation_id());
  std::vector<uint8_t> data = testutil::RandomBytes(1, kBlock);
  v1::CommitBlock* c = commit.add_blocks();
  c->set_chain_hash(hashes[0].ToBytes());
  c->set_checksum(BlockChecksum(data.data(), data.size()));
  c->set_payload(data.data(), data.size());
  v1::CommitPutResponse done;
  grpc::ClientContext ctx;
  grpc::Status s = stub->CommitPut(&ctx, commit, &done);
  EXPECT_EQ(static_cast<absl::StatusCode>(s.error_code()), absl::StatusCode::kNotFound);
  EXPECT_EQ(n.client->Lookup(n.ns, "", hashes)->matched_blocks, 0u);
}

TEST(StoreNodeConfigTest, OverBudgetPutIsResourceExhaustedAndNodeKeepsServing) {
  Node n = StartNode({"--warm-bytes", "4MiB", "--max-block-bytes", "1MiB"});
  ASSERT_NE(n.client, nullptr);
  auto stub = RawStub(n.process->address());
  // Hold the whole arena in uncommitted reservations.
  v1::BeginPutRequest req;
  req.set_namespace_id(n.ns.id);
  for (const ChainHash& h : testutil::PromptChain(n.ns, 40, 4)) {
    v1::PutBlock* b = req.add_blocks();
    b->set_chain_hash(h.ToBytes());
    b->set_size(1 << 20);
  }
  v1::BeginPutResponse reserved;
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub->BeginPut(&ctx, req, &reserved).ok());
  }
  for (const auto& slot : reserved.slots()) ASSERT_EQ(slot.status().code(), 0);
  std::vector<ChainHash> more = testutil::PromptChain(n.ns, 41, 1);
  std::vector<uint8_t> data = testutil::RandomBytes(1, 1 << 20);
  BlockWrite w{more[0], data.data(), data.size()};
  auto put = n.client->Put(n.ns, "", {&w, 1});
  ASSERT_THAT(put, IsOk());
  EXPECT_THAT(put->blocks[0],
              StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("warm tier full")));
  EXPECT_THAT(n.client->Stats(), IsOk());
  // Releasing the reservations makes room again.
  v1::AbortPutRequest abort;
  abort.set_reservation_id(reserved.reservation_id());
  v1::AbortPutResponse abort_resp;
  grpc::ClientContext ctx;
  ASSERT_TRUE(stub->AbortPut(&ctx, abort, &abort_resp).ok());
  auto retry = n.client->Put(n.ns, "", {&w, 1});
  ASSERT_THAT(retry, IsOk());
  EXPECT_THAT(retry->blocks[0], IsOk());
}

TEST(StoreNodeConfigTest, FaultInjectionIsRefusedUnlessEnabled) {
  Node n = StartNode({"--warm-bytes", "4MiB", "--max-block-bytes", "1MiB"});
  ASSERT_NE(n.client, nullptr);
  std::vector<ChainHash> hashes = testutil::PromptChain(n.ns, 50, 1);
  ASSERT_THAT(PutBlocks(n, hashes, kBlock, 50), IsOk());
  auto stub = RawStub(n.process->address());
  v1::InjectFaultRequest fault;
  fault.set_namespace_id(n.ns.id);
  fault.set_chain_hash(hashes[0].ToBytes());
  v1::InjectFaultResponse resp;
  grpc::ClientContext ctx;
  grpc::Status s = stub->InjectFault(&ctx, fault, &resp);
  EXPECT_EQ(static_cast<absl::StatusCode>(s.error_code()), absl::StatusCode::kFailedPrecondition);
  std::vector<uint8_t> out(kBlock);
  BlockRead read{hashes[0], out.data(), kBlock};
  EXPECT_THAT(n.client->Get(n.ns, "", {&read, 1})->blocks[0], IsOk());
}

TEST(StoreNodeConfigTest, YamlFileAndEnvironmentConfigureTheNode) {
  const std::string path = absl::StrCat("/tmp/strata-it-config-", getpid(), ".yaml");
  std::ofstream(path) << "warm_bytes: 6MiB\nmax_block_bytes: 1MiB\nnode_id: from-yaml\n";
  Node n = StartNode({"--config", path});
  ASSERT_NE(n.client, nullptr);
  auto stats = n.client->Stats();
  ASSERT_THAT(stats, IsOk());
  EXPECT_EQ(stats->warm_capacity_bytes, 6u << 20);
  EXPECT_EQ(stats->node_id, "from-yaml");
  EXPECT_EQ(stats->max_block_bytes, 1u << 20);
  std::remove(path.c_str());
}

TEST(StoreNodeConfigTest, DeadNodeIsUnavailableNotAHang) {
  Node n = StartNode({"--warm-bytes", "4MiB", "--max-block-bytes", "1MiB"});
  ASSERT_NE(n.client, nullptr);
  std::vector<ChainHash> hashes = testutil::PromptChain(n.ns, 60, 2);
  ASSERT_THAT(n.process->Stop(absl::Seconds(20), SIGKILL), IsOk());
  auto r = n.client->Lookup(n.ns, "", hashes, {.deadline = absl::Seconds(5)});
  EXPECT_THAT(r, StatusIs(absl::StatusCode::kUnavailable));
  auto connect =
      StoreClient::Connect({.address = n.process->address(), .default_deadline = absl::Seconds(5)});
  EXPECT_THAT(connect, StatusIs(absl::StatusCode::kUnavailable));
}

// A node without a disk tier keeps its namespaces in memory: restarted at the same address it
// knows none, and answered every call of its long-lived clients INVALID_ARGUMENT "not
// registered" until they restarted too. The client registers the call's namespace again.
TEST(StoreNodeConfigTest, ARestartedNodeGetsItsNamespacesBackFromItsClients) {
  Node n = StartNode({"--warm-bytes", "16MiB", "--max-block-bytes", "1MiB"});
  ASSERT_NE(n.client, nullptr);
  const std::vector<ChainHash> before = testutil::PromptChain(n.ns, 80, 2);
  ASSERT_THAT(PutBlocks(n, before, kBlock, 80), IsOk());
  const std::string address = n.process->address();
  ASSERT_THAT(n.process->Stop(absl::Seconds(20), SIGTERM), IsOk());
  auto again = testutil::StartNode(
      {"--listen", address, "--warm-bytes", "16MiB", "--max-block-bytes", "1MiB"});
  ASSERT_THAT(again, IsOk());
  n.process = std::move(*again);
  // The first call may find gRPC still reconnecting.
  absl::StatusOr<client::LookupResult> found = absl::UnavailableError("not asked");
  for (int i = 0; i < 50 && found.status().code() == absl::StatusCode::kUnavailable; ++i) {
    if (i > 0) absl::SleepFor(absl::Milliseconds(200));
    found = n.client->Lookup(n.ns, "", before);
  }
  ASSERT_THAT(found, IsOk());
  EXPECT_EQ(found->matched_blocks, 0u);  // its memory went with the old process
  const std::vector<ChainHash> after = testutil::PromptChain(n.ns, 81, 2);
  ASSERT_THAT(PutBlocks(n, after, kBlock, 81), IsOk());
  std::vector<uint8_t> got(kBlock);
  const BlockRead read{after[1], got.data(), kBlock};
  auto r = n.client->Get(n.ns, "", {&read, 1});
  ASSERT_THAT(r, IsOk());
  ASSERT_THAT(r->blocks[0], IsOk());
  EXPECT_EQ(got, testutil::RandomBytes(82, kBlock));
  auto deleted = n.client->Delete(n.ns, "", after);
  ASSERT_THAT(deleted, IsOk());
  EXPECT_EQ(*deleted, 2u);
}

TEST(StoreNodeConfigTest, SigtermDrainsAndExitsZero) {
  Node n = StartNode({"--warm-bytes", "4MiB", "--max-block-bytes", "1MiB"});
  ASSERT_NE(n.client, nullptr);
  ASSERT_THAT(PutBlocks(n, testutil::PromptChain(n.ns, 70, 2), kBlock, 70), IsOk());
  auto rc = n.process->Stop(absl::Seconds(20), SIGTERM);
  ASSERT_THAT(rc, IsOk());
  EXPECT_EQ(*rc, 0);
}

TEST(StoreNodeConfigTest, BadConfigurationExitsWithUsageError) {
  auto p =
      testutil::StartNode({"--warm-bytes", "1MiB", "--max-block-bytes", "4MiB"}, absl::Seconds(10));
  EXPECT_THAT(p, StatusIs(absl::StatusCode::kUnavailable, HasSubstr("code 2")));
  auto bad_policy = testutil::StartNode({"--cool-policy", "fifo"}, absl::Seconds(10));
  EXPECT_THAT(bad_policy, StatusIs(absl::StatusCode::kUnavailable, HasSubstr("code 2")));
}

}  // namespace
}  // namespace strata
