// What a UCX worker's progress thread keeps about its work (worker.cc): the commands other
// threads hand it, its endpoints, and the UCX requests of each transfer in flight, with the
// UCX completion callbacks that update them, and the rules read off that state (the answer to
// a transfer, deadlines, pacing turns: worker_state.cc). Private to the transport library;
// every object here is touched only by the progress thread (a Command, and its LandedQueue
// under a mutex, also by the thread that waits on it).
#pragma once

#include <ucp/api/ucp.h>

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "strata/transport/worker.h"

namespace strata::transport::worker_state {

inline const char* KindName(TransferOp::Kind kind) {
  switch (kind) {
    case TransferOp::Kind::kPut:
      return "put";
    case TransferOp::Kind::kGet:
      return "get";
    case TransferOp::Kind::kSend:
      return "send";
    case TransferOp::Kind::kRecv:
      return "recv";
  }
  return "op";
}

inline bool OneSided(TransferOp::Kind kind) {
  return kind == TransferOp::Kind::kPut || kind == TransferOp::Kind::kGet;
}

struct Command;
// Runs a k*Unclaimed command against UCX's unexpected queue (unclaimed.cc; Worker's
// OldestUnclaimed, DropUnclaimed and DropUnclaimedUnless).
void RunUnclaimed(ucp_worker_h worker, Command* cmd);

// The receives of a transfer that have landed, for a caller that works on them while the rest
// are in flight (Worker::Transfer's on_landed): filled by the progress thread, drained by the
// thread that waits on the transfer. The one object here shared between the two.
class LandedQueue {
 public:
  // Progress thread: receive `index` arrived whole.
  void Push(size_t index) {
    absl::MutexLock lock(&mu_);
    landed_.push_back(index);
  }
  // Progress thread: the transfer is answered; nothing more will land.
  void Finish() {
    absl::MutexLock lock(&mu_);
    finished_ = true;
  }
  // Caller: waits for receives that landed and swaps them into *out (which it clears first);
  // false once the transfer is answered and every landed index was taken.
  bool Take(std::vector<size_t>* out) {
    out->clear();
    absl::MutexLock lock(&mu_, absl::Condition(this, &LandedQueue::Ready));
    if (landed_.empty()) return false;
    out->swap(landed_);
    return true;
  }

 private:
  bool Ready() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return finished_ || !landed_.empty(); }

  absl::Mutex mu_;
  std::vector<size_t> landed_ ABSL_GUARDED_BY(mu_);
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
};

struct Command {
  enum class Type {
    kConnect,
    kDisconnect,
    kTransfer,
    kDescribe,
    kOldestUnclaimed,
    kDropUnclaimed,
    kDropUnclaimedUnless,
  };
  explicit Command(Type t) : type(t) {}

  const Type type;
  EndpointId ep = 0;
  absl::string_view peer_address;               // kConnect
  std::span<const TransferOp> ops;              // kTransfer
  absl::Time deadline;                          // kTransfer
  const std::atomic<bool>* abort = nullptr;     // kTransfer
  LandedQueue* landed = nullptr;                // kTransfer: its caller takes receives as they land
  bool force = false;                           // kDisconnect: force-close at once
  absl::Status status;                          // answer
  EndpointId connected = 0;                     // kConnect answer
  std::string text;                             // kDescribe answer
  std::span<const uint64_t> tags;               // k*Unclaimed
  uint64_t tag_mask = 0;                        // k*Unclaimed
  std::vector<std::optional<uint64_t>> oldest;  // kOldestUnclaimed answer, per tag
  uint64_t dropped = 0;                         // kDropUnclaimed answer
  absl::Notification done;
};

// Whether a transfer is receives only (an abort cancels them and keeps the endpoint).
inline bool OnlyReceives(const Command& cmd) {
  return std::all_of(cmd.ops.begin(), cmd.ops.end(),
                     [](const TransferOp& op) { return op.kind == TransferOp::Kind::kRecv; });
}

inline bool OnlySends(const Command& cmd) {
  return std::all_of(cmd.ops.begin(), cmd.ops.end(),
                     [](const TransferOp& op) { return op.kind == TransferOp::Kind::kSend; });
}

