// DiskTier's recovery at Open: the index rebuilt from the meta records, payloads and records
// reconciled after a damaged scan or a best-efforts recovery, the index family rewritten.
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "disk_tier_internal.h"
#include "rocksdb/db.h"
#include "rocksdb/env.h"
#include "rocksdb/file_system.h"
#include "rocksdb/write_batch.h"
#include "spdlog/spdlog.h"
#include "strata/common/byte_size.h"
#include "strata/common/checksum.h"
#include "strata/common/stored_block.h"
#include "strata/storenode/disk_tier.h"

namespace strata::storenode {

using disk_internal::AsSlice;
using disk_internal::FromRocks;

absl::Status DiskTier::Rebuild() {
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), meta_cf_));
  uint64_t skipped = 0;
  absl::MutexLock lock(&mu_);
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    absl::StatusOr<BlockKey> key = DecodeDiskKey(it->key().ToStringView());
    absl::StatusOr<DiskBlockMeta> meta = DecodeDiskMeta(it->value().ToStringView());
    if (!key.ok() || !meta.ok()) {
      // An unreadable index record (a record of a later format, a flipped byte RocksDB's
      // checksums missed): the payload would hold disk that no budget counts. Counted lost,
      // unless Reconcile indexes it again from its header.
      ++skipped;
      index_incomplete_ = true;
      if (key.ok()) unreadable_records_.insert(*std::move(key));
      continue;
    }
    IndexLocked(*key, *std::move(meta));
  }
  if (!it->status().ok()) {
    index_incomplete_ = true;
    spdlog::error("{} tier: index scan stopped early: {}", options_.name, it->status().ToString());
  }
  rocksdb::Env* env = options_.env != nullptr ? options_.env : rocksdb::Env::Default();
  if (env->FileExists(ReindexMarker()).ok()) {
    // "rewrite": a rewrite did not finish, the index family may be empty, orphans are blocks
    // to index again at any attempt. "scan": a finished rewrite kept it for an unfinished
    // payload scan; a best-efforts recovery then treats orphans as it always does.
    std::string why;
    index_incomplete_ = true;
    reindex_marker_ = !rocksdb::ReadFileToString(env, ReindexMarker(), &why).ok() || why != "scan";
    spdlog::error("{} tier: the last index rewrite did not finish; indexing again", options_.name);
  }
  data_loss_ += skipped;
  if (charged_bytes_ > options_.capacity_bytes) {
    // Blocks stored before min_block_charge (or under a smaller one) now count for more: the
    // demoter moves or drops the excess, a policy victim at a time.
    spdlog::warn(
        "{} tier: its {} blocks are charged {} against {} (each at least {}); the excess "
        "leaves at the next demotion",
        options_.name, index_.size(), FormatByteSize(charged_bytes_),
        FormatByteSize(options_.capacity_bytes), FormatByteSize(options_.min_block_charge));
  }
  spdlog::info("{} tier at {}: {} blocks, {} stored of {} ({} unreadable records skipped)",
               options_.name, options_.path, index_.size(), FormatByteSize(stored_bytes_),
               FormatByteSize(options_.capacity_bytes), skipped);
  // A budget the file system cannot hold meets a full disk first: writes then fail until
  // RocksDB sees 64 MiB or more free again (tiers.md, "Disk errors").
  std::error_code ec;
  const std::filesystem::space_info space = std::filesystem::space(options_.path, ec);
  if (options_.env == nullptr && !ec && space.available + stored_bytes_ < options_.capacity_bytes) {
    spdlog::warn(
        "{} tier: its budget {} is more than the file system at {} has room for ({} free + {} "
        "stored): it will meet a full disk first, and refuse writes until space is freed",
        options_.name, FormatByteSize(options_.capacity_bytes), options_.path,
        FormatByteSize(space.available), FormatByteSize(stored_bytes_));
  }
  return absl::OkStatus();
}

// Where RewriteIndex records that it has started and not yet finished (std::string: the
// Env API takes one).
std::string DiskTier::ReindexMarker() const { return options_.path + "/STRATA-REINDEX"; }

absl::Status DiskTier::Reconcile(bool reindex_orphans) {
  rocksdb::ReadOptions ro;
  ro.fill_cache = false;
  // verify_checksums stays on: a blob record whose key is not this key is not its payload.
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(ro, data_cf_));
  rocksdb::WriteBatch batch;
  uint64_t dropped = 0, reindexed = 0, without_payload = 0;
  absl::flat_hash_set<BlockKey> seen;
  absl::MutexLock lock(&mu_);
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    absl::StatusOr<BlockKey> key = DecodeDiskKey(it->key().ToStringView());
    if (key.ok() && index_.contains(*key)) {
      seen.insert(*std::move(key));
      continue;
    }
    // A block whose record exists but could not be decoded was not deleted: indexed again
    // even where orphans are not (after a best-efforts recovery).
    if (key.ok() && (reindex_orphans || unreadable_records_.contains(*key))) {
      // Its index record is in what the scan could not read: the block's own header holds
      // what the index needs (not its depth, parent, importance or session).
      absl::StatusOr<DiskBlockMeta> meta = MetaFromPayload(it->value().ToStringView());
      if (meta.ok()) {
        if (unreadable_records_.erase(*key) > 0) --data_loss_;
        IndexLocked(*key, *std::move(meta));
        seen.insert(*std::move(key));
        ++reindexed;
        continue;
      }
    }
    batch.Delete(data_cf_, it->key());
    ++dropped;
  }
  if (!it->status().ok()) {
    // Which payloads exist past this point is unknown: keep their index records (a read that
    // finds no payload drops the record then), and RewriteIndex leaves its marker, so that
    // the next start reconciles again.
    payload_scan_incomplete_ = true;
    spdlog::error("{} tier: payload scan stopped early: {}", options_.name,
                  it->status().ToString());
  } else {
    std::vector<BlockKey> gone;
    for (const auto& [key, entry] : index_) {
      if (!seen.contains(key)) gone.push_back(key);
    }
    for (const BlockKey& key : gone) {
      DropLocked(key);
      batch.Delete(meta_cf_, AsSlice(EncodeDiskKey(key)));
    }
    without_payload = gone.size();
  }
  // Each indexed again, or dropped with its unusable payload, or (the scan stopped early)
  // left for the next start, counted lost until then.
  unreadable_records_.clear();
  if (dropped + reindexed + without_payload > 0) {
    spdlog::warn(
        "{} tier: {} payloads without an index record dropped, {} indexed again from their "
        "headers; {} index records without a payload dropped",
        options_.name, dropped, reindexed, without_payload);
  }
  if (batch.Count() == 0) return absl::OkStatus();
  return FromRocks(db_->Write(rocksdb::WriteOptions(), &batch), options_.name + " tier prune");
}

