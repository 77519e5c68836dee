#include "strata/storenode/disk_tier.h"

#include <algorithm>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <iterator>
#include <optional>
#include <string_view>

#include "absl/container/flat_hash_set.h"
#include "absl/hash/hash.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "disk_tier_internal.h"
#include "retryable_io_fs.h"
#include "rocksdb/db.h"
#include "rocksdb/env.h"
#include "rocksdb/options.h"
#include "rocksdb/write_batch.h"
#include "spdlog/spdlog.h"
#include "strata/common/byte_size.h"
#include "strata/common/checksum.h"
#include "strata/common/stored_block.h"
#include "strata/storenode/tenant_quota.h"

namespace strata::storenode {
namespace {

using disk_internal::AsSlice;
using disk_internal::FromRocks;

// 1: without parent_handle and quant (read as kNoBlock, none); 2: both appended.
constexpr uint8_t kMetaVersion = 2;

void PutU8(std::string& s, uint8_t v) { s.push_back(static_cast<char>(v)); }
template <typename T>
void PutLe(std::string& s, T v) {
  char b[sizeof(T)];
  std::memcpy(b, &v, sizeof(T));  // x86-64 and arm64 Linux are little-endian
  s.append(b, sizeof(T));
}

// Bounds-checked little-endian reader over untrusted bytes.
class Reader {
 public:
  explicit Reader(std::string_view s) : s_(s) {}
  template <typename T>
  bool Get(T* v) {
    if (s_.size() - pos_ < sizeof(T)) return false;
    std::memcpy(v, s_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return true;
  }
  bool Bytes(size_t n, std::string* out) {
    if (s_.size() - pos_ < n) return false;
    out->assign(s_.data() + pos_, n);
    pos_ += n;
    return true;
  }
  bool done() const { return pos_ == s_.size(); }

 private:
  std::string_view s_;
  size_t pos_ = 0;
};

// What an open that failed for the machine's state, not the files', says besides the causes
// that pass with time (PassesWithTime): RocksDB's lock message and strerror texts.
constexpr std::string_view kCircumstances[] = {
    "While lock file",
    "Permission denied",
    "No space",
    "Read-only file system",
};

// RocksDB's own log goes through ours (warnings and worse) instead of a LOG file in the
// store's directory: on a full disk that file's failed append made librocksdb (Debian's build
// keeps its assertions) abort the whole node at its next log line (tiers.md, "Disk errors").
class RocksLogToSpdlog : public rocksdb::Logger {
 public:
  explicit RocksLogToSpdlog(std::string tier)
      : rocksdb::Logger(rocksdb::InfoLogLevel::WARN_LEVEL), tier_(std::move(tier)) {}
  void Logv(const char* format, va_list ap) override {
    Logv(rocksdb::InfoLogLevel::INFO_LEVEL, format, ap);
  }
  void Logv(const rocksdb::InfoLogLevel level, const char* format, va_list ap) override {
    if (level < GetInfoLogLevel()) return;
    char line[1024] = "";
    const int n = std::vsnprintf(line, sizeof(line), format, ap);
    if (n > 0 && static_cast<size_t>(n) < sizeof(line) && line[n - 1] == '\n') line[n - 1] = 0;
    spdlog::log(
        level >= rocksdb::InfoLogLevel::ERROR_LEVEL ? spdlog::level::err : spdlog::level::warn,
        "{} tier (RocksDB): {}", tier_, line);
  }

