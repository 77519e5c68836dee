// Worker on UCX: one ucp_worker confined to one progress thread (see worker.h).
//
// Everything below the public methods runs on the progress thread. Public methods build a
// Command on their own stack, queue a pointer to it, wake the thread through an eventfd and
// wait for the thread to notify the command; a Transfer command is answered only once UCX has
// finished with every buffer it names (completed, failed or cancelled by a force-close).

#include "strata/transport/worker.h"

#include <stdio.h>
#include <stdlib.h>
#include <ucp/api/ucp.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "sealed_bytes.h"
#include "strata/common/threads.h"
#include "strata/transport/peer_order.h"
#include "ucp_context.h"
#include "ucx_status.h"
#include "worker_state.h"

namespace strata::transport {
namespace {

// While operations are in flight the thread makes UcpContext::busy_polls_before_sleep() empty
// progress polls before it sleeps on the event fd, for at most kBusySleep (so a missed event
// costs at most that much latency).
constexpr absl::Duration kBusySleep = absl::Milliseconds(1);
// How long requests of a force-closed endpoint may stay outstanding before their transfer is
// answered without them (see ServiceTransfers).
constexpr absl::Duration kAbandonAfterForceClose = absl::Milliseconds(200);
// How long an aborted batch of receives may still wait for receives the cancel did not end
// (their messages were already arriving) before its endpoint is retired and force-closed.
constexpr absl::Duration kAbortedReceiveGrace = absl::Milliseconds(50);
// Progress calls in a row before commands and deadlines are looked at again.
constexpr int kMaxProgressRun = 64;
// How long shutdown waits for endpoint closes before destroying the worker anyway.
constexpr absl::Duration kShutdownCloseWait = absl::Seconds(2);
// Unpacked rkeys cached per endpoint; past it those no transfer in flight uses are dropped.
constexpr size_t kMaxCachedRkeys = 1024;

using worker_state::AnyPastDeadline;
using worker_state::Command;
using worker_state::DestroyRkeys;
using worker_state::DropUnusedRkeys;
using worker_state::Endpoint;
using worker_state::EndpointGone;
using worker_state::EndpointState;
using worker_state::InFlightTransfer;
using worker_state::MustWaitForTurn;
using worker_state::OnCloseFlushDone;
using worker_state::OneSided;
using worker_state::OneSidedBeside;
using worker_state::OnlyReceives;
using worker_state::OnRecvRequestDone;
using worker_state::OnTransferRequestDone;
using worker_state::OpSlot;
using worker_state::Retire;
using worker_state::ShuttingDown;
using worker_state::TransferResult;
using worker_state::Unusable;

class UcpWorker final : public Worker {
 public:
  // Owns what `raw` holds from here on; Start() starts the progress thread.
  UcpWorker(std::shared_ptr<UcpContext> context, worker_state::RawWorker raw)
      : context_(std::move(context)),
        worker_(raw.worker),
        address_(std::move(raw.address)),
        ucp_efd_(raw.ucp_efd),
        wake_fd_(raw.wake_fd),
        epoll_fd_(raw.epoll_fd) {}

  absl::Status Start() {
    absl::StatusOr<std::thread> t = StartThread("a UCX worker", [this] { Run(); });
    if (!t.ok()) return t.status();
    thread_ = *std::move(t);
    return absl::OkStatus();
  }

  ~UcpWorker() override {
    {
      absl::MutexLock lock(&mu_);
      stop_ = true;
    }
    Wake();
    if (thread_.joinable()) thread_.join();
    ucp_worker_destroy(worker_);
    for (auto& t : in_flight_) Answer(t->cmd, ShuttingDown());
    close(epoll_fd_);
    close(wake_fd_);
  }

  const std::string& Address() const override { return address_; }

  absl::StatusOr<EndpointId> Connect(std::string_view peer_address) override {
    Command cmd(Command::Type::kConnect);
    cmd.peer_address = absl::string_view(peer_address.data(), peer_address.size());
    Submit(&cmd);
    if (!cmd.status.ok()) return cmd.status;
    return cmd.connected;
  }

  absl::Status Disconnect(EndpointId ep) override { return Close(ep, /*force=*/false); }
  absl::Status Abandon(EndpointId ep) override { return Close(ep, /*force=*/true); }
  void StallForTest() override { stalled_.store(true, std::memory_order_relaxed); }

