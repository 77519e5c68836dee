// strata-codec-bench: how the block codecs of the cool/cold tiers and the lossy KV quantizers
// do on synthetic fp16/bf16 KV blocks, single-threaded: compression ratio, compress and
// decompress throughput (GB/s = 1e9 bytes of ORIGINAL block per second, both directions) and,
// for lossy methods, the error of the restored block (kv_quant.h MeasureQuantError).
//
// Data sets (contiguous blocks of --block-size):
//   kv             N(0, 1) elements, three outlier channels ×20 at fixed head_dim positions
//   kv-half-empty  the same with the second half of every block zero (a partly filled block)
// Methods: lz4, lz4-<level>, zstd-<level>, int8, fp8-e4m3 and combinations such as
// int8+zstd-3 (quantize, then compress the packed payload). Lossless results are checked
// byte for byte; figures are printed, never asserted.
//
// Exit code: 0 done and verified; 1 a lossless round trip differed or a call failed;
// 2 bad flags.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "strata/common/byte_size.h"
#include "strata/common/codec.h"
#include "strata/common/half.h"
#include "strata/common/kv_quant.h"

namespace strata::bench {
namespace {

using Clock = std::chrono::steady_clock;

struct Flags {
  std::string block_size_text = "2MiB";
  uint64_t block_size = 0;
  uint32_t blocks = 8;
  uint32_t head_dim = 128;
  std::string dtype_text = "fp16";
  KvDtype dtype = KvDtype::kFp16;
  std::string methods = "lz4,zstd-1,zstd-3,int8,fp8-e4m3,int8+zstd-3,fp8-e4m3+zstd-3";
  double min_seconds = 0.5;
  std::string json;
  uint64_t seed = 1;
};

struct Method {
  std::string name;
  KvQuant quant = KvQuant::kNone;
  Codec codec = Codec::kNone;
  int level = 0;
};

struct Result {
  std::string data;
  std::string method;
  bool lossy = false;
  double ratio = 0;
  double compress_gbps = 0;
  double decompress_gbps = 0;
  QuantErrorStats error;
};

absl::StatusOr<Method> ParseMethod(const std::string& text) {
  Method m;
  m.name = text;
  const std::vector<std::string> parts = absl::StrSplit(text, '+');
  for (const std::string& part : parts) {
    if (absl::StatusOr<KvQuant> q = ParseKvQuant(part); q.ok() && *q != KvQuant::kNone) {
      m.quant = *q;
      continue;
    }
    const std::vector<std::string> name_level = absl::StrSplit(part, absl::MaxSplits('-', 1));
    absl::StatusOr<Codec> codec = ParseCodec(name_level[0]);
    if (!codec.ok() || *codec == Codec::kNone) {
      return absl::InvalidArgumentError(absl::StrCat(
          "unknown method part '", part, "' (lz4[-L], zstd[-L], int8, fp8-e4m3, joined by +)"));
    }
    m.codec = *codec;
    if (name_level.size() == 2 && !absl::SimpleAtoi(name_level[1], &m.level)) {
      return absl::InvalidArgumentError(absl::StrCat("bad level in '", part, "'"));
    }
  }
  return m;
}

// One contiguous buffer of `blocks` blocks, so MeasureQuantError sees the whole data set.
std::vector<uint8_t> MakeData(const Flags& f, bool half_empty) {
  constexpr uint32_t kOutliers[] = {7, 61, 100};
  std::mt19937_64 rng(f.seed);
  std::normal_distribution<float> normal;
  const size_t elements = f.block_size * f.blocks / 2;
  std::vector<uint8_t> data(elements * 2);
  for (size_t e = 0; e < elements; ++e) {
    float x = normal(rng);
    for (uint32_t c : kOutliers) {
      if (e % f.head_dim == c % f.head_dim) x *= 20;
    }
    if (half_empty && (e * 2) % f.block_size >= f.block_size / 2) x = 0;
    const uint16_t bits = f.dtype == KvDtype::kBf16 ? FloatToBf16(x) : FloatToHalf(x);
    std::memcpy(&data[2 * e], &bits, 2);
  }
  return data;
}

// Runs `pass` (one sweep over all blocks) until min_seconds have gone by; bytes per second.
template <typename Pass>
double Throughput(double min_seconds, uint64_t bytes_per_pass, Pass pass) {
  const Clock::time_point start = Clock::now();
  uint64_t passes = 0;
  double elapsed = 0;
  do {
    pass();
    ++passes;
    elapsed = std::chrono::duration<double>(Clock::now() - start).count();
  } while (elapsed < min_seconds);
  return static_cast<double>(passes * bytes_per_pass) / elapsed;
}

bool RunMethod(const Flags& f, const std::string& data_name, const std::vector<uint8_t>& data,
               const Method& m, Result* r) {
  const KvQuantSpec spec{m.quant, f.dtype, f.head_dim};
  std::vector<std::string> payloads(f.blocks), stored(f.blocks);
  auto block = [&](uint32_t b) {
    return std::span<const uint8_t>(data).subspan(b * f.block_size, f.block_size);
  };
  auto bytes = [](const std::string& s) {
    return std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(s.data()), s.size());
  };
  absl::Status failure;
  auto compress = [&] {
    for (uint32_t b = 0; b < f.blocks; ++b) {
      std::span<const uint8_t> payload = block(b);
      if (m.quant != KvQuant::kNone) {
        payloads[b].clear();
        if (absl::Status s = QuantizeKv(spec, payload, &payloads[b]); !s.ok()) failure = s;
        payload = bytes(payloads[b]);
      }
      stored[b].clear();
      if (m.codec != Codec::kNone) {
        if (absl::Status s = CompressAppend(m.codec, payload, m.level, &stored[b]); !s.ok()) {
          failure = s;
        }
      }
    }
  };
  std::vector<uint8_t> restored(data.size());
  std::vector<std::vector<uint8_t>> decoded(f.blocks);
  auto decompress = [&] {
    for (uint32_t b = 0; b < f.blocks; ++b) {
      std::span<uint8_t> out = std::span(restored).subspan(b * f.block_size, f.block_size);
      if (m.codec != Codec::kNone) {
        std::span<uint8_t> target = out;
        if (m.quant != KvQuant::kNone) {
          decoded[b].resize(payloads[b].size());
          target = decoded[b];
        }
        if (absl::Status s = Decompress(m.codec, bytes(stored[b]), target); !s.ok()) failure = s;
      }
      if (m.quant != KvQuant::kNone) {
        std::span<const uint8_t> payload =
            m.codec != Codec::kNone ? std::span<const uint8_t>(decoded[b]) : bytes(payloads[b]);
        if (absl::Status s = DequantizeKv(spec, payload, out); !s.ok()) failure = s;
      }
    }
  };

