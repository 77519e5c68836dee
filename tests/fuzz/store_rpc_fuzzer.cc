// store_rpc_fuzzer: a store node's request handling (StoreServiceImpl) fed sequences of
// arbitrary requests of every StoreService RPC, called directly as gRPC would after decoding.
// Input format: store_rpc_input.h.
//
// Each input runs against a node (a TieredStore with a 96 KiB warm arena, and with setup bit 0
// 64 KiB cool and 96 KiB cold RocksDB tiers on an in-memory Env; no data plane) that holds two
// namespaces and a few blocks before its first call, so mutated calls reach puts, reads, evictions,
// demotions and promotions rather than only the validation of unknown namespaces. Nodes are
// reused, emptied between inputs (see ReusedNode). The node's clock is the harness's
// (kAdvanceClock moves it and reaps), its background demoter never runs on its own and
// prefetches are waited for, so an input does the same thing every time it runs (up to the
// ids a reused node hands out).
//
// Invariants checked after every call: the call returned a known gRPC code (never UNKNOWN or
// INTERNAL); Stats succeeds and the warm tier uses no more bytes than its capacity; every
// block BeginGet returned OK with a payload has exactly its reported size and checksum; the
// data-plane RPCs answer FAILED_PRECONDITION (this node has no data plane). Between inputs:
// once leases and reservations expired, deleting every block leaves every tier empty.
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

#include "fuzz_check.h"
#include "google/protobuf/stubs/logging.h"
#include "metrics.h"
#include "rocksdb/env.h"
#include "spdlog/spdlog.h"
#include "store_rpc_input.h"
#include "store_service.h"
#include "strata/common/checksum.h"
#include "strata/common/half.h"
#include "strata/storenode/node_config.h"
#include "strata/storenode/tiered_store.h"
#include "strata/v1/store.pb.h"

namespace strata::fuzz {
namespace {

using storenode::NodeConfig;
using storenode::NodeMetrics;
using storenode::StoreServiceImpl;
using storenode::TieredStore;
using storenode::TieredStoreOptions;
using RepeatedBytes = google::protobuf::RepeatedPtrField<std::string>;

constexpr int kMaxCalls = 32;
constexpr uint64_t kBlockBytes = 4096;  // the known namespaces' block_bytes
constexpr uint32_t kQuantHeadDim = 8;

// Blocks the harness stores before the input's calls: known hash index, size, in the
// quantizing namespace, in kKnownSession.
struct Preload {
  int hash;
  uint64_t size;
  bool quant;
  bool session;
};
constexpr Preload kPreload[] = {
    {0, 512, false, false}, {1, 1024, false, false}, {2, 4096, false, false}, {3, 64, false, true},
    {4, 700, false, true},  {5, 2048, false, true},  {0, 1024, true, false},  {1, 2048, true, true},
};

// Payload byte k of a block: fp16 values in [-2, 2) so that a quantizing namespace can
// quantize it (the same bytes serve the plain namespace).
std::string Payload(uint64_t size, int seed) {
  std::string p(size, '\0');
  for (uint64_t k = 0; k + 1 < size; k += 2) {
    const uint16_t h =
        FloatToHalf(static_cast<float>(static_cast<int>((k / 2 + seed) % 64) - 32) / 16.0f);
    p[k] = static_cast<char>(h & 0xff);
    p[k + 1] = static_cast<char>(h >> 8);
  }
  if (size % 2 != 0) p[size - 1] = static_cast<char>(seed);
  return p;
}

// `size` bytes that do not compress (so that they fill disk tiers), derived from `seed`.
std::string NoisePayload(uint64_t size, const std::string& seed) {
  uint64_t x = BlockChecksum(seed.data(), seed.size()) | 1;
  std::string p(size, '\0');
  for (char& c : p) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    c = static_cast<char>(x >> 56);
  }
  return p;
}

const std::string& PreloadPayload(const Preload& p) {
  static const auto* payloads = [] {
    auto* v = new std::vector<std::string>;
    for (const Preload& q : kPreload) v->push_back(Payload(q.size, q.hash));
    return v;
  }();
  return (*payloads)[&p - kPreload];
}

v1::NamespaceSpec KnownSpec(bool quant) {
  v1::NamespaceSpec s;
  s.set_model_id(quant ? "fuzz-model-int8" : "fuzz-model");
  s.set_dtype("fp16");
  s.set_layout("fuzz-layout");
  s.set_block_tokens(16);
  s.set_tp_rank(0);
  s.set_tp_size(1);
  s.set_block_bytes(kBlockBytes);
  if (quant) {
    s.set_offload_quant("int8");
    s.set_head_dim(kQuantHeadDim);
  }
  return s;
}

bool KnownCode(grpc::StatusCode code) {
  return code != grpc::StatusCode::UNKNOWN && code != grpc::StatusCode::INTERNAL &&
         code >= grpc::StatusCode::OK && code <= grpc::StatusCode::UNAUTHENTICATED;
}

NodeConfig MakeConfig(uint8_t setup) {
  NodeConfig config;
  config.node_id = "fuzz-node";
  config.warm_bytes = 96 << 10;  // 12 slab pages: a few dozen blocks fill it
  config.max_block_bytes = 8 << 10;
  config.max_keys_per_call = 64;
  config.max_inline_bytes = 64 << 10;
  config.max_transfer_bytes = 64 << 10;
  config.max_namespaces = 8;
  config.max_lease_ms = 60000;
  config.max_directory_entries = 64;
  config.ucx_tls = "";
  config.debug_fault_injection = (setup & kSetupFaultInjection) != 0;
  return config;
}

// A TieredStore, its clock, and the in-memory Env of its disk tiers.
struct Node {
  ~Node() { store.reset(); }  // closes the RocksDB tiers before their Env goes

