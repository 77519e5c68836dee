// What the UCX integration tests share (ucx_integration_test.cc, ucx_unclaimed_test.cc): the
// namespace they use, raw stubs, /metrics values, data channels opened by hand, and nodes
// of their own loaded with blocks.
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "strata/client/local_node.h"
#include "strata/client/store_client.h"
#include "strata/testutil/node_process.h"
#include "strata/testutil/prompts.h"
#include "strata/testutil/status_matchers.h"
#include "strata/transport/context.h"
#include "strata/transport/worker.h"
#include "strata/v1/store.grpc.pb.h"

namespace strata::ucx_test {

inline constexpr uint64_t kMaxBlock = 4 << 20;

inline NamespaceSpec Spec() { return testutil::RawSpec("ucx-test", kMaxBlock); }

inline std::unique_ptr<v1::StoreService::Stub> RawStub(const std::string& address) {
  return v1::StoreService::NewStub(
      grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
}

// The value of a metric with one series (any labels) on the node's /metrics (0 if absent).
inline double MetricValue(const client::LocalNode& node, const std::string& name) {
  auto page = testutil::HttpGet(node.http_address(), "/metrics");
  if (!page.ok()) return 0;
  for (absl::string_view line : absl::StrSplit(page->second, '\n')) {
    if (!absl::StartsWith(line, name + " ") && !absl::StartsWith(line, name + "{")) continue;
    double v = 0;
    if (absl::SimpleAtod(line.substr(line.rfind(' ') + 1), &v)) return v;
  }
  return 0;
}

// A data channel opened by hand from this test's own UCX workers (what StoreClient does
// inside), to send what a well-behaved client would not.
struct RawChannel {
  v1::StatsResponse stats;
  std::unique_ptr<transport::Context> context;
  std::vector<std::unique_ptr<transport::Worker>> workers;  // one per node lane
  std::vector<transport::EndpointId> endpoints;
  v1::ConnectDataResponse channel;

  uint64_t Tag(uint32_t sequence) const { return channel.channel_id() << 32 | sequence; }
};

inline void OpenRawChannel(v1::StoreService::Stub& stub, RawChannel* out) {
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub.Stats(&ctx, v1::StatsRequest(), &out->stats).ok());
  }
  transport::TransportOptions topts;
  topts.tls = out->stats.ucx_tls();
  topts.peer_failure_handling = out->stats.ucx_peer_failure_handling();
  auto context = transport::Context::Create(topts);
  ASSERT_THAT(context, testutil::IsOk());
  out->context = std::move(*context);
  v1::ConnectDataRequest creq;
  creq.set_ucx_tcp_tx_seg_bytes(out->context->tcp_segments().tx);
  creq.set_ucx_tcp_rx_seg_bytes(out->context->tcp_segments().rx);
  for (uint32_t i = 0; i < out->stats.ucx_lanes(); ++i) {
    auto w = out->context->CreateWorker();
    ASSERT_THAT(w, testutil::IsOk());
    creq.add_worker_addresses((*w)->Address());
    out->workers.push_back(std::move(*w));
  }
  {
    grpc::ClientContext ctx;
    grpc::Status s = stub.ConnectData(&ctx, creq, &out->channel);
    ASSERT_TRUE(s.ok()) << s.error_message();
  }
  for (uint32_t i = 0; i < out->stats.ucx_lanes(); ++i) {
    auto ep = out->workers[i]->Connect(out->channel.worker_addresses(static_cast<int>(i)));
    ASSERT_THAT(ep, testutil::IsOk());
    out->endpoints.push_back(*ep);
  }
}

inline grpc::StatusCode CloseRawChannel(v1::StoreService::Stub& stub, const RawChannel& c) {
  v1::CloseDataRequest close;
  close.set_channel_id(c.channel.channel_id());
  v1::CloseDataResponse closed;
  grpc::ClientContext ctx;
  return stub.CloseData(&ctx, close, &closed).error_code();
}

// A node of its own holding `n` blocks of `size` bytes (each the same random block) under
// prompt `prompt`, and a UCX client for it with `o`'s other settings.
struct LoadedNode {
  std::unique_ptr<client::LocalNode> node;
  std::unique_ptr<client::StoreClient> client;
  client::Namespace ns;
  std::vector<ChainHash> hashes;
  std::vector<uint8_t> block;
};

inline void StartLoadedNode(const std::string& tls, const std::string& warm,
                            client::ClientOptions o, uint32_t prompt, size_t n, size_t size,
                            LoadedNode* out) {
  auto p =
      testutil::StartNode({"--warm-bytes", warm, "--max-block-bytes", "4MiB", "--ucx-tls", tls});
  ASSERT_THAT(p, testutil::IsOk());
  out->node = std::move(*p);
  o.address = out->node->address();
  o.data_plane = client::ClientOptions::DataPlane::kUcx;
  auto c = client::StoreClient::Connect(o);
  ASSERT_THAT(c, testutil::IsOk());
  out->client = std::move(*c);
  auto ns = out->client->RegisterNamespace(Spec());
  ASSERT_THAT(ns, testutil::IsOk());
  out->ns = *ns;
  out->hashes = testutil::PromptChain(out->ns, prompt, n);
  out->block = testutil::RandomBytes(prompt, size);
  for (size_t first = 0; first < n; first += 16) {
    std::vector<client::BlockWrite> writes;
    for (size_t i = first; i < std::min(n, first + 16); ++i) {
      writes.push_back({out->hashes[i], out->block.data(), size});
    }
    // Setup, not under test: exempt from the short default deadline some tests give `o`
    // (a sanitizer build loads 64 MiB over paced shared memory in more than 3 s).
    ASSERT_THAT(out->client->Put(out->ns, "", writes, client::CallOptions{absl::Seconds(60)}),
                testutil::IsOk());
  }
}

}  // namespace strata::ucx_test
