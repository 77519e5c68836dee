// DataPlane's handling of two-sided messages no call claims, with a client worker of this
// test's own over real UCX (tcp/lo): a refused call's messages are dropped without costing
// its channel, and channels whose messages nobody claims are closed, several in one sweep.
#include "strata/transport/data_plane.h"

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "strata/testutil/status_matchers.h"
#include "strata/transport/context.h"
#include "strata/transport/worker.h"

namespace strata::transport {
namespace {

using testutil::IsOk;

// A client of the plane: its own context and worker, one endpoint to the channel's lane 0.
struct Client {
  std::unique_ptr<Context> context;
  std::unique_ptr<Worker> worker;
  EndpointId ep = 0;
  uint64_t channel = 0;

  uint64_t Tag(uint32_t sequence) const { return channel << 32 | sequence; }
};

constexpr absl::Duration kTimeout = absl::Seconds(2);

class DataPlaneTest : public ::testing::Test {
 protected:
  void SetUp() override { Init(1024); }

  void Init(uint64_t max_channels, uint64_t per_owner = 0,
            absl::Duration unclaimed_timeout = kTimeout) {
    plane_.reset();
    arena_.resize(1 << 20);
    DataPlaneOptions o;
    o.tls = "tcp";
    o.unclaimed_timeout = unclaimed_timeout;
    o.max_block_bytes = 64 << 10;
    o.max_channels = max_channels;
    o.max_channels_per_owner = per_owner;
    auto plane = DataPlane::Create(o, arena_.data(), arena_.size());
    ASSERT_THAT(plane, IsOk());
    plane_ = std::move(*plane);
  }

  void Open(Client* c) {
    auto context = Context::Create(TransportOptions{"tcp", {}, true});
    ASSERT_THAT(context, IsOk());
    c->context = std::move(*context);
    auto worker = c->context->CreateWorker();
    ASSERT_THAT(worker, IsOk());
    c->worker = std::move(*worker);
    const std::string address = c->worker->Address();
    auto channel = plane_->Connect({&address, 1}, c->context->tcp_segments());
    ASSERT_THAT(channel, IsOk());
    c->channel = channel->id;
    auto ep = c->worker->Connect(channel->worker_addresses[0]);
    ASSERT_THAT(ep, IsOk());
    c->ep = *ep;
  }

  // Sends eager messages tagged `sequences` on c's channel (they complete without a receiver),
  // then one the node claims: the earlier ones arrived before it (one TCP connection, in
  // order), so they are all in the node's unexpected queue when this returns.
  void Send(const Client& c, std::vector<uint32_t> sequences, uint32_t channel_bits = 0) {
    std::vector<TransferOp> ops;
    const uint64_t high = channel_bits != 0 ? channel_bits : c.channel & 0xffffffffu;
    for (uint32_t s : sequences) {
      ops.push_back(TransferOp::Send(payload_.data(), payload_.size(), high << 32 | s));
    }
    const uint64_t fence = c.Tag(++fences_ + 1000000);
    ops.push_back(TransferOp::Send(payload_.data(), payload_.size(), fence));
    ASSERT_THAT(c.worker->Transfer(c.ep, ops, absl::Now() + absl::Seconds(5)), IsOk());
    TransferOp claim = TransferOp::Recv(arena_.data(), payload_.size(), fence);
    ASSERT_THAT(plane_->Transfer(c.channel, 0, {&claim, 1}, absl::Now() + absl::Seconds(5)),
                IsOk());
  }

