#include "trace_replay.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <iterator>
#include <memory>
#include <set>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace strata::cli {
namespace {

using storenode::BlockTraits;
using storenode::EvictionPolicy;
using storenode::kNoBlock;

constexpr uint64_t kNever = ~0ull;  // next use of a block that is never used again

// Our abseil's string_view is its own type, not std::string_view.
absl::string_view AsAbsl(std::string_view s) { return absl::string_view(s.data(), s.size()); }

// Parser of one trace line: a flat JSON object of unsigned integers and one array of them.
class LineParser {
 public:
  LineParser(absl::string_view text, size_t line) : text_(text), line_(line) {}

  absl::StatusOr<TraceRequest> Parse() {
    static constexpr absl::string_view kFields[] = {"timestamp", "input_length", "output_length",
                                                    "hash_ids"};
    TraceRequest request;
    bool seen[4] = {false, false, false, false};
    if (!Consume('{')) return Error("expected '{' to open the request object");
    if (!Consume('}')) {
      while (true) {
        absl::StatusOr<absl::string_view> key = Key();
        if (!key.ok()) return key.status();
        if (!Consume(':')) return Error(absl::StrCat("expected ':' after \"", *key, "\""));
        size_t field = 0;
        while (field < 4 && kFields[field] != *key) ++field;
        if (field == 4) {
          return Error(absl::StrCat("unknown field \"", *key,
                                    "\" (expected timestamp, input_length, output_length and "
                                    "hash_ids)"));
        }
        if (seen[field]) return Error(absl::StrCat("field \"", *key, "\" appears twice"));
        seen[field] = true;
        absl::Status parsed;
        if (field == 3) {
          parsed = HashIds(request.hash_ids);
        } else {
          uint64_t* target[] = {&request.timestamp_ms, &request.input_length,
                                &request.output_length};
          absl::StatusOr<uint64_t> value = Integer(*key);
          if (value.ok()) *target[field] = *value;
          parsed = value.status();
        }
        if (!parsed.ok()) return parsed;
        if (Consume(',')) continue;
        if (Consume('}')) break;
        return Error(absl::StrCat("expected ',' or '}' after field \"", *key, "\""));
      }
    }
    SkipSpace();
    if (pos_ != text_.size()) return Error("unexpected text after the request object");
    for (size_t field = 0; field < 4; ++field) {
      if (!seen[field]) {
        return absl::InvalidArgumentError(
            absl::StrCat("line ", line_, ": missing field \"", kFields[field], "\""));
      }
    }
    return request;
  }

 private:
  absl::Status Error(absl::string_view what) const {
    return absl::InvalidArgumentError(
        absl::StrCat("line ", line_, ", column ", pos_ + 1, ": ", what));
  }
  void SkipSpace() {
    while (pos_ < text_.size() && (text_[pos_] == ' ' || text_[pos_] == '\t' ||
                                   text_[pos_] == '\r' || text_[pos_] == '\n')) {
      ++pos_;
    }
  }
  bool Consume(char c) {
    SkipSpace();
    if (pos_ < text_.size() && text_[pos_] == c) {
      ++pos_;
      return true;
    }
    return false;
  }

  absl::StatusOr<absl::string_view> Key() {
    if (!Consume('"')) return Error("expected a field name in double quotes");
    const size_t start = pos_;
    while (pos_ < text_.size() && text_[pos_] != '"') {
      if (text_[pos_] == '\\') return Error("escape sequences in field names are not supported");
      ++pos_;
    }
    if (pos_ == text_.size()) return Error("unterminated field name");
    return text_.substr(start, pos_++ - start);
  }

  absl::StatusOr<uint64_t> Integer(absl::string_view field) {
    SkipSpace();
    const std::string expected =
        absl::StrCat("field \"", field, "\": expected a non-negative integer");
    if (pos_ >= text_.size() || text_[pos_] < '0' || text_[pos_] > '9') return Error(expected);
    uint64_t value = 0;
    while (pos_ < text_.size() && text_[pos_] >= '0' && text_[pos_] <= '9') {
      const uint64_t digit = static_cast<uint64_t>(text_[pos_] - '0');
      if (value > (~0ull - digit) / 10) {
        return Error(absl::StrCat("field \"", field, "\": number does not fit in 64 bits"));
      }
      value = value * 10 + digit;
      ++pos_;
    }
    if (pos_ < text_.size() && (text_[pos_] == '.' || text_[pos_] == 'e' || text_[pos_] == 'E')) {
      return Error(expected);
    }
    return value;
  }

