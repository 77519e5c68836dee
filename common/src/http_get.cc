#include "strata/common/http_get.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

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
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::UnavailableError("HttpGet: socket() failed");
  const timeval tv = absl::ToTimeval(timeout);
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  auto fail = [&](absl::string_view what) {
    close(fd);
    return absl::UnavailableError(absl::StrCat("HttpGet ", address, path, ": ", what));
  };
  if (connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0) return fail("connect failed");
  const std::string req =
      absl::StrCat("GET ", path, " HTTP/1.1\r\nHost: ", address, "\r\nConnection: close\r\n\r\n");
  for (size_t sent = 0; sent < req.size();) {
    const ssize_t n = write(fd, req.data() + sent, req.size() - sent);
    if (n <= 0) return fail("write failed");
    sent += static_cast<size_t>(n);
  }
  std::string resp;
  char buf[16384];
  ssize_t n;
  while ((n = read(fd, buf, sizeof(buf))) > 0) resp.append(buf, static_cast<size_t>(n));
  if (n < 0) return fail("read failed or timed out");
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
    const size_t space = line.rfind(' ');
    if (at == absl::string_view::npos || space == absl::string_view::npos) continue;
    const size_t end = line.find('"', at + 4);
    double value = 0;
    if (end == absl::string_view::npos || !absl::SimpleAtod(line.substr(space + 1), &value)) {
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
