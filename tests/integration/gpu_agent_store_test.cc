// A GPU agent's offloads and directory entries as the store sees them, with other writers and
// readers of the same blocks about (gpu_agent_fixture.h: a real strata-storenode, the host
// twin for the GPU).
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gpu_agent_fixture.h"
#include "grpcpp/grpcpp.h"
#include "strata/client/store_client.h"
#include "strata/testutil/node_process.h"
#include "strata/v1/store.grpc.pb.h"

namespace strata::gpu_agent {
namespace {

// Puts the node has been asked for, either way (inline or over UCX).
uint64_t PutCalls(const client::LocalNode& node) {
  return testutil::OpCount(node, "begin_put") + testutil::OpCount(node, "put_data");
}

// A block another writer is still putting (a second prefill of the same prompt, or one that
// died mid-put) is not offloaded until that put settles: here the other writer gives up, and
// the agent's blocks are stored. Before 2026-11-29 the agent took the node's "being written"
// as stored: Flush returned at once, and after the abort the store held none of the 4.
TEST_F(GpuAgentTest, ABlockAnotherWriterIsPuttingIsOffloadedOnceThatPutSettles) {
  Side s = Make(Options("being-written", false), SmallShape(KvLayout::kFlashAttn, KvDtype::kFp16));
  const std::vector<ChainHash> hashes = Hashes(*s.agent, 4, 77);
  auto stub = v1::StoreService::NewStub(
      grpc::CreateChannel(node_->address(), grpc::InsecureChannelCredentials()));
  v1::BeginPutRequest reserve;
  reserve.set_namespace_id(s.agent->ns().id);
  reserve.set_ttl_ms(20000);
  for (const ChainHash& h : hashes) {
    v1::PutBlock* b = reserve.add_blocks();
    b->set_chain_hash(h.ToBytes());
    b->set_size(s.agent->ns().spec.block_bytes);
  }
  v1::BeginPutResponse reserved;
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub->BeginPut(&ctx, reserve, &reserved).ok());
    ASSERT_NE(reserved.reservation_id(), 0u);
  }
  const uint64_t puts = PutCalls(*node_);
  ASSERT_TRUE(s.agent->OnBlocksComputed(Compute(s, hashes, Slots(0, 4))).ok());
  for (int i = 0; i < 200 && PutCalls(*node_) == puts; ++i) absl::SleepFor(absl::Milliseconds(25));
  ASSERT_GT(PutCalls(*node_), puts) << "the agent never put";
  // The other put holds the blocks: the agent's are not stored yet.
  EXPECT_EQ(s.agent->Flush(absl::Milliseconds(300)).code(), absl::StatusCode::kDeadlineExceeded);
  {
    v1::AbortPutRequest abort;
    abort.set_reservation_id(reserved.reservation_id());
    v1::AbortPutResponse aborted;
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub->AbortPut(&ctx, abort, &aborted).ok());
  }
  ASSERT_TRUE(s.agent->Flush(absl::Seconds(30)).ok());
  ASSERT_TRUE(s.agent->OnBlocksFreed(Slots(0, 4)).ok());
  auto matched = s.agent->MatchedBlocks(hashes);
  ASSERT_TRUE(matched.ok()) << matched.status();
  EXPECT_EQ(*matched, 4u);
  const AgentStats st = s.agent->Stats();
  EXPECT_EQ(st.offloaded, 4u);
  EXPECT_EQ(st.offload_failed, 0u);
}

// Connects a plain client to `node` and registers the agent's namespace there.
struct Reader {
  std::unique_ptr<client::StoreClient> client;
  client::Namespace ns;
};
Reader ReaderOf(const client::LocalNode& node, const GpuAgent& agent) {
  Reader r;
  client::ClientOptions co;
  co.address = node.address();
  auto c = client::StoreClient::Connect(co);
  EXPECT_TRUE(c.ok()) << c.status();
  if (!c.ok()) return r;
  r.client = std::move(*c);
  auto ns = r.client->RegisterNamespace(agent.ns().spec);
  EXPECT_TRUE(ns.ok()) << ns.status();
  if (ns.ok()) r.ns = *ns;
  return r;
}

