#include "directory.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace strata::storenode {

std::vector<absl::Status> Directory::Publish(NamespaceId ns, const std::string& scope,
                                             std::span<const ChainHash> hashes,
                                             std::span<const uint64_t> sizes,
                                             const std::string& address, const std::string& token,
                                             absl::Duration ttl, const Admit& admit) {
  std::vector<absl::Status> out(hashes.size());
  const auto shared_token = std::make_shared<const std::string>(token);
  const absl::Time now = absl::Now();
  absl::MutexLock lock(&mu_);
  for (size_t i = 0; i < hashes.size(); ++i) {
    BlockKey key{ns, scope, hashes[i]};
    const uint64_t size = i < sizes.size() ? sizes[i] : 0;
    auto it = map_.find(key);
    if (ttl <= absl::ZeroDuration()) {
      if (it == map_.end()) continue;
      auto& v = it->second;
      const size_t before = v.size();
      v.erase(
          std::remove_if(v.begin(), v.end(), [&](const Entry& e) { return e.address == address; }),
          v.end());
      Count(scope, -static_cast<int64_t>(before - v.size()));
      if (v.empty()) map_.erase(it);
      continue;
    }
    if (admit) {
      if (absl::Status ok = admit(key); !ok.ok()) {
        out[i] = std::move(ok);
        continue;
      }
    }
    if (it != map_.end()) {
      auto e = std::find_if(it->second.begin(), it->second.end(),
                            [&](const Entry& x) { return x.address == address; });
      if (e != it->second.end()) {  // a restarted agent at the same address: its new token
        e->expires = now + ttl;
        e->size = size;
        if (*e->token != token) e->token = shared_token;
        continue;
      }
      if (it->second.size() >= max_per_block_) {
        // As many locations as a block may have: the one whose TTL ends first (expired
        // ones first of all) makes way.
        auto first =
            std::min_element(it->second.begin(), it->second.end(),
                             [](const Entry& a, const Entry& b) { return a.expires < b.expires; });
        *first = {address, shared_token, size, now + ttl};
        continue;
      }
    }
    if (entries_ >= max_entries_ && now - last_purge_ >= absl::Seconds(1)) {
      last_purge_ = now;  // full: drop what has expired before refusing anything
      ExpireLocked(now);
    }
    if (entries_ >= max_entries_) {
      out[i] = absl::ResourceExhaustedError(
          absl::StrCat("directory full: ", max_entries_, " entries (max_directory_entries)"));
      continue;
    }
    if (auto held = per_scope_.find(scope); held != per_scope_.end() &&
                                            held->second >= max_per_scope_ &&
                                            entries_ >= max_entries_ - max_per_scope_) {
      // Past three quarters full, a scope holding a quarter takes no more: the last quarter
      // stays for the others (alone, a scope may fill three quarters).
      out[i] = absl::ResourceExhaustedError(absl::StrCat(
          "directory: scope ", scope, " holds ", held->second, " of ", entries_,
          " entries; the last quarter of max_directory_entries is kept for other scopes"));
      continue;
    }
    map_[key].push_back({address, shared_token, size, now + ttl});
    Count(scope, 1);
  }
  return out;
}

uint64_t Directory::Remove(NamespaceId ns, const std::string& scope,
                           std::span<const ChainHash> hashes) {
  uint64_t removed = 0;
  absl::MutexLock lock(&mu_);
  for (const ChainHash& h : hashes) {
    auto it = map_.find(BlockKey{ns, scope, h});
    if (it == map_.end()) continue;
    removed += it->second.size();
    Count(scope, -static_cast<int64_t>(it->second.size()));
    map_.erase(it);
  }
  return removed;
}

std::vector<Directory::Location> Directory::Find(const BlockKey& key) const {
  std::vector<Location> out;
  const absl::Time now = absl::Now();
  absl::MutexLock lock(&mu_);
  auto it = map_.find(key);
  if (it == map_.end()) return out;
  for (const Entry& e : it->second) {
    if (e.expires > now) out.push_back({e.address, *e.token, e.size});
  }
  return out;
}

uint64_t Directory::Expire() {
  absl::MutexLock lock(&mu_);
  return ExpireLocked(absl::Now());
}

uint64_t Directory::ExpireLocked(absl::Time now) {
  uint64_t dropped = 0;
  for (auto m = map_.begin(); m != map_.end();) {
    auto& v = m->second;
    const size_t before = v.size();
    v.erase(std::remove_if(v.begin(), v.end(), [&](const Entry& x) { return x.expires <= now; }),
            v.end());
    dropped += before - v.size();
    Count(m->first.scope, -static_cast<int64_t>(before - v.size()));
    if (v.empty()) {
      map_.erase(m++);
    } else {
      ++m;
    }
  }
  return dropped;
}

void Directory::Count(const std::string& scope, int64_t delta) {
  if (delta == 0) return;
  entries_ += delta;
  uint64_t& n = per_scope_[scope];
  n += delta;
  if (n == 0) per_scope_.erase(scope);
}

uint64_t Directory::entries() const {
  absl::MutexLock lock(&mu_);
  return entries_;
}

}  // namespace strata::storenode
