// The CUDA copy engine against the host twin and kv_quant.h's reference codec, for every layout
// and dtype: gather stages exactly the host twin's bytes; scatter writes exactly what the twin
// writes and nothing outside the slices; fused quantization makes QuantizeKv's payload byte for
// byte (ties, flushed and saturating vectors included) and dequantization DequantizeKv's bytes
// (for arbitrary payloads too); NaN/inf blocks fail as the twin fails; concurrent calls; the
// index math evaluated on the device equals the host's.
//
// Needs a CUDA device: without the CUDA engine built, or without a device, the device tests
// skip. The element arithmetic the kernels share with the host (kv_quant_math.h) is checked
// against QuantizeKv / DequantizeKv on the CPU in any build.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kv_quant_math.h"
#include "strata/common/half.h"
#include "strata/common/kv_quant.h"
#include "strata/gpu_agent/copy_engine.h"
#include "strata/gpu_agent/copy_index.h"
#include "strata/gpu_agent/host_pool.h"

#if STRATA_HAVE_CUDA
#include <cuda_runtime.h>

#include "copy_kernels.h"
#endif

namespace strata::gpu_agent {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

// "" when equal, else where and how the first difference lies.
std::string FirstDifference(const uint8_t* got, const uint8_t* want, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    if (got[i] != want[i]) {
      return absl::StrCat("first difference at byte ", i, " of ", n, ": got ", got[i], ", want ",
                          want[i]);
    }
  }
  return "";
}

