#include "strata/testutil/node_process.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace strata::testutil {

std::string ProjectBinary(const std::string& name) {
  if (const char* dir = std::getenv("STRATA_BIN_DIR")) return absl::StrCat(dir, "/", name);
  std::filesystem::path self = std::filesystem::read_symlink("/proc/self/exe");
  return (self.parent_path() / name).string();
}

absl::StatusOr<std::unique_ptr<client::LocalNode>> StartNode(const std::vector<std::string>& args,
                                                             absl::Duration timeout) {
  std::vector<std::string> all = {"--log-level", "warn"};
  all.insert(all.end(), args.begin(), args.end());
  return client::LocalNode::Start(ProjectBinary("strata-storenode"), all, timeout);
}

absl::StatusOr<std::pair<int, std::string>> HttpGet(const std::string& address,
                                                    const std::string& path) {
  size_t colon = address.rfind(':');
  int port = 0;
  if (colon == std::string::npos || !absl::SimpleAtoi(address.substr(colon + 1), &port)) {
    return absl::InvalidArgumentError("address: want HOST:PORT");
  }
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(static_cast<uint16_t>(port));
  inet_pton(AF_INET, address.substr(0, colon).c_str(), &sa.sin_addr);
  timeval tv{5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  if (connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0) {
    close(fd);
    return absl::UnavailableError(absl::StrCat("connect ", address, " failed"));
  }
  std::string req =
      absl::StrCat("GET ", path, " HTTP/1.1\r\nHost: ", address, "\r\nConnection: close\r\n\r\n");
  if (write(fd, req.data(), req.size()) != static_cast<ssize_t>(req.size())) {
    close(fd);
    return absl::UnavailableError("write failed");
  }
  std::string resp;
  char buf[4096];
  ssize_t n;
  while ((n = read(fd, buf, sizeof(buf))) > 0) resp.append(buf, n);
  close(fd);
  int code = 0;
  if (resp.size() < 12 || !absl::SimpleAtoi(resp.substr(9, 3), &code)) {
    return absl::UnavailableError("malformed HTTP response");
  }
  size_t body = resp.find("\r\n\r\n");
  return std::make_pair(code, body == std::string::npos ? "" : resp.substr(body + 4));
}

uint64_t OpCount(const client::LocalNode& node, const std::string& op) {
  auto page = HttpGet(node.http_address(), "/metrics");
  if (!page.ok()) return 0;
  for (absl::string_view line : absl::StrSplit(page->second, '\n')) {
    if (!absl::StartsWith(line, "strata_op_latency_seconds_count{") ||
        !absl::StrContains(line, absl::StrCat("op=\"", op, "\""))) {
      continue;
    }
    std::vector<absl::string_view> parts = absl::StrSplit(line, ' ');
    double d = 0;
    return absl::SimpleAtod(parts.back(), &d) ? static_cast<uint64_t>(d) : 0;
  }
  return 0;
}

}  // namespace strata::testutil
