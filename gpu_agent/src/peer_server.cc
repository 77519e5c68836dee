#include "peer_server.h"

#include <grpcpp/grpcpp.h>
#include <grpcpp/resource_quota.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>

#include <algorithm>
#include <atomic>
#include <optional>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "spdlog/spdlog.h"
#include "strata/common/chain_hash.h"
#include "strata/common/listener_watch.h"
#include "strata/common/namespace.h"
#include "strata/common/threads.h"
#include "strata/common/timed_turn.h"
#include "strata/proto/bearer_token.h"
#include "strata/proto/server_connections.h"
#include "strata/proto/status_convert.h"
#include "strata/proto/tls_files.h"
#include "strata/transport/data_plane.h"
#include "strata/v1/store.grpc.pb.h"

namespace strata::gpu_agent {
namespace {

// The largest gRPC message the server takes or sends.
constexpr uint64_t kMaxMessageBytes = 1ull << 30;
// Inline payload one call may carry: the whole serve region, within a message (a 1 MiB margin
// for the rest of the reply). Readers split their batches by it.
uint64_t MaxInlineBytes(const PeerServerOptions& o) {
  return std::min<uint64_t>(o.block_bytes * o.max_blocks, kMaxMessageBytes - (1 << 20));
}
// Reads (BeginGet, GetData) served or waiting for the serve region at once; one more is
// RESOURCE_EXHAUSTED at once (its reader goes to the store). Reads take turns on the one
// region, so more waiting would only add threads and replies in the engine's process.
constexpr int kMaxReads = 8;
// The largest request the server takes: a read names at most max_blocks blocks, each with
// its hash, destination or tag and at most one packed rkey (well under 1 KiB together); the
// rest is a margin for the other fields. Only replies carry payloads.
uint64_t MaxRequestBytes(const PeerServerOptions& o) {
  return (1 << 20) + uint64_t{o.max_blocks} * 1024;
}
// Threads gRPC may run calls on: the reads, and as many again for the small calls (Stats,
// ConnectData, ...) and the pollers; past them gRPC refuses calls itself (RESOURCE_EXHAUSTED).
constexpr int kMaxThreads = 2 * kMaxReads + 8;

// The host of a gRPC peer ("ipv4:10.0.0.7:51234" -> "ipv4:10.0.0.7", "ipv6:[::1]:5" ->
// "ipv6:[::1]"): what the per-peer channel cap counts by. Other forms are taken whole.
std::string PeerHost(const std::string& peer) {
  if (!peer.starts_with("ipv4:") && !peer.starts_with("ipv6:")) return peer;
  const size_t colon = peer.rfind(':');
  return colon > 4 ? peer.substr(0, colon) : peer;
}

namespace v1 = strata::v1;
using proto::ToBlockStatus;
using proto::ToGrpc;

class PeerService final : public v1::StoreService::Service {
 public:
  PeerService(const PeerServerOptions& options, uint8_t* region, GatherFn gather,
              transport::DataPlane* plane)
      : options_(options),
        region_(region),
        gather_(std::move(gather)),
        plane_(plane),
        token_(options.token) {}

  void RotateToken(std::string token, absl::Time previous_until) {
    absl::MutexLock lock(&token_mu_);
    const absl::Time now = absl::Now();
    std::erase_if(previous_, [now](const auto& p) { return p.second <= now; });
    previous_.emplace_back(std::move(token_), previous_until);
    token_ = std::move(token);
  }

  uint64_t served() const { return served_.load(std::memory_order_relaxed); }

  // OK when the call presents this server's token. The comparison takes the same time however
  // much of a wrong token matches; the answer never says which part was wrong.
  grpc::Status Authenticate(const grpc::ServerContext* ctx) const {
    absl::StatusOr<std::optional<std::string_view>> token = proto::BearerToken(*ctx);
    if (token.ok() && !token->has_value()) {
      return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                          "no credentials: this agent's peers present the token its directory "
                          "entries carry (authorization: Bearer)");
    }
    bool known = false;
    if (token.ok()) {
      absl::MutexLock lock(&token_mu_);
      const absl::Time now = absl::Now();
      known = Matches(**token, token_);
      for (const auto& [old, until] : previous_) known |= now < until && Matches(**token, old);
    }
    if (!known) return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "unknown credentials");
    return grpc::Status::OK;
  }

