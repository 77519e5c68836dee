// strata-disk-bench: the cool tier's (storenode DiskTier, RocksDB + blob files) put and get
// throughput of whole blocks against the raw bandwidth of the same file system, measured by
// `dd oflag=direct` / `dd iflag=direct` in the same run, printed as ratios (goal >= 70%). A
// benchmark figure, never a test assertion.
//
// Sequence, all in a fresh directory under --path (removed at the end):
//   1. dd write   if=/dev/zero of=dd.bin bs=<block> count=<blocks> oflag=direct conv=fsync
//   2. tier put   every block, then close the tier (its destructor flushes) inside the timing
//   3. drop the page cache (drop_caches, or fdatasync + POSIX_FADV_DONTNEED on every file)
//   4. dd read    if=dd.bin iflag=direct
//   5. tier get   reopen the tier and read every block back, checking every byte
// GB/s is 1e9 bytes of block payload per second. Latencies are per block call (Put / Read).
// Payloads are slices of a random pool at 64-byte steps, so every block differs and none
// compresses (--compressible zeroes half of every 256 bytes instead).
//
// Exit code: 0 done and verified; 1 an I/O, dd or tier error, or a wrong byte; 2 bad flags.
#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "strata/common/block_key.h"
#include "strata/common/byte_size.h"
#include "strata/common/codec.h"
#include "strata/storenode/disk_tier.h"

namespace strata::bench {
namespace {

using Clock = std::chrono::steady_clock;
constexpr uint64_t kPoolStride = 64;  // block i starts i * 64 bytes into the payload pool

struct Flags {
  std::string path = "/tmp";
  uint32_t blocks = 1024;
  std::string block_size_text = "1MiB";
  uint64_t block_size = 0;
  std::string codec_text = "none";
  Codec codec = Codec::kNone;
  bool compressible = false;
  bool sync = false;
  uint32_t threads = 1;
  std::string json;
};

struct Phase {
  double seconds = 0;
  double gbps = 0;
  double p50_us = 0;
  double p99_us = 0;
  double cpu_s = 0;           // this process, all threads (RocksDB's included)
  uint64_t device_bytes = 0;  // /proc/self/io write_bytes (put) or read_bytes (get)
};

struct Report {
  double dd_write_gbps = 0;
  double dd_read_gbps = 0;
  Phase put;
  double flush_s = 0;  // of put.seconds: closing the tier after the last Put returned
  uint64_t stored_bytes = 0;
  std::string cache_drop;
  Phase get;
};

double Seconds(Clock::time_point from) {
  return std::chrono::duration<double>(Clock::now() - from).count();
}

double CpuSeconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

// A field of /proc/self/io ("read_bytes", "write_bytes"); 0 when unreadable.
uint64_t ProcIo(const std::string& field) {
  std::ifstream in("/proc/self/io");
  std::string name;
  uint64_t value = 0;
  while (in >> name >> value) {
    if (name == field + ":") return value;
  }
  return 0;
}

double Percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  const size_t i = std::min(v.size() - 1, static_cast<size_t>(q * static_cast<double>(v.size())));
  std::nth_element(v.begin(), v.begin() + static_cast<ptrdiff_t>(i), v.end());
  return v[i];
}

BlockKey KeyOf(uint64_t i) {
  BlockKey key{1, std::string(kDefaultScope), {}};
  // splitmix64 of the counter: uniformly spread bytes, as real chain hashes are.
  for (uint64_t w = 0; w < kChainHashBytes / 8; ++w) {
    uint64_t z = (i * 4 + w + 1) * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    std::memcpy(key.hash.bytes.data() + w * 8, &z, 8);
  }
  return key;
}

// Runs dd through the shell and returns its bytes per second from "copied, X s".
absl::StatusOr<double> RunDd(const std::string& args, uint64_t bytes) {
  const std::string cmd = absl::StrCat("LC_ALL=C dd ", args, " 2>&1");
  std::FILE* pipe = popen(cmd.c_str(), "r");
  if (pipe == nullptr) return absl::UnavailableError(absl::StrCat("cannot run: ", cmd));
  std::string text;
  char buf[512];
  while (std::fgets(buf, sizeof(buf), pipe) != nullptr) text += buf;
  const int rc = pclose(pipe);
  const size_t at = text.find("copied, ");
  double seconds = 0;
  if (rc == 0 && at != std::string::npos) {
    const size_t start = at + std::strlen("copied, ");
    const size_t end = text.find(' ', start);
    if (!absl::SimpleAtod(text.substr(start, end - start), &seconds)) seconds = 0;
  }
  if (seconds <= 0) {
    return absl::UnavailableError(absl::StrCat("`", cmd, "` failed (status ", rc, "): ", text));
  }
  return static_cast<double>(bytes) / seconds;
}

// Evicts the directory's files from the page cache so the get phase reads the device.
std::string DropCaches(const std::filesystem::path& dir) {
  if (std::system("sync; { echo 3 > /proc/sys/vm/drop_caches; } 2>/dev/null") == 0) {
    return "drop_caches";
  }
  // Not allowed (no root, or a container): evicting our own clean pages needs no privilege.
  std::error_code ec;
  uint64_t files = 0, failed = 0;
  for (auto it = std::filesystem::recursive_directory_iterator(dir, ec);
       !ec && it != std::filesystem::recursive_directory_iterator(); it.increment(ec)) {
    if (!it->is_regular_file(ec)) continue;
    const int fd = open(it->path().c_str(), O_RDONLY);
    const bool ok =
        fd >= 0 && fdatasync(fd) == 0 && posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED) == 0;
    if (fd >= 0) close(fd);
    ++files;
    failed += ok ? 0 : 1;
  }
  if (ec || failed > 0 || files == 0) return "none";
  return "fadvise";
}