  absl::Status HashIds(std::vector<uint64_t>& ids) {
    if (!Consume('[')) return Error("field \"hash_ids\": expected '['");
    if (Consume(']')) return absl::OkStatus();
    absl::flat_hash_set<uint64_t> seen;
    while (true) {
      absl::StatusOr<uint64_t> id = Integer("hash_ids");
      if (!id.ok()) return id.status();
      // A chained id names a whole prefix, so it cannot occur twice in one request.
      if (!seen.insert(*id).second) {
        return Error(absl::StrCat("field \"hash_ids\": id ", *id, " appears twice"));
      }
      ids.push_back(*id);
      if (Consume(',')) continue;
      if (Consume(']')) return absl::OkStatus();
      return Error("field \"hash_ids\": expected ',' or ']'");
    }
  }

  absl::string_view text_;
  size_t line_;
  size_t pos_ = 0;
};

// Belady's MIN: evicts the block whose next use is farthest away, the deepest one among equals
// (a chain's blocks share their next use, so the chain is cut from its end). The replay keeps
// `next_use[handle]` current before each Insert/Access.
class BeladyPolicy final : public EvictionPolicy {
 public:
  explicit BeladyPolicy(const std::vector<uint64_t>* next_use) : next_use_(next_use) {}

  void Insert(uint64_t handle, const BlockTraits& traits, uint64_t now) override {
    if (entries_.contains(handle)) {
      Access(handle, now);
      return;
    }
    Key key{(*next_use_)[handle], traits.depth, ++seq_, handle};
    entries_.emplace(handle, key);
    order_.insert(key);
  }
  void Access(uint64_t handle, uint64_t) override {
    auto it = entries_.find(handle);
    if (it == entries_.end()) return;
    order_.erase(it->second);
    it->second.next_use = (*next_use_)[handle];
    it->second.seq = ++seq_;
    order_.insert(it->second);
  }
  void Erase(uint64_t handle) override {
    auto it = entries_.find(handle);
    if (it == entries_.end()) return;
    order_.erase(it->second);
    entries_.erase(it);
  }
  std::optional<uint64_t> Victim(const std::function<bool(uint64_t)>& evictable) override {
    for (const Key& key : order_) {
      if (evictable(key.handle)) return key.handle;
    }
    return std::nullopt;
  }
  std::string_view name() const override { return "min"; }
  size_t size() const override { return entries_.size(); }

 private:
  struct Key {
    uint64_t next_use = 0;
    uint32_t depth = 0;
    uint64_t seq = 0;
    uint64_t handle = 0;
    friend bool operator<(const Key& a, const Key& b) {  // first = best victim
      if (a.next_use != b.next_use) return a.next_use > b.next_use;
      if (a.depth != b.depth) return a.depth > b.depth;
      return a.seq < b.seq;
    }
  };
  const std::vector<uint64_t>* next_use_;
  absl::flat_hash_map<uint64_t, Key> entries_;
  std::set<Key> order_;
  uint64_t seq_ = 0;
};

struct Tier {
  std::unique_ptr<EvictionPolicy> policy;
  TierResult result;
  uint64_t resident = 0;
};

}  // namespace

absl::StatusOr<TraceRequest> ParseTraceLine(std::string_view line, size_t line_number) {
  return LineParser(AsAbsl(line), line_number).Parse();
}

absl::StatusOr<Trace> ParseTrace(std::string_view text, size_t max_requests) {
  Trace trace;
  absl::flat_hash_set<uint64_t> unique;
  size_t line_number = 0;
  while (!text.empty() && (max_requests == 0 || trace.requests.size() < max_requests)) {
    const size_t end = std::min(text.find('\n'), text.size());
    const std::string_view line = text.substr(0, end);
    text.remove_prefix(std::min(end + 1, text.size()));
    ++line_number;
    if (line.find_first_not_of(" \t\r") == std::string_view::npos) continue;
    absl::StatusOr<TraceRequest> request = ParseTraceLine(line, line_number);
    if (!request.ok()) return request.status();
    trace.blocks += request->hash_ids.size();
    unique.insert(request->hash_ids.begin(), request->hash_ids.end());
    trace.requests.push_back(*std::move(request));
  }
  trace.unique_blocks = unique.size();
  return trace;
}