  static bool Matches(std::string_view got, const std::string& want) {
    return got.size() == want.size() && CRYPTO_memcmp(got.data(), want.data(), want.size()) == 0;
  }

  grpc::Status Stats(grpc::ServerContext* ctx, const v1::StatsRequest*,
                     v1::StatsResponse* resp) override {
    if (grpc::Status a = Authenticate(ctx); !a.ok()) return a;
    resp->set_node_id(options_.node_id);
    resp->set_max_keys_per_call(options_.max_blocks);
    resp->set_max_block_bytes(options_.block_bytes);
    resp->set_max_inline_bytes(MaxInlineBytes(options_));
    resp->set_cluster_mode("agent");
    if (plane_ != nullptr) {
      resp->set_ucx_tls(plane_->tls());
      resp->set_ucx_peer_failure_handling(plane_->peer_failure_handling());
      resp->set_ucx_lanes(plane_->lanes());
      resp->set_data_channels(plane_->channels());
    }
    return grpc::Status::OK;
  }

  grpc::Status RegisterNamespace(grpc::ServerContext* ctx, const v1::RegisterNamespaceRequest* req,
                                 v1::RegisterNamespaceResponse* resp) override {
    if (grpc::Status a = Authenticate(ctx); !a.ok()) return a;
    absl::StatusOr<ChainHashAlgorithm> algo = ParseChainHashAlgorithm(req->spec().hash_algorithm());
    if (!algo.ok()) return ToGrpc(algo.status());
    const v1::NamespaceSpec& in = req->spec();
    NamespaceSpec spec{
        in.model_id(), in.dtype(),       in.layout(), in.block_tokens(), in.tp_rank(), in.tp_size(),
        *algo,         in.block_bytes(), "",          in.head_dim()};
    if (absl::Status v = ValidateNamespaceSpec(spec); !v.ok()) return ToGrpc(v);
    const NamespaceId id = ComputeNamespaceId(spec);
    if (id != options_.namespace_id) {
      return ToGrpc(absl::FailedPreconditionError(absl::StrCat(
          "this agent serves namespace 0x", absl::Hex(options_.namespace_id, absl::kZeroPad16),
          " only; the spec names 0x", absl::Hex(id, absl::kZeroPad16))));
    }
    resp->set_namespace_id(id);
    return grpc::Status::OK;
  }

  grpc::Status BeginGet(grpc::ServerContext* ctx, const v1::BeginGetRequest* req,
                        v1::BeginGetResponse* resp) override {
    if (grpc::Status a = Authenticate(ctx); !a.ok()) return a;
    std::vector<ChainHash> hashes;
    if (absl::Status s = Keys(req->namespace_id(), req->chain_hashes(), &hashes); !s.ok()) {
      return ToGrpc(s);
    }
    RegionTurn turn(*this, ctx);
    if (!turn.status().ok()) return ToGrpc(turn.status());
    std::vector<uint64_t> checksums(hashes.size());
    std::vector<absl::Status> status = Gather(hashes, req->scope(), checksums.data());
    for (size_t i = 0; i < hashes.size(); ++i) {
      v1::GetBlock* b = resp->add_blocks();
      ToBlockStatus(status[i], b->mutable_status());
      if (!status[i].ok()) continue;
      const uint8_t* data = region_ + i * options_.block_bytes;
      b->set_tier(v1::TIER_HOT);
      b->set_size(options_.block_bytes);
      b->set_checksum(checksums[i]);
      if (req->include_payload()) {
        b->set_payload(reinterpret_cast<const char*>(data), options_.block_bytes);
      }
    }
    return grpc::Status::OK;
  }

  grpc::Status EndGet(grpc::ServerContext* ctx, const v1::EndGetRequest*,
                      v1::EndGetResponse*) override {
    if (grpc::Status a = Authenticate(ctx); !a.ok()) return a;
    return grpc::Status::OK;  // BeginGet pins nothing past its own reply
  }

