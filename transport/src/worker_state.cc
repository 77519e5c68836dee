#include "worker_state.h"

#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "sealed_bytes.h"
#include "ucx_status.h"

namespace strata::transport::worker_state {

absl::Status TransferResult(const InFlightTransfer& t) {
  const Command& cmd = *t.cmd;
  const Endpoint& e = *t.endpoint;
  if (t.abort_forced) {
    return absl::UnavailableError(absl::StrCat(
        "Transfer of ", cmd.ops.size(), " ops on endpoint ", e.id,
        ": aborted by caller with a message still arriving; endpoint retired, reconnect"));
  }
  if (t.aborted) {
    return absl::CancelledError(absl::StrCat("Transfer of ", cmd.ops.size(), " ops on endpoint ",
                                             e.id, ": aborted by caller"));
  }
  if (t.deadline_hit) {
    return absl::DeadlineExceededError(
        absl::StrCat("Transfer of ", cmd.ops.size(), " ops on endpoint ", e.id,
                     ": deadline passed; endpoint retired, reconnect to use the peer"));
  }
  if (t.first_error == UCS_OK) return absl::OkStatus();
  // A cancelled request means its endpoint was force-closed under it (a failure, or another
  // transfer's deadline): the endpoint is what is unavailable.
  const bool endpoint_down = t.first_error == UCS_ERR_CANCELED || !e.failure.ok();
  std::string where =
      t.first_error_index == cmd.ops.size()
          ? absl::StrCat("Transfer on endpoint ", e.id, ": flush")
          : absl::StrCat("Transfer on endpoint ", e.id, ": op ", t.first_error_index, " (",
                         KindName(cmd.ops[t.first_error_index].kind), " of ",
                         cmd.ops[t.first_error_index].length, " bytes)");
  absl::Status s = UcsToStatus(t.first_error, where);
  if (endpoint_down) {
    return absl::UnavailableError(
        absl::StrCat(s.message(), e.failure.ok() ? "" : absl::StrCat("; ", e.failure.message())));
  }
  return s;
}

void Retire(InFlightTransfer* t, absl::Time force_close_at, std::string_view why) {
  t->deadline_hit = true;
  t->force_close_at = force_close_at;
  Endpoint* e = t->endpoint;
  if (e->failure.ok()) {
    e->failure = absl::UnavailableError(absl::StrCat("endpoint ", e->id, " was retired when ",
                                                     absl::string_view(why.data(), why.size()),
                                                     "; reconnect"));
  }
}

bool AnyPastDeadline(std::span<const std::unique_ptr<InFlightTransfer>> in_flight, absl::Time now) {
  for (const auto& t : in_flight) {
    if (!t->deadline_hit && now >= t->cmd->deadline) return true;
  }
  return false;
}

bool OneSidedBeside(std::span<const std::unique_ptr<InFlightTransfer>> in_flight,
                    const InFlightTransfer& t) {
  for (const auto& u : in_flight) {
    if (u.get() == &t || u->endpoint != t.endpoint || u->cmd == nullptr) continue;
    for (const TransferOp& op : u->cmd->ops) {
      if (OneSided(op.kind)) return true;
    }
  }
  return false;
}

bool MustWaitForTurn(std::span<const std::unique_ptr<InFlightTransfer>> in_flight,
                     const InFlightTransfer& t) {
  for (const auto& u : in_flight) {
    if (u.get() == &t || !u->paced || u->endpoint != t.endpoint) continue;
    // Copies, sends and flushes in flight; not receives, which wait on the peer and queue
    // nothing on the endpoint (a call's receive the peer fills late held others up).
    if (u->outstanding > u->outstanding_receives) return true;
    const bool posting = u->next_op < u->cmd->ops.size() && !u->deadline_hit && !u->aborted &&
                         u->first_error == UCS_OK;
    if (posting && u->seq < t.seq) return true;
  }
  return false;
}

void OnEndpointError(void* arg, ucp_ep_h, ucs_status_t status) {
  auto* e = static_cast<Endpoint*>(arg);
  if (e->failure.ok()) {
    e->failure = absl::UnavailableError(
        UcsToStatus(status, absl::StrCat("endpoint ", e->id, " failed (peer gone?)")).message());
  }
  e->peer_failed = true;
  *e->worker_errors = true;
}

absl::StatusOr<std::string> DescribeUcpEndpoint(ucp_ep_h ep) {
  char* buf = nullptr;
  size_t len = 0;
  FILE* stream = open_memstream(&buf, &len);
  if (stream == nullptr) {
    return absl::ResourceExhaustedError("DescribeEndpoint: open_memstream failed");
  }
  ucp_ep_print_info(ep, stream);
  fclose(stream);
  std::string text(buf, len);
  free(buf);
  return text;
}

absl::Status Unusable(const Endpoint& e) {
  if (!e.failure.ok()) return e.failure;
  if (e.state != EndpointState::kOpen) {
    return absl::UnavailableError(absl::StrCat("endpoint ", e.id, " is closed"));
  }
  return absl::OkStatus();
}

void DestroyRkeys(Endpoint* e) {
  for (auto& [bytes, rkey] : e->rkeys) ucp_rkey_destroy(rkey);
  e->rkeys.clear();
}

void DropUnusedRkeys(Endpoint* e, std::span<const std::unique_ptr<InFlightTransfer>> in_flight) {
  if (e->active_transfers == 0) return DestroyRkeys(e);
  absl::flat_hash_set<ucp_rkey_h> in_use;
  for (const auto& t : in_flight) {
    if (t->endpoint != e) continue;
    for (ucp_rkey_h r : t->rkeys) {
      if (r != nullptr) in_use.insert(r);
    }
  }
  for (auto it = e->rkeys.begin(); it != e->rkeys.end();) {
    if (in_use.contains(it->second)) {
      ++it;
    } else {
      ucp_rkey_destroy(it->second);
      e->rkeys.erase(it++);
    }
  }
}

absl::Status ShuttingDown() {
  return absl::UnavailableError("the transport worker is shutting down");
}

namespace {

struct WakeFds {
  int wake_fd;
  int epoll_fd;
};

absl::StatusOr<WakeFds> OpenWakeFds(int ucp_efd) {
  const int wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  const int epoll_fd = wake_fd < 0 ? -1 : epoll_create1(EPOLL_CLOEXEC);
  auto fail = [&](const char* what) {
    const int err = errno;
    if (wake_fd >= 0) close(wake_fd);
    if (epoll_fd >= 0) close(epoll_fd);
    return absl::ResourceExhaustedError(absl::StrCat("CreateWorker: ", what, ": ", strerror(err)));
  };
  if (wake_fd < 0) return fail("eventfd");
  if (epoll_fd < 0) return fail("epoll_create1");
  for (int fd : {ucp_efd, wake_fd}) {
    epoll_event ev = {};
    ev.events = EPOLLIN;
    ev.data.fd = fd;
    if (epoll_ctl(epoll_fd, EPOLL_CTL_ADD, fd, &ev) != 0) return fail("epoll_ctl");
  }
  return WakeFds{wake_fd, epoll_fd};
}

}  // namespace

absl::StatusOr<RawWorker> OpenRawWorker(ucp_context_h context) {
  ucp_worker_params_t params = {};
  params.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
  // Only the progress thread touches the worker (creation and destruction happen-before and
  // after it), so UCX needs no worker lock.
  params.thread_mode = UCS_THREAD_MODE_SINGLE;
  RawWorker raw;
  ucs_status_t status = ucp_worker_create(context, &params, &raw.worker);
  if (status != UCS_OK) return UcsToStatus(status, "CreateWorker: ucp_worker_create");
  auto fail = [&](ucs_status_t status, const char* what) {
    ucp_worker_destroy(raw.worker);
    return UcsToStatus(status, absl::StrCat("CreateWorker: ", what));
  };

  ucp_address_t* address = nullptr;
  size_t address_len = 0;
  status = ucp_worker_get_address(raw.worker, &address, &address_len);
  if (status != UCS_OK) return fail(status, "ucp_worker_get_address");
  raw.address = Seal(kWorkerAddressTag, address, address_len);
  ucp_worker_release_address(raw.worker, address);

  status = ucp_worker_get_efd(raw.worker, &raw.ucp_efd);
  if (status != UCS_OK) return fail(status, "ucp_worker_get_efd");
  absl::StatusOr<WakeFds> fds = OpenWakeFds(raw.ucp_efd);
  if (!fds.ok()) {
    ucp_worker_destroy(raw.worker);
    return fds.status();
  }
  raw.wake_fd = fds->wake_fd;
  raw.epoll_fd = fds->epoll_fd;
  return raw;
}

void WaitForEvents(int epoll_fd, int wake_fd, int timeout_ms) {
  epoll_event events[2];
  const int n = epoll_wait(epoll_fd, events, 2, timeout_ms);
  for (int i = 0; i < n; ++i) {
    if (events[i].data.fd == wake_fd) {
      uint64_t count;
      [[maybe_unused]] ssize_t r = read(wake_fd, &count, sizeof(count));
    }
  }
}

}  // namespace strata::transport::worker_state