  int64_t now_ms = 1'000'000;
  std::unique_ptr<rocksdb::Env> env;
  std::unique_ptr<TieredStore> store;
  uint64_t inputs = 0;  // inputs run on it
};

std::unique_ptr<Node> MakeNode(uint8_t setup) {
  auto node = std::make_unique<Node>();
  const NodeConfig config = MakeConfig(setup);
  TieredStoreOptions opts;
  opts.warm.capacity_bytes = config.warm_bytes;
  opts.warm.max_block_bytes = config.max_block_bytes;
  opts.warm.max_namespaces = config.max_namespaces;
  opts.warm.policy = static_cast<storenode::PolicyKind>((setup >> kSetupPolicyShift) & 3);
  opts.warm.now_ms = [n = node.get()] { return n->now_ms; };
  opts.demote_interval_ms = 24 * 3600 * 1000;  // the demoter only runs when a put needs room
  if (setup & kSetupDiskTiers) {
    node->env.reset(rocksdb::NewMemEnv(rocksdb::Env::Default()));
    for (auto [tier, name, bytes, codec] :
         {std::tuple{&opts.cool, "cool", uint64_t{64} << 10, Codec::kLz4},
          std::tuple{&opts.cold, "cold", uint64_t{96} << 10, Codec::kZstd}}) {
      storenode::DiskTierOptions d;
      d.name = name;
      d.path = std::string("/fuzz/") + name;
      d.capacity_bytes = bytes;
      d.codec = codec;
      d.policy = opts.warm.policy;
      d.env = node->env.get();
      *tier = d;
    }
  }
  absl::StatusOr<std::unique_ptr<TieredStore>> store = TieredStore::Create(std::move(opts));
  FUZZ_CHECK_MSG(store.ok(), store.status().ToString());
  node->store = std::move(*store);
  return node;
}

// A node is reused by the inputs of its setup (disk tiers or not, policy), because building
// one costs far more than most inputs: opening two RocksDB instances takes ~15 ms, and a fresh
// arena faults in a huge page. Between inputs every lease and reservation expires and every
// block is deleted, which must leave all tiers empty (a leak check of the slab and disk
// accounting). A node is renewed every kNodeInputs inputs, or once inputs registered enough
// namespaces to approach max_namespaces, so that what one input does depends little on the
// inputs before it (only the ids the node hands out differ).
constexpr uint64_t kNodeInputs = 256;
constexpr uint64_t kNodeNamespaces = 4;

Node* ReusedNode(uint8_t setup) {
  // Never destroyed: their threads must not run into static destructors at exit.
  static Node* nodes[8] = {};
  const bool disk = (setup & kSetupDiskTiers) != 0;
  Node*& node = nodes[(setup >> kSetupPolicyShift & 3) * 2 + (disk ? 1 : 0)];
  if (node != nullptr) {
    node->now_ms += 24 * 3600 * 1000;
    node->store->ExpireNow();
    node->store->WaitForPrefetch();
    std::vector<BlockKey> keys = node->store->Keys();
    for (const BlockKey& k : keys) node->store->Delete(k.namespace_id, k.scope, {&k.hash, 1});
    const storenode::TieredStats stats = node->store->Stats();
    FUZZ_CHECK(stats.warm.blocks == 0 && stats.warm.used_bytes == 0 &&
               stats.warm.payload_bytes == 0 && stats.warm.leases == 0 &&
               stats.warm.reservations == 0 && stats.warm.pinned_blocks == 0);
    if (disk) {
      FUZZ_CHECK(stats.cool->blocks == 0 && stats.cool->stored_bytes == 0);
      FUZZ_CHECK(stats.cold->blocks == 0 && stats.cold->stored_bytes == 0);
    }
    if (node->inputs >= kNodeInputs || stats.warm.namespaces > kNodeNamespaces) {
      delete node;
      node = nullptr;
    }
  }
  if (node == nullptr) node = MakeNode(setup).release();
  ++node->inputs;
  return node;
}

// One input's view of a node: the node's service, and what the calls learned from it.
class Harness {
 public:
  explicit Harness(uint8_t setup)
      : setup_(setup), config_(MakeConfig(setup)), node_(ReusedNode(setup)) {
    store_ = node_->store.get();
    service_ = std::make_unique<StoreServiceImpl>(config_, store_, nullptr, Metrics());
    PreloadBlocks();
  }