  grpc::Status ConnectData(grpc::ServerContext* ctx, const v1::ConnectDataRequest* req,
                           v1::ConnectDataResponse* resp) override {
    if (grpc::Status a = Authenticate(ctx); !a.ok()) return a;
    if (plane_ == nullptr) return ToGrpc(NoDataPlane());
    std::vector<std::string> addresses(req->worker_addresses().begin(),
                                       req->worker_addresses().end());
    absl::StatusOr<transport::DataPlane::Channel> ch =
        plane_->Connect(addresses, {req->ucx_tcp_tx_seg_bytes(), req->ucx_tcp_rx_seg_bytes()},
                        PeerHost(ctx->peer()));
    if (!ch.ok()) return ToGrpc(ch.status());
    if (ctx->IsCancelled()) {
      // The reader gave up (its deadline, or it went): a channel it never learns of would hold
      // one of its host's places until it idles out, as at a node (store_service_data.cc).
      plane_->Close(ch->id).IgnoreError();
      return grpc::Status(grpc::StatusCode::CANCELLED,
                          "ConnectData: the caller gave up; channel closed");
    }
    resp->set_channel_id(ch->id);
    for (const std::string& a : ch->worker_addresses) resp->add_worker_addresses(a);
    resp->set_transport(ch->transport);
    resp->set_ucx_tcp_tx_seg_bytes(plane_->tcp_segments().tx);
    resp->set_ucx_tcp_rx_seg_bytes(plane_->tcp_segments().rx);
    return grpc::Status::OK;
  }

  grpc::Status CloseData(grpc::ServerContext* ctx, const v1::CloseDataRequest* req,
                         v1::CloseDataResponse*) override {
    if (grpc::Status a = Authenticate(ctx); !a.ok()) return a;
    if (plane_ == nullptr) return ToGrpc(NoDataPlane());
    return ToGrpc(plane_->Close(req->channel_id()));
  }

  grpc::Status GetData(grpc::ServerContext* ctx, const v1::GetDataRequest* req,
                       v1::GetDataResponse* resp) override {
    if (grpc::Status a = Authenticate(ctx); !a.ok()) return a;
    if (plane_ == nullptr) return ToGrpc(NoDataPlane());
    std::vector<ChainHash> hashes;
    if (absl::Status s = Keys(req->namespace_id(), req->chain_hashes(), &hashes); !s.ok()) {
      return ToGrpc(s);
    }
    const int n = static_cast<int>(hashes.size());
    const bool two_sided = req->tags_size() > 0;
    if (two_sided ? (req->tags_size() != n || req->capacities_size() != n)
                  : req->destinations_size() != n) {
      return ToGrpc(absl::InvalidArgumentError(
          absl::StrCat("tags / capacities / destinations: one per block (", n, " blocks)")));
    }
    // As a node checks them (store_service_data.cc): a tag names the caller's channel, and a
    // destination is a non-null range that does not wrap around.
    for (int i = 0; two_sided && i < n; ++i) {
      if (!transport::TagNamesChannel(req->tags(i), req->channel_id())) {
        return ToGrpc(absl::InvalidArgumentError(absl::StrCat(
            "tags[", i, "]: high 32 bits must be the channel id ", req->channel_id())));
      }
    }
    for (int i = 0; !two_sided && i < n; ++i) {
      const v1::RemoteBuffer& d = req->destinations(i);
      if (d.rkey_index() >= static_cast<uint32_t>(req->rkeys_size()) || d.addr() == 0 ||
          d.addr() + d.length() < d.addr()) {
        return ToGrpc(absl::InvalidArgumentError(absl::StrCat(
            "destinations[", i, "]: null or wrapping address range, or rkey_index out of range")));
      }
    }
    RegionTurn turn(*this, ctx);
    if (!turn.status().ok()) return ToGrpc(turn.status());
    std::vector<uint64_t> checksums(hashes.size());
    std::vector<absl::Status> status = Gather(hashes, req->scope(), checksums.data());
    std::vector<transport::TransferOp> ops;
    for (int i = 0; i < n; ++i) {
      uint8_t* data = region_ + i * options_.block_bytes;
      const uint64_t capacity = two_sided ? req->capacities(i) : req->destinations(i).length();
      if (status[i].ok() && options_.block_bytes > capacity) {
        status[i] = absl::OutOfRangeError(absl::StrCat("block is ", options_.block_bytes,
                                                       " bytes, destination holds ", capacity));
      }
      v1::GetBlock* b = resp->add_blocks();
      ToBlockStatus(status[i], b->mutable_status());
      const bool send = status[i].ok();
      if (send) {
        b->set_tier(v1::TIER_HOT);
        b->set_size(options_.block_bytes);
        b->set_checksum(checksums[i]);
      }
      if (two_sided) {  // exactly one message per tag, empty for blocks not sent
        ops.push_back(transport::TransferOp::Send(send ? data : nullptr,
                                                  send ? options_.block_bytes : 0, req->tags(i)));
      } else if (send) {
        const v1::RemoteBuffer& dst = req->destinations(i);
        ops.push_back({transport::TransferOp::Kind::kPut, data, options_.block_bytes, dst.addr(),
                       req->rkeys(static_cast<int>(dst.rkey_index()))});
      }
    }
    // The serve region is one: a reader holds it (and every other reader waits) until its
    // transfer ends. 5 s moves any batch many times over; a reader that posts no receives, or
    // stalls, holds the others up that long at most (it was 30 s).
    const absl::Time deadline =
        std::min(absl::FromChrono(ctx->deadline()), absl::Now() + options_.serve_timeout);
    if (!ops.empty()) {
      if (absl::Status moved = plane_->Transfer(req->channel_id(), req->lane(), ops, deadline);
          !moved.ok()) {
        return ToGrpc(moved);
      }
    }
    return grpc::Status::OK;
  }

