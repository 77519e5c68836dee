// The UCX data-plane calls of StoreServiceImpl (store_service.h): ConnectData, CloseData,
// PutData and GetData. Split from store_service.cc, which serves the control plane.
#include <algorithm>
#include <bit>
#include <optional>
#include <vector>

#include "absl/strings/str_cat.h"
#include "service_call.h"
#include "spdlog/spdlog.h"
#include "store_service.h"
#include "strata/common/byte_size.h"
#include "strata/common/checksum.h"
#include "strata/proto/status_convert.h"

namespace strata::storenode {

using proto::ToBlockStatus;
using proto::ToGrpc;

namespace {

absl::Status NoDataPlane() {
  return absl::FailedPreconditionError(
      "this node has no UCX data plane (ucx_tls is empty): send payloads inline");
}

// Checks one RemoteBuffer against the request's rkeys.
absl::Status CheckRemote(const v1::RemoteBuffer& r, int rkeys, const std::string& field) {
  if (r.rkey_index() >= static_cast<uint32_t>(rkeys)) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ".rkey_index: ", r.rkey_index(), ", the request has ", rkeys));
  }
  if (r.addr() == 0 || r.addr() + r.length() < r.addr()) {
    return absl::InvalidArgumentError(absl::StrCat(field, ": null or wrapping address range"));
  }
  return absl::OkStatus();
}

// Two-sided puts whose blocks average at least this many bytes are verified block by block as
// they land, while the rest of the call is in flight; smaller ones at commit, where a wakeup
// per block would cost more than the overlap gains (transfer-protocol.md, "Verifying puts as
// they land").
constexpr uint64_t kVerifyWhileLandingBytes = 128 << 10;

// The trailing checksums message is 8 bytes per block, little-endian (PutDataRequest
// .checksums_tag), read in place.
static_assert(std::endian::native == std::endian::little);

// PutDataRequest's tags and checksums fields: one checksum or none (trailing) per block, one
// tag per block in two-sided mode, all naming the channel, the trailing one none of the others.
absl::Status CheckPutFields(const v1::PutDataRequest& req, int n) {
  const bool two_sided = req.tags_size() > 0;
  const bool trailing = req.checksums_tag() != 0;
  if (trailing && !two_sided) {
    return absl::InvalidArgumentError("checksums_tag: only with tags (two-sided mode)");
  }
  if (req.checksums_size() != (trailing ? 0 : n)) {
    return absl::InvalidArgumentError(
        trailing
            ? absl::StrCat("checksums: ", req.checksums_size(),
                           " entries, want none with checksums_tag")
            : absl::StrCat("checksums: ", req.checksums_size(), " entries for ", n, " blocks"));
  }
  if (!two_sided) return absl::OkStatus();
  if (req.tags_size() != n) {
    return absl::InvalidArgumentError(
        absl::StrCat("tags: ", req.tags_size(), " entries for ", n, " blocks"));
  }
  if (trailing && !transport::TagNamesChannel(req.checksums_tag(), req.channel_id())) {
    return absl::InvalidArgumentError(
        absl::StrCat("checksums_tag: high 32 bits must be the channel id ", req.channel_id()));
  }
  for (int i = 0; i < n; ++i) {
    if (!transport::TagNamesChannel(req.tags(i), req.channel_id())) {
      return absl::InvalidArgumentError(
          absl::StrCat("tags[", i, "]: high 32 bits must be the channel id ", req.channel_id()));
    }
    if (trailing && req.tags(i) == req.checksums_tag()) {
      return absl::InvalidArgumentError(absl::StrCat("tags[", i, "]: equals checksums_tag"));
    }
  }
  return absl::OkStatus();
}

// Tags of every message a two-sided PutData brings (its blocks', the first `limit`, then the
// trailing checksums'): what the node takes or notes when it does not store the call.
std::vector<uint64_t> MessageTags(const v1::PutDataRequest& req, size_t limit) {
  const size_t n = std::min<size_t>(req.tags_size(), limit);
  std::vector<uint64_t> tags(req.tags().begin(), req.tags().begin() + n);
  if (req.checksums_tag() != 0) tags.push_back(req.checksums_tag());
  return tags;
}

