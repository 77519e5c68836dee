#include "strata/common/http_get.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "strata/common/http_endpoint.h"
#include "strata/testutil/status_matchers.h"

namespace strata {
namespace {

using ::testing::HasSubstr;
using testutil::StatusIs;

// A socket listening on a free loopback port (its "127.0.0.1:PORT" in *address); -1 on failure.
int Listen(std::string* address) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(sa);
  if (fd < 0 || bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0 || listen(fd, 4) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &len) != 0) {
    if (fd >= 0) close(fd);
    return -1;
  }
  *address = absl::StrCat("127.0.0.1:", ntohs(sa.sin_port));
  return fd;
}

TEST(OpTotalsTest, SumsAndCountsAreReadPerOp) {
  const std::string page =
      "# HELP strata_op_latency_seconds Handler time\n"
      "# TYPE strata_op_latency_seconds histogram\n"
      "strata_op_latency_seconds_count{op=\"lookup\",node=\"node-0\"} 5598\n"
      "strata_op_latency_seconds_sum{op=\"lookup\",node=\"node-0\"} 0.2277548799999997\n"
      "strata_op_latency_seconds_bucket{op=\"lookup\",node=\"node-0\",le=\"5e-05\"} 4564\n"
      "strata_op_latency_seconds_sum{op=\"get_data\",node=\"node-0\"} 1.5\n"
      "strata_op_latency_seconds_count{op=\"get_data\",node=\"node-0\"} 3\n"
      "strata_lookup_blocks_total{result=\"hit\",node=\"node-0\"} 1231398\n"
      "strata_op_latency_seconds_count{node=\"node-0\"} 7\n"               // no op: skipped
      "strata_op_latency_seconds_count{op=\"put_data\",node=\"n\"} x\n"    // no number: skipped
      "strata_op_latency_seconds_count{op=\"begin_put\",node=\"n\"} -1\n"  // negative: skipped
      "strata_op_latency_seconds_count{op=\"stats\",node=\"n\"} 4 1700000000000\n";  // timestamp
  const std::map<std::string, OpTotals> ops = ParseOpTotals(page);
  ASSERT_EQ(ops.size(), 3u);
  EXPECT_EQ(ops.at("stats").calls, 4u);
  EXPECT_EQ(ops.at("lookup").calls, 5598u);
  EXPECT_DOUBLE_EQ(ops.at("lookup").seconds, 0.2277548799999997);
  EXPECT_EQ(ops.at("get_data").calls, 3u);
  EXPECT_DOUBLE_EQ(ops.at("get_data").seconds, 1.5);
  EXPECT_DOUBLE_EQ(ops.at("get_data").mean_us(), 500000);
  EXPECT_EQ(OpTotals{}.mean_us(), 0);
  EXPECT_TRUE(ParseOpTotals("").empty());
}

TEST(HttpGetTest, ReadsANodesPagesAndTheirStatus) {
  bool ready = false;
  std::atomic<bool> broken{false};
  auto server = HttpEndpoint::Start(
      "127.0.0.1:0",
      {[] { return std::string("strata_op_latency_seconds_count{op=\"x\"} 2\n"); },
       [&] { return ready; }, [&] { return std::string(broken ? "a lane is wedged" : ""); }});
  ASSERT_THAT(server, testutil::IsOk());
  auto page = HttpGet((*server)->address(), "/metrics");
  ASSERT_THAT(page, testutil::IsOk());
  EXPECT_EQ(page->first, 200);
  EXPECT_EQ(ParseOpTotals(page->second).at("x").calls, 2u);
  auto not_ready = HttpGet((*server)->address(), "/readyz");
  ASSERT_THAT(not_ready, testutil::IsOk());
  EXPECT_EQ(not_ready->first, 503);
  ready = true;
  EXPECT_EQ(HttpGet((*server)->address(), "/readyz")->first, 200);
  // /healthz: 200 until the process says it is broken for good, then 503 and why.
  EXPECT_EQ(HttpGet((*server)->address(), "/healthz")->first, 200);
  broken = true;
  auto unhealthy = HttpGet((*server)->address(), "/healthz");
  ASSERT_THAT(unhealthy, testutil::IsOk());
  EXPECT_EQ(unhealthy->first, 503);
  EXPECT_THAT(unhealthy->second, HasSubstr("a lane is wedged"));
}

