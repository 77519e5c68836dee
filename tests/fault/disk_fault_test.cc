// Corruption and crashes on the cool tier's RocksDB files, against real strata-storenode
// processes: 100 random byte flips and tail truncations of SST, blob, WAL and MANIFEST files
// (each on a fresh copy of a store) never yield a wrong byte — a damaged block is a miss or
// DATA_LOSS — and the node always starts; kill -9 in the middle of puts never loses a block
// the node had acknowledged as on disk.
#include <signal.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "strata/client/store_client.h"
#include "strata/testutil/node_process.h"
#include "strata/testutil/prompts.h"
#include "strata/testutil/status_matchers.h"

namespace strata {
namespace {

namespace fs = std::filesystem;
using client::BlockRead;
using client::BlockWrite;
using client::StoreClient;
using testutil::IsOk;

constexpr uint64_t kBlock = 256 << 10;
constexpr size_t kBlocks = 40;

struct Node {
  std::unique_ptr<client::LocalNode> process;
  std::unique_ptr<StoreClient> client;
  client::Namespace ns;
};

// `promote`: reads stage disk blocks in warm (GetData), rather than send them inline.
absl::StatusOr<Node> StartNode(const fs::path& dir, std::vector<std::string> extra = {},
                               bool promote = false) {
  std::vector<std::string> args = {
      "--warm-bytes",      "8MiB",
      "--max-block-bytes", "1MiB",
      "--cool-path",       (dir / "cool").string(),
      "--cool-bytes",      "64MiB",
      "--sync-writes",     promote ? "--promote-on-get=true" : "--promote-on-get=false"};
  args.insert(args.end(), extra.begin(), extra.end());
  auto p = testutil::StartNode(args);
  if (!p.ok()) return p.status();
  Node n;
  n.process = std::move(*p);
  auto c = StoreClient::Connect({.address = n.process->address()});
  if (!c.ok()) return c.status();
  n.client = std::move(*c);
  NamespaceSpec spec;
  spec.model_id = "fault-test";
  spec.dtype = "fp16";
  spec.layout = "raw";
  spec.block_tokens = 16;
  spec.block_bytes = kBlock;
  auto ns = n.client->RegisterNamespace(spec);
  if (!ns.ok()) return ns.status();
  n.ns = *ns;
  return n;
}

// Puts blocks [begin, end) of `hashes` under `session`, two at a time.
void Put(Node& n, const std::vector<ChainHash>& hashes, size_t begin, size_t end,
         const std::string& session) {
  for (size_t i = begin; i < end; i += 2) {
    std::vector<std::vector<uint8_t>> data;
    std::vector<BlockWrite> writes;
    for (size_t k = i; k < std::min(end, i + 2); ++k) {
      data.push_back(testutil::RandomBytes(1000 + k, kBlock));
    }
    for (size_t k = i; k < std::min(end, i + 2); ++k) {
      writes.push_back({hashes[k], data[k - i].data(), kBlock});
    }
    auto r = n.client->Put(n.ns, "", writes, {}, {.session_id = session});
    ASSERT_THAT(r, IsOk());
  }
}

struct Outcome {
  size_t exact = 0, missing = 0, data_loss = 0, wrong = 0, other = 0;
};

Outcome ReadAll(Node& n, const std::vector<ChainHash>& hashes) {
  Outcome o;
  std::vector<uint8_t> out(kBlock);
  for (size_t i = 0; i < hashes.size(); ++i) {
    std::fill(out.begin(), out.end(), 0xee);
    BlockRead read{hashes[i], out.data(), kBlock};
    auto r = n.client->Get(n.ns, "", {&read, 1});
    if (!r.ok()) {
      ++o.other;
      continue;
    }
    const absl::Status& s = r->blocks[0];
    if (s.ok()) {
      (out == testutil::RandomBytes(1000 + i, kBlock) ? o.exact : o.wrong) += 1;
    } else if (s.code() == absl::StatusCode::kNotFound) {
      ++o.missing;
    } else if (s.code() == absl::StatusCode::kDataLoss) {
      ++o.data_loss;
    } else {
      ++o.other;
    }
  }
  return o;
}

class DiskFaultTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() / absl::StrCat("strata_disk_fault_", ::getpid());
    fs::remove_all(root_);
    fs::create_directories(root_);
  }
  void TearDown() override { fs::remove_all(root_); }
  fs::path root_;
};

