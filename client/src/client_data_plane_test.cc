// ClientDataPlane against real UCX over tcp/lo: a second context in this process plays the
// node's lanes (as storenode's DataPlane does: it connects to the client's workers and drives
// every transfer).
#include "client_data_plane.h"

#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

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

TEST(ClientDataPlaneTest, RejectsBadGeometry) {
  EXPECT_THAT(MakePlane(0, 2), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(MakePlane(1, 0), StatusIs(absl::StatusCode::kInvalidArgument));
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
  const absl::Time start = absl::Now();
  EXPECT_THAT((*plane)->AcquireBounce(2, absl::Now() + absl::Milliseconds(50)),
              StatusIs(absl::StatusCode::kDeadlineExceeded));
  EXPECT_LT(absl::Now() - start, absl::Seconds(2));
  // The failed attempt gave back the one buffer it got.
  absl::StatusOr<std::vector<transport::BounceBuffer>> one = (*plane)->AcquireBounce(1, Soon());
  ASSERT_THAT(one, IsOk());
  one->clear();
  two->clear();
  absl::StatusOr<std::vector<transport::BounceBuffer>> all = (*plane)->AcquireBounce(3, Soon());
  EXPECT_THAT(all, IsOk());
  EXPECT_THAT((*plane)->AcquireBounce(0, absl::InfinitePast()), IsOk());
}

// The node's side of a channel: its own context and one worker per lane.
struct FakeNodeLanes {
  std::unique_ptr<transport::Context> context;
  std::vector<std::unique_ptr<transport::Worker>> workers;
  std::vector<transport::EndpointId> endpoints;
};

TEST(ClientDataPlaneTest, NodeLanesMoveBytesThroughBounceAndRegisteredMemory) {
  constexpr uint32_t kLanes = 2;
  absl::StatusOr<std::unique_ptr<ClientDataPlane>> plane = MakePlane(kLanes, 2);
  ASSERT_THAT(plane, IsOk());
  FakeNodeLanes node;
  {
    absl::StatusOr<std::unique_ptr<transport::Context>> ctx =
        transport::Context::Create(transport::TransportOptions{"tcp", {}, true});
    ASSERT_THAT(ctx, IsOk());
    node.context = *std::move(ctx);
  }
  std::vector<std::string> node_addresses;
  const std::vector<std::string> client_addresses = (*plane)->WorkerAddresses();
  ASSERT_EQ(client_addresses.size(), kLanes);
  for (uint32_t lane = 0; lane < kLanes; ++lane) {
    absl::StatusOr<std::unique_ptr<transport::Worker>> w = node.context->CreateWorker();
    ASSERT_THAT(w, IsOk());
    absl::StatusOr<transport::EndpointId> ep = (*w)->Connect(client_addresses[lane]);
    ASSERT_THAT(ep, IsOk());
    node.endpoints.push_back(*ep);
    node_addresses.push_back((*w)->Address());
    node.workers.push_back(*std::move(w));
  }
  EXPECT_THAT((*plane)->Wire({node_addresses[0]}), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT((*plane)->Wire({node_addresses[0], "garbage"}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("lane 1")));
  ASSERT_THAT((*plane)->Wire(node_addresses), IsOk());
  ASSERT_THAT((*plane)->Wire(node_addresses), IsOk());  // rewiring replaces the endpoints

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

}  // namespace
}  // namespace strata::client