  absl::Status Close(EndpointId ep, bool force) {
    Command cmd(Command::Type::kDisconnect);
    cmd.ep = ep;
    cmd.force = force;
    Submit(&cmd);
    return cmd.status;
  }

  absl::Status Transfer(EndpointId ep, std::span<const TransferOp> ops, absl::Time deadline,
                        const std::atomic<bool>* abort, const TransferHooks* hooks) override {
    Command cmd(Command::Type::kTransfer);
    cmd.ep = ep;
    cmd.ops = ops;
    cmd.deadline = deadline;
    cmd.abort = abort;
    Submit(&cmd, hooks);
    return cmd.status;
  }

  absl::StatusOr<std::string> DescribeEndpoint(EndpointId ep) override {
    Command cmd(Command::Type::kDescribe);
    cmd.ep = ep;
    Submit(&cmd);
    if (!cmd.status.ok()) return cmd.status;
    return std::move(cmd.text);
  }

  std::vector<std::optional<uint64_t>> OldestUnclaimed(std::span<const uint64_t> tags,
                                                       uint64_t mask) override {
    return std::move(Unclaimed(Command(Command::Type::kOldestUnclaimed), tags, mask).oldest);
  }

  uint64_t DropUnclaimed(std::span<const uint64_t> tags, uint64_t mask) override {
    return Unclaimed(Command(Command::Type::kDropUnclaimed), tags, mask).dropped;
  }

  uint64_t DropUnclaimedUnless(std::span<const uint64_t> keep, uint64_t mask) override {
    return Unclaimed(Command(Command::Type::kDropUnclaimedUnless), keep, mask).dropped;
  }

 private:
  // ---- any thread ----

  // Hands `cmd` to the progress thread and waits for its answer; meanwhile a transfer's
  // hooks->on_landed runs here for its receives as they land.
  void Submit(Command* cmd, const TransferHooks* hooks = nullptr) {
    // Only a caller with on_landed pays for the queue (every other command skips it).
    std::optional<worker_state::LandedQueue> landed;
    if (hooks != nullptr && hooks->on_landed) cmd->landed = &landed.emplace();
    {
      absl::MutexLock lock(&mu_);
      if (stop_) {
        // The progress thread answers nothing more once it is stopping.
        cmd->status = ShuttingDown();
        if (cmd->type == Command::Type::kOldestUnclaimed) cmd->oldest.resize(cmd->tags.size());
        return;
      }
      queue_.push_back(cmd);
    }
    Wake();
    std::vector<size_t> batch;
    while (landed.has_value() && landed->Take(&batch)) {
      for (size_t index : batch) hooks->on_landed(index);
    }
    cmd->done.WaitForNotification();
  }

  // Runs a k*Unclaimed command; the answer is in `cmd`.
  Command& Unclaimed(Command&& cmd, std::span<const uint64_t> tags, uint64_t mask) {
    cmd.tags = tags;
    cmd.tag_mask = mask;
    Submit(&cmd);
    return cmd;
  }

  void Wake() {
    const uint64_t one = 1;
    // A full counter (EAGAIN) still wakes the thread, so the result needs no handling.
    [[maybe_unused]] ssize_t n = write(wake_fd_, &one, sizeof(one));
  }

  // ---- progress thread only ----