absl::StatusOr<Trace> ReadTraceFile(const std::string& path, size_t max_requests) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open trace file ", path));
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) return absl::DataLossError(absl::StrCat("error reading trace file ", path));
  absl::StatusOr<Trace> trace = ParseTrace(text, max_requests);
  if (!trace.ok()) {
    return absl::Status(trace.status().code(), absl::StrCat(path, ": ", trace.status().message()));
  }
  return trace;
}

absl::StatusOr<ReplayPolicy> ParseReplayPolicy(std::string_view name) {
  if (name == "min") return ReplayPolicy{.belady = true};
  absl::StatusOr<storenode::PolicyKind> kind = storenode::ParsePolicyKind(name);
  if (!kind.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("unknown replay policy \"", AsAbsl(name),
                                                   "\": expected lru, lfu, prefix, cost or min"));
  }
  return ReplayPolicy{.belady = false, .kind = *kind};
}

std::string ReplayPolicyName(const ReplayPolicy& policy) {
  return policy.belady ? "min" : std::string(storenode::PolicyKindName(policy.kind));
}

std::vector<ReplayPolicy> AllReplayPolicies() {
  using storenode::PolicyKind;
  return {ReplayPolicy{.belady = true}, ReplayPolicy{.kind = PolicyKind::kLru},
          ReplayPolicy{.kind = PolicyKind::kLfu}, ReplayPolicy{.kind = PolicyKind::kPrefix},
          ReplayPolicy{.kind = PolicyKind::kCost}};
}

absl::StatusOr<ReplayResult> ReplayTrace(const Trace& trace, const ReplayConfig& config) {
  if (config.capacity_blocks == 0) {
    return absl::InvalidArgumentError("cache capacity must be at least 1 block");
  }
  // Dense handles let the per-block state live in vectors.
  absl::flat_hash_map<uint64_t, uint64_t> dense;
  std::vector<uint64_t> ids;
  std::vector<size_t> starts;
  for (const TraceRequest& request : trace.requests) {
    starts.push_back(ids.size());
    for (uint64_t hash : request.hash_ids) {
      ids.push_back(dense.try_emplace(hash, dense.size()).first->second);
    }
  }
  starts.push_back(ids.size());
  const size_t requests = trace.requests.size();

  // next_at[pos]: index of the next request using the block at position `pos`.
  std::vector<uint64_t> next_at(ids.size());
  {
    std::vector<uint64_t> upcoming(dense.size(), kNever);
    for (size_t r = requests; r-- > 0;) {
      for (size_t pos = starts[r]; pos < starts[r + 1]; ++pos) next_at[pos] = upcoming[ids[pos]];
      for (size_t pos = starts[r]; pos < starts[r + 1]; ++pos) upcoming[ids[pos]] = r;
    }
  }

  std::vector<uint64_t> next_use(dense.size(), kNever);  // read by Belady
  std::vector<BlockTraits> traits(dense.size());
  std::vector<uint8_t> where(dense.size(), 0);  // 0: not cached, else 1 + tier index
  std::vector<Tier> tiers(config.cool_blocks > 0 ? 2 : 1);
  for (size_t t = 0; t < tiers.size(); ++t) {
    tiers[t].policy = config.policy.belady
                          ? std::make_unique<BeladyPolicy>(&next_use)
                          : storenode::MakeEvictionPolicy(config.policy.kind, config.options);
    tiers[t].result.name = tiers.size() == 1 ? "cache" : (t == 0 ? "warm" : "cool");
    tiers[t].result.capacity_blocks = t == 0 ? config.capacity_blocks : config.cool_blocks;
  }

  ReplayResult result;
  const auto evictable = [](uint64_t) { return true; };
  // Evicts from tier t until it fits, demoting each victim to the next tier if there is one.
  const auto fit = [&](size_t t, uint64_t now, const auto& self) -> void {
    Tier& tier = tiers[t];
    while (tier.resident > tier.result.capacity_blocks) {
      const std::optional<uint64_t> victim = tier.policy->Victim(evictable);
      if (!victim.has_value()) return;  // every block is evictable; kept for safety
      tier.policy->Erase(*victim);
      --tier.resident;
      ++tier.result.evictions;
      where[*victim] = 0;
      if (t + 1 == tiers.size()) {
        ++result.evictions;
        continue;
      }
      tiers[t + 1].policy->Insert(*victim, traits[*victim], now);
      ++tiers[t + 1].resident;
      where[*victim] = static_cast<uint8_t>(t + 2);
      self(t + 1, now, self);
    }
  };

  for (size_t r = 0; r < requests; ++r) {
    const size_t begin = starts[r];
    const size_t end = starts[r + 1];
    size_t pos = begin;
    for (; pos < end && where[ids[pos]] != 0; ++pos) ++tiers[where[ids[pos]] - 1].result.hit_blocks;
    result.hit_blocks += pos - begin;
    if (pos == end && end > begin) ++result.full_hit_requests;

    for (pos = begin; pos < end; ++pos) {
      const uint64_t id = ids[pos];
      next_use[id] = next_at[pos];
      BlockTraits& t = traits[id];
      t.size = 1;
      t.depth = static_cast<uint32_t>(pos - begin);
      t.parent = pos > begin ? ids[pos - 1] : kNoBlock;
      if (where[id] == 1) {
        tiers[0].policy->Access(id, r);
        continue;
      }
      if (where[id] == 2) {  // promote
        tiers[1].policy->Erase(id);
        --tiers[1].resident;
      }
      tiers[0].policy->Insert(id, t, r);
      ++tiers[0].resident;
      where[id] = 1;
      fit(0, r, fit);
    }
  }

  result.policy = ReplayPolicyName(config.policy);
  result.requests = requests;
  result.blocks = ids.size();
  result.unique_blocks = dense.size();
  result.capacity_blocks = config.capacity_blocks + config.cool_blocks;
  result.prefix_hit_ratio =
      ids.empty() ? 0 : static_cast<double>(result.hit_blocks) / static_cast<double>(ids.size());
  for (Tier& tier : tiers) result.tiers.push_back(tier.result);
  return result;
}

