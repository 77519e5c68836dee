#include "strata/testutil/node_process.h"

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "strata/common/http_get.h"

namespace strata::testutil {

std::string ProjectBinary(const std::string& name) {
  if (const char* dir = std::getenv("STRATA_BIN_DIR")) return absl::StrCat(dir, "/", name);
  std::filesystem::path self = std::filesystem::read_symlink("/proc/self/exe");
  return (self.parent_path() / name).string();
}

bool WaitStopped(pid_t pid, absl::Duration timeout) {
  const std::filesystem::path tasks = absl::StrCat("/proc/", pid, "/task");
  for (const absl::Time end = absl::Now() + timeout;; absl::SleepFor(absl::Milliseconds(1))) {
    std::error_code ec;
    bool all = true;
    std::filesystem::directory_iterator task(tasks, ec);
    for (; !ec && task != std::filesystem::directory_iterator(); task.increment(ec)) {
      std::ifstream in(task->path() / "stat");
      std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      // "tid (comm) S ...": the state follows the last ')' (comm may hold any character). A
      // thread gone meanwhile (no stat left) or exiting (Z, X) runs nothing either.
      const size_t close = stat.rfind(')');
      const char state =
          close != std::string::npos && close + 2 < stat.size() ? stat[close + 2] : 'X';
      all = all && (state == 'T' || state == 't' || state == 'Z' || state == 'X');
    }
    if (ec) return false;
    if (all) return true;
    if (absl::Now() >= end) return false;
  }
}

absl::StatusOr<std::unique_ptr<client::LocalNode>> StartNode(const std::vector<std::string>& args,
                                                             absl::Duration timeout) {
  std::vector<std::string> all = {"--log-level", "warn"};
  all.insert(all.end(), args.begin(), args.end());
  // SIGKILL on the test's death: a test that crashes while a node is frozen (Freeze) would
  // otherwise leave it stopped for good, holding ctest's output pipe.
  return client::LocalNode::Start(ProjectBinary("strata-storenode"), all, timeout, SIGKILL);
}

absl::StatusOr<std::pair<int, std::string>> HttpGet(const std::string& address,
                                                    const std::string& path) {
  return strata::HttpGet(address, path);
}

uint64_t OpCount(const client::LocalNode& node, const std::string& op) {
  auto page = HttpGet(node.http_address(), "/metrics");
  if (!page.ok()) return 0;
  const std::map<std::string, OpTotals> ops = ParseOpTotals(page->second);
  auto it = ops.find(op);
  return it == ops.end() ? 0 : it->second.calls;
}

double Metric(const client::LocalNode& node, const std::string& name, const std::string& labels) {
  auto page = HttpGet(node.http_address(), "/metrics");
  if (!page.ok()) return -1;
  for (absl::string_view line : absl::StrSplit(page->second, '\n')) {
    if (!absl::StartsWith(line, name + "{") && !absl::StartsWith(line, name + " ")) continue;
    const size_t value_at = line.rfind(' ');
    if (!absl::StrContains(line.substr(0, value_at), labels)) continue;
    double v = 0;
    return absl::SimpleAtod(line.substr(value_at + 1), &v) ? v : -1;
  }
  return -1;
}

}  // namespace strata::testutil
