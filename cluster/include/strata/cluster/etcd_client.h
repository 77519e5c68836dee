// EtcdClient: a small client for etcd's v3 API (KV, Lease and Watch over gRPC) — what cluster
// membership and the block directory need: keys and prefixes, compare-and-set transactions,
// leases kept alive from a background thread, and prefix watches.
//
// Thread-safe: one client is shared by every thread of a process. Every unary call carries a
// deadline (EtcdOptions::request_timeout) and blocks at most that long; streams (keepalive,
// watches) run on client-owned threads and are cancelled by StopKeepAlive, ~Watch and
// ~EtcdClient. No gRPC or generated protobuf type appears here.
//
// Endpoints are tried in order and the client sticks to the one that last worked. A read (Get,
// GetPrefix) or GrantLease moves on to the next endpoint whenever one is UNAVAILABLE; a write
// (Put, Delete, Txn, RevokeLease) only when its endpoint had no connection when the call began,
// i.e. when the write most likely never left this process, so that it is not applied twice.
//
// Errors: gRPC codes map 1:1 to absl codes — UNAVAILABLE when etcd cannot be reached,
// DEADLINE_EXCEEDED when it does not answer in time, NOT_FOUND for an unknown lease,
// OUT_OF_RANGE for a compacted revision — with messages that name the endpoint and operation.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace strata::cluster {

struct EtcdOptions {
  // "host:port" (or "[v6addr]:port") of etcd's client URLs, tried in order.
  std::vector<std::string> endpoints;
  // Deadline of every unary call, and of establishing a watch.
  absl::Duration request_timeout = absl::Seconds(2);
};

struct KeyValue {
  std::string key;
  std::string value;
  int64_t create_revision = 0;
  int64_t mod_revision = 0;
  int64_t version = 0;  // 1 after the put that created the key, +1 per put since
  int64_t lease = 0;    // 0: no lease

  bool operator==(const KeyValue&) const = default;
};

struct RangeResult {
  std::vector<KeyValue> kvs;  // sorted by key
  int64_t revision = 0;       // revision of the store when read; watch from revision + 1
};

struct WatchEvent {
  enum class Type { kPut, kDelete };
  Type type = Type::kPut;
  // For puts, the key as written. For deletes, the key, and mod_revision = the revision of the
  // delete; the other fields are 0 or empty.
  KeyValue kv;
};

// One condition of a transaction on a single key. A missing key has value "", version 0,
// create and mod revision 0 and lease 0.
struct Compare {
  enum class Target { kValue, kVersion, kCreateRevision, kModRevision, kLease };
  enum class Op { kEqual, kGreater, kLess, kNotEqual };
  Target target = Target::kValue;
  Op op = Op::kEqual;
  std::string key;
  std::string value;   // for kValue
  int64_t number = 0;  // for the other targets
};

struct TxnOp {
  enum class Kind { kPut, kDelete };
  Kind kind = Kind::kPut;
  std::string key;
  std::string value;  // kPut only
  int64_t lease = 0;  // kPut only; 0 = none
};

class EtcdClient {
 public:
  // A running watch; destroying it cancels the stream and, unless called from one of the
  // watch's own callbacks, waits until its thread has stopped: no callback runs after the
  // destructor returns.
  class Watch {
   public:
    virtual ~Watch() = default;
  };

  // Builds a client and starts its connection thread (which drives reconnects); does not
  // contact etcd, the first call connects. INVALID_ARGUMENT if there are no endpoints, if one
  // is not "host:port" with a port in 1..65535, or if request_timeout is not positive.
  static absl::StatusOr<std::unique_ptr<EtcdClient>> Create(const EtcdOptions& options);

  // Stops every keepalive and watch of this client (no callback runs after it returns) and
  // joins their threads. Watch handles may outlive the client; they are inert.
  virtual ~EtcdClient() = default;

