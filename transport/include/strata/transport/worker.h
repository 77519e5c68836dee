// A Worker moves bytes between this process's memory and peers' registered memory with
// one-sided UCX RMA (ucp_put_nbx / ucp_get_nbx). It owns one UCX worker and one dedicated
// progress thread: only that thread ever calls into the UCX worker, its endpoints and its
// unpacked rkeys; every public method hands work to it through a queue and blocks until the
// thread has answered. The thread spins while transfers are in flight and sleeps on the UCX
// worker's event fd (plus an eventfd for new work) when idle.
//
// Thread-safety: all methods are thread-safe; transfers from many threads, on the same or
// different endpoints, proceed concurrently. The destructor must not race with the start of
// another call; a call already waiting when it runs (a transfer in flight) is answered
// UNAVAILABLE, its pending receives cancelled, before the worker goes.
//
// Endpoints: Connect() creates an endpoint to a peer worker's Address() with peer-failure
// handling (TransportOptions::peer_failure_handling), so a dead peer fails operations
// (UNAVAILABLE) instead of hanging them until their deadline. An endpoint that has failed, or
// that was force-closed after a deadline, stays in place answering UNAVAILABLE until
// Disconnect(); connect again for a fresh one.
//
// Transports (UCX 1.13): with peer-failure handling, RMA runs over tcp (emulated by active
// messages) or RDMA; posix/sysv shared memory lack peer-failure support and cma cannot carry
// UCP's RMA API, so two processes on one host talk over tcp/lo unless peer_failure_handling is
// off. Then posix/sysv shared memory carry RMA directly into regions the peer made with
// Context::Allocate (other regions fall back to RMA emulated by messages), but a dead peer is
// not detected: puts into its orphaned segment succeed, emulated operations wait for the
// deadline, and UCX 1.13 never completes those after the force-close, so the Worker answers
// DEADLINE_EXCEEDED without them: a get's buffer could still be written if the peer was only
// slow. Use that mode only between trusted co-located processes. In that mode a worker also
// queues one-sided copies to a peer in UCX at most kPacedCopyBytes at a time, and cuts a
// transfer off the moment its deadline passes, before any further progress: a force-close
// cannot withdraw a copy UCX already queued (cma), so at most that many bytes per endpoint
// move after the deadline, and only when the worker's thread was stalled past it.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace strata::transport {

// Without peer-failure handling: the most bytes of one-sided copies a Worker has queued in UCX
// for one endpoint at once (UCX's cma moves 512 KiB a progress call), so the most that can
// move on it after a transfer's deadline when the worker's thread was stalled past it.
inline constexpr size_t kPacedCopyBytes = 512 << 10;

// Optional hooks of one Worker::Transfer call.
struct TransferHooks {
  // Called on the calling thread, before Transfer returns, once for each kRecv op whose message
  // has arrived whole, with the op's index, while other ops of the batch may still be in
  // flight: its bytes and *received are final, so the caller can work on them (a node verifies
  // a put block's checksum) while the rest arrive. Not called for receives that fail or are
  // cancelled, nor for other kinds. It may take its time (the progress thread goes on
  // meanwhile) but must not touch the buffers of ops it was not called for yet.
  std::function<void(size_t)> on_landed;
};

// Names an endpoint of one Worker. Never reused within a Worker; 0 is never a valid id.
using EndpointId = uint64_t;

// One one-sided operation of a batch.
struct TransferOp {
  enum class Kind : uint8_t {
    kPut,   // one-sided: local -> remote_addr in the peer's region
    kGet,   // one-sided: remote_addr in the peer's region -> local
    kSend,  // two-sided: local -> the peer, as a message carrying `tag` (length 0 allowed)
    kRecv,  // two-sided: the message carrying `tag`, from any peer of this worker -> local
  };
  Kind kind = Kind::kPut;
  // The local buffer: source of a put, destination of a get. For zero-copy it should lie in
  // a MemoryRegion of the worker's Context (UCX also accepts unregistered memory, registering
  // or copying it on the fly, which is slower; the client uses a registered BouncePool).
  void* local = nullptr;
  size_t length = 0;
  // Address in the peer's memory, inside the region `packed_rkey` describes.
  uint64_t remote_addr = 0;
  // The peer region's MemoryRegion::PackedRkey() bytes. Only read during the call.
  std::string_view packed_rkey;
  // kSend / kRecv: the message's tag (matched exactly). remote_addr and packed_rkey unused.
  uint64_t tag = 0;
  // kRecv: receives the message's length (at most `length`; a longer message fails the op
  // with an error). Written before Transfer returns OK. May be null.
  size_t* received = nullptr;