 private:
  // A read's turn on the serve region: one of kMaxReads places, then the region itself by
  // the call's deadline (at most serve_timeout from now). status() says whether it got it.
  class RegionTurn {
   public:
    RegionTurn(PeerService& s, const grpc::ServerContext* ctx) : s_(s) {
      if (s_.reads_.fetch_add(1, std::memory_order_acq_rel) >= kMaxReads) {
        status_ = absl::ResourceExhaustedError(
            absl::StrCat("peer busy: ", kMaxReads, " reads in flight; read from the store"));
        return;
      }
      const absl::Time caller = absl::FromChrono(ctx->deadline());
      const absl::Time cap = absl::Now() + s_.options_.serve_timeout;
      hold_.emplace(s_.region_turn_, std::min(caller, cap));
      if (!hold_->taken()) {
        // Kept out by other reads for serve_timeout, well within the caller's deadline: the
        // peer is busy, not gone (a reader takes DEADLINE_EXCEEDED for a silent peer).
        status_ =
            cap < caller
                ? absl::ResourceExhaustedError(absl::StrCat(
                      "peer busy: the serve region stayed taken for ",
                      absl::FormatDuration(s_.options_.serve_timeout), "; read from the store"))
                : absl::DeadlineExceededError("peer busy: the serve region stayed taken");
      } else if (ctx->IsCancelled()) {
        status_ = absl::CancelledError("the reader gave up while waiting");
      }
    }
    ~RegionTurn() {
      hold_.reset();
      s_.reads_.fetch_sub(1, std::memory_order_acq_rel);
    }
    RegionTurn(const RegionTurn&) = delete;
    RegionTurn& operator=(const RegionTurn&) = delete;
    const absl::Status& status() const { return status_; }

   private:
    PeerService& s_;
    std::optional<TimedTurn::Hold> hold_;
    absl::Status status_;
  };

  static absl::Status NoDataPlane() {
    return absl::FailedPreconditionError("this agent serves peers inline only (no UCX)");
  }