  // Sets `key` to `value`, attached to `lease` when non-zero. Returns the store revision of the
  // put. NOT_FOUND if the lease does not exist.
  virtual absl::StatusOr<int64_t> Put(std::string_view key, std::string_view value,
                                      int64_t lease = 0) = 0;

  // The key, or nullopt if absent. Linearizable read.
  virtual absl::StatusOr<std::optional<KeyValue>> Get(std::string_view key) = 0;

  // Every key starting with `prefix` ("" = every key), sorted, with the store revision.
  // Gives up at `deadline` if that comes before request_timeout (DEADLINE_EXCEEDED).
  virtual absl::StatusOr<RangeResult> GetPrefix(std::string_view prefix, absl::Time deadline) = 0;
  absl::StatusOr<RangeResult> GetPrefix(std::string_view prefix) {
    return GetPrefix(prefix, absl::InfiniteFuture());
  }

  // Deletes `key`; returns how many keys were deleted (0 or 1).
  virtual absl::StatusOr<int64_t> Delete(std::string_view key) = 0;

  // Atomically: if every compare holds, applies on_success, else on_failure. Returns whether
  // the compares held.
  virtual absl::StatusOr<bool> Txn(std::span<const Compare> compares,
                                   std::span<const TxnOp> on_success,
                                   std::span<const TxnOp> on_failure) = 0;

  // Grants a lease of `ttl` (rounded up to whole seconds, at least 1). Returns its id.
  virtual absl::StatusOr<int64_t> GrantLease(absl::Duration ttl) = 0;

  // Revokes `lease`, deleting every key attached to it. NOT_FOUND if it does not exist (or
  // expired).
  virtual absl::Status RevokeLease(int64_t lease) = 0;

  // Keeps `lease` (granted with `ttl`) alive: a background thread refreshes it every ttl/3
  // over one LeaseKeepAlive stream per client. When etcd answers that the lease is gone,
  // on_lost(NOT_FOUND) is called once, from that thread, and the lease is dropped. While etcd is
  // unreachable the thread retries with backoff and does not call on_lost: the caller decides
  // what an outage means. Does not block on etcd.
  // INVALID_ARGUMENT for lease <= 0 or ttl < 1 s; ALREADY_EXISTS if `lease` is already kept
  // alive by this client.
  virtual absl::Status KeepAlive(int64_t lease, absl::Duration ttl,
                                 std::function<void(absl::Status)> on_lost) = 0;

  // Stops refreshing `lease` (which then expires unless revoked). Idempotent. After it
  // returns on_lost for that lease is not called, unless StopKeepAlive was called from an
  // on_lost callback.
  virtual void StopKeepAlive(int64_t lease) = 0;

  // Watches every key starting with `prefix` from `start_revision` (0 = from now; a past
  // revision replays history since then). Blocks until etcd has created the watch (at most
  // request_timeout). on_events gets every batch of events in revision order, from the watch's
  // thread, possibly before WatchPrefix returns. When the stream fails (etcd down, revision
  // compacted: OUT_OF_RANGE, cancelled by the server) on_error(status) is called once and the watch
  // stops: the caller lists again and watches again from the listed revision + 1. Callbacks may
  // destroy the Watch. Returns UNAVAILABLE / DEADLINE_EXCEEDED if the watch could not be created
  // (no callback is then called); INVALID_ARGUMENT for start_revision < 0. A compacted
  // start_revision gives OUT_OF_RANGE, from WatchPrefix or through on_error.
  virtual absl::StatusOr<std::unique_ptr<Watch>> WatchPrefix(
      std::string_view prefix, int64_t start_revision,
      std::function<void(std::span<const WatchEvent>)> on_events,
      std::function<void(absl::Status)> on_error) = 0;

 protected:
  EtcdClient() = default;
};

// The end of etcd's key range for "every key starting with `prefix`": the prefix with its last
// byte below 0xff incremented and what follows dropped; "\0" (no end) when there is none.
std::string PrefixRangeEnd(std::string_view prefix);

}  // namespace strata::cluster