  // A tagged message of `length` bytes from `local` (length 0: an empty message).
  static TransferOp Send(const void* local, size_t length, uint64_t tag) {
    TransferOp op;
    op.kind = Kind::kSend;
    op.local = const_cast<void*>(local);  // only read
    op.length = length;
    op.tag = tag;
    return op;
  }
  // The message tagged `tag`, into `local` (capacity `length`); its length into *received.
  static TransferOp Recv(void* local, size_t length, uint64_t tag, size_t* received = nullptr) {
    TransferOp op;
    op.kind = Kind::kRecv;
    op.local = local;
    op.length = length;
    op.tag = tag;
    op.received = received;
    return op;
  }
};

class Worker {
 public:
  virtual ~Worker() = default;

  // The bytes a peer passes to Connect() to reach this worker (UCX worker address in a
  // checksummed envelope). Immutable; never fails; does not block.
  virtual const std::string& Address() const = 0;

  // Creates an endpoint to the worker whose Address() is `peer_address`. UCX connects lazily:
  // success does not prove the peer is alive, a dead peer shows up as UNAVAILABLE from
  // Transfer. INVALID_ARGUMENT: `peer_address` is not a Worker address (garbage, truncated).
  // UNAVAILABLE: the peer cannot be reached with this context's transports. Blocks until the
  // progress thread has created the endpoint (microseconds to milliseconds).
  virtual absl::StatusOr<EndpointId> Connect(std::string_view peer_address) = 0;

  // Closes the endpoint and releases its cached rkeys. Operations still in flight on it from
  // other threads complete first (graceful close) unless the endpoint has failed (then they
  // are cancelled). Returns once the endpoint is removed; the close finishes in the background.
  // INVALID_ARGUMENT: unknown (or already disconnected) endpoint.
  virtual absl::Status Disconnect(EndpointId ep) = 0;

  // Like Disconnect, but force-closes the endpoint at once: operations in flight on it are
  // cancelled, and the peer's requests still to come on it (RMA that UCX emulates with
  // messages, served by this worker) are dropped, so this worker stops reading and writing our
  // memory on that peer's behalf. For a caller that gave up on a call during which the peer
  // could touch its buffers (DEADLINE_EXCEEDED), before it hands them back. Same codes.
  virtual absl::Status Abandon(EndpointId ep) = 0;

