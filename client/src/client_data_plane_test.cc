// ClientDataPlane against real UCX over tcp/lo: a second context in this process plays the
// node's lanes (as storenode's DataPlane does: it connects to the client's workers and drives
// every transfer).
#include "client_data_plane.h"

#include <atomic>
#include <cstdint>
#include <cstring>
#include <future>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "strata/testutil/status_matchers.h"

namespace strata::client {
namespace {

using ::strata::testutil::IsOk;
using ::strata::testutil::StatusIs;
using ::testing::HasSubstr;

constexpr size_t kBuffer = 64 << 10;

absl::StatusOr<std::unique_ptr<ClientDataPlane>> MakePlane(uint32_t lanes, size_t buffers) {
  ClientDataPlaneOptions opts;
  opts.tls = "tcp";
  opts.peer_failure_handling = true;
  opts.lanes = lanes;
  opts.bounce_buffer_size = kBuffer;
  opts.bounce_buffers = buffers;
  return ClientDataPlane::Create(opts);
}

absl::Time Soon() { return absl::Now() + absl::Seconds(5); }

transport::TransferOp Send(const void* data, size_t length, uint64_t tag) {
  transport::TransferOp op;
  op.kind = transport::TransferOp::Kind::kSend;
  op.local = const_cast<void*>(data);
  op.length = length;
  op.tag = tag;
  return op;
}

transport::TransferOp Recv(void* buffer, size_t capacity, uint64_t tag, size_t* received) {
  transport::TransferOp op;
  op.kind = transport::TransferOp::Kind::kRecv;
  op.local = buffer;
  op.length = capacity;
  op.tag = tag;
  op.received = received;
  return op;
}

TEST(CondenseTransportTest, KeepsOneLineAndExtractsLaneTransports) {
  EXPECT_EQ(CondenseTransport("tcp/lo"), "tcp/lo");
  const std::string info =
      "#\n# UCP endpoint\n#\n#               peer: <no debug data>\n"
      "#                 lane[0]:  1:tcp/lo.0 md[0]        -> md[0]/tcp/sysdev[255] am am_bw#0\n"
      "#                 lane[1]:  1:tcp/lo.0 md[0]        -> md[0]/tcp/sysdev[255] rma_bw#1\n"
      "#                 lane[2]:  3:cma/memory md[3]      -> md[3]/cma rma_bw#2\n"
      "#                 lane[3]:  5:tcp/eth0.100.1 md[0]  -> md[0]/tcp/sysdev[255] am_bw#1\n#\n"
      "#                 am_send: 0..<egr/short>..8185..<egr/zcopy>..20553..<rndv>..(inf)\n";
  EXPECT_EQ(CondenseTransport(info), "tcp/lo,cma/memory,tcp/eth0.100");
  EXPECT_EQ(CondenseTransport("#\n# nothing here\n"), "unknown");
}

// The node's ucx_tls decides which calls go two-sided (data_path.cc, StartDataPlane).
TEST(TransportChoiceTest, SharedMemoryOnlyMeansNoNetworkTransportAtAll) {
  for (const char* tls : {"shm", "sm", "posix,sysv,cma,self", "cma", "posix,self", "xpmem"}) {
    EXPECT_TRUE(TlsIsSharedMemoryOnly(tls)) << tls;
    EXPECT_FALSE(TlsIncludesTcp(tls)) << tls;
  }
  for (const char* tls : {"", "self", "tcp", "posix,tcp", "rc,sm", "^tcp", "^rc", "ud,self"}) {
    EXPECT_FALSE(TlsIsSharedMemoryOnly(tls)) << tls;
  }
  EXPECT_TRUE(TlsIncludesTcp("posix,tcp"));
  EXPECT_FALSE(TlsIncludesTcp("^tcp"));
}

TEST(ClientDataPlaneTest, RejectsBadGeometry) {
  EXPECT_THAT(MakePlane(0, 2), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(MakePlane(1, 0), StatusIs(absl::StatusCode::kInvalidArgument));
}

// A node that sends bigger tcp segments than we receive (or, an older node saying nothing,
// receives smaller ones than we send) is refused before any byte moves: UCX would abort.
TEST(ClientDataPlaneTest, ANodeWhoseTcpSegmentsDoNotFitIsRefused) {
  absl::StatusOr<std::unique_ptr<ClientDataPlane>> plane = MakePlane(1, 2);
  ASSERT_THAT(plane, IsOk());
  if ((*plane)->tcp_segments().tx != transport::kStrataTcpSegments.tx) {
    GTEST_SKIP() << "UCX_TCP_*_SEG_SIZE set in the environment";
  }
  EXPECT_THAT((*plane)->CheckNodeTcpSegments((*plane)->tcp_segments()), IsOk());
  EXPECT_THAT((*plane)->CheckNodeTcpSegments({}), IsOk());  // UCX's defaults fit ours
  EXPECT_THAT((*plane)->CheckNodeTcpSegments({1 << 20, 2 << 20}),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("the peer sends")));
  EXPECT_THAT((*plane)->CheckNodeTcpSegments({8 << 10, 32 << 10}),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("this side sends")));
}

TEST(ClientDataPlaneTest, RegistersNonOverlappingRanges) {
  absl::StatusOr<std::unique_ptr<ClientDataPlane>> plane = MakePlane(1, 2);
  ASSERT_THAT(plane, IsOk());
  std::vector<uint8_t> mem(1 << 20);
  uint8_t* base = mem.data();
  EXPECT_THAT((*plane)->Register(nullptr, 64), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT((*plane)->Register(base, 0), StatusIs(absl::StatusCode::kInvalidArgument));
  ASSERT_THAT((*plane)->Register(base + 4096, 4096), IsOk());
  EXPECT_THAT((*plane)->Register(base + 4096, 4096),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("overlaps")));
  EXPECT_THAT((*plane)->Register(base, 4097), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT((*plane)->Register(base + 8191, 10), StatusIs(absl::StatusCode::kInvalidArgument));
  // Adjacent ranges on both sides are fine.
  ASSERT_THAT((*plane)->Register(base, 4096), IsOk());
  ASSERT_THAT((*plane)->Register(base + 8192, 4096), IsOk());

  EXPECT_NE((*plane)->FindRegion(base + 4096, 4096), nullptr);
  EXPECT_NE((*plane)->FindRegion(base + 5000, 100), nullptr);
  EXPECT_EQ((*plane)->FindRegion(base + 8000, 400), nullptr);  // straddles two ranges
  EXPECT_EQ((*plane)->FindRegion(base + 12288, 1), nullptr);
  EXPECT_EQ((*plane)->FindRegion(base - 1, 1), nullptr);

  std::shared_ptr<const transport::MemoryRegion> held = (*plane)->FindRegion(base + 4096, 1);
  EXPECT_THAT((*plane)->Unregister(base + 4097), StatusIs(absl::StatusCode::kNotFound));
  ASSERT_THAT((*plane)->Unregister(base + 4096), IsOk());
  EXPECT_EQ((*plane)->FindRegion(base + 4096, 1), nullptr);
  EXPECT_EQ(held->base(), base + 4096);  // still usable by the call that held it
  EXPECT_THAT((*plane)->Unregister(base + 4096), StatusIs(absl::StatusCode::kNotFound));
  ASSERT_THAT((*plane)->Register(base + 4096, 4096), IsOk());
}

TEST(ClientDataPlaneTest, BounceSetsAreAllOrNothingAndBoundedByTheDeadline) {
  absl::StatusOr<std::unique_ptr<ClientDataPlane>> plane = MakePlane(1, 3);
  ASSERT_THAT(plane, IsOk());
  EXPECT_THAT((*plane)->AcquireBounce(4, Soon()), StatusIs(absl::StatusCode::kInternal));
  absl::StatusOr<std::vector<transport::BounceBuffer>> two = (*plane)->AcquireBounce(2, Soon());
  ASSERT_THAT(two, IsOk());
  ASSERT_EQ(two->size(), 2u);
  EXPECT_EQ((*two)[0].size(), kBuffer);
  EXPECT_TRUE((*plane)->bounce_region().Contains((*two)[1].data(), kBuffer));
  EXPECT_THAT((*plane)->AcquireBounce(2, absl::Now() + absl::Milliseconds(50)),
              StatusIs(absl::StatusCode::kDeadlineExceeded));
  // The failed attempt gave back the one buffer it got.
  absl::StatusOr<std::vector<transport::BounceBuffer>> one = (*plane)->AcquireBounce(1, Soon());
  ASSERT_THAT(one, IsOk());
  one->clear();
  two->clear();
  absl::StatusOr<std::vector<transport::BounceBuffer>> all = (*plane)->AcquireBounce(3, Soon());
  EXPECT_THAT(all, IsOk());
  EXPECT_THAT((*plane)->AcquireBounce(0, absl::InfinitePast()), IsOk());
}

// The node's side of a channel: its own context and one worker per lane, each connected to
// the client's worker of the same lane (as storenode's DataPlane does on ConnectData).
struct FakeNodeLanes {
  std::unique_ptr<transport::Context> context;
  std::vector<std::unique_ptr<transport::Worker>> workers;
  std::vector<transport::EndpointId> endpoints;
  std::vector<std::string> addresses;  // for ClientDataPlane::Wire
};

absl::StatusOr<FakeNodeLanes> StartFakeNode(const ClientDataPlane& plane,
                                            const transport::TransportOptions& transport = {
                                                "tcp", {}, true}) {
  FakeNodeLanes node;
  absl::StatusOr<std::unique_ptr<transport::Context>> ctx = transport::Context::Create(transport);
  if (!ctx.ok()) return ctx.status();
  node.context = *std::move(ctx);
  for (const std::string& client_address : plane.WorkerAddresses()) {
    absl::StatusOr<std::unique_ptr<transport::Worker>> w = node.context->CreateWorker();
    if (!w.ok()) return w.status();
    absl::StatusOr<transport::EndpointId> ep = (*w)->Connect(client_address);
    if (!ep.ok()) return ep.status();
    node.endpoints.push_back(*ep);
    node.addresses.push_back((*w)->Address());
    node.workers.push_back(*std::move(w));
  }
  return node;
}

TEST(ClientDataPlaneTest, NodeLanesMoveBytesThroughBounceAndRegisteredMemory) {
  constexpr uint32_t kLanes = 2;
  absl::StatusOr<std::unique_ptr<ClientDataPlane>> plane = MakePlane(kLanes, 2);
  ASSERT_THAT(plane, IsOk());
  absl::StatusOr<FakeNodeLanes> started = StartFakeNode(**plane);
  ASSERT_THAT(started, IsOk());
  FakeNodeLanes& node = *started;
  const std::vector<std::string>& node_addresses = node.addresses;
  ASSERT_EQ(node_addresses.size(), kLanes);
  EXPECT_THAT((*plane)->Wire(1, {node_addresses[0]}), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT((*plane)->Wire(1, {node_addresses[0], "garbage"}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("lane 1")));
  ASSERT_THAT((*plane)->Wire(1, node_addresses), IsOk());
  ASSERT_THAT((*plane)->Wire(1, node_addresses), IsOk());  // rewiring replaces the endpoints

  std::vector<uint8_t> node_mem(2 * kBuffer);
  for (size_t i = 0; i < node_mem.size(); ++i) node_mem[i] = static_cast<uint8_t>(i * 7 + 1);
  absl::StatusOr<std::unique_ptr<transport::MemoryRegion>> node_region =
      node.context->Register(node_mem.data(), node_mem.size());
  ASSERT_THAT(node_region, IsOk());

  // GetData-like: lane 0 pushes into a client bounce buffer.
  absl::StatusOr<std::vector<transport::BounceBuffer>> bounce = (*plane)->AcquireBounce(1, Soon());
  ASSERT_THAT(bounce, IsOk());
  const std::string bounce_rkey = (*plane)->bounce_region().PackedRkey();
  transport::TransferOp push{.kind = transport::TransferOp::Kind::kPut,
                             .local = node_mem.data(),
                             .length = kBuffer,
                             .remote_addr = reinterpret_cast<uintptr_t>((*bounce)[0].data()),
                             .packed_rkey = bounce_rkey};
  ASSERT_THAT(node.workers[0]->Transfer(node.endpoints[0], {&push, 1}, Soon()), IsOk());
  EXPECT_EQ(std::memcmp((*bounce)[0].data(), node_mem.data(), kBuffer), 0);

  // PutData-like: lane 1 pulls from a registered user range (zero-copy).
  std::vector<uint8_t> user(kBuffer, 0x5a);
  ASSERT_THAT((*plane)->Register(user.data(), user.size()), IsOk());
  std::shared_ptr<const transport::MemoryRegion> user_region =
      (*plane)->FindRegion(user.data(), user.size());
  ASSERT_NE(user_region, nullptr);
  const std::string user_rkey = user_region->PackedRkey();
  transport::TransferOp pull{.kind = transport::TransferOp::Kind::kGet,
                             .local = node_mem.data() + kBuffer,
                             .length = kBuffer,
                             .remote_addr = reinterpret_cast<uintptr_t>(user.data()),
                             .packed_rkey = user_rkey};
  ASSERT_THAT(node.workers[1]->Transfer(node.endpoints[1], {&pull, 1}, Soon()), IsOk());
  EXPECT_EQ(std::memcmp(node_mem.data() + kBuffer, user.data(), kBuffer), 0);

  bounce->clear();
  user_region.reset();
  for (uint32_t lane = 0; lane < kLanes; ++lane) {
    EXPECT_THAT(node.workers[lane]->Disconnect(node.endpoints[lane]), IsOk());
  }
  node.workers.clear();
  node_region->reset();
  plane->reset();  // workers before regions: must not crash with ranges still registered
}

TEST(ClientDataPlaneTest, TransferNeedsAWiredLane) {
  absl::StatusOr<std::unique_ptr<ClientDataPlane>> plane = MakePlane(2, 2);
  ASSERT_THAT(plane, IsOk());
  char byte = 'x';
  const transport::TransferOp send = Send(&byte, 1, 1);
  EXPECT_THAT(
      (*plane)->Transfer(0, {&send, 1}, Soon()),
      StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("no data channel is wired")));
  EXPECT_THAT((*plane)->Transfer(2, {&send, 1}, Soon()),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("lane 2 of 2")));
}

// A fence names its channel: a call that failed on a channel another call already fenced, or
// that a newer channel replaced, must not close the newer channel's endpoints under the calls
// using it (each of those would fence again, and so on).
TEST(ClientDataPlaneTest, AFenceClosesOnlyTheChannelItNames) {
  absl::StatusOr<std::unique_ptr<ClientDataPlane>> plane = MakePlane(1, 2);
  ASSERT_THAT(plane, IsOk());
  absl::StatusOr<FakeNodeLanes> started = StartFakeNode(**plane);
  ASSERT_THAT(started, IsOk());
  FakeNodeLanes& node = *started;
  constexpr uint64_t kOld = 6, kCurrent = 7;
  ASSERT_THAT((*plane)->Wire(kCurrent, node.addresses), IsOk());
  EXPECT_FALSE((*plane)->Fence(kOld));
  EXPECT_FALSE((*plane)->Fence(0));
  // Still wired: a message reaches the node.
  char byte = 'x', landed = 0;
  size_t got = 0;
  const transport::TransferOp send = Send(&byte, 1, (*plane)->NextTag(kCurrent));
  const transport::TransferOp recv = Recv(&landed, 1, send.tag, &got);
  std::future<absl::Status> node_side = std::async(std::launch::async, [&] {
    return node.workers[0]->Transfer(node.endpoints[0], {&recv, 1}, Soon());
  });
  ASSERT_THAT((*plane)->Transfer(0, {&send, 1}, Soon()), IsOk());
  ASSERT_THAT(node_side.get(), IsOk());
  EXPECT_EQ(landed, 'x');
  // The channel's own fence closes it, once.
  EXPECT_TRUE((*plane)->Fence(kCurrent));
  EXPECT_FALSE((*plane)->Fence(kCurrent));
  EXPECT_THAT((*plane)->Transfer(0, {&send, 1}, Soon()),
              StatusIs(absl::StatusCode::kFailedPrecondition));
  node.workers[0]->Abandon(node.endpoints[0]).IgnoreError();
}

// A call's batch goes on its own channel's endpoints or not at all: once another call has
// wired the lanes for a newer channel, a batch naming the old one is UNAVAILABLE and leaves
// the new endpoints alone (an abort of it used to retire them under their own calls). Before
// 2026-11-29 it went out on whatever was wired.
TEST(ClientDataPlaneTest, ABatchNamingAReplacedChannelIsRefusedAndLeavesTheNewOne) {
  absl::StatusOr<std::unique_ptr<ClientDataPlane>> plane = MakePlane(1, 2);
  ASSERT_THAT(plane, IsOk());
  absl::StatusOr<FakeNodeLanes> started = StartFakeNode(**plane);
  ASSERT_THAT(started, IsOk());
  FakeNodeLanes& node = *started;
  constexpr uint64_t kOld = 6, kNew = 7;
  ASSERT_THAT((*plane)->Wire(kOld, node.addresses), IsOk());
  ASSERT_THAT((*plane)->Wire(kNew, node.addresses), IsOk());
  char byte = 'x', landed = 0;
  size_t got = 0;
  std::atomic<bool> abort{true};  // as a call whose RPC failed
  const transport::TransferOp stale = Send(&byte, 1, (*plane)->NextTag(kOld));
  EXPECT_THAT((*plane)->Transfer(0, {&stale, 1}, Soon(), &abort, kOld),
              StatusIs(absl::StatusCode::kUnavailable, HasSubstr("replaced")));
  // The new channel's endpoint still carries a message.
  const transport::TransferOp send = Send(&byte, 1, (*plane)->NextTag(kNew));
  const transport::TransferOp recv = Recv(&landed, 1, send.tag, &got);
  std::future<absl::Status> node_side = std::async(std::launch::async, [&] {
    return node.workers[0]->Transfer(node.endpoints[0], {&recv, 1}, Soon());
  });
  EXPECT_THAT((*plane)->Transfer(0, {&send, 1}, Soon(), nullptr, kNew), IsOk());
  EXPECT_THAT(node_side.get(), IsOk());
  EXPECT_EQ(landed, 'x');
  node.workers[0]->Abandon(node.endpoints[0]).IgnoreError();
}

TEST(ClientDataPlaneTest, TagsCarryTheChannelAndNeverRepeat) {
  absl::StatusOr<std::unique_ptr<ClientDataPlane>> plane = MakePlane(1, 2);
  ASSERT_THAT(plane, IsOk());
  constexpr uint64_t kChannel = 0x9e3779b91234abcd;
  absl::flat_hash_set<uint64_t> tags;
  for (int i = 0; i < 1000; ++i) {
    const uint64_t tag = (*plane)->NextTag(kChannel);
    EXPECT_EQ(tag >> 32, 0x1234abcdu);
    tags.insert(tag);
  }
  EXPECT_EQ(tags.size(), 1000u);
  EXPECT_EQ((*plane)->NextTag(7) >> 32, 7u);
}

// A tag's low 32 bits need the whole channel id: two clients at the same sequence, on
// channels whose ids share their low 32 bits (the tags' prefix), send different tags. Before
// 2026-11-29 they were the plain sequence, so another tenant's client that learnt a channel's
// prefix could name the next messages of its puts.
TEST(ClientDataPlaneTest, ATagsLowBitsNeedTheWholeChannelId) {
  absl::StatusOr<std::unique_ptr<ClientDataPlane>> mine = MakePlane(1, 2);
  absl::StatusOr<std::unique_ptr<ClientDataPlane>> theirs = MakePlane(1, 2);
  ASSERT_THAT(mine, IsOk());
  ASSERT_THAT(theirs, IsOk());
  const uint64_t a = (*mine)->NextTag(0x0123456700000042);
  const uint64_t b = (*theirs)->NextTag(0x89abcdef00000042);
  EXPECT_EQ(a >> 32, b >> 32);
  EXPECT_NE(a, b);
}

// Two-sided mode as StoreClient drives it: the client sends a put's blocks and receives a
// get's on a lane; the fake node answers on the lane's worker.
TEST(ClientDataPlaneTest, TaggedMessagesTravelBothWaysOnALane) {
  constexpr uint32_t kLanes = 2;
  absl::StatusOr<std::unique_ptr<ClientDataPlane>> plane = MakePlane(kLanes, 2);
  ASSERT_THAT(plane, IsOk());
  absl::StatusOr<FakeNodeLanes> started = StartFakeNode(**plane);
  ASSERT_THAT(started, IsOk());
  FakeNodeLanes& node = *started;
  ASSERT_THAT((*plane)->Wire(1, node.addresses), IsOk());
  constexpr uint64_t kChannel = 42;

  // PutData-like on lane 1: two blocks from plain (unregistered) memory, one large enough for
  // UCX's rendezvous protocol; the node receives them by tag, in the opposite order.
  std::vector<uint8_t> small(100), large(kBuffer);
  for (size_t i = 0; i < small.size(); ++i) small[i] = static_cast<uint8_t>(i * 3 + 1);
  for (size_t i = 0; i < large.size(); ++i) large[i] = static_cast<uint8_t>(i * 7 + 5);
  const std::vector<transport::TransferOp> sends = {
      Send(small.data(), small.size(), (*plane)->NextTag(kChannel)),
      Send(large.data(), large.size(), (*plane)->NextTag(kChannel)),
  };
  std::vector<uint8_t> node_small(kBuffer, 0), node_large(kBuffer, 0);
  size_t got_small = 0, got_large = 0;
  const std::vector<transport::TransferOp> node_recvs = {
      Recv(node_large.data(), node_large.size(), sends[1].tag, &got_large),
      Recv(node_small.data(), node_small.size(), sends[0].tag, &got_small),
  };
  std::future<absl::Status> node_side = std::async(std::launch::async, [&] {
    return node.workers[1]->Transfer(node.endpoints[1], node_recvs, Soon());
  });
  ASSERT_THAT((*plane)->Transfer(1, sends, Soon()), IsOk());
  ASSERT_THAT(node_side.get(), IsOk());
  ASSERT_EQ(got_small, small.size());
  ASSERT_EQ(got_large, large.size());
  EXPECT_EQ(std::memcmp(node_small.data(), small.data(), small.size()), 0);
  EXPECT_EQ(std::memcmp(node_large.data(), large.data(), large.size()), 0);

  // GetData-like on lane 0: the client posts its receives first; the node answers one with
  // bytes and one with an empty message ("nothing for this tag").
  std::vector<uint8_t> dest(kBuffer, 0xee), untouched(16, 0xee);
  size_t got_dest = 99, got_empty = 99;
  const std::vector<transport::TransferOp> recvs = {
      Recv(dest.data(), dest.size(), (*plane)->NextTag(kChannel), &got_dest),
      Recv(untouched.data(), untouched.size(), (*plane)->NextTag(kChannel), &got_empty),
  };
  std::future<absl::Status> client_side =
      std::async(std::launch::async, [&] { return (*plane)->Transfer(0, recvs, Soon()); });
  const std::vector<transport::TransferOp> node_sends = {
      Send(large.data(), 5000, recvs[0].tag),
      Send(nullptr, 0, recvs[1].tag),
  };
  ASSERT_THAT(node.workers[0]->Transfer(node.endpoints[0], node_sends, Soon()), IsOk());
  ASSERT_THAT(client_side.get(), IsOk());
  EXPECT_EQ(got_dest, 5000u);
  EXPECT_EQ(std::memcmp(dest.data(), large.data(), 5000), 0);
  EXPECT_EQ(dest[5000], 0xee);
  EXPECT_EQ(got_empty, 0u);
  EXPECT_EQ(untouched, std::vector<uint8_t>(16, 0xee));

  for (uint32_t lane = 0; lane < kLanes; ++lane) {
    EXPECT_THAT(node.workers[lane]->Disconnect(node.endpoints[lane]), IsOk());
  }
}

// GetData's reply may beat the client's receives: a message that arrived before its receive
// was posted still lands, with its length reported.
TEST(ClientDataPlaneTest, AMessageThatArrivedFirstIsReceivedWithItsLength) {
  absl::StatusOr<std::unique_ptr<ClientDataPlane>> plane = MakePlane(1, 2);
  ASSERT_THAT(plane, IsOk());
  absl::StatusOr<FakeNodeLanes> started = StartFakeNode(**plane);
  ASSERT_THAT(started, IsOk());
  FakeNodeLanes& node = *started;
  ASSERT_THAT((*plane)->Wire(1, node.addresses), IsOk());
  std::vector<uint8_t> block(3000);
  for (size_t i = 0; i < block.size(); ++i) block[i] = static_cast<uint8_t>(i * 11 + 3);
  const transport::TransferOp early = Send(block.data(), block.size(), (*plane)->NextTag(5));
  // Small enough for UCX's eager protocol: the send completes without a receive.
  ASSERT_THAT(node.workers[0]->Transfer(node.endpoints[0], {&early, 1}, Soon()), IsOk());
  absl::SleepFor(absl::Milliseconds(20));
  std::vector<uint8_t> dest(kBuffer, 0);
  size_t received = 99;
  const transport::TransferOp late = Recv(dest.data(), dest.size(), early.tag, &received);
  ASSERT_THAT((*plane)->Transfer(0, {&late, 1}, Soon()), IsOk());
  EXPECT_EQ(received, block.size());
  EXPECT_EQ(std::memcmp(dest.data(), block.data(), block.size()), 0);
}

// What GetData does when its RPC fails: abort the receives. The lane stays usable; a batch
// with sends that is aborted retires the endpoint until the next Wire().
TEST(ClientDataPlaneTest, AbortCancelsReceivesAndRetiresALaneWithSends) {
  absl::StatusOr<std::unique_ptr<ClientDataPlane>> plane = MakePlane(1, 2);
  ASSERT_THAT(plane, IsOk());
  absl::StatusOr<FakeNodeLanes> started = StartFakeNode(**plane);
  ASSERT_THAT(started, IsOk());
  FakeNodeLanes& node = *started;
  ASSERT_THAT((*plane)->Wire(1, node.addresses), IsOk());

  std::atomic<bool> abort{false};
  std::vector<uint8_t> dest(64);
  const transport::TransferOp never = Recv(dest.data(), dest.size(), (*plane)->NextTag(1), nullptr);
  std::future<absl::Status> waiting = std::async(std::launch::async, [&] {
    return (*plane)->Transfer(0, {&never, 1}, absl::Now() + absl::Seconds(30), &abort);
  });
  absl::SleepFor(absl::Milliseconds(50));
  abort.store(true);
  EXPECT_THAT(waiting.get(), StatusIs(absl::StatusCode::kCancelled));

  // The lane still carries messages.
  char byte = 'q', landed = 0;
  const transport::TransferOp send = Send(&byte, 1, (*plane)->NextTag(1));
  const transport::TransferOp recv = Recv(&landed, 1, send.tag, nullptr);
  std::future<absl::Status> node_side = std::async(std::launch::async, [&] {
    return node.workers[0]->Transfer(node.endpoints[0], {&recv, 1}, Soon());
  });
  ASSERT_THAT((*plane)->Transfer(0, {&send, 1}, Soon()), IsOk());
  ASSERT_THAT(node_side.get(), IsOk());
  EXPECT_EQ(landed, 'q');

  // A send nobody receives (1 MiB: rendezvous waits for the receiver), then aborted.
  std::vector<uint8_t> big(1 << 20, 1);
  std::atomic<bool> abort_send{false};
  const transport::TransferOp orphan = Send(big.data(), big.size(), (*plane)->NextTag(1));
  std::future<absl::Status> sending = std::async(std::launch::async, [&] {
    return (*plane)->Transfer(0, {&orphan, 1}, absl::Now() + absl::Seconds(30), &abort_send);
  });
  absl::SleepFor(absl::Milliseconds(50));
  abort_send.store(true);
  EXPECT_THAT(sending.get(), StatusIs(absl::StatusCode::kCancelled));
  EXPECT_THAT((*plane)->Transfer(0, {&send, 1}, Soon()), StatusIs(absl::StatusCode::kUnavailable));

  // Rewiring (what the next StoreClient call does after marking the channel broken) heals it.
  absl::StatusOr<FakeNodeLanes> fresh = StartFakeNode(**plane);
  ASSERT_THAT(fresh, IsOk());
  ASSERT_THAT((*plane)->Wire(1, fresh->addresses), IsOk());
  landed = 0;
  node_side = std::async(std::launch::async, [&] {
    return fresh->workers[0]->Transfer(fresh->endpoints[0], {&recv, 1}, Soon());
  });
  ASSERT_THAT((*plane)->Transfer(0, {&send, 1}, Soon()), IsOk());
  ASSERT_THAT(node_side.get(), IsOk());
  EXPECT_EQ(landed, 'q');
}

// A lane wedged over shared memory (a node killed mid-send leaves its receive queue unreadable;
// StallLaneForTest stops the worker reading, which is how such a lane looks from outside) is
// found after the next Fence and given a new worker: the lanes are unwired, and a message to
// the new worker arrives. The healthy lane, checked first, keeps its worker. Before, every
// receive on that lane failed for as long as the client ran.
TEST(ClientDataPlaneTest, AWedgedSharedMemoryLaneIsReplacedAfterAFence) {
  ClientDataPlaneOptions opts;
  opts.tls = "posix,sysv,cma,self";
  opts.peer_failure_handling = false;
  opts.lanes = 2;
  opts.bounce_buffer_size = kBuffer;
  opts.lane_check_interval = absl::Milliseconds(100);
  absl::StatusOr<std::unique_ptr<ClientDataPlane>> plane = ClientDataPlane::Create(opts);
  ASSERT_THAT(plane, IsOk());
  const transport::TransportOptions shm{opts.tls, {}, false};
  absl::StatusOr<FakeNodeLanes> node = StartFakeNode(**plane, shm);
  ASSERT_THAT(node, IsOk());
  ASSERT_THAT((*plane)->Wire(7, node->addresses), IsOk());
  uint64_t generation = 0;
  const std::vector<std::string> before = (*plane)->WorkerAddresses(&generation);
  ASSERT_THAT((*plane)->StallLaneForTest(1), IsOk());
  // A GetData-like receive on lane 1: the node's message never gets read.
  uint8_t byte = 0x5a, got = 0;
  size_t received = 0;
  const uint64_t tag = (*plane)->NextTag(7);
  std::future<absl::Status> node_send = std::async(std::launch::async, [&] {
    const transport::TransferOp send = Send(&byte, 1, tag);
    return node->workers[1]->Transfer(node->endpoints[1], {&send, 1}, Soon());
  });
  const transport::TransferOp recv = Recv(&got, 1, tag, &received);
  EXPECT_FALSE((*plane)->Transfer(1, {&recv, 1}, absl::Now() + absl::Milliseconds(300)).ok());
  node_send.wait();
  (*plane)->Fence(7);
  // Three checks of up to 2 s each, 0.1 s apart; 30 s rules out only a check that never ends.
  for (int i = 0; i < 300 && (*plane)->lanes_replaced() == 0; ++i) {
    absl::SleepFor(absl::Milliseconds(100));
  }
  ASSERT_EQ((*plane)->lanes_replaced(), 1u);
  EXPECT_FALSE((*plane)->Wired(7));
  uint64_t replaced = 0;
  const std::vector<std::string> after = (*plane)->WorkerAddresses(&replaced);
  EXPECT_NE(replaced, generation);
  EXPECT_EQ(after[0], before[0]);
  EXPECT_NE(after[1], before[1]);
  // Wired again (a fresh ConnectData to the new address), lane 1 receives.
  absl::StatusOr<FakeNodeLanes> again = StartFakeNode(**plane, shm);
  ASSERT_THAT(again, IsOk());
  // A channel whose ConnectData carried the old addresses is not wired: its node side leads
  // to the old worker.
  EXPECT_THAT((*plane)->Wire(8, again->addresses, generation),
              StatusIs(absl::StatusCode::kUnavailable));
  ASSERT_THAT((*plane)->Wire(8, again->addresses, replaced), IsOk());
  EXPECT_TRUE((*plane)->Wired(8));
  const uint64_t tag2 = (*plane)->NextTag(8);
  std::future<absl::Status> sent = std::async(std::launch::async, [&] {
    const transport::TransferOp send = Send(&byte, 1, tag2);
    return again->workers[1]->Transfer(again->endpoints[1], {&send, 1}, Soon());
  });
  const transport::TransferOp recv2 = Recv(&got, 1, tag2, &received);
  EXPECT_THAT((*plane)->Transfer(1, {&recv2, 1}, Soon()), IsOk());
  EXPECT_THAT(sent.get(), IsOk());
  EXPECT_EQ(got, 0x5a);
}

}  // namespace
}  // namespace strata::client
