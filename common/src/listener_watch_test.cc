#include "strata/common/listener_watch.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <memory>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace strata {
namespace {

// A listening socket on a free loopback port; nobody accepts on it unless a test does.
struct Listener {
  Listener() {
    fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
    EXPECT_EQ(listen(fd, 64), 0);
    socklen_t len = sizeof(a);
    getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
    port = ntohs(a.sin_port);
  }
  ~Listener() { close(fd); }
  int fd = -1;
  int port = 0;
};

// A connected client socket (the kernel completes the handshake into the accept queue).
int ConnectTo(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(static_cast<uint16_t>(port));
  EXPECT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  return fd;
}

// Polls `watch` until it reports a listener, or `limit` passes.
std::string BrokenWithin(const ListenerWatch& watch, absl::Duration limit) {
  const absl::Time end = absl::Now() + limit;
  std::string why;
  while ((why = watch.Broken()).empty() && absl::Now() < end) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  return why;
}

TEST(ListenerWatchTest, RaisesTheSoftOpenFileLimitToTheHardOne) {
  rlimit saved{};
  ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &saved), 0);
  if (saved.rlim_max != RLIM_INFINITY && saved.rlim_max < 512) GTEST_SKIP() << "hard limit < 512";
  rlimit low = saved;
  low.rlim_cur = 256;
  ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &low), 0);
  const uint64_t raised = RaiseOpenFileLimit();
  rlimit now{};
  ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &now), 0);
  ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &saved), 0);
  EXPECT_EQ(raised, now.rlim_cur);
  EXPECT_GT(now.rlim_cur, 256u);
  if (saved.rlim_max != RLIM_INFINITY) {
    EXPECT_LE(now.rlim_cur, saved.rlim_max);
  }
}

TEST(ListenerWatchTest, CountsTheConnectionsNobodyAccepted) {
  Listener l;
  EXPECT_TRUE(SampleAcceptQueue(l.port).read);
  EXPECT_EQ(SampleAcceptQueue(l.port).listeners, 1);
  EXPECT_EQ(SampleAcceptQueue(l.port).queued, 0u);
  std::vector<int> clients;
  for (int i = 0; i < 3; ++i) clients.push_back(ConnectTo(l.port));
  EXPECT_EQ(SampleAcceptQueue(l.port).queued, 3u);
  const int taken = accept(l.fd, nullptr, nullptr);
  ASSERT_GE(taken, 0);
  EXPECT_EQ(SampleAcceptQueue(l.port).queued, 2u);
  close(taken);
  for (int fd : clients) close(fd);
  EXPECT_EQ(SampleAcceptQueue(1).listeners, 0) << "no listener of this process on port 1";
  const std::vector<int> ports = ListeningPorts();
  EXPECT_TRUE(std::binary_search(ports.begin(), ports.end(), l.port));
  EXPECT_FALSE(std::binary_search(ports.begin(), ports.end(), 1));
}

// A listener nobody accepts on is reported once connections have waited for the window;
// taking them clears it.
TEST(ListenerWatchTest, AListenerThatStoppedAcceptingIsReportedUntilItAcceptsAgain) {
  Listener l;
  auto watch = ListenerWatch::Start({l.port}, absl::Milliseconds(300), absl::Milliseconds(20));
  absl::SleepFor(absl::Milliseconds(100));
  EXPECT_EQ(watch->Broken(), "") << "nothing waits yet";
  const int client = ConnectTo(l.port);
  const std::string why = BrokenWithin(*watch, absl::Seconds(20));
  EXPECT_THAT(why, testing::HasSubstr("stopped accepting connections (1 waiting"));
  const int taken = accept(l.fd, nullptr, nullptr);
  ASSERT_GE(taken, 0);
  const absl::Time end = absl::Now() + absl::Seconds(20);
  while (!watch->Broken().empty() && absl::Now() < end) absl::SleepFor(absl::Milliseconds(10));
  EXPECT_EQ(watch->Broken(), "");
  close(taken);
  close(client);
}

// A listener that was there and is closed is reported for good; one that never was is not;
// a watch stopped reports nothing.
TEST(ListenerWatchTest, AListenerThatIsGoneIsReported) {
  auto l = std::make_unique<Listener>();
  const int port = l->port;
  auto watch = ListenerWatch::Start({port, 1}, absl::Milliseconds(300), absl::Milliseconds(20));
  absl::SleepFor(absl::Milliseconds(100));
  EXPECT_EQ(watch->Broken(), "") << "port 1 never had a listener of this process";
  l.reset();
  EXPECT_EQ(BrokenWithin(*watch, absl::Seconds(20)),
            absl::StrCat("the listener on port ", port, " is gone"));
  watch->Stop();
  EXPECT_EQ(watch->Broken(), "");
}

// A listener that accepts is never reported, however many connections come in the window.
TEST(ListenerWatchTest, AListenerThatAcceptsIsNotReported) {
  Listener l;
  std::atomic<bool> done{false};
  std::thread acceptor([&] {
    while (!done) {
      const int fd = accept(l.fd, nullptr, nullptr);
      if (fd >= 0) close(fd);
    }
  });
  auto watch = ListenerWatch::Start({l.port}, absl::Seconds(1), absl::Milliseconds(20));
  const absl::Time end = absl::Now() + absl::Milliseconds(2500);
  int connections = 0;
  while (absl::Now() < end) {
    close(ConnectTo(l.port));
    ++connections;
    EXPECT_EQ(watch->Broken(), "");
  }
  EXPECT_GT(connections, 10);
  done = true;
  close(ConnectTo(l.port));  // wakes the acceptor
  acceptor.join();
}

}  // namespace
}  // namespace strata
