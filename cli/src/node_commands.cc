// `strata put|get|lookup|stats`: debugging calls against one store node.
#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>

#include "absl/strings/str_format.h"
#include "cli_support.h"
#include "commands.h"
#include "strata/common/byte_size.h"

namespace strata::cli {
namespace {

struct PutFlags {
  NodeFlags node;
  std::string input;
  std::string block_size = "64KiB";
};

int RunPut(const PutFlags& f) {
  auto opened = Open(f.node);
  if (!opened.ok()) return Fail("put", opened.status());
  auto& [client, ns] = *opened;
  auto hashes = SelectedHashes(f.node, ns);
  if (!hashes.ok()) return Fail("put", hashes.status());
  std::vector<uint8_t> data;
  uint64_t size = 0;
  if (!f.input.empty()) {
    std::ifstream in(f.input, std::ios::binary);
    if (!in) return Fail("put", absl::InvalidArgumentError("--input: cannot read " + f.input));
    // At most what a command holds (and its blocks can), reading past that only as far as it
    // takes to tell a larger input (or /dev/zero); a regular file's size says so unread.
    const uint64_t most = std::min<uint64_t>(kMaxCliPutBytes, hashes->size() * kMaxCliBlockBytes);
    std::error_code ec;
    const uint64_t file_bytes =
        std::filesystem::is_regular_file(f.input, ec) ? std::filesystem::file_size(f.input, ec) : 0;
    // In chunks, joined once the whole input is known to fit: never twice its size in memory.
    constexpr size_t kChunk = 16 << 20;
    std::vector<std::vector<uint8_t>> chunks;
    uint64_t read = 0;
    while (file_bytes <= most && in && read <= most) {
      chunks.emplace_back(kChunk);
      in.read(reinterpret_cast<char*>(chunks.back().data()), kChunk);
      chunks.back().resize(static_cast<size_t>(in.gcount()));
      read += chunks.back().size();
    }
    if (file_bytes > most || read > most) {
      return Fail("put", absl::InvalidArgumentError(absl::StrCat(
                             "--input: ", f.input, " holds more than ", FormatByteSize(most),
                             ", what one command puts into ", hashes->size(), " blocks")));
    }
    data.reserve(read);
    for (std::vector<uint8_t>& c : chunks) {
      data.insert(data.end(), c.begin(), c.end());
      std::vector<uint8_t>().swap(c);
    }
    if (data.empty() || data.size() % hashes->size() != 0) {
      return Fail("put", absl::InvalidArgumentError(
                             absl::StrFormat("--input: %d bytes do not split evenly into %d blocks",
                                             data.size(), hashes->size())));
    }
    size = data.size() / hashes->size();
  } else {
    auto s = ParseByteSize(f.block_size, "--block-size");
    if (!s.ok()) return Fail("put", s.status());
    if (*s == 0 || *s > kMaxCliBlockBytes) {
      return Fail("put", absl::InvalidArgumentError(absl::StrCat(
                             "--block-size: ", *s, " bytes, want 1..", kMaxCliBlockBytes)));
    }
    size = *s;
    if (hashes->size() > kMaxCliPutBytes / size) {
      return Fail("put",
                  absl::InvalidArgumentError(absl::StrCat(
                      hashes->size(), " blocks of ", FormatByteSize(size), " exceed ",
                      FormatByteSize(kMaxCliPutBytes), " in one command; name fewer tokens")));
    }
    data.resize(size * hashes->size());
    for (size_t i = 0; i < hashes->size(); ++i) FillBlock((*hashes)[i], &data[i * size], size);
  }
  std::vector<client::BlockWrite> writes;
  for (size_t i = 0; i < hashes->size(); ++i)
    writes.push_back({(*hashes)[i], &data[i * size], size});
  auto r = client->Put(ns, f.node.scope, writes);
  if (!r.ok()) return Fail("put", r.status());
  for (size_t i = 0; i < writes.size(); ++i) {
    std::printf("%s %s\n", writes[i].hash.ToHex().c_str(),
                r->blocks[i].ok() ? "stored" : r->blocks[i].ToString().c_str());
  }
  std::printf("%zu stored, %zu already present, %zu blocks of %s\n", r->stored, r->already_present,
              writes.size(), FormatByteSize(size).c_str());
  return r->stored + r->already_present == writes.size() ? 0 : 1;
}

struct GetFlags {
  NodeFlags node;
  std::string output;
  std::string max_block = "16MiB";
  bool verify_demo = false;
};

int RunGet(const GetFlags& f) {
  auto opened = Open(f.node);
  if (!opened.ok()) return Fail("get", opened.status());
  auto& [client, ns] = *opened;
  auto hashes = SelectedHashes(f.node, ns);
  if (!hashes.ok()) return Fail("get", hashes.status());
  auto cap = ParseByteSize(f.max_block, "--max-block");
  if (!cap.ok()) return Fail("get", cap.status());
  if (*cap == 0 || *cap > kMaxCliBlockBytes) {
    return Fail("get", absl::InvalidArgumentError(absl::StrCat(
                           "--max-block: ", *cap, " bytes, want 1..", kMaxCliBlockBytes)));
  }
  // Buffers for at most 256 MiB of blocks at a time, however many are asked for.
  const size_t batch = std::max<size_t>(1, (256ull << 20) / std::max<uint64_t>(1, *cap));
  std::vector<std::vector<uint8_t>> bufs(std::min(batch, hashes->size()),
                                         std::vector<uint8_t>(*cap));
  std::ofstream out;
  if (!f.output.empty()) {
    out.open(f.output, std::ios::binary | std::ios::trunc);
    if (!out.is_open()) {
      return Fail("get", absl::InvalidArgumentError(absl::StrCat(
                             "--output ", f.output, ": cannot open: ", std::strerror(errno))));
    }
  }
  size_t bad = 0, fetched = 0;
  for (size_t first = 0; first < hashes->size(); first += batch) {
    std::vector<client::BlockRead> reads;
    for (size_t i = first; i < std::min(hashes->size(), first + batch); ++i) {
      reads.push_back({(*hashes)[i], bufs[i - first].data(), *cap});
    }
    auto r = client->Get(ns, f.node.scope, reads);
    if (!r.ok()) return Fail("get", r.status());
    fetched += r->fetched;
    for (size_t i = 0; i < reads.size(); ++i) {
      std::string what =
          r->blocks[i].ok() ? absl::StrFormat("ok %d bytes", r->sizes[i]) : r->blocks[i].ToString();
      if (r->blocks[i].ok() && f.verify_demo) {
        std::vector<uint8_t> want(r->sizes[i]);
        FillBlock(reads[i].hash, want.data(), want.size());
        if (std::memcmp(want.data(), bufs[i].data(), want.size()) != 0) {
          what = "WRONG BYTES";
          ++bad;
        }
      }
      std::printf("%s %s\n", reads[i].hash.ToHex().c_str(), what.c_str());
      if (r->blocks[i].ok() && out.is_open()) {
        out.write(reinterpret_cast<const char*>(bufs[i].data()), r->sizes[i]);
      }
    }
  }
  if (out.is_open()) {
    out.close();
    if (out.fail()) {
      return Fail("get", absl::DataLossError(
                             absl::StrCat("--output ", f.output, ": write failed (disk full?)")));
    }
  }
  std::printf("%zu of %zu blocks fetched and verified\n", fetched, hashes->size());
  return (fetched == hashes->size() && bad == 0) ? 0 : 1;
}

int RunLookup(const NodeFlags& f) {
  auto opened = Open(f);
  if (!opened.ok()) return Fail("lookup", opened.status());
  auto& [client, ns] = *opened;
  auto hashes = SelectedHashes(f, ns);
  if (!hashes.ok()) return Fail("lookup", hashes.status());
  auto r = client->Lookup(ns, f.scope, *hashes);
  if (!r.ok()) return Fail("lookup", r.status());
  for (size_t i = 0; i < hashes->size(); ++i) {
    if (i < r->matched_blocks) {
      std::printf("%s %s %s\n", (*hashes)[i].ToHex().c_str(),
                  std::string(client::TierName(r->blocks[i].tier)).c_str(),
                  FormatByteSize(r->blocks[i].size).c_str());
    } else {
      std::printf("%s miss\n", (*hashes)[i].ToHex().c_str());
    }
  }
  std::printf("matched %zu of %zu blocks\n", r->matched_blocks, hashes->size());
  return 0;
}

int RunStats(const std::string& node, const SecurityFlags& security, bool json) {
  client::ClientOptions o{.address = node};
  ApplySecurity(security, &o);  // a node with TLS or bearer tokens (STRATA_TOKEN) answers too
  auto c = client::StoreClient::Connect(o);
  if (!c.ok()) return Fail("stats", c.status());
  auto s = (*c)->Stats();
  if (!s.ok()) return Fail("stats", s.status());
  if (json) {
    std::printf(
        "{\"node_id\":\"%s\",\"warm_blocks\":%llu,\"warm_bytes\":%llu,\"warm_used_bytes\":%llu,"
        "\"warm_capacity_bytes\":%llu,\"hits\":%llu,\"misses\":%llu,\"evictions\":%llu,"
        "\"leases\":%llu,\"reservations\":%llu,\"namespaces\":%llu,\"data_loss\":%llu}\n",
        s->node_id.c_str(), (unsigned long long)s->warm_blocks, (unsigned long long)s->warm_bytes,
        (unsigned long long)s->warm_used_bytes, (unsigned long long)s->warm_capacity_bytes,
        (unsigned long long)s->hits, (unsigned long long)s->misses,
        (unsigned long long)s->evictions, (unsigned long long)s->leases,
        (unsigned long long)s->reservations, (unsigned long long)s->namespaces,
        (unsigned long long)s->data_loss);
    return 0;
  }
  std::printf("node %s\n  warm: %llu blocks, %s stored, %s used of %s\n", s->node_id.c_str(),
              (unsigned long long)s->warm_blocks, FormatByteSize(s->warm_bytes).c_str(),
              FormatByteSize(s->warm_used_bytes).c_str(),
              FormatByteSize(s->warm_capacity_bytes).c_str());
  std::printf("  hits %llu, misses %llu, evictions %llu, data loss %llu\n",
              (unsigned long long)s->hits, (unsigned long long)s->misses,
              (unsigned long long)s->evictions, (unsigned long long)s->data_loss);
  std::printf("  leases %llu, reservations %llu, namespaces %llu\n", (unsigned long long)s->leases,
              (unsigned long long)s->reservations, (unsigned long long)s->namespaces);
  return 0;
}

}  // namespace

void AddNodeCommands(CLI::App& app, int* exit_code) {
  auto put_flags = std::make_shared<PutFlags>();
  CLI::App* put = app.add_subcommand("put", "Store blocks (debugging)");
  AddNodeFlags(*put, put_flags->node);
  put->add_option("--input", put_flags->input, "File whose bytes are split evenly into blocks");
  put->add_option("--block-size", put_flags->block_size,
                  "Without --input: size of generated blocks (bytes derived from each hash)")
      ->capture_default_str();
  put->callback([put_flags, exit_code] { *exit_code = RunPut(*put_flags); });

  auto get_flags = std::make_shared<GetFlags>();
  CLI::App* get = app.add_subcommand("get", "Fetch and verify blocks (debugging)");
  AddNodeFlags(*get, get_flags->node);
  get->add_option("--output", get_flags->output, "Write the blocks' bytes here, in order");
  get->add_option("--max-block", get_flags->max_block, "Buffer size per block")
      ->capture_default_str();
  get->add_flag("--verify-generated", get_flags->verify_demo,
                "Check bytes against what `put` without --input generates");
  get->callback([get_flags, exit_code] { *exit_code = RunGet(*get_flags); });

  auto lookup_flags = std::make_shared<NodeFlags>();
  CLI::App* lookup = app.add_subcommand("lookup", "Longest stored prefix (debugging)");
  AddNodeFlags(*lookup, *lookup_flags);
  lookup->callback([lookup_flags, exit_code] { *exit_code = RunLookup(*lookup_flags); });

  auto stats_node = std::make_shared<std::string>("127.0.0.1:7070");
  auto stats_json = std::make_shared<bool>(false);
  CLI::App* stats = app.add_subcommand("stats", "A node's tiers and counters");
  stats->add_option("--node", *stats_node, "Store node HOST:PORT")->capture_default_str();
  stats->add_flag("--json", *stats_json, "JSON output");
  auto stats_security = std::make_shared<SecurityFlags>();
  AddSecurityFlags(*stats, *stats_security);
  stats->callback([stats_node, stats_security, stats_json, exit_code] {
    *exit_code = RunStats(*stats_node, *stats_security, *stats_json);
  });
}

}  // namespace strata::cli
