// Context, MemoryRegion and Worker over real UCX: two contexts in this process connected over
// TCP and over shared memory, and a re-executed copy of this binary as a peer in another
// process (so its death can be a real kill -9). Every wait is bounded by a deadline of a few
// seconds.

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "sealed_bytes.h"
#include "strata/testutil/status_matchers.h"
#include "strata/transport/context.h"
#include "strata/transport/worker.h"
#include "transport_pair_fixture.h"
#include "ucp_context.h"

extern char** environ;

namespace strata::transport {
namespace {

using pair_test::CaseName;
using pair_test::Fill;
using pair_test::kKiB;
using pair_test::kMiB;
using pair_test::kShm;
using pair_test::kTcp;
using pair_test::MakeNode;
using pair_test::Node;
using pair_test::Pattern;
using pair_test::TlsCase;
using pair_test::TransportPairTest;

using ::strata::testutil::IsOk;
using ::strata::testutil::StatusIs;
using ::testing::AnyOf;
using ::testing::HasSubstr;

#define ASSERT_OK_AND_MOVE(lhs, expr)              \
  auto lhs##_or = (expr);                          \
  ASSERT_TRUE(lhs##_or.ok()) << lhs##_or.status(); \
  auto lhs = std::move(lhs##_or).value()

// ---------------------------------------------------------------------------------------
// The child peer: when this binary runs with kChildEnv set, it serves as a remote peer before
// gtest starts and never returns to it.

constexpr char kChildEnv[] = "STRATA_TRANSPORT_TEST_CHILD_TLS";
constexpr char kChildPeerFailureEnv[] = "STRATA_TRANSPORT_TEST_CHILD_PEER_FAILURE";
constexpr size_t kChildArena = 8 * kMiB;
constexpr uint64_t kChildSeed = 77;

int RunChildPeer(const char* tls) {
  const char* peer_failure = getenv(kChildPeerFailureEnv);
  absl::StatusOr<std::unique_ptr<Context>> ctx =
      Context::Create(TransportOptions{tls, {}, peer_failure == nullptr || peer_failure[0] != '0'});
  if (!ctx.ok()) {
    printf("ERR %s\n", ctx.status().ToString().c_str());
    return 1;
  }
  // Like a store node: an mmap'd arena registered once.
  void* arena =
      mmap(nullptr, kChildArena, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (arena == MAP_FAILED) return 1;
  Fill(arena, kChildArena, kChildSeed);
  absl::StatusOr<std::unique_ptr<MemoryRegion>> region = (*ctx)->Register(arena, kChildArena);
  absl::StatusOr<std::unique_ptr<Worker>> worker = (*ctx)->CreateWorker();
  if (!region.ok() || !worker.ok()) {
    printf("ERR region/worker\n");
    return 1;
  }
  printf("%s\n%s\n%llu\n", absl::BytesToHexString((*worker)->Address()).c_str(),
         absl::BytesToHexString((*region)->PackedRkey()).c_str(),
         static_cast<unsigned long long>((*region)->remote_addr()));
  fflush(stdout);
  char c;
  while (read(STDIN_FILENO, &c, 1) > 0) {
  }
  return 0;
}

[[maybe_unused]] const bool kRanAsChild = [] {
  const char* tls = getenv(kChildEnv);
  if (tls == nullptr) return false;
  _exit(RunChildPeer(tls));
}();

struct ChildPeer {
  pid_t pid = -1;
  int to_child = -1;  // closing it makes the child exit
  std::string address;
  std::string rkey;
  uint64_t base = 0;

  ~ChildPeer() {
    if (to_child >= 0) close(to_child);
    if (pid > 0) {
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
    }
  }
};

// Starts this binary as a child peer over `tls` and reads its address, rkey and arena base.
absl::Status StartChild(const std::string& tls, bool peer_failure_handling, ChildPeer* child) {
  int in_pipe[2], out_pipe[2];
  if (pipe2(in_pipe, O_CLOEXEC) != 0 || pipe2(out_pipe, O_CLOEXEC) != 0) {
    return absl::InternalError("pipe2");
  }
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, in_pipe[0], STDIN_FILENO);
  posix_spawn_file_actions_adddup2(&actions, out_pipe[1], STDOUT_FILENO);
  std::vector<std::string> env_strings;
  for (char** e = environ; *e != nullptr; ++e) env_strings.emplace_back(*e);
  env_strings.push_back(absl::StrCat(kChildEnv, "=", tls));
  env_strings.push_back(absl::StrCat(kChildPeerFailureEnv, "=", peer_failure_handling ? 1 : 0));
  std::vector<char*> envp;
  for (auto& s : env_strings) envp.push_back(s.data());
  envp.push_back(nullptr);
  char exe[] = "/proc/self/exe";
  char* argv[] = {exe, nullptr};
  const int rc = posix_spawn(&child->pid, exe, &actions, nullptr, argv, envp.data());
  posix_spawn_file_actions_destroy(&actions);
  close(in_pipe[0]);
  close(out_pipe[1]);
  child->to_child = in_pipe[1];
  if (rc != 0) {
    close(out_pipe[0]);
    child->pid = -1;
    return absl::InternalError(absl::StrCat("posix_spawn: ", strerror(rc)));
  }
  std::string text;
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  while (std::count(text.begin(), text.end(), '\n') < 3 && absl::Now() < deadline) {
    pollfd pfd = {out_pipe[0], POLLIN, 0};
    if (poll(&pfd, 1, 100) <= 0) continue;
    char buf[4096];
    const ssize_t n = read(out_pipe[0], buf, sizeof(buf));
    if (n <= 0) break;
    text.append(buf, n);
  }
  close(out_pipe[0]);
  std::vector<std::string> lines = absl::StrSplit(text, '\n');
  if (lines.size() < 3 || absl::StartsWith(text, "ERR")) {
    return absl::UnavailableError(absl::StrCat("child peer did not start: ", text));
  }
  child->address = absl::HexStringToBytes(lines[0]);
  child->rkey = absl::HexStringToBytes(lines[1]);
  if (!absl::SimpleAtoi(lines[2], &child->base)) return absl::InternalError("child base");
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------

INSTANTIATE_TEST_SUITE_P(Tls, TransportPairTest, ::testing::Values(kTcp, kShm), CaseName);

TEST_P(TransportPairTest, PutThenGetIsBitExactAcrossSizes) {
  struct Shape {
    size_t size;
    size_t ops;
  };
  for (const Shape shape : {Shape{4 * kKiB, 64}, Shape{256 * kKiB, 24}, Shape{2 * kMiB, 4}}) {
    SCOPED_TRACE(absl::StrCat(shape.size, " bytes x ", shape.ops));
    const size_t total = shape.size * shape.ops;
    ASSERT_LE(2 * total, kArena);
    std::vector<uint8_t> expected = Pattern(total, shape.size);
    std::memcpy(local_.data(), expected.data(), total);
    std::memset(remote(0), 0, kArena);
    // Block i goes to remote slot (ops - 1 - i): a wrong address shows as misplaced bytes.
    std::vector<TransferOp> puts;
    for (size_t i = 0; i < shape.ops; ++i) {
      puts.push_back(
          Op(TransferOp::Kind::kPut, i * shape.size, (shape.ops - 1 - i) * shape.size, shape.size));
    }
    ASSERT_THAT(client_.worker->Transfer(ep_, puts, Soon()), IsOk());
    for (size_t i = 0; i < shape.ops; ++i) {
      ASSERT_EQ(0, std::memcmp(remote((shape.ops - 1 - i) * shape.size),
                               expected.data() + i * shape.size, shape.size))
          << "put " << i;
    }
    // Get it all back into the second half of the local buffer, in the original order.
    std::memset(local_.data() + total, 0xEE, total);
    std::vector<TransferOp> gets;
    for (size_t i = 0; i < shape.ops; ++i) {
      gets.push_back(Op(TransferOp::Kind::kGet, total + i * shape.size,
                        (shape.ops - 1 - i) * shape.size, shape.size));
    }
    ASSERT_THAT(client_.worker->Transfer(ep_, gets, Soon()), IsOk());
    ASSERT_EQ(0, std::memcmp(local_.data() + total, expected.data(), total));
  }
}

// Tagged messages: the receiver posts where each tag's bytes go, the sender names only the
// tag. An empty message completes its receive with length 0 ("nothing for this tag").
TEST_P(TransportPairTest, TaggedMessagesLandWhereTheReceiverPutThem) {
  absl::StatusOr<EndpointId> back = server_.worker->Connect(client_.worker->Address());
  ASSERT_THAT(back, IsOk());
  constexpr size_t kSize = 512 * kKiB, kMessages = 8;
  std::vector<uint8_t> expected = Pattern(kSize * kMessages, kSize);
  std::memcpy(local_.data(), expected.data(), expected.size());
  std::memset(remote(0), 0xEE, kSize * kMessages);
  std::vector<size_t> received(kMessages, 12345);
  std::vector<TransferOp> recvs, sends;
  for (size_t i = 0; i < kMessages; ++i) {
    // Message i lands in slot (kMessages - 1 - i); the last one is empty.
    recvs.push_back(
        TransferOp::Recv(remote((kMessages - 1 - i) * kSize), kSize, 1000 + i, &received[i]));
    sends.push_back(
        TransferOp::Send(local_.data() + i * kSize, i + 1 == kMessages ? 0 : kSize, 1000 + i));
  }
  absl::Status recv_status;
  std::thread receiver([&] { recv_status = server_.worker->Transfer(*back, recvs, Soon()); });
  EXPECT_THAT(client_.worker->Transfer(ep_, sends, Soon()), IsOk());
  receiver.join();
  ASSERT_THAT(recv_status, IsOk());
  for (size_t i = 0; i + 1 < kMessages; ++i) {
    EXPECT_EQ(received[i], kSize);
    EXPECT_EQ(0,
              std::memcmp(remote((kMessages - 1 - i) * kSize), expected.data() + i * kSize, kSize))
        << "message " << i;
  }
  EXPECT_EQ(received[kMessages - 1], 0u);
  EXPECT_EQ(remote(0)[0], 0xEE) << "an empty message wrote bytes";
}

// A receive no one sends to ends at its deadline, without the drain grace that transfers
// with puts of their own get (before: a 100 ms deadline over tcp returned after 1.1 s). The
// receiving node here has a grace of an hour, so the check is whether it returns, not how
// fast: the minute it is given rules out the hour, whatever the machine's load.
TEST_P(TransportPairTest, ReceiveWithoutASenderEndsAtItsDeadline) {
  absl::StatusOr<Node> patient = MakeNode(GetParam(), absl::Hours(1));
  ASSERT_THAT(patient, IsOk());
  absl::StatusOr<EndpointId> back = patient->worker->Connect(client_.worker->Address());
  ASSERT_THAT(back, IsOk());
  absl::StatusOr<EndpointId> to_patient = client_.worker->Connect(patient->worker->Address());
  ASSERT_THAT(to_patient, IsOk());
  std::vector<uint8_t> buffer(4096, 0xAB);
  TransferOp recv = TransferOp::Recv(buffer.data(), buffer.size(), 77);
  absl::Status received;
  absl::Notification returned;
  std::thread receiver([&] {
    received = patient->worker->Transfer(*back, {&recv, 1}, absl::Now() + absl::Milliseconds(100));
    returned.Notify();
  });
  // (Should the hour's wait come back, the join below holds the test until ctest's timeout.)
  EXPECT_TRUE(returned.WaitForNotificationWithTimeout(absl::Minutes(1)))
      << "the receive waited out the drain grace";
  receiver.join();
  EXPECT_THAT(received, StatusIs(absl::StatusCode::kDeadlineExceeded));
  // A message for that tag sent later is not written into the cancelled receive's buffer.
  std::memset(local_.data(), 0x11, 4096);
  TransferOp late = TransferOp::Send(local_.data(), 4096, 77);
  client_.worker->Transfer(*to_patient, {&late, 1}, absl::Now() + absl::Milliseconds(300))
      .IgnoreError();
  EXPECT_EQ(buffer[0], 0xAB);
}

// A put waits for no other call's receive on the same endpoint (paced over shared memory:
// one-sided copies take turns). Before, a receive the peer had not filled yet held the put
// until its deadline, which then retired the endpoint under both.
TEST_P(TransportPairTest, APutDoesNotWaitForAnotherCallsReceive) {
  absl::Status waiting = absl::UnknownError("not run");
  TransferOp recv = TransferOp::Recv(local_.data() + kArena / 2, 4096, 4242);
  std::thread receiver([&] {
    waiting = client_.worker->Transfer(ep_, {&recv, 1}, absl::Now() + absl::Seconds(20));
  });
  absl::SleepFor(absl::Milliseconds(100));  // the receive is posted first
  std::memset(local_.data(), 0x5C, 4096);
  std::memset(remote(0), 0, 4096);
  TransferOp put = Op(TransferOp::Kind::kPut, 0, 0, 4096);
  EXPECT_THAT(client_.worker->Transfer(ep_, {&put, 1}, Soon()), IsOk());
  EXPECT_EQ(remote(0)[4095], 0x5C);
  // The receive is still waiting for its message: it gets it.
  std::memset(remote(4096), 0x3A, 4096);
  absl::StatusOr<EndpointId> back = server_.worker->Connect(client_.worker->Address());
  ASSERT_THAT(back, IsOk());
  TransferOp send = TransferOp::Send(remote(4096), 4096, 4242);
  EXPECT_THAT(server_.worker->Transfer(*back, {&send, 1}, Soon()), IsOk());
  receiver.join();
  EXPECT_THAT(waiting, IsOk());
  EXPECT_EQ(local_[kArena / 2 + 4095], 0x3A);
}

TEST_P(TransportPairTest, AbortCancelsPendingReceivesAndKeepsTheEndpoint) {
  absl::StatusOr<EndpointId> back = server_.worker->Connect(client_.worker->Address());
  ASSERT_THAT(back, IsOk());
  TransferOp recv = TransferOp::Recv(remote(0), 4096, 91);
  std::atomic<bool> abort{false};
  std::thread aborter([&] {
    absl::SleepFor(absl::Milliseconds(50));
    abort = true;
  });
  const absl::Time start = absl::Now();
  EXPECT_THAT(server_.worker->Transfer(*back, {&recv, 1}, start + absl::Seconds(10), &abort),
              StatusIs(absl::StatusCode::kCancelled));
  aborter.join();
  // Receives only: the endpoint still works.
  std::memset(local_.data(), 0x5A, 4096);
  TransferOp send = TransferOp::Send(local_.data(), 4096, 92);
  TransferOp recv2 = TransferOp::Recv(remote(0), 4096, 92);
  absl::Status recv_status;
  std::thread receiver([&] { recv_status = server_.worker->Transfer(*back, {&recv2, 1}, Soon()); });
  EXPECT_THAT(client_.worker->Transfer(ep_, {&send, 1}, Soon()), IsOk());
  receiver.join();
  EXPECT_THAT(recv_status, IsOk());
  EXPECT_EQ(remote(0)[100], 0x5A);
}

// Over TCP a receive on an endpoint force-closed under it (another call's deadline, a
// client's fence) ends at once, UNAVAILABLE: receives belong to the worker, not the endpoint,
// and used to wait for their deadline (here 20 s) after the endpoint was gone. Over shared
// memory the peer's messages still reach the worker: the receive takes one sent later (the
// transfer still fails, its flush cancelled), so that message does not linger unclaimed.
TEST_P(TransportPairTest, AReceiveOnAnEndpointClosedUnderItEndsUnavailableOverTcp) {
  const bool tcp = std::string_view(GetParam().tls) == "tcp";
  std::memset(local_.data(), 0x3c, 4096);
  absl::Status got;
  // The close must come after the receive is posted: a test thread off the CPU for the
  // closer's 100 ms finds its endpoint gone already (INVALID_ARGUMENT), and goes again, with a
  // tag of its own (the last try's late message may still be on its way).
  for (uint64_t tries = 0; tries < 3 && (tries == 0 || absl::IsInvalidArgument(got)); ++tries) {
    const uint64_t tag = 93 + tries;
    TransferOp recv = TransferOp::Recv(remote(0), 4096, tag);
    absl::StatusOr<EndpointId> back = server_.worker->Connect(client_.worker->Address());
    ASSERT_THAT(back, IsOk());
    std::thread closer([&] {
      absl::SleepFor(absl::Milliseconds(100));
      server_.worker->Abandon(*back).IgnoreError();
      if (tcp) return;
      TransferOp late = TransferOp::Send(local_.data(), 4096, tag);
      client_.worker->Transfer(ep_, {&late, 1}, absl::Now() + absl::Seconds(5)).IgnoreError();
    });
    got = server_.worker->Transfer(*back, {&recv, 1}, absl::Now() + absl::Seconds(20));
    closer.join();
  }
  EXPECT_THAT(got, StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_EQ(remote(0)[17] == 0x3c, !tcp) << "the late message landed";
}

// Messages that arrive before any receive wait in UCX's unexpected queue. OldestUnclaimed names
// the first to arrive; DropUnclaimed drops those a tag and mask select (an eager message's
// bytes at once, a rendezvous message without its payload moving, its sender completing) and
// leaves the others to the receives that claim them.
TEST_P(TransportPairTest, UnclaimedMessagesCanBeSeenAndDropped) {
  absl::StatusOr<EndpointId> back = server_.worker->Connect(client_.worker->Address());
  ASSERT_THAT(back, IsOk());
  constexpr uint64_t kHigh = 0xffffffff00000000ull, kExact = ~uint64_t{0};
  constexpr uint64_t kSmall = uint64_t{1} << 32, kLarge = uint64_t{2} << 32, kNone = 3ull << 32;
  auto oldest = [&](uint64_t tag, uint64_t mask) {
    return server_.worker->OldestUnclaimed({&tag, 1}, mask)[0];
  };
  auto drop = [&](std::vector<uint64_t> tags, uint64_t mask) {
    return server_.worker->DropUnclaimed(tags, mask);
  };
  EXPECT_EQ(oldest(0, 0), std::nullopt);
  std::vector<uint8_t> expected = Pattern(4 * 4096, 4096);
  std::memcpy(local_.data(), expected.data(), expected.size());
  std::vector<TransferOp> eager;
  for (uint64_t k = 1; k <= 4; ++k) {
    eager.push_back(TransferOp::Send(local_.data() + (k - 1) * 4096, 4096, kSmall | k));
  }
  ASSERT_THAT(client_.worker->Transfer(ep_, eager, Soon()), IsOk());
  // A 4 MiB message goes by rendezvous: its send completes only once the receiver answers.
  TransferOp large = TransferOp::Send(local_.data() + kMiB, 4 * kMiB, kLarge | 1);
  absl::Status large_sent;
  std::atomic<bool> large_done{false};
  std::thread sender([&] {
    large_sent = client_.worker->Transfer(ep_, {&large, 1}, Soon());
    large_done = true;
  });
  for (int i = 0; i < 500 && oldest(kLarge, kHigh) == std::nullopt; ++i) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  const std::vector<uint64_t> prefixes = {kSmall, kLarge, kNone};
  EXPECT_THAT(server_.worker->OldestUnclaimed(prefixes, kHigh),
              ::testing::ElementsAre(kSmall | 1, kLarge | 1, std::nullopt));
  EXPECT_EQ(oldest(0, 0), kSmall | 1);  // the first to arrive
  absl::SleepFor(absl::Milliseconds(100));
  EXPECT_FALSE(large_done) << "the large send did not wait for its receiver (not rendezvous)";
  std::memset(remote(0), 0xEE, 4 * 4096);
  EXPECT_EQ(drop({kLarge}, kHigh), 1u);
  sender.join();
  EXPECT_THAT(large_sent, IsOk());
  EXPECT_EQ(drop({kSmall | 2, kNone | 2}, kExact), 1u);
  EXPECT_EQ(drop({kSmall | 2}, kExact), 0u);
  // The others are still there for their receives, bytes intact.
  std::vector<TransferOp> claims;
  for (uint64_t k : {1, 3, 4}) {
    claims.push_back(TransferOp::Recv(remote((k - 1) * 4096), 4096, kSmall | k));
  }
  ASSERT_THAT(server_.worker->Transfer(*back, claims, Soon()), IsOk());
  for (uint64_t k : {1, 3, 4}) {
    EXPECT_EQ(0, std::memcmp(remote((k - 1) * 4096), expected.data() + (k - 1) * 4096, 4096)) << k;
  }
  EXPECT_EQ(oldest(0, 0), std::nullopt);
  // The dropped one is gone: its receive waits for its deadline and writes nothing.
  TransferOp gone = TransferOp::Recv(remote(4096), 4096, kSmall | 2);
  EXPECT_THAT(server_.worker->Transfer(*back, {&gone, 1}, absl::Now() + absl::Milliseconds(200)),
              StatusIs(absl::StatusCode::kDeadlineExceeded));
  EXPECT_EQ(remote(4096)[0], 0xEE);
}

TEST_P(TransportPairTest, MixedBatchOf64Ops) {
  constexpr size_t kBlock = 16 * kKiB;
  // Remote [0, 32 blocks) holds data to get; remote [32, 64 blocks) receives puts.
  Fill(remote(0), 32 * kBlock, 5);
  std::memset(remote(32 * kBlock), 0, 32 * kBlock);
  Fill(local_.data(), 32 * kBlock, 6);
  std::memset(local_.data() + 32 * kBlock, 0, 32 * kBlock);
  std::vector<TransferOp> ops;
  for (size_t i = 0; i < 32; ++i) {
    ops.push_back(Op(TransferOp::Kind::kPut, i * kBlock, (32 + i) * kBlock, kBlock));
    ops.push_back(Op(TransferOp::Kind::kGet, (32 + i) * kBlock, i * kBlock, kBlock));
  }
  ASSERT_EQ(ops.size(), 64u);
  ASSERT_THAT(client_.worker->Transfer(ep_, ops, Soon()), IsOk());
  EXPECT_EQ(0, std::memcmp(remote(32 * kBlock), Pattern(32 * kBlock, 6).data(), 32 * kBlock));
  EXPECT_EQ(0,
            std::memcmp(local_.data() + 32 * kBlock, Pattern(32 * kBlock, 5).data(), 32 * kBlock));
}

TEST_P(TransportPairTest, ConcurrentTransfersFromManyThreads) {
  constexpr int kThreads = 4;
  constexpr size_t kSlice = 64 * kKiB;
  constexpr int kRounds = 20;
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      const size_t base = t * 2 * kSlice;
      for (int r = 0; r < kRounds; ++r) {
        Fill(local_.data() + base, kSlice, t * 1000 + r);
        TransferOp put = Op(TransferOp::Kind::kPut, base, base, kSlice);
        TransferOp get = Op(TransferOp::Kind::kGet, base + kSlice, base, kSlice);
        if (!client_.worker->Transfer(ep_, {&put, 1}, Soon()).ok() ||
            !client_.worker->Transfer(ep_, {&get, 1}, Soon()).ok() ||
            std::memcmp(local_.data() + base, local_.data() + base + kSlice, kSlice) != 0) {
          ++failures;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
}

TEST_P(TransportPairTest, GarbageRkeyIsInvalidArgumentAndEndpointStaysUsable) {
  const std::string good = arena_->PackedRkey();
  std::string flipped = good;
  flipped[flipped.size() / 2] ^= 0x40;
  std::string random(good.size(), '\0');
  Fill(random.data(), random.size(), 99);
  const std::vector<std::string> bad = {
      "",
      "x",
      random,
      good.substr(0, good.size() - 1),
      flipped,
      server_.worker->Address(),  // well-formed, but not an rkey
  };
  std::memset(remote(0), 0, 4 * kKiB);
  Fill(local_.data(), 4 * kKiB, 1);
  for (size_t i = 0; i < bad.size(); ++i) {
    SCOPED_TRACE(i);
    // A good op first: a bad rkey anywhere in the batch must stop it before anything moves.
    TransferOp ops[2] = {Op(TransferOp::Kind::kPut, 0, 0, 4 * kKiB),
                         Op(TransferOp::Kind::kPut, 0, 4 * kKiB, 4 * kKiB)};
    ops[1].packed_rkey = bad[i];
    EXPECT_THAT(client_.worker->Transfer(ep_, ops, Soon()),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("op 1")));
    EXPECT_EQ(remote(0)[0], 0) << "nothing may be posted when a batch is rejected";
  }
  TransferOp ok = Op(TransferOp::Kind::kPut, 0, 0, 4 * kKiB);
  ASSERT_THAT(client_.worker->Transfer(ep_, {&ok, 1}, Soon()), IsOk());
  EXPECT_EQ(0, std::memcmp(remote(0), local_.data(), 4 * kKiB));
}

// A peer may seal bytes of its own making (the seal catches corruption, not forgery): an
// rkey whose md_map names more memory domains than it carries is refused before UCX, which
// reads it without a length, walks past its end. The endpoint stays usable.
TEST_P(TransportPairTest, ASealedRkeyThatOverrunsItsBytesIsRefusedBeforeUcxReadsIt) {
  absl::StatusOr<absl::string_view> packed = Unseal(kRkeyTag, arena_->PackedRkey(), "rkey");
  ASSERT_THAT(packed, IsOk());
  std::string forged(*packed);
  forged[7] = static_cast<char>(0xff);  // md_map: 8 more memory domains at the top
  TransferOp op = Op(TransferOp::Kind::kPut, 0, 0, 4 * kKiB);
  const std::string sealed = Seal(kRkeyTag, forged.data(), forged.size());
  op.packed_rkey = sealed;
  EXPECT_THAT(client_.worker->Transfer(ep_, {&op, 1}, Soon()),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("md_map")));
  std::string bad_type(*packed);
  bad_type[8] = static_cast<char>(0xee);
  const std::string sealed_type = Seal(kRkeyTag, bad_type.data(), bad_type.size());
  op.packed_rkey = sealed_type;
  EXPECT_THAT(client_.worker->Transfer(ep_, {&op, 1}, Soon()),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("memory type")));
  TransferOp ok = Op(TransferOp::Kind::kPut, 0, 0, 4 * kKiB);
  EXPECT_THAT(client_.worker->Transfer(ep_, {&ok, 1}, Soon()), IsOk());
}

TEST_P(TransportPairTest, BadOpsAndEndpointsAreInvalidArgument) {
  TransferOp null_local = Op(TransferOp::Kind::kGet, 0, 0, 8);
  null_local.local = nullptr;
  EXPECT_THAT(client_.worker->Transfer(ep_, {&null_local, 1}, Soon()),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("null")));
  TransferOp wrap = Op(TransferOp::Kind::kGet, 0, 0, 8);
  wrap.remote_addr = ~uint64_t{0} - 3;
  EXPECT_THAT(client_.worker->Transfer(ep_, {&wrap, 1}, Soon()),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("wraps")));
  TransferOp op = Op(TransferOp::Kind::kGet, 0, 0, 8);
  EXPECT_THAT(client_.worker->Transfer(ep_ + 100, {&op, 1}, Soon()),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("unknown endpoint")));
  EXPECT_THAT(client_.worker->Connect("not an address"),
              StatusIs(absl::StatusCode::kInvalidArgument));
  std::string address = server_.worker->Address();
  address[address.size() / 2] ^= 1;
  EXPECT_THAT(client_.worker->Connect(address), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(client_.worker->Connect(arena_->PackedRkey()),
              StatusIs(absl::StatusCode::kInvalidArgument));
  // An empty batch only flushes.
  EXPECT_THAT(client_.worker->Transfer(ep_, {}, Soon()), IsOk());
  // Disconnect removes the id.
  ASSERT_THAT(client_.worker->Disconnect(ep_), IsOk());
  EXPECT_THAT(client_.worker->Disconnect(ep_), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(client_.worker->Transfer(ep_, {&op, 1}, Soon()),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST_P(TransportPairTest, PastDeadlinePostsNothingAndEndpointStaysUsable) {
  std::memset(remote(0), 0, 4 * kKiB);
  Fill(local_.data(), 4 * kKiB, 3);
  TransferOp op = Op(TransferOp::Kind::kPut, 0, 0, 4 * kKiB);
  EXPECT_THAT(client_.worker->Transfer(ep_, {&op, 1}, absl::Now() - absl::Milliseconds(1)),
              StatusIs(absl::StatusCode::kDeadlineExceeded));
  EXPECT_EQ(remote(0)[0], 0);
  ASSERT_THAT(client_.worker->Transfer(ep_, {&op, 1}, Soon()), IsOk());
  EXPECT_EQ(0, std::memcmp(remote(0), local_.data(), 4 * kKiB));
}

TEST_P(TransportPairTest, DeadlineMidTransferRetiresEndpoint) {
  // 16 MiB both ways, 8 times over (256 MiB), cannot finish in 20 ms over any transport here;
  // 20 ms rather than 1 so that a busy machine still posts before the deadline.
  std::vector<TransferOp> ops;
  for (int r = 0; r < 8; ++r) {
    ops.push_back(Op(TransferOp::Kind::kPut, 0, 0, kArena / 2));
    ops.push_back(Op(TransferOp::Kind::kGet, kArena / 2, kArena / 2, kArena / 2));
  }
  // On a machine so busy that 20 ms pass before the first post, the transfer posts nothing
  // and the endpoint stays (PastDeadlinePostsNothingAndEndpointStaysUsable): try again.
  absl::Status cut_short;
  for (int attempt = 0; attempt < 5; ++attempt) {
    cut_short = client_.worker->Transfer(ep_, ops, absl::Now() + absl::Milliseconds(20));
    if (!absl::StrContains(cut_short.message(), "before anything was posted")) break;
  }
  EXPECT_THAT(cut_short, StatusIs(absl::StatusCode::kDeadlineExceeded, HasSubstr("retired")));
  TransferOp small = Op(TransferOp::Kind::kPut, 0, 0, 64);
  EXPECT_THAT(client_.worker->Transfer(ep_, {&small, 1}, Soon()),
              StatusIs(absl::StatusCode::kUnavailable, HasSubstr("deadline")));
  EXPECT_THAT(client_.worker->DescribeEndpoint(ep_), StatusIs(absl::StatusCode::kUnavailable));
  // Reconnecting gives a working endpoint.
  ASSERT_THAT(client_.worker->Disconnect(ep_), IsOk());
  ASSERT_OK_AND_MOVE(fresh, client_.worker->Connect(server_.worker->Address()));
  Fill(local_.data(), 64, 8);
  std::memset(remote(0), 0, 64);
  ASSERT_THAT(client_.worker->Transfer(fresh, {&small, 1}, Soon()), IsOk());
  EXPECT_EQ(0, std::memcmp(remote(0), local_.data(), 64));
}

TEST_P(TransportPairTest, DescribeEndpointNamesTheTransport) {
  TransferOp op = Op(TransferOp::Kind::kPut, 0, 0, 64);
  ASSERT_THAT(client_.worker->Transfer(ep_, {&op, 1}, Soon()), IsOk());
  ASSERT_OK_AND_MOVE(info, client_.worker->DescribeEndpoint(ep_));
  if (std::string(GetParam().name) == "tcp") {
    EXPECT_THAT(info, HasSubstr("tcp/"));
  } else {
    EXPECT_THAT(info, AnyOf(HasSubstr("cma/"), HasSubstr("posix/"), HasSubstr("sysv/")));
    EXPECT_THAT(info, ::testing::Not(HasSubstr("tcp/")));
  }
  EXPECT_THAT(client_.context->Describe(), ::testing::Not(::testing::IsEmpty()));
}

TEST(TransportTcpTest, PeerTornDownInProcessFailsFast) {
  ASSERT_OK_AND_MOVE(client, MakeNode(kTcp));
  ASSERT_OK_AND_MOVE(server, MakeNode(kTcp));
  ASSERT_OK_AND_MOVE(arena, server.context->Allocate(kMiB));
  std::vector<uint8_t> buf(kMiB);
  ASSERT_OK_AND_MOVE(ep, client.worker->Connect(server.worker->Address()));
  const std::string rkey = arena->PackedRkey();  // outlives the arena
  TransferOp op{.kind = TransferOp::Kind::kPut,
                .local = buf.data(),
                .length = buf.size(),
                .remote_addr = arena->remote_addr(),
                .packed_rkey = rkey};
  ASSERT_THAT(client.worker->Transfer(ep, {&op, 1}, absl::Now() + absl::Seconds(5)), IsOk());
  server.worker.reset();
  arena.reset();
  server.context.reset();
  const absl::Time start = absl::Now();
  const absl::Time deadline = start + absl::Seconds(3);
  absl::Status s = client.worker->Transfer(ep, {&op, 1}, deadline);
  EXPECT_THAT(s, AnyOf(StatusIs(absl::StatusCode::kUnavailable),
                       StatusIs(absl::StatusCode::kDeadlineExceeded)));
  // Bounded by the deadline plus the documented drain and abandon grace (1.2 s).
  // Whatever the first answer, the endpoint is now known dead.
  EXPECT_THAT(client.worker->Transfer(ep, {&op, 1}, absl::Now() + absl::Seconds(3)),
              StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_THAT(client.worker->Disconnect(ep), IsOk());
}

// A peer in another process, killed with SIGKILL.
class ChildPeerTest : public ::testing::TestWithParam<TlsCase> {};

INSTANTIATE_TEST_SUITE_P(Tls, ChildPeerTest, ::testing::Values(kTcp, kShm), CaseName);

TEST_P(ChildPeerTest, RoundTripThenKillFailsFast) {
  ChildPeer child;
  ASSERT_THAT(StartChild(GetParam().tls, GetParam().peer_failure_handling, &child), IsOk());
  ASSERT_OK_AND_MOVE(node, MakeNode(GetParam()));
  std::vector<uint8_t> buf(2 * kMiB);
  ASSERT_OK_AND_MOVE(region, node.context->Register(buf.data(), buf.size()));
  ASSERT_OK_AND_MOVE(ep, node.worker->Connect(child.address));
  auto op = [&](TransferOp::Kind kind, size_t local_off, size_t remote_off, size_t len) {
    return TransferOp{.kind = kind,
                      .local = buf.data() + local_off,
                      .length = len,
                      .remote_addr = child.base + remote_off,
                      .packed_rkey = child.rkey};
  };
  // The child's arena holds Pattern(kChildSeed): getting it proves bytes crossed processes.
  TransferOp get_all = op(TransferOp::Kind::kGet, 0, 0, kMiB);
  ASSERT_THAT(node.worker->Transfer(ep, {&get_all, 1}, absl::Now() + absl::Seconds(5)), IsOk());
  EXPECT_EQ(0, std::memcmp(buf.data(), Pattern(kChildArena, kChildSeed).data(), kMiB));
  Fill(buf.data(), kMiB, 4);
  TransferOp round_trip[2] = {op(TransferOp::Kind::kPut, 0, 3 * kMiB, kMiB),
                              op(TransferOp::Kind::kGet, kMiB, 3 * kMiB, kMiB)};
  ASSERT_THAT(node.worker->Transfer(ep, {&round_trip[0], 1}, absl::Now() + absl::Seconds(5)),
              IsOk());
  ASSERT_THAT(node.worker->Transfer(ep, {&round_trip[1], 1}, absl::Now() + absl::Seconds(5)),
              IsOk());
  EXPECT_EQ(0, std::memcmp(buf.data(), buf.data() + kMiB, kMiB));
  ASSERT_OK_AND_MOVE(info, node.worker->DescribeEndpoint(ep));
  RecordProperty("endpoint", info);

  ASSERT_EQ(kill(child.pid, SIGKILL), 0);
  ASSERT_EQ(waitpid(child.pid, nullptr, 0), child.pid);
  child.pid = -1;
  const absl::Time start = absl::Now();
  absl::Status s = node.worker->Transfer(ep, {&round_trip[0], 1}, start + absl::Seconds(3));
  EXPECT_THAT(s, AnyOf(StatusIs(absl::StatusCode::kUnavailable),
                       StatusIs(absl::StatusCode::kDeadlineExceeded)))
      << info;
  // Bounded by the deadline plus the documented drain and abandon grace (1.2 s).
  EXPECT_THAT(node.worker->Transfer(ep, {&round_trip[1], 1}, absl::Now() + absl::Seconds(3)),
              StatusIs(absl::StatusCode::kUnavailable));
}

// Pins the UCX 1.13 behaviour worker.h documents: with peer-failure handling no RMA-capable
// shared-memory transport is left, so an endpoint cannot even be created.
TEST(ContextTest, PeerFailureHandlingRulesOutSharedMemory) {
  ASSERT_OK_AND_MOVE(a, MakeNode({"shm-peer", "posix,sysv,cma,self", true}));
  ASSERT_OK_AND_MOVE(b, MakeNode({"shm-peer", "posix,sysv,cma,self", true}));
  EXPECT_THAT(a.worker->Connect(b.worker->Address()),
              StatusIs(absl::StatusCode::kUnavailable, HasSubstr("unreachable")));
}

TEST(ContextTest, OptionsAndRegistrationErrors) {
  // UCX stores unknown names for its transports without checking them; bad values of known
  // settings are rejected.
  EXPECT_THAT(Context::Create(TransportOptions{"tcp", {{"RNDV_THRESH", "not-a-size"}}, true}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("RNDV_THRESH")));
  ASSERT_OK_AND_MOVE(ctx,
                     Context::Create(TransportOptions{"tcp", {{"UCX_RNDV_THRESH", "64k"}}, true}));
  EXPECT_THAT(ctx->Register(nullptr, 10), StatusIs(absl::StatusCode::kInvalidArgument));
  std::vector<uint8_t> buf(4096);
  EXPECT_THAT(ctx->Register(buf.data(), 0), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(ctx->Allocate(0), StatusIs(absl::StatusCode::kInvalidArgument));
  ASSERT_OK_AND_MOVE(region, ctx->Register(buf.data(), buf.size()));
  EXPECT_EQ(region->base(), buf.data());
  EXPECT_EQ(region->size(), buf.size());
  EXPECT_TRUE(region->Contains(buf.data(), buf.size()));
  EXPECT_TRUE(region->Contains(buf.data() + 4095, 1));
  EXPECT_FALSE(region->Contains(buf.data() + 4095, 2));
  EXPECT_FALSE(region->Contains(buf.data() - 1, 1));
  EXPECT_FALSE(region->Contains(buf.data() + 1, SIZE_MAX));
  EXPECT_FALSE(region->PackedRkey().empty());
  // An unaligned range is the caller's, to its last byte (UCX reports its start aligned
  // down; until 2026-11-29 the region was that start and the caller's length, short at the
  // tail, so blocks there took the bounce path).
  ASSERT_OK_AND_MOVE(unaligned, ctx->Register(buf.data() + 4, 100));
  EXPECT_EQ(unaligned->base(), buf.data() + 4);
  EXPECT_TRUE(unaligned->Contains(buf.data() + 103, 1));
  EXPECT_FALSE(unaligned->Contains(buf.data() + 104, 1));
  // Regions and workers keep the UCX context alive after the Context object is gone.
  ASSERT_OK_AND_MOVE(allocated, ctx->Allocate(100));
  ASSERT_OK_AND_MOVE(worker, ctx->CreateWorker());
  ctx.reset();
  std::memset(allocated->base(), 0xAB, 100);
  EXPECT_FALSE(worker->Address().empty());
}

// What decides whether a context may use TCP (its segment sizes, how long its workers poll):
// UCX_TLS from the environment, replaced by options.tls, replaced by a TLS setting.
TEST(ContextTest, TheTransportsInUseComeFromTheEnvironmentOptionsAndSettingsInThatOrder) {
  setenv("UCX_TLS", "shm", 1);
  EXPECT_EQ(EffectiveTls(TransportOptions{"", {}, true}), "shm");
  EXPECT_EQ(EffectiveTls(TransportOptions{"tcp", {}, true}), "tcp");
  EXPECT_EQ(EffectiveTls(TransportOptions{"tcp", {{"UCX_TLS", "sm,self"}}, true}), "sm,self");
  EXPECT_EQ(EffectiveTls(TransportOptions{"", {{"TLS", "rc"}, {"KEEPALIVE_INTERVAL", "2s"}}, true}),
            "rc");
  unsetenv("UCX_TLS");
  EXPECT_EQ(EffectiveTls(TransportOptions{"", {}, true}), "");
}

// UCX 1.13 aborts a process that receives a tcp segment larger than its own rx size, so the
// sizes a context runs with are known, ours by default, and checked against a peer's.
TEST(ContextTest, TcpSegmentSizesAreOursUnlessNamedAndAreCheckedAgainstAPeer) {
  unsetenv("UCX_TCP_TX_SEG_SIZE");
  unsetenv("UCX_TCP_RX_SEG_SIZE");
  ASSERT_OK_AND_MOVE(ours, Context::Create(TransportOptions{"tcp", {}, true}));
  EXPECT_EQ(ours->tcp_segments().tx, kStrataTcpSegments.tx);
  EXPECT_EQ(ours->tcp_segments().rx, kStrataTcpSegments.rx);
  // Every spelling UCX users write names the tcp transport's sizes.
  for (const char* tx_name : {"UCX_TCP_TX_SEG_SIZE", "TCP_TX_SEG_SIZE", "TX_SEG_SIZE"}) {
    SCOPED_TRACE(tx_name);
    ASSERT_OK_AND_MOVE(named, Context::Create(TransportOptions{
                                  "tcp", {{tx_name, "8k"}, {"TCP_RX_SEG_SIZE", "1M"}}, true}));
    EXPECT_EQ(named->tcp_segments().tx, 8u << 10);
    EXPECT_EQ(named->tcp_segments().rx, 1u << 20);
  }
  EXPECT_THAT(Context::Create(TransportOptions{"tcp", {{"TCP_TX_SEG_SIZE", "lots"}}, true}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("TCP_TX_SEG_SIZE")));

  EXPECT_THAT(CheckTcpSegments(kStrataTcpSegments, kStrataTcpSegments, "tcp"), IsOk());
  // Ours fit a peer on UCX's defaults (zero fields) both ways.
  EXPECT_THAT(CheckTcpSegments(kStrataTcpSegments, {}, "tcp"), IsOk());
  EXPECT_THAT(CheckTcpSegments(kUcxDefaultTcpSegments, kStrataTcpSegments, "tcp"), IsOk());
  // 256 KiB sends would abort a peer that receives 64 KiB, in either direction.
  const TcpSegments big{256 << 10, 512 << 10};
  EXPECT_THAT(CheckTcpSegments(big, {}, "tcp"),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("this side sends")));
  EXPECT_THAT(CheckTcpSegments(kUcxDefaultTcpSegments, big, "^ib"),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("the peer sends")));
  // Without tcp among the transports the sizes do not matter.
  EXPECT_THAT(CheckTcpSegments(big, {}, "posix,sysv,cma,self"), IsOk());
}

}  // namespace
}  // namespace strata::transport
