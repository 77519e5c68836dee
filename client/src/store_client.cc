#include "strata/client/store_client.h"

#include <algorithm>

#include "grpc/grpc.h"
#include "grpc_store_client.h"
#include "spdlog/spdlog.h"
#include "strata/common/checksum.h"

namespace strata::client {
namespace internal {

absl::Status GrpcStoreClient::Init() {
  // One default deadline for the whole connect: the Stats call and the data channel's.
  const Clock::time_point end = Deadline({});
  absl::StatusOr<NodeStats> s = Stats({});
  if (!s.ok()) return s.status();
  max_keys_ = std::max<uint32_t>(1, s->max_keys_per_call);
  max_inline_ = std::max<uint64_t>(1, s->max_inline_bytes);
  max_block_ = s->max_block_bytes;
  if (options_.data_plane == ClientOptions::DataPlane::kInline) return absl::OkStatus();
  if (s->ucx_tls.empty() || s->ucx_lanes == 0) {
    if (options_.data_plane == ClientOptions::DataPlane::kUcx) {
      return absl::FailedPreconditionError(
          Where("Connect") + ": data_plane is kUcx, but the node offers no UCX data plane");
    }
    return absl::OkStatus();
  }
  absl::Status started = StartDataPlane(*s, end);
  if (!started.ok()) {
    if (options_.data_plane == ClientOptions::DataPlane::kUcx) return started;
    // kAuto: inline still works; say why in DataPlaneDescription(). A node that refused the
    // channel for now (at its channel cap, or slow to answer) may take one later: the plane
    // stays and later calls ask again. For lasting reasons (UCX failed here, mismatched
    // settings, not allowed) the plane goes and calls stay inline.
    const absl::StatusCode code = started.code();
    if (ucx_ != nullptr && (code == absl::StatusCode::kResourceExhausted || IsTransient(code))) {
      ChannelRefused(started);
    } else {
      ucx_.reset();
      inline_reason_ = absl::StrCat("ucx unavailable: ", started.message());
    }
  }
  return absl::OkStatus();
}

absl::Status GrpcStoreClient::RegisterMemory(void* ptr, size_t len) {
  if (ucx_ == nullptr) {
    return absl::FailedPreconditionError("RegisterMemory: the client has no UCX data plane (" +
                                         DataPlaneDescription() + ")");
  }
  return ucx_->Register(ptr, len);
}

absl::Status GrpcStoreClient::UnregisterMemory(void* ptr) {
  if (ucx_ == nullptr) {
    return absl::NotFoundError("UnregisterMemory: no range registered (no data plane)");
  }
  return ucx_->Unregister(ptr);
}

std::string GrpcStoreClient::DataPlaneDescription() const {
  if (ucx_ == nullptr) {
    return inline_reason_.empty() ? "inline" : absl::StrCat("inline (", inline_reason_, ")");
  }
  std::string transport;
  {
    absl::MutexLock lock(&chan_mu_);
    if (!refusal_.empty()) {
      return absl::StrCat("inline (ucx channel refused: ", refusal_, "; asked again at times)");
    }
    transport = transport_;
  }
  if (transport.empty()) transport = ucx_tls_;
  const uint32_t lanes = ucx_->lanes();
  std::string mode;
  if (two_sided_get_bytes_ == 0) {
    mode = " (two-sided)";
  } else if (two_sided_puts_) {
    mode = two_sided_get_bytes_ == UINT64_MAX
               ? " (two-sided puts)"
               : absl::StrCat(" (two-sided puts, and gets of blocks from ",
                              two_sided_get_bytes_ >> 10, " KiB)");
  }
  return absl::StrCat("ucx ", transport, mode, ", ", lanes, lanes == 1 ? " lane" : " lanes");
}

absl::StatusOr<Namespace> GrpcStoreClient::RegisterNamespace(const NamespaceSpec& spec,
                                                             const CallOptions& call) {
  if (absl::Status s = ValidateNamespaceSpec(spec); !s.ok()) return s;
  v1::RegisterNamespaceRequest req;
  v1::NamespaceSpec* out = req.mutable_spec();
  out->set_model_id(spec.model_id);
  out->set_dtype(spec.dtype);
  out->set_layout(spec.layout);
  out->set_block_tokens(spec.block_tokens);
  out->set_tp_rank(spec.tp_rank);
  out->set_tp_size(spec.tp_size);
  out->set_hash_algorithm(HashAlgorithmName(spec.hash_algorithm));
  out->set_block_bytes(spec.block_bytes);
  out->set_offload_quant(spec.offload_quant);
  out->set_head_dim(spec.head_dim);
  v1::RegisterNamespaceResponse resp;
  grpc::ClientContext ctx;
  SetDeadline(ctx, Deadline(call));
  if (absl::Status s = FromGrpc(stub_->RegisterNamespace(&ctx, req, &resp), Where("Register"));
      !s.ok()) {
    return s;
  }
  if (resp.namespace_id() != ComputeNamespaceId(spec)) {
    return absl::InternalError(Where("RegisterNamespace") +
                               ": node derived a different namespace id (version skew?)");
  }
  return Namespace{resp.namespace_id(), spec};
}

void GrpcStoreClient::FillLookup(const Namespace& ns, std::string_view scope,
                                 std::span<const ChainHash> hashes, const std::vector<size_t>* idx,
                                 size_t begin, size_t end, bool each_block,
                                 v1::LookupRequest* req) const {
  req->set_epoch(epoch_.load(std::memory_order_relaxed));
  req->set_namespace_id(ns.id);
  req->set_scope(Scope(scope));
  req->set_each_block(each_block);
  req->set_exact_scope(options_.exact_scope_lookups);
  auto hash = [&](size_t j) -> const ChainHash& { return hashes[idx ? (*idx)[j] : j]; };
  if (!packed_lookup_.load(std::memory_order_relaxed)) {
    for (size_t j = begin; j < end; ++j) req->add_chain_hashes(hash(j).ToBytes());
    return;
  }
  std::string* packed = req->mutable_packed_chain_hashes();
  packed->resize((end - begin) * kChainHashBytes);
  for (size_t j = begin; j < end; ++j) {
    std::memcpy(packed->data() + (j - begin) * kChainHashBytes, hash(j).bytes.data(),
                kChainHashBytes);
  }
}

bool GrpcStoreClient::RefusedPacked(const v1::LookupRequest& req, const grpc::Status& status) {
  if (req.packed_chain_hashes().empty() ||
      status.error_code() != grpc::StatusCode::INVALID_ARGUMENT ||
      !absl::StrContains(status.error_message(), "chain_hashes: empty")) {
    return false;
  }
  packed_lookup_.store(false, std::memory_order_relaxed);
  return true;
}

absl::StatusOr<size_t> GrpcStoreClient::CheckLookup(const v1::LookupResponse& resp, size_t asked,
                                                    bool each_block) const {
  const bool compact = !resp.tiers().empty() || resp.sizes_size() > 0;
  const size_t n = compact ? resp.tiers().size() : static_cast<size_t>(resp.blocks_size());
  // A prefix answer lists exactly its matched blocks: a count beyond them would have callers
  // index past the answers (and past what they asked).
  if ((compact && resp.sizes_size() != static_cast<int>(n)) || n > asked ||
      (each_block && n != asked) || (!each_block && resp.matched_blocks() != n)) {
    return absl::InternalError(absl::StrCat(Where("Lookup"), ": ", n, " answers (",
                                            resp.sizes_size(), " sizes) for ", asked, " blocks"));
  }
  return n;
}

BlockLocation GrpcStoreClient::LookupAnswer(const v1::LookupResponse& resp, size_t j) {
  const int k = static_cast<int>(j);
  if (resp.tiers().empty()) return FromProtoInfo(resp.blocks(k));
  return {FromProtoTier(static_cast<v1::Tier>(static_cast<uint8_t>(resp.tiers()[j]))),
          resp.sizes(k),
          {}};
}

absl::StatusOr<LookupResult> GrpcStoreClient::LookupOnce(const Namespace& ns,
                                                         std::string_view scope,
                                                         std::span<const ChainHash> hashes,
                                                         const CallOptions& call) {
  LookupResult result;
  auto deadline = Deadline(call);
  // Sequential parts: a prefix that misses in one part cannot continue in the next.
  for (size_t begin = 0; begin < hashes.size(); begin += max_keys_) {
    size_t end = std::min(hashes.size(), begin + max_keys_);
    v1::LookupRequest req;
    v1::LookupResponse resp;
    grpc::Status st;
    do {
      req.Clear();
      FillLookup(ns, scope, hashes, nullptr, begin, end, false, &req);
      grpc::ClientContext ctx;
      SetDeadline(ctx, deadline);
      st = stub_->Lookup(&ctx, req, &resp);
    } while (RefusedPacked(req, st));
    if (absl::Status s = FromGrpc(st, Where("Lookup")); !s.ok()) return s;
    absl::StatusOr<size_t> n = CheckLookup(resp, end - begin, false);
    if (!n.ok()) return n.status();
    for (size_t j = 0; j < *n; ++j) result.blocks.push_back(LookupAnswer(resp, j));
    result.matched_blocks += resp.matched_blocks();
    if (resp.matched_blocks() < end - begin) break;
  }
  return result;
}

absl::StatusOr<std::vector<BlockLocation>> GrpcStoreClient::LookupEachOnce(
    const Namespace& ns, std::string_view scope, std::span<const ChainHash> hashes,
    const CallOptions& call) {
  std::vector<BlockLocation> out;
  out.reserve(hashes.size());
  auto deadline = Deadline(call);
  for (size_t begin = 0; begin < hashes.size(); begin += max_keys_) {
    size_t end = std::min(hashes.size(), begin + max_keys_);
    v1::LookupRequest req;
    v1::LookupResponse resp;
    grpc::Status st;
    do {
      req.Clear();
      FillLookup(ns, scope, hashes, nullptr, begin, end, true, &req);
      grpc::ClientContext ctx;
      SetDeadline(ctx, deadline);
      st = stub_->Lookup(&ctx, req, &resp);
    } while (RefusedPacked(req, st));
    if (absl::Status s = FromGrpc(st, Where("Lookup")); !s.ok()) return s;
    absl::StatusOr<size_t> n = CheckLookup(resp, end - begin, true);
    if (!n.ok()) return n.status();
    for (size_t j = 0; j < *n; ++j) out.push_back(LookupAnswer(resp, j));
  }
  return out;
}

void GrpcStoreClient::LookupEachOnNodes(std::span<LookupEachWork> work,
                                        std::span<const ChainHash> hashes, const Namespace& ns,
                                        std::string_view scope, const CallOptions& call,
                                        std::span<BlockLocation> out) {
  struct Part {
    size_t work = 0;
    size_t begin = 0, end = 0;
    grpc::ClientContext ctx;
    v1::LookupRequest req;
    v1::LookupResponse resp;
    grpc::Status status;
    std::unique_ptr<grpc::ClientAsyncResponseReader<v1::LookupResponse>> reader;
  };
  const absl::Time started = absl::Now();
  grpc::CompletionQueue cq;  // outlives the calls (parts are destroyed first)
  std::vector<std::unique_ptr<Part>> parts;
  for (size_t w = 0; w < work.size(); ++w) {
    if (work[w].node == nullptr) continue;
    GrpcStoreClient& node = *work[w].node;
    const size_t n = work[w].idx->size();
    const Clock::time_point deadline =
        node.Deadline(work[w].call.deadline > absl::ZeroDuration() ? work[w].call : call);
    for (size_t begin = 0; begin < n; begin += node.max_keys_) {
      auto& p = parts.emplace_back(std::make_unique<Part>());
      p->work = w;
      p->begin = begin;
      p->end = std::min(n, begin + node.max_keys_);
      node.FillLookup(ns, scope, hashes, work[w].idx, p->begin, p->end, true, &p->req);
      node.SetDeadline(p->ctx, deadline);
      p->reader = node.stub_->AsyncLookup(&p->ctx, p->req, &cq);
      p->reader->Finish(&p->resp, &p->status, p.get());
    }
  }
  // Every Finish reports back once, by its deadline at the latest. The calling thread
  // drives the calls while it waits here.
  void* tag = nullptr;
  bool ok = false;
  for (size_t i = 0; i < parts.size() && cq.Next(&tag, &ok); ++i) {
  }
  cq.Shutdown();
  while (cq.Next(&tag, &ok)) {
  }
  // A node's answer counts only if all its parts came back whole.
  std::vector<bool> refused(work.size(), false);
  for (LookupEachWork& w : work) {
    if (w.node != nullptr) w.status = absl::OkStatus();
  }
  for (const auto& p : parts) {
    LookupEachWork& w = work[p->work];
    if (refused[p->work] || !w.status.ok()) continue;
    w.status = FromGrpc(p->status, w.node->Where("Lookup"));
    if (w.node->RefusedPacked(p->req, p->status) || IsNamespaceNotRegistered(w.status)) {
      w.status = absl::OkStatus();
      refused[p->work] = true;
      continue;
    }
    if (w.status.ok()) w.status = w.node->CheckLookup(p->resp, p->end - p->begin, true).status();
  }
  for (const auto& p : parts) {
    if (refused[p->work] || !work[p->work].status.ok()) continue;
    const std::vector<size_t>& idx = *work[p->work].idx;
    for (size_t j = p->begin; j < p->end; ++j) out[idx[j]] = LookupAnswer(p->resp, j - p->begin);
  }
  // A node that predates the compact form is asked again the old way (once per node), and
  // one that forgot the namespace after it is registered again (LookupEach).
  for (size_t w = 0; w < work.size(); ++w) {
    if (!refused[w]) continue;
    std::vector<ChainHash> mine;
    mine.reserve(work[w].idx->size());
    for (size_t i : *work[w].idx) mine.push_back(hashes[i]);
    // What is left of the call's deadline, which the round above may have used up.
    CallOptions left = call;
    if (call.deadline > absl::ZeroDuration()) {
      left.deadline = std::max(absl::Nanoseconds(1), started + call.deadline - absl::Now());
    }
    absl::StatusOr<std::vector<BlockLocation>> r = work[w].node->LookupEach(ns, scope, mine, left);
    work[w].status = r.status();
    if (!r.ok()) continue;
    for (size_t j = 0; j < mine.size(); ++j) out[(*work[w].idx)[j]] = std::move((*r)[j]);
  }
}

absl::StatusOr<std::vector<absl::Status>> GrpcStoreClient::PublishOnce(
    const Namespace& ns, std::string_view scope, std::span<const ChainHash> hashes,
    std::span<const uint64_t> sizes, const PeerLocation& location, absl::Duration ttl,
    const CallOptions& call) {
  if (!sizes.empty() && sizes.size() != hashes.size()) {
    return absl::InvalidArgumentError("Publish: sizes must be empty or one per hash");
  }
  std::vector<absl::Status> out;
  out.reserve(hashes.size());
  auto deadline = Deadline(call);
  for (size_t begin = 0; begin < hashes.size(); begin += max_keys_) {
    size_t end = std::min(hashes.size(), begin + max_keys_);
    v1::PublishRequest req;
    req.set_epoch(epoch_.load(std::memory_order_relaxed));
    req.set_namespace_id(ns.id);
    req.set_scope(Scope(scope));
    req.set_location(location.address);
    req.set_location_token(location.token);
    req.set_ttl_ms(static_cast<uint32_t>(std::max<int64_t>(0, absl::ToInt64Milliseconds(ttl))));
    for (size_t i = begin; i < end; ++i) {
      req.add_chain_hashes(hashes[i].ToBytes());
      if (!sizes.empty()) req.add_sizes(sizes[i]);
    }
    v1::PublishResponse resp;
    grpc::ClientContext ctx;
    SetDeadline(ctx, deadline);
    if (absl::Status s = FromGrpc(stub_->Publish(&ctx, req, &resp), Where("Publish")); !s.ok()) {
      return s;
    }
    for (const v1::BlockStatus& b : resp.results()) out.push_back(FromBlockStatus(b));
  }
  if (out.size() != hashes.size()) {
    return absl::InternalError(absl::StrCat(Where("Publish"), ": ", out.size(), " answers for ",
                                            hashes.size(), " blocks"));
  }
  return out;
}

absl::StatusOr<PutResult> GrpcStoreClient::PutOnce(const Namespace& ns, std::string_view scope,
                                                   std::span<const BlockWrite> blocks,
                                                   const CallOptions& call, const PutOptions& put) {
  PutResult result;
  result.blocks.resize(blocks.size());
  if (blocks.empty()) return result;
  auto deadline = Deadline(call);
  std::string sc = Scope(scope);
  // Blocks the node rejects by size, and null payloads, keep the inline path's reporting.
  bool ucx_fits = true;
  uint64_t largest = 0;
  for (const BlockWrite& b : blocks) {
    ucx_fits = ucx_fits && b.data != nullptr && b.size > 0 && b.size <= max_block_;
    largest = std::max(largest, b.size);
  }
  absl::StatusOr<bool> use_ucx = UseDataChannel(ucx_fits, largest, deadline);
  if (!use_ucx.ok()) return use_ucx.status();
  absl::Status first;
  if (*use_ucx) {
    const bool two_sided = two_sided_puts_;
    std::vector<Placement> placed(blocks.size());
    for (size_t i = 0; i < blocks.size(); ++i) {
      // Two-sided sends read the caller's buffer as it is: no region to look up.
      placed[i] = {two_sided ? nullptr : ucx_->FindRegion(blocks[i].data, blocks[i].size),
                   blocks[i].size};
    }
    auto parts = SplitForDataChannel(placed, two_sided);
    const uint32_t lane0 = next_lane_.fetch_add(static_cast<uint32_t>(parts.size()));
    first = RunParts(parts.size(), [&](size_t p) {
      absl::Status s = PutDataPart(ns, sc, blocks, placed, parts[p], (lane0 + p) % ucx_->lanes(),
                                   two_sided, deadline, put, &result);
      if (!IsInlineInstead(s)) return s;
      return InlineRange(
          parts[p], [&](size_t i) { return blocks[i].size; },
          [&](std::pair<size_t, size_t> r) {
            return PutPart(ns, sc, blocks, r, deadline, put, &result);
          });
    });
  } else {
    auto parts =
        SplitBatch(blocks.size(), max_keys_, max_inline_, [&](size_t i) { return blocks[i].size; });
    first = RunParts(parts.size(), [&](size_t p) {
      return PutPart(ns, sc, blocks, parts[p], deadline, put, &result);
    });
  }
  if (!first.ok()) return first;
  TallyPut(&result);
  return result;
}

void TallyPut(PutResult* result) {
  result->stored = result->already_present = 0;
  for (const absl::Status& s : result->blocks) {
    if (s.ok()) ++result->stored;
    if (s.code() == absl::StatusCode::kAlreadyExists) ++result->already_present;
  }
}

absl::StatusOr<GetResult> GrpcStoreClient::GetOnce(const Namespace& ns, std::string_view scope,
                                                   std::span<const BlockRead> blocks,
                                                   const CallOptions& call, const GetOptions& get) {
  GetResult result;
  result.blocks.resize(blocks.size());
  result.sizes.resize(blocks.size());
  result.checksums.resize(blocks.size());
  if (blocks.empty()) return result;
  if (absl::Status s = CheckReads(blocks); !s.ok()) return s;
  auto deadline = Deadline(call);
  std::string sc = Scope(scope);
  // A block is at most max_block_ bytes, so that much of a larger buffer is all it can use.
  auto usable = [&](size_t i) { return std::min<uint64_t>(blocks[i].capacity, max_block_); };
  bool ucx_fits = true;
  uint64_t largest = 0;
  for (size_t i = 0; i < blocks.size(); ++i) {
    ucx_fits = ucx_fits && blocks[i].buffer != nullptr && usable(i) > 0;
    largest = std::max(largest, usable(i));
  }
  absl::StatusOr<bool> use_ucx = UseDataChannel(ucx_fits, largest, deadline);
  if (!use_ucx.ok()) return use_ucx.status();
  absl::Status first;
  if (*use_ucx) {
    const bool two_sided = largest >= two_sided_get_bytes_;
    std::vector<Placement> placed(blocks.size());
    for (size_t i = 0; i < blocks.size(); ++i) {
      placed[i] = {two_sided ? nullptr : ucx_->FindRegion(blocks[i].buffer, usable(i)), usable(i)};
    }
    auto parts = SplitForDataChannel(placed, two_sided);
    const uint32_t lane0 = next_lane_.fetch_add(static_cast<uint32_t>(parts.size()));
    std::vector<char> late(parts.size(), 0);  // each part's own, as it runs on its own thread
    first = RunParts(parts.size(), [&](size_t p) {
      absl::Status s = GetDataPart(ns, sc, blocks, placed, parts[p], (lane0 + p) % ucx_->lanes(),
                                   two_sided, deadline, get.promote, &result, &late[p]);
      if (!IsInlineInstead(s)) return s;
      return InlineRange(parts[p], usable, [&](std::pair<size_t, size_t> r) {
        return GetPart(ns, sc, blocks, r, deadline, get.promote, &result);
      });
    });
    result.may_land_late = std::ranges::count(late, 1) > 0;
  } else {
    auto parts = SplitBatch(blocks.size(), max_keys_, max_inline_, usable);
    first = RunParts(parts.size(), [&](size_t p) {
      return GetPart(ns, sc, blocks, parts[p], deadline, get.promote, &result);
    });
  }
  if (!first.ok()) return first;
  for (const absl::Status& s : result.blocks) result.fetched += s.ok() ? 1 : 0;
  return result;
}

absl::StatusOr<uint64_t> GrpcStoreClient::DeleteOnce(const Namespace& ns, std::string_view scope,
                                                     std::span<const ChainHash> hashes,
                                                     const CallOptions& call) {
  uint64_t deleted = 0;
  auto deadline = Deadline(call);
  for (size_t begin = 0; begin < hashes.size(); begin += max_keys_) {
    size_t end = std::min(hashes.size(), begin + max_keys_);
    v1::DeleteRequest req;
    req.set_epoch(epoch_.load(std::memory_order_relaxed));
    req.set_namespace_id(ns.id);
    req.set_scope(Scope(scope));
    for (size_t i = begin; i < end; ++i) req.add_chain_hashes(hashes[i].ToBytes());
    v1::DeleteResponse resp;
    grpc::ClientContext ctx;
    SetDeadline(ctx, deadline);
    if (absl::Status s = FromGrpc(stub_->Delete(&ctx, req, &resp), Where("Delete")); !s.ok()) {
      return s;
    }
    deleted += resp.deleted();
  }
  return deleted;
}

absl::StatusOr<NodeStats> GrpcStoreClient::Stats(const CallOptions& call) {
  v1::StatsRequest req;
  v1::StatsResponse resp;
  grpc::ClientContext ctx;
  SetDeadline(ctx, Deadline(call));
  if (absl::Status s = FromGrpc(stub_->Stats(&ctx, req, &resp), Where("Stats")); !s.ok()) {
    return s;
  }
  NodeStats out;
  out.node_id = resp.node_id();
  for (const v1::TierStats& t : resp.tiers()) {
    if (t.tier() == v1::TIER_WARM) {
      out.warm_blocks = t.blocks();
      out.warm_bytes = t.bytes();
      out.warm_used_bytes = t.used_bytes();
      out.warm_capacity_bytes = t.capacity_bytes();
    } else if (t.tier() == v1::TIER_COOL) {
      out.cool_blocks = t.blocks();
      out.cool_bytes = t.bytes();
      out.cool_stored_bytes = t.used_bytes();
      out.cool_capacity_bytes = t.capacity_bytes();
    } else if (t.tier() == v1::TIER_COLD) {
      out.cold_blocks = t.blocks();
      out.cold_bytes = t.bytes();
      out.cold_stored_bytes = t.used_bytes();
      out.cold_capacity_bytes = t.capacity_bytes();
    }
  }
  out.demotions = resp.demotions();
  out.promotions = resp.promotions();
  out.prefetched = resp.prefetched();
  out.prefetch_used = resp.prefetch_used();
  out.prefetch_wasted = resp.prefetch_wasted();
  out.hits = resp.hits();
  out.misses = resp.misses();
  out.evictions = resp.evictions();
  out.leases = resp.leases();
  out.reservations = resp.reservations();
  out.namespaces = resp.namespaces();
  out.data_loss = resp.data_loss();
  out.max_keys_per_call = resp.max_keys_per_call();
  out.max_block_bytes = resp.max_block_bytes();
  out.max_inline_bytes = resp.max_inline_bytes();
  out.ucx_tls = resp.ucx_tls();
  out.ucx_peer_failure_handling = resp.ucx_peer_failure_handling();
  out.ucx_lanes = resp.ucx_lanes();
  out.data_channels = resp.data_channels();
  out.ucx_lanes_replaced = resp.ucx_lanes_replaced();
  out.cluster_mode = resp.cluster_mode();
  out.epoch = resp.epoch();
  out.members = resp.members();
  out.etcd_connected = resp.etcd_connected();
  out.zone = resp.zone();
  out.rebalance_passes = resp.rebalance_passes();
  out.rebalance_pending = resp.rebalance_pending();
  out.rebalance_copied = resp.rebalance_copied();
  out.rebalance_dropped = resp.rebalance_dropped();
  out.under_replicated = resp.under_replicated();
  out.members_placing_otherwise = resp.members_placing_otherwise();
  out.replicas_kept = resp.replicas_kept();
  out.exact_scope_lookups = resp.exact_scope_lookups();
  return out;
}

absl::StatusOr<uint64_t> GrpcStoreClient::PauseSession(std::string_view session_id, bool to_cold,
                                                       const CallOptions& call) {
  v1::PauseSessionRequest req;
  req.set_session_id(std::string(session_id));
  req.set_tier(to_cold ? v1::TIER_COLD : v1::TIER_COOL);
  v1::PauseSessionResponse resp;
  grpc::ClientContext ctx;
  SetDeadline(ctx, Deadline(call));
  absl::Status s = FromGrpc(stub_->PauseSession(&ctx, req, &resp), Where("PauseSession"));
  if (!s.ok()) return s;
  return resp.moved();
}

absl::StatusOr<uint64_t> GrpcStoreClient::ResumeSession(std::string_view session_id,
                                                        const CallOptions& call) {
  v1::ResumeSessionRequest req;
  req.set_session_id(std::string(session_id));
  v1::ResumeSessionResponse resp;
  grpc::ClientContext ctx;
  SetDeadline(ctx, Deadline(call));
  absl::Status s = FromGrpc(stub_->ResumeSession(&ctx, req, &resp), Where("ResumeSession"));
  if (!s.ok()) return s;
  return resp.promoted();
}

absl::StatusOr<uint64_t> GrpcStoreClient::PrefetchOnce(const Namespace& ns, std::string_view scope,
                                                       std::span<const ChainHash> hashes,
                                                       std::string_view session_id,
                                                       const CallOptions& call) {
  v1::PrefetchRequest req;
  req.set_namespace_id(ns.id);
  req.set_scope(Scope(scope));
  req.set_session_id(std::string(session_id));
  for (const ChainHash& h : hashes) req.add_chain_hashes(h.ToBytes());
  v1::PrefetchResponse resp;
  grpc::ClientContext ctx;
  SetDeadline(ctx, Deadline(call));
  absl::Status s = FromGrpc(stub_->Prefetch(&ctx, req, &resp), Where("Prefetch"));
  if (!s.ok()) return s;
  return resp.scheduled();
}

Clock::time_point GrpcStoreClient::Deadline(const CallOptions& call) const {
  absl::Duration d =
      call.deadline > absl::ZeroDuration() ? call.deadline : options_.default_deadline;
  // An infinite (or absurd) deadline would overflow the clock's nanoseconds: a year is none.
  d = std::min(d, absl::Hours(24 * 365));
  return Clock::now() + absl::ToChronoMilliseconds(d);
}

void GrpcStoreClient::SetDeadline(grpc::ClientContext& ctx, Clock::time_point deadline) const {
  ctx.set_deadline(deadline);
  if (!bearer_.empty()) ctx.AddMetadata("authorization", bearer_);
}

std::string GrpcStoreClient::Where(std::string_view op) const {
  return absl::StrCat(std::string(op), " ", options_.address);
}

std::string GrpcStoreClient::Scope(std::string_view scope) const {
  return scope.empty() ? options_.default_scope : std::string(scope);
}

absl::Status GrpcStoreClient::PutPart(const Namespace& ns, const std::string& scope,
                                      std::span<const BlockWrite> blocks,
                                      std::pair<size_t, size_t> range, Clock::time_point deadline,
                                      const PutOptions& put, PutResult* result) {
  v1::BeginPutRequest begin;
  begin.set_epoch(epoch_.load(std::memory_order_relaxed));
  begin.set_namespace_id(ns.id);
  begin.set_scope(scope);
  begin.set_session_id(put.session_id);
  begin.set_copy(put.copy);
  uint64_t total = 0;
  for (size_t i = range.first; i < range.second; ++i) total += blocks[i].size;
  const bool one_call =
      total <= options_.one_call_put_bytes && one_call_puts_.load(std::memory_order_relaxed);
  for (size_t i = range.first; i < range.second; ++i) {
    if (blocks[i].data == nullptr && blocks[i].size > 0) {
      return absl::InvalidArgumentError(absl::StrCat("blocks[", i, "].data: null"));
    }
    v1::PutBlock* b = begin.add_blocks();
    b->set_chain_hash(blocks[i].hash.ToBytes());
    b->set_size(blocks[i].size);
    b->set_depth(blocks[i].depth);
    b->set_importance(blocks[i].importance);
    if (one_call) {
      begin.add_checksums(ChecksumOf(blocks[i]));
      begin.add_payloads(blocks[i].data, blocks[i].size);
    }
  }
  v1::BeginPutResponse reserved;
  {
    grpc::ClientContext ctx;
    SetDeadline(ctx, deadline);
    absl::Status s = FromGrpc(stub_->BeginPut(&ctx, begin, &reserved), Where("BeginPut"));
    if (!s.ok()) return s;
  }
  if (reserved.slots_size() != static_cast<int>(range.second - range.first)) {
    if (reserved.reservation_id() != 0) AbortQuietly(reserved.reservation_id());
    return absl::InternalError(Where("BeginPut") + ": reply has the wrong number of slots");
  }
  if (one_call && reserved.reservation_id() == 0) {
    // Stored in that call (or nothing reserved at all): the slots are the outcomes. A node
    // that predates one-call puts answers a reservation instead, committed below.
    for (size_t i = range.first; i < range.second; ++i) {
      result->blocks[i] =
          FromBlockStatus(reserved.slots(static_cast<int>(i - range.first)).status());
    }
    return absl::OkStatus();
  }
  if (one_call && one_call_puts_.exchange(false, std::memory_order_relaxed)) {
    // A node that predates one-call puts: it ignored the payloads. Send them once from now.
    spdlog::info("{}: the node stores puts in two calls only", Where("BeginPut"));
  }
  v1::CommitPutRequest commit;
  commit.set_reservation_id(reserved.reservation_id());
  std::vector<size_t> committed;
  for (size_t i = range.first; i < range.second; ++i) {
    absl::Status slot = FromBlockStatus(reserved.slots(static_cast<int>(i - range.first)).status());
    result->blocks[i] = slot;
    if (!slot.ok()) continue;
    v1::CommitBlock* c = commit.add_blocks();
    c->set_chain_hash(blocks[i].hash.ToBytes());
    c->set_checksum(ChecksumOf(blocks[i]));
    c->set_payload(blocks[i].data, blocks[i].size);
    committed.push_back(i);
  }
  if (committed.empty()) return absl::OkStatus();
  v1::CommitPutResponse done;
  grpc::ClientContext ctx;
  SetDeadline(ctx, deadline);
  absl::Status s = FromGrpc(stub_->CommitPut(&ctx, commit, &done), Where("CommitPut"));
  if (!s.ok()) {
    // The reservation would expire on its own; releasing it now frees the node sooner.
    AbortQuietly(reserved.reservation_id());
    return s;
  }
  if (done.results_size() != static_cast<int>(committed.size())) {
    return absl::InternalError(Where("CommitPut") + ": reply has the wrong number of results");
  }
  for (size_t k = 0; k < committed.size(); ++k) {
    result->blocks[committed[k]] = FromBlockStatus(done.results(static_cast<int>(k)));
  }
  return absl::OkStatus();
}

absl::Status GrpcStoreClient::GetPart(const Namespace& ns, const std::string& scope,
                                      std::span<const BlockRead> blocks,
                                      std::pair<size_t, size_t> range, Clock::time_point deadline,
                                      bool promote, GetResult* result) {
  v1::BeginGetRequest req;
  req.set_epoch(epoch_.load(std::memory_order_relaxed));
  req.set_namespace_id(ns.id);
  req.set_scope(scope);
  req.set_include_payload(true);
  req.set_skip_promotion(!promote);
  for (size_t i = range.first; i < range.second; ++i) {
    req.add_chain_hashes(blocks[i].hash.ToBytes());
  }
  v1::BeginGetResponse resp;
  grpc::ClientContext ctx;
  SetDeadline(ctx, deadline);
  if (absl::Status s = FromGrpc(stub_->BeginGet(&ctx, req, &resp), Where("BeginGet")); !s.ok()) {
    return s;
  }
  if (resp.blocks_size() != static_cast<int>(range.second - range.first)) {
    if (resp.lease_id() != 0) EndGetQuietly(resp.lease_id());
    return absl::InternalError(Where("BeginGet") + ": reply has the wrong number of blocks");
  }
  for (size_t i = range.first; i < range.second; ++i) {
    const v1::GetBlock& b = resp.blocks(static_cast<int>(i - range.first));
    absl::Status st = FromBlockStatus(b.status());
    if (st.ok() && b.payload().size() != b.size()) {
      st = absl::DataLossError(
          absl::StrCat("payload is ", b.payload().size(), " bytes, node said ", b.size()));
    }
    if (st.ok() && b.size() > blocks[i].capacity) {
      st = absl::OutOfRangeError(
          absl::StrCat("block is ", b.size(), " bytes, buffer holds ", blocks[i].capacity));
    }
    if (st.ok()) {
      // End-to-end check, made where the caller reads the bytes, after the copy: this runs
      // again after UCX bytes failed in the buffer (RetryInline), when a late write there may
      // still be landing.
      std::memcpy(blocks[i].buffer, b.payload().data(), b.size());
      if (BlockChecksum(blocks[i].buffer, b.size()) != b.checksum()) {
        st = absl::DataLossError("payload failed its checksum after transfer");
      } else {
        result->sizes[i] = b.size();
        result->checksums[i] = b.checksum();
      }
    }
    result->blocks[i] = std::move(st);
  }
  if (resp.lease_id() != 0) EndGetQuietly(resp.lease_id());
  return absl::OkStatus();
}

void GrpcStoreClient::EndGetQuietly(uint64_t lease_id) {
  v1::EndGetRequest req;
  req.set_lease_id(lease_id);
  CallQuietly<v1::EndGetRequest, v1::EndGetResponse>(
      [this](auto* ctx, auto* rq, auto* rs, auto cb) {
        stub_->async()->EndGet(ctx, rq, rs, std::move(cb));
      },
      std::move(req));
}

void GrpcStoreClient::AbortQuietly(uint64_t reservation_id) {
  v1::AbortPutRequest req;
  req.set_reservation_id(reservation_id);
  CallQuietly<v1::AbortPutRequest, v1::AbortPutResponse>(
      [this](auto* ctx, auto* rq, auto* rs, auto cb) {
        stub_->async()->AbortPut(ctx, rq, rs, std::move(cb));
      },
      std::move(req));
}

}  // namespace internal

using internal::GrpcStoreClient;

absl::StatusOr<std::unique_ptr<StoreClient>> StoreClient::Connect(const ClientOptions& options) {
  if (!options.etcd_endpoints.empty() || !options.cluster_members.empty()) {
    return internal::ConnectCluster(options);
  }
  absl::StatusOr<std::unique_ptr<internal::GrpcStoreClient>> node = internal::ConnectNode(options);
  if (!node.ok()) return node.status();
  return std::unique_ptr<StoreClient>(std::move(*node));
}

namespace internal {

absl::StatusOr<std::unique_ptr<GrpcStoreClient>> ConnectNode(const ClientOptions& options) {
  if (options.address.empty()) return absl::InvalidArgumentError("address: empty");
  // gRPC stays initialized for the rest of the process: it shuts down when its last object
  // goes, and its shutdown waits for ever on a thread it could not start (the process at its
  // thread limit, gRPC 1.51); clients come and go, gRPC's few idle threads stay.
  [[maybe_unused]] static const bool kept_initialized = [] {
    grpc_init();
    return true;
  }();
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(1 << 30);
  args.SetMaxSendMessageSize(1 << 30);
  // Reconnect quickly after a node restarts instead of backing off for up to two minutes.
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> creds = ChannelCredentials(options);
  if (!creds.ok()) return creds.status();
  auto channel = grpc::CreateCustomChannel(options.address, *creds, args);
  auto client = std::make_unique<GrpcStoreClient>(options, std::move(channel));
  if (absl::Status s = client->Init(); !s.ok()) return s;
  return client;
}

}  // namespace internal

}  // namespace strata::client
