#include "directory.h"

#include <cstring>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace strata::storenode {
namespace {

std::vector<ChainHash> Hashes(uint32_t first, uint32_t n) {
  std::vector<ChainHash> out(n);
  for (uint32_t i = 0; i < n; ++i) {
    const uint32_t v = first + i;
    std::memcpy(out[i].bytes.data(), &v, sizeof(v));
  }
  return out;
}

size_t Refused(const std::vector<absl::Status>& results) {
  size_t n = 0;
  for (const absl::Status& s : results) n += s.code() == absl::StatusCode::kResourceExhausted;
  return n;
}

// A tenant alone may fill three quarters of the directory; the last quarter stays for the
// others. Before, the first tenant took all 16 entries and the second was refused.
TEST(DirectoryTest, OneScopeLeavesTheLastQuarterToTheOthers) {
  Directory d(16);
  EXPECT_EQ(Refused(d.Publish(1, "tenant-a", Hashes(0, 16), {}, "agent-a", "", absl::Seconds(60))),
            4u);
  EXPECT_EQ(d.entries(), 12u);
  EXPECT_EQ(Refused(d.Publish(1, "tenant-b", Hashes(100, 5), {}, "agent-b", "", absl::Seconds(60))),
            1u);
  // Room freed by tenant-a goes to a scope below its quarter, not back to tenant-a.
  EXPECT_EQ(
      Refused(d.Publish(1, "tenant-a", Hashes(0, 2), {}, "agent-a", "", absl::ZeroDuration())), 0u);
  EXPECT_EQ(Refused(d.Publish(1, "tenant-a", Hashes(50, 1), {}, "agent-a", "", absl::Seconds(60))),
            1u);
  EXPECT_EQ(Refused(d.Publish(1, "tenant-c", Hashes(200, 3), {}, "agent-c", "", absl::Seconds(60))),
            1u);
  EXPECT_EQ(d.entries(), 16u);
}

}  // namespace
}  // namespace strata::storenode
