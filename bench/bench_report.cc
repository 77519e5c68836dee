#include "bench_report.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "strata/common/byte_size.h"

namespace strata::bench {
namespace {

double Rate(double amount, double seconds) { return seconds > 0 ? amount / seconds : 0; }

// JSON string literal (the node address and status code names).
std::string JsonString(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') {
      absl::StrAppend(&out, "\\", std::string(1, c));
    } else if (static_cast<unsigned char>(c) < 0x20) {
      absl::StrAppendFormat(&out, "\\u%04x", c);
    } else {
      out.push_back(c);
    }
  }
  return out + "\"";
}

}  // namespace

void PhaseResult::Merge(const PhaseResult& other) {
  blocks += other.blocks;
  bytes += other.bytes;
  call_latencies_us.insert(call_latencies_us.end(), other.call_latencies_us.begin(),
                           other.call_latencies_us.end());
  errors += other.errors;
  for (const auto& [code, n] : other.errors_by_code) errors_by_code[code] += n;
  mismatches += other.mismatches;
  already_present += other.already_present;
  complete = complete && other.complete;
}

LatencySummary Summarize(std::vector<double> latencies_us) {
  LatencySummary s;
  if (latencies_us.empty()) return s;
  std::sort(latencies_us.begin(), latencies_us.end());
  auto rank = [&](double p) {
    size_t n = latencies_us.size();
    size_t i = static_cast<size_t>(std::ceil(p / 100.0 * static_cast<double>(n)));
    return latencies_us[std::clamp<size_t>(i, 1, n) - 1];
  };
  s.p50_us = rank(50);
  s.p90_us = rank(90);
  s.p99_us = rank(99);
  s.p999_us = rank(99.9);
  s.max_us = latencies_us.back();
  return s;
}

void PrintTable(std::FILE* out, const RunInfo& run, const std::vector<PhaseResult>& phases) {
  std::fprintf(out, "node %s: %llu blocks of %s, %u streams, batch %u, chains of %u blocks\n",
               run.node.c_str(), static_cast<unsigned long long>(run.blocks),
               FormatByteSize(run.block_size).c_str(), run.streams, run.batch, run.chain_blocks);
  if (run.mixed_seconds > 0) {
    std::fprintf(out, "mixed: %.0f s, %.0f%% of calls get, %llu fresh blocks for puts\n",
                 run.mixed_seconds, run.get_fraction * 100,
                 static_cast<unsigned long long>(run.fresh_blocks));
  }
  std::fprintf(out, "%-9s %8s %11s %8s %7s %9s %7s %8s %9s %9s %9s %9s %9s %6s %7s\n", "op",
               "blocks", "bytes", "seconds", "GB/s", "blocks/s", "calls", "calls/s", "p50_us",
               "p90_us", "p99_us", "p999_us", "max_us", "errors", "cpu_s");
  for (const PhaseResult& p : phases) {
    LatencySummary l = Summarize(p.call_latencies_us);
    std::fprintf(out,
                 "%-9s %8llu %11s %8.2f %7.3f %9.0f %7zu %8.1f %9.0f %9.0f %9.0f %9.0f %9.0f %6llu "
                 "%7.2f%s\n",
                 p.op.c_str(), static_cast<unsigned long long>(p.blocks),
                 FormatByteSize(p.bytes).c_str(), p.seconds, Rate(p.bytes, p.seconds) / 1e9,
                 Rate(p.blocks, p.seconds), p.call_latencies_us.size(),
                 Rate(p.call_latencies_us.size(), p.seconds), l.p50_us, l.p90_us, l.p99_us,
                 l.p999_us, l.max_us, static_cast<unsigned long long>(p.errors),
                 p.client_cpu_seconds, p.complete ? "" : "  (stopped by --max-seconds)");
    if (!p.node_ops.empty()) {
      std::string ops;
      for (const auto& [op, t] : p.node_ops) {
        absl::StrAppendFormat(&ops, "%s%s %d x %.0f us", ops.empty() ? "" : ", ", op, t.calls,
                              t.mean_us());
      }
      std::fprintf(out, "          node handler time per call: %s\n", ops.c_str());
    }
    if (!p.errors_by_code.empty()) {
      std::string codes;
      for (const auto& [code, n] : p.errors_by_code) {
        absl::StrAppend(&codes, codes.empty() ? "" : ", ", code, " ", n);
      }
      std::fprintf(out, "          failed blocks by code: %s\n", codes.c_str());
    }
    if (p.mismatches > 0) {
      std::fprintf(out, "          %llu blocks came back with wrong bytes\n",
                   static_cast<unsigned long long>(p.mismatches));
    }
    if (p.already_present > 0) {
      std::fprintf(out, "          %llu blocks were already stored (dedup: not rewritten); %s\n",
                   static_cast<unsigned long long>(p.already_present),
                   p.op == "mixed_put" ? "rewrites after the fresh blocks ran out (--fresh-blocks)"
                                       : "use another --seed for fresh data");
    }
  }
}