// Runs body(thread, first, last, latencies_us) on --threads threads over contiguous block ranges.
template <typename Body>
Phase TimePhase(const Flags& f, Body body) {
  std::vector<std::vector<double>> lat(f.threads);
  const double cpu0 = CpuSeconds();
  const Clock::time_point start = Clock::now();
  std::vector<std::thread> workers;
  for (uint32_t t = 0; t < f.threads; ++t) {
    const uint64_t first = uint64_t{f.blocks} * t / f.threads;
    const uint64_t last = uint64_t{f.blocks} * (t + 1) / f.threads;
    workers.emplace_back([&, t, first, last] { body(t, first, last, &lat[t]); });
  }
  for (std::thread& w : workers) w.join();
  Phase p;
  p.seconds = Seconds(start);
  p.cpu_s = CpuSeconds() - cpu0;
  std::vector<double> all;
  for (const std::vector<double>& l : lat) all.insert(all.end(), l.begin(), l.end());
  p.p50_us = Percentile(all, 0.50);
  p.p99_us = Percentile(all, 0.99);
  return p;
}

std::vector<uint8_t> MakePool(const Flags& f) {
  std::vector<uint8_t> pool(f.block_size + uint64_t{f.blocks} * kPoolStride);
  std::mt19937_64 rng(1);
  for (size_t i = 0; i + 8 <= pool.size(); i += 8) {
    const uint64_t r = rng();
    std::memcpy(&pool[i], &r, 8);
  }
  if (f.compressible) {
    for (size_t i = 128; i < pool.size(); i += 256) {
      std::memset(&pool[i], 0, std::min<size_t>(128, pool.size() - i));
    }
  }
  return pool;
}

