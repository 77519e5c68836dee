// DiskTier's recovery at start: damaged or unfinished index records, payloads without them.
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "disk_tier_test_fixture.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "rocksdb/db.h"
#include "strata/common/stored_block.h"
#include "strata/storenode/disk_tier.h"
#include "strata/testutil/status_matchers.h"
#include "strata/testutil/synthetic_kv.h"

namespace strata::storenode::disk_test {
namespace {

namespace fs = std::filesystem;
using ::strata::testutil::IsOk;
using ::strata::testutil::StatusIs;
using ::testing::HasSubstr;

// Writes the blocks Key(1..n), the last quantized; returns what each reads back as.
std::vector<std::vector<uint8_t>> PutBlocks(const std::string& path, uint8_t n) {
  auto tier = DiskTier::Open(Options(path));
  EXPECT_THAT(tier.status(), IsOk());
  std::vector<std::vector<uint8_t>> served;
  for (uint8_t i = 1; i <= n; ++i) {
    KvQuantSpec quant;
    std::vector<uint8_t> block = Bytes(8192, i);
    if (i == n) {
      quant = {KvQuant::kInt8, KvDtype::kFp16, 128};
      block = testutil::SyntheticKv(KvDtype::kFp16, 128, 32, i);
    }
    EXPECT_THAT((*tier)->Put(Key(i), block, DiskBlockMeta{.depth = i}, quant), IsOk());
    std::vector<uint8_t> out;
    EXPECT_THAT((*tier)->Read(Key(i), &out), IsOk());
    served.push_back(std::move(out));
  }
  return served;
}

// Reads Key(1..n) back from `tier`: each exactly as `served` says.
void ExpectReadsBack(DiskTier& tier, const std::vector<std::vector<uint8_t>>& served, uint8_t n) {
  for (uint8_t i = 1; i <= n; ++i) {
    std::vector<uint8_t> out;
    ASSERT_THAT(tier.Read(Key(i), &out), IsOk()) << int{i};
    EXPECT_EQ(out, served[i - 1]) << int{i};
  }
}

// A damaged index file (the meta column family's SST) costs no block: each is indexed again
// from its own header, and the index is rewritten without the damaged file, which RocksDB
// would otherwise meet again at every start and in its next compaction. Before, every block
// whose index record was unreadable was deleted.
TEST(DiskTierTest, ADamagedIndexFileIsRebuiltFromTheBlocksOwnHeaders) {
  TempDir dir;
  const std::string path = dir.path() + "/db";
  const std::vector<std::vector<uint8_t>> served = PutBlocks(path, 12);
  std::string index_file;
  {
    RawStore raw(path);
    ASSERT_TRUE(raw.status.ok()) << raw.status.ToString();
    ASSERT_TRUE(raw.db->Flush({}, raw.handles).ok());
    std::vector<rocksdb::LiveFileMetaData> files;
    raw.db->GetLiveFilesMetaData(&files);
    for (const rocksdb::LiveFileMetaData& f : files) {
      if (f.column_family_name == "meta") index_file = path + f.name;
    }
  }
  ASSERT_FALSE(index_file.empty());
  {
    std::fstream f(index_file, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(10);  // inside the first data block
    f.put('\x5a');
  }
  {
    auto tier = DiskTier::Open(Options(path));
    ASSERT_THAT(tier.status(), IsOk());
    EXPECT_EQ((*tier)->Stats().blocks, 12u);
    ASSERT_NO_FATAL_FAILURE(ExpectReadsBack(**tier, served, 12));
  }
  EXPECT_FALSE(fs::exists(index_file)) << "the damaged index file is still live";
  EXPECT_FALSE(fs::exists(path + "/STRATA-REINDEX"));
  auto again = DiskTier::Open(Options(path));
  ASSERT_THAT(again.status(), IsOk());
  EXPECT_EQ((*again)->Stats().blocks, 12u);
  EXPECT_EQ((*again)->Stats().data_loss, 0u);
}

// A start that finds the marker of an index rewrite that did not finish indexes every
// payload again from its header, and drops index records whose payload is gone (as after a
// best-efforts recovery). Blocks 1..8 lost their records, blocks 9 and 10 their payloads.
TEST(DiskTierTest, AnUnfinishedIndexRewriteIsCompletedAtTheNextStart) {
  TempDir dir;
  const std::string path = dir.path() + "/db";
  const std::vector<std::vector<uint8_t>> served = PutBlocks(path, 10);
  {
    RawStore raw(path);
    ASSERT_TRUE(raw.status.ok()) << raw.status.ToString();
    for (uint8_t i = 1; i <= 10; ++i) {
      rocksdb::ColumnFamilyHandle* cf = i <= 8 ? raw.handles[1] : raw.handles[0];
      ASSERT_TRUE(raw.db->Delete({}, cf, EncodeDiskKey(Key(i))).ok());
    }
  }
  std::ofstream(path + "/STRATA-REINDEX") << "rewrite";
  auto tier = DiskTier::Open(Options(path));
  ASSERT_THAT(tier.status(), IsOk());
  EXPECT_EQ((*tier)->Stats().blocks, 8u);
  ASSERT_NO_FATAL_FAILURE(ExpectReadsBack(**tier, served, 8));
  EXPECT_FALSE((*tier)->Find(Key(9), false).has_value());
  EXPECT_FALSE((*tier)->Find(Key(10), false).has_value());
  EXPECT_FALSE(fs::exists(path + "/STRATA-REINDEX"));
}

// An index record the tier cannot decode (one of a later format after a downgrade, or bytes
// RocksDB's checksums did not catch) costs no block and no uncounted disk: the block is
// indexed again from its own header and its record rewritten. Before, the block was counted
// lost while its payload stayed on disk, outside every budget, for good.
TEST(DiskTierTest, AnUndecodableIndexRecordIsRebuiltFromTheBlocksHeader) {
  TempDir dir;
  const std::string path = dir.path() + "/db";
  const std::vector<std::vector<uint8_t>> served = PutBlocks(path, 6);
  uint64_t charged = 0;
  {
    auto tier = DiskTier::Open(Options(path));
    ASSERT_THAT(tier.status(), IsOk());
    charged = (*tier)->charged_bytes();
  }
  {
    RawStore raw(path);
    ASSERT_TRUE(raw.status.ok()) << raw.status.ToString();
    std::string later_format(40, '\x09');  // format 9, unknown here
    ASSERT_TRUE(raw.db->Put({}, raw.handles[1], EncodeDiskKey(Key(2)), later_format).ok());
    ASSERT_TRUE(raw.db->Put({}, raw.handles[1], EncodeDiskKey(Key(6)), "\x02short").ok());
  }
  for (int start = 0; start < 2; ++start) {
    SCOPED_TRACE(start == 0 ? "first start" : "second start");
    auto tier = DiskTier::Open(Options(path));
    ASSERT_THAT(tier.status(), IsOk());
    EXPECT_EQ((*tier)->Stats().blocks, 6u);
    EXPECT_EQ((*tier)->charged_bytes(), charged);
    EXPECT_EQ((*tier)->Stats().data_loss, 0u);
    ASSERT_NO_FATAL_FAILURE(ExpectReadsBack(**tier, served, 6));
  }
  RawStore raw(path);
  ASSERT_TRUE(raw.status.ok()) << raw.status.ToString();
  std::string record;
  ASSERT_TRUE(raw.db->Get({}, raw.handles[1], EncodeDiskKey(Key(2)), &record).ok());
  EXPECT_THAT(DecodeDiskMeta(record).status(), IsOk());
}

// A stored value whose header claims a block of another size than the index holds (here
// 1 GiB, behind checksums that match) is refused before anything is allocated for it. Before,
// the read sized its buffer to the claim, then found the stream undecodable.
TEST(DiskTierTest, AValueClaimingAnotherSizeIsRefusedBeforeItIsAllocated) {
  TempDir dir;
  const std::string path = dir.path() + "/db";
  const std::vector<std::vector<uint8_t>> served = PutBlocks(path, 2);
  {
    RawStore raw(path);
    ASSERT_TRUE(raw.status.ok()) << raw.status.ToString();
    StoredBlockHeader h;
    h.codec = Codec::kZstd;
    h.original_size = kMaxStoredBlockOriginalSize;
    h.checksum = h.payload_checksum = 42;
    const std::vector<uint8_t> stored = Bytes(100, 9);
    const std::string value = EncodeStoredBlock(h, stored);
    ASSERT_THAT(
        DecodeStoredBlock({reinterpret_cast<const uint8_t*>(value.data()), value.size()}).status(),
        IsOk());
    ASSERT_TRUE(raw.db->Put({}, raw.handles[0], EncodeDiskKey(Key(1)), value).ok());
  }
  auto tier = DiskTier::Open(Options(path));
  ASSERT_THAT(tier.status(), IsOk());
  std::vector<uint8_t> out;
  EXPECT_THAT((*tier)->Read(Key(1), &out),
              StatusIs(absl::StatusCode::kDataLoss, HasSubstr("where the index holds 8192")));
  EXPECT_LT(out.capacity(), 1u << 20);
  EXPECT_EQ((*tier)->Stats().data_loss, 1u);
  EXPECT_EQ((*tier)->Stats().blocks, 1u);  // the damaged block left the index
  ASSERT_THAT((*tier)->Read(Key(2), &out), IsOk());
  EXPECT_EQ(out, served[1]);
}

}  // namespace
}  // namespace strata::storenode::disk_test