 private:
  const std::string tier_;
};

}  // namespace

namespace disk_internal {

absl::Status FromRocks(const rocksdb::Status& s, std::string_view what) {
  if (s.ok()) return absl::OkStatus();
  std::string msg = absl::StrCat(std::string(what), ": ", s.ToString());
  if (s.IsNotFound()) return absl::NotFoundError(msg);
  if (s.IsCorruption()) return absl::DataLossError(msg);
  if (s.IsNoSpace()) return absl::ResourceExhaustedError(msg);
  return absl::UnavailableError(msg);
}

}  // namespace disk_internal

std::string EncodeDiskKey(const BlockKey& key) {
  std::string out;
  out.reserve(8 + 1 + key.scope.size() + kChainHashBytes);
  for (int i = 7; i >= 0; --i) PutU8(out, static_cast<uint8_t>(key.namespace_id >> (8 * i)));
  PutU8(out, static_cast<uint8_t>(key.scope.size()));
  out += key.scope;
  out.append(key.hash.AsStringView());
  return out;
}

absl::StatusOr<BlockKey> DecodeDiskKey(std::string_view raw) {
  if (raw.size() < 8 + 1 + kChainHashBytes) return absl::DataLossError("disk key: too short");
  BlockKey key;
  for (int i = 0; i < 8; ++i) {
    key.namespace_id = (key.namespace_id << 8) | static_cast<uint8_t>(raw[i]);
  }
  size_t scope_len = static_cast<uint8_t>(raw[8]);
  if (raw.size() != 9 + scope_len + kChainHashBytes) {
    return absl::DataLossError("disk key: length does not match its scope length");
  }
  key.scope.assign(raw.substr(9, scope_len));
  absl::StatusOr<ChainHash> h = ChainHash::FromBytes(raw.substr(9 + scope_len), "disk key");
  if (!h.ok()) return absl::DataLossError(h.status().message());
  key.hash = *h;
  return key;
}

std::string EncodeDiskMeta(const DiskBlockMeta& m) {
  std::string out;
  PutU8(out, kMetaVersion);
  PutLe<uint64_t>(out, m.size);
  PutLe<uint64_t>(out, m.stored_bytes);
  PutLe<uint64_t>(out, m.checksum);
  PutLe<uint32_t>(out, m.depth);
  PutLe<float>(out, m.importance);
  PutLe<uint32_t>(out, m.access_count);
  PutLe<uint16_t>(out, static_cast<uint16_t>(m.session.size()));
  out += m.session;
  PutLe<uint64_t>(out, m.parent_handle);
  PutU8(out, static_cast<uint8_t>(m.quant));
  return out;
}

absl::StatusOr<DiskBlockMeta> DecodeDiskMeta(std::string_view raw) {
  Reader r(raw);
  DiskBlockMeta m;
  uint8_t version = 0;
  uint16_t session_len = 0;
  uint8_t quant = 0;
  if (!r.Get(&version) || (version != 1 && version != kMetaVersion) || !r.Get(&m.size) ||
      !r.Get(&m.stored_bytes) || !r.Get(&m.checksum) || !r.Get(&m.depth) || !r.Get(&m.importance) ||
      !r.Get(&m.access_count) || !r.Get(&session_len) || !r.Bytes(session_len, &m.session) ||
      (version >= 2 && (!r.Get(&m.parent_handle) || !r.Get(&quant) || quant > 2)) || !r.done()) {
    return absl::DataLossError("disk meta record: malformed");
  }
  m.quant = static_cast<KvQuant>(quant);
  return m;
}

absl::StatusOr<std::unique_ptr<DiskTier>> DiskTier::Open(DiskTierOptions options) {
  if (options.path.empty()) return absl::InvalidArgumentError(options.name + "_path: empty");
  if (options.capacity_bytes == 0) {
    return absl::InvalidArgumentError(options.name + "_bytes: must be > 0");
  }
  rocksdb::Options opts;
  // Transient open errors retryable (retryable_io_fs.h); owned by the tier, outliving its DB.
  std::shared_ptr<rocksdb::Env> env = rocksdb::NewCompositeEnv(RetryableTransientErrors(
      (options.env != nullptr ? options.env : rocksdb::Env::Default())->GetFileSystem()));
  opts.env = env.get();
  opts.info_log = std::make_shared<RocksLogToSpdlog>(options.name);
  opts.create_if_missing = true;
  opts.create_missing_column_families = true;
  opts.compression = rocksdb::kNoCompression;  // payloads are encoded by our codecs
  opts.enable_blob_files = true;
  opts.min_blob_size = 4096;
  opts.blob_compression_type = rocksdb::kNoCompression;
  opts.enable_blob_garbage_collection = true;
  opts.max_open_files = 256;
  // RocksDB's own RAM and WAL bounded by the tier's size rather than left at its defaults
  // (64 MiB memtables per column family without a total; a WAL kept up to 4 x their total for
  // the rarely flushed meta family): memtables of all families together 1/16 of the budget,
  // 64..256 MiB, the WAL 1/8, 64..512 MiB (past it the families holding it back are flushed).
  opts.db_write_buffer_size =
      std::clamp<uint64_t>(options.capacity_bytes / 16, 64ull << 20, 256ull << 20);
  opts.max_total_wal_size =
      std::clamp<uint64_t>(options.capacity_bytes / 8, 64ull << 20, 512ull << 20);
  std::vector<rocksdb::ColumnFamilyDescriptor> cfs = {
      {rocksdb::kDefaultColumnFamilyName, rocksdb::ColumnFamilyOptions(opts)},
      {"meta", rocksdb::ColumnFamilyOptions()},
      {"namespaces", rocksdb::ColumnFamilyOptions()}};
  if (options.env == nullptr) {
    std::error_code ec;
    std::filesystem::create_directories(options.path, ec);  // Open reports what still fails
  }
  // A store whose files were damaged (a flipped byte in a MANIFEST, a truncated SST) must not
  // keep the node down: first RocksDB's best-efforts recovery, which opens the latest state
  // its intact files make up; if that fails too, the directory is set aside (for an operator
  // to salvage) and the tier starts empty. Either way every block that survives is still
  // checked against its own checksum when read. Not rocksdb::RepairDB: it leaves blob files
  // out of the MANIFEST it rebuilds and the next open deletes them, i.e. every block of 4 KiB
  // or more, damaged or not, while their records stay and are charged (docs/design/tiers.md).
  for (int attempt = 0;; ++attempt) {
    std::vector<rocksdb::ColumnFamilyHandle*> handles;
    rocksdb::DB* db = nullptr;
    rocksdb::DBOptions db_opts(opts);
    db_opts.best_efforts_recovery = attempt == 1;
    rocksdb::Status s = rocksdb::DB::Open(db_opts, options.path, cfs, &handles, &db);
    absl::Status opened = absl::OkStatus();
    std::unique_ptr<DiskTier> tier;
    if (s.ok()) {
      tier.reset(new DiskTier(options, env, db, std::move(handles)));
      opened = tier->Rebuild();
      // Best-efforts recovery takes each column family to its own last intact point, without
      // the WAL, and a damaged index block ends the scan early: payloads whose index record
      // did not survive, or was not read, would hold disk that no budget counts, and index
      // records whose payload did not survive would be hits that cannot be read.
      if (opened.ok() && (attempt == 1 || tier->index_incomplete_)) {
        // Orphans are indexed again only where their records cannot have been deleted: a
        // damaged index scan at the first attempt, or an unfinished rewrite (the marker) —
        // not after best-efforts recovery alone (see Reconcile).
        opened = tier->Reconcile(/*reindex_orphans=*/attempt == 0 || tier->reindex_marker_);
      }
      if (opened.ok() && tier->index_incomplete_) opened = tier->RewriteIndex();
      if (opened.ok()) return tier;
      tier.reset();
    } else {
      opened = absl::UnavailableError(absl::StrCat(options.name, " tier: cannot open RocksDB at ",
                                                   options.path, ": ", s.ToString()));
    }
    // Damage, not circumstance: a store another process holds (its LOCK), a directory we may
    // not write, a full disk, a process out of file descriptors or memory, or a network
    // mount that timed out must fail the start and never be "repaired" (best efforts drop the
    // WAL) or set aside: another start finds the store whole.
    const std::string why = s.ok() ? std::string(opened.message()) : s.ToString();
    const bool circumstance =
        PassesWithTime(why) ||
        std::any_of(std::begin(kCircumstances), std::end(kCircumstances),
                    [&](std::string_view c) { return why.find(c) != std::string::npos; });
    const bool damaged =
        !circumstance && (s.IsCorruption() || s.IsIOError() ||
                          (s.ok() && (opened.code() == absl::StatusCode::kDataLoss ||
                                      opened.code() == absl::StatusCode::kUnavailable)));
    if (!damaged || attempt == 2 || options.env != nullptr) return opened;
    if (attempt == 0) {
      spdlog::error("{} tier: {}; opening what the intact files hold (best-efforts recovery)",
                    options.name, std::string(opened.message()));
    } else {
      const std::string aside =
          absl::StrCat(options.path, ".damaged-", absl::ToUnixSeconds(absl::Now()));
      spdlog::error("{} tier: still unusable ({}); moved to {}, starting empty", options.name,
                    std::string(opened.message()), aside);
      std::error_code ec;
      std::filesystem::rename(options.path, aside, ec);
      if (ec) return opened;
    }
  }
}

DiskTier::DiskTier(DiskTierOptions options, std::shared_ptr<rocksdb::Env> env, rocksdb::DB* db,
                   std::vector<rocksdb::ColumnFamilyHandle*> handles)
    : options_(std::move(options)),
      env_(std::move(env)),
      db_(db),
      data_cf_(handles[0]),
      meta_cf_(handles[1]),
      ns_cf_(handles[2]),
      handles_(std::move(handles)),
      policy_(MakeEvictionPolicy(options_.policy, options_.policy_options)) {}

void DiskTier::IndexLocked(const BlockKey& key, DiskBlockMeta meta) {
  stored_bytes_ += meta.stored_bytes;
  charged_bytes_ += Charge(meta.stored_bytes);
  payload_bytes_ += meta.size;
  scope_bytes_[key.scope] += Charge(meta.stored_bytes);
  auto [pos, inserted] =
      index_.emplace(key, Entry{std::move(meta), PolicyHandle(key), ++next_version_});
  AdmitLocked(pos->first, pos->second);
}

void DiskTier::AdmitLocked(const BlockKey& key, Entry& entry) {
  BlockTraits traits;
  traits.size = entry.meta.stored_bytes;
  traits.depth = entry.meta.depth;
  traits.parent = entry.meta.parent_handle;
  traits.importance = entry.meta.importance;
  by_handle_[entry.handle] = key;
  if (!entry.meta.session.empty()) by_session_[entry.meta.session].insert(entry.handle);
  policy_->Insert(entry.handle, traits, ++tick_);
}

DiskTier::~DiskTier() {
  // Flush so a restart reads blob and SST files instead of replaying the whole WAL.
  rocksdb::FlushOptions fo;
  // (A null handle: RewriteIndex failed between dropping the index family and creating it.)
  std::erase(handles_, nullptr);
  db_->Flush(fo, handles_).PermitUncheckedError();
  for (rocksdb::ColumnFamilyHandle* h : handles_) db_->DestroyColumnFamilyHandle(h);
  db_->Close();
  delete db_;
}

absl::Status DiskTier::Put(const BlockKey& key, std::span<const uint8_t> payload,
                           DiskBlockMeta meta, const KvQuantSpec& quant) {
  absl::StatusOr<std::string> value;
  meta.quant = KvQuant::kNone;
  const uint64_t verified = meta.checksum;
  meta.checksum = BlockChecksum(payload.data(), payload.size());
  if (verified != 0 && meta.checksum != verified) {
    // Changed since the caller checked them (in the arena, under a pin): a disk copy would
    // carry a checksum that matches wrong bytes.
    return absl::DataLossError(absl::StrCat(options_.name, " tier: block ", key.hash.ToHex(),
                                            ": payload changed after it was verified"));
  }
  if (quant.method != KvQuant::kNone && ValidateKvQuantSpec(quant, payload.size()).ok()) {
    value = PackBlock(payload, options_.codec, quant, 0);
    // A block that cannot be quantized (NaN or infinity in it) is kept lossless.
    if (value.ok()) {
      // What this tier will serve is the dequantized block: its checksum is the one the
      // index, Lookup and every later read carry, and Read verifies it end to end.
      std::vector<uint8_t> served;
      if (absl::Status s = UnpackBlock(
              {reinterpret_cast<const uint8_t*>(value->data()), value->size()}, &served);
          !s.ok()) {
        return absl::InternalError(
            absl::StrCat(options_.name, " tier: quantized block does not decode: ", s.message()));
      }
      meta.quant = quant.method;
      meta.checksum = BlockChecksum(served.data(), served.size());
    }
  }
  if (meta.quant == KvQuant::kNone) value = PackBlock(payload, options_.codec, KvQuantSpec{}, 0);
  if (!value.ok()) return value.status();
  meta.size = payload.size();
  meta.stored_bytes = value->size();
  const uint64_t quota =
      key.scope != kSharedScope && options_.scope_quota ? options_.scope_quota(key.scope) : 0;
  // Counted as pending from the check until the block is indexed (or its write failed), so
  // concurrent puts cannot all pass the same check and overshoot the budget or a quota.
  const uint64_t charge = Charge(meta.stored_bytes);
  {
    absl::MutexLock lock(&mu_);
    auto old = index_.find(key);
    uint64_t replaced = old == index_.end() ? 0 : old->second.meta.stored_bytes;
    const uint64_t charged =
        charged_bytes_ + pending_bytes_ - (old == index_.end() ? 0 : Charge(replaced));
    if (charged + charge > options_.capacity_bytes) {
      return absl::ResourceExhaustedError(absl::StrCat(
          options_.name, " tier full: ", FormatByteSize(charged_bytes_ + pending_bytes_), " of ",
          FormatByteSize(options_.capacity_bytes), " used (", index_.size(),
          " blocks, each charged at least ", FormatByteSize(options_.min_block_charge), ")"));
    }
    if (quota > 0) {
      auto held = scope_bytes_.find(key.scope);
      auto waiting = pending_scope_bytes_.find(key.scope);
      const uint64_t used = (held == scope_bytes_.end() ? 0 : held->second) +
                            (waiting == pending_scope_bytes_.end() ? 0 : waiting->second);
      const uint64_t replaced_charge = old == index_.end() ? 0 : Charge(replaced);
      if (used - std::min(used, replaced_charge) + charge > quota) {
        return TenantQuotaError(key.scope, used, options_.name, quota);
      }
    }
    pending_bytes_ += charge;
    pending_scope_bytes_[key.scope] += charge;
  }
  auto settle = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    pending_bytes_ -= charge;
    auto waiting = pending_scope_bytes_.find(key.scope);
    if ((waiting->second -= charge) == 0) pending_scope_bytes_.erase(waiting);
  };
  std::string k = EncodeDiskKey(key);
  rocksdb::WriteBatch batch;
  absl::MutexLock stripe(&KeyStripe(key));
  batch.Put(data_cf_, AsSlice(k), AsSlice(*value));
  batch.Put(meta_cf_, AsSlice(k), AsSlice(EncodeDiskMeta(meta)));
  rocksdb::WriteOptions wo;
  wo.sync = options_.sync_writes;
  if (absl::Status s = FromRocks(db_->Write(wo, &batch), options_.name + " tier write"); !s.ok()) {
    absl::MutexLock lock(&mu_);
    settle();
    return s;
  }
  absl::MutexLock lock(&mu_);
  settle();
  auto it = index_.find(key);
  if (it != index_.end()) DropLocked(key);
  codec_in_ += meta.size;
  codec_out_ += meta.stored_bytes;
  IndexLocked(key, std::move(meta));
  return absl::OkStatus();
}

absl::Mutex& DiskTier::KeyStripe(const BlockKey& key) const {
  return key_stripes_[absl::Hash<BlockKey>{}(key) % kKeyStripes];
}

absl::Status DiskTier::Read(const BlockKey& key, std::vector<uint8_t>* out) {
  // A put or delete of the key between the index lookup and the read makes what was read
  // disagree with what was looked up; that is no damage. Twice unlocked, then under the
  // key's stripe lock, where nothing changes it.
  for (int attempt = 0; attempt < 2; ++attempt) {
    bool changed = false;
    absl::Status s = ReadOnce(key, out, &changed);
    if (!changed) return s;
  }
  absl::MutexLock stripe(&KeyStripe(key));
  return ReadOnce(key, out, nullptr);
}

absl::Status DiskTier::ReadOnce(const BlockKey& key, std::vector<uint8_t>* out, bool* changed) {
  uint64_t want_checksum = 0, want_size = 0, version = 0;
  {
    absl::MutexLock lock(&mu_);
    auto it = index_.find(key);
    if (it == index_.end()) return absl::NotFoundError(options_.name + " tier: not present");
    want_checksum = it->second.meta.checksum;
    want_size = it->second.meta.size;
    version = it->second.version;
  }
  rocksdb::PinnableSlice value;
  rocksdb::ReadOptions ro;
  // RocksDB's own CRC32C over the value (software CRC in Debian's build: most of a read's CPU)
  // adds nothing to what follows: the stored block carries xxh3 checksums of its header, its
  // stored bytes and its payload, and the payload's must match the index's checksum for this
  // key, so a flipped byte, or an index block pointing at another key's value, is DATA_LOSS.
  ro.verify_checksums = false;
  absl::Status s = FromRocks(db_->Get(ro, data_cf_, rocksdb::Slice(EncodeDiskKey(key)), &value),
                             options_.name + " tier read");
  const std::span<const uint8_t> bytes(reinterpret_cast<const uint8_t*>(value.data()),
                                       value.size());
  if (s.ok()) {
    // Before anything is allocated for it: a value claiming another size (up to 1 GiB) is not
    // the block the index holds.
    absl::StatusOr<StoredBlockView> view = DecodeStoredBlock(bytes);
    if (!view.ok()) {
      s = view.status();
    } else if (view->header.original_size != want_size) {
      s = absl::DataLossError(absl::StrCat("stored block of ", view->header.original_size,
                                           " bytes where the index holds ", want_size));
    }
  }
  if (s.ok()) {
    StoredBlockHeader header;
    s = UnpackBlock(bytes, out, &header);
    // Lossless: the header's checksum of the original is the index's. Lossy: the index holds
    // the checksum of the dequantized block, checked over what was just restored.
    uint64_t got = header.quant.method == KvQuant::kNone ? header.checksum
                                                         : BlockChecksum(out->data(), out->size());
    if (s.ok() && got != want_checksum) {
      s = absl::DataLossError("stored checksum differs from the index");
    }
  }
  if (s.code() != absl::StatusCode::kDataLoss && s.code() != absl::StatusCode::kNotFound) {
    return s;
  }
  // Dropped (index and records) only if the copy read is still the one indexed.
  std::optional<absl::MutexLock> stripe;
  if (changed != nullptr) stripe.emplace(&KeyStripe(key));
  {
    absl::MutexLock lock(&mu_);
    auto it = index_.find(key);
    if (it == index_.end() || it->second.version != version) {
      if (changed != nullptr) *changed = true;
      return s;
    }
    spdlog::error("{} tier: block {} dropped: {}", options_.name, key.hash.ToHex(), s.ToString());
    if (s.code() == absl::StatusCode::kDataLoss) ++data_loss_;
    DropLocked(key);
  }
  std::string k = EncodeDiskKey(key);
  rocksdb::WriteBatch batch;
  batch.Delete(data_cf_, AsSlice(k));
  batch.Delete(meta_cf_, AsSlice(k));
  db_->Write(rocksdb::WriteOptions(), &batch).PermitUncheckedError();
  if (s.code() == absl::StatusCode::kDataLoss) {
    return absl::DataLossError(absl::StrCat(options_.name, " tier: ", s.message()));
  }
  return s;
}

void DiskTier::DropLocked(const BlockKey& key) {
  auto it = index_.find(key);
  if (it == index_.end()) return;
  stored_bytes_ -= it->second.meta.stored_bytes;
  charged_bytes_ -= Charge(it->second.meta.stored_bytes);
  payload_bytes_ -= it->second.meta.size;
  if (auto held = scope_bytes_.find(key.scope); held != scope_bytes_.end()) {
    held->second -= std::min(held->second, Charge(it->second.meta.stored_bytes));
    if (held->second == 0) scope_bytes_.erase(held);
  }
  policy_->Erase(it->second.handle);
  if (auto h = by_handle_.find(it->second.handle); h != by_handle_.end() && h->second == key) {
    by_handle_.erase(h);
  }
  if (auto m = by_session_.find(it->second.meta.session); m != by_session_.end()) {
    m->second.erase(it->second.handle);
    if (m->second.empty()) by_session_.erase(m);
  }
  index_.erase(it);
}

absl::Status DiskTier::Delete(const BlockKey& key) {
  DiskBlockMeta was;
  absl::MutexLock stripe(&KeyStripe(key));
  {
    absl::MutexLock lock(&mu_);
    auto it = index_.find(key);
    if (it == index_.end()) return absl::NotFoundError(options_.name + " tier: not present");
    was = it->second.meta;
    DropLocked(key);
  }
  std::string k = EncodeDiskKey(key);
  rocksdb::WriteBatch batch;
  batch.Delete(data_cf_, AsSlice(k));
  batch.Delete(meta_cf_, AsSlice(k));
  // As durable as the puts: with sync_writes a deleted block must not come back after a crash.
  rocksdb::WriteOptions wo;
  wo.sync = options_.sync_writes;
  absl::Status s = FromRocks(db_->Write(wo, &batch), options_.name + " tier delete");
  if (!s.ok()) {
    // Still on disk: indexed and counted again (the key's stripe kept puts out), so it is
    // neither uncounted disk nor a block that a restart brings back after "deleted".
    absl::MutexLock lock(&mu_);
    if (!index_.contains(key)) IndexLocked(key, std::move(was));
  }
  return s;
}

std::optional<DiskBlockMeta> DiskTier::Find(const BlockKey& key, bool touch) {
  absl::MutexLock lock(&mu_);
  auto it = index_.find(key);
  if (it == index_.end()) return std::nullopt;
  if (touch) {
    policy_->Access(it->second.handle, ++tick_);
    ++it->second.meta.access_count;
  }
  return it->second.meta;
}

std::vector<BlockKey> DiskTier::Victims(uint64_t bytes) {
  std::vector<BlockKey> out;
  uint64_t sum = 0;
  absl::MutexLock lock(&mu_);
  while (sum < bytes) {
    std::optional<uint64_t> victim =
        policy_->Victim([&](uint64_t handle) { return by_handle_.contains(handle); });
    if (!victim) break;
    policy_->Erase(*victim);
    const BlockKey& key = by_handle_.at(*victim);
    out.push_back(key);
    sum += Charge(index_.at(key).meta.stored_bytes);
  }
  return out;
}

void DiskTier::Rank(std::span<const BlockKey> keys) {
  absl::MutexLock lock(&mu_);
  for (const BlockKey& key : keys) {
    auto it = index_.find(key);
    if (it == index_.end()) continue;
    policy_->Erase(it->second.handle);
    AdmitLocked(it->first, it->second);
  }
}

std::vector<BlockKey> DiskTier::SessionBlocks(const std::string& session, size_t max,
                                              SessionCursor* cursor) {
  std::vector<BlockKey> out;
  if (cursor != nullptr && cursor->done) return out;
  absl::MutexLock lock(&mu_);
  auto m = by_session_.find(session);
  if (m == by_session_.end()) {
    if (cursor != nullptr) cursor->done = true;
    return out;
  }
  out.reserve(std::min(m->second.size(), max));
  auto it = cursor != nullptr ? m->second.lower_bound(cursor->next) : m->second.begin();
  for (; it != m->second.end() && out.size() < max; ++it) {
    auto k = by_handle_.find(*it);
    if (k != by_handle_.end()) out.push_back(k->second);
  }
  if (cursor != nullptr) {
    if (it == m->second.end()) {
      cursor->done = true;
    } else {
      cursor->next = *it;
    }
  }
  return out;
}

absl::Status DiskTier::SaveNamespace(NamespaceId id, const NamespaceSpec& spec) {
  std::string k;
  PutLe<uint64_t>(k, id);
  std::string v;
  for (const std::string* s : {&spec.model_id, &spec.dtype, &spec.layout}) {
    PutLe<uint32_t>(v, static_cast<uint32_t>(s->size()));
    v += *s;
  }
  PutLe<uint32_t>(v, spec.block_tokens);
  PutLe<uint32_t>(v, spec.tp_rank);
  PutLe<uint32_t>(v, spec.tp_size);
  PutU8(v, static_cast<uint8_t>(spec.hash_algorithm));
  PutLe<uint64_t>(v, spec.block_bytes);
  // Appended later; records without them read as "not stated".
  PutLe<uint32_t>(v, static_cast<uint32_t>(spec.offload_quant.size()));
  v += spec.offload_quant;
  PutLe<uint32_t>(v, spec.head_dim);
  rocksdb::WriteOptions wo;
  wo.sync = true;  // rare and small; a node must never forget a namespace its blocks use
  return FromRocks(db_->Put(wo, ns_cf_, AsSlice(k), AsSlice(v)), options_.name + " namespace");
}

absl::StatusOr<std::vector<NamespaceSpec>> DiskTier::LoadNamespaces() {
  std::vector<NamespaceSpec> out;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), ns_cf_));
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    Reader r(it->value().ToStringView());
    NamespaceSpec spec;
    bool ok = true;
    for (std::string* s : {&spec.model_id, &spec.dtype, &spec.layout}) {
      uint32_t n = 0;
      ok = ok && r.Get(&n) && n <= 4096 && r.Bytes(n, s);
    }
    uint8_t algo = 0;
    ok = ok && r.Get(&spec.block_tokens) && r.Get(&spec.tp_rank) && r.Get(&spec.tp_size) &&
         r.Get(&algo) && algo <= 1 && r.Get(&spec.block_bytes);
    if (ok && !r.done()) {
      uint32_t n = 0;
      ok = r.Get(&n) && n <= 64 && r.Bytes(n, &spec.offload_quant) && r.Get(&spec.head_dim);
    }
    ok = ok && r.done();
    if (!ok) {
      spdlog::error("{} tier: unreadable namespace record skipped", options_.name);
      continue;
    }
    spec.hash_algorithm = static_cast<ChainHashAlgorithm>(algo);
    out.push_back(std::move(spec));
  }
  if (!it->status().ok()) {
    // Damaged namespace records are not fatal: blocks of a namespace not listed stay on disk
    // and become reachable again once a client registers the namespace.
    spdlog::error("{} tier: namespace records unreadable past {} ({}); continuing", options_.name,
                  out.size(), it->status().ToString());
  }
  return out;
}