// How many of `hashes` the node's directory lists a GPU location for.
size_t Advertised(Reader& r, const std::vector<ChainHash>& hashes) {
  auto each = r.client->LookupEach(r.ns, "", hashes);
  EXPECT_TRUE(each.ok()) << each.status();
  size_t n = 0;
  for (const client::BlockLocation& l : each.value_or(std::vector<client::BlockLocation>{})) {
    n += !l.peers.empty();
  }
  return n;
}

// How many of `hashes` are advertised once `want` are, or 5 s passed (Flush waits for the
// publishes since the sixth session of 2026-11-29; before, they could land after it).
size_t AdvertisedSoon(Reader& r, const std::vector<ChainHash>& hashes, size_t want) {
  size_t n = Advertised(r, hashes);
  for (int i = 0; i < 200 && n < want; ++i) {
    absl::SleepFor(absl::Milliseconds(25));
    n = Advertised(r, hashes);
  }
  return n;
}

// A writer's Delete reaches the blocks a GPU agent holds too: the node drops their directory
// entries and refuses them while it remembers the delete, and the agent stops refreshing and
// serving them. Before 2026-11-29 a Lookup after the Delete still matched them (hot) and a
// decode agent loaded them from the prefill agent's GPU. The chain's first 4 blocks, not
// deleted, still load.
TEST_F(GpuAgentTest, ADeletedBlockIsNoLongerAdvertisedOrServedFromAGpu) {
  const KvPoolSpec shape = SmallShape(KvLayout::kFlashAttn, KvDtype::kFp16);
  AgentOptions po = Options("deleted-hot", true);
  po.publish_ttl = absl::Seconds(3);  // refreshed every second
  Side prefill = Make(po, shape);
  const std::vector<ChainHash> hashes = Hashes(*prefill.agent, 8, 8181);
  ASSERT_TRUE(prefill.agent->OnBlocksComputed(Compute(prefill, hashes, Slots(0, 8))).ok());
  ASSERT_TRUE(prefill.agent->Flush(absl::Seconds(30)).ok());
  Reader r = ReaderOf(*node_, *prefill.agent);
  ASSERT_NE(r.client, nullptr);
  ASSERT_EQ(AdvertisedSoon(r, hashes, 8), 8u);
  const std::vector<ChainHash> tail(hashes.begin() + 4, hashes.end());
  auto deleted = r.client->Delete(r.ns, "", tail);
  ASSERT_TRUE(deleted.ok()) << deleted.status();
  EXPECT_EQ(*deleted, 4u);
  // Past the prefill agent's next refresh of its entries.
  const uint64_t publishes = testutil::OpCount(*node_, "publish");
  for (int i = 0; i < 200 && testutil::OpCount(*node_, "publish") == publishes; ++i) {
    absl::SleepFor(absl::Milliseconds(25));
  }
  EXPECT_EQ(Advertised(r, hashes), 4u);
  auto look = r.client->Lookup(r.ns, "", hashes);
  ASSERT_TRUE(look.ok()) << look.status();
  EXPECT_EQ(look->matched_blocks, 4u);
  Side decode = Make(Options("deleted-hot", false), shape);
  EXPECT_EQ(LoadAll(decode, hashes, Slots(8, 8))->loaded_prefix(), 4u);
}