  r->data = data_name;
  r->method = m.name;
  r->lossy = m.quant != KvQuant::kNone;
  r->compress_gbps = Throughput(f.min_seconds, data.size(), compress) / 1e9;
  uint64_t stored_bytes = 0;
  for (uint32_t b = 0; b < f.blocks; ++b) {
    stored_bytes += m.codec != Codec::kNone ? stored[b].size() : payloads[b].size();
  }
  r->ratio = static_cast<double>(data.size()) / static_cast<double>(stored_bytes);
  r->decompress_gbps = Throughput(f.min_seconds, data.size(), decompress) / 1e9;
  if (!failure.ok()) {
    std::fprintf(stderr, "strata-codec-bench: %s on %s: %s\n", m.name.c_str(), data_name.c_str(),
                 failure.ToString().c_str());
    return false;
  }
  if (!r->lossy) {
    if (restored != data) {
      std::fprintf(stderr, "strata-codec-bench: %s on %s: round trip differs\n", m.name.c_str(),
                   data_name.c_str());
      return false;
    }
    return true;
  }
  absl::StatusOr<QuantErrorStats> err = MeasureQuantError(data, restored, f.dtype, f.head_dim);
  if (!err.ok()) {
    std::fprintf(stderr, "strata-codec-bench: %s\n", err.status().ToString().c_str());
    return false;
  }
  r->error = *err;
  return true;
}

void PrintTable(const Flags& f, const std::vector<Result>& results) {
  std::printf("codec bench: %u blocks of %s, %s KV, head_dim %u, 1 thread, >= %.2f s a figure\n",
              f.blocks, FormatByteSize(f.block_size).c_str(),
              std::string(KvDtypeName(f.dtype)).c_str(), f.head_dim, f.min_seconds);
  std::printf("%-14s %-16s %7s %9s %9s %10s %10s %9s %9s %9s\n", "data", "method", "ratio",
              "comp GB/s", "deco GB/s", "max abs", "mean abs", "cos mean", "cos min", "cos all");
  for (const Result& r : results) {
    std::string errors = "       -          -         -         -         -";
    if (r.lossy) {
      errors = absl::StrFormat("%10.5f %10.6f %9.6f %9.6f %9.6f", r.error.max_abs_error,
                               r.error.mean_abs_error, r.error.mean_vector_cosine,
                               r.error.min_vector_cosine, r.error.global_cosine);
    }
    std::printf("%-14s %-16s %7.3f %9.3f %9.3f %s\n", r.data.c_str(), r.method.c_str(), r.ratio,
                r.compress_gbps, r.decompress_gbps, errors.c_str());
  }
}

std::string Json(const Flags& f, const std::vector<Result>& results) {
  std::string out = absl::StrFormat(
      "{\"config\": {\"block_size\": %u, \"blocks\": %u, \"dtype\": \"%s\", \"head_dim\": %u, "
      "\"min_seconds\": %g, \"seed\": %u, \"threads\": 1},\n \"results\": [",
      f.block_size, f.blocks, std::string(KvDtypeName(f.dtype)), f.head_dim, f.min_seconds, f.seed);
  for (size_t i = 0; i < results.size(); ++i) {
    const Result& r = results[i];
    absl::StrAppendFormat(&out,
                          "%s\n  {\"data\": \"%s\", \"method\": \"%s\", \"lossy\": %s, "
                          "\"ratio\": %.4f, \"compress_gbps\": %.4f, \"decompress_gbps\": %.4f",
                          i == 0 ? "" : ",", r.data, r.method, r.lossy ? "true" : "false", r.ratio,
                          r.compress_gbps, r.decompress_gbps);
    if (r.lossy) {
      absl::StrAppendFormat(
          &out,
          ", \"error\": {\"max_abs\": %.6g, \"mean_abs\": %.6g, \"max_relative\": %.6g, "
          "\"cosine_mean\": %.8f, \"cosine_min\": %.8f, \"cosine_global\": %.8f}",
          r.error.max_abs_error, r.error.mean_abs_error, r.error.max_relative_error,
          r.error.mean_vector_cosine, r.error.min_vector_cosine, r.error.global_cosine);
    }
    out += "}";
  }
  return out + "\n]}\n";
}

int Run(Flags& f) {
  absl::StatusOr<uint64_t> size = ParseByteSize(f.block_size_text, "--block-size");
  absl::StatusOr<KvDtype> dtype = ParseKvDtype(f.dtype_text);
  absl::Status bad = !size.ok() ? size.status() : dtype.status();
  if (bad.ok() && *dtype != KvDtype::kFp16 && *dtype != KvDtype::kBf16) {
    bad = absl::InvalidArgumentError("--dtype must be fp16 or bf16");
  }
  if (bad.ok() && (*size == 0 || *size % (uint64_t{f.head_dim} * 2) != 0)) {
    bad = absl::InvalidArgumentError("--block-size must be a positive multiple of head_dim × 2");
  }
  std::vector<Method> methods;
  const std::vector<std::string> texts = absl::StrSplit(f.methods, ',', absl::SkipEmpty());
  for (const std::string& text : texts) {
    if (!bad.ok()) break;
    absl::StatusOr<Method> m = ParseMethod(text);
    if (m.ok()) methods.push_back(*m);
    bad = m.status();
  }
  if (!bad.ok()) {
    std::fprintf(stderr, "strata-codec-bench: %s\n", bad.ToString().c_str());
    return 2;
  }
  f.block_size = *size;
  f.dtype = *dtype;

  std::vector<Result> results;
  bool ok = true;
  for (bool half_empty : {false, true}) {
    const std::vector<uint8_t> data = MakeData(f, half_empty);
    for (const Method& m : methods) {
      Result r;
      ok = RunMethod(f, half_empty ? "kv-half-empty" : "kv", data, m, &r) && ok;
      results.push_back(r);
    }
  }
  const bool json_to_stdout = f.json == "-";
  if (!json_to_stdout) PrintTable(f, results);
  if (!f.json.empty()) {
    const std::string json = Json(f, results);
    std::FILE* out = json_to_stdout ? stdout : std::fopen(f.json.c_str(), "w");
    if (out == nullptr) {
      std::fprintf(stderr, "strata-codec-bench: cannot write %s\n", f.json.c_str());
      return 1;
    }
    std::fputs(json.c_str(), out);
    if (!json_to_stdout) std::fclose(out);
  }
  return ok ? 0 : 1;
}

}  // namespace
}  // namespace strata::bench

