// Reader for the published test vectors of docs/design/block-hash.md (section 7), for tests.
// Header-only so that it adds nothing to strata::common; parsing follows the notation the doc
// defines and tools/block_hash_reference.py implements.
//
// Stateless functions; thread-safe.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "strata/common/chain_hash.h"
#include "strata/common/namespace.h"

namespace strata::block_hash_vectors {

inline constexpr char kChainFence[] = "chain-hash-vectors";
inline constexpr char kNamespaceFence[] = "namespace-id-vectors";

// A non-comment line inside a fenced vector block; `number` is 1-based in the doc.
struct DocLine {
  int number;
  std::string text;
};

struct ChainVector {
  ChainHashAlgorithm algorithm;
  uint32_t block_tokens;
  ExtraKeys extra;
  std::vector<uint32_t> tokens;
  std::vector<std::string> expected_hex;  // block 0 first
};

struct NamespaceVector {
  NamespaceSpec spec;  // block_bytes = 1: not part of the id, but required to be valid
  std::string expected_hex;
};

// $STRATA_SOURCE_DIR/docs/design/block-hash.md. FAILED_PRECONDITION if the variable is unset
// (ctest sets it), NOT_FOUND if the file cannot be read.
inline absl::StatusOr<std::string> ReadDoc() {
  const char* dir = std::getenv("STRATA_SOURCE_DIR");
  if (dir == nullptr || *dir == '\0') {
    return absl::FailedPreconditionError("STRATA_SOURCE_DIR is not set; run through ctest");
  }
  std::string path = absl::StrCat(dir, "/docs/design/block-hash.md");
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// The non-comment, non-blank lines of every ```<fence> block. INVALID_ARGUMENT if one is
// left open.
inline absl::StatusOr<std::vector<DocLine>> FencedLines(absl::string_view doc,
                                                        absl::string_view fence) {
  std::vector<DocLine> out;
  bool inside = false;
  int number = 0;
  for (absl::string_view line : absl::StrSplit(doc, '\n')) {
    ++number;
    absl::string_view s = absl::StripAsciiWhitespace(line);
    if (!inside && s == absl::StrCat("```", fence)) {
      inside = true;
    } else if (inside && s == "```") {
      inside = false;
    } else if (inside && !s.empty() && s[0] != '#') {
      out.push_back({number, std::string(s)});
    }
  }
  if (inside) return absl::InvalidArgumentError(absl::StrCat("unterminated ```", fence));
  return out;
}

namespace internal {

inline std::vector<std::string> SplitFields(absl::string_view line) {
  std::vector<std::string> fields = absl::StrSplit(line, '|');
  for (std::string& f : fields) absl::StripAsciiWhitespace(&f);
  return fields;
}

inline absl::Status ParseU32(absl::string_view text, absl::string_view what, uint32_t* out) {
  if (absl::SimpleAtoi(text, out)) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(what, ": \"", text, "\" is not a u32"));
}

inline absl::Status ParseExtras(absl::string_view text, ExtraKeys* extra) {
  if (text == "-") return absl::OkStatus();
  for (absl::string_view item : absl::StrSplit(text, ';')) {
    std::pair<absl::string_view, absl::string_view> kv =
        absl::StrSplit(item, absl::MaxSplits('=', 1));
    if (kv.first == "lora") {
      extra->lora_id = std::string(kv.second);
    } else if (kv.first == "mm") {
      for (absl::string_view hex : absl::StrSplit(kv.second, '/')) {
        bool ok = !hex.empty() && hex.size() % 2 == 0;
        for (char c : hex) ok &= absl::ascii_isxdigit(static_cast<unsigned char>(c));
        if (!ok) return absl::InvalidArgumentError(absl::StrCat("mm: bad hex \"", hex, "\""));
        extra->mm_hashes.push_back(absl::HexStringToBytes(hex));
      }
    } else if (kv.first == "group") {
      uint32_t group;
      if (absl::Status s = ParseU32(kv.second, "group", &group); !s.ok()) return s;
      extra->kv_group = group;
    } else {
      return absl::InvalidArgumentError(absl::StrCat("unknown extras key \"", kv.first, "\""));
    }
  }
  return absl::OkStatus();
}

}  // namespace internal

// One line of the ```chain-hash-vectors block.
inline absl::StatusOr<ChainVector> ParseChainVector(absl::string_view line) {
  std::vector<std::string> f = internal::SplitFields(line);
  if (f.size() != 5) return absl::InvalidArgumentError(absl::StrCat(f.size(), " fields, want 5"));
  ChainVector v;
  // Vectors name their algorithm: "" would silently mean sha256.
  if (f[0].empty()) return absl::InvalidArgumentError("algorithm: empty");
  absl::StatusOr<ChainHashAlgorithm> algorithm = ParseChainHashAlgorithm(f[0]);
  if (!algorithm.ok()) return algorithm.status();
  v.algorithm = *algorithm;
  if (absl::Status s = internal::ParseU32(f[1], "block_tokens", &v.block_tokens); !s.ok()) {
    return s;
  }
  if (absl::Status s = internal::ParseExtras(f[2], &v.extra); !s.ok()) return s;
  if (f[3] != "-") {
    for (absl::string_view t : absl::StrSplit(f[3], ',')) {
      uint32_t id;
      if (absl::Status s = internal::ParseU32(t, "token", &id); !s.ok()) return s;
      v.tokens.push_back(id);
    }
  }
  if (f[4] != "-") v.expected_hex = absl::StrSplit(f[4], ',');
  return v;
}

// One line of the ```namespace-id-vectors block.
inline absl::StatusOr<NamespaceVector> ParseNamespaceVector(absl::string_view line) {
  std::vector<std::string> f = internal::SplitFields(line);
  if (f.size() != 8) return absl::InvalidArgumentError(absl::StrCat(f.size(), " fields, want 8"));
  NamespaceVector v;
  v.spec.model_id = f[0];
  v.spec.dtype = f[1];
  v.spec.layout = f[2];
  for (auto [text, out] : {std::pair{&f[3], &v.spec.block_tokens},
                           std::pair{&f[4], &v.spec.tp_rank}, std::pair{&f[5], &v.spec.tp_size}}) {
    if (absl::Status s = internal::ParseU32(*text, "namespace field", out); !s.ok()) return s;
  }
  if (f[6].empty()) return absl::InvalidArgumentError("hash algorithm: empty");
  absl::StatusOr<ChainHashAlgorithm> algorithm = ParseChainHashAlgorithm(f[6]);
  if (!algorithm.ok()) return algorithm.status();
  v.spec.hash_algorithm = *algorithm;
  v.spec.block_bytes = 1;
  v.expected_hex = f[7];
  return v;
}

}  // namespace strata::block_hash_vectors
