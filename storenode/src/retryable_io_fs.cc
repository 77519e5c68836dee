#include "retryable_io_fs.h"

#include <cerrno>
#include <cstring>
#include <initializer_list>
#include <string>
#include <string_view>
#include <vector>

namespace strata::storenode {
namespace {

// strerror's texts of `errnos` (RocksDB's posix errors carry the text, not the number).
std::vector<std::string> Texts(std::initializer_list<int> errnos) {
  std::vector<std::string> texts;
  for (int e : errnos) texts.emplace_back(std::strerror(e));
  return texts;
}

bool Names(const std::vector<std::string>& texts, std::string_view text) {
  for (const std::string& t : texts) {
    if (text.find(t) != std::string_view::npos) return true;
  }
  return false;
}

// Retried by RocksDB: what passes with time, and EIO (a network mount's hiccup; on a local
// disk the retry fails again, every second, which costs nothing).
bool Transient(const rocksdb::IOStatus& s) {
  static const std::vector<std::string> kEio = Texts({EIO});
  if (!s.IsIOError() || s.IsNoSpace()) return false;  // NoSpace has its own recovery
  const std::string text = s.ToString();
  return PassesWithTime(text) || Names(kEio, text);
}

rocksdb::IOStatus Marked(rocksdb::IOStatus s) {
  if (Transient(s)) s.SetRetryable(true);
  return s;
}

class RetryableFs : public rocksdb::FileSystemWrapper {
 public:
  explicit RetryableFs(std::shared_ptr<rocksdb::FileSystem> target)
      : rocksdb::FileSystemWrapper(std::move(target)) {}
  const char* Name() const override { return "StrataRetryableTransientErrors"; }

  rocksdb::IOStatus NewSequentialFile(const std::string& f, const rocksdb::FileOptions& o,
                                      std::unique_ptr<rocksdb::FSSequentialFile>* r,
                                      rocksdb::IODebugContext* dbg) override {
    return Marked(target()->NewSequentialFile(f, o, r, dbg));
  }
  rocksdb::IOStatus NewRandomAccessFile(const std::string& f, const rocksdb::FileOptions& o,
                                        std::unique_ptr<rocksdb::FSRandomAccessFile>* r,
                                        rocksdb::IODebugContext* dbg) override {
    return Marked(target()->NewRandomAccessFile(f, o, r, dbg));
  }
  rocksdb::IOStatus NewWritableFile(const std::string& f, const rocksdb::FileOptions& o,
                                    std::unique_ptr<rocksdb::FSWritableFile>* r,
                                    rocksdb::IODebugContext* dbg) override {
    return Marked(target()->NewWritableFile(f, o, r, dbg));
  }
  rocksdb::IOStatus ReopenWritableFile(const std::string& f, const rocksdb::FileOptions& o,
                                       std::unique_ptr<rocksdb::FSWritableFile>* r,
                                       rocksdb::IODebugContext* dbg) override {
    return Marked(target()->ReopenWritableFile(f, o, r, dbg));
  }
  rocksdb::IOStatus ReuseWritableFile(const std::string& f, const std::string& old,
                                      const rocksdb::FileOptions& o,
                                      std::unique_ptr<rocksdb::FSWritableFile>* r,
                                      rocksdb::IODebugContext* dbg) override {
    return Marked(target()->ReuseWritableFile(f, old, o, r, dbg));
  }
  rocksdb::IOStatus NewRandomRWFile(const std::string& f, const rocksdb::FileOptions& o,
                                    std::unique_ptr<rocksdb::FSRandomRWFile>* r,
                                    rocksdb::IODebugContext* dbg) override {
    return Marked(target()->NewRandomRWFile(f, o, r, dbg));
  }
  rocksdb::IOStatus NewDirectory(const std::string& name, const rocksdb::IOOptions& o,
                                 std::unique_ptr<rocksdb::FSDirectory>* r,
                                 rocksdb::IODebugContext* dbg) override {
    return Marked(target()->NewDirectory(name, o, r, dbg));
  }
};

}  // namespace

bool PassesWithTime(std::string_view error_text) {
  static const std::vector<std::string> kTexts =
      Texts({EMFILE, ENFILE, ENOMEM, ENOBUFS, EAGAIN, EINTR, ETIMEDOUT, ESTALE});
  return Names(kTexts, error_text);
}

std::shared_ptr<rocksdb::FileSystem> RetryableTransientErrors(
    std::shared_ptr<rocksdb::FileSystem> target) {
  return std::make_shared<RetryableFs>(std::move(target));
}

}  // namespace strata::storenode