enum class EndpointState {
  kOpen,
  kFlushing,  // graceful close: flushing before the rkeys go and the close starts
  kClosing,   // ucp_ep_close_nbx in flight
  kClosed,    // ucp_ep is gone
};

struct Endpoint {
  bool* worker_errors = nullptr;  // the owning worker's flag, raised by the error callback
  EndpointId id = 0;
  ucp_ep_h ep = nullptr;
  EndpointState state = EndpointState::kOpen;
  // Why the endpoint is unusable (UNAVAILABLE): set by the UCX error callback or when a
  // deadline force-closed it. OK while usable.
  absl::Status failure;
  bool peer_failed = false;    // UCX reported the endpoint failed: it must be force-closed
  bool forced = false;         // force-closed (ForceClose), not closed after a flush
  bool flush_pending = false;  // a close-flush request is outstanding
  ucs_status_t flush_result = UCS_OK;
  void* close_request = nullptr;
  int active_transfers = 0;
  absl::flat_hash_map<std::string, ucp_rkey_h> rkeys;
};

struct InFlightTransfer;

// user_data of one UCX request of a transfer; index == ops.size() is the flush.
struct OpSlot {
  InFlightTransfer* transfer = nullptr;
  size_t index = 0;
  void* recv_request = nullptr;  // a posted receive not yet completed (cancelled at deadline)
  size_t* received = nullptr;
  bool recv_pending = false;  // set before posting a receive, cleared by its callback
};

struct InFlightTransfer {
  Command* cmd = nullptr;
  Endpoint* endpoint = nullptr;
  std::vector<OpSlot> slots;
  size_t outstanding = 0;
  size_t outstanding_receives = 0;  // of them, receives (they queue no copy on the endpoint)
  ucs_status_t first_error = UCS_OK;
  size_t first_error_index = 0;
  bool deadline_hit = false;
  bool aborted = false;             // the caller's abort flag was seen
  bool flushed = false;             // every op and the flush were posted
  bool receives_cancelled = false;  // CancelReceives ran
  // An aborted batch of receives still waiting then retires its endpoint (UcpWorker::
  // ServiceTransfers); abort_forced: it did, and the batch answers UNAVAILABLE.
  absl::Time abort_close_at = absl::InfiniteFuture();
  bool abort_forced = false;
  absl::Time force_close_at = absl::InfiniteFuture();
  bool force_closed = false;
  absl::Time abandon_at = absl::InfiniteFuture();
  std::vector<ucp_rkey_h> rkeys;  // per op, for one-sided ops (owned by the endpoint's cache)
  bool paced = false;             // see UcpWorker::PostMore
  uint64_t seq = 0;               // arrival order on its worker (paced transfers take turns)
  size_t next_op = 0;             // PostMore's place: ops before it are posted ...
  size_t next_offset = 0;         // ... and this many bytes of it (paced one-sided ops)

  void Record(size_t index, ucs_status_t status) {
    if (status != UCS_OK && first_error == UCS_OK) {
      first_error = status;
      first_error_index = index;
    }
  }
};

inline void OnTransferRequestDone(void* request, ucs_status_t status, void* user_data) {
  auto* slot = static_cast<OpSlot*>(user_data);
  slot->transfer->Record(slot->index, status);
  --slot->transfer->outstanding;
  ucp_request_free(request);
}

inline void OnRecvRequestDone(void* request, ucs_status_t status, const ucp_tag_recv_info_t* info,
                              void* user_data) {
  auto* slot = static_cast<OpSlot*>(user_data);
  slot->recv_request = nullptr;
  slot->recv_pending = false;
  // An abandoned transfer (answered after a force-close) has no command any more, and its
  // caller's `received` and buffers are gone.
  const Command* cmd = slot->transfer->cmd;
  if (status == UCS_OK && cmd != nullptr && slot->received != nullptr) {
    *slot->received = info->length;
  }
  if (status == UCS_OK && cmd != nullptr && cmd->landed != nullptr) cmd->landed->Push(slot->index);
  slot->transfer->Record(slot->index, status);
  --slot->transfer->outstanding;
  --slot->transfer->outstanding_receives;
  ucp_request_free(request);
}