std::span<const uint8_t> Bytes(const std::string& s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

uint32_t HostDefaultNan() {
  volatile float zero = 0.0f;
  volatile float inf = INFINITY;
  return FloatBits(zero * inf);
}

bool IsSource(KvDtype dtype) { return dtype == KvDtype::kFp16 || dtype == KvDtype::kBf16; }

uint16_t ToBits(KvDtype dtype, float x) {
  return dtype == KvDtype::kBf16 ? FloatToBf16(x) : FloatToHalf(x);
}

// Vectors that probe the quantizer's edges, n elements of `dtype` each: zeros; exact int8
// ties (amax 127, so inv is 1); the dtype's largest values; values small enough to flush
// (bf16) or fp16 subnormals; a bf16 vector at the 2^-100 threshold with fp32-subnormal
// elements; a vector with one non-zero element.
std::vector<std::vector<uint16_t>> SpecialVectors(KvDtype dtype, uint32_t n, std::mt19937& rng) {
  const bool bf16 = dtype == KvDtype::kBf16;
  std::vector<std::vector<uint16_t>> out;
  out.emplace_back(n, 0);
  std::vector<uint16_t> ties(n);
  const float tie_values[] = {127, 0.5f, 1.5f, 2.5f, -0.5f, -1.5f, -2.5f, 126.5f, -126.5f};
  for (uint32_t i = 0; i < n; ++i) {
    ties[i] = ToBits(dtype, i < 9 ? tie_values[i] : static_cast<float>(i % 7) - 3.5f);
  }
  out.push_back(ties);
  std::vector<uint16_t> big(n);
  for (uint32_t i = 0; i < n; ++i) {
    big[i] = i % 3 == 0 ? (bf16 ? 0x7f7f : 0x7bff) | (i % 2 ? 0x8000 : 0) : ToBits(dtype, 1.0f);
  }
  out.push_back(big);
  std::vector<uint16_t> tiny(n);
  for (uint32_t i = 0; i < n; ++i) {
    tiny[i] =
        static_cast<uint16_t>(1 + rng() % (bf16 ? 0x0d7f : 0x03ff)) | (rng() % 2 ? 0x8000 : 0);
  }
  out.push_back(tiny);
  std::vector<uint16_t> threshold(n);
  for (uint32_t i = 0; i < n; ++i) {
    threshold[i] = static_cast<uint16_t>(i == 0 ? (bf16 ? 0x0d80 : 0x0001) : rng() % 0x80);
  }
  out.push_back(threshold);
  std::vector<uint16_t> single(n, 0);
  single[n - 1] = ToBits(dtype, -3.0f);
  out.push_back(single);
  return out;
}

void RandomBytes(uint8_t* data, size_t bytes, uint32_t seed) {
  std::mt19937 rng(seed);
  for (size_t i = 0; i < bytes; ++i) data[i] = static_cast<uint8_t>(rng());
}

// fp16/bf16: finite values, the magnitude varying from vector to vector; else random bytes.
void FillRandom(KvDtype dtype, uint32_t head_dim, uint8_t* data, uint64_t bytes, uint32_t seed) {
  if (!IsSource(dtype)) return RandomBytes(data, bytes, seed);
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  float magnitude = 1;
  for (uint64_t e = 0; e < bytes / 2; ++e) {
    if (e % head_dim == 0) magnitude = std::ldexp(1.0f, static_cast<int>(rng() % 20) - 12);
    const uint16_t bits = ToBits(dtype, normal(rng) * magnitude);
    std::memcpy(data + 2 * e, &bits, 2);
  }
}

// QuantizeKv's payload, rebuilt vector by vector from kv_quant_math.h's element functions (the
// amax / flush / scale steps as the kernels do them).
template <typename Element>
std::string QuantizeWithKernelMath(KvQuant method, uint32_t head_dim,
                                   std::span<const uint8_t> block) {
  const size_t vectors = block.size() / 2 / head_dim;
  std::string payload(vectors * 4 + vectors * head_dim, '\0');
  const float code_max = method == KvQuant::kInt8 ? cuda::kInt8CodeMax : kFp8E4M3Max;
  for (size_t v = 0; v < vectors; ++v) {
    std::vector<uint16_t> bits(head_dim);
    std::memcpy(bits.data(), block.data() + v * head_dim * 2, head_dim * 2);
    uint32_t max_magnitude = 0;
    for (uint16_t b : bits) max_magnitude = std::max<uint32_t>(max_magnitude, b & 0x7fffu);
    const float amax = Element::ToFloat(static_cast<uint16_t>(max_magnitude));
    float scale = 0;
    if (amax >= cuda::kQuantFlushBelow) {
      scale = cuda::DivRn(amax, code_max);
      const float inv = cuda::DivRn(code_max, amax);
      for (uint32_t i = 0; i < head_dim; ++i) {
        const float x = Element::ToFloat(bits[i]);
        payload[vectors * 4 + v * head_dim + i] = static_cast<char>(
            method == KvQuant::kInt8 ? cuda::QuantizeInt8(x, inv) : cuda::QuantizeFp8E4M3(x, inv));
      }
    }
    std::memcpy(payload.data() + v * 4, &scale, 4);
  }
  return payload;
}

template <typename Element>
std::vector<uint8_t> DequantizeWithKernelMath(KvQuant method, uint32_t head_dim,
                                              std::span<const uint8_t> payload, size_t bytes) {
  const size_t vectors = bytes / 2 / head_dim;
  std::vector<uint8_t> out(bytes);
  const uint32_t nan = HostDefaultNan();
  for (size_t v = 0; v < vectors; ++v) {
    float scale;
    std::memcpy(&scale, payload.data() + v * 4, 4);
    for (uint32_t i = 0; i < head_dim; ++i) {
      const uint8_t code = payload[vectors * 4 + v * head_dim + i];
      const uint16_t bits = method == KvQuant::kInt8
                                ? cuda::DequantizeInt8<Element>(code, scale, nan)
                                : cuda::DequantizeFp8E4M3<Element>(code, scale, nan);
      std::memcpy(out.data() + (v * head_dim + i) * 2, &bits, 2);
    }
  }
  return out;
}

TEST(CudaQuantMathTest, ElementFunctionsReproduceTheReferenceCodec) {
  std::mt19937 rng(7);
  for (KvDtype dtype : {KvDtype::kFp16, KvDtype::kBf16}) {
    for (KvQuant method : {KvQuant::kInt8, KvQuant::kFp8E4M3}) {
      for (uint32_t head_dim : {5u, 64u, 128u}) {
        SCOPED_TRACE(absl::StrCat(std::string(KvDtypeName(dtype)), " ",
                                  std::string(KvQuantName(method)), " ", head_dim));
        const KvQuantSpec spec{method, dtype, head_dim};
        const std::vector<std::vector<uint16_t>> specials = SpecialVectors(dtype, head_dim, rng);
        const size_t vectors = specials.size() + 40;
        std::vector<uint8_t> block(vectors * head_dim * 2);
        FillRandom(dtype, head_dim, block.data(), block.size(), rng());
        for (size_t s = 0; s < specials.size(); ++s) {
          std::memcpy(block.data() + 2 * s * head_dim, specials[s].data(), head_dim * 2);
        }
        std::string want;
        ASSERT_TRUE(QuantizeKv(spec, block, &want).ok());
        const std::string got =
            dtype == KvDtype::kBf16
                ? QuantizeWithKernelMath<cuda::Bf16Element>(method, head_dim, block)
                : QuantizeWithKernelMath<cuda::Fp16Element>(method, head_dim, block);
        EXPECT_EQ(FirstDifference(Bytes(got).data(), Bytes(want).data(), want.size()), "");

        // Arbitrary payload bytes: NaN and infinite scales, fp8 NaN codes.
        std::vector<uint8_t> payload(want.size());
        for (uint8_t& b : payload) b = static_cast<uint8_t>(rng());
        for (size_t v = 0; v < 8; ++v) {
          const uint32_t odd_scales[] = {0x7f800000u, 0xff800000u, 0x7fc00001u, 0xffa00000u,
                                         0x7f812345u, 0x00000001u, 0x80000000u, 0x7f7fffffu};
          std::memcpy(payload.data() + 4 * v, &odd_scales[v], 4);
        }
        std::vector<uint8_t> restored(block.size());
        ASSERT_TRUE(DequantizeKv(spec, payload, restored).ok());
        const std::vector<uint8_t> mine = dtype == KvDtype::kBf16
                                              ? DequantizeWithKernelMath<cuda::Bf16Element>(
                                                    method, head_dim, payload, block.size())
                                              : DequantizeWithKernelMath<cuda::Fp16Element>(
                                                    method, head_dim, payload, block.size());
        EXPECT_EQ(FirstDifference(mine.data(), restored.data(), restored.size()), "");
      }
    }
  }
}

TEST(CudaCopyEngineBuildTest, StubAnswersUnimplemented) {
  if (CudaCopyEngineBuilt()) GTEST_SKIP() << "this build has the CUDA engine";
  KvPool pool;
  pool.device = 0;
  EXPECT_EQ(CreateCudaCopyEngine(pool).status().code(), absl::StatusCode::kUnimplemented);
}

#if STRATA_HAVE_CUDA

bool HaveDevice() {
  if (!CudaCopyEngineBuilt()) return false;
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return devices > 0;
}

#define SKIP_WITHOUT_DEVICE() \
  if (!HaveDevice()) GTEST_SKIP() << "no CUDA device (or the CUDA engine is not built)"

TEST(CudaCopyEngineBuildTest, UnavailableWithoutDevice) {
  if (HaveDevice()) GTEST_SKIP() << "a CUDA device is present";
  KvPool pool;
  pool.device = 0;
  pool.slice_bases = {uint64_t{1} << 40};
  EXPECT_EQ(CreateCudaCopyEngine(pool).status().code(), absl::StatusCode::kUnavailable);
}

// A device copy of a HostKvPool: each tensor in its own allocation, `misalign` bytes in, with
// guard bytes before and after that no copy may touch.
class DeviceMirror {
 public:
  static constexpr uint8_t kGuard = 0x5a;
  static constexpr size_t kGuardBytes = 64;

  DeviceMirror(const HostKvPool& host, uint32_t misalign) : misalign_(misalign) {
    KvPoolSpec spec = host.spec();
    spec.device = 0;
    spec.layer_bases.clear();
    for (auto [data, size] : host.Tensors()) {
      uint8_t* alloc = nullptr;
      EXPECT_EQ(cudaMalloc(&alloc, AllocBytes(size)), cudaSuccess);
      EXPECT_EQ(cudaMemset(alloc, kGuard, AllocBytes(size)), cudaSuccess);
      allocs_.push_back({alloc, size});
      spec.layer_bases.push_back(alloc + kGuardBytes + misalign_);
    }
    absl::StatusOr<KvPool> pool = ResolveKvPool(spec);
    EXPECT_TRUE(pool.ok()) << pool.status();
    if (pool.ok()) pool_ = *pool;
    Upload(host);
  }
  ~DeviceMirror() {
    for (auto [alloc, size] : allocs_) cudaFree(alloc);
  }

  const KvPool& pool() const { return pool_; }

  void Upload(const HostKvPool& host) {
    const auto tensors = host.Tensors();
    for (size_t i = 0; i < tensors.size(); ++i) {
      EXPECT_EQ(cudaMemcpy(allocs_[i].first + kGuardBytes + misalign_, tensors[i].first,
                           tensors[i].second, cudaMemcpyHostToDevice),
                cudaSuccess);
    }
  }

  // Every tensor holds host's bytes and every guard byte is intact.
  void ExpectSameAs(const HostKvPool& host) const {
    const auto tensors = host.Tensors();
    for (size_t i = 0; i < tensors.size(); ++i) {
      std::vector<uint8_t> all(AllocBytes(tensors[i].second));
      ASSERT_EQ(cudaMemcpy(all.data(), allocs_[i].first, all.size(), cudaMemcpyDeviceToHost),
                cudaSuccess);
      const uint8_t* tensor = all.data() + kGuardBytes + misalign_;
      EXPECT_EQ(FirstDifference(tensor, tensors[i].first, tensors[i].second), "") << "tensor " << i;
      std::vector<uint8_t> guard(kGuardBytes + misalign_, kGuard);
      EXPECT_EQ(FirstDifference(all.data(), guard.data(), guard.size()), "") << "before " << i;
      EXPECT_EQ(FirstDifference(tensor + tensors[i].second, guard.data(), kGuardBytes), "")
          << "after " << i;
    }
  }

 private:
  size_t AllocBytes(size_t size) const { return size + 2 * kGuardBytes + misalign_; }

  uint32_t misalign_;
  std::vector<std::pair<uint8_t*, size_t>> allocs_;
  KvPool pool_;
};

struct ShapeCase {
  const char* name;
  uint32_t layers, num_blocks, block_tokens, kv_heads, head_dim;
  uint32_t misalign;  // bytes the device tensors start past an allocation's alignment
};
// small: 16-byte-aligned slices and the 4-elements-per-lane quantizer; odd: 10-byte slices at
// a 2-byte offset, an odd head_dim and payloads whose scales are not 4-byte aligned (byte
// copies, element by element quantization); wide: 16 KiB fp16 slices (the unrolled copy
// loop) and two quads per lane.
constexpr ShapeCase kShapes[] = {
    {"small", 3, 10, 4, 2, 64, 0}, {"odd", 3, 7, 3, 1, 5, 2}, {"wide", 2, 12, 16, 2, 256, 0}};
constexpr KvLayout kLayouts[] = {KvLayout::kFlashAttn, KvLayout::kBlockFirst, KvLayout::kSplitKv,
                                 KvLayout::kCrossLayer};
constexpr KvDtype kDtypes[] = {KvDtype::kFp16, KvDtype::kBf16, KvDtype::kFp8};

using Param = std::tuple<KvLayout, KvDtype, int>;

class CudaCopyEngineTest : public ::testing::TestWithParam<Param> {
 protected:
  void SetUp() override {
    SKIP_WITHOUT_DEVICE();
    const auto [layout, dtype, shape_index] = GetParam();
    shape_ = kShapes[shape_index];
    KvPoolSpec spec;
    spec.layout = layout;
    spec.dtype = dtype;
    spec.layers = shape_.layers;
    spec.num_blocks = shape_.num_blocks;
    spec.block_tokens = shape_.block_tokens;
    spec.kv_heads = shape_.kv_heads;
    spec.head_dim = shape_.head_dim;
    absl::StatusOr<HostKvPool> host = HostKvPool::Create(spec);
    ASSERT_TRUE(host.ok()) << host.status();
    host_ = std::make_unique<HostKvPool>(std::move(*host));
    uint32_t seed = 1;
    for (auto [data, size] : host_->Tensors()) FillRandom(dtype, spec.head_dim, data, size, seed++);
    if (IsSource(dtype)) {
      std::mt19937 rng(99);
      const auto specials = SpecialVectors(dtype, spec.head_dim, rng);
      for (size_t s = 0; s < specials.size(); ++s) {
        const uint32_t layer = s % spec.layers, kv = s % 2, block = s % spec.num_blocks;
        std::memcpy(host_->Element(layer, kv, block, 0, 0, 0), specials[s].data(),
                    2 * spec.head_dim);
      }
    }
    device_ = std::make_unique<DeviceMirror>(*host_, shape_.misalign);
    absl::StatusOr<std::unique_ptr<CopyEngine>> cuda = CreateCudaCopyEngine(device_->pool());
    ASSERT_TRUE(cuda.ok()) << cuda.status();
    cuda_ = std::move(*cuda);
    absl::StatusOr<std::unique_ptr<CopyEngine>> twin = CreateHostCopyEngine(host_->pool());
    ASSERT_TRUE(twin.ok()) << twin.status();
    twin_ = std::move(*twin);
  }

  uint64_t block_bytes() const { return host_->pool().block_bytes; }
  uint32_t num_blocks() const { return shape_.num_blocks; }

  // Pinned staging from the CUDA engine.
  std::unique_ptr<StagingBuffer> Pinned(size_t bytes) {
    absl::StatusOr<std::unique_ptr<StagingBuffer>> s = cuda_->AllocateStaging(bytes);
    EXPECT_TRUE(s.ok()) << s.status();
    return s.ok() ? std::move(*s) : nullptr;
  }

  ShapeCase shape_{};
  std::unique_ptr<HostKvPool> host_;
  std::unique_ptr<DeviceMirror> device_;
  std::unique_ptr<CopyEngine> cuda_;
  std::unique_ptr<CopyEngine> twin_;
};

TEST_P(CudaCopyEngineTest, GatherStagesTheHostTwinsBytes) {
  const std::vector<uint32_t> ids = {num_blocks() - 1, 0, 3, 3, 5, 1};
  const size_t bytes = ids.size() * block_bytes();
  std::vector<uint8_t> want(bytes);
  ASSERT_TRUE(twin_->Gather(ids, want.data()).ok());

  std::unique_ptr<StagingBuffer> pinned = Pinned(bytes + 1);
  ASSERT_NE(pinned, nullptr);
  ASSERT_TRUE(cuda_->Gather(ids, pinned->data()).ok());
  EXPECT_EQ(FirstDifference(pinned->data(), want.data(), bytes), "") << "pinned";
  // One byte in: every slice misaligned, the byte-copy path.
  ASSERT_TRUE(cuda_->Gather(ids, pinned->data() + 1).ok());
  EXPECT_EQ(FirstDifference(pinned->data() + 1, want.data(), bytes), "") << "pinned + 1";

  uint8_t* on_device = nullptr;
  ASSERT_EQ(cudaMalloc(&on_device, bytes), cudaSuccess);
  ASSERT_TRUE(cuda_->Gather(ids, on_device).ok());
  std::vector<uint8_t> got(bytes);
  ASSERT_EQ(cudaMemcpy(got.data(), on_device, bytes, cudaMemcpyDeviceToHost), cudaSuccess);
  cudaFree(on_device);
  EXPECT_EQ(FirstDifference(got.data(), want.data(), bytes), "") << "device staging";
  device_->ExpectSameAs(*host_);  // gather wrote nothing into the pool
}

TEST_P(CudaCopyEngineTest, ScatterWritesWhatTheHostTwinWrites) {
  const std::vector<uint32_t> ids = {2, num_blocks() - 1, 0, 4};
  const size_t bytes = ids.size() * block_bytes();
  std::unique_ptr<StagingBuffer> pinned = Pinned(bytes);
  ASSERT_NE(pinned, nullptr);
  RandomBytes(pinned->data(), bytes, 5);
  ASSERT_TRUE(cuda_->Scatter(pinned->data(), ids).ok());
  ASSERT_TRUE(twin_->Scatter(pinned->data(), ids).ok());
  device_->ExpectSameAs(*host_);

  // And back: the round trip is exact.
  std::unique_ptr<StagingBuffer> back = Pinned(bytes);
  ASSERT_TRUE(cuda_->Gather(ids, back->data()).ok());
  EXPECT_EQ(FirstDifference(back->data(), pinned->data(), bytes), "");

  // From device memory, and from a misaligned staging address.
  const std::vector<uint32_t> others = {1, 3};
  const size_t other_bytes = others.size() * block_bytes();
  std::vector<uint8_t> source(other_bytes + 1);
  RandomBytes(source.data(), source.size(), 6);
  uint8_t* on_device = nullptr;
  ASSERT_EQ(cudaMalloc(&on_device, other_bytes), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(on_device, source.data(), other_bytes, cudaMemcpyHostToDevice), cudaSuccess);
  ASSERT_TRUE(cuda_->Scatter(on_device, others).ok());
  cudaFree(on_device);
  ASSERT_TRUE(twin_->Scatter(source.data(), others).ok());
  device_->ExpectSameAs(*host_);
  std::memcpy(pinned->data() + 1, source.data() + 1, other_bytes);
  ASSERT_TRUE(cuda_->Scatter(pinned->data() + 1, others).ok());
  ASSERT_TRUE(twin_->Scatter(source.data() + 1, others).ok());
  device_->ExpectSameAs(*host_);
}

TEST_P(CudaCopyEngineTest, QuantizedMatchesTheReferenceCodec) {
  const KvDtype dtype = std::get<1>(GetParam());
  // Restoring arbitrary payloads puts NaNs into the pools: each method starts from these.
  std::vector<std::vector<uint8_t>> original;
  for (auto [data, size] : host_->Tensors()) original.emplace_back(data, data + size);
  std::vector<uint32_t> ids;
  for (uint32_t b = num_blocks(); b-- > 0;) ids.push_back(b);
  for (KvQuant method : {KvQuant::kInt8, KvQuant::kFp8E4M3}) {
    SCOPED_TRACE(std::string(KvQuantName(method)));
    const KvQuantSpec spec{method, dtype, shape_.head_dim};
    if (!IsSource(dtype)) {
      std::vector<uint8_t> staging(64);
      const absl::Status want = twin_->GatherQuantized(ids, method, staging.data());
      EXPECT_EQ(want.code(), absl::StatusCode::kInvalidArgument);
      EXPECT_EQ(cuda_->GatherQuantized(ids, method, staging.data()), want);
      EXPECT_EQ(cuda_->ScatterDequantized(staging.data(), method, ids), want);
      continue;
    }
    const uint64_t packed = QuantizedPayloadSize(spec, block_bytes());
    // QuantizeKv on each block's stored form.
    std::string want;
    std::vector<uint8_t> block(block_bytes());
    for (uint32_t id : ids) {
      ASSERT_TRUE(twin_->Gather({&id, 1}, block.data()).ok());
      ASSERT_TRUE(QuantizeKv(spec, block, &want).ok());
    }
    ASSERT_EQ(want.size(), ids.size() * packed);
    // Aligned, and one byte in (unaligned scales and codes).
    std::unique_ptr<StagingBuffer> pinned = Pinned(want.size() + 1);
    ASSERT_NE(pinned, nullptr);
    for (size_t offset : {size_t{0}, size_t{1}}) {
      ASSERT_TRUE(cuda_->GatherQuantized(ids, method, pinned->data() + offset).ok());
      EXPECT_EQ(FirstDifference(pinned->data() + offset, Bytes(want).data(), want.size()), "")
          << "offset " << offset;
    }

    // Restoring: the payload just made, then arbitrary payload bytes.
    for (int round = 0; round < 2; ++round) {
      if (round == 1) RandomBytes(pinned->data() + 1, want.size(), 11);
      ASSERT_TRUE(cuda_->ScatterDequantized(pinned->data() + 1, method, ids).ok());
      ASSERT_TRUE(twin_->ScatterDequantized(pinned->data() + 1, method, ids).ok());
      device_->ExpectSameAs(*host_);
      std::memmove(pinned->data(), pinned->data() + 1, want.size());
      ASSERT_TRUE(cuda_->ScatterDequantized(pinned->data(), method, ids).ok());
      device_->ExpectSameAs(*host_);
    }
    const auto tensors = host_->Tensors();
    for (size_t i = 0; i < tensors.size(); ++i) {
      std::memcpy(tensors[i].first, original[i].data(), tensors[i].second);
    }
    device_->Upload(*host_);
  }
}

TEST_P(CudaCopyEngineTest, BadCallsFailAsTheHostTwinFails) {
  std::unique_ptr<StagingBuffer> pinned = Pinned(2 * block_bytes());
  ASSERT_NE(pinned, nullptr);
  const std::vector<uint32_t> out_of_range = {0, num_blocks()};
  const std::vector<uint32_t> ok_ids = {1};
  for (const auto& [ids, staging] : {std::pair{out_of_range, static_cast<void*>(pinned->data())},
                                     std::pair{ok_ids, static_cast<void*>(nullptr)}}) {
    const absl::Status want = twin_->Gather(ids, staging);
    EXPECT_EQ(want.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(cuda_->Gather(ids, staging), want);
    EXPECT_EQ(cuda_->Scatter(staging, ids), twin_->Scatter(staging, ids));
    EXPECT_EQ(cuda_->GatherQuantized(ids, KvQuant::kInt8, staging),
              twin_->GatherQuantized(ids, KvQuant::kInt8, staging));
  }
  EXPECT_EQ(cuda_->GatherQuantized(ok_ids, KvQuant::kNone, pinned->data()),
            twin_->GatherQuantized(ok_ids, KvQuant::kNone, pinned->data()));
  EXPECT_TRUE(cuda_->Gather({}, nullptr).ok());
  EXPECT_TRUE(cuda_->Scatter(nullptr, {}).ok());

  // Pageable memory is out of the device's reach.
  std::vector<uint8_t> pageable(block_bytes());
  const absl::Status s = cuda_->Gather(ok_ids, pageable.data());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("pageable"));
}

std::string ParamName(const ::testing::TestParamInfo<Param>& info) {
  const auto [layout, dtype, shape] = info.param;
  std::string name = absl::StrCat(std::string(KvLayoutName(layout)), "_",
                                  std::string(KvDtypeName(dtype)), "_", kShapes[shape].name);
  for (char& c : name) c = c == '-' ? '_' : c;
  return name;
}

INSTANTIATE_TEST_SUITE_P(AllLayoutsAndDtypes, CudaCopyEngineTest,
                         ::testing::Combine(::testing::ValuesIn(kLayouts),
                                            ::testing::ValuesIn(kDtypes), ::testing::Range(0, 3)),
                         ParamName);

// A small fp16/bf16 pool on the device with its host twin.
struct PoolPair {
  std::unique_ptr<HostKvPool> host;
  std::unique_ptr<DeviceMirror> device;
  std::unique_ptr<CopyEngine> cuda, twin;
};

PoolPair MakePair(KvDtype dtype, uint32_t num_blocks, uint32_t seed) {
  PoolPair p;
  KvPoolSpec spec;
  spec.layout = KvLayout::kFlashAttn;
  spec.dtype = dtype;
  spec.layers = 2;
  spec.num_blocks = num_blocks;
  spec.block_tokens = 4;
  spec.kv_heads = 2;
  spec.head_dim = 32;
  absl::StatusOr<HostKvPool> host = HostKvPool::Create(spec);
  EXPECT_TRUE(host.ok()) << host.status();
  if (!host.ok()) return p;
  p.host = std::make_unique<HostKvPool>(std::move(*host));
  for (auto [data, size] : p.host->Tensors()) FillRandom(dtype, 32, data, size, seed++);
  p.device = std::make_unique<DeviceMirror>(*p.host, 0);
  absl::StatusOr<std::unique_ptr<CopyEngine>> cuda = CreateCudaCopyEngine(p.device->pool());
  absl::StatusOr<std::unique_ptr<CopyEngine>> twin = CreateHostCopyEngine(p.host->pool());
  EXPECT_TRUE(cuda.ok()) << cuda.status();
  EXPECT_TRUE(twin.ok()) << twin.status();
  if (cuda.ok() && twin.ok()) {
    p.cuda = std::move(*cuda);
    p.twin = std::move(*twin);
  }
  return p;
}

TEST(CudaCopyEngineNanTest, NanAndInfinityBlocksFailAsTheHostTwinFails) {
  SKIP_WITHOUT_DEVICE();
  for (KvDtype dtype : {KvDtype::kFp16, KvDtype::kBf16}) {
    SCOPED_TRACE(std::string(KvDtypeName(dtype)));
    PoolPair p = MakePair(dtype, 8, 3);
    ASSERT_NE(p.cuda, nullptr);
    const uint16_t nan = dtype == KvDtype::kBf16 ? 0x7fc1 : 0x7e01;
    const uint16_t inf = dtype == KvDtype::kBf16 ? 0xff80 : 0xfc00;
    std::memcpy(p.host->Element(1, 1, 4, 2, 1, 7), &nan, 2);
    std::memcpy(p.host->Element(0, 0, 6, 3, 0, 31), &inf, 2);
    std::memcpy(p.host->Element(1, 0, 6, 0, 1, 2), &nan, 2);
    p.device->Upload(*p.host);
    const KvQuantSpec spec{KvQuant::kInt8, dtype, 32};
    const uint64_t packed = QuantizedPayloadSize(spec, p.host->pool().block_bytes);
    for (const std::vector<uint32_t>& ids :
         {std::vector<uint32_t>{1, 6, 2, 4}, std::vector<uint32_t>{0, 4, 7}}) {
      absl::StatusOr<std::unique_ptr<StagingBuffer>> pinned =
          p.cuda->AllocateStaging(ids.size() * packed);
      ASSERT_TRUE(pinned.ok()) << pinned.status();
      std::vector<uint8_t> twin_staging(ids.size() * packed);
      const absl::Status want = p.twin->GatherQuantized(ids, KvQuant::kInt8, twin_staging.data());
      ASSERT_EQ(want.code(), absl::StatusCode::kInvalidArgument);
      EXPECT_EQ(p.cuda->GatherQuantized(ids, KvQuant::kInt8, (*pinned)->data()), want);
      EXPECT_THAT(std::string(want.message()),
                  StartsWith(absl::StrCat("block id ", ids[1], " (entry 1)")));
      // The finite blocks are staged all the same.
      for (size_t i : {size_t{0}, size_t{2}}) {
        EXPECT_EQ(FirstDifference((*pinned)->data() + i * packed, twin_staging.data() + i * packed,
                                  packed),
                  "")
            << "entry " << i;
      }
    }
  }
}

TEST(CudaCopyEngineConcurrencyTest, ConcurrentCallsGetTheirOwnResults) {
  SKIP_WITHOUT_DEVICE();
  PoolPair p = MakePair(KvDtype::kFp16, 64, 21);
  ASSERT_NE(p.cuda, nullptr);
  const uint64_t block = p.host->pool().block_bytes;
  constexpr int kThreads = 8;  // more than the engine's lanes: some calls wait for one
  std::vector<std::thread> threads;
  std::vector<std::string> failures(kThreads);
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      // Thread t owns blocks 8t .. 8t+7: it scatters fresh bytes there and gathers them back.
      std::vector<uint32_t> ids;
      for (uint32_t b = 0; b < 8; ++b) ids.push_back(8 * t + b);
      absl::StatusOr<std::unique_ptr<StagingBuffer>> out =
          p.cuda->AllocateStaging(ids.size() * block);
      absl::StatusOr<std::unique_ptr<StagingBuffer>> in =
          p.cuda->AllocateStaging(ids.size() * block);
      if (!out.ok() || !in.ok()) {
        failures[t] = absl::StrCat(out.status().ToString(), in.status().ToString());
        return;
      }
      for (int round = 0; round < 25 && failures[t].empty(); ++round) {
        RandomBytes((*out)->data(), (*out)->size(), 1000 * t + round);
        absl::Status s = p.cuda->Scatter((*out)->data(), ids);
        if (s.ok()) s = p.cuda->Gather(ids, (*in)->data());
        failures[t] =
            s.ok() ? FirstDifference((*in)->data(), (*out)->data(), (*out)->size()) : s.ToString();
      }
    });
  }
  for (std::thread& t : threads) t.join();
  for (int t = 0; t < kThreads; ++t) EXPECT_EQ(failures[t], "") << "thread " << t;
}

