#include "strata/common/http_get.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace strata {

absl::StatusOr<std::pair<int, std::string>> HttpGet(const std::string& address,
                                                    const std::string& path,
                                                    absl::Duration timeout) {
  const size_t colon = address.rfind(':');
  int port = 0;
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  if (colon == std::string::npos || !absl::SimpleAtoi(address.substr(colon + 1), &port) ||
      port <= 0 || port > 65535 ||
      inet_pton(AF_INET, address.substr(0, colon).c_str(), &sa.sin_addr) != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("HttpGet: address \"", address, "\": want IPv4 HOST:PORT"));
  }
  sa.sin_port = htons(static_cast<uint16_t>(port));
  if (timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("HttpGet: timeout must be positive");
  }
  const absl::Time deadline = absl::Now() + timeout;
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return absl::UnavailableError("HttpGet: socket() failed");
  auto fail = [&](absl::string_view what) {
    close(fd);
    return absl::UnavailableError(absl::StrCat("HttpGet ", address, path, ": ", what));
  };
  // Until fd is ready for `events` or the deadline passes (false).
  auto ready = [&](short events) {
    for (;;) {
      const int64_t ms = absl::ToInt64Milliseconds(deadline - absl::Now());
      if (ms <= 0) return false;
      pollfd p{fd, events, 0};
      const int r = poll(&p, 1, static_cast<int>(std::min<int64_t>(ms, 60'000)));
      if (r > 0) return true;
      if (r < 0 && errno != EINTR) return false;
    }
  };
  if (connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0) {
    int error = errno;
    socklen_t len = sizeof(error);
    if (error != EINPROGRESS || !ready(POLLOUT) ||
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &len) != 0 || error != 0) {
      return fail("connect failed");
    }
  }
  const std::string req =
      absl::StrCat("GET ", path, " HTTP/1.1\r\nHost: ", address, "\r\nConnection: close\r\n\r\n");
  for (size_t sent = 0; sent < req.size();) {
    const ssize_t n = send(fd, req.data() + sent, req.size() - sent, MSG_NOSIGNAL);
    if (n > 0) {
      sent += static_cast<size_t>(n);
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK) || !ready(POLLOUT)) {
      return fail("write failed or timed out");
    }
  }
  std::string resp;
  char buf[16384];
  for (;;) {
    // Also while answers keep coming (a server that never stops sending never makes recv
    // wait, where ready() looks at the deadline).
    if (absl::Now() >= deadline) return fail("read timed out");
    const ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n > 0) {
      if (resp.size() + static_cast<size_t>(n) > kMaxHttpAnswerBytes) {
        return fail(absl::StrCat("answer larger than ", kMaxHttpAnswerBytes >> 20, " MiB"));
      }
      resp.append(buf, static_cast<size_t>(n));
    } else if (n == 0) {
      break;
    } else if (errno == EINTR) {
      continue;
    } else if ((errno != EAGAIN && errno != EWOULDBLOCK) || !ready(POLLIN)) {
      return fail("read failed or timed out");
    }
  }
  close(fd);
  int code = 0;
  if (resp.size() < 12 || !absl::StartsWith(resp, "HTTP/1.") ||
      !absl::SimpleAtoi(resp.substr(9, 3), &code)) {
    return absl::UnavailableError(absl::StrCat("HttpGet ", address, path, ": malformed answer"));
  }
  const size_t body = resp.find("\r\n\r\n");
  return std::make_pair(code, body == std::string::npos ? std::string() : resp.substr(body + 4));
}

std::map<std::string, OpTotals> ParseOpTotals(absl::string_view metrics) {
  std::map<std::string, OpTotals> out;
  for (absl::string_view line : absl::StrSplit(metrics, '\n')) {
    const bool count = absl::StartsWith(line, "strata_op_latency_seconds_count{");
    if (!count && !absl::StartsWith(line, "strata_op_latency_seconds_sum{")) continue;
    const size_t at = line.find("op=\"");
    const size_t close_brace = line.rfind('}');
    if (at == absl::string_view::npos || close_brace == absl::string_view::npos) continue;
    const size_t end = line.find('"', at + 4);
    // "name{labels} value [timestamp]"
    std::vector<absl::string_view> fields =
        absl::StrSplit(line.substr(close_brace + 1), ' ', absl::SkipEmpty());
    double value = 0;
    if (end == absl::string_view::npos || end > close_brace || fields.empty() ||
        !absl::SimpleAtod(fields[0], &value) || !(value >= 0) || value > 1e18) {
      continue;
    }
    OpTotals& t = out[std::string(line.substr(at + 4, end - at - 4))];
    if (count) {
      t.calls = static_cast<uint64_t>(value);
    } else {
      t.seconds = value;
    }
  }
  return out;
}

}  // namespace strata