int main(int argc, char** argv) {
  strata::bench::Flags f;
  CLI::App app{"strata-codec-bench: block codecs and KV quantizers on synthetic KV blocks"};
  app.add_option("--block-size", f.block_size_text, "Bytes per block (e.g. 2MiB)")
      ->capture_default_str();
  app.add_option("--blocks", f.blocks, "Blocks in each data set")
      ->check(CLI::Range(1u, 1u << 16))
      ->capture_default_str();
  app.add_option("--head-dim", f.head_dim, "Elements per quantization vector")
      ->check(CLI::Range(1u, strata::kMaxQuantHeadDim))
      ->capture_default_str();
  app.add_option("--dtype", f.dtype_text, "Element type of the KV: fp16 or bf16")
      ->capture_default_str();
  app.add_option("--methods", f.methods, "Comma-separated methods, e.g. lz4,zstd-3,int8+zstd-1")
      ->capture_default_str();
  app.add_option("--min-seconds", f.min_seconds, "Minimum time per throughput figure")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--json", f.json, "Write results as JSON to FILE ('-': stdout, no table)");
  app.add_option("--seed", f.seed, "Seed of the synthetic data")->capture_default_str();
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // CLI11 reports usage errors by exception; this is the one boundary where we catch them.
    const int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  }
  return strata::bench::Run(f);
}
