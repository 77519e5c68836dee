// strata-gpu-copy-bench: how fast the copy engines (copy_engine.h) gather blocks out of a paged
// KV pool into staging and scatter them back, each figure beside a plain copy of the same
// bytes measured in the same run:
//   host twin   gather / scatter (and, with --quant, quantized) vs memcpy of batch × block
//               bytes between two contiguous buffers;
//   --cuda      the CUDA engine on device 0, a pool in device memory: kernel gather / scatter
//               to and from pinned staging vs cudaMemcpy device↔pinned host of the same bytes;
//               to and from device memory vs cudaMemcpy device→device; kernel into device
//               memory followed by one cudaMemcpy (the two-pass alternative) vs the same
//               cudaMemcpy alone; quantized gather / scatter through pinned staging.
// GB/s counts 1e9 bytes of original (unquantized) block per second, each byte once, whatever
// it crosses. Every call is synchronous, as the engines' are. Before timing, the CUDA engine's
// gather is checked against the host twin's and the scatter round trip byte for byte.
//
// Shape: llama-3.1-8b by default (32 layers, 8 KV heads, head_dim 128, 16-token blocks, fp16:
// 2 MiB blocks). Each call moves --batch blocks chosen at random (distinct) from a --blocks
// pool, a different batch each call.
//
// Exit code: 0 done and verified; 1 a call failed or a check differed (or --cuda without a
// device); 2 bad flags, or --cuda in a build without CUDA.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "strata/common/byte_size.h"
#include "strata/common/half.h"
#include "strata/common/kv_quant.h"
#include "strata/common/mapped_buffer.h"
#include "strata/gpu_agent/copy_engine.h"
#include "strata/gpu_agent/host_pool.h"

#if STRATA_HAVE_CUDA
#include <cuda_runtime.h>
#endif

namespace strata::bench {
namespace {

using Clock = std::chrono::steady_clock;
using gpu_agent::CopyEngine;
using gpu_agent::HostKvPool;
using gpu_agent::KvPoolSpec;

struct Flags {
  uint32_t layers = 32;
  uint32_t kv_heads = 8;
  uint32_t head_dim = 128;
  uint32_t block_tokens = 16;
  std::string dtype_text = "fp16";
  std::string layout_text = "flash-attn";
  uint32_t blocks = 128;
  uint32_t batch = 32;
  std::string quant = "int8,fp8-e4m3";
  bool cuda = false;
  double min_seconds = 0.5;
  std::string json;
  uint32_t seed = 1;
};

struct Result {
  std::string engine;  // "host" or "cuda"
  std::string op;
  std::string path;
  double gbps = 0;
  std::string baseline;
  double baseline_gbps = 0;
};

// Calls `call` until min_seconds have gone by; bytes per second, or the first error.
absl::StatusOr<double> Throughput(double min_seconds, uint64_t bytes_per_call,
                                  const std::function<absl::Status(uint64_t)>& call) {
  if (absl::Status s = call(0); !s.ok()) return s;  // warm-up: first-touch, lazy setup
  const Clock::time_point start = Clock::now();
  uint64_t calls = 0;
  double elapsed = 0;
  do {
    if (absl::Status s = call(calls + 1); !s.ok()) return s;
    ++calls;
    elapsed = std::chrono::duration<double>(Clock::now() - start).count();
  } while (elapsed < min_seconds);
  return static_cast<double>(calls * bytes_per_call) / elapsed;
}

class Bench {
 public:
  explicit Bench(const Flags& f) : f_(f) {}

  // Figures appended to results(); false when something failed (reported on stderr).
  bool Run(KvPoolSpec shape, const std::vector<KvQuant>& methods);
  const std::vector<Result>& results() const { return results_; }
  const std::string& device() const { return device_; }
  uint64_t block_bytes() const { return block_bytes_; }