absl::StatusOr<DiskBlockMeta> DiskTier::MetaFromPayload(std::string_view value) const {
  std::span<const uint8_t> bytes(reinterpret_cast<const uint8_t*>(value.data()), value.size());
  absl::StatusOr<StoredBlockView> view = VerifyStoredBlock(bytes);
  if (!view.ok()) return view.status();
  DiskBlockMeta meta;
  meta.size = view->header.original_size;
  meta.stored_bytes = value.size();
  meta.quant = view->header.quant.method;
  meta.checksum = view->header.checksum;
  if (meta.quant != KvQuant::kNone) {
    // What this tier serves, and what its index carries, is the dequantized block.
    std::vector<uint8_t> served;
    if (absl::Status s = UnpackBlock(bytes, &served); !s.ok()) return s;
    meta.checksum = BlockChecksum(served.data(), served.size());
  }
  return meta;
}

absl::Status DiskTier::RewriteIndex() {
  // The index column family holds a damaged file (the scan stopped in it), which RocksDB
  // would also meet in its next compaction of that family and then refuse every write. Drop
  // the family and write what the index now holds into a new one. The marker makes a crash
  // in between come back here: the next start indexes the payloads from their headers again.
  rocksdb::Env* env = options_.env != nullptr ? options_.env : rocksdb::Env::Default();
  const std::string marker = ReindexMarker();
  // A failure here is not damage (no best-efforts retry, which would not index orphans
  // again): the start fails, and the next one begins anew, from the marker if it was written.
  auto step = [&](const rocksdb::Status& s, std::string_view what) {
    return s.ok()
               ? absl::OkStatus()
               : absl::InternalError(absl::StrCat(options_.name, " tier index rewrite: ",
                                                  absl::string_view(what.data(), what.size()), ": ",
                                                  s.ToString(), "; the next start tries again"));
  };
  if (absl::Status s =
          step(rocksdb::WriteStringToFile(env, "rewrite", marker, /*should_sync=*/true), "marker");
      !s.ok()) {
    return s;
  }
  // The marker's directory entry too, before anything it guards happens.
  std::unique_ptr<rocksdb::Directory> dir;
  if (absl::Status s = step(env->NewDirectory(options_.path, &dir), "directory"); !s.ok()) {
    return s;
  }
  if (absl::Status s = step(dir->Fsync(), "directory sync"); !s.ok()) return s;
  rocksdb::ColumnFamilyHandle* fresh = nullptr;
  if (absl::Status s = step(db_->DropColumnFamily(meta_cf_), "drop"); !s.ok()) return s;
  if (absl::Status s = step(db_->DestroyColumnFamilyHandle(meta_cf_), "handle"); !s.ok()) {
    return s;
  }
  meta_cf_ = handles_[1] = nullptr;
  if (absl::Status s =
          step(db_->CreateColumnFamily(rocksdb::ColumnFamilyOptions(), "meta", &fresh), "create");
      !s.ok()) {
    return s;
  }
  meta_cf_ = handles_[1] = fresh;
  rocksdb::WriteOptions wo;
  wo.sync = true;
  rocksdb::WriteBatch batch;
  absl::MutexLock lock(&mu_);
  for (const auto& [key, entry] : index_) {
    batch.Put(meta_cf_, AsSlice(EncodeDiskKey(key)), AsSlice(EncodeDiskMeta(entry.meta)));
    if (batch.Count() < 4096) continue;
    if (absl::Status s = step(db_->Write(wo, &batch), "write"); !s.ok()) return s;
    batch.Clear();
  }
  if (absl::Status s = step(db_->Write(wo, &batch), "write"); !s.ok()) return s;
  if (payload_scan_incomplete_) {
    // The marker stays (see Reconcile), saying why.
    return step(rocksdb::WriteStringToFile(env, "scan", marker, /*should_sync=*/true), "marker");
  }
  if (absl::Status s = step(env->DeleteFile(marker), "marker"); !s.ok()) return s;
  index_incomplete_ = false;
  spdlog::warn("{} tier: index rewritten from the {} blocks found", options_.name, index_.size());
  return absl::OkStatus();
}

}  // namespace strata::storenode