// How long a data call's reservation or lease lasts: past its transfer's deadline by more
// than the transfer may still run after it (the lanes' drain grace, 1 s, and the wait for
// requests after a forced close, 0.2 s), so that the reaper never frees a slot that a late
// receive or send of the call may still touch. The call ends them itself when it returns.
uint64_t HoldFor(absl::Time deadline) {
  constexpr int64_t kPastDeadlineMs = 5000;
  return static_cast<uint64_t>(
      std::max<int64_t>(0, absl::ToInt64Milliseconds(deadline - absl::Now())) + kPastDeadlineMs);
}

}  // namespace

absl::Status StoreServiceImpl::EnterDataCall(const Principal& who, TenantCalls::Slot* slot) {
  if (auth_ == nullptr || !auth_->required() || tenant_data_calls_.cap() == 0 ||
      who.tenant.empty() || who.Has(kRoleAdmin)) {
    return absl::OkStatus();
  }
  uint64_t held = 0;
  if (tenant_data_calls_.Enter(who.tenant, slot, &held)) return absl::OkStatus();
  metrics_->AddDenied(who.tenant, absl::StatusCode::kResourceExhausted);
  return absl::ResourceExhaustedError(absl::StrCat(
      "node busy for tenant ", who.tenant, ": ", held,
      " of its data calls in progress, its maximum (tenant_data_calls); retry with backoff"));
}

absl::Time StoreServiceImpl::TransferDeadline(const grpc::ServerContext* ctx) const {
  // The client gives its buffers back at its deadline, which it reached before ours (ours is
  // its remaining time counted from when the request arrived): stop moving bytes a little
  // earlier, so a node that is merely slow never writes into a buffer after that.
  constexpr absl::Duration kBeforeClientDeadline = absl::Milliseconds(5);
  absl::Time client = absl::FromChrono(ctx->deadline()) - kBeforeClientDeadline;
  absl::Time cap = absl::Now() + absl::Milliseconds(config_.max_lease_ms);
  return std::min(client, cap);
}

grpc::Status StoreServiceImpl::ConnectData(grpc::ServerContext* ctx,
                                           const v1::ConnectDataRequest* req,
                                           v1::ConnectDataResponse* resp) {
  CallScope call(metrics_, Op::kConnectData, &admission_);
  if (call.refused()) return call.Done(call.Refusal());
  // Endpoints only for callers who may move data; the channel id returned is random.
  if (absl::Status s = RequireAnyRole(ctx, kAnyRole, "ConnectData"); !s.ok()) return call.Done(s);
  if (data_plane_ == nullptr) return call.Done(NoDataPlane());
  std::vector<std::string> addresses(req->worker_addresses().begin(),
                                     req->worker_addresses().end());
  // Channels count per tenant (tenant_data_channels) where callers are told apart.
  std::string owner;
  if (absl::StatusOr<Principal> who = Caller(ctx);
      who.ok() && auth_ != nullptr && auth_->required()) {
    owner = who->tenant;
  }
  absl::StatusOr<DataPlane::Channel> ch = data_plane_->Connect(
      addresses, {req->ucx_tcp_tx_seg_bytes(), req->ucx_tcp_rx_seg_bytes()}, owner);
  if (!ch.ok()) return call.Done(ch.status());
  if (ctx->IsCancelled()) {
    // The client gave up (its deadline, or it went): a channel it never learns of would hold
    // a slot of max_data_channels (and its tenant's) until it idles out after 10 minutes.
    data_plane_->Close(ch->id).IgnoreError();
    return call.Done(absl::CancelledError("ConnectData: the caller gave up; channel closed"));
  }
  resp->set_channel_id(ch->id);
  for (const std::string& a : ch->worker_addresses) resp->add_worker_addresses(a);
  resp->set_transport(ch->transport);
  resp->set_ucx_tcp_tx_seg_bytes(data_plane_->tcp_segments().tx);
  resp->set_ucx_tcp_rx_seg_bytes(data_plane_->tcp_segments().rx);
  resp->set_checksums_may_trail(config_.ucx_trailing_checksums);
  spdlog::info("data channel {} opened: {} lanes over {}", ch->id, addresses.size(), ch->transport);
  return call.Done(absl::OkStatus());
}