bool DiskTier::KeysAfter(std::string* cursor, size_t max, std::vector<BlockKey>* out) const {
  rocksdb::ReadOptions ro;
  ro.fill_cache = false;  // a background walk: leave the block cache to the readers
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(ro, meta_cf_));
  if (cursor->empty()) {
    it->SeekToFirst();
  } else {
    it->Seek(AsSlice(*cursor));
    if (it->Valid() && it->key() == AsSlice(*cursor)) it->Next();
  }
  const size_t first = out->size();
  for (; it->Valid() && out->size() - first < max; it->Next()) {
    cursor->assign(it->key().data(), it->key().size());
    absl::StatusOr<BlockKey> key = DecodeDiskKey(it->key().ToStringView());
    if (key.ok()) out->push_back(std::move(*key));  // unreadable: Rebuild counted it lost
  }
  const bool more = it->Valid();
  if (!it->status().ok()) {
    spdlog::warn("{} tier: key walk stopped early: {}", options_.name, it->status().ToString());
  }
  // A meta record is written before its block enters the index and removed after it leaves:
  // give only blocks the index holds now.
  absl::MutexLock lock(&mu_);
  out->erase(std::remove_if(out->begin() + static_cast<std::ptrdiff_t>(first), out->end(),
                            [this](const BlockKey& k)
                                ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !index_.contains(k); }),
             out->end());
  return more;
}

std::vector<std::pair<std::string, uint64_t>> DiskTier::ScopeBytes() const {
  absl::MutexLock lock(&mu_);
  return {scope_bytes_.begin(), scope_bytes_.end()};
}

DiskTierStats DiskTier::Stats() const {
  absl::MutexLock lock(&mu_);
  DiskTierStats s;
  s.blocks = index_.size();
  s.payload_bytes = payload_bytes_;
  s.stored_bytes = stored_bytes_;
  s.capacity_bytes = options_.capacity_bytes;
  s.data_loss = data_loss_;
  s.charged_bytes = charged_bytes_;
  s.codec_bytes_in = codec_in_;
  s.codec_bytes_out = codec_out_;
  return s;
}

uint64_t DiskTier::charged_bytes() const {
  absl::MutexLock lock(&mu_);
  return charged_bytes_;
}

}  // namespace strata::storenode