// A hash whose entry was to be removed (its slot freed) while another slot's copy of it was
// being offloaded keeps that copy's entry: the removal queued before the publish is dropped.
// Before 2026-11-29 it was sent after the publish and took the live entry away (until the
// next refresh; hot-only blocks were recomputed meanwhile).
TEST_F(GpuAgentTest, AnEntryPublishedAgainOutlivesTheRemovalQueuedBeforeIt) {
  auto node = testutil::StartNode({"--warm-bytes", "256MiB", "--ucx-tls", "tcp"});
  ASSERT_TRUE(node.ok()) << node.status();
  AgentOptions o = Options("republished", true);
  o.store.address = (*node)->address();
  o.call_deadline = absl::Seconds(5);
  Side s = Make(o, SmallShape(KvLayout::kFlashAttn, KvDtype::kFp16));
  const std::vector<ChainHash> hashes = Hashes(*s.agent, 4, 4242);
  ASSERT_TRUE(s.agent->OnBlocksComputed(Compute(s, hashes, Slots(0, 4))).ok());
  ASSERT_TRUE(s.agent->Flush(absl::Seconds(30)).ok());
  Reader r = ReaderOf(**node, *s.agent);
  ASSERT_NE(r.client, nullptr);
  ASSERT_EQ(AdvertisedSoon(r, hashes, 4), 4u);
  {
    // The node stops answering, so the second copies' put is in flight when slots 0..3 go.
    testutil::Freeze frozen((*node)->pid());
    ASSERT_TRUE(frozen.stopped());
    ASSERT_TRUE(s.agent->OnBlocksComputed(Compute(s, hashes, Slots(10, 4))).ok());
    absl::SleepFor(absl::Milliseconds(300));
    ASSERT_TRUE(s.agent->OnBlocksFreed(Slots(0, 4)).ok());
  }
  ASSERT_TRUE(s.agent->Flush(absl::Seconds(30)).ok());
  // One more offload round, which has sent (or dropped) the removals queued before it: a
  // block computed now, flushed (a refresh comes every publish_ttl / 3 = 10 s only).
  const std::vector<ChainHash> other = Hashes(*s.agent, 1, 4343);
  ASSERT_TRUE(s.agent->OnBlocksComputed(Compute(s, other, Slots(20, 1))).ok());
  ASSERT_TRUE(s.agent->Flush(absl::Seconds(30)).ok());
  EXPECT_EQ(Advertised(r, hashes), 4u);
  EXPECT_EQ(s.agent->Stats().published, 5u);  // and the other block
}

// Two agents of one tenant that spell its scope differently ("default", the tenant's name
// without auth, and "", the caller's own) read each other's GPUs: the node resolves both to
// one scope and hands out the token. Before 2026-11-29 the serving agent compared the text
// and answered every read NOT_FOUND, and the decode side read all 8 blocks from the store.
TEST_F(GpuAgentTest, AgentsSpellingOneScopeDifferentlyReadEachOthersBlocks) {
  const KvPoolSpec shape = SmallShape(KvLayout::kFlashAttn, KvDtype::kFp16);
  AgentOptions po = Options("scope-spelling", true);
  po.scope = "default";
  Side prefill = Make(po, shape);
  Side decode = Make(Options("scope-spelling", false), shape);  // scope ""
  const std::vector<ChainHash> hashes = Hashes(*prefill.agent, 8, 901);
  ASSERT_TRUE(prefill.agent->OnBlocksComputed(Compute(prefill, hashes, Slots(0, 8))).ok());
  ASSERT_TRUE(prefill.agent->Flush(absl::Seconds(30)).ok());
  Reader r = ReaderOf(*node_, *prefill.agent);
  ASSERT_NE(r.client, nullptr);
  ASSERT_EQ(AdvertisedSoon(r, hashes, 8), 8u);
  auto loaded = LoadAll(decode, hashes, Slots(8, 8));
  size_t from_peer = 0;
  for (const BlockLoad& b : loaded->blocks()) {
    from_peer += b.status.ok() && b.source == LoadSource::kPeer;
  }
  EXPECT_EQ(from_peer, 8u);
  EXPECT_EQ(decode.agent->Stats().peer_fallbacks, 0u);
  EXPECT_EQ(Exact(decode, hashes, Slots(8, 8)), 8u);
}

