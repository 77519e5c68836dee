// The disk tiers' unit-test helpers: a temporary directory, keys, payloads, options and a file
// system that fails writes and copies as after a power cut (disk_tier_test.cc,
// disk_tier_recovery_test.cc, tiered_store_test.cc).
#pragma once

#include <stdlib.h>

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "rocksdb/db.h"
#include "rocksdb/file_system.h"
#include "strata/common/block_key.h"
#include "strata/storenode/disk_tier.h"

namespace strata::storenode::disk_test {

class TempDir {
 public:
  TempDir() {
    std::string tmpl =
        (std::filesystem::temp_directory_path() / "strata-disk-tier-XXXXXX").string();
    path_ = mkdtemp(tmpl.data());
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// The column-family handles of a closed tier's RocksDB store at `path`, opened directly.
struct RawStore {
  explicit RawStore(const std::string& path) {
    std::vector<rocksdb::ColumnFamilyDescriptor> cfs = {
        {rocksdb::kDefaultColumnFamilyName, {}}, {"meta", {}}, {"namespaces", {}}};
    rocksdb::DBOptions o;
    status = rocksdb::DB::Open(o, path, cfs, &handles, &db);
  }
  ~RawStore() {
    for (rocksdb::ColumnFamilyHandle* h : handles) db->DestroyColumnFamilyHandle(h);
    delete db;
  }
  rocksdb::Status status;
  rocksdb::DB* db = nullptr;
  std::vector<rocksdb::ColumnFamilyHandle*> handles;  // data, meta, namespaces
};

inline BlockKey Key(uint8_t n) {
  BlockKey key;
  key.namespace_id = 7;
  key.hash.bytes.fill(n);
  return key;
}

inline std::vector<uint8_t> Bytes(size_t n, uint8_t seed) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<uint8_t>(seed * 31 + i * 7);
  return v;
}

inline DiskTierOptions Options(const std::string& path, PolicyKind policy = PolicyKind::kLru) {
  DiskTierOptions o;
  o.path = path;
  o.capacity_bytes = 64 << 20;
  o.codec = Codec::kNone;
  o.policy = policy;
  return o;
}

// A file system that remembers how much of each file was synced, so a test can copy the
// directory as a power cut would leave it: every file cut back to its last sync.
class SyncTrackingFs : public rocksdb::FileSystemWrapper {
 public:
  SyncTrackingFs() : FileSystemWrapper(rocksdb::FileSystem::Default()) {}
  const char* Name() const override { return "SyncTrackingFs"; }

  rocksdb::IOStatus NewWritableFile(const std::string& name, const rocksdb::FileOptions& opts,
                                    std::unique_ptr<rocksdb::FSWritableFile>* out,
                                    rocksdb::IODebugContext* dbg) override {
    std::unique_ptr<rocksdb::FSWritableFile> file;
    rocksdb::IOStatus s = target()->NewWritableFile(name, opts, &file, dbg);
    if (!s.ok()) return s;
    {
      std::lock_guard<std::mutex> lock(mu_);
      synced_[std::filesystem::path(name).filename().string()] = 0;
    }
    *out = std::make_unique<File>(std::move(file), this,
                                  std::filesystem::path(name).filename().string());
    return s;
  }

  // A full disk, as RocksDB sees it: no free space, and every write fails ENOSPC.
  rocksdb::IOStatus GetFreeSpace(const std::string& path, const rocksdb::IOOptions& o,
                                 uint64_t* free, rocksdb::IODebugContext* dbg) override {
    if (disk_full.load()) {
      *free = 0;
      return rocksdb::IOStatus::OK();
    }
    return target()->GetFreeSpace(path, o, free, dbg);
  }

  std::atomic<bool> fail_appends{false};  // every write to any file fails while set
  std::atomic<bool> disk_full{false};     // GetFreeSpace 0 and writes ENOSPC while set

  // Copies `from` into `to`, each file as of its last Sync.
  void CopyAsAfterPowerCut(const std::string& from, const std::string& to) {
    std::lock_guard<std::mutex> lock(mu_);
    std::filesystem::create_directories(to);
    for (const std::filesystem::directory_entry& e : std::filesystem::directory_iterator(from)) {
      std::string name = e.path().filename().string();
      std::filesystem::copy_file(e.path(), std::filesystem::path(to) / name);
      if (auto it = synced_.find(name); it != synced_.end()) {
        std::filesystem::resize_file(std::filesystem::path(to) / name, it->second);
      }
    }
  }

 private:
  class File : public rocksdb::FSWritableFileOwnerWrapper {
   public:
    File(std::unique_ptr<rocksdb::FSWritableFile> file, SyncTrackingFs* fs, std::string name)
        : FSWritableFileOwnerWrapper(std::move(file)), fs_(fs), name_(std::move(name)) {}
    rocksdb::IOStatus Sync(const rocksdb::IOOptions& o, rocksdb::IODebugContext* d) override {
      rocksdb::IOStatus s = target()->Sync(o, d);
      if (s.ok()) Synced();
      return s;
    }
    rocksdb::IOStatus Fsync(const rocksdb::IOOptions& o, rocksdb::IODebugContext* d) override {
      rocksdb::IOStatus s = target()->Fsync(o, d);
      if (s.ok()) Synced();
      return s;
    }

    rocksdb::IOStatus Append(const rocksdb::Slice& data, const rocksdb::IOOptions& o,
                             rocksdb::IODebugContext* d) override {
      if (fs_->disk_full.load()) return rocksdb::IOStatus::NoSpace("injected: disk full");
      if (fs_->fail_appends.load()) return rocksdb::IOStatus::IOError("injected write error");
      return target()->Append(data, o, d);
    }
    rocksdb::IOStatus Append(const rocksdb::Slice& data, const rocksdb::IOOptions& o,
                             const rocksdb::DataVerificationInfo& v,
                             rocksdb::IODebugContext* d) override {
      if (fs_->disk_full.load()) return rocksdb::IOStatus::NoSpace("injected: disk full");
      if (fs_->fail_appends.load()) return rocksdb::IOStatus::IOError("injected write error");
      return target()->Append(data, o, v, d);
    }

   private:
    void Synced() {
      uint64_t size = target()->GetFileSize(rocksdb::IOOptions(), nullptr);
      std::lock_guard<std::mutex> lock(fs_->mu_);
      fs_->synced_[name_] = size;
    }
    SyncTrackingFs* fs_;
    std::string name_;
  };

  std::mutex mu_;
  std::map<std::string, uint64_t> synced_;
};

// A temp dir whose files go through a SyncTrackingFs: Options() for a tier there.
struct TrackedDir {
  TempDir dir;
  std::shared_ptr<SyncTrackingFs> fs = std::make_shared<SyncTrackingFs>();
  std::unique_ptr<rocksdb::Env> env = rocksdb::NewCompositeEnv(fs);

  DiskTierOptions Options() const {
    DiskTierOptions o = disk_test::Options(dir.path() + "/db");
    o.env = env.get();
    return o;
  }
};

}  // namespace strata::storenode::disk_test