// A store at `dir` holding kBlocks blocks (`hashes`), all on the cool tier, its node stopped
// with `sig`: SIGTERM leaves the data in SST and blob files, SIGKILL in the WAL too.
void MakeStore(const fs::path& dir, int sig, std::vector<ChainHash>* hashes) {
  auto n = StartNode(dir);
  ASSERT_THAT(n, IsOk());
  *hashes = testutil::PromptChain(n->ns, 7, kBlocks);
  ASSERT_NO_FATAL_FAILURE(Put(*n, *hashes, 0, kBlocks, "s"));
  ASSERT_THAT(n->client->PauseSession("s", /*to_cold=*/false), IsOk());
  auto where = n->client->LookupEach(n->ns, "", *hashes);
  ASSERT_THAT(where, IsOk());
  for (const client::BlockLocation& l : *where) ASSERT_EQ(l.tier, client::Tier::kCool);
  ASSERT_THAT(n->process->Stop(absl::Seconds(30), sig), IsOk());
}

// Flips the byte at `at` of `file`.
void FlipByteAt(const fs::path& file, uint64_t at) {
  std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
  char c = 0;
  f.seekg(at);
  f.read(&c, 1);
  c ^= 0x5a;
  f.seekp(at);
  f.write(&c, 1);
}

// Flips the byte in the middle of `file`.
void FlipMiddleByte(const fs::path& file) { FlipByteAt(file, fs::file_size(file) / 2); }

// Bytes of the blob files anywhere under `dir`.
uint64_t BlobBytes(const fs::path& dir) {
  uint64_t bytes = 0;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    if (e.is_regular_file() && e.path().extension() == ".blob") bytes += e.file_size();
  }
  return bytes;
}

TEST_F(DiskFaultTest, HundredFlipsAndTruncationsNeverServeWrongBytes) {
  // Two pristine stores: one shut down cleanly, one killed right after its writes.
  std::vector<ChainHash> hashes;
  ASSERT_NO_FATAL_FAILURE(MakeStore(root_ / "pristine0", SIGTERM, &hashes));
  ASSERT_NO_FATAL_FAILURE(MakeStore(root_ / "pristine1", SIGKILL, &hashes));
  std::mt19937_64 rng(20261127);
  Outcome total;
  size_t flips = 0, truncations = 0;
  for (int round = 0; round < 100; ++round) {
    const fs::path work = root_ / "work";
    fs::remove_all(work);
    fs::copy(root_ / absl::StrCat("pristine", round % 2), work, fs::copy_options::recursive);
    std::vector<fs::path> files;
    for (const auto& e : fs::recursive_directory_iterator(work)) {
      const std::string name = e.path().filename().string();
      const std::string ext = e.path().extension().string();
      if (e.is_regular_file() && e.file_size() > 0 &&
          (ext == ".sst" || ext == ".blob" || ext == ".log" || name.rfind("MANIFEST", 0) == 0)) {
        files.push_back(e.path());
      }
    }
    ASSERT_FALSE(files.empty());
    const fs::path victim = files[rng() % files.size()];
    const uint64_t size = fs::file_size(victim);
    if (rng() % 2 == 0) {
      std::fstream f(victim, std::ios::in | std::ios::out | std::ios::binary);
      const uint64_t at = rng() % size;
      char c = 0;
      f.seekg(at);
      f.read(&c, 1);
      c ^= static_cast<char>(1 + rng() % 255);
      f.seekp(at);
      f.write(&c, 1);
      ++flips;
    } else {
      fs::resize_file(victim, rng() % size);
      ++truncations;
    }
    SCOPED_TRACE(absl::StrCat("round ", round, ": ", victim.filename().string()));
    auto n = StartNode(work);
    ASSERT_THAT(n, IsOk()) << "the node must start whatever its files hold";
    const Outcome o = ReadAll(*n, hashes);
    EXPECT_EQ(o.wrong, 0u);
    EXPECT_EQ(o.other, 0u);
    total.exact += o.exact;
    total.missing += o.missing;
    total.data_loss += o.data_loss;
    total.wrong += o.wrong;
    ASSERT_THAT(n->process->Stop(absl::Seconds(10), SIGKILL), IsOk());
  }
  EXPECT_GT(total.exact, 0u);
  EXPECT_GT(total.missing + total.data_loss, 0u) << "no damage was ever seen";
  std::printf(
      "disk faults: %zu flips, %zu truncations over 100 restarts; blocks read: %zu exact, %zu "
      "missing, %zu DATA_LOSS, %zu wrong\n",
      flips, truncations, total.exact, total.missing, total.data_loss, total.wrong);
}