  void Run() {
    int empty_polls = 0;
    bool stopping = false;
    absl::Time stop_by = absl::InfiniteFuture();
    for (;;) {
      if (!stopping && DrainCommands()) {
        stopping = true;
        stop_by = absl::Now() + kShutdownCloseWait;
        for (auto& [id, e] : endpoints_) ForceClose(e.get());
        for (auto& e : detached_) ForceClose(e.get());
        // Receives would wait for messages that no longer matter (UNAVAILABLE).
        for (auto& t : in_flight_) CancelReceives(t.get());
      }
      // A thread that was descheduled or frozen past a transfer's deadline must not let
      // progress run that transfer's queued copies first (CutOffIsDue).
      if (CutOffIsDue()) ServiceTransfers(absl::Now());
      bool progressed = false;
      for (int run = 0; run < kMaxProgressRun && ProgressOnce(); ++run) {
        progressed = true;
        if (CutOffIsDue()) break;
      }
      ServiceEndpoints();
      const absl::Time now = absl::Now();
      ServiceTransfers(now);
      const bool busy = !in_flight_.empty() || closes_pending_ > 0;
      if (stopping && (!busy || now >= stop_by)) break;
      if (progressed) {
        empty_polls = 0;
        continue;
      }
      if (busy && ++empty_polls < context_->busy_polls_before_sleep()) continue;
      empty_polls = 0;
      Sleep(busy, now);
    }
    // Shutdown: transfers still in flight (their receives were cancelled when stopping began)
    // are answered by the destructor once ucp_worker_destroy has stopped every request that
    // could still touch their buffers (a matched rendezvous receive, an RDMA read), and
    // whatever did not close in time loses its rkeys before the worker goes.
    for (auto& [id, e] : endpoints_) DestroyRkeys(e.get());
    for (auto& e : detached_) DestroyRkeys(e.get());
  }

  // Over transports without peer-failure handling (shared memory) a one-sided copy queued in
  // UCX runs inside ucp_worker_progress straight into the peer's pages (cma), and closing our
  // endpoint is the only way to drop what is still queued. The peer's client gives its
  // buffers back at the same deadline, so these endpoints are cut off the moment a transfer's
  // deadline passes, before any further progress; over TCP, where a force-close with
  // emulated puts in flight can abort the peer, posted requests get
  // TransportOptions::deadline_drain_grace first (and the client fences its own endpoints).
  bool CutOffIsDue() const {
    return !context_->peer_failure_handling() && AnyPastDeadline(in_flight_, absl::Now());
  }

  absl::Duration DeadlineDrainGrace() const {
    return context_->peer_failure_handling() ? context_->drain_grace() : absl::ZeroDuration();
  }

  // One ucp_worker_progress call; true if it made progress. UCX may read or write our
  // registered memory inside it on a peer's behalf (peer_order.h).
  bool ProgressOnce() {
    if (stalled_.load(std::memory_order_relaxed)) return false;
    AcquireFromPeers();
    const unsigned n = ucp_worker_progress(worker_);
    ReleaseToPeers();
    return n != 0;
  }