grpc::Status StoreServiceImpl::CloseData(grpc::ServerContext* ctx, const v1::CloseDataRequest* req,
                                         v1::CloseDataResponse*) {
  CallScope call(metrics_, Op::kCloseData);
  if (absl::Status s = RequireAnyRole(ctx, kAnyRole, "CloseData"); !s.ok()) return call.Done(s);
  if (data_plane_ == nullptr) return call.Done(NoDataPlane());
  return call.Done(data_plane_->Close(req->channel_id()));
}

grpc::Status StoreServiceImpl::PutData(grpc::ServerContext* ctx, const v1::PutDataRequest* req,
                                       v1::PutDataResponse* resp) {
  CallScope call(metrics_, Op::kPutData, &admission_);
  if (data_plane_ == nullptr) return call.Done(NoDataPlane());
  // Refused without taking the client's messages: the sweep drops them, here or on their way
  // (no payload moves; nothing else is done for a refused call).
  auto refuse_untaken = [&](const absl::Status& why) {
    data_plane_->NoteRefused(req->channel_id(), req->lane(),
                             MessageTags(*req, config_.max_keys_per_call));
    return call.Done(why);
  };
  if (call.refused()) return refuse_untaken(call.Refusal());
  const absl::Time deadline = TransferDeadline(ctx);
  const bool two_sided = req->tags_size() > 0;
  std::vector<WarmTier::PutBlock> blocks;
  std::string scope;
  uint64_t total = 0;
  Principal who;
  absl::StatusOr<std::string> allowed = Authorize(ctx, req->scope(), Access::kWrite, &who);
  // Taken for a call refused below too: its drain of the client's messages holds a slot.
  TenantCalls::Slot tenant_slot;
  if (absl::Status s = EnterDataCall(who, &tenant_slot); !s.ok()) return refuse_untaken(s);
  absl::Status valid = allowed.status();
  if (valid.ok()) {
    valid = ParsePutBlocks(req->namespace_id(), *allowed, req->blocks(), req->session_id(), &blocks,
                           &scope, &total);
  }
  for (WarmTier::PutBlock& b : blocks) {
    b.session = SessionKey(who, b.session);
    b.copy = req->copy();
  }
  const int n = req->blocks_size();
  if (valid.ok()) valid = CheckEpoch(req->epoch());
  if (valid.ok()) valid = CheckPutFields(*req, n);
  if (valid.ok() && req->checksums_tag() != 0 && !config_.ucx_trailing_checksums) {
    // A channel this node never opened (it restarted with the option off) is the client's
    // stale assumption, which NOT_FOUND corrects: it reconnects and learns the option.
    valid = data_plane_->Knows(req->channel_id())
                ? absl::InvalidArgumentError(
                      "checksums_tag: this node takes a put's checksums in the request "
                      "(ucx_trailing_checksums is false; its ConnectData said so)")
                : absl::NotFoundError(absl::StrCat("channel_id ", req->channel_id(),
                                                   ": no such data channel (reconnect)"));
  }
  if (valid.ok() && total > config_.max_transfer_bytes) {
    valid = absl::ResourceExhaustedError(
        absl::StrCat("blocks: ", FormatByteSize(total), " in one call exceed max_transfer_bytes ",
                     FormatByteSize(config_.max_transfer_bytes), "; split the batch"));
  }
  if (valid.ok() && !two_sided) {
    if (req->sources_size() != n) {
      valid = absl::InvalidArgumentError(
          absl::StrCat("sources: ", req->sources_size(), " entries for ", n, " blocks"));
    }
    for (int i = 0; valid.ok() && i < n; ++i) {
      const std::string field = absl::StrCat("sources[", i, "]");
      valid = CheckRemote(req->sources(i), req->rkeys_size(), field);
      if (valid.ok() && req->sources(i).length() != blocks[i].size) {
        valid =
            absl::InvalidArgumentError(absl::StrCat(field, ".length: ", req->sources(i).length(),
                                                    ", blocks[", i, "].size is ", blocks[i].size));
      }
    }
  }
  if (!valid.ok()) {
    // The client's tagged messages are on their way: take them into the discard buffer so its
    // sends complete, then refuse the call. Only a well-formed list of tags gets receives (at
    // most max_keys_per_call, each naming the channel); any other is left to the sweep, as a
    // refused call's is: a receive per tag of an unchecked list would let one call hold
    // millions of them.
    if (two_sided && n <= static_cast<int>(config_.max_keys_per_call) &&
        CheckPutFields(*req, n).ok()) {
      ConsumeTagged(ctx, *req, deadline);
    } else if (two_sided) {
      data_plane_->NoteRefused(req->channel_id(), req->lane(),
                               MessageTags(*req, config_.max_keys_per_call));
    }
    return call.Done(valid);
  }
  const uint64_t ttl = HoldFor(deadline);
  NoteWrite(scope);
  WarmTier::ReserveResult r = store_->BeginPut(req->namespace_id(), scope, blocks, ttl);
  std::vector<transport::TransferOp> ops;
  std::vector<size_t> received(n, 0);
  for (int i = 0; i < n; ++i) {
    const bool reserved = r.status[i].ok();
    if (two_sided) {
      // Every tag gets a receive: blocks not stored land in the discard buffer.
      ops.push_back(transport::TransferOp::Recv(
          reserved ? r.addresses[i] : data_plane_->discard_buffer(req->lane()),
          reserved ? blocks[i].size : data_plane_->discard_bytes(), req->tags(i), &received[i]));
    } else if (reserved) {
      const v1::RemoteBuffer& src = req->sources(i);
      ops.push_back({transport::TransferOp::Kind::kGet, r.addresses[i], blocks[i].size, src.addr(),
                     req->rkeys(static_cast<int>(src.rkey_index()))});
    }
  }
  // Trailing checksums land here, after the blocks' ops.
  const bool trailing = req->checksums_tag() != 0;
  std::vector<uint64_t> trailer(trailing ? n : 0);
  size_t trailer_received = 0;
  if (trailing) {
    ops.push_back(transport::TransferOp::Recv(trailer.data(), trailer.size() * sizeof(uint64_t),
                                              req->checksums_tag(), &trailer_received));
  }
  auto expected = [&](int i) { return trailing ? trailer[i] : req->checksums(i); };
  std::vector<absl::Status> results = r.status;
  // Two-sided ops are one per block, in order: op i lands block i. Its checksum is compared
  // once the transfer is done (the trailing checksums may land last).
  std::vector<uint64_t> landed_sum(n);
  std::vector<bool> hashed(n, false);
  transport::TransferHooks hooks;
  if (two_sided && n >= 2 && total / n >= kVerifyWhileLandingBytes) {
    hooks.on_landed = [&](size_t i) {
      if (i >= static_cast<size_t>(n)) return;                         // the trailing checksums
      if (!r.status[i].ok() || received[i] != blocks[i].size) return;  // discarded, or short
      // Past the deadline the reservation may lapse under us: leave the block to the commit,
      // which holds it (and fails when it lapsed).
      if (absl::Now() > deadline) return;
      landed_sum[i] = BlockChecksum(r.addresses[i], blocks[i].size);
      hashed[i] = true;
    };
  }
  if (!ops.empty()) {
    // A client that gives up or dies (its connection closes) ends the transfer now: over
    // shared memory nothing else tells the node before the deadline.
    CancelWatch::Scope watch(&cancel_watch_, ctx);
    absl::Status moved = data_plane_->Transfer(req->channel_id(), req->lane(), ops, deadline,
                                               &hooks, watch.cancelled());
    if (!moved.ok()) {
      // Nothing of this call becomes visible: the reserved slots are released — after a
      // quarantine when UCX kept requests of the call past the endpoint's force-close, which
      // may still write into them (a block put there meanwhile would read back DATA_LOSS).
      constexpr int64_t kAbandonedSlotHoldMs = 30000;
      const bool abandoned = transport::RequestsAbandoned(moved);
      if (abandoned) {
        spdlog::warn("PutData: {}; its slots are held {} ms", moved.ToString(),
                     kAbandonedSlotHoldMs);
      }
      if (r.reservation_id != 0) {
        store_->AbortPut(r.reservation_id, abandoned ? kAbandonedSlotHoldMs : 0).IgnoreError();
      }
      return call.Done(moved);
    }
  }
  if (trailing && trailer_received != trailer.size() * sizeof(uint64_t)) {
    for (int i = 0; i < n; ++i) {
      if (!r.status[i].ok()) continue;
      results[i] =
          absl::DataLossError(absl::StrCat("checksums: ", trailer_received, " bytes arrived for ",
                                           n, " blocks, want ", trailer.size() * sizeof(uint64_t)));
    }
    if (r.reservation_id != 0) store_->AbortPut(r.reservation_id).IgnoreError();
    for (const absl::Status& st : results) ToBlockStatus(st, resp->add_results());
    return call.Done(absl::OkStatus());
  }
  metrics_->AddCheckedOnLanding(std::count(hashed.begin(), hashed.end(), true));
  if (trailing) metrics_->AddTrailingChecksums();
  std::vector<WarmTier::CommitBlock> commit;
  std::vector<int> committed;
  for (int i = 0; i < n; ++i) {
    if (!r.status[i].ok()) continue;
    if (two_sided && received[i] != blocks[i].size) {
      results[i] =
          absl::DataLossError(absl::StrCat("blocks[", i, "]: ", received[i],
                                           " bytes arrived for a ", blocks[i].size, "-byte block"));
      continue;  // released with the reservation
    }
    commit.push_back({blocks[i].hash,
                      expected(i),
                      {},
                      /*landed=*/true,
                      blocks[i].size,
                      /*checked=*/hashed[i],
                      /*intact=*/hashed[i] && landed_sum[i] == expected(i)});
    committed.push_back(i);
  }
  if (r.reservation_id != 0) {
    absl::StatusOr<std::vector<absl::Status>> done = store_->CommitPut(r.reservation_id, commit);
    if (!done.ok()) return call.Done(done.status());
    uint64_t bytes = 0;
    for (size_t k = 0; k < committed.size(); ++k) {
      results[committed[k]] = (*done)[k];
      bytes += (*done)[k].ok() ? blocks[committed[k]].size : 0;
    }
    metrics_->AddUcxBytes(true, bytes);
  }
  for (const absl::Status& st : results) ToBlockStatus(st, resp->add_results());
  return call.Done(absl::OkStatus());
}