 private:
  // The ids of call `n`: a window of a fixed random permutation of the pool's blocks.
  std::span<const uint32_t> Batch(uint64_t n) const {
    const size_t windows = order_.size() / f_.batch;
    return std::span(order_).subspan((n % windows) * f_.batch, f_.batch);
  }

  bool Figure(const std::string& engine, const std::string& op, const std::string& path,
              uint64_t bytes, const std::function<absl::Status(uint64_t)>& call,
              const std::string& baseline, const std::function<absl::Status(uint64_t)>& base);
  bool RunHost(CopyEngine& twin, const std::vector<KvQuant>& methods);
  bool RunCuda(const HostKvPool& host, CopyEngine& twin, const std::vector<KvQuant>& methods);

  const Flags& f_;
  std::vector<uint32_t> order_;
  uint64_t block_bytes_ = 0;
  std::string device_ = "none";
  std::vector<Result> results_;
};

bool Bench::Figure(const std::string& engine, const std::string& op, const std::string& path,
                   uint64_t bytes, const std::function<absl::Status(uint64_t)>& call,
                   const std::string& baseline, const std::function<absl::Status(uint64_t)>& base) {
  absl::StatusOr<double> got = Throughput(f_.min_seconds, bytes, call);
  absl::StatusOr<double> want = Throughput(f_.min_seconds, bytes, base);
  if (!got.ok() || !want.ok()) {
    std::fprintf(stderr, "strata-gpu-copy-bench: %s %s: %s\n", engine.c_str(), op.c_str(),
                 (!got.ok() ? got.status() : want.status()).ToString().c_str());
    return false;
  }
  results_.push_back({engine, op, path, *got / 1e9, baseline, *want / 1e9});
  return true;
}

bool Bench::Run(KvPoolSpec shape, const std::vector<KvQuant>& methods) {
  absl::StatusOr<HostKvPool> host = HostKvPool::Create(shape);
  if (!host.ok()) {
    std::fprintf(stderr, "strata-gpu-copy-bench: host pool: %s\n",
                 host.status().ToString().c_str());
    return false;
  }
  block_bytes_ = host->pool().block_bytes;
  // Finite fp16/bf16 values (so that quantization accepts every block; other dtypes just get
  // these bytes): 4 MiB of N(0, 1) repeated at a different phase in each tensor.
  std::mt19937 rng(f_.seed);
  std::normal_distribution<float> normal;
  std::vector<uint16_t> pattern(1 << 21);
  for (uint16_t& e : pattern) {
    e = shape.dtype == KvDtype::kBf16 ? FloatToBf16(normal(rng)) : FloatToHalf(normal(rng));
  }
  const uint64_t pattern_bytes = pattern.size() * 2;
  uint64_t phase = 0;
  for (auto [data, size] : host->Tensors()) {
    for (uint64_t off = 0; off < size;) {
      const uint64_t from = (off + phase) % pattern_bytes;
      const uint64_t n = std::min(size - off, pattern_bytes - from);
      std::memcpy(data + off, reinterpret_cast<const uint8_t*>(pattern.data()) + from, n);
      off += n;
    }
    phase += 4096 + 2 * 7919;
  }
  order_.resize(shape.num_blocks);
  std::iota(order_.begin(), order_.end(), 0u);
  std::shuffle(order_.begin(), order_.end(), rng);

  absl::StatusOr<std::unique_ptr<CopyEngine>> twin = gpu_agent::CreateHostCopyEngine(host->pool());
  if (!twin.ok()) {
    std::fprintf(stderr, "strata-gpu-copy-bench: %s\n", twin.status().ToString().c_str());
    return false;
  }
  bool ok = RunHost(**twin, methods);
  if (f_.cuda) ok = RunCuda(*host, **twin, methods) && ok;
  return ok;
}

bool Bench::RunHost(CopyEngine& twin, const std::vector<KvQuant>& methods) {
  const uint64_t bytes = uint64_t{f_.batch} * block_bytes_;
  absl::StatusOr<std::unique_ptr<gpu_agent::StagingBuffer>> staging = twin.AllocateStaging(bytes);
  absl::StatusOr<MappedBuffer> a = MappedBuffer::Map(bytes, /*prefault=*/true);
  absl::StatusOr<MappedBuffer> b = MappedBuffer::Map(bytes, /*prefault=*/true);
  if (!staging.ok() || !a.ok() || !b.ok()) {
    std::fprintf(stderr, "strata-gpu-copy-bench: host buffers of %llu bytes\n",
                 static_cast<unsigned long long>(bytes));
    return false;
  }
  uint8_t* stage = (*staging)->data();
  auto memcpy_ab = [&](uint64_t) {
    std::memcpy(b->data(), a->data(), bytes);
    return absl::OkStatus();
  };
  bool ok = Figure(
      "host", "gather", "pool -> staging", bytes,
      [&](uint64_t n) { return twin.Gather(Batch(n), stage); }, "memcpy", memcpy_ab);
  ok = Figure(
           "host", "scatter", "staging -> pool", bytes,
           [&](uint64_t n) { return twin.Scatter(stage, Batch(n)); }, "memcpy", memcpy_ab) &&
       ok;
  for (KvQuant m : methods) {
    const std::string name(KvQuantName(m));
    ok = Figure(
             "host", "gather+" + name, "pool -> staging", bytes,
             [&](uint64_t n) { return twin.GatherQuantized(Batch(n), m, stage); }, "memcpy",
             memcpy_ab) &&
         ok;
    ok = Figure(
             "host", "scatter+" + name, "staging -> pool", bytes,
             [&](uint64_t n) { return twin.ScatterDequantized(stage, m, Batch(n)); }, "memcpy",
             memcpy_ab) &&
         ok;
  }
  return ok;
}

#if STRATA_HAVE_CUDA

absl::Status CudaStatus(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(what, ": ", cudaGetErrorString(err)));
}

// Device memory freed on scope exit.
struct DeviceBuffer {
  DeviceBuffer() = default;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() { cudaFree(data); }
  uint8_t* data = nullptr;
};

bool Bench::RunCuda(const HostKvPool& host, CopyEngine& twin, const std::vector<KvQuant>& methods) {
  auto fail = [](const absl::Status& s) {
    std::fprintf(stderr, "strata-gpu-copy-bench: --cuda: %s\n", s.ToString().c_str());
    return false;
  };
  int devices = 0;
  if (cudaError_t err = cudaGetDeviceCount(&devices); err != cudaSuccess || devices == 0) {
    return fail(absl::UnavailableError(absl::StrCat(
        "no CUDA device: ", err == cudaSuccess ? "none found" : cudaGetErrorString(err))));
  }
  // The device pool: the host pool's tensors, copied.
  KvPoolSpec spec = host.spec();
  spec.device = 0;
  spec.layer_bases.clear();
  std::vector<DeviceBuffer> tensors(host.Tensors().size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    const auto [data, size] = host.Tensors()[i];
    absl::Status s = CudaStatus(cudaMalloc(&tensors[i].data, size), "cudaMalloc(pool)");
    if (s.ok()) {
      s = CudaStatus(cudaMemcpy(tensors[i].data, data, size, cudaMemcpyHostToDevice), "upload");
    }
    if (!s.ok()) return fail(s);
    spec.layer_bases.push_back(tensors[i].data);
  }
  absl::StatusOr<gpu_agent::KvPool> pool = gpu_agent::ResolveKvPool(spec);
  if (!pool.ok()) return fail(pool.status());
  absl::StatusOr<std::unique_ptr<CopyEngine>> engine = gpu_agent::CreateCudaCopyEngine(*pool);
  if (!engine.ok()) return fail(engine.status());
  CopyEngine& cuda = **engine;
  device_ = cuda.Describe();

  const uint64_t bytes = uint64_t{f_.batch} * block_bytes_;
  absl::StatusOr<std::unique_ptr<gpu_agent::StagingBuffer>> pinned = cuda.AllocateStaging(bytes);
  if (!pinned.ok()) return fail(pinned.status());
  uint8_t* stage = (*pinned)->data();
  DeviceBuffer dev_a, dev_b;
  if (absl::Status s = CudaStatus(cudaMalloc(&dev_a.data, bytes), "cudaMalloc"); !s.ok()) {
    return fail(s);
  }
  if (absl::Status s = CudaStatus(cudaMalloc(&dev_b.data, bytes), "cudaMalloc"); !s.ok()) {
    return fail(s);
  }

  // Checks first: the kernels' gather equals the twin's, and a scatter round trip is exact.
  std::vector<uint8_t> want(bytes);
  if (absl::Status s = twin.Gather(Batch(0), want.data()); !s.ok()) return fail(s);
  if (absl::Status s = cuda.Gather(Batch(0), stage); !s.ok()) return fail(s);
  if (std::memcmp(stage, want.data(), bytes) != 0) {
    return fail(absl::DataLossError("CUDA gather differs from the host twin's"));
  }
  if (absl::Status s = cuda.Scatter(stage, Batch(1)); !s.ok()) return fail(s);
  std::memset(stage, 0, bytes);
  if (absl::Status s = cuda.Gather(Batch(1), stage); !s.ok()) return fail(s);
  if (std::memcmp(stage, want.data(), bytes) != 0) {
    return fail(absl::DataLossError("CUDA scatter/gather round trip differs"));
  }

  auto copy = [&](void* dst, const void* src, cudaMemcpyKind kind) {
    return [=](uint64_t) {
      absl::Status s = CudaStatus(cudaMemcpy(dst, src, bytes, kind), "cudaMemcpy");
      // Device-to-device cudaMemcpy may return before the copy is done.
      if (s.ok()) s = CudaStatus(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
      return s;
    };
  };
  const auto d2h = copy(stage, dev_a.data, cudaMemcpyDeviceToHost);
  const auto h2d = copy(dev_a.data, stage, cudaMemcpyHostToDevice);
  const auto d2d = copy(dev_b.data, dev_a.data, cudaMemcpyDeviceToDevice);
  bool ok = Figure(
      "cuda", "gather", "pool -> pinned", bytes,
      [&](uint64_t n) { return cuda.Gather(Batch(n), stage); }, "cudaMemcpy D2H", d2h);
  ok = Figure(
           "cuda", "scatter", "pinned -> pool", bytes,
           [&](uint64_t n) { return cuda.Scatter(stage, Batch(n)); }, "cudaMemcpy H2D", h2d) &&
       ok;
  ok = Figure(
           "cuda", "gather", "pool -> device", bytes,
           [&](uint64_t n) { return cuda.Gather(Batch(n), dev_a.data); }, "cudaMemcpy D2D", d2d) &&
       ok;
  ok = Figure(
           "cuda", "scatter", "device -> pool", bytes,
           [&](uint64_t n) { return cuda.Scatter(dev_a.data, Batch(n)); }, "cudaMemcpy D2D", d2d) &&
       ok;
  ok = Figure(
           "cuda", "gather 2-pass", "pool -> device -> pinned", bytes,
           [&](uint64_t n) {
             absl::Status s = cuda.Gather(Batch(n), dev_a.data);
             return s.ok() ? d2h(n) : s;
           },
           "cudaMemcpy D2H", d2h) &&
       ok;
  ok = Figure(
           "cuda", "scatter 2-pass", "pinned -> device -> pool", bytes,
           [&](uint64_t n) {
             absl::Status s = h2d(n);
             return s.ok() ? cuda.Scatter(dev_a.data, Batch(n)) : s;
           },
           "cudaMemcpy H2D", h2d) &&
       ok;
  for (KvQuant m : methods) {
    const std::string name(KvQuantName(m));
    ok = Figure(
             "cuda", "gather+" + name, "pool -> pinned", bytes,
             [&](uint64_t n) { return cuda.GatherQuantized(Batch(n), m, stage); }, "cudaMemcpy D2H",
             d2h) &&
         ok;
    ok = Figure(
             "cuda", "scatter+" + name, "pinned -> pool", bytes,
             [&](uint64_t n) { return cuda.ScatterDequantized(stage, m, Batch(n)); },
             "cudaMemcpy H2D", h2d) &&
         ok;
  }
  return ok;
}

#else

bool Bench::RunCuda(const HostKvPool&, CopyEngine&, const std::vector<KvQuant>&) {
  return false;  // Run() refuses --cuda in such a build before getting here
}

#endif  // STRATA_HAVE_CUDA

void PrintTable(const Flags& f, const Bench& b) {
  std::printf(
      "gpu copy bench: %u layers, %u KV heads, head_dim %u, %u-token blocks, %s, %s: %s blocks; "
      "pool %u blocks, batch %u (%s a call); device %s; >= %.2f s a figure\n",
      f.layers, f.kv_heads, f.head_dim, f.block_tokens, f.dtype_text.c_str(), f.layout_text.c_str(),
      FormatByteSize(b.block_bytes()).c_str(), f.blocks, f.batch,
      FormatByteSize(b.block_bytes() * f.batch).c_str(), b.device().c_str(), f.min_seconds);
  std::printf("%-6s %-18s %-26s %9s   %-16s %9s %7s\n", "engine", "op", "path", "GB/s", "baseline",
              "GB/s", "ratio");
  for (const Result& r : b.results()) {
    std::printf("%-6s %-18s %-26s %9.2f   %-16s %9.2f %7.3f\n", r.engine.c_str(), r.op.c_str(),
                r.path.c_str(), r.gbps, r.baseline.c_str(), r.baseline_gbps,
                r.baseline_gbps > 0 ? r.gbps / r.baseline_gbps : 0.0);
  }
}

std::string Json(const Flags& f, const Bench& b) {
  std::string out = absl::StrFormat(
      "{\"config\": {\"layers\": %u, \"kv_heads\": %u, \"head_dim\": %u, \"block_tokens\": %u, "
      "\"dtype\": \"%s\", \"layout\": \"%s\", \"block_bytes\": %u, \"blocks\": %u, \"batch\": %u, "
      "\"min_seconds\": %g, \"seed\": %u, \"device\": \"%s\"},\n \"results\": [",
      f.layers, f.kv_heads, f.head_dim, f.block_tokens, f.dtype_text, f.layout_text,
      b.block_bytes(), f.blocks, f.batch, f.min_seconds, f.seed, b.device());
  for (size_t i = 0; i < b.results().size(); ++i) {
    const Result& r = b.results()[i];
    absl::StrAppendFormat(&out,
                          "%s\n  {\"engine\": \"%s\", \"op\": \"%s\", \"path\": \"%s\", "
                          "\"gbps\": %.4f, \"baseline\": \"%s\", \"baseline_gbps\": %.4f, "
                          "\"ratio\": %.4f}",
                          i == 0 ? "" : ",", r.engine, r.op, r.path, r.gbps, r.baseline,
                          r.baseline_gbps, r.baseline_gbps > 0 ? r.gbps / r.baseline_gbps : 0.0);
  }
  return out + "\n]}\n";
}

int Run(const Flags& f) {
  absl::StatusOr<KvDtype> dtype = ParseKvDtype(f.dtype_text);
  absl::StatusOr<gpu_agent::KvLayout> layout = gpu_agent::ParseKvLayout(f.layout_text);
  absl::Status bad = !dtype.ok() ? dtype.status() : layout.status();
  std::vector<KvQuant> methods;
  const std::vector<std::string> names = absl::StrSplit(f.quant, ',', absl::SkipEmpty());
  for (const std::string& name : names) {
    if (!bad.ok()) break;
    absl::StatusOr<KvQuant> m = ParseKvQuant(name);
    if (m.ok() && *m != KvQuant::kNone) methods.push_back(*m);
    bad = m.status();
  }
  // Quantization reads fp16/bf16 only: for other dtypes the quantized figures are left out.
  if (bad.ok() && *dtype != KvDtype::kFp16 && *dtype != KvDtype::kBf16) methods.clear();
  if (bad.ok() && f.batch > f.blocks) {
    bad = absl::InvalidArgumentError("--batch must not exceed --blocks");
  }
  if (bad.ok() && f.cuda && !gpu_agent::CudaCopyEngineBuilt()) {
    bad = absl::InvalidArgumentError("--cuda: this build has no CUDA copy engine");
  }
  if (!bad.ok()) {
    std::fprintf(stderr, "strata-gpu-copy-bench: %s\n", bad.ToString().c_str());
    return 2;
  }
  KvPoolSpec shape;
  shape.layout = *layout;
  shape.dtype = *dtype;
  shape.layers = f.layers;
  shape.num_blocks = f.blocks;
  shape.block_tokens = f.block_tokens;
  shape.kv_heads = f.kv_heads;
  shape.head_dim = f.head_dim;

  Bench bench(f);
  const bool ok = bench.Run(shape, methods);
  const bool json_to_stdout = f.json == "-";
  if (!json_to_stdout) PrintTable(f, bench);
  if (!f.json.empty()) {
    const std::string json = Json(f, bench);
    std::FILE* out = json_to_stdout ? stdout : std::fopen(f.json.c_str(), "w");
    if (out == nullptr) {
      std::fprintf(stderr, "strata-gpu-copy-bench: cannot write %s\n", f.json.c_str());
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
  CLI::App app{"strata-gpu-copy-bench: KV block gather/scatter vs plain copies of the same bytes"};
  app.add_option("--layers", f.layers, "Model layers")
      ->check(CLI::Range(1u, 1024u))
      ->capture_default_str();
  app.add_option("--kv-heads", f.kv_heads, "KV heads")
      ->check(CLI::Range(1u, 1024u))
      ->capture_default_str();
  app.add_option("--head-dim", f.head_dim, "Elements per head")
      ->check(CLI::Range(1u, strata::kMaxQuantHeadDim))
      ->capture_default_str();
  app.add_option("--block-tokens", f.block_tokens, "Tokens per block")
      ->check(CLI::Range(1u, 4096u))
      ->capture_default_str();
  app.add_option("--dtype", f.dtype_text, "KV element type: fp16, bf16, fp8 or int8")
      ->capture_default_str();
  app.add_option("--layout", f.layout_text,
                 "Pool layout: flash-attn, block-first, split-kv or cross-layer")
      ->capture_default_str();
  app.add_option("--blocks", f.blocks, "Blocks in the pool")
      ->check(CLI::Range(1u, 1u << 20))
      ->capture_default_str();
  app.add_option("--batch", f.batch, "Blocks per gather/scatter call")
      ->check(CLI::Range(1u, 1u << 20))
      ->capture_default_str();
  app.add_option("--quant", f.quant,
                 "Comma-separated quantized figures to add (int8, fp8-e4m3; empty: none)")
      ->capture_default_str();
  app.add_flag("--cuda", f.cuda, "Also measure the CUDA engine on device 0");
  app.add_option("--min-seconds", f.min_seconds, "Minimum time per figure")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--json", f.json, "Write results as JSON to FILE ('-': stdout, no table)");
  app.add_option("--seed", f.seed, "Seed of the pool contents and batches")->capture_default_str();
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // CLI11 reports usage errors by exception; this is the one boundary where we catch them.
    const int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  }
  return strata::bench::Run(f);
}