  absl::Status Keys(uint64_t ns, const google::protobuf::RepeatedPtrField<std::string>& raw,
                    std::vector<ChainHash>* hashes) const {
    if (ns != options_.namespace_id) {
      return absl::InvalidArgumentError(absl::StrCat(
          "namespace_id 0x", absl::Hex(ns, absl::kZeroPad16), ": not this agent's namespace"));
    }
    if (raw.size() > static_cast<int>(options_.max_blocks)) {
      return absl::InvalidArgumentError(
          absl::StrCat("chain_hashes: ", raw.size(), " blocks, at most ", options_.max_blocks));
    }
    for (int i = 0; i < raw.size(); ++i) {
      absl::StatusOr<ChainHash> h =
          ChainHash::FromBytes(raw[i], absl::StrCat("chain_hashes[", i, "]"));
      if (!h.ok()) return h.status();
      hashes->push_back(*h);
    }
    return absl::OkStatus();
  }

  // Another scope's blocks are never this agent's: every block is NOT_FOUND then. Except a
  // `shared` agent's, which every tenant may read (the store hands its location and token to
  // each, for a lookup in the tenant's own scope, which the reader then names). An empty
  // scope on either side is the caller's own tenant, which the node resolves and neither
  // agent knows ("" and "tenant-a", or "default" without auth, name one scope): it matches,
  // and the token, which the node hands only to readers of this agent's scope, decides.
  // Only with the region's turn (RegionTurn).
  std::vector<absl::Status> Gather(std::span<const ChainHash> hashes, const std::string& scope,
                                   uint64_t* checksums) {
    const bool same = scope == options_.scope || scope.empty() || options_.scope.empty();
    if (!same && options_.scope != kSharedScope) {
      return std::vector<absl::Status>(hashes.size(),
                                       absl::NotFoundError("not in this agent's scope"));
    }
    std::vector<absl::Status> status = gather_(hashes, region_, checksums);
    for (const absl::Status& s : status) served_.fetch_add(s.ok(), std::memory_order_relaxed);
    return status;
  }

  const PeerServerOptions options_;
  uint8_t* const region_;
  const GatherFn gather_;
  transport::DataPlane* const plane_;
  TimedTurn region_turn_;      // the serve region: one reader at a time
  std::atomic<int> reads_{0};  // RegionTurn places taken
  std::atomic<uint64_t> served_{0};
  // The token peers present, and earlier ones until their grace ends (RotateToken; pruned at
  // each rotation, so at most grace / rotation period of them).
  mutable absl::Mutex token_mu_;
  std::string token_ ABSL_GUARDED_BY(token_mu_);
  std::vector<std::pair<std::string, absl::Time>> previous_ ABSL_GUARDED_BY(token_mu_);
};

class PeerServerImpl : public PeerServer {
 public:
  int port() const override { return port_; }
  uint64_t blocks_served() const override { return service_->served(); }
  void RotateToken(std::string token, absl::Time previous_until) override {
    service_->RotateToken(std::move(token), previous_until);
  }
  std::string Broken() const override {
    if (std::string why = listener_watch_->Broken(); !why.empty()) return "peer server: " + why;
    const uint64_t wedged = plane_ != nullptr ? plane_->lanes_wedged() : 0;
    if (wedged == 0) return "";
    return absl::StrCat("peer server: ", wedged, " UCX lanes wedged and not replaced");
  }
  ~PeerServerImpl() override {
    if (listener_watch_ != nullptr) listener_watch_->Stop();  // the listener closes on purpose
    if (server_ != nullptr) server_->Shutdown(std::chrono::system_clock::now());
    stop_.Notify();
    if (housekeeping_.joinable()) housekeeping_.join();
  }

  // Once a second: closes channels peers left idle (a peer that died holds one of the 256
  // otherwise) and drops messages no call claims (DataPlane::SweepUnclaimed).
  absl::Status StartHousekeeping() {
    absl::StatusOr<std::thread> thread = StartThread("the peer server's housekeeping", [this] {
      while (!stop_.WaitForNotificationWithTimeout(absl::Seconds(1))) {
        if (uint64_t n = plane_->CloseIdle(); n > 0) {
          spdlog::info("peer server: closed {} idle data channels", n);
        }
        plane_->SweepUnclaimed();
      }
    });
    if (!thread.ok()) return thread.status();
    housekeeping_ = *std::move(thread);
    return absl::OkStatus();
  }