  ~Harness() {
    store_->WaitForPrefetch();
    service_.reset();
  }

  void Run(StoreOp op, uint8_t flags, const uint8_t* msg, size_t len);
  void CheckInvariants();

 private:
  static NodeMetrics* Metrics() {
    static NodeMetrics* metrics = new NodeMetrics("fuzz-node");
    return metrics;
  }

  void PreloadBlocks() {
    for (bool quant : {false, true}) {
      v1::RegisterNamespaceRequest req;
      *req.mutable_spec() = KnownSpec(quant);
      v1::RegisterNamespaceResponse resp;
      grpc::ServerContext ctx;
      grpc::Status s = service_->RegisterNamespace(&ctx, &req, &resp);
      FUZZ_CHECK_MSG(s.ok(), s.error_message());
      (quant ? ns_quant_ : ns_plain_) = resp.namespace_id();
    }
    for (const Preload& p : kPreload) {
      v1::BeginPutRequest put;
      put.set_namespace_id(p.quant ? ns_quant_ : ns_plain_);
      if (p.session) put.set_session_id(kKnownSession);
      v1::PutBlock* b = put.add_blocks();
      b->set_chain_hash(KnownHash(p.hash).ToBytes());
      b->set_size(p.size);
      b->set_depth(static_cast<uint32_t>(p.hash));
      v1::BeginPutResponse reserved;
      grpc::ServerContext ctx;
      FUZZ_CHECK(service_->BeginPut(&ctx, &put, &reserved).ok());
      FUZZ_CHECK(reserved.reservation_id() != 0);
      v1::CommitPutRequest commit;
      commit.set_reservation_id(reserved.reservation_id());
      v1::CommitBlock* c = commit.add_blocks();
      c->set_chain_hash(b->chain_hash());
      c->set_payload(PreloadPayload(p));
      c->set_checksum(BlockChecksum(c->payload().data(), c->payload().size()));
      v1::CommitPutResponse committed;
      grpc::ServerContext ctx2;
      FUZZ_CHECK(service_->CommitPut(&ctx2, &commit, &committed).ok());
      FUZZ_CHECK(committed.results_size() == 1 && committed.results(0).code() == 0);
    }
    if (setup_ & kSetupDiskTiers) {
      // Some blocks start on disk (cool, quantized in the int8 namespace).
      absl::StatusOr<uint64_t> moved = store_->PauseSession(kKnownSession, false);
      FUZZ_CHECK_MSG(moved.ok() && *moved > 0, moved.status().ToString());
    }
  }