namespace {

absl::StatusOr<std::vector<double>> ParseFractions(absl::string_view text) {
  std::vector<double> fractions;
  for (absl::string_view part : absl::StrSplit(text, ',')) {
    part = absl::StripAsciiWhitespace(part);
    double fraction = 0;
    if (!absl::SimpleAtod(part, &fraction) || !(fraction > 0 && fraction <= 1)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--fractions: \"", part, "\" is not a fraction in (0, 1]"));
    }
    fractions.push_back(fraction);
  }
  return fractions;
}

uint64_t CapacityFor(double fraction, uint64_t unique_blocks) {
  return std::max<uint64_t>(1,
                            static_cast<uint64_t>(fraction * static_cast<double>(unique_blocks)));
}

// One replay with its ratio to min at the same capacity.
struct Cell {
  ReplayResult result;
  double capacity_fraction = 0;
  double vs_min = 1;
};

std::string ResultJson(const Cell& cell) {
  const ReplayResult& r = cell.result;
  std::string out = absl::StrFormat(
      "\"policy\": \"%s\", \"capacity_blocks\": %d, \"capacity_fraction\": %.6g, "
      "\"prefix_hit_ratio\": %.6f, \"ratio_to_min\": %.4f, \"hit_blocks\": %d, "
      "\"full_hit_requests\": %d, \"evictions\": %d",
      r.policy, r.capacity_blocks, cell.capacity_fraction, r.prefix_hit_ratio, cell.vs_min,
      r.hit_blocks, r.full_hit_requests, r.evictions);
  if (r.tiers.size() > 1) {
    absl::StrAppend(&out, ", \"tiers\": [");
    for (size_t t = 0; t < r.tiers.size(); ++t) {
      const TierResult& tier = r.tiers[t];
      absl::StrAppendFormat(&out,
                            "%s{\"name\": \"%s\", \"capacity_blocks\": %d, \"hit_blocks\": %d, "
                            "\"hit_ratio\": %.6f, \"evictions\": %d}",
                            t ? ", " : "", tier.name, tier.capacity_blocks, tier.hit_blocks,
                            r.blocks ? static_cast<double>(tier.hit_blocks) / r.blocks : 0.0,
                            tier.evictions);
    }
    absl::StrAppend(&out, "]");
  }
  return out;
}

std::string TraceJson(const Trace& trace) {
  return absl::StrFormat("\"requests\": %d, \"blocks\": %d, \"unique_blocks\": %d",
                         trace.requests.size(), trace.blocks, trace.unique_blocks);
}

std::string TraceText(const Trace& trace) {
  return absl::StrFormat("trace: %d requests, %d blocks, %d unique blocks\n", trace.requests.size(),
                         trace.blocks, trace.unique_blocks);
}

