#include "strata/common/chain_hash.h"

#include <numeric>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "block_hash_vectors.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "strata/common/namespace.h"
#include "strata/testutil/status_matchers.h"

namespace strata {
namespace {

using ::strata::testutil::IsOk;
using ::strata::testutil::StatusIs;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;

constexpr ChainHashAlgorithm kAlgorithms[] = {ChainHashAlgorithm::kSha256,
                                              ChainHashAlgorithm::kXxh3_128};

// ---- The published vectors (docs/design/block-hash.md, section 7) ----

namespace vectors = ::strata::block_hash_vectors;

std::vector<vectors::DocLine> DocVectorLines(absl::string_view fence) {
  absl::StatusOr<std::string> doc = vectors::ReadDoc();
  EXPECT_THAT(doc, IsOk());
  if (!doc.ok()) return {};
  absl::StatusOr<std::vector<vectors::DocLine>> lines = vectors::FencedLines(*doc, fence);
  EXPECT_THAT(lines, IsOk());
  return lines.ok() ? *std::move(lines) : std::vector<vectors::DocLine>{};
}

std::vector<std::string> ToHex(const std::vector<ChainHash>& hashes) {
  std::vector<std::string> hex;
  for (const ChainHash& h : hashes) hex.push_back(h.ToHex());
  return hex;
}

TEST(ChainHashVectorsTest, EveryChainVectorMatches) {
  int sha256_count = 0, xxh3_count = 0;
  bool saw_lora = false, saw_mm = false, saw_group = false, saw_trailing = false;
  for (const vectors::DocLine& line : DocVectorLines(vectors::kChainFence)) {
    SCOPED_TRACE(absl::StrCat("block-hash.md:", line.number, ": ", line.text));
    absl::StatusOr<vectors::ChainVector> v = vectors::ParseChainVector(line.text);
    ASSERT_THAT(v, IsOk());
    absl::StatusOr<std::vector<ChainHash>> actual =
        HashPrefix(v->algorithm, v->tokens, v->block_tokens, v->extra);
    ASSERT_THAT(actual, IsOk());
    EXPECT_THAT(ToHex(*actual), ElementsAreArray(v->expected_hex));

    (v->algorithm == ChainHashAlgorithm::kSha256 ? sha256_count : xxh3_count)++;
    saw_lora |= !v->extra.lora_id.empty();
    saw_mm |= !v->extra.mm_hashes.empty();
    saw_group |= v->extra.kv_group.has_value();
    saw_trailing |= v->tokens.size() % v->block_tokens != 0;
  }
  // A doc edit that drops whole classes of vectors must not pass silently.
  EXPECT_GE(sha256_count, 7);
  EXPECT_GE(xxh3_count, 2);
  EXPECT_TRUE(saw_lora && saw_mm && saw_group && saw_trailing);
}

TEST(ChainHashVectorsTest, EveryNamespaceVectorMatches) {
  int count = 0;
  for (const vectors::DocLine& line : DocVectorLines(vectors::kNamespaceFence)) {
    SCOPED_TRACE(absl::StrCat("block-hash.md:", line.number, ": ", line.text));
    absl::StatusOr<vectors::NamespaceVector> v = vectors::ParseNamespaceVector(line.text);
    ASSERT_THAT(v, IsOk());
    ASSERT_THAT(ValidateNamespaceSpec(v->spec), IsOk());
    EXPECT_EQ(absl::StrFormat("%016x", ComputeNamespaceId(v->spec)), v->expected_hex);
    ++count;
  }
  EXPECT_GE(count, 3);
}

TEST(ChainHashVectorsTest, RootIsTheDocumentedSeedForBothAlgorithms) {
  constexpr char kRoot[] = "c4aa4206a1da2c8acecd280ad4a4d3d1b42541bbb2bd6315676dcdf6acce20b1";
  EXPECT_EQ(RootParent(ChainHashAlgorithm::kSha256).ToHex(), kRoot);
  EXPECT_EQ(RootParent(ChainHashAlgorithm::kXxh3_128).ToHex(), kRoot);
  absl::StatusOr<std::string> doc = vectors::ReadDoc();
  ASSERT_THAT(doc, IsOk());
  EXPECT_THAT(*doc, HasSubstr(kRoot));
}

// ---- Properties ----

std::vector<uint32_t> Iota(size_t n, uint32_t first) {
  std::vector<uint32_t> v(n);
  std::iota(v.begin(), v.end(), first);
  return v;
}

std::vector<ChainHash> MustHash(ChainHashAlgorithm a, const std::vector<uint32_t>& tokens,
                                uint32_t block_tokens, const ExtraKeys& extra = {}) {
  absl::StatusOr<std::vector<ChainHash>> r = HashPrefix(a, tokens, block_tokens, extra);
  EXPECT_THAT(r, IsOk());
  return r.ok() ? *std::move(r) : std::vector<ChainHash>{};
}

// Designated initializers would trip -Wmissing-field-initializers; these name the one field set.
ExtraKeys Lora(std::string id) {
  ExtraKeys e;
  e.lora_id = std::move(id);
  return e;
}
ExtraKeys Mm(std::vector<std::string> hashes) {
  ExtraKeys e;
  e.mm_hashes = std::move(hashes);
  return e;
}
ExtraKeys Group(uint32_t group) {
  ExtraKeys e;
  e.kv_group = group;
  return e;
}

class ChainHashPropertyTest : public ::testing::TestWithParam<ChainHashAlgorithm> {};

TEST_P(ChainHashPropertyTest, DeterministicAndEqualToHashBlockLoop) {
  std::vector<uint32_t> tokens = Iota(64, 1000);
  ExtraKeys extra{.lora_id = "x", .mm_hashes = {"img"}, .kv_group = 2};
  std::vector<ChainHash> a = MustHash(GetParam(), tokens, 16, extra);
  ASSERT_EQ(a.size(), 4u);
  EXPECT_EQ(a, MustHash(GetParam(), tokens, 16, extra));
  ChainHash parent = RootParent(GetParam());
  for (size_t b = 0; b < a.size(); ++b) {
    parent = HashBlock(GetParam(), parent, std::span(tokens).subspan(16 * b, 16), extra);
    EXPECT_EQ(parent, a[b]) << "block " << b;
  }
}

TEST_P(ChainHashPropertyTest, ChangedTokenChangesThatBlockAndLaterOnly) {
  std::vector<uint32_t> tokens = Iota(20, 1);
  std::vector<ChainHash> before = MustHash(GetParam(), tokens, 4);
  tokens[9] ^= 1;  // block 2
  std::vector<ChainHash> after = MustHash(GetParam(), tokens, 4);
  ASSERT_EQ(before.size(), 5u);
  ASSERT_EQ(after.size(), 5u);
  EXPECT_EQ(before[0], after[0]);
  EXPECT_EQ(before[1], after[1]);
  for (size_t b = 2; b < 5; ++b) EXPECT_NE(before[b], after[b]) << "block " << b;
}

TEST_P(ChainHashPropertyTest, PrefixOfALongerPromptHashesTheSame) {
  std::vector<uint32_t> tokens = Iota(50, 7);
  std::vector<ChainHash> full = MustHash(GetParam(), tokens, 8);
  std::vector<ChainHash> prefix =
      MustHash(GetParam(), std::vector<uint32_t>(tokens.begin(), tokens.begin() + 21), 8);
  ASSERT_EQ(full.size(), 6u);
  ASSERT_EQ(prefix.size(), 2u);
  EXPECT_EQ(prefix[0], full[0]);
  EXPECT_EQ(prefix[1], full[1]);
}

TEST_P(ChainHashPropertyTest, EachExtraKeyChangesEveryBlock) {
  std::vector<uint32_t> tokens = Iota(8, 1);
  std::vector<std::vector<ChainHash>> variants = {
      MustHash(GetParam(), tokens, 4),
      MustHash(GetParam(), tokens, 4, Lora("a")),
      MustHash(GetParam(), tokens, 4, Lora("b")),
      MustHash(GetParam(), tokens, 4, Mm({"p", "q"})),
      MustHash(GetParam(), tokens, 4, Mm({"q", "p"})),  // order matters
      MustHash(GetParam(), tokens, 4, Mm({"pq"})),      // lengths are encoded
      MustHash(GetParam(), tokens, 4, Group(0)),        // 0 is not "unset"
      MustHash(GetParam(), tokens, 4, Group(1)),
  };
  for (size_t i = 0; i < variants.size(); ++i) {
    ASSERT_EQ(variants[i].size(), 2u);
    for (size_t j = 0; j < i; ++j) {
      for (size_t b = 0; b < 2; ++b) {
        EXPECT_NE(variants[i][b], variants[j][b])
            << "variants " << j << ", " << i << " block " << b;
      }
    }
  }
}

TEST_P(ChainHashPropertyTest, EmptyPromptAndShortPromptGiveNoBlocks) {
  EXPECT_TRUE(MustHash(GetParam(), {}, 16).empty());
  EXPECT_TRUE(MustHash(GetParam(), Iota(15, 0), 16).empty());
}

TEST_P(ChainHashPropertyTest, RejectsZeroBlockTokens) {
  std::vector<uint32_t> tokens = Iota(8, 1);
  EXPECT_THAT(HashPrefix(GetParam(), tokens, 0),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("block_tokens")));
}

TEST_P(ChainHashPropertyTest, RejectsEmptyOrOversizedMmHash) {
  std::vector<uint32_t> tokens = Iota(8, 1);
  EXPECT_THAT(HashPrefix(GetParam(), tokens, 4, Mm({"ok", ""})),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("extra.mm_hashes[1]")));
  EXPECT_THAT(HashPrefix(GetParam(), tokens, 4, Mm({std::string(256, 'x')})),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("extra.mm_hashes[0]")));
  EXPECT_THAT(HashPrefix(GetParam(), tokens, 4, Mm({std::string(255, 'x')})), IsOk());
  // Checked even when the tokens fill no block, so bad input never passes unnoticed.
  EXPECT_THAT(HashPrefix(GetParam(), {}, 4, Mm({""})),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

INSTANTIATE_TEST_SUITE_P(BothAlgorithms, ChainHashPropertyTest, ::testing::ValuesIn(kAlgorithms),
                         [](const auto& info) {
                           return info.param == ChainHashAlgorithm::kSha256 ? "Sha256" : "Xxh3";
                         });

TEST(ChainHashTest, AlgorithmsDiffer) {
  std::vector<uint32_t> tokens = Iota(32, 1);
  std::vector<ChainHash> sha = MustHash(ChainHashAlgorithm::kSha256, tokens, 16);
  std::vector<ChainHash> xxh = MustHash(ChainHashAlgorithm::kXxh3_128, tokens, 16);
  ASSERT_EQ(sha.size(), 2u);
  ASSERT_EQ(xxh.size(), 2u);
  EXPECT_NE(sha[0], xxh[0]);
  EXPECT_NE(sha[1], xxh[1]);
}

TEST(ChainHashTest, ParseAndNameAlgorithms) {
  const std::pair<const char*, ChainHashAlgorithm> good[] = {
      {"", ChainHashAlgorithm::kSha256},
      {"sha256", ChainHashAlgorithm::kSha256},
      {"xxh3-128", ChainHashAlgorithm::kXxh3_128}};
  for (const auto& [name, algorithm] : good) {
    absl::StatusOr<ChainHashAlgorithm> parsed = ParseChainHashAlgorithm(name);
    ASSERT_THAT(parsed, IsOk()) << name;
    EXPECT_EQ(*parsed, algorithm) << name;
  }
  for (const char* bad : {"SHA256", "xxh3", "sha-256", " sha256", "md5"}) {
    EXPECT_THAT(ParseChainHashAlgorithm(bad),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("hash algorithm")))
        << bad;
  }
  for (ChainHashAlgorithm a : kAlgorithms) {
    absl::StatusOr<ChainHashAlgorithm> parsed = ParseChainHashAlgorithm(ChainHashAlgorithmName(a));
    ASSERT_THAT(parsed, IsOk());
    EXPECT_EQ(*parsed, a);
  }
}