void StoreServiceImpl::ConsumeTagged(const grpc::ServerContext* ctx, const v1::PutDataRequest& req,
                                     absl::Time deadline) {
  // A client's messages follow its request at once: a live one's have come by then (2 s, and
  // the declared bytes at 64 MiB/s), and a refused call holds its call slot no longer,
  // however far off its deadline. Its receives are withdrawn then (aborted, not timed out:
  // the channel stays open, unless a message was still arriving: then the transport closes
  // it), and the sweep drops what comes after.
  uint64_t declared = 0;
  for (const v1::PutBlock& b : req.blocks()) {
    declared = std::min<uint64_t>(config_.max_transfer_bytes,
                                  declared + std::min<uint64_t>(b.size(), uint64_t{1} << 40));
  }
  const absl::Duration drain =
      absl::Seconds(2) + absl::Seconds(static_cast<double>(declared) / (64 << 20));
  const std::vector<uint64_t> tags = MessageTags(req, req.tags_size());
  std::vector<transport::TransferOp> ops;
  for (uint64_t tag : tags) {
    ops.push_back(transport::TransferOp::Recv(data_plane_->discard_buffer(req.lane()),
                                              data_plane_->discard_bytes(), tag));
  }
  CancelWatch::Scope watch(&cancel_watch_, ctx, absl::Now() + drain);
  absl::Status drained = data_plane_->Transfer(req.channel_id(), req.lane(), ops, deadline, nullptr,
                                               watch.cancelled());
  if (!drained.ok()) data_plane_->NoteRefused(req.channel_id(), req.lane(), tags);
}