// The agent's offload and load threads make no CUDA call of their own before the engine's:
// staging allocated elsewhere must work from such a thread (its first call binds the device).
TEST(CudaCopyEngineConcurrencyTest, FreshThreadUsesStagingAllocatedElsewhere) {
  SKIP_WITHOUT_DEVICE();
  PoolPair p = MakePair(KvDtype::kFp16, 8, 22);
  ASSERT_NE(p.cuda, nullptr);
  const uint64_t block = p.host->pool().block_bytes;
  absl::StatusOr<std::unique_ptr<StagingBuffer>> out = p.cuda->AllocateStaging(2 * block);
  absl::StatusOr<std::unique_ptr<StagingBuffer>> in = p.cuda->AllocateStaging(2 * block);
  ASSERT_TRUE(out.ok() && in.ok());
  RandomBytes((*out)->data(), (*out)->size(), 7);
  const std::vector<uint32_t> ids = {3, 5};
  std::string failure;
  std::thread fresh([&] {
    absl::Status s = p.cuda->Scatter((*out)->data(), ids);
    if (s.ok()) s = p.cuda->Gather(ids, (*in)->data());
    failure =
        s.ok() ? FirstDifference((*in)->data(), (*out)->data(), (*out)->size()) : s.ToString();
  });
  fresh.join();
  EXPECT_EQ(failure, "");
}

