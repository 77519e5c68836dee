// NodeMetrics::Render: the per-tenant byte series stay bounded however many scopes hold data.
#include "metrics.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"

namespace strata::storenode {
namespace {

// The lines of one metric family in a Prometheus text exposition.
std::vector<std::string> Lines(const std::string& text, const std::string& family) {
  std::vector<std::string> out;
  size_t at = 0;
  while ((at = text.find("\n" + family + "{", at)) != std::string::npos) {
    const size_t end = text.find('\n', at + 1);
    out.push_back(text.substr(at + 1, end - at - 1));
    at = end;
  }
  return out;
}

TEST(MetricsTest, TenantBytesShowTheLargestScopesAndSumTheRest) {
  NodeMetrics m("node-t");
  std::vector<ScopeUse> scopes;
  const size_t n = NodeMetrics::kMaxTenantSeries + 50;
  uint64_t smallest_sum = 0;
  for (size_t i = 0; i < n; ++i) {
    scopes.push_back({"warm", absl::StrCat("tenant-", i), 1000 + i});  // tenant-0 the smallest
    if (i < 50) smallest_sum += 1000 + i;
  }
  scopes.push_back({"cool", "tenant-0", 7});
  const std::string text = m.Render(TieredStats{}, ClusterFigures{}, scopes);
  const std::vector<std::string> lines = Lines(text, "strata_tenant_bytes");
  EXPECT_EQ(lines.size(), NodeMetrics::kMaxTenantSeries + 2);  // warm: 100 + others; cool: 1
  EXPECT_THAT(text, ::testing::HasSubstr(absl::StrCat(
                        "strata_tenant_bytes{tenant=\"(others)\",tier=\"warm\",node=\"node-t\"} ",
                        smallest_sum, "\n")));
  EXPECT_THAT(text, ::testing::HasSubstr(absl::StrCat("strata_tenant_bytes{tenant=\"tenant-", n - 1,
                                                      "\",tier=\"warm\",node=\"node-t\"} ",
                                                      1000 + n - 1, "\n")));
  EXPECT_THAT(text,
              ::testing::HasSubstr(
                  "strata_tenant_bytes{tenant=\"tenant-0\",tier=\"cool\",node=\"node-t\"} 7\n"));
  EXPECT_THAT(text, ::testing::Not(::testing::HasSubstr("tenant=\"tenant-0\",tier=\"warm\"")));
}

TEST(MetricsTest, FewScopesAreEachShown) {
  NodeMetrics m("node-t");
  const std::string text =
      m.Render(TieredStats{}, ClusterFigures{}, {{"warm", "a", 5}, {"warm", "shared", 9}});
  EXPECT_EQ(Lines(text, "strata_tenant_bytes").size(), 2u);
  EXPECT_THAT(text, ::testing::Not(::testing::HasSubstr("(others)")));
}

}  // namespace
}  // namespace strata::storenode