  // The field rewrites of the flags (store_rpc_input.h).
  void FixNamespace(uint8_t flags, uint64_t* id) const {
    if (flags & kFlagKnownNamespace) *id = (flags & kFlagQuantNamespace) ? ns_quant_ : ns_plain_;
  }
  template <typename Request>
  void FixNamespaceOf(uint8_t flags, Request* req) const {
    uint64_t id = req->namespace_id();
    FixNamespace(flags, &id);
    req->set_namespace_id(id);
  }
  static void FixHash(uint8_t flags, std::string* hash) {
    if (!(flags & kFlagKnownHashes)) return;
    if (hash->size() == 1) {
      *hash = KnownHash(static_cast<uint8_t>((*hash)[0]) % kKnownHashes).ToBytes();
    } else if (hash->size() == 2) {
      *hash = ExtraHash(static_cast<uint8_t>((*hash)[0]) << 8 | static_cast<uint8_t>((*hash)[1]))
                  .ToBytes();
    }
  }
  static void FixHashes(uint8_t flags, RepeatedBytes* hashes) {
    for (std::string& h : *hashes) FixHash(flags, &h);
  }
  static void FixSession(uint8_t flags, std::string* session) {
    if (flags & kFlagKnownSession) *session = kKnownSession;
  }
  void FixId(uint8_t flags, uint64_t last, uint64_t* id) const {
    if (flags & kFlagLastIds) *id = last;
  }

  void CheckCode(const grpc::Status& s) const {
    FUZZ_CHECK_MSG(KnownCode(s.error_code()), s.error_message());
  }