// A loopback address that accepts connections and never answers (a hung host), open until
// *fd is closed.
std::string HungAddress(int* fd) {
  *fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  if (*fd < 0 || bind(*fd, reinterpret_cast<sockaddr*>(&addr), len) != 0 || listen(*fd, 16) != 0 ||
      getsockname(*fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    return "";
  }
  return absl::StrCat("127.0.0.1:", ntohs(addr.sin_port));
}

// A hung agent: an address that never answers, open while this lives.
struct HungPeer {
  HungPeer() : address(HungAddress(&fd)) {}
  ~HungPeer() {
    if (fd >= 0) close(fd);
  }
  int fd = -1;
  std::string address;
};

// Publishes `hashes` (blocks of `block_bytes`) at `peer` through r, for 5 minutes.
void AdvertiseAt(const HungPeer& peer, const Reader& r, const std::vector<ChainHash>& hashes,
                 uint64_t block_bytes) {
  ASSERT_FALSE(peer.address.empty());
  const std::vector<uint64_t> sizes(hashes.size(), block_bytes);
  auto published =
      r.client->Publish(r.ns, "", hashes, sizes, {peer.address, "t"}, absl::Minutes(5));
  ASSERT_TRUE(published.ok()) << published.status();
}

// A block two agents advertise is read from the second once the first, listed first, was
// found unreachable (a dead agent's entries live until their TTL). Before 2026-11-29 only
// the first location was tried: the blocks came from the store for as long as that entry
// lived, although a live agent held them.
TEST_F(GpuAgentTest, ABlockListedAtADeadPeerFirstIsReadFromALiveOne) {
  const KvPoolSpec shape = SmallShape(KvLayout::kFlashAttn, KvDtype::kFp16);
  Side prefill = Make(Options("second-peer", true), shape);
  const std::vector<ChainHash> hashes = Hashes(*prefill.agent, 4, 515);
  Reader r = ReaderOf(*node_, *prefill.agent);
  ASSERT_NE(r.client, nullptr);
  HungPeer hung;
  ASSERT_NO_FATAL_FAILURE(AdvertiseAt(hung, r, hashes, prefill.pool.pool().block_bytes));
  // The live agent computes (and publishes) the same blocks after: listed second.
  ASSERT_TRUE(prefill.agent->OnBlocksComputed(Compute(prefill, hashes, Slots(0, 4))).ok());
  ASSERT_TRUE(prefill.agent->Flush(absl::Seconds(30)).ok());
  for (int i = 0; i < 200; ++i) {
    auto each = r.client->LookupEach(r.ns, "", hashes);
    if (each.ok() && (*each)[0].peers.size() == 2 && (*each)[3].peers.size() == 2) break;
    absl::SleepFor(absl::Milliseconds(25));
  }
  AgentOptions impatient = Options("second-peer", false);
  impatient.call_deadline = absl::Seconds(3);
  impatient.peer_retry_after = absl::Minutes(1);
  Side decode = Make(impatient, shape);
  // The first load asks the hung peer and takes the blocks from the store.
  ASSERT_EQ(LoadAll(decode, hashes, Slots(0, 4))->loaded_prefix(), 4u);
  ASSERT_EQ(decode.agent->Stats().loaded_from_peer, 0u);
  // The next one reads them from the live agent.
  ASSERT_EQ(LoadAll(decode, hashes, Slots(4, 4))->loaded_prefix(), 4u);
  EXPECT_EQ(decode.agent->Stats().loaded_from_peer, 4u);
  EXPECT_EQ(Exact(decode, hashes, Slots(4, 4)), 4u);
}

// What two load tests set up: 4 blocks stored by an agent that publishes nothing, advertised
// at a hung peer instead, and a decode agent whose calls wait `deadline`. (Derived from the
// fixture only to reach its helpers.)
struct HungPeerSetup : GpuAgentTest {
  struct Case {
    Side prefill;
    std::vector<ChainHash> hashes;
    Reader r;
    HungPeer hung;
    Side decode;
  };

  static void Prepare(const client::LocalNode& node, const std::string& model, uint32_t salt,
                      absl::Duration deadline, Case* c) {
    const KvPoolSpec shape = SmallShape(KvLayout::kFlashAttn, KvDtype::kFp16);
    c->prefill = Make(Options(model, false), shape);
    c->hashes = Hashes(*c->prefill.agent, 4, salt);
    ASSERT_TRUE(
        c->prefill.agent->OnBlocksComputed(Compute(c->prefill, c->hashes, Slots(0, 4))).ok());
    ASSERT_TRUE(c->prefill.agent->Flush(absl::Seconds(30)).ok());
    c->r = ReaderOf(node, *c->prefill.agent);
    ASSERT_NE(c->r.client, nullptr);
    ASSERT_NO_FATAL_FAILURE(
        AdvertiseAt(c->hung, c->r, c->hashes, c->prefill.pool.pool().block_bytes));
    AgentOptions impatient = Options(model, false);
    impatient.call_deadline = deadline;
    c->decode = Make(impatient, shape);
  }
};

// A load whose slots the engine freed while it waited behind another load asks the store for
// nothing: its blocks end CANCELLED. Here the first load waits out a hung peer (call_deadline
// 1 s) while the second's slots are freed. Before 2026-11-29 the second still made its Lookup
// and Get, and dropped the blocks only after they came.
TEST_F(GpuAgentTest, ALoadWhoseSlotsWereFreedWhileItWaitedAsksTheStoreNothing) {
  HungPeerSetup::Case c;
  ASSERT_NO_FATAL_FAILURE(HungPeerSetup::Prepare(*node_, "freed-early", 616, absl::Seconds(1), &c));
  auto& [prefill, hashes, r, hung, decode] = c;
  const uint64_t lookups = testutil::OpCount(*node_, "lookup");
  auto first = decode.agent->Load(hashes, Slots(0, 4));
  ASSERT_TRUE(first.ok()) << first.status();
  auto second = decode.agent->Load(hashes, Slots(4, 4));
  ASSERT_TRUE(second.ok()) << second.status();
  ASSERT_TRUE(decode.agent->OnBlocksFreed(Slots(4, 4)).ok());
  ASSERT_TRUE((*first)->Wait(absl::Seconds(60)));
  ASSERT_TRUE((*second)->Wait(absl::Seconds(60)));
  EXPECT_EQ((*first)->loaded_prefix(), 4u);  // from the store, after the hung peer
  EXPECT_EQ((*second)->loaded_prefix(), 0u);
  EXPECT_EQ(testutil::OpCount(*node_, "lookup") - lookups, 1u) << "the first load's only";
}

// A load waiting on a peer that stopped answering, whose slots the engine frees meanwhile:
// those blocks are read from nowhere and end CANCELLED, not counted as peer fallbacks. Until
// the sixth session of 2026-11-29 they counted in peer_fallbacks (and were handed to the
// store fetch, which skipped them).
TEST_F(GpuAgentTest, SlotsFreedWhileAPeerHangsAreNotCountedAsFallbacks) {
  HungPeerSetup::Case c;
  ASSERT_NO_FATAL_FAILURE(
      HungPeerSetup::Prepare(*node_, "freed-at-peer", 717, absl::Seconds(2), &c));
  auto& [prefill, hashes, r, hung, decode] = c;
  auto load = decode.agent->Load(hashes, Slots(0, 4));
  ASSERT_TRUE(load.ok()) << load.status();
  // The load is at the peer once a connection waits on the peer's socket.
  pollfd at_peer{hung.fd, POLLIN, 0};
  ASSERT_EQ(poll(&at_peer, 1, 10000), 1) << "the load never called the peer";
  ASSERT_TRUE(decode.agent->OnBlocksFreed(Slots(0, 4)).ok());
  ASSERT_TRUE((*load)->Wait(absl::Seconds(60)));
  for (const BlockLoad& b : (*load)->blocks()) {
    EXPECT_EQ(b.status.code(), absl::StatusCode::kCancelled) << b.status;
  }
  const AgentStats st = decode.agent->Stats();
  EXPECT_EQ(st.peer_fallbacks, 0u) << "freed blocks counted as taken from the store instead";
  EXPECT_EQ(st.loaded_from_store, 0u);
  EXPECT_EQ(st.loaded_from_peer, 0u);
}

}  // namespace
}  // namespace strata::gpu_agent