  // Posts every op of `ops` on `ep` (all before waiting for any), flushes the endpoint and
  // blocks until every op has completed remotely and locally, or failed, or `deadline`.
  // On OK every put has landed in the peer's memory and every get's bytes are in `local`.
  // Buffers named by `ops` must stay valid and untouched until the call returns; after it
  // returns (with any status) UCX will not read or write them any more.
  //
  // Errors:
  //  INVALID_ARGUMENT  unknown endpoint; an op with a null buffer, a wrapping remote range, or
  //                    rkey bytes that are not a PackedRkey() usable on this endpoint. Checked
  //                    before anything is posted: nothing was transferred, the endpoint is fine.
  //  DEADLINE_EXCEEDED `deadline` passed. If it had passed before the call nothing was posted
  //                    and the endpoint is fine. Otherwise posting stops, the endpoint is
  //                    retired (answers UNAVAILABLE until reconnected), what was posted gets
  //                    up to 1 s to drain, and then the endpoint is force-closed, cancelling
  //                    the rest; the call returns once UCX no longer touches the batch's local
  //                    buffers (at most ~1.2 s past `deadline`). Local buffers of the batch
  //                    have undefined contents; so do the remote ranges of its puts, where
  //                    puts already on the wire may still land later. The drain exists because
  //                    force-closing with emulated (TCP) puts in flight aborts the peer in
  //                    UCX 1.13; a batch of receives only, with no one-sided op of another
  //                    transfer on the endpoint, gets none (it ends at its deadline).
  //  UNAVAILABLE       the peer is gone or the endpoint failed or was force-closed; reconnect
  //                    (or try another replica).
  //  other codes       UCX errors, converted with the failing op's index.
  // Zero-length puts and gets are skipped; zero-length sends are sent (an empty message tells
  // the receiver "nothing for this tag"). An empty batch returns OK once the endpoint is
  // flushed. Two-sided ops: a send completes once the receiver has taken the message (large
  // messages use UCX's rendezvous), a receive once its message has arrived; receives still
  // pending at the deadline are cancelled with the rest. Over TCP two-sided messages are the
  // fast path (UCX 1.13 emulates one-sided RMA there with slower round trips).
  //
  // `abort` (optional, polled about every millisecond while the batch is in flight): once it
  // reads true the batch ends with CANCELLED. Its receives are cancelled; if it also holds
  // sends, puts or gets, the endpoint is retired (UNAVAILABLE until reconnected), since those
  // cannot be withdrawn from the peer: a batch of sends only gets the drain grace first, as
  // after a deadline (a peer still receiving takes the messages), others are force-closed at
  // once (their puts and gets touch memory whose owner gave up on them). A cancel does not end a
  // receive whose message was already arriving: if one is still outstanding 50 ms after the
  // abort, the endpoint is retired and force-closed, and the batch ends UNAVAILABLE.
  //
  // `hooks` (optional): see TransferHooks.
  virtual absl::Status Transfer(EndpointId ep, std::span<const TransferOp> ops, absl::Time deadline,
                                const std::atomic<bool>* abort = nullptr,
                                const TransferHooks* hooks = nullptr) = 0;

  // UCX's description of the endpoint (ucp_ep_print_info: lanes and the transport/device
  // each uses, e.g. "tcp/lo" or "cma/memory"), so a node can log which transport a peer got.
  // INVALID_ARGUMENT: unknown endpoint. UNAVAILABLE: the endpoint failed or was closed.
  // Blocks until the progress thread answers.
  virtual absl::StatusOr<std::string> DescribeEndpoint(EndpointId ep) = 0;

  // Two-sided messages that arrived before any receive was posted for them wait in UCX's
  // unexpected queue, holding an eager message's bytes, until a receive matches them or the
  // worker is destroyed. These look at and drop those whose tag equals one of `tags` on the
  // bits set in `mask` (mask 0: any), for a receiver that knows no call will claim them (the
  // sender's channel closed, its call was refused). One trip to the progress thread each.
  //
  // Per entry of `tags`: the tag of the oldest matching message (the one a matching receive
  // would take first), if any. Nothing is removed.
  virtual std::vector<std::optional<uint64_t>> OldestUnclaimed(std::span<const uint64_t> tags,
                                                               uint64_t mask) = 0;
  // Drops every matching message without receiving a rendezvous message's payload (its sender
  // is answered as if received, unless its endpoint here is already closed); how many.
  virtual uint64_t DropUnclaimed(std::span<const uint64_t> tags, uint64_t mask) = 0;
  // Drops the oldest messages, a tag (on `mask`) at a time with all others of that tag, until
  // the oldest left matches one of `keep` on `mask`, or none is left; how many. For "drop
  // every message naming no open channel" without looking past one that does.
  virtual uint64_t DropUnclaimedUnless(std::span<const uint64_t> keep, uint64_t mask) = 0;

  // Test hook (a node's InjectFault): the progress thread stops calling UCX progress for good,
  // as when a peer that died mid-send left this worker's shared-memory receive queue wedged
  // (DataPlane's lane check); commands and deadlines are still served.
  virtual void StallForTest() = 0;
};

// A transfer answered at its deadline (or abort) while UCX still held some of its requests
// after the endpoint was force-closed (UCX 1.13 leaves emulated RMA waiting for a dead peer's
// reply): DEADLINE_EXCEEDED with `message`, marked so that RequestsAbandoned tells it apart. Such a
// request may still write into its local buffer later: the caller must not hand those buffers
// to anyone else for a while (a node quarantines a put's slots: WarmTier::AbortPut).
absl::Status RequestsAbandonedError(std::string_view message);
bool RequestsAbandoned(const absl::Status& status);

}  // namespace strata::transport