  std::unique_ptr<transport::DataPlane> plane_;
  std::unique_ptr<PeerService> service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  std::unique_ptr<ListenerWatch> listener_watch_;
  absl::Notification stop_;
  std::thread housekeeping_;
};

}  // namespace

std::string RandomPeerToken() {
  unsigned char raw[32];
  if (RAND_bytes(raw, sizeof(raw)) != 1) {
    // No entropy source: refuse to serve rather than publish a guessable token.
    return "";
  }
  return absl::BytesToHexString(std::string(reinterpret_cast<const char*>(raw), sizeof(raw)));
}

absl::StatusOr<std::unique_ptr<PeerServer>> PeerServer::Start(const PeerServerOptions& options,
                                                              uint8_t* region, GatherFn gather) {
  if (options.token.empty() || options.token.size() > 128) {
    return absl::InvalidArgumentError(
        absl::StrCat("peer server token: ", options.token.size(),
                     " characters, want 1..128 (peers must "
                     "authenticate; an empty token may mean the random generator failed)"));
  }
  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> credentials =
      proto::ServerTlsCredentials(options.tls_cert, options.tls_key, "", false, "peer_tls");
  if (!credentials.ok()) return credentials.status();
  auto s = std::make_unique<PeerServerImpl>();
  const uint64_t region_bytes = options.block_bytes * options.max_blocks;
  if (!options.ucx_tls.empty()) {
    transport::DataPlaneOptions dp;
    dp.tls = options.ucx_tls;
    dp.lanes = 1;
    dp.max_channels = options.max_channels;
    dp.max_channels_per_owner = options.max_channels_per_peer;
    dp.max_block_bytes = options.block_bytes;
    dp.channel_idle = options.channel_idle;
    // The agent only sends (GetData): it posts no receive, so a message a peer sends it is
    // never claimed and would hold its bytes in UCX until swept. Its channel closes at the
    // next sweep (about a second) instead of after the node's 30 s.
    dp.unclaimed_timeout = absl::ZeroDuration();
    absl::StatusOr<std::unique_ptr<transport::DataPlane>> plane =
        transport::DataPlane::Create(dp, region, region_bytes);
    if (!plane.ok()) return plane.status();
    s->plane_ = std::move(*plane);
  }
  s->service_ = std::make_unique<PeerService>(options, region, std::move(gather), s->plane_.get());
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.listen, *credentials, &s->port_);
  // Bounded in the engine's process as in a store node (security.md, "Admission"): requests
  // are small, gRPC's buffers and threads have a ceiling (it refuses calls past them), and
  // the HTTP/2 window is fixed rather than grown by bandwidth probing, and idle connections
  // go (server_connections.h).
  builder.SetMaxReceiveMessageSize(static_cast<int>(MaxRequestBytes(options)));
  builder.SetMaxSendMessageSize(static_cast<int>(MaxInlineBytes(options) + (1 << 20)));
  grpc::ResourceQuota quota("strata-gpu-agent-peers");
  quota.Resize(2 * MaxInlineBytes(options) + (16ull << 20));
  quota.SetMaxThreads(kMaxThreads);
  builder.SetResourceQuota(quota);
  proto::BoundServerConnections(builder);
  builder.RegisterService(s->service_.get());
  s->server_ = builder.BuildAndStart();
  if (s->server_ == nullptr || s->port_ == 0) {
    return absl::UnavailableError(absl::StrCat("peer server: cannot listen on ", options.listen));
  }
  s->listener_watch_ = ListenerWatch::Start({s->port_});
  if (s->plane_ != nullptr) {
    if (absl::Status started = s->StartHousekeeping(); !started.ok()) return started;
  }
  spdlog::info("gpu agent serving peers on port {} ({}, {})", s->port_,
               options.ucx_tls.empty() ? "inline" : options.ucx_tls,
               options.tls_cert.empty() ? "plaintext gRPC" : "TLS");
  return s;
}

}  // namespace strata::gpu_agent