std::string ToJson(const RunInfo& run, const std::vector<PhaseResult>& phases) {
  std::string out = absl::StrFormat(
      "{\"node\": %s, \"block_size\": %d, \"blocks\": %d, \"streams\": %d, \"batch\": %d, "
      "\"chain_blocks\": %d, \"seed\": %d, ",
      JsonString(run.node), run.block_size, run.blocks, run.streams, run.batch, run.chain_blocks,
      run.seed);
  if (run.mixed_seconds > 0) {
    absl::StrAppendFormat(&out,
                          "\"mixed_seconds\": %.3f, \"get_fraction\": %.4f, \"fresh_blocks\": %d, ",
                          run.mixed_seconds, run.get_fraction, run.fresh_blocks);
  }
  absl::StrAppend(&out, "\"phases\": [");
  for (size_t i = 0; i < phases.size(); ++i) {
    const PhaseResult& p = phases[i];
    LatencySummary l = Summarize(p.call_latencies_us);
    std::string codes;
    for (const auto& [code, n] : p.errors_by_code) {
      absl::StrAppendFormat(&codes, "%s%s: %d", codes.empty() ? "" : ", ", JsonString(code), n);
    }
    std::string node_ops;
    for (const auto& [op, t] : p.node_ops) {
      absl::StrAppendFormat(&node_ops, "%s%s: {\"calls\": %d, \"mean_us\": %.1f}",
                            node_ops.empty() ? "" : ", ", JsonString(op), t.calls, t.mean_us());
    }
    absl::StrAppendFormat(
        &out,
        "%s\n  {\"op\": %s, \"blocks\": %d, \"bytes\": %d, \"seconds\": %.6f, \"gbps\": %.4f, "
        "\"blocks_per_s\": %.1f, \"calls\": %d, \"calls_per_s\": %.1f, \"p50_us\": %.1f, "
        "\"p90_us\": %.1f, \"p99_us\": %.1f, \"p999_us\": %.1f, \"max_us\": %.1f, "
        "\"errors\": %d, \"errors_by_code\": {%s}, \"mismatches\": %d, "
        "\"already_present\": %d, \"complete\": %s, \"client_cpu_s\": %.3f, "
        "\"node_ops\": {%s}}",
        i == 0 ? "" : ",", JsonString(p.op), p.blocks, p.bytes, p.seconds,
        Rate(p.bytes, p.seconds) / 1e9, Rate(p.blocks, p.seconds), p.call_latencies_us.size(),
        Rate(p.call_latencies_us.size(), p.seconds), l.p50_us, l.p90_us, l.p99_us, l.p999_us,
        l.max_us, p.errors, codes, p.mismatches, p.already_present, p.complete ? "true" : "false",
        p.client_cpu_seconds, node_ops);
  }
  absl::StrAppend(&out, phases.empty() ? "]}\n" : "\n]}\n");
  return out;
}

}  // namespace strata::bench