std::string RenderSingle(const Trace& trace, const Cell& cell, const Cell& min, bool json) {
  const ReplayResult& r = cell.result;
  if (json) {
    return absl::StrFormat("{%s, %s, \"min_prefix_hit_ratio\": %.6f}\n", TraceJson(trace),
                           ResultJson(cell), min.result.prefix_hit_ratio);
  }
  std::string out = TraceText(trace);
  absl::StrAppendFormat(&out, "policy: %s, capacity %d blocks (%.2f%% of unique blocks)\n",
                        r.policy, r.capacity_blocks, 100 * cell.capacity_fraction);
  absl::StrAppendFormat(&out, "prefix_hit_ratio: %.4f (%d hit blocks)\n", r.prefix_hit_ratio,
                        r.hit_blocks);
  absl::StrAppendFormat(&out, "min (Belady) reaches %.4f; this policy reaches %.3f of it\n",
                        min.result.prefix_hit_ratio, cell.vs_min);
  absl::StrAppendFormat(&out, "evictions: %d\n", r.evictions);
  for (const TierResult& tier : r.tiers) {
    if (r.tiers.size() == 1) break;
    absl::StrAppendFormat(&out, "%s: %d blocks, %d hit blocks, %d evictions\n", tier.name,
                          tier.capacity_blocks, tier.hit_blocks, tier.evictions);
  }
  return out;
}

std::string RenderPolicies(const Trace& trace, const std::vector<Cell>& cells, bool json) {
  std::string out;
  if (json) {
    out = absl::StrCat("{", TraceJson(trace), ", \"results\": [");
    for (size_t i = 0; i < cells.size(); ++i) {
      absl::StrAppend(&out, i ? ", " : "", "{", ResultJson(cells[i]), "}");
    }
    return absl::StrCat(out, "]}\n");
  }
  const ReplayResult& first = cells.front().result;
  const bool tiered = first.tiers.size() > 1;
  out = TraceText(trace);
  if (tiered) {
    absl::StrAppendFormat(&out, "tiers: warm %d blocks, cool %d blocks\n",
                          first.tiers[0].capacity_blocks, first.tiers[1].capacity_blocks);
  } else {
    absl::StrAppendFormat(&out, "capacity: %d blocks (%.2f%% of unique blocks)\n",
                          first.capacity_blocks, 100 * cells.front().capacity_fraction);
  }
  absl::StrAppendFormat(&out, "%-8s %-16s %-7s %-11s %-10s%s\n", "policy", "prefix_hit_ratio",
                        "vs_min", "hit_blocks", "evictions", tiered ? " warm_hits cool_hits" : "");
  for (const Cell& cell : cells) {
    const ReplayResult& r = cell.result;
    absl::StrAppendFormat(&out, "%-8s %-16.4f %-7.3f %-11d %-10d", r.policy, r.prefix_hit_ratio,
                          cell.vs_min, r.hit_blocks, r.evictions);
    if (tiered) {
      absl::StrAppendFormat(&out, " %-9d %d", r.tiers[0].hit_blocks, r.tiers[1].hit_blocks);
    }
    absl::StrAppend(&out, "\n");
  }
  return out;
}

// cells[c * policies + p]: capacity c, policy p.
std::string RenderFractions(const Trace& trace, const std::vector<Cell>& cells, size_t policies) {
  std::string out = TraceText(trace);
  absl::StrAppendFormat(&out,
                        "prefix_hit_ratio (ratio to min) by capacity, as a fraction of the %d "
                        "unique blocks\n%-8s",
                        trace.unique_blocks, "policy");
  const size_t capacities = cells.size() / policies;
  for (size_t c = 0; c < capacities; ++c) {
    const Cell& cell = cells[c * policies];
    absl::StrAppendFormat(
        &out, " %-15s",
        absl::StrFormat("%g%% (%d)", 100 * cell.capacity_fraction, cell.result.capacity_blocks));
  }
  absl::StrAppend(&out, "\n");
  for (size_t p = 0; p < policies; ++p) {
    absl::StrAppendFormat(&out, "%-8s", cells[p].result.policy);
    for (size_t c = 0; c < capacities; ++c) {
      const Cell& cell = cells[c * policies + p];
      const std::string text =
          cell.result.policy == "min"
              ? absl::StrFormat("%.4f", cell.result.prefix_hit_ratio)
              : absl::StrFormat("%.4f (%.2f)", cell.result.prefix_hit_ratio, cell.vs_min);
      absl::StrAppendFormat(&out, " %-15s", text);
    }
    absl::StrAppend(&out, "\n");
  }
  return out;
}

}  // namespace

