// The GPU agent's peer reads against a real strata-storenode (gpu_agent_fixture.h): blocks
// served from another agent's pool, what a reader does when peers hang or serve a slot the
// engine rewrote, peer tokens and their rotation, the cap on peer clients, TLS between agents.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "gpu_agent_fixture.h"

namespace strata::gpu_agent {
namespace {

// Directory entries of agents whose hosts hang (a listening socket that never answers; their
// entries live until their TTL): a load asks the first such peer and, once peers have cost it
// call_deadline by failing, takes the blocks of the others from the store without asking
// (peer_skips), a healthy peer's too, whose client it keeps for the next load. Before, it
// asked each in turn: four deadlines here, and every load queued behind it waited as long.
TEST_F(GpuAgentTest, HungPeersCostALoadOneDeadlineInAll) {
  constexpr uint32_t kPeers = 4, kEach = 4;
  int ephemeral_low = 32768;
  std::ifstream("/proc/sys/net/ipv4/ip_local_port_range") >> ephemeral_low;
  if (ephemeral_low < 20000) {
    GTEST_SKIP() << "ephemeral ports from " << ephemeral_low
                 << ": the hung peer's fixed port (10000-19999) may not sort first";
  }
  KvPoolSpec shape = SmallShape(KvLayout::kFlashAttn, KvDtype::kFp16);
  Side prefill = Make(Options("hung-peers", false), shape);  // offloads, publishes nothing
  auto hashes = Hashes(*prefill.agent, (kPeers + 1) * kEach, 31);
  const auto slots = Slots(0, (kPeers + 1) * kEach);
  ASSERT_TRUE(prefill.agent->OnBlocksComputed(Compute(prefill, hashes, slots)).ok());
  ASSERT_TRUE(prefill.agent->Flush(absl::Seconds(30)).ok());
  // A healthy agent holds and publishes the last part.
  const std::vector<ChainHash> last(hashes.end() - kEach, hashes.end());
  Side healthy = Make(Options("hung-peers", true), shape);
  ASSERT_TRUE(healthy.agent->OnBlocksComputed(Compute(healthy, last, Slots(0, kEach))).ok());
  ASSERT_TRUE(healthy.agent->Flush(absl::Seconds(30)).ok());
  // Each hung "agent" publishes one of the other parts, as its agent would have. One of them
  // is asked before the healthy one (a load asks peers in the order of their addresses).
  client::ClientOptions co;
  co.address = node_->address();
  auto c = client::StoreClient::Connect(co);
  ASSERT_TRUE(c.ok()) << c.status();
  std::vector<int> listeners;
  absl::Cleanup close_listeners = [&] {
    for (int fd : listeners) close(fd);
  };
  // The first listens on a fixed port below the ephemeral range (10000-19999: its address
  // sorts before any ephemeral port's), the others on ephemeral ports. Until 2026-11-29 the
  // first was an ephemeral port too, kept only when it sorted below the healthy agent's: with
  // that agent on a low port, 64 tries found none (CI failed on it).
  std::vector<std::string> hung;
  for (uint16_t fixed = 10000 + getpid() % 5000; hung.size() < kPeers;) {
    const bool first = hung.empty();
    ASSERT_LT(fixed, 20000) << "no free port in 10000-19999";
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    ASSERT_GE(fd, 0);
    listeners.push_back(fd);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = first ? htons(fixed++) : 0;
    socklen_t len = sizeof(addr);
    if (bind(fd, reinterpret_cast<sockaddr*>(&addr), len) != 0) {
      ASSERT_TRUE(first) << "bind: " << strerror(errno);
      continue;  // that port is taken: the next one
    }
    ASSERT_EQ(listen(fd, 16), 0);  // connections complete in the backlog; nothing answers
    ASSERT_EQ(getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len), 0);
    hung.push_back(absl::StrCat("127.0.0.1:", ntohs(addr.sin_port)));
  }
  ASSERT_LT(hung[0], healthy.agent->peer_address()) << "the first hung peer is not asked first";
  for (uint32_t p = 0; p < kPeers; ++p) {
    const std::span<const ChainHash> part(hashes.data() + p * kEach, kEach);
    const std::vector<uint64_t> sizes(kEach, prefill.pool.pool().block_bytes);
    auto published =
        (*c)->Publish(prefill.agent->ns(), "", part, sizes, {hung[p], "t"}, absl::Minutes(5));
    ASSERT_TRUE(published.ok()) << published.status();
  }
  AgentOptions impatient = Options("hung-peers", false);
  impatient.call_deadline = absl::Seconds(3);
  impatient.peer_retry_after = absl::Minutes(1);
  Side decode = Make(impatient, shape);
  // The healthy part alone: from its peer, whose client stays connected.
  ASSERT_EQ(LoadAll(decode, last, Slots(0, kEach))->loaded_prefix(), kEach);
  ASSERT_EQ(decode.agent->Stats().loaded_from_peer, kEach);
  ASSERT_EQ(decode.agent->Stats().peer_clients, 1u);
  // The whole prompt: the first hung peer is asked, the rest come from the store unasked.
  auto loaded = LoadAll(decode, hashes, slots);
  EXPECT_EQ(loaded->loaded_prefix(), (kPeers + 1) * kEach);
  EXPECT_EQ(Exact(decode, hashes, slots), (kPeers + 1) * kEach);
  const AgentStats st = decode.agent->Stats();
  EXPECT_EQ(st.loaded_from_store, (kPeers + 1) * kEach);
  EXPECT_EQ(st.peer_fallbacks, (kPeers + 1) * kEach);
  EXPECT_EQ(st.peer_skips, kPeers * kEach) << "hung peers asked one after another";
  EXPECT_EQ(st.peer_clients, 1u) << "the healthy peer's client went with the skip";
}

// An engine that rewrites a published slot before telling the agent (without OnBlocksFreed,
// or before the OnBlocksComputed that remaps it: the forward pass writes the slot first): a
// peer reading that block is refused DATA_LOSS (the slot no longer matches the checksum the
// agent recorded at offload, which is also the one it would send), the reader takes the block
// from the store, and the serving agent withdraws it from the directory. Before, the agent
// hashed whatever the slot held when it served: the wrong KV passed every check and reached
// the reader's engine.
TEST_F(GpuAgentTest, ASlotRewrittenBehindTheAgentsBackIsNeverServedAsTheOldBlock) {
  const KvPoolSpec shape = SmallShape(KvLayout::kFlashAttn, KvDtype::kFp16);
  Side prefill = Make(Options("rewritten", true), shape);
  auto hashes = Hashes(*prefill.agent, 8, 808);
  const auto slots = Slots(0, 8);
  ASSERT_TRUE(prefill.agent->OnBlocksComputed(Compute(prefill, hashes, slots)).ok());
  ASSERT_TRUE(prefill.agent->Flush(absl::Seconds(30)).ok());
  ASSERT_EQ(prefill.agent->Stats().published, 8u);
  // Slots 2 and 5 get another prompt's KV, the agent not told.
  auto other = Hashes(*prefill.agent, 8, 909);
  const uint64_t bb = prefill.pool.pool().block_bytes;
  std::vector<uint8_t> kv(bb);
  for (uint32_t slot : {2u, 5u}) {
    examples::BlockKv(other[slot], kv.data(), bb);
    ASSERT_TRUE(prefill.twin->Scatter(kv.data(), {&slot, 1}).ok());
  }
  Side decode = Make(Options("rewritten", false), shape);
  auto loaded = LoadAll(decode, hashes, Slots(10, 8));
  EXPECT_EQ(loaded->loaded_prefix(), 8u);
  EXPECT_EQ(Exact(decode, hashes, Slots(10, 8)), 8u) << "a rewritten slot was served as its block";
  EXPECT_EQ(loaded->blocks()[2].source, LoadSource::kStore);
  EXPECT_EQ(loaded->blocks()[5].source, LoadSource::kStore);
  EXPECT_EQ(loaded->blocks()[3].source, LoadSource::kPeer);
  EXPECT_EQ(decode.agent->Stats().loaded_from_peer, 6u);
  EXPECT_EQ(decode.agent->Stats().peer_fallbacks, 2u);
  // The serving agent found the two slots rewritten when they were read and withdrew their
  // entries: the next reader takes those blocks from the store without asking the peer.
  EXPECT_EQ(prefill.agent->Stats().served_rewritten, 2u);
  EXPECT_EQ(prefill.agent->Stats().published, 6u);
  client::ClientOptions co;
  co.address = node_->address();
  auto c = client::StoreClient::Connect(co);
  ASSERT_TRUE(c.ok()) << c.status();
  for (absl::Time end = absl::Now() + absl::Seconds(10); absl::Now() < end;) {
    auto r = (*c)->LookupEach(prefill.agent->ns(), "", {&hashes[2], 1});
    if (r.ok() && (*r)[0].peers.empty()) break;
    absl::SleepFor(absl::Milliseconds(20));
  }
  Side next = Make(Options("rewritten", false), shape);
  auto again = LoadAll(next, hashes, Slots(10, 8));
  EXPECT_EQ(Exact(next, hashes, Slots(10, 8)), 8u);
  EXPECT_EQ(next.agent->Stats().loaded_from_peer, 6u);
  EXPECT_EQ(next.agent->Stats().peer_fallbacks, 0u) << "the withdrawn blocks were asked for";
}

// One block in two slots (two requests with one prompt): one directory entry, counted once;
// freeing one slot leaves it served from the other, freeing both withdraws it. Before, the
// agent mapped the hash to the newer slot only: once that was freed, peers were told NOT_FOUND
// for a block still advertised and held.
TEST_F(GpuAgentTest, ABlockInTwoSlotsIsServedUntilBothAreFreed) {
  const KvPoolSpec shape = SmallShape(KvLayout::kFlashAttn, KvDtype::kFp16);
  Side prefill = Make(Options("twice", true), shape);
  auto hashes = Hashes(*prefill.agent, 4, 555);
  ASSERT_TRUE(prefill.agent->OnBlocksComputed(Compute(prefill, hashes, Slots(0, 4))).ok());
  ASSERT_TRUE(prefill.agent->OnBlocksComputed(Compute(prefill, hashes, Slots(10, 4))).ok());
  ASSERT_TRUE(prefill.agent->Flush(absl::Seconds(30)).ok());
  EXPECT_EQ(prefill.agent->Stats().published, 4u);
  ASSERT_TRUE(prefill.agent->OnBlocksFreed(Slots(10, 4)).ok());
  EXPECT_EQ(prefill.agent->Stats().published, 4u);
  Side decode = Make(Options("twice", false), shape);
  auto loaded = LoadAll(decode, hashes, Slots(20, 4));
  EXPECT_EQ(loaded->loaded_prefix(), 4u);
  for (const BlockLoad& b : loaded->blocks()) EXPECT_EQ(b.source, LoadSource::kPeer);
  EXPECT_EQ(Exact(decode, hashes, Slots(20, 4)), 4u);
  ASSERT_TRUE(prefill.agent->OnBlocksFreed(Slots(0, 4)).ok());
  EXPECT_EQ(prefill.agent->Stats().published, 0u);
}

// The peer token is drawn anew every peer_token_rotation (5 s here) and the entries carry the
// new one; the old one is still served for publish_ttl (4 s; with 2 s a stall of a second on a
// busy machine had the test see the new token too late to use the old one), then refused. A reader
// that loaded with the old token loads again with the new one, every block from the peer.
TEST_F(GpuAgentTest, PeerTokensRotateAndTheOldOneLapses) {
  AgentOptions o = Options("rotate", true);
  o.metrics_listen = "127.0.0.1:0";
  o.peer_token_rotation = absl::Seconds(5);
  o.publish_ttl = absl::Seconds(4);
  Side prefill = Make(o, SmallShape(KvLayout::kFlashAttn, KvDtype::kFp16));
  auto hashes = Hashes(*prefill.agent, 8, 777);
  ASSERT_TRUE(prefill.agent->OnBlocksComputed(Compute(prefill, hashes, Slots(0, 8))).ok());
  ASSERT_TRUE(prefill.agent->Flush(absl::Seconds(30)).ok());
  auto c = client::StoreClient::Connect({.address = node_->address()});
  ASSERT_TRUE(c.ok());
  auto token_of = [&](size_t i) {
    auto r = (*c)->LookupEach(prefill.agent->ns(), "", {&hashes[i], 1});
    return r.ok() && (*r)[0].peers.size() == 1 ? (*r)[0].peers[0].token : std::string();
  };
  // Waits (10 s at most) for an entry whose token is not `than`; "" if none came.
  auto token_other_than = [&](const std::string& than) {
    for (absl::Time until = absl::Now() + absl::Seconds(10); absl::Now() < until;
         absl::SleepFor(absl::Milliseconds(20))) {
      if (std::string t = token_of(5); !t.empty() && t != than) return t;
    }
    return std::string();
  };
  auto peer_answer = [&](const std::string& token) {
    client::ClientOptions po;
    po.address = prefill.agent->peer_address();
    po.data_plane = client::ClientOptions::DataPlane::kInline;
    po.token = token;
    auto peer = client::StoreClient::Connect(po);
    return peer.ok() ? (*peer)->Stats().status() : peer.status();
  };
  const std::string first = token_other_than("");
  ASSERT_THAT(first, ::testing::MatchesRegex("[0-9a-f]{64}"));
  Side decode = Make(Options("rotate", false), SmallShape(KvLayout::kSplitKv, KvDtype::kFp16));
  auto loaded = LoadAll(decode, hashes, Slots(4, 8));
  EXPECT_EQ(Exact(decode, hashes, Slots(4, 8)), 8u);
  EXPECT_EQ(decode.agent->Stats().loaded_from_peer, 8u);

  const std::string next = token_other_than(first);
  ASSERT_THAT(next, ::testing::MatchesRegex("[0-9a-f]{64}")) << "still the first token";
  EXPECT_TRUE(peer_answer(first).ok()) << "refused before its grace ended";
  EXPECT_TRUE(peer_answer(next).ok());
  EXPECT_GE(prefill.agent->Stats().peer_token_rotations, 1u);
  absl::Status old = absl::OkStatus();
  for (absl::Time until = absl::Now() + absl::Seconds(10); old.ok() && absl::Now() < until;) {
    absl::SleepFor(absl::Milliseconds(100));
    old = peer_answer(first);
  }
  EXPECT_TRUE(absl::IsUnauthenticated(old)) << old;
  // The reader's client holds the lapsed token; the entries name the new one.
  loaded = LoadAll(decode, hashes, Slots(12, 8));
  EXPECT_EQ(loaded->loaded_prefix(), 8u);
  EXPECT_EQ(Exact(decode, hashes, Slots(12, 8)), 8u);
  EXPECT_EQ(decode.agent->Stats().loaded_from_peer, 16u);
  EXPECT_EQ(decode.agent->Stats().peer_fallbacks, 0u);
  auto metrics = testutil::HttpGet(prefill.agent->metrics_address(), "/metrics");
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  EXPECT_THAT(metrics->second,
              ::testing::ContainsRegex("strata_agent_peer_token_rotations_total [1-9]"));
  EXPECT_THAT(metrics->second,
              ::testing::HasSubstr("strata_agent_peer_token_rotation_failures_total 0\n"));
}

// A reader keeps at most max_peer_clients peer clients (each a gRPC channel and a UCX
// context): loading from a second peer closes the client of the first, which is connected
// again when next needed; every block still comes from its peer. Before, a client per peer
// stayed for the agent's life.
TEST_F(GpuAgentTest, PeerClientsAreCappedAndTheOneUsedLongestAgoGoes) {
  const KvPoolSpec shape = SmallShape(KvLayout::kFlashAttn, KvDtype::kFp16);
  Side a = Make(Options("capped", true), shape);
  Side b = Make(Options("capped", true), shape);
  const auto from_a = Hashes(*a.agent, 4, 901), from_b = Hashes(*b.agent, 4, 902);
  ASSERT_TRUE(a.agent->OnBlocksComputed(Compute(a, from_a, Slots(0, 4))).ok());
  ASSERT_TRUE(b.agent->OnBlocksComputed(Compute(b, from_b, Slots(0, 4))).ok());
  ASSERT_TRUE(a.agent->Flush(absl::Seconds(30)).ok());
  ASSERT_TRUE(b.agent->Flush(absl::Seconds(30)).ok());
  AgentOptions o = Options("capped", false);
  o.max_peer_clients = 1;
  Side reader = Make(o, shape);
  LoadAll(reader, from_a, Slots(0, 4));
  LoadAll(reader, from_b, Slots(4, 4));
  EXPECT_EQ(reader.agent->Stats().peer_clients, 1u);
  LoadAll(reader, from_a, Slots(8, 4));
  EXPECT_EQ(reader.agent->Stats().peer_clients, 1u);
  EXPECT_EQ(reader.agent->Stats().loaded_from_peer, 12u);
  EXPECT_EQ(Exact(reader, from_a, Slots(8, 4)), 4u);
  EXPECT_EQ(Exact(reader, from_b, Slots(4, 4)), 4u);
}

// Agents may read each other over TLS: a reader with the CA loads every block from the TLS
// peer, bit-exact; a plaintext reader cannot talk to it and loads them from the store instead.
TEST_F(GpuAgentTest, PeersReadOverTlsAndAPlaintextReaderFallsBackToTheStore) {
  const char* src = std::getenv("STRATA_SOURCE_DIR");
  ASSERT_NE(src, nullptr) << "run through ctest (STRATA_SOURCE_DIR)";
  const std::string certs = absl::StrCat(::testing::TempDir(), "strata-peer-tls-", getpid());
  const std::string make =
      absl::StrCat("bash ", src, "/scripts/make_test_certs.sh ", certs, " >/dev/null");
  ASSERT_EQ(std::system(make.c_str()), 0) << make;
  AgentOptions served = Options("peer-tls", true);
  served.peer_tls_cert = certs + "/server.crt";  // names 127.0.0.1, the advertised host
  served.peer_tls_key = certs + "/server.key";
  Side prefill = Make(served, SmallShape(KvLayout::kFlashAttn, KvDtype::kFp16));
  auto hashes = Hashes(*prefill.agent, 8, 4242);
  ASSERT_TRUE(prefill.agent->OnBlocksComputed(Compute(prefill, hashes, Slots(0, 8))).ok());
  ASSERT_TRUE(prefill.agent->Flush(absl::Seconds(30)).ok());
  ASSERT_EQ(prefill.agent->Stats().published, 8u);

  AgentOptions tls_reader = Options("peer-tls", false);
  tls_reader.peer_tls_ca = certs + "/ca.crt";
  Side a = Make(tls_reader, SmallShape(KvLayout::kSplitKv, KvDtype::kFp16));
  auto loaded = LoadAll(a, hashes, Slots(4, 8));
  EXPECT_EQ(loaded->loaded_prefix(), 8u);
  EXPECT_EQ(Exact(a, hashes, Slots(4, 8)), 8u);
  EXPECT_EQ(a.agent->Stats().loaded_from_peer, 8u);
  EXPECT_EQ(a.agent->Stats().peer_fallbacks, 0u);

  AgentOptions plain_reader = Options("peer-tls", false);
  plain_reader.peer_retry_after = absl::Minutes(10);
  Side b = Make(plain_reader, SmallShape(KvLayout::kSplitKv, KvDtype::kFp16));
  loaded = LoadAll(b, hashes, Slots(4, 8));
  EXPECT_EQ(loaded->loaded_prefix(), 8u);
  EXPECT_EQ(Exact(b, hashes, Slots(4, 8)), 8u);
  EXPECT_EQ(b.agent->Stats().loaded_from_peer, 0u);
  EXPECT_EQ(b.agent->Stats().loaded_from_store, 8u);
  EXPECT_EQ(b.agent->Stats().peer_fallbacks, 8u);  // it did try the peer first
  EXPECT_EQ(b.agent->Stats().peer_skips, 0u);
  // Loaded again: the peer that just failed is not tried (nor waited for) a second time.
  loaded = LoadAll(b, hashes, Slots(12, 8));
  EXPECT_EQ(Exact(b, hashes, Slots(12, 8)), 8u);
  EXPECT_EQ(b.agent->Stats().loaded_from_store, 16u);
  EXPECT_EQ(b.agent->Stats().peer_skips, 8u);
  EXPECT_EQ(prefill.agent->Stats().served_to_peers, 8u);
  std::filesystem::remove_all(certs);
}

}  // namespace
}  // namespace strata::gpu_agent
