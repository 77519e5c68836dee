#include "trace_replay.h"

#include <cstdlib>
#include <filesystem>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "strata/testutil/status_matchers.h"

namespace strata::cli {
namespace {

using ::strata::testutil::IsOk;
using ::strata::testutil::StatusIs;
using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr absl::StatusCode kInvalid = absl::StatusCode::kInvalidArgument;

Trace MakeTrace(std::vector<std::vector<uint64_t>> requests) {
  Trace trace;
  absl::flat_hash_set<uint64_t> unique;
  for (std::vector<uint64_t>& ids : requests) {
    trace.blocks += ids.size();
    unique.insert(ids.begin(), ids.end());
    trace.requests.push_back(TraceRequest{.hash_ids = std::move(ids)});
  }
  trace.unique_blocks = unique.size();
  return trace;
}

ReplayResult Replay(const Trace& trace, std::string_view policy, uint64_t capacity,
                    uint64_t cool = 0) {
  ReplayConfig config;
  config.policy = *ParseReplayPolicy(policy);
  config.capacity_blocks = capacity;
  config.cool_blocks = cool;
  absl::StatusOr<ReplayResult> result = ReplayTrace(trace, config);
  EXPECT_THAT(result, IsOk());
  return result.ok() ? *result : ReplayResult{};
}

// Requests walking a random tree of chained ids, so equal ids always mean equal prefixes.
Trace RandomChainTrace(uint64_t seed, int requests) {
  std::mt19937_64 rng(seed);
  absl::flat_hash_map<std::pair<uint64_t, uint64_t>, uint64_t> child_of;
  std::vector<std::vector<uint64_t>> out;
  for (int r = 0; r < requests; ++r) {
    std::vector<uint64_t> ids;
    uint64_t parent = ~0ull;
    const uint64_t length = 1 + rng() % 12;
    for (uint64_t depth = 0; depth < length; ++depth) {
      // Skewed roots, mostly-shared continuations, occasional branches.
      const uint64_t branch =
          depth == 0 ? (rng() % 6) * (rng() % 6) : (rng() % 10 < 7 ? 0 : rng() % 4);
      auto [it, inserted] = child_of.try_emplace({parent, branch}, child_of.size());
      ids.push_back(it->second);
      parent = it->second;
    }
    out.push_back(std::move(ids));
  }
  return MakeTrace(std::move(out));
}

TEST(ParseTraceLineTest, ParsesAMooncakeLine) {
  absl::StatusOr<TraceRequest> request = ParseTraceLine(
      R"({"timestamp": 27, "input_length": 6758, "output_length": 500, "hash_ids": [0, 1, 17]})",
      1);
  ASSERT_THAT(request, IsOk());
  EXPECT_EQ(request->timestamp_ms, 27u);
  EXPECT_EQ(request->input_length, 6758u);
  EXPECT_EQ(request->output_length, 500u);
  EXPECT_THAT(request->hash_ids, ElementsAre(0u, 1u, 17u));
}

TEST(ParseTraceLineTest, AcceptsAnyFieldOrderAndSpacing) {
  absl::StatusOr<TraceRequest> request = ParseTraceLine(
      "\t{\"hash_ids\":[],\"output_length\":0,\"input_length\":0 , "
      "\"timestamp\":18446744073709551615 }\r",
      3);
  ASSERT_THAT(request, IsOk());
  EXPECT_EQ(request->timestamp_ms, ~0ull);
  EXPECT_TRUE(request->hash_ids.empty());
}

TEST(ParseTraceLineTest, ErrorsNameTheLineAndTheProblem) {
  const std::string tail = R"("input_length": 1, "output_length": 1, "hash_ids": [1]})";
  const std::pair<std::string, std::string> cases[] = {
      {"[1, 2]", "expected '{'"},
      {R"({"timestamp": 1})", "missing field \"input_length\""},
      {R"({"timestamp": -1, )" + tail, "non-negative integer"},
      {R"({"timestamp": 1.5, )" + tail, "non-negative integer"},
      {R"({"timestamp": 18446744073709551616, )" + tail, "does not fit in 64 bits"},
      {R"({"timestamp": 1, "timestamp": 2, )" + tail, "\"timestamp\" appears twice"},
      {R"({"timestamp": 1, "session": 2, )" + tail, "unknown field \"session\""},
      {R"({"timestamp": 1, "input_length": 1, "output_length": 1, "hash_ids": [4, 4]})",
       "id 4 appears twice"},
      {R"({"timestamp": 1, "input_length": 1, "output_length": 1, "hash_ids": [4 5]})",
       "expected ',' or ']'"},
      {R"({"timestamp": 1, "input_length": 1, "output_length": 1, "hash_ids": 4})", "expected '['"},
      {R"({"timestamp": 1, )" + tail + " x", "unexpected text"},
      {R"({"timestamp" 1})", "expected ':' after \"timestamp\""},
      {R"({"timest)", "unterminated field name"},
      {R"({"timestamp": 1 "input_length": 1})", "expected ',' or '}'"},
      {"", "expected '{'"},
  };
  for (const auto& [line, problem] : cases) {
    SCOPED_TRACE(line);
    EXPECT_THAT(ParseTraceLine(line, 7),
                StatusIs(kInvalid, AllOf(HasSubstr("line 7"), HasSubstr(problem))));
  }
}

TEST(ParseTraceTest, CountsBlocksSkipsBlankLinesAndNumbersLinesFromOne) {
  const std::string good1 =
      R"({"timestamp": 0, "input_length": 600, "output_length": 5, "hash_ids": [0, 1]})";
  const std::string good2 =
      R"({"timestamp": 9, "input_length": 1100, "output_length": 5, "hash_ids": [0, 1, 2]})";
  absl::StatusOr<Trace> trace = ParseTrace(good1 + "\r\n\n" + good2 + "\n");
  ASSERT_THAT(trace, IsOk());
  EXPECT_EQ(trace->requests.size(), 2u);
  EXPECT_EQ(trace->blocks, 5u);
  EXPECT_EQ(trace->unique_blocks, 3u);

  absl::StatusOr<Trace> first = ParseTrace(good1 + "\n" + good2 + "\nnot json\n", 2);
  ASSERT_THAT(first, IsOk());  // stops before the bad line
  EXPECT_EQ(first->requests.size(), 2u);

  EXPECT_THAT(ParseTrace(good1 + "\n\n" + good2 + "\n{\"timestamp\": x}\n"),
              StatusIs(kInvalid, HasSubstr("line 4")));
}

TEST(ReadTraceFileTest, MissingFileIsNotFound) {
  EXPECT_THAT(ReadTraceFile("/nonexistent/strata/trace.jsonl"),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("/nonexistent/strata/trace.jsonl")));
}

TEST(ParseReplayPolicyTest, KnowsMinAndTheStoreNodePolicies) {
  EXPECT_TRUE(ParseReplayPolicy("min")->belady);
  EXPECT_EQ(ParseReplayPolicy("cost")->kind, storenode::PolicyKind::kCost);
  EXPECT_FALSE(ParseReplayPolicy("cost")->belady);
  EXPECT_EQ(ReplayPolicyName(*ParseReplayPolicy("prefix")), "prefix");
  EXPECT_THAT(ParseReplayPolicy("belady"), StatusIs(kInvalid, HasSubstr("cost or min")));
}

TEST(ReplayTraceTest, LruAndMinOnAHandMadeTrace) {
  // Capacity 2. r0 admits 1, 2; r1 hits both; r2 admits 3: LRU evicts 1, so r3 misses its
  // first block and its resident block 2 does not count. min drops 3 (never used again).
  const Trace trace = MakeTrace({{1, 2}, {1, 2}, {3}, {1, 2}});
  const ReplayResult lru = Replay(trace, "lru", 2);
  EXPECT_EQ(lru.requests, 4u);
  EXPECT_EQ(lru.blocks, 7u);
  EXPECT_EQ(lru.unique_blocks, 3u);
  EXPECT_EQ(lru.hit_blocks, 2u);
  EXPECT_DOUBLE_EQ(lru.prefix_hit_ratio, 2.0 / 7);
  EXPECT_EQ(lru.full_hit_requests, 1u);
  const ReplayResult min = Replay(trace, "min", 2);
  EXPECT_EQ(min.hit_blocks, 4u);
  EXPECT_DOUBLE_EQ(min.prefix_hit_ratio, 4.0 / 7);
  EXPECT_EQ(min.full_hit_requests, 2u);
}

TEST(ReplayTraceTest, PrefixHitsStopAtTheFirstMiss) {
  // LRU, capacity 3: r1 evicts 2, so r2 hits 1, misses 2 and does not count resident 3.
  const ReplayResult lru = Replay(MakeTrace({{1, 2, 3}, {1, 5}, {1, 2, 3}}), "lru", 3);
  EXPECT_EQ(lru.hit_blocks, 2u);
  ASSERT_EQ(lru.tiers.size(), 1u);
  EXPECT_EQ(lru.tiers[0].hit_blocks, 2u);
}

TEST(ReplayTraceTest, TwoTiersDemoteAndPromote) {
  // Warm 1, cool 1: r1 demotes 1 to cool; r2 finds 1 in cool, promotes it and demotes 2.
  const ReplayResult result = Replay(MakeTrace({{1}, {2}, {1}}), "lru", 1, 1);
  ASSERT_EQ(result.tiers.size(), 2u);
  EXPECT_EQ(result.tiers[0].name, "warm");
  EXPECT_EQ(result.tiers[0].hit_blocks, 0u);
  EXPECT_EQ(result.tiers[0].evictions, 2u);
  EXPECT_EQ(result.tiers[1].name, "cool");
  EXPECT_EQ(result.tiers[1].hit_blocks, 1u);
  EXPECT_EQ(result.tiers[1].evictions, 0u);
  EXPECT_EQ(result.hit_blocks, 1u);
  EXPECT_EQ(result.capacity_blocks, 2u);
}

TEST(ReplayTraceTest, ZeroCapacityIsInvalid) {
  ReplayConfig config;
  EXPECT_THAT(ReplayTrace(MakeTrace({{1}}), config), StatusIs(kInvalid));
}

TEST(ReplayTraceTest, MinIsAtLeastEveryPolicyOnRandomChains) {
  for (uint64_t seed : {1u, 2u, 3u}) {
    const Trace trace = RandomChainTrace(seed, 400);
    for (uint64_t capacity : {1u, 3u, 8u, 20u, 60u}) {
      const ReplayResult min = Replay(trace, "min", capacity);
      for (std::string_view policy : {"lru", "lfu", "prefix", "cost"}) {
        const ReplayResult other = Replay(trace, policy, capacity);
        EXPECT_GE(min.hit_blocks, other.hit_blocks)
            << policy << " seed " << seed << " capacity " << capacity;
      }
    }
  }
}

TEST(ReplayTraceTest, FirstLinesOfTheSharedMooncakeTrace) {
  const char* source = std::getenv("STRATA_SOURCE_DIR");
  const std::string path =
      std::string(source ? source : "") + "/../shared/data/mooncake-traces/synthetic_trace.jsonl";
  if (source == nullptr || !std::filesystem::exists(path)) GTEST_SKIP() << "no " << path;
  absl::StatusOr<Trace> trace = ReadTraceFile(path, 300);
  ASSERT_THAT(trace, IsOk());
  ASSERT_EQ(trace->requests.size(), 300u);
  const uint64_t capacity = trace->unique_blocks / 20;
  const ReplayResult min = Replay(*trace, "min", capacity);
  EXPECT_EQ(min.requests, 300u);
  for (std::string_view policy : {"min", "lru", "lfu", "prefix", "cost"}) {
    const ReplayResult result = Replay(*trace, policy, capacity);
    EXPECT_GE(result.prefix_hit_ratio, 0.0) << policy;
    EXPECT_LE(result.prefix_hit_ratio, 1.0) << policy;
    EXPECT_GE(min.hit_blocks, result.hit_blocks) << policy;
  }
  EXPECT_GT(min.hit_blocks, 0u);
}

TEST(BenchTraceFlagsTest, RejectsInvalidCombinations) {
  const auto with = [](auto edit) {
    BenchTraceFlags flags;
    flags.trace_path = "t.jsonl";
    flags.policy = "lru";
    flags.capacity_blocks = 10;
    edit(flags);
    return ValidateBenchTraceFlags(flags);
  };
  EXPECT_THAT(with([](BenchTraceFlags&) {}), IsOk());
  EXPECT_THAT(with([](BenchTraceFlags& f) { f.capacity_blocks.reset(); }),
              StatusIs(kInvalid, HasSubstr("exactly one")));
  EXPECT_THAT(with([](BenchTraceFlags& f) { f.fractions = "0.1"; }),
              StatusIs(kInvalid, HasSubstr("exactly one")));
  EXPECT_THAT(with([](BenchTraceFlags& f) {
                f.capacity_blocks.reset();
                f.warm_blocks = 4;
              }),
              StatusIs(kInvalid, HasSubstr("go together")));
  EXPECT_THAT(with([](BenchTraceFlags& f) { f.capacity_blocks = 0; }),
              StatusIs(kInvalid, HasSubstr("--capacity-blocks must be at least 1")));
  EXPECT_THAT(with([](BenchTraceFlags& f) {
                f.capacity_blocks.reset();
                f.capacity_fraction = 1.5;
              }),
              StatusIs(kInvalid, HasSubstr("(0, 1]")));
  EXPECT_THAT(with([](BenchTraceFlags& f) {
                f.capacity_blocks.reset();
                f.fractions = "0.01,abc";
              }),
              StatusIs(kInvalid, HasSubstr("\"abc\"")));
  EXPECT_THAT(with([](BenchTraceFlags& f) { f.all_policies = true; }),
              StatusIs(kInvalid, HasSubstr("not both")));
  EXPECT_THAT(with([](BenchTraceFlags& f) { f.policy.reset(); }),
              StatusIs(kInvalid, HasSubstr("--policy")));
  EXPECT_THAT(with([](BenchTraceFlags& f) { f.policy = "fifo"; }),
              StatusIs(kInvalid, HasSubstr("\"fifo\"")));
}

TEST(RunBenchTraceTest, RendersJsonTablesAndTiers) {
  const Trace trace = MakeTrace({{1, 2}, {1, 2}, {3}, {1, 2}});
  BenchTraceFlags flags;
  flags.policy = "lru";
  flags.capacity_blocks = 2;
  flags.json = true;
  absl::StatusOr<std::string> single = RunBenchTrace(trace, flags);
  ASSERT_THAT(single, IsOk());
  EXPECT_THAT(*single,
              AllOf(HasSubstr("\"requests\": 4"), HasSubstr("\"blocks\": 7"),
                    HasSubstr("\"unique_blocks\": 3"), HasSubstr("\"capacity_blocks\": 2"),
                    HasSubstr("\"policy\": \"lru\""), HasSubstr("\"prefix_hit_ratio\": 0.285714"),
                    HasSubstr("\"min_prefix_hit_ratio\": 0.571429"),
                    HasSubstr("\"ratio_to_min\": 0.5000")));

  flags = BenchTraceFlags();
  flags.fractions = "0.5,1";
  absl::StatusOr<std::string> table = RunBenchTrace(trace, flags);
  ASSERT_THAT(table, IsOk());
  EXPECT_THAT(*table, AllOf(HasSubstr("50% (1)"), HasSubstr("100% (3)"), HasSubstr("min "),
                            HasSubstr("cost "), HasSubstr("prefix ")));

  flags = BenchTraceFlags();
  flags.policy = "lru";
  flags.warm_blocks = 1;
  flags.cool_blocks = 1;
  flags.json = true;
  absl::StatusOr<std::string> tiers = RunBenchTrace(MakeTrace({{1}, {2}, {1}}), flags);
  ASSERT_THAT(tiers, IsOk());
  EXPECT_THAT(*tiers, AllOf(HasSubstr("\"name\": \"cool\""), HasSubstr("\"hit_blocks\": 1")));

  flags = BenchTraceFlags();
  flags.capacity_blocks = 1;
  flags.all_policies = true;
  EXPECT_THAT(RunBenchTrace(Trace{}, flags), StatusIs(kInvalid, HasSubstr("no blocks")));
}

}  // namespace
}  // namespace strata::cli
