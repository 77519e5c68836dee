// Worker::Transfer's hooks (TransferHooks) and its caller's abort on the two-worker fixture,
// over tcp and shared memory: receives handed to the caller as they land; an aborted receive
// whose message stalled midway.
#include <atomic>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "strata/testutil/status_matchers.h"
#include "strata/transport/worker.h"
#include "transport_pair_fixture.h"

#if defined(__SANITIZE_THREAD__)
extern "C" void AnnotateIgnoreReadsBegin(const char* file, int line);
extern "C" void AnnotateIgnoreReadsEnd(const char* file, int line);
#endif

namespace strata::transport {
namespace {

using pair_test::kKiB;
using pair_test::Pattern;
using pair_test::TransportPairTest;
using ::strata::testutil::IsOk;
using ::strata::testutil::StatusIs;

// on_landed hands the caller each receive as it lands (bytes final), on its thread, while the
// rest is in flight: the sender holds messages 1 and 2 back until the caller saw message 0 (at
// most 5 s). A receive the caller's abort cancels is never handed over.
TEST_P(TransportPairTest, ReceivesAreHandedToTheCallerAsTheyLand) {
  absl::StatusOr<EndpointId> back = server_.worker->Connect(client_.worker->Address());
  ASSERT_THAT(back, IsOk());
  constexpr size_t kSize = 256 * kKiB, kMessages = 3;
  std::vector<uint8_t> expected = Pattern(kSize * kMessages, kSize);
  std::memcpy(local_.data(), expected.data(), expected.size());
  std::memset(remote(0), 0xEE, kSize * (kMessages + 1));
  std::vector<size_t> received(kMessages + 1, 0);
  std::vector<TransferOp> recvs;  // the last one gets no message
  for (size_t i = 0; i <= kMessages; ++i) {
    recvs.push_back(TransferOp::Recv(remote(i * kSize), kSize, 3000 + i, &received[i]));
  }
  absl::Notification first_seen;
  std::atomic<bool> abort{false};
  std::vector<size_t> landed;
  bool bytes_final = true, on_caller_thread = true;
  const std::thread::id caller = std::this_thread::get_id();
  TransferHooks hooks;
  hooks.on_landed = [&](size_t i) {
    landed.push_back(i);
    on_caller_thread &= std::this_thread::get_id() == caller;
    bytes_final &= i < kMessages && received[i] == kSize &&
                   std::memcmp(remote(i * kSize), expected.data() + i * kSize, kSize) == 0;
    if (i == 0) first_seen.Notify();
    if (landed.size() == kMessages) abort = true;  // ends the batch: receive 3 is cancelled
  };
  bool held_back_until_seen = false;
  absl::Status sent_first, sent_rest;
  std::thread sender([&] {
    TransferOp first = TransferOp::Send(local_.data(), kSize, 3000);
    sent_first = client_.worker->Transfer(ep_, {&first, 1}, Soon());
    held_back_until_seen = first_seen.WaitForNotificationWithTimeout(absl::Seconds(5));
    const TransferOp rest[] = {TransferOp::Send(local_.data() + kSize, kSize, 3001),
                               TransferOp::Send(local_.data() + 2 * kSize, kSize, 3002)};
    sent_rest = client_.worker->Transfer(ep_, rest, Soon());
  });
  EXPECT_THAT(server_.worker->Transfer(*back, recvs, Soon(), &abort, &hooks),
              StatusIs(absl::StatusCode::kCancelled));
  sender.join();
  EXPECT_TRUE(sent_first.ok() && sent_rest.ok()) << sent_first << sent_rest;
  EXPECT_TRUE(held_back_until_seen) << "message 0 was handed over only with the rest";
  EXPECT_THAT(landed, ::testing::UnorderedElementsAre(0, 1, 2));  // message 0 first: above
  EXPECT_TRUE(on_caller_thread && bytes_final) << on_caller_thread << bytes_final;
  EXPECT_EQ(remote(kMessages * kSize)[0], 0xEE);
}

// A worker destroyed under a transfer still in flight answers it UNAVAILABLE rather than
// leaving its caller waiting out a 60 s deadline (or forever): the transfer is seen in flight
// when its first receive lands, and the second never gets a message.
TEST_P(TransportPairTest, AWorkerGoingAwayAnswersTheTransfersItHasInFlight) {
  absl::StatusOr<EndpointId> back = server_.worker->Connect(client_.worker->Address());
  ASSERT_THAT(back, IsOk());
  const TransferOp recvs[] = {TransferOp::Recv(remote(0), 4 * kKiB, 4000),
                              TransferOp::Recv(remote(4 * kKiB), 4 * kKiB, 4001)};
  absl::Notification in_flight, answered;
  TransferHooks hooks;
  hooks.on_landed = [&](size_t) { in_flight.Notify(); };
  absl::Status status;
  std::thread waiter([&] {
    status =
        server_.worker->Transfer(*back, recvs, absl::Now() + absl::Seconds(60), nullptr, &hooks);
    answered.Notify();
  });
  TransferOp first = TransferOp::Send(local_.data(), 4 * kKiB, 4000);
  ASSERT_THAT(client_.worker->Transfer(ep_, {&first, 1}, Soon()), IsOk());
  ASSERT_TRUE(in_flight.WaitForNotificationWithTimeout(absl::Seconds(10)));
  server_.worker.reset();
  if (!answered.WaitForNotificationWithTimeout(absl::Seconds(20))) {
    waiter.detach();  // blocked for good: leave it rather than hang the suite
    FAIL() << "the transfer was never answered";
  }
  waiter.join();
  EXPECT_THAT(status, StatusIs(absl::StatusCode::kUnavailable));
}

// Two workers over tcp with 256 KiB socket buffers, so that a large message is still on its
// way for a while, connected both ways; the client's drain grace as given.
struct SmallBufferPair {
  pair_test::Node node, client;
  EndpointId to_client = 0, to_node = 0;

