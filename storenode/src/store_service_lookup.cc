// Lookup and Publish: which blocks a node holds, and where agents hold blocks in GPU memory
// (the directory).
#include <algorithm>
#include <cstring>
#include <string_view>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "service_call.h"
#include "store_service.h"
#include "strata/common/byte_size.h"
#include "strata/common/chain_hash.h"
#include "strata/proto/status_convert.h"

namespace strata::storenode {
namespace {

using proto::ToBlockStatus;

// LookupRequest.packed_chain_hashes: whole 32-byte hashes, at most max_keys of them.
absl::Status UnpackHashes(const std::string& packed, uint64_t max_keys,
                          std::vector<ChainHash>* hashes) {
  if (packed.size() % kChainHashBytes != 0) {
    return absl::InvalidArgumentError(absl::StrCat("packed_chain_hashes: ", packed.size(),
                                                   " bytes, want a multiple of ", kChainHashBytes));
  }
  const size_t n = packed.size() / kChainHashBytes;
  if (n > max_keys) {
    return absl::InvalidArgumentError(
        absl::StrCat("packed_chain_hashes: ", n, " keys exceed max_keys_per_call ", max_keys));
  }
  hashes->resize(n);
  for (size_t i = 0; i < n; ++i) {
    std::memcpy((*hashes)[i].bytes.data(), packed.data() + i * kChainHashBytes, kChainHashBytes);
  }
  return absl::OkStatus();
}

// PublishRequest.location_token: what peers send as `authorization: Bearer <token>`, so it must
// be a valid bearer token (RFC 6750's token68 characters). The error never echoes the token.
absl::Status ValidateLocationToken(const std::string& token) {
  if (token.size() > 128) {
    return absl::InvalidArgumentError(
        absl::StrCat("location_token: ", token.size(), " characters, at most 128"));
  }
  for (size_t i = 0; i < token.size(); ++i) {
    const char c = token[i];
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) &&
        std::string_view("-._~+/=").find(c) == std::string_view::npos) {
      return absl::InvalidArgumentError(absl::StrCat("location_token: character ", i,
                                                     " is not one of A-Z a-z 0-9 - . _ ~ + / ="));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status StoreServiceImpl::TakeLookupBudget(const Principal& who, size_t keys) {
  if (who.Has(kRoleAdmin) && auth_ != nullptr && auth_->required()) return absl::OkStatus();
  absl::Status r = lookup_limiter_.Take(who.tenant, keys);
  if (!r.ok()) metrics_->AddDenied(who.tenant, r.code());
  return r;
}

grpc::Status StoreServiceImpl::Lookup(grpc::ServerContext* ctx, const v1::LookupRequest* req,
                                      v1::LookupResponse* resp) {
  CallScope call(metrics_, Op::kLookup, &admission_);
  if (call.refused()) return call.Done(call.Refusal());
  std::vector<ChainHash> hashes;
  std::string scope;
  const bool packed = !req->packed_chain_hashes().empty();
  absl::Status keys;
  Principal who;
  if (!packed) {
    keys = RoutedKeys(ctx, *req, Access::kRead, &hashes, &scope, &who);
  } else if (req->chain_hashes_size() > 0) {
    keys = absl::InvalidArgumentError("chain_hashes, packed_chain_hashes: set one of the two");
  } else {
    // RoutedKeys' steps; the keys come as one string.
    absl::StatusOr<std::string> allowed = Authorize(ctx, req->scope(), Access::kRead, &who);
    absl::StatusOr<NamespaceSpec> ns = store_->GetNamespace(req->namespace_id());
    keys = allowed.ok() ? CheckEpoch(req->epoch()) : allowed.status();
    if (keys.ok() && !ns.ok()) keys = absl::InvalidArgumentError(ns.status().message());
    if (keys.ok()) {
      scope = *allowed;
      keys = UnpackHashes(req->packed_chain_hashes(), config_.max_keys_per_call, &hashes);
    }
  }
  if (!keys.ok()) return call.Done(keys);
  if (absl::Status r = TakeLookupBudget(who, hashes.size()); !r.ok()) return call.Done(r);
  const bool hot = directory_.entries() > 0;
  if (!hot) {
    // The store's answer as it is: every block (each_block) or the matched prefix.
    std::vector<std::optional<WarmTier::BlockMeta>> found =
        FindBlocks(req->namespace_id(), scope, hashes, req->each_block(), req->exact_scope());
    const size_t n = found.size();
    auto meta = [&](size_t i) -> const WarmTier::BlockMeta* {
      return found[i].has_value() ? &*found[i] : nullptr;
    };
    uint32_t present = 0;
    if (packed) {
      std::string* tiers = resp->mutable_tiers();
      tiers->resize(n);
      resp->mutable_sizes()->Reserve(static_cast<int>(n));
      for (size_t i = 0; i < n; ++i) {
        const WarmTier::BlockMeta* m = meta(i);
        (*tiers)[i] = static_cast<char>(m != nullptr ? TierProto(m->tier) : v1::TIER_UNSPECIFIED);
        resp->add_sizes(m != nullptr ? m->size : 0);
        present += m != nullptr ? 1 : 0;
      }
    } else {
      resp->mutable_blocks()->Reserve(static_cast<int>(n));
      for (size_t i = 0; i < n; ++i) {
        const WarmTier::BlockMeta* m = meta(i);
        v1::BlockInfo* b = resp->add_blocks();
        if (m == nullptr) continue;
        b->set_tier(TierProto(m->tier));
        b->set_size(m->size);
        ++present;
      }
    }
    resp->set_matched_blocks(present);
    metrics_->AddTenantLookup(who.tenant, present, hashes.size() - present);
    return call.Done(absl::OkStatus());
  }
  // A prefix may continue in agents' GPU memory (the directory): block by block, with the
  // publishers of each block.
  const NamespaceId ns = req->namespace_id();
  const bool shared_first = SharedFirst(scope) && !req->exact_scope();
  auto publishers = [&](size_t i) {
    std::vector<Directory::Location> peers = directory_.Find({ns, scope, hashes[i]});
    if (peers.empty() && shared_first) {
      peers = directory_.Find({ns, std::string(kSharedScope), hashes[i]});
    }
    return peers;
  };
  std::vector<std::optional<WarmTier::BlockMeta>> each;
  if (req->each_block()) {
    each = FindBlocks(ns, scope, hashes, /*each_block=*/true, req->exact_scope());
  } else {
    // The store's prefix, asked again after each block only GPUs hold: blocks past where the
    // prefix ends are neither touched nor counted (one LookupEach of all of them was).
    std::vector<StoreRun> runs;
    while (each.size() < hashes.size()) {
      std::vector<StoreRun> more;
      const size_t at = each.size();
      std::vector<std::optional<WarmTier::BlockMeta>> run =
          FindBlocks(ns, scope, std::span(hashes).subspan(at), /*each_block=*/false,
                     req->exact_scope(), /*count=*/false, &more);
      for (const StoreRun& r : more) runs.push_back({r.scope, at + r.begin, r.n});
      each.insert(each.end(), run.begin(), run.end());
      if (each.size() == hashes.size() || publishers(each.size()).empty()) break;
      each.emplace_back();  // in GPU memory only
    }
    RetouchRuns(ns, hashes, runs);
    const uint64_t hits =
        std::count_if(each.begin(), each.end(), [](const auto& m) { return m.has_value(); });
    store_->CountLookups(hits, hashes.size() - hits);
  }
  uint32_t present = 0;
  // Up to 8 publishers a block, each with an address and a token (384 bytes at most): a reply
  // of max_keys_per_call blocks can take megabytes, so while the handler builds it, it holds
  // its memory against max_inflight_bytes as an inline payload does (security.md,
  // "Admission", says what is not counted once the handler has returned).
  constexpr uint64_t kReplyStep = 64 << 10;
  constexpr uint64_t kBlockInfoBytes = 96;  // the message object and its slot in the reply
  constexpr uint64_t kLocationBytes = 112;  // two string objects and their heap headers
  InflightBytes reply(&admission_, 0);
  uint64_t reply_bytes = 0;
  for (size_t i = 0; i < each.size(); ++i) {
    std::vector<Directory::Location> peers = publishers(i);
    if (!each[i].has_value() && peers.empty() && !req->each_block()) break;  // prefix ends
    reply_bytes += kBlockInfoBytes;
    for (const Directory::Location& p : peers) {
      reply_bytes += kLocationBytes + p.address.size() + p.token.size();
    }
    if (!reply.HoldAtLeast(reply_bytes, kReplyStep)) {
      resp->Clear();
      return call.Done(absl::ResourceExhaustedError(absl::StrCat(
          "node busy: a lookup reply of ", i + 1, "+ blocks with their GPU locations (",
          FormatByteSize(reply_bytes), " so far) does not fit max_inflight_bytes ",
          FormatByteSize(admission_.max_bytes()),
          " beside the calls in flight; retry with "
          "backoff or look up fewer blocks")));
    }
    v1::BlockInfo* b = resp->add_blocks();
    if (each[i].has_value()) {
      b->set_tier(TierProto(each[i]->tier));
      b->set_size(each[i]->size);
    } else if (!peers.empty()) {
      b->set_tier(v1::TIER_HOT);
      b->set_size(peers[0].size);
    }
    for (const Directory::Location& p : peers) {
      b->add_hot_locations(p.address);
      b->add_hot_location_tokens(p.token);
    }
    if (each[i].has_value() || !peers.empty()) ++present;
  }
  resp->set_matched_blocks(present);
  metrics_->AddTenantLookup(who.tenant, present, hashes.size() - present);
  return call.Done(absl::OkStatus());
}

grpc::Status StoreServiceImpl::Publish(grpc::ServerContext* ctx, const v1::PublishRequest* req,
                                       v1::PublishResponse* resp) {
  CallScope call(metrics_, Op::kPublish, &admission_);
  if (call.refused()) return call.Done(call.Refusal());
  std::vector<ChainHash> hashes;
  std::string scope;
  if (absl::Status s = RoutedKeys(ctx, *req, Access::kWrite, &hashes, &scope); !s.ok()) {
    return call.Done(s);
  }
  if (req->location().empty() || req->location().size() > 256) {
    return call.Done(absl::InvalidArgumentError(
        absl::StrCat("location: ", req->location().size(), " bytes, want 1..256")));
  }
  if (absl::Status t = ValidateLocationToken(req->location_token()); !t.ok()) {
    return call.Done(t);
  }
  if (req->sizes_size() != 0 && req->sizes_size() != req->chain_hashes_size()) {
    return call.Done(absl::InvalidArgumentError(absl::StrCat(
        "sizes: ", req->sizes_size(), " entries for ", req->chain_hashes_size(), " hashes")));
  }
  // Lookup answers hand the sizes to readers, who size buffers by them.
  absl::StatusOr<NamespaceSpec> spec = store_->GetNamespace(req->namespace_id());
  const uint64_t limit =
      std::min<uint64_t>(spec.ok() ? spec->block_bytes : 0, config_.max_block_bytes);
  for (int i = 0; i < req->sizes_size(); ++i) {
    if (req->sizes(i) > limit) {
      return call.Done(absl::InvalidArgumentError(absl::StrCat("sizes[", i, "]: ", req->sizes(i),
                                                               " bytes, want at most ", limit,
                                                               " (the namespace's block_bytes)")));
    }
  }
  if (absl::Status t = ValidateTtl(req->ttl_ms(), "ttl_ms"); !t.ok()) return call.Done(t);
  std::vector<uint64_t> sizes(req->sizes().begin(), req->sizes().end());
  NoteWrite(scope);
  // A block a writer deleted lately is not advertised again from a GPU that still holds it
  // (its agent stops refreshing it on this answer); removals always pass. Delete drops the
  // entries after it remembers the delete: asked under the directory's lock, so one of the
  // two always wins.
  std::vector<absl::Status> results = directory_.Publish(
      req->namespace_id(), scope, hashes, sizes, req->location(), req->location_token(),
      absl::Milliseconds(req->ttl_ms()), [this](const BlockKey& key) {
        if (!store_->DeletedLately(key)) return absl::OkStatus();
        return absl::FailedPreconditionError(absl::StrCat(
            "block ", key.hash.ToHex(), ": deleted by a writer lately; not published"));
      });
  for (const absl::Status& st : results) ToBlockStatus(st, resp->add_results());
  return call.Done(absl::OkStatus());
}

}  // namespace strata::storenode
