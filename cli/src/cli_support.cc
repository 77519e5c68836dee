#include "cli_support.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "strata/common/byte_size.h"

namespace strata::cli {

void AddNodeFlags(CLI::App& cmd, NodeFlags& f) {
  CLI::Option* node =
      cmd.add_option("--node", f.node, "Store node HOST:PORT")->capture_default_str();
  cmd.add_option("--scope", f.scope, "Scope (default: the client's default scope)");
  cmd.add_option("--deadline", f.deadline_s, "Per-call deadline in seconds")->capture_default_str();
  cmd.add_option("--model-id", f.model_id, "Namespace: model id")->capture_default_str();
  cmd.add_option("--dtype", f.dtype, "Namespace: KV dtype")->capture_default_str();
  cmd.add_option("--layout", f.layout, "Namespace: layout name")->capture_default_str();
  cmd.add_option("--block-tokens", f.block_tokens, "Namespace: tokens per block")
      ->capture_default_str();
  cmd.add_option("--block-bytes", f.block_bytes, "Namespace: largest block")->capture_default_str();
  cmd.add_option("--hash-algorithm", f.hash_algorithm, "sha256 or xxh3-128")->capture_default_str();
  cmd.add_option("--tokens", f.tokens, "Prompt token ids: 1,2,3 or A..B");
  cmd.add_option("--hash", f.hashes, "Chain hash in hex (repeatable), instead of --tokens");
  // One store: a node, or a cluster by etcd or by its members (before, --etcd silently won).
  CLI::Option* etcd = cmd.add_option("--etcd", f.etcd,
                                     "A cluster: etcd endpoints host:port,... (instead of --node)");
  CLI::Option* members = cmd.add_option(
      "--members", f.members, "A static cluster: id=host:port[@zone],... (instead of --node)");
  node->excludes(etcd)->excludes(members);
  etcd->excludes(members);
  cmd.add_option("--cluster", f.cluster, "Cluster name (etcd key prefix)")->capture_default_str();
  cmd.add_option("--replicas", f.replicas, "Cluster: copies of every block (0: the nodes')")
      ->capture_default_str()
      ->check(CLI::Range(0, 16));
  cmd.add_option("--write-quorum", f.write_quorum,
                 "Cluster: replicas that must store a put (0: all)")
      ->capture_default_str();
  AddSecurityFlags(cmd, f.security);
}

void AddSecurityFlags(CLI::App& cmd, SecurityFlags& f) {
  cmd.add_option("--tls-ca", f.tls_ca, "PEM CA of the nodes' certificates (speak TLS)");
  cmd.add_option("--tls-cert", f.tls_cert, "PEM client certificate (mutual TLS)");
  cmd.add_option("--tls-key", f.tls_key, "PEM key of --tls-cert");
}

void ApplySecurity(const SecurityFlags& f, client::ClientOptions* o) {
  o->tls_ca = f.tls_ca;
  o->tls_cert = f.tls_cert;
  o->tls_key = f.tls_key;
  if (const char* token = std::getenv("STRATA_TOKEN"); token != nullptr) o->token = token;
}

client::ClientOptions ClientOptionsFrom(const NodeFlags& f) {
  client::ClientOptions opts;
  opts.address = f.node;
  opts.default_deadline = absl::Milliseconds(static_cast<int64_t>(f.deadline_s * 1000));
  opts.etcd_endpoints = f.etcd;
  opts.cluster_members = f.members;
  opts.cluster_name = f.cluster;
  opts.replicas = f.replicas;
  opts.write_quorum = f.write_quorum;
  ApplySecurity(f.security, &opts);
  return opts;
}

absl::StatusOr<std::pair<std::unique_ptr<client::StoreClient>, client::Namespace>> Open(
    const NodeFlags& f) {
  if (absl::Status s = CheckDeadline(f.deadline_s); !s.ok()) return s;
  if (f.etcd.empty() && f.members.empty() && (f.replicas != 0 || f.write_quorum != 0)) {
    return absl::InvalidArgumentError(
        "--replicas and --write-quorum: a cluster's (--etcd or --members), not one --node's");
  }
  auto c = client::StoreClient::Connect(ClientOptionsFrom(f));
  if (!c.ok()) return c.status();
  NamespaceSpec spec;
  spec.model_id = f.model_id;
  spec.dtype = f.dtype;
  spec.layout = f.layout;
  spec.block_tokens = f.block_tokens;
  absl::StatusOr<ChainHashAlgorithm> algo = ParseChainHashAlgorithm(f.hash_algorithm);
  if (!algo.ok()) return algo.status();
  spec.hash_algorithm = *algo;
  absl::StatusOr<uint64_t> bytes = ParseByteSize(f.block_bytes, "--block-bytes");
  if (!bytes.ok()) return bytes.status();
  spec.block_bytes = *bytes;
  auto ns = (*c)->RegisterNamespace(spec);
  if (!ns.ok()) return ns.status();
  return std::make_pair(std::move(*c), *ns);
}

absl::StatusOr<std::vector<uint32_t>> ParseTokens(const std::string& text) {
  std::vector<uint32_t> out;
  if (size_t dots = text.find(".."); dots != std::string::npos) {
    uint32_t a = 0, b = 0;
    if (!absl::SimpleAtoi(text.substr(0, dots), &a) ||
        !absl::SimpleAtoi(text.substr(dots + 2), &b) || b < a) {
      return absl::InvalidArgumentError(absl::StrCat("--tokens: '", text, "' is not A..B"));
    }
    if (b - a > kMaxTokens) {
      return absl::InvalidArgumentError(
          absl::StrCat("--tokens: ", b - a, " tokens, at most ", kMaxTokens, " at a time"));
    }
    for (uint32_t t = a; t < b; ++t) out.push_back(t);
    return out;
  }
  for (absl::string_view part : absl::StrSplit(text, ',', absl::SkipWhitespace())) {
    uint32_t t = 0;
    if (!absl::SimpleAtoi(part, &t)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--tokens: '", std::string(part), "' is not a token id"));
    }
    out.push_back(t);
  }
  return out;
}

absl::StatusOr<std::vector<ChainHash>> SelectedHashes(const NodeFlags& f,
                                                      const client::Namespace& ns) {
  std::vector<ChainHash> out;
  for (const std::string& h : f.hashes) {
    absl::StatusOr<ChainHash> parsed = ChainHash::FromHex(h);
    if (!parsed.ok()) return parsed.status();
    out.push_back(*parsed);
  }
  if (!out.empty()) return out;
  if (f.tokens.empty()) return absl::InvalidArgumentError("give --tokens or --hash");
  absl::StatusOr<std::vector<uint32_t>> tokens = ParseTokens(f.tokens);
  if (!tokens.ok()) return tokens.status();
  auto hashes = ns.HashTokens(*tokens);
  if (!hashes.ok()) return hashes.status();
  if (hashes->empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--tokens: ", tokens->size(), " tokens make no full block of ", ns.spec.block_tokens));
  }
  return hashes;
}

void FillBlock(const ChainHash& hash, uint8_t* out, size_t size) {
  // xorshift64* seeded by the hash: fast enough to generate GB/s, unique per block.
  uint64_t x;
  std::memcpy(&x, hash.bytes.data(), sizeof(x));
  x |= 1;
  size_t i = 0;
  for (; i + 8 <= size; i += 8) {
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    uint64_t v = x * 0x2545F4914F6CDD1Dull;
    std::memcpy(out + i, &v, 8);
  }
  for (; i < size; ++i) out[i] = static_cast<uint8_t>(x >> (8 * (i % 8)));
}

absl::Status CheckDeadline(double seconds) {
  if (!(seconds >= 0.001 && seconds <= 86400)) {  // NaN fails both
    return absl::InvalidArgumentError(
        absl::StrCat("--deadline: ", seconds, " s, want 0.001..86400"));
  }
  return absl::OkStatus();
}

int Fail(const std::string& cmd, const absl::Status& status) {
  std::fprintf(stderr, "strata %s: %s\n", cmd.c_str(), status.ToString().c_str());
  return status.code() == absl::StatusCode::kInvalidArgument ? 2 : 1;
}

}  // namespace strata::cli