absl::Status ValidateBenchTraceFlags(const BenchTraceFlags& flags) {
  const int modes = flags.capacity_blocks.has_value() + flags.capacity_fraction.has_value() +
                    flags.fractions.has_value() +
                    (flags.warm_blocks.has_value() || flags.cool_blocks.has_value());
  if (modes != 1) {
    return absl::InvalidArgumentError(
        "give exactly one of --capacity-blocks, --capacity-fraction, --fractions, or "
        "--warm-blocks with --cool-blocks");
  }
  if (flags.warm_blocks.has_value() != flags.cool_blocks.has_value()) {
    return absl::InvalidArgumentError("--warm-blocks and --cool-blocks go together");
  }
  for (const auto& [name, value] : {std::pair{"--capacity-blocks", flags.capacity_blocks},
                                    std::pair{"--warm-blocks", flags.warm_blocks},
                                    std::pair{"--cool-blocks", flags.cool_blocks},
                                    std::pair{"--requests", flags.max_requests}}) {
    if (value.has_value() && *value < 1) {
      return absl::InvalidArgumentError(absl::StrCat(name, " must be at least 1, got ", *value));
    }
  }
  if (flags.capacity_fraction.has_value() &&
      !(*flags.capacity_fraction > 0 && *flags.capacity_fraction <= 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--capacity-fraction must be in (0, 1], got ", *flags.capacity_fraction));
  }
  if (flags.fractions.has_value()) {
    if (absl::Status s = ParseFractions(*flags.fractions).status(); !s.ok()) return s;
  }
  if (flags.policy.has_value()) {
    if (flags.all_policies) {
      return absl::InvalidArgumentError("give --policy or --all-policies, not both");
    }
    if (absl::Status s = ParseReplayPolicy(*flags.policy).status(); !s.ok()) return s;
  } else if (!flags.all_policies && !flags.fractions.has_value()) {
    return absl::InvalidArgumentError("give --policy NAME or --all-policies");
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> RunBenchTrace(const Trace& trace, const BenchTraceFlags& flags) {
  if (absl::Status s = ValidateBenchTraceFlags(flags); !s.ok()) return s;
  if (trace.unique_blocks == 0) return absl::InvalidArgumentError("the trace has no blocks");
  // min always runs: every other policy is reported as a ratio to it.
  std::vector<ReplayPolicy> policies = AllReplayPolicies();
  if (flags.policy.has_value()) policies = {*ParseReplayPolicy(*flags.policy)};
  if (!policies.front().belady) policies.insert(policies.begin(), ReplayPolicy{.belady = true});

  std::vector<double> fractions;
  if (flags.fractions.has_value()) {
    fractions = *ParseFractions(*flags.fractions);
  } else if (flags.capacity_fraction.has_value()) {
    fractions = {*flags.capacity_fraction};
  }
  std::vector<uint64_t> capacities;
  for (double fraction : fractions)
    capacities.push_back(CapacityFor(fraction, trace.unique_blocks));
  if (flags.capacity_blocks.has_value())
    capacities = {static_cast<uint64_t>(*flags.capacity_blocks)};
  if (flags.warm_blocks.has_value()) capacities = {static_cast<uint64_t>(*flags.warm_blocks)};

  std::vector<Cell> cells;
  for (size_t c = 0; c < capacities.size(); ++c) {
    const uint64_t capacity = capacities[c];
    const size_t min_cell = cells.size();
    for (const ReplayPolicy& policy : policies) {
      ReplayConfig config;
      config.policy = policy;
      config.capacity_blocks = capacity;
      config.cool_blocks = static_cast<uint64_t>(flags.cool_blocks.value_or(0));
      absl::StatusOr<ReplayResult> result = ReplayTrace(trace, config);
      if (!result.ok()) return result.status();
      Cell cell{.result = *std::move(result)};
      cell.capacity_fraction = c < fractions.size()
                                   ? fractions[c]
                                   : static_cast<double>(cell.result.capacity_blocks) /
                                         static_cast<double>(trace.unique_blocks);
      const double min_ratio = cells.size() > min_cell ? cells[min_cell].result.prefix_hit_ratio
                                                       : cell.result.prefix_hit_ratio;
      cell.vs_min = min_ratio > 0 ? cell.result.prefix_hit_ratio / min_ratio : 1.0;
      cells.push_back(std::move(cell));
    }
  }
  if (!flags.all_policies && !flags.fractions.has_value()) {
    return RenderSingle(trace, cells.back(), cells.front(), flags.json);
  }
  if (flags.fractions.has_value() && !flags.json) {
    return RenderFractions(trace, cells, policies.size());
  }
  return RenderPolicies(trace, cells, flags.json);
}

}  // namespace strata::cli