  std::vector<uint8_t> arena_;
  std::vector<uint8_t> payload_ = std::vector<uint8_t>(30000, 0x5a);
  std::unique_ptr<DataPlane> plane_;
  uint32_t fences_ = 0;
};

TEST_F(DataPlaneTest, ARefusedCallsMessagesAreDroppedAndItsChannelStays) {
  // The refusal's note lasts the timeout: 5 s, so that the second round below falls within it
  // however slow the machine (2 s was a tight fit).
  constexpr absl::Duration kNoted = absl::Seconds(5);
  ASSERT_NO_FATAL_FAILURE(Init(1024, 0, kNoted));
  Client c;
  ASSERT_NO_FATAL_FAILURE(Open(&c));
  std::vector<uint64_t> refused;
  for (uint32_t s = 1; s <= 12; ++s) refused.push_back(c.Tag(s));
  // Tags of another channel in the same note are ignored.
  refused.push_back((c.channel + 1) << 32 | 1);
  plane_->NoteRefused(c.channel, 0, refused);
  ASSERT_NO_FATAL_FAILURE(Send(c, {1, 2, 3, 4, 5, 6, 7, 8}));
  plane_->SweepUnclaimed();
  EXPECT_EQ(plane_->unclaimed_dropped(), 8u);
  // Messages of the refused call that arrive after a sweep are dropped too.
  ASSERT_NO_FATAL_FAILURE(Send(c, {9, 10, 11, 12}));
  plane_->SweepUnclaimed();
  EXPECT_EQ(plane_->unclaimed_dropped(), 12u);
  // Past the timeout the channel is still open: nothing of it stayed unclaimed.
  const absl::Time until = absl::Now() + kNoted + absl::Milliseconds(500);
  while (absl::Now() < until) {
    plane_->SweepUnclaimed();
    absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_EQ(plane_->channels(), 1u);
}

TEST_F(DataPlaneTest, ChannelsWhoseMessagesNobodyClaimsAreClosedTogether) {
  Client quiet, a, b, c;
  for (Client* x : {&quiet, &a, &b, &c}) ASSERT_NO_FATAL_FAILURE(Open(x));
  ASSERT_NO_FATAL_FAILURE(Send(a, {1}));
  ASSERT_NO_FATAL_FAILURE(Send(b, {1, 2}));
  ASSERT_NO_FATAL_FAILURE(Send(c, {1, 2, 3}));
  // The sweep that first sees them notes them all; within the timeout nothing closes.
  EXPECT_EQ(plane_->SweepUnclaimed(), 0u);
  EXPECT_EQ(plane_->channels(), 4u);
  uint64_t closed = 0;
  for (int i = 0; i < 50 && closed == 0; ++i) {
    absl::SleepFor(absl::Milliseconds(100));
    closed = plane_->SweepUnclaimed();
  }
  EXPECT_EQ(closed, 3u) << "all three in one sweep, not one a timeout";
  EXPECT_EQ(plane_->channels(), 1u);  // the quiet one stays
  EXPECT_EQ(plane_->unclaimed_dropped(), 6u);
  EXPECT_THAT(plane_->Close(quiet.channel), IsOk());
}

TEST_F(DataPlaneTest, MessagesNamingNoOpenChannelAreDroppedAtTheNextSweep) {
  Client c;
  ASSERT_NO_FATAL_FAILURE(Open(&c));
  // Tags whose channel bits name no open channel, sent over c's connection.
  const uint32_t nobody = static_cast<uint32_t>(c.channel) ^ 0x5a5a5a5au;
  ASSERT_NO_FATAL_FAILURE(Send(c, {1, 2, 3}, nobody));
  plane_->SweepUnclaimed();
  EXPECT_EQ(plane_->unclaimed_dropped(), 3u);
  EXPECT_EQ(plane_->channels(), 1u);
}

// Connects at once cannot each pass the max_channels check while the others connect: the
// slot is taken before the endpoints are made. Before, every one of them could get a channel.
TEST_F(DataPlaneTest, ConnectsAtOnceStayWithinMaxChannels) {
  plane_.reset();
  Init(2);
  constexpr int kClients = 8;
  std::vector<std::unique_ptr<Context>> contexts;
  std::vector<std::string> addresses;
  std::vector<std::unique_ptr<Worker>> workers;
  for (int i = 0; i < kClients; ++i) {
    auto context = Context::Create(TransportOptions{"tcp", {}, true});
    ASSERT_THAT(context, IsOk());
    auto worker = (*context)->CreateWorker();
    ASSERT_THAT(worker, IsOk());
    addresses.push_back((*worker)->Address());
    workers.push_back(std::move(*worker));
    contexts.push_back(std::move(*context));
  }
  std::atomic<int> opened{0}, refused{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < kClients; ++i) {
    threads.emplace_back([&, i] {
      auto channel = plane_->Connect({&addresses[i], 1}, contexts[i]->tcp_segments());
      if (channel.ok()) ++opened;
      if (channel.status().code() == absl::StatusCode::kResourceExhausted) ++refused;
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(opened.load(), 2);
  EXPECT_EQ(refused.load(), kClients - 2);
  EXPECT_EQ(plane_->channels(), 2u);
}

// One owner (a node's tenant) holds at most max_channels_per_owner channels; another owner, and
// callers without one, still connect, and a channel closed makes room for the owner again.
TEST_F(DataPlaneTest, OneOwnerHoldsAtMostItsShareOfTheChannels) {
  plane_.reset();
  Init(8, 2);
  auto context = Context::Create(TransportOptions{"tcp", {}, true});
  ASSERT_THAT(context, IsOk());
  auto worker = (*context)->CreateWorker();
  ASSERT_THAT(worker, IsOk());
  const std::string address = (*worker)->Address();
  auto connect = [&](absl::string_view owner) {
    return plane_->Connect({&address, 1}, (*context)->tcp_segments(), owner);
  };
  auto a1 = connect("tenant-a");
  ASSERT_THAT(a1, IsOk());
  ASSERT_THAT(connect("tenant-a"), IsOk());
  EXPECT_THAT(connect("tenant-a"), testutil::StatusIs(absl::StatusCode::kResourceExhausted,
                                                      ::testing::HasSubstr("tenant-a holds 2")));
  EXPECT_THAT(connect("tenant-b"), IsOk());
  for (int i = 0; i < 3; ++i) EXPECT_THAT(connect(""), IsOk());
  ASSERT_THAT(plane_->Close(a1->id), IsOk());
  EXPECT_THAT(connect("tenant-a"), IsOk());
  EXPECT_EQ(plane_->channels(), 6u);
}

// A shared-memory plane whose lanes are checked every 100 ms, and a client worker with one
// channel to it (the lane check tests). Destroyed in reverse: the channel, the worker, the
// context, the plane, then the arena it maps.
struct ShmLanes {
  std::vector<uint8_t> arena = std::vector<uint8_t>(1 << 20);
  std::unique_ptr<DataPlane> plane;
  std::unique_ptr<Context> context;
  std::unique_ptr<Worker> worker;
  std::string address;
  DataPlane::Channel first;

  void Start(uint32_t max_replaced_lanes) {
    DataPlaneOptions o;
    o.tls = "shm";
    o.max_block_bytes = 64 << 10;
    o.lane_check_interval = absl::Milliseconds(100);
    o.max_replaced_lanes = max_replaced_lanes;
    auto p = DataPlane::Create(o, arena.data(), arena.size());
    ASSERT_THAT(p, IsOk());
    plane = std::move(*p);
    auto c = Context::Create(TransportOptions{plane->tls(), {}, false});
    ASSERT_THAT(c, IsOk());
    context = std::move(*c);
    auto w = context->CreateWorker();
    ASSERT_THAT(w, IsOk());
    worker = std::move(*w);
    address = worker->Address();
    auto f = plane->Connect({&address, 1}, context->tcp_segments());
    ASSERT_THAT(f, IsOk());
    first = std::move(*f);
  }
};

// Over shared memory a lane that stops reading (Worker::StallForTest, as a wedged receive
// queue looks from outside) is found by the lane check and gets a new worker; its channels
// are closed, and a client that connects again moves messages on it. The rest of the node
// (Stats' channel count, other connects) is not held up while the old worker goes.
TEST(DataPlaneLaneCheckTest, AStalledSharedMemoryLaneGetsANewWorker) {
  ShmLanes l;
  ASSERT_NO_FATAL_FAILURE(l.Start(16));
  auto& [arena, plane, context, worker, address, first] = l;
  ASSERT_THAT(plane->StallLaneForTest(0), IsOk());
  for (int i = 0; i < 300 && plane->lanes_replaced() == 0; ++i) {
    absl::SleepFor(absl::Milliseconds(100));
  }
  ASSERT_EQ(plane->lanes_replaced(), 1u);
  EXPECT_FALSE(plane->Knows(first.id)) << "the lane's channels are closed";
  auto second = plane->Connect({&address, 1}, context->tcp_segments());
  ASSERT_THAT(second, IsOk());
  EXPECT_NE(second->worker_addresses[0], first.worker_addresses[0]);
  auto ep = worker->Connect(second->worker_addresses[0]);
  ASSERT_THAT(ep, IsOk());
  const uint64_t tag = second->id << 32 | 1;
  std::vector<uint8_t> payload(1000, 0x3c);
  const TransferOp send = TransferOp::Send(payload.data(), payload.size(), tag);
  ASSERT_THAT(worker->Transfer(*ep, {&send, 1}, absl::Now() + absl::Seconds(5)), IsOk());
  const TransferOp recv = TransferOp::Recv(arena.data(), payload.size(), tag);
  ASSERT_THAT(plane->Transfer(second->id, 0, {&recv, 1}, absl::Now() + absl::Seconds(5)), IsOk());
  EXPECT_EQ(arena[999], 0x3c);
  worker->Abandon(*ep).IgnoreError();
}

// Replaced lanes keep their old workers (a thread and descriptors each) until the plane goes,
// so they are capped: past max_replaced_lanes (0 here) a wedged lane is left as it is and
// counted in lanes_wedged(), which the node's /healthz reports. Before 2026-11-29 every wedge
// replaced its lane, without bound.
TEST(DataPlaneLaneCheckTest, AWedgedLanePastTheCapIsLeftAndCounted) {
  ShmLanes l;
  ASSERT_NO_FATAL_FAILURE(l.Start(0));
  EXPECT_EQ(l.plane->lanes_wedged(), 0u);
  ASSERT_THAT(l.plane->StallLaneForTest(0), IsOk());
  for (int i = 0; i < 300 && l.plane->lanes_wedged() == 0 && l.plane->lanes_replaced() == 0; ++i) {
    absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_EQ(l.plane->lanes_wedged(), 1u);
  EXPECT_EQ(l.plane->lanes_replaced(), 0u);
  EXPECT_TRUE(l.plane->Knows(l.first.id)) << "a lane left as it is keeps its channels";
}

}  // namespace
}  // namespace strata::transport