// Damage costs only what it touched. Each SST file of a store in turn, then its MANIFEST, gets
// a flipped byte (each on a fresh copy). The node used to open a damaged store with RocksDB's
// repair, which deletes every blob file, i.e. every block: all DATA_LOSS; and later, a
// damaged index file still cost every block whose record was in it.
TEST_F(DiskFaultTest, DamageCostsOnlyTheBlocksItTouched) {
  const fs::path pristine = root_ / "pristine";
  std::vector<ChainHash> hashes;
  ASSERT_NO_FATAL_FAILURE(MakeStore(pristine, SIGTERM, &hashes));
  const uint64_t blobs = BlobBytes(pristine);
  ASSERT_GE(blobs, kBlocks * kBlock);
  std::vector<std::string> damaged = {"MANIFEST"};
  for (const auto& e : fs::directory_iterator(pristine / "cool")) {
    if (e.path().extension() == ".sst") damaged.push_back(e.path().filename().string());
  }
  size_t sst_rounds = 0;
  for (const std::string& name : damaged) {
    SCOPED_TRACE(name);
    const fs::path work = root_ / "work";
    fs::remove_all(work);
    fs::copy(pristine, work, fs::copy_options::recursive);
    for (const auto& e : fs::directory_iterator(work / "cool")) {
      if (e.path().filename().string().rfind(name, 0) == 0) FlipMiddleByte(e.path());
    }
    auto n = StartNode(work);
    ASSERT_THAT(n, IsOk());
    const Outcome o = ReadAll(*n, hashes);
    EXPECT_EQ(o.wrong, 0u);
    std::printf("a flipped byte in %s: %zu exact, %zu missing, %zu DATA_LOSS\n", name.c_str(),
                o.exact, o.missing, o.data_loss);
    if (name == "MANIFEST") {
      // Set aside with the node's files, blobs and all, or recovered.
      EXPECT_TRUE(o.exact == kBlocks || BlobBytes(work) >= blobs);
    } else {
      // The index file too: its blocks are indexed again from their own headers.
      EXPECT_GE(o.exact, kBlocks - 1);
      ++sst_rounds;
    }
    ASSERT_THAT(n->process->Stop(absl::Seconds(10), SIGKILL), IsOk());
  }
  ASSERT_GT(sst_rounds, 0u);
}

// A block whose disk copy fails its checksum reads DATA_LOSS, also when the read stages disk
// blocks in warm (promote_on_get, over UCX). Before, staging dropped the corrupt copy and
// reported nothing, so the read found the block on no tier: NOT_FOUND, a miss instead of the
// corruption it is, for a block Lookup had just reported present.
TEST_F(DiskFaultTest, ACorruptDiskBlockReadsDataLossAlsoWhenReadsStageInWarm) {
  std::vector<ChainHash> hashes;
  ASSERT_NO_FATAL_FAILURE(MakeStore(root_ / "store", SIGTERM, &hashes));
  fs::path largest;
  for (const auto& e : fs::directory_iterator(root_ / "store" / "cool")) {
    if (e.path().extension() == ".blob" &&
        (largest.empty() || e.file_size() > fs::file_size(largest))) {
      largest = e.path();
    }
  }
  ASSERT_FALSE(largest.empty()) << "no blob file";
  // 4 KiB past the middle: inside a block's bytes (the 40 records put one's header right at
  // the middle, which a read skips).
  FlipByteAt(largest, fs::file_size(largest) / 2 + 4096);
  auto n = StartNode(root_ / "store", {}, /*promote=*/true);
  ASSERT_THAT(n, IsOk());
  const Outcome o = ReadAll(*n, hashes);
  std::printf("a flipped byte in %s, reads staging: %zu exact, %zu missing, %zu DATA_LOSS\n",
              largest.filename().c_str(), o.exact, o.missing, o.data_loss);
  EXPECT_EQ(o.wrong, 0u);
  EXPECT_EQ(o.other, 0u);
  EXPECT_EQ(o.missing, 0u) << "a corrupt block read as a miss";
  EXPECT_GE(o.data_loss, 1u);
  EXPECT_EQ(o.exact + o.data_loss, kBlocks);
}