void StoreServiceImpl::ServeGroup(const v1::GetDataRequest& req, const ScopeGroup& g, uint64_t ttl,
                                  absl::Time deadline, v1::GetDataResponse* resp,
                                  std::vector<absl::Status>* status,
                                  std::vector<WarmTier::BlockMeta>* meta,
                                  std::vector<uint64_t>* leases,
                                  std::vector<std::unique_ptr<InflightBytes>>* held) {
  const NamespaceId ns = req.namespace_id();
  // Pin what is warm; stage cool/cold blocks in the arena and pin those too.
  WarmTier::GetResult first = store_->PinWarm(ns, g.scope, g.hashes, ttl);
  leases->push_back(first.lease_id);
  std::vector<size_t> missing;  // positions in g
  for (size_t k = 0; k < g.index.size(); ++k) {
    (*status)[g.index[k]] = first.status[k];
    (*meta)[g.index[k]] = first.blocks[k];
    if (first.status[k].code() == absl::StatusCode::kNotFound) missing.push_back(k);
  }
  // Staging reads each block into a buffer of its own before copying it into the arena: one
  // block's bytes, held against max_inflight_bytes while it runs (a call that finds no room
  // for them stages nothing; the inline way below then finds none either, and its disk
  // blocks are RESOURCE_EXHAUSTED).
  uint64_t block_bytes = 0;  // the namespace's, for what staging and the inline way hold
  if (!missing.empty()) {
    absl::StatusOr<NamespaceSpec> spec = store_->GetNamespace(ns);
    block_bytes = spec.ok() ? spec->block_bytes : 0;
  }
  std::optional<InflightBytes> staging;
  if (!missing.empty() && store_->promote_on_get() && !req.skip_promotion()) {
    staging.emplace(&admission_, block_bytes);
  }
  if (staging.has_value() && staging->status().ok()) {
    std::vector<ChainHash> staged;
    std::vector<size_t> staged_at;
    for (size_t k : missing) {
      // Past the deadline the call answers DEADLINE_EXCEEDED (GetData): no more disk reads.
      if (absl::Now() >= deadline) break;
      absl::Status st = store_->StageInWarm(BlockKey{ns, g.scope, g.hashes[k]}, deadline);
      if (st.ok()) {
        staged.push_back(g.hashes[k]);
        staged_at.push_back(k);
      } else if (st.code() == absl::StatusCode::kDataLoss) {
        (*status)[g.index[k]] = st;  // its corrupt copies are gone: not NOT_FOUND below
      }
    }
    if (!staged.empty()) {
      WarmTier::GetResult second = store_->PinWarm(ns, g.scope, staged, ttl, /*count=*/false);
      leases->push_back(second.lease_id);
      for (size_t j = 0; j < staged.size(); ++j) {
        (*status)[g.index[staged_at[j]]] = second.status[j];
        (*meta)[g.index[staged_at[j]]] = second.blocks[j];
      }
    }
    std::erase_if(missing, [&](size_t k) {
      return (*status)[g.index[k]].code() != absl::StatusCode::kNotFound;
    });
  }
  staging.reset();
  if (missing.empty() || absl::Now() >= deadline) return;
  // What could not be staged (no room, or promotion off) is read from disk and sent inline,
  // within what is left of the call's inline budget, and held against max_inflight_bytes as
  // BeginGet's inline payloads are.
  uint64_t inline_bytes = 0;
  for (const v1::GetBlock& b : resp->blocks()) inline_bytes += b.payload().size();
  const uint64_t budget =
      config_.max_inline_bytes - std::min(inline_bytes, config_.max_inline_bytes);
  held->push_back(std::make_unique<InflightBytes>(
      &admission_, std::min<uint64_t>(budget, missing.size() * block_bytes)));
  if (!held->back()->status().ok()) {
    // Only these blocks wait for room (most may be on no tier at all); the pinned ones move.
    for (size_t k : missing) (*status)[g.index[k]] = held->back()->status();
    return;
  }
  std::vector<ChainHash> rest;
  for (size_t k : missing) rest.push_back(g.hashes[k]);
  WarmTier::CopySink sink = [&](size_t j, uint64_t size) {
    std::string* p = resp->mutable_blocks(static_cast<int>(g.index[missing[j]]))->mutable_payload();
    p->resize(size);
    return reinterpret_cast<uint8_t*>(p->data());
  };
  std::optional<InflightBytes> disk_room;
  WarmTier::GetResult inline_result = store_->BeginGet(
      ns, g.scope, rest, ttl, sink, budget, !req.skip_promotion(),
      /*count_warm=*/false, DiskReadGate(nullptr, deadline, /*block_bytes=*/0, &disk_room));
  leases->push_back(inline_result.lease_id);
  for (size_t j = 0; j < missing.size(); ++j) {
    const size_t i = g.index[missing[j]];
    (*status)[i] = inline_result.status[j];
    (*meta)[i] = inline_result.blocks[j];
    (*meta)[i].address = nullptr;  // served inline
  }
}

