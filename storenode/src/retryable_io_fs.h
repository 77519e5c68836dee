// A RocksDB FileSystem for the disk tiers that marks the errors of opening a file which pass
// with time as retryable: out of file descriptors or memory (EMFILE, ENFILE, ENOMEM, ENOBUFS,
// EAGAIN, EINTR) or a network mount's timeout (ETIMEDOUT, ESTALE, EIO). RocksDB then takes a
// flush that failed on one for a hard error it recovers from by itself (a retry every
// bgerror_resume_retry_interval, 1 s, up to max_bgerror_resume_count) instead of a fatal one,
// which stops every later write of the tier until the node restarts (tiers.md, "Disk errors").
// Everything else passes through unchanged. Thread-safe, as its target.
#pragma once

#include <memory>
#include <string_view>

#include "rocksdb/file_system.h"

namespace strata::storenode {

// Whether an error's text names a cause that passes with time (the list above but EIO, which
// on a local disk is damage as often as not). DiskTier::Open fails the start on one of them
// instead of repairing or setting the store aside.
bool PassesWithTime(std::string_view error_text);

std::shared_ptr<rocksdb::FileSystem> RetryableTransientErrors(
    std::shared_ptr<rocksdb::FileSystem> target);

}  // namespace strata::storenode