  // Blocks on the UCX event fd and the wake eventfd until an event, the nearest transfer
  // deadline, or (while busy) kBusySleep.
  void Sleep(bool busy, absl::Time now) {
    if (stalled_.load(std::memory_order_relaxed)) {  // UCX's fd may stay readable: not polled
      absl::SleepFor(kBusySleep);
      return;
    }
    const ucs_status_t armed = ucp_worker_arm(worker_);
    if (armed == UCS_ERR_BUSY) return;  // events arrived meanwhile: progress again
    absl::Time until = busy ? now + kBusySleep : absl::InfiniteFuture();
    for (const auto& t : in_flight_) {
      if (!t->deadline_hit) until = std::min(until, t->cmd->deadline);
    }
    int timeout_ms = -1;
    if (until != absl::InfiniteFuture() || armed != UCS_OK) {
      // An unarmable worker (armed is an error) cannot signal its fd: poll instead.
      const absl::Duration wait = armed != UCS_OK ? kBusySleep : until - now;
      timeout_ms = static_cast<int>(std::clamp<int64_t>(
          absl::ToInt64Milliseconds(wait + absl::Microseconds(999)), 0, 60'000));
    }
    worker_state::WaitForEvents(epoll_fd_, wake_fd_, timeout_ms);
  }

  // Executes queued commands. Returns true when the worker is stopping.
  bool DrainCommands() {
    std::deque<Command*> batch;
    bool stop;
    {
      absl::MutexLock lock(&mu_);
      batch.swap(queue_);
      stop = stop_;
    }
    for (Command* cmd : batch) Execute(cmd);
    return stop;
  }

  void Execute(Command* cmd) {
    switch (cmd->type) {
      case Command::Type::kConnect:
        DoConnect(cmd);
        break;
      case Command::Type::kDisconnect:
        DoDisconnect(cmd);
        break;
      case Command::Type::kTransfer:
        // Answered (and notified) by StartTransfer or later by ServiceTransfers.
        StartTransfer(cmd);
        return;
      case Command::Type::kDescribe:
        DoDescribe(cmd);
        break;
      case Command::Type::kOldestUnclaimed:
      case Command::Type::kDropUnclaimed:
      case Command::Type::kDropUnclaimedUnless:
        worker_state::RunUnclaimed(worker_, cmd);
        break;
    }
    cmd->done.Notify();
  }

  absl::StatusOr<Endpoint*> Lookup(EndpointId id) {
    auto it = endpoints_.find(id);
    if (it == endpoints_.end()) {
      return absl::InvalidArgumentError(absl::StrCat("unknown endpoint ", id));
    }
    return it->second.get();
  }

  void DoConnect(Command* cmd) {
    absl::StatusOr<absl::string_view> address =
        Unseal(kWorkerAddressTag, cmd->peer_address, "worker address");
    if (!address.ok()) {
      cmd->status = address.status();
      return;
    }
    auto e = std::make_unique<Endpoint>();
    e->worker_errors = &endpoint_errors_;
    e->id = next_endpoint_id_;
    ucp_ep_params_t params = {};
    params.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                        UCP_EP_PARAM_FIELD_ERR_HANDLER;
    params.address = reinterpret_cast<const ucp_address_t*>(address->data());
    params.err_mode =
        context_->peer_failure_handling() ? UCP_ERR_HANDLING_MODE_PEER : UCP_ERR_HANDLING_MODE_NONE;
    params.err_handler.cb = &worker_state::OnEndpointError;
    params.err_handler.arg = e.get();
    const ucs_status_t status = ucp_ep_create(worker_, &params, &e->ep);
    if (status != UCS_OK) {
      cmd->status = UcsToStatus(status, "Connect: ucp_ep_create");
      return;
    }
    ++next_endpoint_id_;
    cmd->connected = e->id;
    endpoints_.emplace(e->id, std::move(e));
  }

  void DoDisconnect(Command* cmd) {
    auto it = endpoints_.find(cmd->ep);
    if (it == endpoints_.end()) {
      cmd->status = absl::InvalidArgumentError(absl::StrCat("unknown endpoint ", cmd->ep));
      return;
    }
    std::unique_ptr<Endpoint> e = std::move(it->second);
    endpoints_.erase(it);
    if (e->state == EndpointState::kOpen) {
      // A retired endpoint (deadline) is still healthy at the UCX level: flush and close it
      // gracefully; its draining transfer force-closes it if the drain takes too long.
      if (e->peer_failed || cmd->force) {
        ForceClose(e.get());
      } else {
        StartGracefulClose(e.get());
      }
    }
    detached_.push_back(std::move(e));
  }

  void DoDescribe(Command* cmd) {
    absl::StatusOr<Endpoint*> e = Lookup(cmd->ep);
    cmd->status = e.ok() ? Unusable(**e) : e.status();
    if (!cmd->status.ok()) return;
    absl::StatusOr<std::string> text = worker_state::DescribeUcpEndpoint((*e)->ep);
    cmd->status = text.status();
    if (text.ok()) cmd->text = std::move(*text);
  }

  // Unpacks (or finds cached) the rkey for `sealed` on `e`.
  absl::StatusOr<ucp_rkey_h> RkeyFor(Endpoint* e, absl::string_view sealed) {
    auto it = e->rkeys.find(sealed);
    if (it != e->rkeys.end()) return it->second;
    absl::StatusOr<absl::string_view> packed = Unseal(kRkeyTag, sealed, "packed rkey");
    if (!packed.ok()) return packed.status();
    if (absl::Status s = CheckPackedRkeyLayout(*packed); !s.ok()) return s;
    ucp_rkey_h rkey = nullptr;
    const ucs_status_t status = ucp_ep_rkey_unpack(e->ep, PadForUcx(*packed).data(), &rkey);
    if (status != UCS_OK) {
      return absl::InvalidArgumentError(
          UcsToStatus(status, absl::StrCat("packed rkey unusable on endpoint ", e->id)).message());
    }
    e->rkeys.emplace(std::string(sealed), rkey);
    return rkey;
  }

  void Answer(Command* cmd, absl::Status status) {
    cmd->status = std::move(status);
    if (cmd->landed != nullptr) cmd->landed->Finish();
    cmd->done.Notify();
  }

  void StartTransfer(Command* cmd) {
    absl::StatusOr<Endpoint*> found = Lookup(cmd->ep);
    if (!found.ok()) return Answer(cmd, found.status());
    Endpoint* e = *found;
    if (absl::Status s = Unusable(*e); !s.ok()) return Answer(cmd, s);
    if (absl::Now() >= cmd->deadline) {
      return Answer(cmd, absl::DeadlineExceededError(
                             absl::StrCat("Transfer of ", cmd->ops.size(), " ops on endpoint ",
                                          e->id, ": deadline passed before anything was posted")));
    }
    if (e->rkeys.size() >= kMaxCachedRkeys) DropUnusedRkeys(e, in_flight_);

    // Validate everything and unpack every rkey before posting anything, so a bad op leaves
    // nothing half-done.
    std::vector<ucp_rkey_h> rkeys(cmd->ops.size(), nullptr);
    for (size_t i = 0; i < cmd->ops.size(); ++i) {
      const TransferOp& op = cmd->ops[i];
      if (!OneSided(op.kind)) {
        if (op.local == nullptr && op.length > 0) {
          return Answer(cmd,
                        absl::InvalidArgumentError(absl::StrCat(
                            "Transfer op ", i, ": null local buffer for ", op.length, " bytes")));
        }
        continue;
      }
      if (op.length == 0) continue;
      if (op.local == nullptr) {
        return Answer(cmd,
                      absl::InvalidArgumentError(absl::StrCat(
                          "Transfer op ", i, ": null local buffer for ", op.length, " bytes")));
      }
      if (op.remote_addr + op.length < op.remote_addr) {
        return Answer(cmd, absl::InvalidArgumentError(
                               absl::StrCat("Transfer op ", i, ": remote range wraps around")));
      }
      absl::StatusOr<ucp_rkey_h> rkey =
          RkeyFor(e, absl::string_view(op.packed_rkey.data(), op.packed_rkey.size()));
      if (!rkey.ok()) {
        return Answer(cmd, absl::InvalidArgumentError(
                               absl::StrCat("Transfer op ", i, ": ", rkey.status().message())));
      }
      rkeys[i] = *rkey;
    }

    auto t = std::make_unique<InFlightTransfer>();
    t->cmd = cmd;
    t->endpoint = e;
    t->slots.resize(cmd->ops.size() + 1);
    t->rkeys = std::move(rkeys);
    t->paced = !context_->peer_failure_handling();
    t->seq = next_transfer_seq_++;
    ++e->active_transfers;
    PostMore(t.get());
    in_flight_.push_back(std::move(t));
  }

  // Posts t's remaining ops and then its flush. Paced transfers (transports without
  // peer-failure handling: shared memory) post one-sided ops one kPacedCopyBytes chunk at a
  // time, the next only when no paced copy to the same peer is queued (MustWaitForTurn), so what
  // UCX has queued for a peer, and would still copy after the endpoint is cut off (a force-close
  // does not drop queued cma copies in UCX 1.13), is never more than one chunk. Stops short at the
  // deadline (ServiceTransfers answers then).
  void PostMore(InFlightTransfer* t) {
    Command* cmd = t->cmd;
    Endpoint* e = t->endpoint;
    if (e->state != EndpointState::kOpen || !e->failure.ok()) {
      // Failed or closed between two paced chunks: its ep and rkeys are gone (UNAVAILABLE).
      t->Record(t->next_op, UCS_ERR_CANCELED);
      t->next_op = cmd->ops.size() + 1;
      return;
    }
    for (size_t& i = t->next_op; i <= cmd->ops.size(); ++i) {
      const bool flush = i == cmd->ops.size();
      if (!flush && cmd->ops[i].length == 0 && OneSided(cmd->ops[i].kind)) continue;
      const bool pace = t->paced && (flush || OneSided(cmd->ops[i].kind));
      // Posted again once that one completes (a flush waits for its own transfer only).
      if (pace && (t->outstanding > 0 || (!flush && MustWaitForTurn(in_flight_, *t)))) return;
      // Some transports (shared memory) copy inside ucp_put_nbx/ucp_get_nbx, so a big batch can
      // outlive its deadline while being posted, and a paced one waits its turn: stop posting
      // then, and let ServiceTransfers force-close the endpoint.
      if (absl::Now() >= cmd->deadline) return;
      t->slots[i] = OpSlot{t, i};
      ucp_request_param_t param = {};
      param.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
      param.cb.send = &OnTransferRequestDone;
      param.user_data = &t->slots[i];
      ucs_status_ptr_t request;
      if (flush) {
        request = ucp_ep_flush_nbx(e->ep, &param);
      } else if (cmd->ops[i].kind == TransferOp::Kind::kSend) {
        const TransferOp& op = cmd->ops[i];
        request = ucp_tag_send_nbx(e->ep, op.local, op.length, op.tag, &param);
      } else if (cmd->ops[i].kind == TransferOp::Kind::kRecv) {
        const TransferOp& op = cmd->ops[i];
        // Always through the callback (NO_IMM_CMPL): UCX 1.13 does not report the length of a
        // message it completes at once from its unexpected queue. The callback may run inside
        // ucp_tag_recv_nbx, so the slot is counted as outstanding before the call.
        param.op_attr_mask |= UCP_OP_ATTR_FLAG_NO_IMM_CMPL;
        param.cb.recv = &OnRecvRequestDone;
        OpSlot& slot = t->slots[i];
        slot.received = op.received;
        slot.recv_pending = true;
        ++t->outstanding;
        ++t->outstanding_receives;
        request = ucp_tag_recv_nbx(worker_, op.local, op.length, op.tag, ~ucp_tag_t{0}, &param);
        if (UCS_PTR_IS_ERR(request)) {
          slot.recv_pending = false;
          --t->outstanding;
          --t->outstanding_receives;
        } else if (slot.recv_pending) {
          slot.recv_request = request;  // still in flight: cancellable
        }
        if (!UCS_PTR_IS_ERR(request)) continue;  // counted above
      } else {
        const TransferOp& op = cmd->ops[i];
        size_t offset = 0, length = op.length;
        if (pace) {
          offset = t->next_offset;
          length = std::min(op.length - offset, kPacedCopyBytes);
        }
        void* local = static_cast<char*>(op.local) + offset;
        request =
            op.kind == TransferOp::Kind::kPut
                ? ucp_put_nbx(e->ep, local, length, op.remote_addr + offset, t->rkeys[i], &param)
                : ucp_get_nbx(e->ep, local, length, op.remote_addr + offset, t->rkeys[i], &param);
        if (pace && !UCS_PTR_IS_ERR(request) && offset + length < op.length) {
          t->next_offset = offset + length;
          if (request != nullptr) ++t->outstanding;
          --i;  // the same op again, from next_offset
          continue;
        }
        t->next_offset = 0;
      }
      if (UCS_PTR_IS_ERR(request)) {
        // Stop posting; what is already posted still has to complete before we answer.
        t->Record(i, UCS_PTR_STATUS(request));
        t->next_op = cmd->ops.size() + 1;
        return;
      }
      if (request != nullptr) ++t->outstanding;
      if (flush) t->flushed = true;
    }
  }

  void ServiceTransfers(absl::Time now) {
    for (size_t i = 0; i < in_flight_.size();) {
      InFlightTransfer* t = in_flight_[i].get();
      const bool abort_asked =
          t->cmd->abort != nullptr && t->cmd->abort->load(std::memory_order_acquire);
      if (t->paced && t->outstanding == 0 && !t->flushed && !t->deadline_hit && !t->aborted &&
          !abort_asked && t->first_error == UCS_OK) {
        PostMore(t);
      }
      // Done when nothing is outstanding, unless posting stopped short for the deadline (then
      // the deadline branch below answers DEADLINE_EXCEEDED).
      if (t->outstanding == 0 && (t->flushed || t->first_error != UCS_OK || t->deadline_hit)) {
        --t->endpoint->active_transfers;
        Answer(t->cmd, TransferResult(*t));
        in_flight_[i] = std::move(in_flight_.back());
        in_flight_.pop_back();
        continue;
      }
      if (t->deadline_hit && now >= t->abandon_at && t->endpoint->state == EndpointState::kClosed) {
        // UCX 1.13 does not complete every request of a force-closed endpoint without
        // peer-failure handling (emulated RMA waiting for a dead peer's reply). Answer anyway
        // and keep the transfer (whose slots UCX may still call back into) until the worker is
        // destroyed.
        --t->endpoint->active_transfers;
        Answer(t->cmd, RequestsAbandonedError(absl::StrCat(
                           "Transfer of ", t->cmd->ops.size(), " ops on endpoint ", t->endpoint->id,
                           t->aborted ? ": aborted" : ": deadline passed", "; force-closed with ",
                           t->outstanding, " requests abandoned, reconnect to use the peer")));
        t->cmd = nullptr;
        t->endpoint = nullptr;
        abandoned_.push_back(std::move(in_flight_[i]));
        in_flight_[i] = std::move(in_flight_.back());
        in_flight_.pop_back();
        continue;
      }
      if (!t->aborted && !t->deadline_hit && t->cmd->abort != nullptr &&
          t->cmd->abort->load(std::memory_order_acquire)) {
        t->aborted = true;
        CancelReceives(t);
        // Sends and RMA cannot be withdrawn: retire; sends drain first (transfer-protocol.md).
        if (!OnlyReceives(*t->cmd))
          Retire(t, now + (OnlySends(*t->cmd) ? DeadlineDrainGrace() : absl::ZeroDuration()),
                 "a transfer was aborted");
        else
          t->abort_close_at = now + kAbortedReceiveGrace;
      }
      if (t->aborted && !t->deadline_hit && t->outstanding > 0 && now >= t->abort_close_at) {
        // A cancel withdraws only receives no message has matched yet: one whose message was
        // already arriving (rendezvous) runs on, and a peer that stalled mid-message would hold
        // it, with whatever its caller holds, until the deadline. The force-close ends it.
        t->abort_forced = true;
        Retire(t,
               now + (OneSidedBeside(in_flight_, *t) ? DeadlineDrainGrace() : absl::ZeroDuration()),
               "an aborted transfer's message was still arriving");
      }
      if (!t->receives_cancelled && !t->deadline_hit &&
          EndpointGone(*t->endpoint, context_->peer_failure_handling())) {
        // Its sends and one-sided ops ended with the endpoint; receives belong to the worker
        // and would wait for the deadline. End them: the transfer answers UNAVAILABLE now,
        // and frees what it holds (a call slot, a reservation) with it.
        CancelReceives(t);
      }
      if (!t->deadline_hit && now >= t->cmd->deadline) {
        // Retire the endpoint and give what is already posted the drain grace to finish:
        // force-closing an endpoint with emulated (TCP) puts in flight makes UCX 1.13 abort the
        // *peer* process (ucp_put_handler cannot ack), so a live peer may drain first. None for
        // shared memory (CutOffIsDue), nor for receives with no one-sided op on the endpoint.
        const bool drain = !OnlyReceives(*t->cmd) || OneSidedBeside(in_flight_, *t);
        Retire(t, now + (drain ? DeadlineDrainGrace() : absl::ZeroDuration()),
               "a transfer deadline passed");
      }
      if (t->deadline_hit && !t->force_closed && now >= t->force_close_at) {
        // Cancel everything on the endpoint so no late write lands in buffers the caller gets
        // back; the transfer is answered once UCX has completed every cancelled request.
        t->force_closed = true;
        CancelReceives(t);
        ForceClose(t->endpoint);
        t->abandon_at = now + kAbandonAfterForceClose;
      }
      ++i;
    }
  }

  // Receives belong to the worker, not the endpoint: closing the endpoint does not end them.
  void CancelReceives(InFlightTransfer* t) {
    t->receives_cancelled = true;
    for (OpSlot& slot : t->slots) {
      if (slot.recv_request != nullptr) ucp_request_cancel(worker_, slot.recv_request);
    }
  }

  void StartGracefulClose(Endpoint* e) {
    ucp_request_param_t param = {};
    param.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
    param.cb.send = &OnCloseFlushDone;
    param.user_data = e;
    ucs_status_ptr_t request = ucp_ep_flush_nbx(e->ep, &param);
    if (UCS_PTR_IS_ERR(request)) {
      ForceClose(e);
      return;
    }
    e->state = EndpointState::kFlushing;
    ++closes_pending_;
    e->flush_pending = request != nullptr;
  }

  // After a graceful flush: rkeys go before the endpoint (UCX's documented order).
  void FinishGracefulClose(Endpoint* e) {
    DestroyRkeys(e);
    StartClose(e, ucp_request_param_t{});
  }

  void StartClose(Endpoint* e, const ucp_request_param_t& param) {
    ucs_status_ptr_t request = ucp_ep_close_nbx(e->ep, &param);
    e->state = EndpointState::kClosing;
    if (!UCS_PTR_IS_PTR(request)) return Closed(e);  // closed at once
    e->close_request = request;
  }

  // Closes `e` without waiting for the peer; its outstanding requests complete with
  // UCS_ERR_CANCELED. No-op unless open or flushing.
  void ForceClose(Endpoint* e) {
    if (e->state != EndpointState::kOpen && e->state != EndpointState::kFlushing) return;
    if (e->state == EndpointState::kOpen) ++closes_pending_;
    e->forced = true;
    ucp_request_param_t param = {};
    param.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
    param.flags = UCP_EP_CLOSE_FLAG_FORCE;
    StartClose(e, param);
  }

  void Closed(Endpoint* e) {
    e->state = EndpointState::kClosed;
    e->ep = nullptr;
    e->close_request = nullptr;
    --closes_pending_;
    // After a force-close UCX has cancelled every operation; in UCX 1.13 unpacked rkeys live
    // in the worker's pool and do not refer to the endpoint, so releasing them now is safe.
    DestroyRkeys(e);
  }

  void ServiceEndpoint(Endpoint* e) {
    if (e->peer_failed && e->state == EndpointState::kOpen) ForceClose(e);
    if (e->state == EndpointState::kFlushing && !e->flush_pending) {
      if (e->flush_result == UCS_OK && !e->peer_failed) {
        FinishGracefulClose(e);
      } else {
        ForceClose(e);
      }
    }
    if (e->state == EndpointState::kClosing && e->close_request != nullptr &&
        ucp_request_check_status(e->close_request) != UCS_INPROGRESS) {
      ucp_request_free(e->close_request);
      Closed(e);
    }
  }

  void ServiceEndpoints() {
    if (endpoint_errors_ || closes_pending_ > 0) {
      endpoint_errors_ = false;
      for (auto& [id, e] : endpoints_) ServiceEndpoint(e.get());
    }
    for (size_t i = 0; i < detached_.size();) {
      Endpoint* e = detached_[i].get();
      ServiceEndpoint(e);
      if (e->state == EndpointState::kClosed && e->active_transfers == 0 && !e->flush_pending) {
        detached_[i] = std::move(detached_.back());
        detached_.pop_back();
        continue;
      }
      ++i;
    }
  }

  const std::shared_ptr<UcpContext> context_;
  const ucp_worker_h worker_;
  const std::string address_;
  const int ucp_efd_;
  const int wake_fd_;
  const int epoll_fd_;

  absl::Mutex mu_;
  std::deque<Command*> queue_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;

  // Progress-thread state: touched only by thread_ (no lock).
  EndpointId next_endpoint_id_ = 1;
  uint64_t next_transfer_seq_ = 0;  // InFlightTransfer::seq
  absl::flat_hash_map<EndpointId, std::unique_ptr<Endpoint>> endpoints_;
  std::vector<std::unique_ptr<Endpoint>> detached_;  // disconnected, closing
  std::vector<std::unique_ptr<InFlightTransfer>> in_flight_;
  // Answered transfers whose requests UCX never completed; freed after ucp_worker_destroy.
  std::vector<std::unique_ptr<InFlightTransfer>> abandoned_;
  int closes_pending_ = 0;  // endpoints in kFlushing or kClosing
  bool endpoint_errors_ = false;
  std::atomic<bool> stalled_{false};  // StallForTest

  std::thread thread_;  // started by Start(), once everything above is initialized
};

}  // namespace

absl::StatusOr<std::unique_ptr<Worker>> CreateUcpWorker(std::shared_ptr<UcpContext> context) {
  absl::StatusOr<worker_state::RawWorker> raw = worker_state::OpenRawWorker(context->get());
  if (!raw.ok()) return raw.status();
  auto worker = std::make_unique<UcpWorker>(std::move(context), *std::move(raw));
  // Without a thread its destructor closes what OpenRawWorker opened.
  if (absl::Status started = worker->Start(); !started.ok()) return started;
  return worker;
}

}  // namespace strata::transport