  const uint8_t setup_;
  const NodeConfig config_;
  Node* const node_;
  TieredStore* store_ = nullptr;
  std::unique_ptr<StoreServiceImpl> service_;
  uint64_t ns_plain_ = 0;
  uint64_t ns_quant_ = 0;
  uint64_t last_reservation_ = 0;
  uint64_t last_lease_ = 0;
  std::vector<std::pair<std::string, uint64_t>> last_put_;  // hash, size
};

// STRATA_FUZZ_VERBOSE=1: print each call and its outcome (for checking what seeds reach).
bool Verbose() {
  static const bool verbose = std::getenv("STRATA_FUZZ_VERBOSE") != nullptr;
  return verbose;
}

// Parses `msg` as a Request, rewrites it, calls `method` and checks the response.
template <typename Request, typename Response, typename Method, typename Fix, typename Check>
void Call(StoreServiceImpl* service, const uint8_t* msg, size_t len, Method method, Fix fix,
          Check check) {
  Request req;
  if (!req.ParseFromArray(msg, static_cast<int>(len))) return;
  fix(&req);
  Response resp;
  grpc::ServerContext ctx;
  const grpc::Status s = (service->*method)(&ctx, &req, &resp);
  if (Verbose()) {
    std::fprintf(stderr, "  %s -> %d %s | %s\n", Request::descriptor()->name().c_str(),
                 s.error_code(), s.error_message().c_str(), resp.ShortDebugString().c_str());
  }
  check(req, resp, s);
}

void Harness::Run(StoreOp op, uint8_t flags, const uint8_t* msg, size_t len) {
  StoreServiceImpl* svc = service_.get();
  auto no_fix = [](auto*) {};
  auto code_only = [this](const auto&, const auto&, const grpc::Status& s) { CheckCode(s); };
  auto no_data_plane = [](const auto&, const auto&, const grpc::Status& s) {
    FUZZ_CHECK_MSG(s.error_code() == grpc::StatusCode::FAILED_PRECONDITION, s.error_message());
  };
  switch (op) {
    case kRegisterNamespace:
      Call<v1::RegisterNamespaceRequest, v1::RegisterNamespaceResponse>(
          svc, msg, len, &StoreServiceImpl::RegisterNamespace, no_fix,
          [this](const auto&, const v1::RegisterNamespaceResponse& resp, const grpc::Status& s) {
            CheckCode(s);
            FUZZ_CHECK(!s.ok() || resp.namespace_id() != 0);
          });
      break;
    case kLookup:
      Call<v1::LookupRequest, v1::LookupResponse>(
          svc, msg, len, &StoreServiceImpl::Lookup,
          [&](v1::LookupRequest* r) {
            FixNamespaceOf(flags, r);
            FixHashes(flags, r->mutable_chain_hashes());
          },
          [this](const v1::LookupRequest& req, const v1::LookupResponse& resp,
                 const grpc::Status& s) {
            CheckCode(s);
            if (!s.ok()) return;
            const size_t asked = req.chain_hashes_size() > 0
                                     ? static_cast<size_t>(req.chain_hashes_size())
                                     : req.packed_chain_hashes().size() / kChainHashBytes;
            FUZZ_CHECK(resp.matched_blocks() <= asked);
            FUZZ_CHECK(static_cast<size_t>(resp.blocks_size()) <= asked);
            FUZZ_CHECK(resp.tiers().size() <= asked);
            FUZZ_CHECK(resp.tiers().size() == static_cast<size_t>(resp.sizes_size()));
            for (const v1::BlockInfo& b : resp.blocks()) {  // one token per agent location
              FUZZ_CHECK(b.hot_location_tokens_size() == b.hot_locations_size());
            }
          });
      break;
    case kPublish:
      Call<v1::PublishRequest, v1::PublishResponse>(
          svc, msg, len, &StoreServiceImpl::Publish,
          [&](v1::PublishRequest* r) {
            FixNamespaceOf(flags, r);
            FixHashes(flags, r->mutable_chain_hashes());
          },
          [this](const v1::PublishRequest& req, const v1::PublishResponse& resp,
                 const grpc::Status& s) {
            CheckCode(s);
            FUZZ_CHECK(!s.ok() || resp.results_size() == req.chain_hashes_size());
          });
      break;
    case kBeginPut:
      Call<v1::BeginPutRequest, v1::BeginPutResponse>(
          svc, msg, len, &StoreServiceImpl::BeginPut,
          [&](v1::BeginPutRequest* r) {
            FixNamespaceOf(flags, r);
            FixSession(flags, r->mutable_session_id());
            for (v1::PutBlock& b : *r->mutable_blocks()) FixHash(flags, b.mutable_chain_hash());
            // A one-call put (payloads given): one payload of the block's size and its
            // checksum per block, so that the store path is reached.
            if ((flags & kFlagFixPayloads) && r->payloads_size() > 0) {
              r->clear_checksums();
              for (int i = 0; i < r->blocks_size(); ++i) {
                const uint64_t size = std::min<uint64_t>(r->blocks(i).size(), 1 << 20);
                if (i >= r->payloads_size()) r->add_payloads();
                std::string* p = r->mutable_payloads(i);
                if (p->size() != size) *p = p->empty() ? Payload(size, 7) : NoisePayload(size, *p);
                r->add_checksums(BlockChecksum(p->data(), p->size()));
              }
            }
          },
          [this](const v1::BeginPutRequest& req, const v1::BeginPutResponse& resp,
                 const grpc::Status& s) {
            CheckCode(s);
            if (!s.ok()) return;
            FUZZ_CHECK(resp.slots_size() == req.blocks_size());
            // A one-call put stores or refuses in the call: nothing stays reserved.
            FUZZ_CHECK(req.payloads_size() == 0 || resp.reservation_id() == 0);
            if (resp.reservation_id() == 0) return;
            last_reservation_ = resp.reservation_id();
            last_put_.clear();
            for (const v1::PutBlock& b : req.blocks())
              last_put_.emplace_back(b.chain_hash(), b.size());
          });
      break;
    case kCommitPut:
      Call<v1::CommitPutRequest, v1::CommitPutResponse>(
          svc, msg, len, &StoreServiceImpl::CommitPut,
          [&](v1::CommitPutRequest* r) {
            uint64_t id = r->reservation_id();
            FixId(flags, last_reservation_, &id);
            r->set_reservation_id(id);
            if ((flags & kFlagFixPayloads) && r->blocks().empty()) {
              for (const auto& put : last_put_) r->add_blocks()->set_chain_hash(put.first);
            }
            for (v1::CommitBlock& b : *r->mutable_blocks()) {
              FixHash(flags, b.mutable_chain_hash());
              if (!(flags & kFlagFixPayloads)) continue;
              for (const auto& [hash, size] : last_put_) {
                if (hash != b.chain_hash() || size > config_.max_block_bytes ||
                    b.payload().size() == size) {
                  continue;
                }
                b.set_payload(b.payload().empty() ? Payload(size, 7)
                                                  : NoisePayload(size, b.payload()));
              }
              b.set_checksum(BlockChecksum(b.payload().data(), b.payload().size()));
            }
          },
          [this](const v1::CommitPutRequest& req, const v1::CommitPutResponse& resp,
                 const grpc::Status& s) {
            CheckCode(s);
            FUZZ_CHECK(!s.ok() || resp.results_size() == req.blocks_size());
          });
      break;
    case kAbortPut:
      Call<v1::AbortPutRequest, v1::AbortPutResponse>(
          svc, msg, len, &StoreServiceImpl::AbortPut,
          [&](v1::AbortPutRequest* r) {
            uint64_t id = r->reservation_id();
            FixId(flags, last_reservation_, &id);
            r->set_reservation_id(id);
          },
          code_only);
      break;
    case kBeginGet:
      Call<v1::BeginGetRequest, v1::BeginGetResponse>(
          svc, msg, len, &StoreServiceImpl::BeginGet,
          [&](v1::BeginGetRequest* r) {
            FixNamespaceOf(flags, r);
            FixHashes(flags, r->mutable_chain_hashes());
          },
          [this](const v1::BeginGetRequest& req, const v1::BeginGetResponse& resp,
                 const grpc::Status& s) {
            CheckCode(s);
            if (!s.ok()) return;
            FUZZ_CHECK(resp.blocks_size() == req.chain_hashes_size());
            if (resp.lease_id() != 0) last_lease_ = resp.lease_id();
            for (const v1::GetBlock& b : resp.blocks()) {
              FUZZ_CHECK(b.status().code() != 0 || b.size() > 0);
              if (b.status().code() != 0) FUZZ_CHECK(b.payload().empty());
              if (b.status().code() != 0 || !req.include_payload()) continue;
              // Never torn or foreign bytes: what was read is what was written.
              FUZZ_CHECK(b.payload().size() == b.size());
              FUZZ_CHECK(BlockChecksum(b.payload().data(), b.payload().size()) == b.checksum());
            }
          });
      if (setup_ & kSetupDiskTiers) store_->WaitForPrefetch();
      break;
    case kEndGet:
      Call<v1::EndGetRequest, v1::EndGetResponse>(
          svc, msg, len, &StoreServiceImpl::EndGet,
          [&](v1::EndGetRequest* r) {
            uint64_t id = r->lease_id();
            FixId(flags, last_lease_, &id);
            r->set_lease_id(id);
          },
          code_only);
      break;
    case kDelete:
      Call<v1::DeleteRequest, v1::DeleteResponse>(
          svc, msg, len, &StoreServiceImpl::Delete,
          [&](v1::DeleteRequest* r) {
            FixNamespaceOf(flags, r);
            FixHashes(flags, r->mutable_chain_hashes());
          },
          [this](const v1::DeleteRequest& req, const v1::DeleteResponse& resp,
                 const grpc::Status& s) {
            CheckCode(s);
            FUZZ_CHECK(resp.deleted() <= static_cast<uint32_t>(req.chain_hashes_size()));
          });
      break;
    case kStats:
      Call<v1::StatsRequest, v1::StatsResponse>(
          svc, msg, len, &StoreServiceImpl::Stats, no_fix,
          [](const auto&, const auto&, const grpc::Status& s) { FUZZ_CHECK(s.ok()); });
      break;
    case kPauseSession:
      Call<v1::PauseSessionRequest, v1::PauseSessionResponse>(
          svc, msg, len, &StoreServiceImpl::PauseSession,
          [&](v1::PauseSessionRequest* r) { FixSession(flags, r->mutable_session_id()); },
          code_only);
      break;
    case kResumeSession:
      Call<v1::ResumeSessionRequest, v1::ResumeSessionResponse>(
          svc, msg, len, &StoreServiceImpl::ResumeSession,
          [&](v1::ResumeSessionRequest* r) { FixSession(flags, r->mutable_session_id()); },
          code_only);
      if (setup_ & kSetupDiskTiers) store_->WaitForPrefetch();
      break;
    case kPrefetch:
      Call<v1::PrefetchRequest, v1::PrefetchResponse>(
          svc, msg, len, &StoreServiceImpl::Prefetch,
          [&](v1::PrefetchRequest* r) {
            FixNamespaceOf(flags, r);
            FixHashes(flags, r->mutable_chain_hashes());
            FixSession(flags, r->mutable_session_id());
          },
          code_only);
      if (setup_ & kSetupDiskTiers) store_->WaitForPrefetch();
      break;
    case kInjectFault:
      Call<v1::InjectFaultRequest, v1::InjectFaultResponse>(
          svc, msg, len, &StoreServiceImpl::InjectFault,
          [&](v1::InjectFaultRequest* r) {
            FixNamespaceOf(flags, r);
            FixHash(flags, r->mutable_chain_hash());
          },
          [this](const auto&, const auto&, const grpc::Status& s) {
            CheckCode(s);
            if (!config_.debug_fault_injection) {
              FUZZ_CHECK(s.error_code() == grpc::StatusCode::FAILED_PRECONDITION);
            }
          });
      break;
    case kConnectData:
      Call<v1::ConnectDataRequest, v1::ConnectDataResponse>(
          svc, msg, len, &StoreServiceImpl::ConnectData, no_fix, no_data_plane);
      break;
    case kCloseData:
      Call<v1::CloseDataRequest, v1::CloseDataResponse>(svc, msg, len, &StoreServiceImpl::CloseData,
                                                        no_fix, no_data_plane);
      break;
    case kPutData:
      Call<v1::PutDataRequest, v1::PutDataResponse>(
          svc, msg, len, &StoreServiceImpl::PutData,
          [&](v1::PutDataRequest* r) {
            FixNamespaceOf(flags, r);
            FixSession(flags, r->mutable_session_id());
            for (v1::PutBlock& b : *r->mutable_blocks()) FixHash(flags, b.mutable_chain_hash());
          },
          no_data_plane);
      break;
    case kGetData:
      Call<v1::GetDataRequest, v1::GetDataResponse>(
          svc, msg, len, &StoreServiceImpl::GetData,
          [&](v1::GetDataRequest* r) {
            FixNamespaceOf(flags, r);
            FixHashes(flags, r->mutable_chain_hashes());
          },
          no_data_plane);
      break;
    case kAdvanceClock: {
      uint32_t ms = 0;
      std::memcpy(&ms, msg, std::min<size_t>(len, sizeof(ms)));
      node_->now_ms += ms;
      store_->ExpireNow();
      service_->ExpireDirectory();
      break;
    }
    case kOpCount:
      break;
  }
}

void Harness::CheckInvariants() {
  v1::StatsRequest req;
  v1::StatsResponse resp;
  grpc::ServerContext ctx;
  const grpc::Status s = service_->Stats(&ctx, &req, &resp);
  FUZZ_CHECK_MSG(s.ok(), s.error_message());
  FUZZ_CHECK(resp.tiers_size() == ((setup_ & kSetupDiskTiers) ? 3 : 1));
  const v1::TierStats& warm = resp.tiers(0);
  FUZZ_CHECK(warm.tier() == v1::TIER_WARM);
  FUZZ_CHECK(warm.capacity_bytes() <= config_.warm_bytes);
  FUZZ_CHECK(warm.used_bytes() <= warm.capacity_bytes());
  FUZZ_CHECK(warm.bytes() <= warm.used_bytes());
  FUZZ_CHECK(resp.namespaces() <= config_.max_namespaces);
}

bool Init() {
  spdlog::set_level(spdlog::level::off);     // the node logs every namespace and full tier
  google::protobuf::SetLogHandler(nullptr);  // nor complaints about non-UTF-8 strings
  return true;
}

}  // namespace
}  // namespace strata::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace strata::fuzz;
  static const bool initialized = Init();
  (void)initialized;
  if (size == 0) return 0;
  Harness harness(data[0]);
  size_t pos = 1;
  for (int calls = 0; calls < kMaxCalls && pos + 4 <= size; ++calls) {
    const auto op = static_cast<StoreOp>(data[pos] % kOpCount);
    const uint8_t flags = data[pos + 1];
    const size_t want = data[pos + 2] | (size_t{data[pos + 3]} << 8);
    pos += 4;
    const size_t len = std::min(want, size - pos);
    harness.Run(op, flags, data + pos, len);
    harness.CheckInvariants();
    pos += len;
  }
  return 0;
}