TieredStore::DiskReadGate StoreServiceImpl::DiskReadGate(grpc::ServerContext* ctx,
                                                         absl::Time deadline, uint64_t block_bytes,
                                                         std::optional<InflightBytes>* room) {
  return [this, ctx, deadline, block_bytes, room]() -> absl::Status {
    if ((ctx != nullptr && ctx->IsCancelled()) || absl::Now() >= deadline) {
      return absl::DeadlineExceededError(
          "the call's deadline passed (or the caller went) before this block was read from disk");
    }
    if (!room->has_value()) room->emplace(&admission_, 2 * block_bytes);
    return (*room)->status();
  };
}

grpc::Status StoreServiceImpl::GetData(grpc::ServerContext* ctx, const v1::GetDataRequest* req,
                                       v1::GetDataResponse* resp) {
  CallScope call(metrics_, Op::kGetData, &admission_);
  if (call.refused()) return call.Done(call.Refusal());
  if (data_plane_ == nullptr) return call.Done(NoDataPlane());
  std::vector<ChainHash> hashes;
  std::string scope;
  Principal who;
  if (absl::Status s = RoutedKeys(ctx, *req, Access::kRead, &hashes, &scope, &who); !s.ok()) {
    return call.Done(s);
  }
  // The tenant's place first: a call refused for it spends none of its lookup budget.
  TenantCalls::Slot tenant_slot;
  if (absl::Status s = EnterDataCall(who, &tenant_slot); !s.ok()) return call.Done(s);
  if (absl::Status r = TakeLookupBudget(who, hashes.size()); !r.ok()) return call.Done(r);
  const int n = static_cast<int>(hashes.size());
  const bool two_sided = req->tags_size() > 0;
  if (two_sided) {
    if (req->tags_size() != n || req->capacities_size() != n) {
      return call.Done(absl::InvalidArgumentError(
          absl::StrCat("tags / capacities: ", req->tags_size(), " / ", req->capacities_size(),
                       " entries for ", n, " blocks")));
    }
    for (int i = 0; i < n; ++i) {
      if (!transport::TagNamesChannel(req->tags(i), req->channel_id())) {
        return call.Done(absl::InvalidArgumentError(absl::StrCat(
            "tags[", i, "]: high 32 bits must be the channel id ", req->channel_id())));
      }
    }
  } else {
    if (req->destinations_size() != n) {
      return call.Done(absl::InvalidArgumentError(
          absl::StrCat("destinations: ", req->destinations_size(), " entries for ", n, " blocks")));
    }
    for (int i = 0; i < n; ++i) {
      if (absl::Status c = CheckRemote(req->destinations(i), req->rkeys_size(),
                                       absl::StrCat("destinations[", i, "]"));
          !c.ok()) {
        return call.Done(c);
      }
    }
  }
  const absl::Time deadline = TransferDeadline(ctx);
  const uint64_t ttl = HoldFor(deadline);
  std::vector<absl::Status> status(n);
  std::vector<WarmTier::BlockMeta> meta(n);
  std::vector<const std::string*> block_scope(n, &scope);
  std::vector<uint64_t> leases;
  for (int i = 0; i < n; ++i) resp->add_blocks();
  // A tenant's read may take its first blocks from `shared`: the same steps per scope.
  const std::vector<ScopeGroup> groups = GroupByScope(req->namespace_id(), scope, hashes);
  std::vector<std::unique_ptr<InflightBytes>> held;
  for (const ScopeGroup& g : groups) {
    for (size_t i : g.index) block_scope[i] = &g.scope;
    ServeGroup(*req, g, ttl, deadline, resp, &status, &meta, &leases, &held);
  }
  auto end_leases = [&] {
    for (uint64_t lease : leases) {
      if (lease != 0) store_->EndGet(lease).IgnoreError();
    }
  };
  // Staging ran past the transfer's deadline: nothing may move now, and the first pins may
  // have lapsed (they last to 5 s past it), their slots reused, so verifying them would report
  // a false DATA_LOSS.
  if (absl::Now() >= deadline) {
    end_leases();
    return call.Done(absl::DeadlineExceededError(
        "the call's deadline passed while its blocks were staged from disk"));
  }
  std::vector<transport::TransferOp> ops;
  uint64_t bytes = 0;
  for (int i = 0; i < n; ++i) {
    const uint64_t capacity = two_sided ? req->capacities(i) : req->destinations(i).length();
    const bool pinned = status[i].ok() && meta[i].address != nullptr;
    // Verified before it leaves (the pin keeps the bytes still): a block gone bad in memory
    // is dropped and reported here, and never lands in the client's buffer.
    if (pinned && BlockChecksum(meta[i].address, meta[i].size) != meta[i].checksum) {
      status[i] = absl::DataLossError("block failed its checksum on the node; dropped");
      store_->DropCorrupt(BlockKey{req->namespace_id(), *block_scope[i], hashes[i]},
                          meta[i].address);
      spdlog::error("DATA_LOSS: block {} of namespace 0x{:016x} failed its checksum; dropped",
                    hashes[i].ToHex(), req->namespace_id());
    }
    if (status[i].ok() && meta[i].address != nullptr && meta[i].size > capacity) {
      status[i] = absl::OutOfRangeError(
          absl::StrCat("block is ", meta[i].size, " bytes, destination holds ", capacity));
    }
    const bool send = status[i].ok() && meta[i].address != nullptr;
    if (two_sided) {
      // Exactly one message per tag: the block, or an empty one (not found, too big, inline).
      ops.push_back(transport::TransferOp::Send(send ? meta[i].address : nullptr,
                                                send ? meta[i].size : 0, req->tags(i)));
    } else if (send) {
      const v1::RemoteBuffer& dst = req->destinations(i);
      ops.push_back({transport::TransferOp::Kind::kPut, meta[i].address, meta[i].size, dst.addr(),
                     req->rkeys(static_cast<int>(dst.rkey_index()))});
    }
    bytes += send ? meta[i].size : 0;
  }
  absl::Status moved = absl::OkStatus();
  if (!ops.empty()) {
    CancelWatch::Scope watch(&cancel_watch_, ctx);  // as PutData's
    moved = data_plane_->Transfer(req->channel_id(), req->lane(), ops, deadline, nullptr,
                                  watch.cancelled());
  }
  end_leases();
  if (!moved.ok()) return call.Done(moved);
  metrics_->AddUcxBytes(false, bytes);
  for (int i = 0; i < n; ++i) {
    v1::GetBlock* b = resp->mutable_blocks(i);
    ToBlockStatus(status[i], b->mutable_status());
    if (!status[i].ok()) {
      b->clear_payload();
      continue;
    }
    b->set_tier(TierProto(meta[i].tier));
    b->set_size(meta[i].size);
    b->set_checksum(meta[i].checksum);
  }
  return call.Done(absl::OkStatus());
}

}  // namespace strata::storenode