absl::Status RunTier(const Flags& f, const std::filesystem::path& dir, Report* r) {
  const uint64_t total = uint64_t{f.blocks} * f.block_size;
  const std::vector<uint8_t> pool = MakePool(f);
  auto payload = [&](uint64_t i) {
    return std::span<const uint8_t>(pool).subspan(i * kPoolStride, f.block_size);
  };
  storenode::DiskTierOptions options{"cool", (dir / "tier").string(), 2 * total + (1ull << 30),
                                     f.codec, f.sync};

  // 1. dd write.
  const std::string dd_file = (dir / "dd.bin").string();
  const std::string dd_shape = absl::StrCat(" bs=", f.block_size, " count=", f.blocks);
  absl::StatusOr<double> dd_write = RunDd(
      absl::StrCat("if=/dev/zero of='", dd_file, "'", dd_shape, " oflag=direct conv=fsync"), total);
  if (!dd_write.ok()) return dd_write.status();
  r->dd_write_gbps = *dd_write / 1e9;

  // 2. tier put, closing (flushing) the tier inside the timing.
  absl::StatusOr<std::unique_ptr<storenode::DiskTier>> tier = storenode::DiskTier::Open(options);
  if (!tier.ok()) return tier.status();
  std::vector<absl::Status> errors(f.threads);
  const uint64_t written0 = ProcIo("write_bytes");
  r->put = TimePhase(f, [&](uint32_t t, uint64_t first, uint64_t last, std::vector<double>* lat) {
    for (uint64_t i = first; i < last && errors[t].ok(); ++i) {
      const Clock::time_point s = Clock::now();
      errors[t] = (*tier)->Put(KeyOf(i), payload(i), storenode::DiskBlockMeta{});
      lat->push_back(Seconds(s) * 1e6);
    }
  });
  const Clock::time_point flush_start = Clock::now();
  const double flush_cpu0 = CpuSeconds();
  r->stored_bytes = (*tier)->Stats().stored_bytes;
  tier->reset();
  r->flush_s = Seconds(flush_start);
  r->put.seconds += r->flush_s;
  r->put.cpu_s += CpuSeconds() - flush_cpu0;
  r->put.device_bytes = ProcIo("write_bytes") - written0;
  for (const absl::Status& s : errors) {
    if (!s.ok()) return s;
  }
  r->put.gbps = static_cast<double>(total) / r->put.seconds / 1e9;

  // 3. drop caches; 4. dd read.
  r->cache_drop = DropCaches(dir);
  absl::StatusOr<double> dd_read =
      RunDd(absl::StrCat("if='", dd_file, "' of=/dev/null", dd_shape, " iflag=direct"), total);
  std::error_code ec;
  std::filesystem::remove(dd_file, ec);
  if (!dd_read.ok()) return dd_read.status();
  r->dd_read_gbps = *dd_read / 1e9;

  // 5. reopen and read everything back.
  tier = storenode::DiskTier::Open(options);
  if (!tier.ok()) return tier.status();
  const uint64_t read0 = ProcIo("read_bytes");
  r->get = TimePhase(f, [&](uint32_t t, uint64_t first, uint64_t last, std::vector<double>* lat) {
    std::vector<uint8_t> out;
    for (uint64_t i = first; i < last && errors[t].ok(); ++i) {
      const Clock::time_point s = Clock::now();
      errors[t] = (*tier)->Read(KeyOf(i), &out);
      lat->push_back(Seconds(s) * 1e6);
      const std::span<const uint8_t> want = payload(i);
      if (errors[t].ok() &&
          (out.size() != want.size() || std::memcmp(out.data(), want.data(), want.size()) != 0)) {
        errors[t] = absl::DataLossError(absl::StrCat("block ", i, ": bytes differ"));
      }
    }
  });
  r->get.device_bytes = ProcIo("read_bytes") - read0;
  r->get.gbps = static_cast<double>(total) / r->get.seconds / 1e9;
  for (const absl::Status& s : errors) {
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

void PrintTable(std::FILE* out, const Flags& f, const std::string& dir, const Report& r) {
  const uint64_t total = uint64_t{f.blocks} * f.block_size;
  absl::FPrintF(out, "disk bench: %u blocks of %s (%s) in %s, codec %s%s, %u thread(s), sync %s\n",
                f.blocks, FormatByteSize(f.block_size), FormatByteSize(total), dir,
                CodecName(f.codec), f.compressible ? " (compressible data)" : "", f.threads,
                f.sync ? "on" : "off");
  absl::FPrintF(out, "%-6s %12s %12s %7s %10s %10s %8s %14s\n", "op", "dd GB/s", "tier GB/s",
                "ratio", "p50 us", "p99 us", "cpu s", "device/payload");
  for (bool put : {true, false}) {
    const Phase& p = put ? r.put : r.get;
    const double dd = put ? r.dd_write_gbps : r.dd_read_gbps;
    absl::FPrintF(out, "%-6s %12.3f %12.3f %6.1f%% %10.1f %10.1f %8.2f %14.2f\n",
                  put ? "put" : "get", dd, p.gbps, 100 * p.gbps / dd, p.p50_us, p.p99_us, p.cpu_s,
                  static_cast<double>(p.device_bytes) / static_cast<double>(total));
  }
  absl::FPrintF(out, "put: %.3f s of which %.3f s closing/flushing the tier; stored %s\n",
                r.put.seconds, r.flush_s, FormatByteSize(r.stored_bytes));
  absl::FPrintF(out, "page cache before reads: %s%s\n", r.cache_drop,
                r.cache_drop == "drop_caches" ? ""
                : r.cache_drop == "fadvise"
                    ? " (drop_caches not permitted; evicted the bench files with fadvise)"
                    : " (COULD NOT DROP: tier get may be served from memory)");
}

std::string Json(const Flags& f, const Report& r) {
  auto phase = [](const Phase& p) {
    return absl::StrFormat(
        "{\"seconds\": %.4f, \"gbps\": %.4f, \"p50_us\": %.1f, \"p99_us\": %.1f, "
        "\"cpu_s\": %.3f, \"device_bytes\": %u}",
        p.seconds, p.gbps, p.p50_us, p.p99_us, p.cpu_s, p.device_bytes);
  };
  return absl::StrFormat(
      "{\"config\": {\"blocks\": %u, \"block_size\": %u, \"codec\": \"%s\", "
      "\"compressible\": %s, \"sync\": %s, \"threads\": %u},\n"
      " \"dd_write_gbps\": %.4f, \"put_gbps\": %.4f, \"put_ratio\": %.4f,\n"
      " \"dd_read_gbps\": %.4f, \"get_gbps\": %.4f, \"get_ratio\": %.4f,\n"
      " \"put_p50_us\": %.1f, \"put_p99_us\": %.1f, \"get_p50_us\": %.1f, \"get_p99_us\": %.1f,\n"
      " \"flush_s\": %.4f, \"stored_bytes\": %u, \"cache_drop\": \"%s\",\n"
      " \"put\": %s,\n \"get\": %s}\n",
      f.blocks, f.block_size, CodecName(f.codec), f.compressible ? "true" : "false",
      f.sync ? "true" : "false", f.threads, r.dd_write_gbps, r.put.gbps,
      r.put.gbps / r.dd_write_gbps, r.dd_read_gbps, r.get.gbps, r.get.gbps / r.dd_read_gbps,
      r.put.p50_us, r.put.p99_us, r.get.p50_us, r.get.p99_us, r.flush_s, r.stored_bytes,
      r.cache_drop, phase(r.put), phase(r.get));
}

int Run(Flags& f) {
  absl::StatusOr<uint64_t> size = ParseByteSize(f.block_size_text, "--block-size");
  absl::StatusOr<Codec> codec = ParseCodec(f.codec_text);
  absl::Status bad = !size.ok() ? size.status() : codec.status();
  if (bad.ok() && (*size == 0 || *size % 4096 != 0 || *size > (uint64_t{1} << 30))) {
    bad = absl::InvalidArgumentError("--block-size must be a multiple of 4 KiB up to 1 GiB");
  }
  if (!bad.ok()) {
    std::fprintf(stderr, "strata-disk-bench: %s\n", bad.ToString().c_str());
    return 2;
  }
  f.block_size = *size;
  f.codec = *codec;

  // RocksDB's and the tier's logs go to stdout; keep it clean for --json -.
  const bool json_to_stdout = f.json == "-";
  const int json_fd = json_to_stdout ? dup(STDOUT_FILENO) : -1;
  if (json_to_stdout) dup2(STDERR_FILENO, STDOUT_FILENO);

  std::string templ = (std::filesystem::path(f.path) / "strata-disk-bench.XXXXXX").string();
  if (mkdtemp(templ.data()) == nullptr) {
    std::fprintf(stderr, "strata-disk-bench: cannot create a directory under %s: %s\n",
                 f.path.c_str(), std::strerror(errno));
    return 1;
  }
  Report r;
  absl::Status status = RunTier(f, templ, &r);
  std::error_code ec;
  std::filesystem::remove_all(templ, ec);
  if (!status.ok()) {
    std::fprintf(stderr, "strata-disk-bench: %s\n", status.ToString().c_str());
    return 1;
  }
  PrintTable(json_to_stdout ? stderr : stdout, f, templ, r);
  if (f.json.empty()) return 0;
  const std::string json = Json(f, r);
  std::FILE* out = json_to_stdout ? fdopen(json_fd, "w") : std::fopen(f.json.c_str(), "w");
  if (out == nullptr || std::fputs(json.c_str(), out) < 0 || std::fclose(out) != 0) {
    std::fprintf(stderr, "strata-disk-bench: cannot write %s\n", f.json.c_str());
    return 1;
  }
  return 0;
}

}  // namespace
}  // namespace strata::bench

