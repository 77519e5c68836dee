// Shared pieces of the `strata` subcommands that talk to a node: namespace flags, key
// selection (token lists or hex hashes), deterministic demo payloads, status printing.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/status/statusor.h"
#include "strata/client/store_client.h"

namespace strata::cli {

// How the CLI authenticates to nodes that require it (docs/design/security.md): TLS files as
// flags, the bearer token from $STRATA_TOKEN (never a flag: it would show in `ps`).
struct SecurityFlags {
  std::string tls_ca;
  std::string tls_cert;
  std::string tls_key;
};
void AddSecurityFlags(CLI::App& cmd, SecurityFlags& flags);
void ApplySecurity(const SecurityFlags& flags, client::ClientOptions* options);

struct NodeFlags {
  std::string node = "127.0.0.1:7070";
  std::string scope;
  double deadline_s = 10;
  std::string model_id = "debug";
  std::string dtype = "fp16";
  std::string layout = "raw";
  uint32_t block_tokens = 16;
  std::string block_bytes = "16MiB";
  std::string hash_algorithm = "sha256";
  std::string tokens;               // "1,2,3" or "0..1023"
  std::vector<std::string> hashes;  // hex chain hashes
  // A cluster instead of --node (ClientOptions): etcd endpoints or a static member list.
  std::string etcd;
  std::string members;
  std::string cluster = "default";
  int replicas = 0;  // 0: the nodes' own
  int write_quorum = 0;
  SecurityFlags security;
};

// ClientOptions for the node or cluster the flags name.
client::ClientOptions ClientOptionsFrom(const NodeFlags& flags);

void AddNodeFlags(CLI::App& cmd, NodeFlags& flags);

// Connects and registers the namespace named by the flags.
absl::StatusOr<std::pair<std::unique_ptr<client::StoreClient>, client::Namespace>> Open(
    const NodeFlags& flags);

// The chain hashes the flags select: --hash values, else the full blocks of --tokens.
absl::StatusOr<std::vector<ChainHash>> SelectedHashes(const NodeFlags& flags,
                                                      const client::Namespace& ns);

// "1,2,3" or "A..B" (inclusive-exclusive) → token ids. INVALID_ARGUMENT naming --tokens.
absl::StatusOr<std::vector<uint32_t>> ParseTokens(const std::string& text);

// Deterministic pseudo-KV bytes of a block, derived from its chain hash, so a process that
// did not write a block can still check every byte it reads.
void FillBlock(const ChainHash& hash, uint8_t* out, size_t size);

// --deadline in seconds: INVALID_ARGUMENT unless 0.001..86400 (NaN included).
absl::Status CheckDeadline(double seconds);

// Prints "strata <cmd>: <status>" to stderr and returns the exit code for it.
int Fail(const std::string& cmd, const absl::Status& status);

// The most tokens one command names (--tokens A..B): 16 Mi, far past any context window.
inline constexpr uint32_t kMaxTokens = 16u << 20;
// The largest block a command makes or reads (--block-size, --max-block): the node's own
// ceiling for max_block_bytes.
inline constexpr uint64_t kMaxCliBlockBytes = 1ull << 30;
// What `strata put` generates in memory at most (it holds every block it puts).
inline constexpr uint64_t kMaxCliPutBytes = 16ull << 30;

}  // namespace strata::cli