// The answer to a transfer nothing is outstanding for: CANCELLED (aborted by its caller),
// DEADLINE_EXCEEDED (its deadline retired the endpoint), UNAVAILABLE (its endpoint failed or
// was force-closed under it), another code from UCX's first error, or OK.
absl::Status TransferResult(const InFlightTransfer& t);
// Marks t's endpoint unusable (UNAVAILABLE until reconnected, saying `why`) and has the
// worker force-close it at `force_close_at` (UcpWorker::ServiceTransfers).
void Retire(InFlightTransfer* t, absl::Time force_close_at, std::string_view why);

// Why endpoint `e` cannot take transfers (UNAVAILABLE: failed or closed), or OK.
absl::Status Unusable(const Endpoint& e);

// Drops the rkeys `e` unpacked.
void DestroyRkeys(Endpoint* e);
// Whether no message can reach a receive through `e` any more: the peer failed, or the
// endpoint was closed (forced or after its flush) where that cuts the peer off
// (peer-failure handling: TCP). Over
// shared memory a peer's sends land in the worker without this endpoint, so a receive may
// still be matched (a fenced client's other calls, a channel closed gracefully): those wait
// for their messages or their deadline.
inline bool EndpointGone(const Endpoint& e, bool peer_failure_handling) {
  return e.peer_failed ||
         (peer_failure_handling &&
          (e.forced || e.state == EndpointState::kClosing || e.state == EndpointState::kClosed));
}
// Empties e's rkey cache but for the rkeys e's transfers in `in_flight` use: a peer that
// always has a call in flight (several streams) and sends new rkeys must not grow it for ever.
void DropUnusedRkeys(Endpoint* e, std::span<const std::unique_ptr<InFlightTransfer>> in_flight);

// The answer to a call the worker's shutdown cut short: UNAVAILABLE.
absl::Status ShuttingDown();

// A ucp worker for one progress thread (UCS_THREAD_MODE_SINGLE), its sealed address, its
// event fd, and the thread's wake-up fds: an eventfd for new work and an epoll set over it and
// the event fd. The UcpWorker that takes it closes it.
struct RawWorker {
  ucp_worker_h worker = nullptr;
  std::string address;
  int ucp_efd = -1;
  int wake_fd = -1;
  int epoll_fd = -1;
};
// On failure nothing is left open; the kernel refusing an fd is RESOURCE_EXHAUSTED.
absl::StatusOr<RawWorker> OpenRawWorker(ucp_context_h context);
// Waits on `epoll_fd` (the UCX event fd and `wake_fd`) for up to timeout_ms (-1: no limit),
// consuming a wake-up.
void WaitForEvents(int epoll_fd, int wake_fd, int timeout_ms);

// Whether a transfer not yet retired has passed its deadline at `now`.
bool AnyPastDeadline(std::span<const std::unique_ptr<InFlightTransfer>> in_flight, absl::Time now);

// Whether a transfer beside `t` on its endpoint has one-sided ops.
bool OneSidedBeside(std::span<const std::unique_ptr<InFlightTransfer>> in_flight,
                    const InFlightTransfer& t);

// Whether paced transfer t must wait before posting a copy: another paced transfer on its
// endpoint has one queued in UCX, or an older one there still has copies to post (first come,
// first served, so a stream of newer transfers cannot starve an older one into its deadline).
// Per endpoint, so one whose peer hangs (emulated RMA to a dead peer waits for its deadline)
// holds up no other peer.
bool MustWaitForTurn(std::span<const std::unique_ptr<InFlightTransfer>> in_flight,
                     const InFlightTransfer& t);

// Called by UCX (on the progress thread, inside ucp_worker_progress) when the endpoint `arg`
// (an Endpoint) fails.
void OnEndpointError(void* arg, ucp_ep_h, ucs_status_t status);

// ucp_ep_print_info's text: the lanes of `ep` and the transport/device each uses.
absl::StatusOr<std::string> DescribeUcpEndpoint(ucp_ep_h ep);

inline void OnCloseFlushDone(void* request, ucs_status_t status, void* user_data) {
  auto* e = static_cast<Endpoint*>(user_data);
  e->flush_pending = false;
  e->flush_result = status;
  ucp_request_free(request);
}

}  // namespace strata::transport::worker_state