// ---- Namespaces ----

NamespaceSpec ValidSpec() {
  return {.model_id = "org/model",
          .dtype = "bf16",
          .layout = "vllm-paged-v1",
          .block_tokens = 16,
          .tp_rank = 1,
          .tp_size = 2,
          .hash_algorithm = ChainHashAlgorithm::kSha256,
          .block_bytes = 1 << 20};
}

TEST(NamespaceTest, ValidSpecsPass) {
  EXPECT_THAT(ValidateNamespaceSpec(ValidSpec()), IsOk());
  NamespaceSpec s = ValidSpec();
  s.model_id = std::string(256, 'm');
  s.layout = std::string(128, 'l');
  for (const char* dtype : {"fp16", "bf16", "fp8", "int8"}) {
    s.dtype = dtype;
    EXPECT_THAT(ValidateNamespaceSpec(s), IsOk()) << dtype;
  }
}

TEST(NamespaceTest, InvalidSpecsNameTheField) {
  struct Case {
    const char* field;
    void (*mutate)(NamespaceSpec&);
  };
  const Case cases[] = {
      {"spec.model_id: empty", [](NamespaceSpec& s) { s.model_id.clear(); }},
      {"spec.model_id: 257 bytes", [](NamespaceSpec& s) { s.model_id.assign(257, 'm'); }},
      {"spec.dtype", [](NamespaceSpec& s) { s.dtype = "fp32"; }},
      {"spec.dtype", [](NamespaceSpec& s) { s.dtype = "BF16"; }},
      {"spec.layout: empty", [](NamespaceSpec& s) { s.layout.clear(); }},
      {"spec.layout: 129 bytes", [](NamespaceSpec& s) { s.layout.assign(129, 'l'); }},
      {"spec.block_tokens", [](NamespaceSpec& s) { s.block_tokens = 0; }},
      {"spec.tp_size", [](NamespaceSpec& s) { s.tp_size = 0; }},
      {"spec.tp_rank", [](NamespaceSpec& s) { s.tp_rank = 2; }},
      {"spec.hash_algorithm",
       [](NamespaceSpec& s) { s.hash_algorithm = static_cast<ChainHashAlgorithm>(7); }},
      {"spec.block_bytes", [](NamespaceSpec& s) { s.block_bytes = 0; }},
      {"spec.offload_quant: unknown", [](NamespaceSpec& s) { s.offload_quant = "int4"; }},
      {"spec.offload_quant: quantizes fp16 or bf16",
       [](NamespaceSpec& s) {
         s.dtype = "fp8";
         s.offload_quant = "int8";
         s.head_dim = 128;
       }},
      {"spec.head_dim", [](NamespaceSpec& s) { s.offload_quant = "fp8-e4m3"; }},
      {"spec.head_dim: 3, want 4..",
       [](NamespaceSpec& s) {
         s.offload_quant = "int8";
         s.head_dim = 3;
       }},
  };
  for (const Case& c : cases) {
    NamespaceSpec s = ValidSpec();
    c.mutate(s);
    EXPECT_THAT(ValidateNamespaceSpec(s),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(c.field)));
  }
}