TEST(CudaCopyEngineCreateTest, DescribesAndRefusesPoolsItCannotReach) {
  SKIP_WITHOUT_DEVICE();
  PoolPair p = MakePair(KvDtype::kBf16, 4, 1);
  ASSERT_NE(p.cuda, nullptr);
  EXPECT_THAT(p.cuda->Describe(), StartsWith("cuda:0 ("));
  absl::StatusOr<std::unique_ptr<CopyEngine>> via_factory = CreateCopyEngine(p.device->pool());
  ASSERT_TRUE(via_factory.ok()) << via_factory.status();
  EXPECT_THAT((*via_factory)->Describe(), StartsWith("cuda:0"));

  KvPool elsewhere = p.device->pool();
  elsewhere.device = 99;
  EXPECT_EQ(CreateCudaCopyEngine(elsewhere).status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(CreateCudaCopyEngine(p.host->pool()).status().code(),
            absl::StatusCode::kInvalidArgument);
  KvPool host_memory = p.host->pool();
  host_memory.device = 0;
  EXPECT_EQ(CreateCudaCopyEngine(host_memory).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(CudaIndexProbeTest, DeviceEvaluatesTheIndexMathAsTheHostDoes) {
  SKIP_WITHOUT_DEVICE();
  std::mt19937_64 rng(5);
  constexpr uint32_t kCount = 4096;
  cuda::IndexProbe* out = nullptr;
  ASSERT_EQ(cudaMalloc(&out, kCount * sizeof(cuda::IndexProbe)), cudaSuccess);
  uint64_t* bases = nullptr;
  ASSERT_EQ(cudaMalloc(&bases, 512 * sizeof(uint64_t)), cudaSuccess);
  for (int trial = 0; trial < 24; ++trial) {
    const uint32_t num_slices = 2 * (1 + rng() % 256);
    std::vector<uint64_t> host_bases(num_slices);
    for (uint64_t& b : host_bases) b = rng() >> (trial % 2 ? 16 : 1);
    ASSERT_EQ(cudaMemcpy(bases, host_bases.data(), num_slices * 8, cudaMemcpyHostToDevice),
              cudaSuccess);
    cuda::PoolView view;
    view.slice_bases = bases;
    view.block_stride = rng() >> (20 + trial % 30);
    view.slice_bytes = 1 + (rng() >> (24 + trial % 30));
    view.num_slices = num_slices;
    const uint32_t head_dim = 1 + rng() % 65535;
    const uint64_t vectors = 1 + rng() % (uint64_t{1} << 20);
    const uint64_t packed = vectors * (4 + head_dim);
    const uint64_t first_items[] = {0, (uint64_t{1} << 32) - kCount / 2, rng() >> 22};
    const uint64_t first = first_items[trial % 3];
    ASSERT_EQ(cuda::LaunchIndexProbe(view, packed, vectors, head_dim, first, kCount, out, nullptr),
              cudaSuccess);
    std::vector<cuda::IndexProbe> got(kCount);
    ASSERT_EQ(
        cudaMemcpy(got.data(), out, kCount * sizeof(cuda::IndexProbe), cudaMemcpyDeviceToHost),
        cudaSuccess);
    for (uint32_t t = 0; t < kCount; ++t) {
      const uint64_t item = first + t;
      uint32_t batch_index, slice;
      index::SplitWorkItem(item, num_slices, &batch_index, &slice);
      const cuda::IndexProbe& g = got[t];
      ASSERT_EQ(g.batch_index, batch_index) << "trial " << trial << " item " << item;
      ASSERT_EQ(g.slice, slice) << "trial " << trial << " item " << item;
      ASSERT_EQ(g.pool_address, index::PoolSliceAddress(host_bases.data(), view.block_stride, slice,
                                                        cuda::ProbeBlockId(batch_index)));
      ASSERT_EQ(g.staged_offset,
                index::StagedSliceOffset(view.slice_bytes, num_slices, batch_index, slice));
      ASSERT_EQ(g.scale_offset, index::PackedScaleOffset(packed, batch_index, item % vectors));
      ASSERT_EQ(g.code_offset,
                index::PackedCodeOffset(packed, vectors, head_dim, batch_index, item % vectors));
    }
  }
  cudaFree(bases);
  cudaFree(out);
}

#endif  // STRATA_HAVE_CUDA

}  // namespace
}  // namespace strata::gpu_agent