TEST(HttpGetTest, BadAddressesAndClosedPortsAreErrorsNotHangs) {
  for (const char* bad : {"", "localhost", "127.0.0.1", "127.0.0.1:x", "127.0.0.1:70000",
                          "example.com:80", "::1:80"}) {
    EXPECT_THAT(HttpGet(bad, "/metrics"), StatusIs(absl::StatusCode::kInvalidArgument)) << bad;
  }
  EXPECT_THAT(HttpGet("127.0.0.1:1", "/metrics", absl::ZeroDuration()),
              StatusIs(absl::StatusCode::kInvalidArgument));
  // Port 1 on loopback: nothing listens there (connection refused at once).
  absl::StatusOr<std::pair<int, std::string>> r = HttpGet("127.0.0.1:1", "/metrics");
  EXPECT_THAT(r, StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_THAT(r.status().message(), HasSubstr("connect failed"));
}

// A server that takes the connection but never answers: UNAVAILABLE once the timeout
// passes, not a hang.
TEST(HttpGetTest, ASilentServerTimesOut) {
  std::string address;
  const int fd = Listen(&address);  // the kernel completes connects; nobody accepts or answers
  ASSERT_GE(fd, 0);
  auto r = HttpGet(address, "/metrics", absl::Milliseconds(300));
  EXPECT_THAT(r, StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_THAT(r.status().message(), HasSubstr("timed out"));
  close(fd);
}

// A server whose answer has no end in sight (here 96 MiB): UNAVAILABLE at 64 MiB. Before,
// every byte was kept, and the deadline was looked at only when recv had to wait, which a
// fast sender never makes it do.
TEST(HttpGetTest, AnAnswerPastTheLimitIsRefused) {
  std::string address;
  const int fd = Listen(&address);
  ASSERT_GE(fd, 0);
  std::thread server([fd] {
    const int conn = accept(fd, nullptr, nullptr);
    if (conn < 0) return;
    const std::string head = "HTTP/1.1 200 OK\r\n\r\n";
    send(conn, head.data(), head.size(), MSG_NOSIGNAL);
    const std::string chunk(1 << 20, 'x');
    for (int i = 0; i < 96; ++i) {  // ends early once the reader hangs up
      if (send(conn, chunk.data(), chunk.size(), MSG_NOSIGNAL) <= 0) break;
    }
    close(conn);
  });
  auto r = HttpGet(address, "/metrics", absl::Seconds(60));
  server.join();
  close(fd);
  EXPECT_THAT(r, StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_THAT(r.status().message(), HasSubstr("larger than 64 MiB"));
}

// Connections that send no request (more of them than the endpoint has workers) delay a
// probe by a couple of seconds, not past its timeout. Before, two such connections held both
// workers for civetweb's default 30 s, and this read timed out.
TEST(HttpGetTest, IdleConnectionsDoNotKeepAProbeWaiting) {
  auto server =
      HttpEndpoint::Start("127.0.0.1:0", {[] { return std::string(); }, [] { return true; }});
  ASSERT_THAT(server, testutil::IsOk());
  const std::string& address = (*server)->address();
  const int port = std::stoi(address.substr(address.rfind(':') + 1));
  std::vector<int> idle;
  for (int i = 0; i < 12; ++i) {
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sa.sin_port = htons(static_cast<uint16_t>(port));
    ASSERT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)), 0);
    idle.push_back(fd);
  }
  auto r = HttpGet(address, "/healthz", absl::Seconds(15));
  for (int fd : idle) close(fd);
  ASSERT_THAT(r, testutil::IsOk());
  EXPECT_EQ(r->first, 200);
}

}  // namespace
}  // namespace strata
