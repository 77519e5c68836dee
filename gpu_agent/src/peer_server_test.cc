// The GPU agent's peer server against a peer of this test's own (real UCX over tcp/lo): only
// callers presenting the server's token (or, after a rotation, the one before it while its
// grace lasts) are served, and data channels a peer leaves open are
// closed once idle, so peers that die cannot use up the server's channels.
#include "peer_server.h"

#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "strata/common/checksum.h"
#include "strata/testutil/status_matchers.h"
#include "strata/transport/context.h"
#include "strata/transport/worker.h"
#include "strata/v1/store.grpc.pb.h"

namespace strata::gpu_agent {
namespace {

using ::testing::HasSubstr;
using testutil::IsOk;

const std::string kToken = RandomPeerToken();

// A call context sending `authorization: <value>` (no such header when empty).
std::unique_ptr<grpc::ClientContext> WithAuthorization(const std::string& value) {
  auto ctx = std::make_unique<grpc::ClientContext>();
  if (!value.empty()) ctx->AddMetadata("authorization", value);
  return ctx;
}

// A call context presenting `token` as a bearer token.
std::unique_ptr<grpc::ClientContext> As(const std::string& token) {
  return WithAuthorization("Bearer " + token);
}

uint64_t DataChannels(v1::StoreService::Stub& stub) {
  v1::StatsResponse stats;
  EXPECT_TRUE(stub.Stats(As(kToken).get(), v1::StatsRequest(), &stats).ok());
  return stats.data_channels();
}

PeerServerOptions Options() {
  PeerServerOptions o;
  o.listen = "127.0.0.1:0";
  o.ucx_tls = "tcp";
  o.namespace_id = 1;
  o.block_bytes = 4096;
  o.max_blocks = 4;
  o.node_id = "agent-under-test";
  o.token = kToken;
  return o;
}

// Serves blocks filled with 0x5a; holds none when `hold` is false.
absl::StatusOr<std::unique_ptr<PeerServer>> Start(const PeerServerOptions& o,
                                                  std::vector<uint8_t>& region, bool hold) {
  return PeerServer::Start(o, region.data(),
                           [hold, bytes = o.block_bytes](std::span<const ChainHash> hashes,
                                                         uint8_t* out, uint64_t* checksums) {
                             if (hold) std::memset(out, 0x5a, hashes.size() * bytes);
                             for (size_t i = 0; hold && i < hashes.size(); ++i) {
                               checksums[i] = BlockChecksum(out + i * bytes, bytes);
                             }
                             return std::vector<absl::Status>(
                                 hashes.size(),
                                 hold ? absl::OkStatus() : absl::NotFoundError("not held"));
                           });
}

std::unique_ptr<v1::StoreService::Stub> StubFor(const PeerServer& server) {
  return v1::StoreService::NewStub(grpc::CreateChannel(absl::StrCat("127.0.0.1:", server.port()),
                                                       grpc::InsecureChannelCredentials()));
}

// ConnectData from a new UCX worker of `context` (kept in *workers): the server's answer.
grpc::Status ConnectFrom(v1::StoreService::Stub& stub, transport::Context& context,
                         std::vector<std::unique_ptr<transport::Worker>>* workers,
                         v1::ConnectDataResponse* channel) {
  auto worker = context.CreateWorker();
  EXPECT_THAT(worker, IsOk());
  if (!worker.ok()) return grpc::Status(grpc::StatusCode::INTERNAL, "no worker");
  v1::ConnectDataRequest req;
  req.add_worker_addresses((*worker)->Address());
  req.set_ucx_tcp_tx_seg_bytes(context.tcp_segments().tx);
  req.set_ucx_tcp_rx_seg_bytes(context.tcp_segments().rx);
  workers->push_back(std::move(*worker));
  return stub.ConnectData(As(kToken).get(), req, channel);
}

// A peer of this test's own: a UCX context over tcp and the workers its channels use.
struct TestPeer {
  std::unique_ptr<transport::Context> context;
  std::vector<std::unique_ptr<transport::Worker>> workers;
};

// A new TestPeer (*peer) opens a data channel to the server behind `stub`.
void OpenChannel(v1::StoreService::Stub& stub, TestPeer* peer, v1::ConnectDataResponse* channel) {
  auto context = transport::Context::Create(transport::TransportOptions{"tcp", {}, true});
  ASSERT_THAT(context, IsOk());
  peer->context = std::move(*context);
  grpc::Status s = ConnectFrom(stub, *peer->context, &peer->workers, channel);
  ASSERT_TRUE(s.ok()) << s.error_message();
}

TEST(PeerServerTest, OnlyCallersWithTheTokenAreServed) {
  EXPECT_EQ(kToken.size(), 64u);
  EXPECT_NE(RandomPeerToken(), kToken);
  PeerServerOptions no_token = Options();
  no_token.token = "";
  std::vector<uint8_t> region(4 * 4096);
  EXPECT_THAT(Start(no_token, region, true).status(),
              testutil::StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("token")));

