// The two-worker fixture of the transport tests (transport_test.cc, transport_hooks_test.cc):
// a client and a server worker, each with its own UCX context, over tcp and over shared
// memory, the server with a 16 MiB arena the client reaches by RMA. transport_test.cc
// instantiates it for both transports.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "strata/testutil/status_matchers.h"
#include "strata/transport/context.h"
#include "strata/transport/worker.h"

namespace strata::transport::pair_test {

using ::strata::testutil::IsOk;

constexpr size_t kKiB = 1024;
constexpr size_t kMiB = 1024 * kKiB;

// Deterministic bytes that differ per seed and position.
inline void Fill(void* p, size_t n, uint64_t seed) {
  auto* b = static_cast<uint8_t*>(p);
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  for (size_t i = 0; i < n; ++i) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    b[i] = static_cast<uint8_t>(x);
  }
}

inline std::vector<uint8_t> Pattern(size_t n, uint64_t seed) {
  std::vector<uint8_t> v(n);
  Fill(v.data(), n, seed);
  return v;
}

struct TlsCase {
  const char* name;
  const char* tls;
  bool peer_failure_handling;
};

// Shared memory: UCX 1.13 carries RMA over posix/sysv only without peer-failure handling
// (PeerFailureHandlingRulesOutSharedMemory); cma is there for large copies, self for a worker's
// endpoint to itself.
constexpr TlsCase kTcp = {"tcp", "tcp", true};
constexpr TlsCase kShm = {"shm", "posix,sysv,cma,self", false};

inline std::string CaseName(const ::testing::TestParamInfo<TlsCase>& info) {
  return info.param.name;
}

struct Node {
  std::unique_ptr<Context> context;
  std::unique_ptr<Worker> worker;
};

inline absl::StatusOr<Node> MakeNode(const TlsCase& tls,
                                     absl::Duration drain_grace = absl::Seconds(1)) {
  Node node;
  absl::StatusOr<std::unique_ptr<Context>> ctx =
      Context::Create(TransportOptions{tls.tls, {}, tls.peer_failure_handling, drain_grace});
  if (!ctx.ok()) return ctx.status();
  node.context = *std::move(ctx);
  absl::StatusOr<std::unique_ptr<Worker>> worker = node.context->CreateWorker();
  if (!worker.ok()) return worker.status();
  node.worker = *std::move(worker);
  return node;
}

class TransportPairTest : public ::testing::TestWithParam<TlsCase> {
 protected:
  static constexpr size_t kArena = 16 * kMiB;

  void SetUp() override {
    absl::StatusOr<Node> client = MakeNode(GetParam());
    ASSERT_THAT(client, IsOk());
    client_ = *std::move(client);
    absl::StatusOr<Node> server = MakeNode(GetParam());
    ASSERT_THAT(server, IsOk());
    server_ = *std::move(server);
    // The server's arena comes from UCX (shm segments); the client's buffers are its own heap.
    absl::StatusOr<std::unique_ptr<MemoryRegion>> arena = server_.context->Allocate(kArena);
    ASSERT_THAT(arena, IsOk());
    arena_ = *std::move(arena);
    local_.resize(kArena);
    absl::StatusOr<std::unique_ptr<MemoryRegion>> local =
        client_.context->Register(local_.data(), local_.size());
    ASSERT_THAT(local, IsOk());
    local_region_ = *std::move(local);
    absl::StatusOr<EndpointId> ep = client_.worker->Connect(server_.worker->Address());
    ASSERT_THAT(ep, IsOk());
    ep_ = *ep;
  }

  // Workers go first: the server's worker may still be applying puts that reached it before
  // the client gave up (DeadlineMidTransferRetiresEndpoint), and those need the arena.
  void TearDown() override {
    client_.worker.reset();
    server_.worker.reset();
  }

  TransferOp Op(TransferOp::Kind kind, size_t local_off, size_t remote_off, size_t len) {
    return TransferOp{.kind = kind,
                      .local = local_.data() + local_off,
                      .length = len,
                      .remote_addr = arena_->remote_addr() + remote_off,
                      .packed_rkey = arena_->PackedRkey()};
  }

  uint8_t* remote(size_t off) { return static_cast<uint8_t*>(arena_->base()) + off; }

  static absl::Time Soon() { return absl::Now() + absl::Seconds(5); }

  Node client_, server_;
  std::unique_ptr<MemoryRegion> arena_;
  std::vector<uint8_t> local_;
  std::unique_ptr<MemoryRegion> local_region_;
  EndpointId ep_ = 0;
};

}  // namespace strata::transport::pair_test