TEST_F(DiskFaultTest, KillDuringPutsKeepsEveryBlockAcknowledgedOnDisk) {
  const fs::path dir = root_ / "store";
  std::vector<ChainHash> hashes;
  size_t on_disk = 0;  // blocks [0, on_disk) were acknowledged as moved to disk
  for (int cycle = 0; cycle < 5; ++cycle) {
    auto n = StartNode(dir);
    ASSERT_THAT(n, IsOk());
    if (hashes.empty()) hashes = testutil::PromptChain(n->ns, 9, 5 * 8);
    // Everything acknowledged on disk in earlier cycles is still there, bit for bit.
    const std::vector<ChainHash> durable(hashes.begin(), hashes.begin() + on_disk);
    const Outcome before = ReadAll(*n, durable);
    EXPECT_EQ(before.exact, on_disk) << "cycle " << cycle;
    // Eight more blocks, moved to disk (PauseSession returns once they are written with
    // sync_writes); then more puts in flight when the process is killed.
    const std::string session = absl::StrCat("c", cycle);
    ASSERT_NO_FATAL_FAILURE(Put(*n, hashes, on_disk, on_disk + 8, session));
    auto moved = n->client->PauseSession(session, /*to_cold=*/false);
    ASSERT_THAT(moved, IsOk());
    ASSERT_EQ(*moved, 8u);
    on_disk += 8;
    std::thread writer([&] {
      std::vector<uint8_t> junk = testutil::RandomBytes(cycle, kBlock);
      for (uint32_t k = 0; k < 200; ++k) {
        ChainHash h = testutil::PromptChain(n->ns, 100 + cycle * 1000 + k, 1)[0];
        BlockWrite w{h, junk.data(), kBlock};
        if (!n->client->Put(n->ns, "", {&w, 1}, {}, {.session_id = "junk"}).ok()) break;
        if (k % 4 == 0) n->client->PauseSession("junk", false).IgnoreError();
      }
    });
    std::this_thread::sleep_for(std::chrono::milliseconds(150));
    ASSERT_THAT(n->process->Stop(absl::Seconds(10), SIGKILL), IsOk());
    writer.join();
  }
  auto n = StartNode(dir);
  ASSERT_THAT(n, IsOk());
  const Outcome after =
      ReadAll(*n, std::vector<ChainHash>(hashes.begin(), hashes.begin() + on_disk));
  EXPECT_EQ(after.exact, on_disk);
  EXPECT_EQ(after.wrong, 0u);
  std::printf("kill -9 during puts: %zu blocks acknowledged on disk over 5 kills, %zu read back\n",
              on_disk, after.exact);
}

// Damage is repaired or set aside; a store another node holds is neither: the second node
// fails to start and the first keeps its blocks.
TEST_F(DiskFaultTest, AStoreInUseIsNeverRepairedOrSetAside) {
  const fs::path dir = root_ / "shared-dir";
  auto first = StartNode(dir);
  ASSERT_THAT(first, IsOk());
  std::vector<ChainHash> hashes = testutil::PromptChain(first->ns, 11, 4);
  ASSERT_NO_FATAL_FAILURE(Put(*first, hashes, 0, 4, "s"));
  ASSERT_THAT(first->client->PauseSession("s", false), IsOk());
  auto second = StartNode(dir);
  EXPECT_FALSE(second.ok());
  size_t aside = 0;
  for (const auto& e : fs::directory_iterator(dir)) {
    aside += e.path().filename().string().find("damaged") != std::string::npos;
  }
  EXPECT_EQ(aside, 0u);
  EXPECT_EQ(ReadAll(*first, hashes).exact, 4u);
}

}  // namespace
}  // namespace strata
