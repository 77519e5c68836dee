// What disk_tier.cc and disk_tier_recovery.cc share: RocksDB statuses and slices.
#pragma once
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "rocksdb/slice.h"
#include "rocksdb/status.h"

namespace strata::storenode::disk_internal {

// A RocksDB status as ours: NOT_FOUND, DATA_LOSS (corruption), RESOURCE_EXHAUSTED (no
// space), otherwise UNAVAILABLE; `what` leads the message.
absl::Status FromRocks(const rocksdb::Status& s, std::string_view what);

inline rocksdb::Slice AsSlice(const std::string& s) { return rocksdb::Slice(s.data(), s.size()); }

}  // namespace strata::storenode::disk_internal