  const PeerServerOptions o = Options();
  auto server = Start(o, region, true);
  ASSERT_THAT(server, IsOk());
  auto stub = StubFor(**server);
  v1::BeginGetRequest get;
  get.set_namespace_id(1);
  get.set_scope(o.scope);
  get.set_include_payload(true);
  get.add_chain_hashes(std::string(kChainHashBytes, '\x07'));
  std::string wrong = kToken;
  wrong.back() = wrong.back() == '0' ? '1' : '0';  // same length, last character off
  // No header, a wrong token of the right length, a short one, the right token without the
  // scheme or with another spelling of it: every call is refused.
  for (const std::string& value : {std::string(), "Bearer " + wrong, std::string("Bearer short"),
                                   kToken, "bearer " + kToken, "Bearer  " + kToken}) {
    SCOPED_TRACE(value.empty() ? "no authorization header" : value);
    const grpc::StatusCode want = grpc::StatusCode::UNAUTHENTICATED;
    v1::StatsResponse stats;
    EXPECT_EQ(stub->Stats(WithAuthorization(value).get(), {}, &stats).error_code(), want);
    v1::BeginGetResponse got;
    EXPECT_EQ(stub->BeginGet(WithAuthorization(value).get(), get, &got).error_code(), want);
    EXPECT_EQ(got.blocks_size(), 0);
    v1::EndGetResponse ended;
    EXPECT_EQ(stub->EndGet(WithAuthorization(value).get(), {}, &ended).error_code(), want);
    v1::ConnectDataResponse channel;
    EXPECT_EQ(stub->ConnectData(WithAuthorization(value).get(), {}, &channel).error_code(), want);
    v1::CloseDataResponse closed;
    EXPECT_EQ(stub->CloseData(WithAuthorization(value).get(), {}, &closed).error_code(), want);
    v1::GetDataResponse data;
    EXPECT_EQ(stub->GetData(WithAuthorization(value).get(), {}, &data).error_code(), want);
    v1::RegisterNamespaceResponse ns;
    EXPECT_EQ(stub->RegisterNamespace(WithAuthorization(value).get(), {}, &ns).error_code(), want);
  }
  EXPECT_EQ((*server)->blocks_served(), 0u);
  // The token opens the same call: the block comes back inline.
  v1::BeginGetResponse got;
  grpc::Status s = stub->BeginGet(As(kToken).get(), get, &got);
  ASSERT_TRUE(s.ok()) << s.error_message();
  ASSERT_EQ(got.blocks_size(), 1);
  EXPECT_EQ(got.blocks(0).payload(), std::string(4096, '\x5a'));
  EXPECT_EQ((*server)->blocks_served(), 1u);
}

// A tenant's agent serves its own scope only; a `shared` agent serves every tenant's reader,
// who names its own scope (the store answered its lookup with the shared agent's location).
TEST(PeerServerTest, ASharedAgentServesReadersOfEveryScope) {
  std::vector<uint8_t> region(4 * 4096);
  for (const std::string agent_scope : {"tenant-b", "shared"}) {
    SCOPED_TRACE(agent_scope);
    PeerServerOptions o = Options();
    o.scope = agent_scope;
    auto server = Start(o, region, true);
    ASSERT_THAT(server, IsOk());
    auto stub = StubFor(**server);
    v1::BeginGetRequest get;
    get.set_namespace_id(1);
    get.set_scope("tenant-a");
    get.set_include_payload(true);
    get.add_chain_hashes(std::string(kChainHashBytes, '\x07'));
    v1::BeginGetResponse got;
    ASSERT_TRUE(stub->BeginGet(As(kToken).get(), get, &got).ok());
    ASSERT_EQ(got.blocks_size(), 1);
    EXPECT_EQ(got.blocks(0).status().code(), agent_scope == "shared" ? 0 : 5);  // OK, NOT_FOUND
    EXPECT_EQ((*server)->blocks_served(), agent_scope == "shared" ? 1u : 0u);
  }
}

// After a rotation the new token is served at once and the one before it until its grace
// ends (a bounded wait, no timing asserted); one rotated out with no grace is refused at once,
// and two rotations within a grace keep both earlier tokens.
TEST(PeerServerTest, ARotatedTokenIsServedUntilItsGraceEnds) {
  std::vector<uint8_t> region(4 * 4096);
  auto server = Start(Options(), region, true);
  ASSERT_THAT(server, IsOk());
  auto stub = StubFor(**server);
  auto code = [&](const std::string& token) {
    v1::StatsResponse stats;
    return stub->Stats(As(token).get(), {}, &stats).error_code();
  };
  const std::string second = RandomPeerToken(), third = RandomPeerToken();
  EXPECT_EQ(code(second), grpc::StatusCode::UNAUTHENTICATED);
  (*server)->RotateToken(second, absl::Now() + absl::Seconds(5));
  EXPECT_EQ(code(second), grpc::StatusCode::OK);
  EXPECT_EQ(code(kToken), grpc::StatusCode::OK);  // within its grace
  const absl::Time until = absl::Now() + absl::Seconds(20);
  while (code(kToken) == grpc::StatusCode::OK && absl::Now() < until) {
    absl::SleepFor(absl::Milliseconds(50));
  }
  EXPECT_EQ(code(kToken), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(code(second), grpc::StatusCode::OK);
  (*server)->RotateToken(third, absl::InfinitePast());
  EXPECT_EQ(code(second), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(code(kToken), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(code(third), grpc::StatusCode::OK);
  // Two rotations within one grace: both earlier tokens stay served until theirs ends.
  const std::string fourth = RandomPeerToken(), fifth = RandomPeerToken();
  (*server)->RotateToken(fourth, absl::Now() + absl::Seconds(30));
  (*server)->RotateToken(fifth, absl::Now() + absl::Seconds(30));
  EXPECT_EQ(code(third), grpc::StatusCode::OK);
  EXPECT_EQ(code(fourth), grpc::StatusCode::OK);
  EXPECT_EQ(code(fifth), grpc::StatusCode::OK);
  EXPECT_EQ(code(second), grpc::StatusCode::UNAUTHENTICATED);
}

TEST(PeerServerTest, DataChannelsAPeerLeftOpenAreClosedOnceIdle) {
  std::vector<uint8_t> region(4 * 4096);
  PeerServerOptions o = Options();
  o.channel_idle = absl::Seconds(3);  // 1 s could pass before the count below on a busy machine
  auto server = Start(o, region, false);
  ASSERT_THAT(server, IsOk());
  auto stub = StubFor(**server);

  // A peer opens a channel, then goes away without CloseData.
  TestPeer peer;
  v1::ConnectDataResponse channel;
  ASSERT_NO_FATAL_FAILURE(OpenChannel(*stub, &peer, &channel));
  EXPECT_EQ(DataChannels(*stub), 1u);
  peer.workers.clear();

  for (int i = 0; i < 300 && DataChannels(*stub) != 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_EQ(DataChannels(*stub), 0u);
  v1::CloseDataRequest close;
  close.set_channel_id(channel.channel_id());
  v1::CloseDataResponse closed;
  EXPECT_EQ(stub->CloseData(As(kToken).get(), close, &closed).error_code(),
            grpc::StatusCode::NOT_FOUND);
}

// A server holding every block (Options()) and a peer of this test's own with a data
// channel open to it.
class PeerChannelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto server = Start(Options(), region_, true);
    ASSERT_THAT(server, IsOk());
    server_ = std::move(*server);
    stub_ = StubFor(*server_);
    ASSERT_NO_FATAL_FAILURE(OpenChannel(*stub_, &peer_, &channel_));
  }

  std::vector<uint8_t> region_ = std::vector<uint8_t>(4 * 4096);
  std::unique_ptr<PeerServer> server_;
  std::unique_ptr<v1::StoreService::Stub> stub_;
  TestPeer peer_;
  v1::ConnectDataResponse channel_;
};

// GetData is checked as a node checks it: a tag must name the caller's channel (its high 32
// bits) and a destination must not wrap around the address space; either is INVALID_ARGUMENT
// before any block is gathered. Before, the agent took both (found in review).
TEST_F(PeerChannelTest, GetDataNamingAnotherChannelOrAWrappingRangeIsRefused) {
  v1::GetDataRequest get;
  get.set_channel_id(channel_.channel_id());
  get.set_namespace_id(1);
  get.add_chain_hashes(std::string(kChainHashBytes, '\x07'));
  get.add_tags((channel_.channel_id() + 1) << 32 | 1);  // another channel's
  get.add_capacities(4096);
  v1::GetDataResponse got;
  grpc::Status s = stub_->GetData(As(kToken).get(), get, &got);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
  EXPECT_THAT(s.error_message(), HasSubstr("channel id"));
  get.clear_tags();
  get.clear_capacities();
  v1::RemoteBuffer* d = get.add_destinations();
  d->set_addr(~uint64_t{0} - 100);  // + 4096 wraps
  d->set_length(4096);
  get.add_rkeys("k");
  s = stub_->GetData(As(kToken).get(), get, &got);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
  EXPECT_THAT(s.error_message(), HasSubstr("wrapping"));
  EXPECT_EQ(server_->blocks_served(), 0u);
}

// The agent posts no receive: a message a peer sends it on a channel is never claimed, and
// UCX holds its bytes meanwhile (eager messages travel before any receive). Such a channel is
// closed at the next sweep (about a second); before, after 30 s, the node's setting, and a
// token holder could keep up to 256 channels' worth of messages waiting that long.
TEST_F(PeerChannelTest, AChannelAPeerSendsMessagesOnIsClosed) {
  auto ep = peer_.workers[0]->Connect(channel_.worker_addresses(0));
  ASSERT_THAT(ep, IsOk());
  const std::vector<uint8_t> payload(4096, 0x33);  // eager over tcp, well below rendezvous
  std::vector<transport::TransferOp> ops;
  for (uint64_t i = 1; i <= 4; ++i) {
    ops.push_back(transport::TransferOp::Send(payload.data(), payload.size(),
                                              channel_.channel_id() << 32 | i));
  }
  ASSERT_THAT(peer_.workers[0]->Transfer(*ep, ops, absl::Now() + absl::Seconds(10)), IsOk());
  // Bounded: 10 s rules out the node's 30 s, not a speed.
  for (absl::Time end = absl::Now() + absl::Seconds(10);
       DataChannels(*stub_) != 0 && absl::Now() < end;) {
    absl::SleepFor(absl::Milliseconds(50));
  }
  EXPECT_EQ(DataChannels(*stub_), 0u);
}

// One peer host holds at most max_channels_per_peer data channels: the directory hands the
// token to every reader, and one host's readers must not take all the agent's channels. The
// cap counts by host, not connection (each channel here is asked for over a connection of its
// own, as separate engine processes of one host would). A channel closed makes room again.
TEST(PeerServerTest, OnePeerHostHoldsAtMostItsShareOfTheChannels) {
  std::vector<uint8_t> region(4 * 4096);
  PeerServerOptions o = Options();
  o.max_channels_per_peer = 2;
  auto server = Start(o, region, false);
  ASSERT_THAT(server, IsOk());
  auto stub = StubFor(**server);
  // A connection of its own (gRPC shares one between channels to one address by default).
  auto own_connection = [&] {
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    return v1::StoreService::NewStub(grpc::CreateCustomChannel(
        absl::StrCat("127.0.0.1:", (*server)->port()), grpc::InsecureChannelCredentials(), args));
  };
  auto context = transport::Context::Create(transport::TransportOptions{"tcp", {}, true});
  ASSERT_THAT(context, IsOk());
  std::vector<std::unique_ptr<transport::Worker>> workers;
  v1::ConnectDataResponse first, second, third;
  ASSERT_TRUE(ConnectFrom(*own_connection(), **context, &workers, &first).ok());
  ASSERT_TRUE(ConnectFrom(*own_connection(), **context, &workers, &second).ok());
  grpc::Status refused = ConnectFrom(*own_connection(), **context, &workers, &third);
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << refused.error_message();
  EXPECT_EQ(DataChannels(*stub), 2u);
  v1::CloseDataRequest close;
  close.set_channel_id(first.channel_id());
  v1::CloseDataResponse closed;
  ASSERT_TRUE(stub->CloseData(As(kToken).get(), close, &closed).ok());
  grpc::Status again = ConnectFrom(*stub, **context, &workers, &third);
  EXPECT_TRUE(again.ok()) << again.error_message();
}

// Requests are small (a read names at most max_blocks blocks): a larger one is refused by
// gRPC before it is buffered whole or reaches a handler, whatever the size of the replies.
// Before, the server took requests as large as its largest reply (here 16 MiB of region):
// this one, with a 2 MiB scope, was served.
TEST(PeerServerTest, RequestsLargerThanAReadCanBeAreRefusedUnread) {
  PeerServerOptions o = Options();
  o.block_bytes = 4 << 20;
  std::vector<uint8_t> region(o.max_blocks * o.block_bytes);
  auto server = Start(o, region, true);
  ASSERT_THAT(server, IsOk());
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(-1);  // a whole block inline
  auto stub = v1::StoreService::NewStub(grpc::CreateCustomChannel(
      absl::StrCat("127.0.0.1:", (*server)->port()), grpc::InsecureChannelCredentials(), args));
  v1::BeginGetRequest get;
  get.set_namespace_id(1);
  get.set_include_payload(true);
  get.add_chain_hashes(std::string(kChainHashBytes, '\x07'));
  v1::BeginGetResponse got;
  grpc::Status ok = stub->BeginGet(As(kToken).get(), get, &got);
  ASSERT_TRUE(ok.ok()) << ok.error_message();
  EXPECT_EQ(got.blocks(0).payload().size(), o.block_bytes) << "replies carry whole blocks";
  get.set_scope(std::string(2 << 20, 's'));
  grpc::Status refused = stub->BeginGet(As(kToken).get(), get, &got);
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << refused.error_message();
  EXPECT_EQ((*server)->blocks_served(), 1u);
}

// A gather as slow as `delay` (an engine copy under load) that fills the region; `started`,
// when given, runs first.
GatherFn SlowGather(uint64_t block_bytes, absl::Duration delay,
                    std::function<void()> started = nullptr) {
  return [=](std::span<const ChainHash> hashes, uint8_t* out, uint64_t*) {
    if (started) started();
    absl::SleepFor(delay);
    std::memset(out, 0x5a, hashes.size() * block_bytes);
    return std::vector<absl::Status>(hashes.size());
  };
}

// A BeginGet of one block with its payload inline.
v1::BeginGetRequest OneBlockInline() {
  v1::BeginGetRequest get;
  get.set_namespace_id(1);
  get.set_include_payload(true);
  get.add_chain_hashes(std::string(kChainHashBytes, '\x07'));
  return get;
}

// Readers that pile up on a slow agent (a gather that takes 300 ms, 20 readers at once): a few
// are served in turn and the rest are refused at once (RESOURCE_EXHAUSTED "reads in flight":
// read from the store), rather than each waiting its turn for the serve region before going to
// the store. Before: 3 served, 61 DEADLINE_EXCEEDED after 1 s, 0 refused (64 readers with 1 s
// deadlines). 20 readers stay below gRPC's own thread cap (2 x 8 reads + 8, which refuses
// calls too): with 64 it refused most of them first, and too few reached the server's check.
// Without that check all 20 are served in turn within their 10 s.
TEST(PeerServerTest, ReadersPilingUpAreRefusedNotQueuedPastTheirDeadline) {
  PeerServerOptions o = Options();
  o.ucx_tls = "";  // inline reads
  // Past the readers' deadline: a reader kept waiting for the region is not refused busy
  // after serve_timeout, so only the refusal at once can make readers busy.
  o.serve_timeout = absl::Seconds(30);
  std::vector<uint8_t> region(o.max_blocks * o.block_bytes);
  auto server =
      PeerServer::Start(o, region.data(), SlowGather(o.block_bytes, absl::Milliseconds(300)));
  ASSERT_THAT(server, IsOk());
  auto stub = StubFor(**server);
  // Connected before the readers start, whose deadline is for the read alone: 10 s (1 s until
  // the sixth session of 2026-11-29, which a slow connect and many threads starting on a busy
  // machine could use up).
  {
    v1::StatsResponse stats;
    ASSERT_TRUE(stub->Stats(As(kToken).get(), {}, &stats).ok());
  }
  const v1::BeginGetRequest get = OneBlockInline();
  constexpr int kReaders = 20;
  std::vector<grpc::Status> answers(kReaders);
  std::vector<std::thread> readers;
  for (int i = 0; i < kReaders; ++i) {
    readers.emplace_back([&, i] {
      auto ctx = As(kToken);
      ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
      v1::BeginGetResponse got;
      answers[i] = stub->BeginGet(ctx.get(), get, &got);
    });
  }
  for (std::thread& t : readers) t.join();
  // Refused by the server's places ("reads in flight"), not by gRPC's own thread cap (also
  // RESOURCE_EXHAUSTED, which readers take the same way but which this test does not test).
  int ok = 0, busy = 0, other = 0;
  for (const grpc::Status& a : answers) {
    ok += a.ok();
    const bool refused = a.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED &&
                         absl::StrContains(a.error_message(), "reads in flight");
    busy += refused;
    other += !a.ok() && !refused;
  }
  EXPECT_GE(ok, 1);
  EXPECT_GE(busy, 6) << "readers beyond the 8 places were not refused at once (" << other
                     << " other answers)";
}

// A reader kept from the serve region by another's read for serve_timeout, well within its
// own deadline, is told RESOURCE_EXHAUSTED (busy: read from the store), not DEADLINE_EXCEEDED,
// which readers take for a silent peer and stop asking for a while. Before 2026-11-29 it was
// DEADLINE_EXCEEDED. The first read holds the region until the second has its answer (a
// fixed 1.5 s until the sixth session of 2026-11-29: a second call slower than 1.2 s to arrive
// was served); serve_timeout 300 ms.
TEST(PeerServerTest, AReaderKeptWaitingByAnotherIsToldBusyNotTimedOut) {
  PeerServerOptions o = Options();
  o.ucx_tls = "";  // inline reads
  o.serve_timeout = absl::Milliseconds(300);
  std::vector<uint8_t> region(o.max_blocks * o.block_bytes);
  absl::Notification gathering, release;
  auto server =
      PeerServer::Start(o, region.data(), SlowGather(o.block_bytes, absl::ZeroDuration(), [&] {
                          if (!gathering.HasBeenNotified()) gathering.Notify();
                          release.WaitForNotificationWithTimeout(absl::Seconds(20));
                        }));
  ASSERT_THAT(server, IsOk());
  auto stub = StubFor(**server);
  const v1::BeginGetRequest get = OneBlockInline();
  std::thread first([&] {
    auto ctx = As(kToken);
    ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    v1::BeginGetResponse got;
    stub->BeginGet(ctx.get(), get, &got);
  });
  ASSERT_TRUE(gathering.WaitForNotificationWithTimeout(absl::Seconds(10)));
  auto ctx = As(kToken);
  ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  v1::BeginGetResponse got;
  const grpc::Status second = stub->BeginGet(ctx.get(), get, &got);
  release.Notify();
  first.join();
  EXPECT_EQ(second.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << second.error_message();
  EXPECT_THAT(second.error_message(), ::testing::HasSubstr("read from the store"));
}

}  // namespace
}  // namespace strata::gpu_agent
