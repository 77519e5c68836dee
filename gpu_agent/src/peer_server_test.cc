// The GPU agent's peer server against a peer of this test's own (real UCX over tcp/lo): data
// channels a peer leaves open are closed once idle, so peers that die cannot use up the
// server's channels.
#include "peer_server.h"

#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <chrono>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "strata/testutil/status_matchers.h"
#include "strata/transport/context.h"
#include "strata/transport/worker.h"
#include "strata/v1/store.grpc.pb.h"

namespace strata::gpu_agent {
namespace {

using testutil::IsOk;

uint64_t DataChannels(v1::StoreService::Stub& stub) {
  v1::StatsResponse stats;
  grpc::ClientContext ctx;
  EXPECT_TRUE(stub.Stats(&ctx, v1::StatsRequest(), &stats).ok());
  return stats.data_channels();
}

TEST(PeerServerTest, DataChannelsAPeerLeftOpenAreClosedOnceIdle) {
  std::vector<uint8_t> region(4 * 4096);
  PeerServerOptions o;
  o.listen = "127.0.0.1:0";
  o.ucx_tls = "tcp";
  o.namespace_id = 1;
  o.block_bytes = 4096;
  o.max_blocks = 4;
  o.node_id = "agent-under-test";
  o.channel_idle = absl::Seconds(1);
  auto server =
      PeerServer::Start(o, region.data(), [](std::span<const ChainHash> hashes, uint8_t*) {
        return std::vector<absl::Status>(hashes.size(), absl::NotFoundError("not held"));
      });
  ASSERT_THAT(server, IsOk());
  auto stub = v1::StoreService::NewStub(grpc::CreateChannel(
      absl::StrCat("127.0.0.1:", (*server)->port()), grpc::InsecureChannelCredentials()));

  // A peer opens a channel, then goes away without CloseData.
  auto context = transport::Context::Create(transport::TransportOptions{"tcp", {}, true});
  ASSERT_THAT(context, IsOk());
  auto worker = (*context)->CreateWorker();
  ASSERT_THAT(worker, IsOk());
  v1::ConnectDataRequest req;
  req.add_worker_addresses((*worker)->Address());
  req.set_ucx_tcp_tx_seg_bytes((*context)->tcp_segments().tx);
  req.set_ucx_tcp_rx_seg_bytes((*context)->tcp_segments().rx);
  v1::ConnectDataResponse channel;
  {
    grpc::ClientContext ctx;
    grpc::Status s = stub->ConnectData(&ctx, req, &channel);
    ASSERT_TRUE(s.ok()) << s.error_message();
  }
  EXPECT_EQ(DataChannels(*stub), 1u);
  worker->reset();

  for (int i = 0; i < 100 && DataChannels(*stub) != 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_EQ(DataChannels(*stub), 0u);
  v1::CloseDataRequest close;
  close.set_channel_id(channel.channel_id());
  v1::CloseDataResponse closed;
  grpc::ClientContext ctx;
  EXPECT_EQ(stub->CloseData(&ctx, close, &closed).error_code(), grpc::StatusCode::NOT_FOUND);
}

}  // namespace
}  // namespace strata::gpu_agent
