// corpus_gen: writes the seed corpora of the fuzz targets (tests/fuzz/corpus/<target>/).
//
//   corpus_gen CORPUS_DIR TRACE_JSONL
//
// store_rpc_fuzzer: call sequences (store_rpc_input.h) that exercise every RPC the way clients
// do, with and without disk tiers. stored_block_fuzzer: PackBlock values of every codec and
// quantization, for each of the fuzzer's modes. trace_fuzzer: the first lines of TRACE_JSONL
// (the Mooncake synthetic trace) plus hand-made edge cases. Deterministic: rerunning it
// rewrites the same files. Built only on request (target corpus_gen).
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "store_rpc_input.h"
#include "strata/common/codec.h"
#include "strata/common/half.h"
#include "strata/common/kv_quant.h"
#include "strata/common/stored_block.h"
#include "strata/v1/store.pb.h"

namespace strata::fuzz {
namespace {

namespace fs = std::filesystem;

void Write(const fs::path& dir, const std::string& name, const std::string& bytes) {
  fs::create_directories(dir);
  std::ofstream out(dir / name, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out) {
    std::fprintf(stderr, "cannot write %s\n", (dir / name).c_str());
    std::exit(1);
  }
}

// ---- store_rpc_fuzzer ----

// A 1-byte hash that kFlagKnownHashes turns into KnownHash(i).
std::string H(int i) { return std::string(1, static_cast<char>(i)); }

constexpr uint8_t kNs = kFlagKnownNamespace | kFlagKnownHashes;
constexpr uint8_t kNsQuant = kNs | kFlagQuantNamespace;

template <typename Message>
std::string Bytes(const Message& m) {
  return m.SerializeAsString();
}

v1::LookupRequest Lookup(std::vector<int> hashes, bool each = false) {
  v1::LookupRequest r;
  for (int h : hashes) r.add_chain_hashes(H(h));
  r.set_each_block(each);
  return r;
}

v1::BeginPutRequest BeginPut(std::vector<int> hashes, uint64_t size, const std::string& session) {
  v1::BeginPutRequest r;
  for (size_t i = 0; i < hashes.size(); ++i) {
    v1::PutBlock* b = r.add_blocks();
    b->set_chain_hash(H(hashes[i]));
    b->set_size(size - 100 * i);
    b->set_depth(static_cast<uint32_t>(i));
    b->set_importance(0.5f);
  }
  r.set_session_id(session);
  return r;
}

// Payloads left empty: kFlagFixPayloads sizes them and sets the checksums.
v1::CommitPutRequest CommitPut(std::vector<int> hashes) {
  v1::CommitPutRequest r;
  for (int h : hashes) r.add_blocks()->set_chain_hash(H(h));
  return r;
}

v1::BeginGetRequest BeginGet(std::vector<int> hashes, bool payload = true) {
  v1::BeginGetRequest r;
  for (int h : hashes) r.add_chain_hashes(H(h));
  r.set_include_payload(payload);
  return r;
}

template <typename Request>
Request WithHashes(std::vector<int> hashes) {
  Request r;
  for (int h : hashes) r.add_chain_hashes(H(h));
  return r;
}

std::string Clock(uint32_t ms) {
  return std::string(reinterpret_cast<const char*>(&ms), sizeof(ms));
}

void StoreCorpus(const fs::path& dir) {
  struct Seed {
    std::string name;
    std::string calls;
    bool disk_only = false;
  };
  std::vector<Seed> seeds;
  auto add = [&](std::string name, std::vector<std::tuple<StoreOp, uint8_t, std::string>> calls,
                 bool disk_only = false) {
    std::string bytes;
    for (const auto& [op, flags, msg] : calls) AppendCall(&bytes, op, flags, msg);
    seeds.push_back({std::move(name), std::move(bytes), disk_only});
  };
  const std::string empty;

  v1::RegisterNamespaceRequest reg;
  v1::NamespaceSpec* spec = reg.mutable_spec();
  spec->set_model_id("meta-llama/Llama-3.1-8B-Instruct");
  spec->set_dtype("bf16");
  spec->set_layout("vllm-flash:[2,L,T,H,D]");
  spec->set_block_tokens(16);
  spec->set_tp_size(2);
  spec->set_tp_rank(1);
  spec->set_block_bytes(8192);
  v1::RegisterNamespaceRequest reg_q = reg;
  reg_q.mutable_spec()->set_hash_algorithm("xxh3-128");
  reg_q.mutable_spec()->set_offload_quant("fp8-e4m3");
  reg_q.mutable_spec()->set_head_dim(64);
  add("register_namespace", {{kRegisterNamespace, 0, Bytes(reg)}, {kStats, 0, empty}});
  add("register_namespace_quant", {{kRegisterNamespace, 0, Bytes(reg_q)}});

  add("lookup_prefix", {{kLookup, kNs, Bytes(Lookup({0, 1, 2, 3, 4, 5, 6}))}});
  add("lookup_each_block", {{kLookup, kNs, Bytes(Lookup({2, 9, 0}, true))}});
  v1::LookupRequest packed;
  for (int h : {0, 1, 2, 12}) packed.mutable_packed_chain_hashes()->append(KnownHash(h).ToBytes());
  add("lookup_packed", {{kLookup, kFlagKnownNamespace, Bytes(packed)}});
  v1::LookupRequest bad_scope = Lookup({0});
  bad_scope.set_scope("Not A Scope!");
  add("lookup_bad_scope", {{kLookup, kNs, Bytes(bad_scope)}});
  v1::LookupRequest bad_hash;
  bad_hash.add_chain_hashes("short-hash");
  add("lookup_bad_hash", {{kLookup, kFlagKnownNamespace, Bytes(bad_hash)}});

  v1::PublishRequest publish = WithHashes<v1::PublishRequest>({0, 1, 2, 10, 11});
  publish.set_location("10.0.0.7:9400");
  publish.set_location_token("0f1e2d3c4b5a69788796a5b4c3d2e1f0");
  publish.set_ttl_ms(5000);
  for (int i = 0; i < 5; ++i) publish.add_sizes(4096);
  add("publish_then_lookup", {{kPublish, kNs, Bytes(publish)},
                              {kLookup, kNs, Bytes(Lookup({0, 1, 2, 10, 11, 12}))},
                              {kAdvanceClock, 0, Clock(6000)},
                              {kLookup, kNs, Bytes(Lookup({0, 1, 2, 10, 11}))}});

  add("put_commit_get_end", {{kBeginPut, kNs, Bytes(BeginPut({8, 9, 10}, 1000, ""))},
                             {kCommitPut, kAllFlags, Bytes(CommitPut({8, 9, 10}))},
                             {kLookup, kNs, Bytes(Lookup({8, 9, 10}))},
                             {kBeginGet, kNs, Bytes(BeginGet({8, 9, 10, 0}))},
                             {kEndGet, kFlagLastIds, empty}});
  add("put_session_pause_resume", {{kBeginPut, kAllFlags, Bytes(BeginPut({11, 12}, 4096, ""))},
                                   {kCommitPut, kAllFlags, Bytes(CommitPut({11, 12}))},
                                   {kPauseSession, kFlagKnownSession, empty},
                                   {kLookup, kNs, Bytes(Lookup({11, 12}))},
                                   {kResumeSession, kFlagKnownSession, empty},
                                   {kBeginGet, kNs, Bytes(BeginGet({11, 12}))}});
  add("put_quant_pause_get",
      {{kBeginPut, kNsQuant | kFlagKnownSession, Bytes(BeginPut({13, 14}, 1024, ""))},
       {kCommitPut, kAllFlags, Bytes(CommitPut({13, 14}))},
       {kPauseSession, kFlagKnownSession, empty},
       {kBeginGet, kNsQuant, Bytes(BeginGet({13, 14, 1}))}});
  // One-call put: empty payloads, which kFlagFixPayloads sizes (and checksums).
  v1::BeginPutRequest one_call = BeginPut({15, 16}, 3000, "");
  for (int i = 0; i < one_call.blocks_size(); ++i) one_call.add_payloads();
  add("put_one_call_get", {{kBeginPut, kAllFlags, Bytes(one_call)},
                           {kLookup, kNs, Bytes(Lookup({15, 16}))},
                           {kBeginGet, kNs, Bytes(BeginGet({15, 16}))},
                           {kBeginPut, kAllFlags, Bytes(one_call)}});
  add("put_abort", {{kBeginPut, kNs, Bytes(BeginPut({8}, 512, ""))},
                    {kAbortPut, kFlagLastIds, empty},
                    {kCommitPut, kAllFlags, Bytes(CommitPut({8}))}});
  add("put_expire", {{kBeginPut, kNs, Bytes(BeginPut({8, 9}, 2000, ""))},
                     {kAdvanceClock, 0, Clock(40000)},
                     {kCommitPut, kAllFlags, Bytes(CommitPut({8, 9}))}});
  v1::CommitPutRequest bad_sum = CommitPut({8});
  bad_sum.mutable_blocks(0)->set_payload(std::string(700, 'x'));
  bad_sum.mutable_blocks(0)->set_checksum(42);
  add("put_bad_checksum", {{kBeginPut, kNs, Bytes(BeginPut({8}, 700, ""))},
                           {kCommitPut, kFlagLastIds | kFlagKnownHashes, Bytes(bad_sum)}});
  // 16 blocks of ~4 KiB take more than the warm arena's free pages: evictions (warm only) or
  // demotions (disk tiers).
  const std::vector<int> ten = {6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
  add("put_fill_evict", {{kBeginPut, kNs, Bytes(BeginPut(ten, 4096, ""))},
                         {kCommitPut, kAllFlags, Bytes(CommitPut(ten))},
                         {kBeginPut, kNsQuant, Bytes(BeginPut({2, 3, 4, 5, 6, 7}, 4096, ""))},
                         {kCommitPut, kAllFlags, Bytes(CommitPut({2, 3, 4, 5, 6, 7}))},
                         {kLookup, kNs, Bytes(Lookup({0, 1, 2, 3, 4, 5, 6, 7, 8}, true))}});
  // Incompressible blocks (1-byte payloads, see kFlagFixPayloads) paused to disk in two rounds
  // fill the 64 KiB cool tier: its evictions move blocks on to cold.
  v1::CommitPutRequest noise = CommitPut(ten);
  for (v1::CommitBlock& b : *noise.mutable_blocks()) b.set_payload(b.chain_hash());
  std::vector<int> quant_ten = {2, 3, 4, 5, 6, 7, 8, 9, 10, 11};
  v1::CommitPutRequest noise_q = CommitPut(quant_ten);
  for (v1::CommitBlock& b : *noise_q.mutable_blocks()) b.set_payload(b.chain_hash());
  add("fill_disk_tiers",
      {{kBeginPut, kAllFlags, Bytes(BeginPut(ten, 4096, ""))},
       {kCommitPut, kAllFlags, Bytes(noise)},
       {kPauseSession, kFlagKnownSession, empty},
       {kBeginPut, kAllFlags | kFlagQuantNamespace, Bytes(BeginPut(quant_ten, 4096, ""))},
       {kCommitPut, kAllFlags, Bytes(noise_q)},
       {kPauseSession, kFlagKnownSession, empty},
       {kLookup, kNs, Bytes(Lookup({0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}, true))},
       {kStats, 0, empty}},
      true);
  // 40 blocks under extra hashes (2-byte hashes, see kFlagKnownHashes) in two batches, each
  // committed by an empty CommitPut, push the warm tier past its high watermark: demotions
  // (disk tiers) or evictions (warm only).
  v1::BeginPutRequest batch[2];
  for (int i = 0; i < 40; ++i) {
    v1::PutBlock* b = batch[i / 20].add_blocks();
    b->set_chain_hash(std::string{'\0', static_cast<char>(i)});
    b->set_size(1500 + 50 * (i % 20));
    b->set_depth(static_cast<uint32_t>(i));
  }
  add("warm_pressure", {{kBeginPut, kAllFlags, Bytes(batch[0])},
                        {kCommitPut, kAllFlags, empty},
                        {kBeginPut, kAllFlags, Bytes(batch[1])},
                        {kCommitPut, kAllFlags, empty},
                        {kBeginPut, kAllFlags, Bytes(BeginPut({8, 9, 10, 11}, 4000, ""))},
                        {kCommitPut, kAllFlags, empty},
                        {kStats, 0, empty}});
  v1::BeginPutRequest too_big = BeginPut({8}, 1 << 20, "");
  add("put_too_big", {{kBeginPut, kNs, Bytes(too_big)}});

  add("get_lease_expire", {{kBeginGet, kNs, Bytes(BeginGet({0, 1, 2}, false))},
                           {kDelete, kNs, Bytes(WithHashes<v1::DeleteRequest>({1}))},
                           {kAdvanceClock, 0, Clock(31000)},
                           {kEndGet, kFlagLastIds, empty},
                           {kLookup, kNs, Bytes(Lookup({0, 1, 2}))}});
  add("delete", {{kDelete, kNs, Bytes(WithHashes<v1::DeleteRequest>({0, 3, 9}))},
                 {kLookup, kNs, Bytes(Lookup({0, 1}))}});
  add("stats", {{kStats, 0, empty}});

  v1::PauseSessionRequest to_cold;
  to_cold.set_tier(v1::TIER_COLD);
  add("pause_to_cold_resume",
      {{kPauseSession, kFlagKnownSession, Bytes(to_cold)},
       {kLookup, kNs, Bytes(Lookup({3, 4, 5}))},
       {kResumeSession, kFlagKnownSession, empty}},
      true);
  add("prefetch_hashes",
      {{kPrefetch, kNs, Bytes(WithHashes<v1::PrefetchRequest>({3, 4, 5, 9}))},
       {kBeginGet, kNs, Bytes(BeginGet({3, 4, 5}))}},
      true);
  add("prefetch_session",
      {{kPrefetch, kFlagKnownNamespace | kFlagKnownSession, empty}, {kStats, 0, empty}}, true);
  add("get_from_cool",
      {{kBeginGet, kNs, Bytes(BeginGet({0, 1, 2, 3, 4, 5}))}, {kEndGet, kFlagLastIds, empty}},
      true);

  v1::InjectFaultRequest fault;
  fault.set_chain_hash(H(1));
  fault.set_flip_byte_offset(17);
  add("inject_fault_then_get", {{kInjectFault, kNs, Bytes(fault)},
                                {kBeginGet, kNs, Bytes(BeginGet({0, 1, 2}))},
                                {kLookup, kNs, Bytes(Lookup({0, 1, 2}))}});

  v1::ConnectDataRequest connect;
  connect.add_worker_addresses(std::string(64, '\x01'));
  v1::CloseDataRequest close;
  close.set_channel_id(7);
  v1::PutDataRequest put_data;
  put_data.set_channel_id(7);
  v1::PutBlock* pb = put_data.add_blocks();
  pb->set_chain_hash(H(8));
  pb->set_size(512);
  put_data.add_checksums(1);
  v1::RemoteBuffer* src = put_data.add_sources();
  src->set_addr(0x10000);
  src->set_length(512);
  put_data.add_rkeys("rkey");
  v1::GetDataRequest get_data = WithHashes<v1::GetDataRequest>({0, 1});
  get_data.set_channel_id(7);
  get_data.add_capacities(4096);
  get_data.add_capacities(4096);
  add("data_plane_calls", {{kConnectData, 0, Bytes(connect)},
                           {kPutData, kNs, Bytes(put_data)},
                           {kGetData, kNs, Bytes(get_data)},
                           {kCloseData, 0, Bytes(close)}});

  for (const Seed& s : seeds) {
    // Setups: warm only (lru), disk tiers (cost), disk tiers + fault injection (prefix).
    const uint8_t warm = 0 << kSetupPolicyShift;
    const uint8_t disk = kSetupDiskTiers | 3 << kSetupPolicyShift;
    const uint8_t disk_faults = kSetupDiskTiers | kSetupFaultInjection | 2 << kSetupPolicyShift;
    if (!s.disk_only)
      Write(dir, s.name + "-warm", std::string(1, static_cast<char>(warm)) + s.calls);
    Write(dir, s.name + "-disk", std::string(1, static_cast<char>(disk)) + s.calls);
    if (s.name.starts_with("inject_fault")) {
      Write(dir, s.name + "-faults", std::string(1, static_cast<char>(disk_faults)) + s.calls);
    }
  }
}

// ---- stored_block_fuzzer ----

// fp16 or bf16 elements of a smooth signal (quantizable), or bytes of a pattern.
std::vector<uint8_t> Block(size_t bytes, KvDtype dtype, int seed) {
  std::vector<uint8_t> b(bytes);
  for (size_t k = 0; k + 1 < bytes; k += 2) {
    const float x = static_cast<float>((static_cast<int>(k / 2) * 7 + seed) % 97 - 48) / 8.0f;
    const uint16_t h = dtype == KvDtype::kBf16 ? FloatToBf16(x) : FloatToHalf(x);
    b[k] = static_cast<uint8_t>(h & 0xff);
    b[k + 1] = static_cast<uint8_t>(h >> 8);
  }
  return b;
}

void StoredBlockCorpus(const fs::path& dir) {
  const struct {
    const char* name;
    KvQuantSpec spec;
  } quants[] = {
      {"none", {KvQuant::kNone, KvDtype::kFp16, 0}},
      {"int8-fp16", {KvQuant::kInt8, KvDtype::kFp16, 16}},
      {"int8-bf16", {KvQuant::kInt8, KvDtype::kBf16, 32}},
      {"fp8-fp16", {KvQuant::kFp8E4M3, KvDtype::kFp16, 8}},
      {"fp8-bf16", {KvQuant::kFp8E4M3, KvDtype::kBf16, 64}},
  };
  for (Codec codec : {Codec::kNone, Codec::kLz4, Codec::kZstd}) {
    for (const auto& q : quants) {
      for (size_t bytes : {size_t{256}, size_t{1024}}) {
        const std::vector<uint8_t> block = Block(bytes, q.spec.dtype, static_cast<int>(bytes));
        absl::StatusOr<std::string> value = PackBlock(block, codec, q.spec, 7);
        if (!value.ok()) {
          std::fprintf(stderr, "PackBlock: %s\n", value.status().ToString().c_str());
          std::exit(1);
        }
        const std::string base =
            std::string(CodecName(codec)) + "-" + q.name + "-" + std::to_string(bytes);
        // Mode 0 (as read), mode 1|4|8 (repaired); only the 256-byte ones in both.
        Write(dir, "value-" + base, std::string(1, '\x00') + *value);
        if (bytes == 256) Write(dir, "repaired-" + base, std::string(1, '\x0d') + *value);
        if (bytes == 256) {
          std::string pack(1, '\x02');
          pack.push_back(static_cast<char>(codec));
          pack.push_back(static_cast<char>(q.spec.method));
          pack.push_back(static_cast<char>(q.spec.dtype));
          pack.push_back(static_cast<char>(q.spec.head_dim & 0xff));
          pack.push_back(static_cast<char>(q.spec.head_dim >> 8));
          pack.push_back(codec == Codec::kZstd ? 3 : 0);
          pack.append(block.begin(), block.end());
          Write(dir, "pack-" + base, pack);
        }
      }
    }
  }
  // A header alone (empty block), and a truncated value.
  absl::StatusOr<std::string> empty = PackBlock({}, Codec::kLz4, {}, 0);
  Write(dir, "value-empty", std::string(1, '\x00') + *empty);
  absl::StatusOr<std::string> some = PackBlock(Block(512, KvDtype::kFp16, 1), Codec::kZstd, {}, 0);
  Write(dir, "value-truncated", std::string(1, '\x00') + some->substr(0, 100));
  // Mode 3: compressed streams with their decoded size, and a raw quantized payload.
  for (Codec codec : {Codec::kLz4, Codec::kZstd}) {
    const std::vector<uint8_t> block = Block(600, KvDtype::kFp16, 3);
    absl::StatusOr<std::string> c = Compress(codec, block);
    std::string in(1, '\x03');
    in.push_back(static_cast<char>(codec));
    in.push_back(0);
    in.push_back(static_cast<char>(600 & 0xff));
    in.push_back(static_cast<char>(600 >> 8));
    Write(dir, std::string("codec-") + std::string(CodecName(codec)), in + *c);
  }
}

// ---- trace_fuzzer ----

void TraceCorpus(const fs::path& dir, const std::string& trace_path) {
  std::ifstream in(trace_path);
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  // Lines (1-based) of requests that share their first blocks with others: 302, 1395, 1412
  // and 1706 start with ids 7353-7355, 1223, 1357, 2751 and 2923 with 23441-23443.
  const size_t shared_lines[] = {302, 1223, 1357, 1395, 1412, 1706, 2751, 2923};
  if (lines.size() < 2923) {
    std::fprintf(stderr, "%s: not the Mooncake synthetic trace (%zu lines)\n", trace_path.c_str(),
                 lines.size());
    std::exit(1);
  }
  // Lines 1-6 alone and 7-12 together: the source's own format.
  for (size_t i = 0; i < 6; ++i) {
    Write(dir, "mooncake-line" + std::to_string(i + 1), lines[i] + "\n");
  }
  std::string six;
  for (size_t i = 6; i < 12; ++i) six += lines[i] + "\n";
  Write(dir, "mooncake-lines7-12", six);
  std::string shared;
  for (size_t n : shared_lines) shared += lines[n - 1] + "\n";
  Write(dir, "mooncake-shared", shared);
  // With a flags tail (trace_fuzzer.cc): limit, capacity, mode, fractions.
  Write(dir, "mooncake-shared-fractions", shared + std::string("\0\x02\x03\x44", 4) + "0.1,0.5,1");
  Write(dir, "mooncake-shared-tiers", shared + std::string("\0\x01\x04\x58", 4));
  Write(dir, "mooncake-shared-json", shared + std::string("\0\x03\x02\xc1", 4));
  Write(dir, "mooncake-shared-policy", shared + std::string("\0\x00\x05\x21", 4));
  Write(dir, "mooncake-shared-capacity-fraction", shared + std::string("\0\x01\x20\x22", 4));
  // Hand-made: the same request in other layouts, and lines that must be refused.
  const std::string edge[][2] = {
      {"reordered",
       "{\"hash_ids\":[3,1,2],\"output_length\":1,\"input_length\":48,\"timestamp\":9}\n"},
      {"whitespace",
       "  \t{ \"timestamp\" : 0 ,\"input_length\":1, \"output_length\":0,"
       "\"hash_ids\": [ ] }\r\n\n   \n"},
      {"shared-prefix",
       "{\"timestamp\": 0, \"input_length\": 3, \"output_length\": 1, "
       "\"hash_ids\": [1, 2, 3]}\n{\"timestamp\": 5, \"input_length\": 4, "
       "\"output_length\": 1, \"hash_ids\": [1, 2, 4, 5]}\n"},
      {"max-u64",
       "{\"timestamp\": 18446744073709551615, \"input_length\": 0, "
       "\"output_length\": 0, \"hash_ids\": [18446744073709551615, 0]}\n"},
      {"overflow",
       "{\"timestamp\": 18446744073709551616, \"input_length\": 0, "
       "\"output_length\": 0, \"hash_ids\": []}\n"},
      {"repeated-id",
       "{\"timestamp\": 0, \"input_length\": 0, \"output_length\": 0, "
       "\"hash_ids\": [7, 7]}\n"},
      {"missing-field", "{\"timestamp\": 0, \"input_length\": 0, \"hash_ids\": [1]}\n"},
      {"float",
       "{\"timestamp\": 1.5, \"input_length\": 0, \"output_length\": 0, "
       "\"hash_ids\": [1]}\n"},
      {"escape", "{\"time\\u0073tamp\": 0}\n"},
      {"trailing",
       "{\"timestamp\": 0, \"input_length\": 0, \"output_length\": 0, "
       "\"hash_ids\": [1]} x\n"},
  };
  for (const auto& [name, text] : edge) Write(dir, std::string("edge-") + name, text);
}

}  // namespace
}  // namespace strata::fuzz

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s CORPUS_DIR TRACE_JSONL\n", argv[0]);
    return 1;
  }
  const std::filesystem::path root(argv[1]);
  strata::fuzz::StoreCorpus(root / "store_rpc_fuzzer");
  strata::fuzz::StoredBlockCorpus(root / "stored_block_fuzzer");
  strata::fuzz::TraceCorpus(root / "trace_fuzzer", argv[2]);
  return 0;
}