  void Start(absl::Duration client_drain_grace) {
    setenv("UCX_TCP_SNDBUF", "256K", 1);
    setenv("UCX_TCP_RCVBUF", "256K", 1);
    absl::StatusOr<pair_test::Node> n = pair_test::MakeNode(pair_test::kTcp);
    absl::StatusOr<pair_test::Node> c = pair_test::MakeNode(pair_test::kTcp, client_drain_grace);
    unsetenv("UCX_TCP_SNDBUF");
    unsetenv("UCX_TCP_RCVBUF");
    ASSERT_THAT(n, IsOk());
    ASSERT_THAT(c, IsOk());
    node = std::move(*n);
    client = std::move(*c);
    absl::StatusOr<EndpointId> tc = node.worker->Connect(client.worker->Address());
    absl::StatusOr<EndpointId> tn = client.worker->Connect(node.worker->Address());
    ASSERT_THAT(tc, IsOk());
    ASSERT_THAT(tn, IsOk());
    to_client = *tc;
    to_node = *tn;
  }
};

// An abort ends a receive whose message was already arriving when its sender stopped midway
// (a client that stalled, or died without its connection closing): the receiver's endpoint is
// retired and the batch answers UNAVAILABLE. A cancel withdraws only unmatched receives, so
// before 2026-11-29 the batch waited out its deadline (here 20 s; for a node's PutData up to
// max_lease_ms, holding the call's slots), then answered CANCELLED. Over tcp with small socket
// buffers, so that the 32 MiB message is still on its way when the sender stalls.
TEST(TransportAbortTest, AnAbortedReceiveWhoseMessageStalledRetiresItsEndpoint) {
  constexpr size_t kSize = 32 << 20;
  constexpr size_t kPage = 4 * kKiB;
  struct Attempt {
    size_t landed = 0;    // pages of the message in the buffer when the test saw the first
    size_t at_abort = 0;  // and when it aborted, after the stall
    absl::Status received;
    bool sent = false;  // the sender's call ended once its worker went
  };
  auto attempt = [&](Attempt& a) {
    SmallBufferPair p;
    ASSERT_NO_FATAL_FAILURE(p.Start(absl::Seconds(1)));
    auto& [node, client, to_client, to_node] = p;
    std::vector<uint8_t> src(kSize, 0xAA);
    std::vector<uint8_t> dst(kSize, 0);
    // Reads the buffer while UCX's thread writes it (racy on purpose: a glimpse of progress).
    auto pages_landed = [&] {
#if defined(__SANITIZE_THREAD__)
      AnnotateIgnoreReadsBegin(__FILE__, __LINE__);
#endif
      size_t n = 0;
      for (size_t i = 0; i < kSize; i += kPage) {
        n += reinterpret_cast<volatile uint8_t*>(dst.data())[i] != 0;
      }
#if defined(__SANITIZE_THREAD__)
      AnnotateIgnoreReadsEnd(__FILE__, __LINE__);
#endif
      return n;
    };
    const absl::Time deadline = absl::Now() + absl::Seconds(20);
    std::atomic<bool> abort{false};
    absl::Notification sent;
    std::thread receiver([&] {
      TransferOp recv = TransferOp::Recv(dst.data(), kSize, 7);
      a.received = node.worker->Transfer(to_client, {&recv, 1}, deadline, &abort);
    });
    std::thread sender([&] {
      TransferOp send = TransferOp::Send(src.data(), kSize, 7);
      client.worker->Transfer(to_node, {&send, 1}, deadline).IgnoreError();
      sent.Notify();
    });
    while ((a.landed = pages_landed()) == 0 && absl::Now() < deadline - absl::Seconds(10)) {
      absl::SleepFor(absl::Microseconds(200));
    }
    client.worker->StallForTest();
    absl::SleepFor(absl::Milliseconds(20));
    a.at_abort = pages_landed();
    abort = true;
    receiver.join();
    client.worker.reset();  // answers its send
    sender.join();
    a.sent = sent.HasBeenNotified();
  };
  // The stall must come while the message is still arriving: on a busy machine the test's
  // thread can be off the CPU for the whole 32 MiB (tens of ms), so that case goes again.
  Attempt a;
  for (int tries = 0; tries < 5 && (tries == 0 || a.at_abort == kSize / kPage); ++tries) {
    a = Attempt{};
    ASSERT_NO_FATAL_FAILURE(attempt(a));
  }
  ASSERT_GT(a.landed, 0u) << "nothing of the message arrived";
  ASSERT_LT(a.at_abort, kSize / kPage) << "the whole message arrived before the stall, 5 times";
  EXPECT_THAT(a.received,
              StatusIs(absl::StatusCode::kUnavailable, ::testing::HasSubstr("retired")));
  EXPECT_TRUE(a.sent);
}

// An aborted batch of sends over TCP is not force-closed at once: a peer still receiving
// takes the rest of the message within the drain grace (10 s here), and the sender's call
// ends CANCELLED once it has. Before the sixth session of 2026-11-29 the endpoint was
// force-closed at the abort: the receiver lost the message mid-way, and the sender's UCX
// 1.13 progress thread could crash later (uct_tcp_iface_progress into the freed endpoint).
TEST(TransportAbortTest, AnAbortedSendOverTcpFinishesWhileItsPeerReceives) {
  constexpr size_t kSize = 32 << 20;
  struct Attempt {
    bool landed = false;  // the receiver had the first page of the message when it aborted
    bool whole = false;   // and the last
    absl::Status received, sent;
    std::vector<uint8_t> dst = std::vector<uint8_t>(kSize, 0);
  };
  const std::vector<uint8_t> src(kSize, 0xAA);
  auto attempt = [&](Attempt& a) {
    SmallBufferPair p;
    ASSERT_NO_FATAL_FAILURE(p.Start(absl::Seconds(10)));
    auto& [node, client, to_client, to_node] = p;
    std::atomic<bool> abort{false};
    const absl::Time deadline = absl::Now() + absl::Seconds(30);
    std::thread receiver([&] {
      TransferOp recv = TransferOp::Recv(a.dst.data(), kSize, 9);
      a.received = node.worker->Transfer(to_client, {&recv, 1}, deadline);
    });
    std::thread sender([&] {
      TransferOp send = TransferOp::Send(src.data(), kSize, 9);
      a.sent = client.worker->Transfer(to_node, {&send, 1}, deadline, &abort);
    });
    // Reads the buffer while UCX's thread writes it (racy on purpose: a glimpse of progress).
    auto byte_at = [&](size_t i) {
#if defined(__SANITIZE_THREAD__)
      AnnotateIgnoreReadsBegin(__FILE__, __LINE__);
#endif
      const uint8_t b = reinterpret_cast<volatile uint8_t*>(a.dst.data())[i];
#if defined(__SANITIZE_THREAD__)
      AnnotateIgnoreReadsEnd(__FILE__, __LINE__);
#endif
      return b;
    };
    while (byte_at(0) == 0 && absl::Now() < deadline - absl::Seconds(20)) {
      absl::SleepFor(absl::Microseconds(200));
    }
    a.landed = byte_at(0) != 0;
    a.whole = byte_at(kSize - 1) != 0;
    abort = true;
    sender.join();
    receiver.join();
  };
  // The abort must reach the sender while the message is on its way: a test thread off the CPU
  // for the whole 32 MiB, or a send that completed before its worker saw the abort (OK),
  // goes again.
  Attempt a;
  for (int tries = 0; tries < 5 && (tries == 0 || a.whole || a.sent.ok()); ++tries) {
    a = Attempt{};
    ASSERT_NO_FATAL_FAILURE(attempt(a));
  }
  ASSERT_TRUE(a.landed) << "nothing of the message arrived";
  ASSERT_FALSE(a.whole) << "the whole message arrived before the abort, 5 times";
  ASSERT_FALSE(a.sent.ok()) << "the send completed before its worker saw the abort, 5 times";
  EXPECT_THAT(a.received, IsOk()) << "the receiver lost the message its sender gave up on";
  EXPECT_EQ(std::memcmp(a.dst.data(), src.data(), kSize), 0);
  EXPECT_THAT(a.sent, StatusIs(absl::StatusCode::kCancelled));
}

}  // namespace
}  // namespace strata::transport