TEST(NamespaceTest, EveryIdFieldChangesTheIdButBlockBytesDoesNot) {
  const NamespaceId base = ComputeNamespaceId(ValidSpec());
  NamespaceSpec s = ValidSpec();
  s.block_bytes = 4 << 20;
  EXPECT_EQ(ComputeNamespaceId(s), base);
  s.offload_quant = "int8";
  s.head_dim = 128;
  EXPECT_THAT(ValidateNamespaceSpec(s), IsOk());
  EXPECT_EQ(ComputeNamespaceId(s), base);
  EXPECT_EQ(OffloadQuantOf(s).method, KvQuant::kInt8);

  void (*mutations[])(NamespaceSpec&) = {
      [](NamespaceSpec& s) { s.model_id = "org/model2"; },
      [](NamespaceSpec& s) { s.dtype = "fp8"; },
      [](NamespaceSpec& s) { s.layout = "sglang"; },
      [](NamespaceSpec& s) { s.block_tokens = 32; },
      [](NamespaceSpec& s) { s.tp_rank = 0; },
      [](NamespaceSpec& s) { s.tp_size = 4; },
      [](NamespaceSpec& s) { s.hash_algorithm = ChainHashAlgorithm::kXxh3_128; },
  };
  for (size_t i = 0; i < std::size(mutations); ++i) {
    NamespaceSpec m = ValidSpec();
    mutations[i](m);
    EXPECT_NE(ComputeNamespaceId(m), base) << "mutation " << i;
  }
}

TEST(NamespaceTest, LengthPrefixesSeparateAdjacentStrings) {
  NamespaceSpec a = ValidSpec(), b = ValidSpec();
  a.model_id = "org/model";
  a.dtype = "fp8";
  b.model_id = "org/modelf";
  b.dtype = "p8";  // invalid on purpose: only the byte layout is under test
  EXPECT_NE(ComputeNamespaceId(a), ComputeNamespaceId(b));
}

}  // namespace
}  // namespace strata