int main(int argc, char** argv) {
  strata::bench::Flags f;
  CLI::App app{"strata-disk-bench: cool-tier (DiskTier) put/get of blocks vs dd direct I/O"};
  app.add_option("--path", f.path, "Directory on the disk to measure (a temp dir is made inside)")
      ->capture_default_str();
  app.add_option("--blocks", f.blocks, "Blocks to put and get")
      ->check(CLI::Range(1u, 1u << 20))
      ->capture_default_str();
  app.add_option("--block-size", f.block_size_text, "Bytes per block (e.g. 1MiB)")
      ->capture_default_str();
  app.add_option("--codec", f.codec_text, "Tier codec: none, lz4 or zstd")->capture_default_str();
  app.add_flag("--compressible", f.compressible, "Half-zero payloads instead of random ones");
  app.add_flag("--sync", f.sync, "fsync the WAL on every put (DiskTierOptions::sync_writes)");
  app.add_option("--threads", f.threads, "Threads putting and getting")
      ->check(CLI::Range(1u, 64u))
      ->capture_default_str();
  app.add_option("--json", f.json, "Write results as JSON to FILE ('-': stdout, table to stderr)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // CLI11 reports usage errors by exception; this is the one boundary where we catch them.
    const int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  }
  return strata::bench::Run(f);
}
