#include "strata/cluster/etcd_client.h"

#include <algorithm>
#include <atomic>
#include <cctype>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "etcd/etcdserver/etcdserverpb/rpc.grpc.pb.h"
#include "etcd/etcdserver/etcdserverpb/rpc.pb.h"
#include "etcd/mvcc/mvccpb/kv.pb.h"
#include "grpcpp/grpcpp.h"
#include "spdlog/spdlog.h"
#include "strata/common/steady_clock.h"
#include "strata/common/threads.h"

namespace strata::cluster {
namespace {

namespace pb = ::etcdserverpb;

// Keepalive retries while etcd is unreachable: from kFirstBackoff, doubling, up to
// min(ttl / 3, kMaxBackoff).
constexpr absl::Duration kFirstBackoff = absl::Milliseconds(100);
constexpr absl::Duration kMaxBackoff = absl::Seconds(1);

// The one place gRPC errors become absl ones; the codes are the same numbers.
absl::Status FromGrpc(const grpc::Status& s, absl::string_view endpoint, absl::string_view op) {
  if (s.ok()) return absl::OkStatus();
  const int code = static_cast<int>(s.error_code());
  const auto absl_code = code >= 0 && code <= static_cast<int>(absl::StatusCode::kUnauthenticated)
                             ? static_cast<absl::StatusCode>(code)
                             : absl::StatusCode::kUnknown;
  return absl::Status(absl_code, absl::StrCat("etcd ", endpoint, " ", op, ": ", s.error_message()));
}

// "host:port" or "[v6]:port" with a port in 1..65535.
absl::Status ValidateEndpoint(absl::string_view endpoint) {
  auto invalid = [&](absl::string_view why) {
    return absl::InvalidArgumentError(
        absl::StrCat("etcd endpoint \"", endpoint, "\": ", why, " (want host:port)"));
  };
  for (char c : endpoint) {
    if (std::isspace(static_cast<unsigned char>(c)) || c == '/' || c == '\0') {
      return invalid("contains a space, '/' or NUL");
    }
  }
  const size_t colon = endpoint.rfind(':');
  if (colon == absl::string_view::npos) return invalid("no port");
  const absl::string_view host = endpoint.substr(0, colon);
  const absl::string_view port = endpoint.substr(colon + 1);
  if (host.empty()) return invalid("no host");
  const bool bracketed = host.front() == '[';
  if (bracketed ? (host.size() < 3 || host.back() != ']')
                : host.find_first_of("[]:") != absl::string_view::npos) {
    return invalid("malformed host");
  }
  uint32_t port_number = 0;
  if (port.empty() || port.size() > 5 ||
      !std::all_of(port.begin(), port.end(),
                   [](char c) { return std::isdigit(static_cast<unsigned char>(c)) != 0; }) ||
      !absl::SimpleAtoi(port, &port_number) || port_number == 0 || port_number > 65535) {
    return invalid("port is not in 1..65535");
  }
  return absl::OkStatus();
}

KeyValue FromProto(const mvccpb::KeyValue& kv) {
  return KeyValue{.key = kv.key(),
                  .value = kv.value(),
                  .create_revision = kv.create_revision(),
                  .mod_revision = kv.mod_revision(),
                  .version = kv.version(),
                  .lease = kv.lease()};
}

void ToProto(const Compare& c, pb::Compare* out) {
  out->set_key(c.key);
  switch (c.op) {
    case Compare::Op::kEqual:
      out->set_result(pb::Compare::EQUAL);
      break;
    case Compare::Op::kGreater:
      out->set_result(pb::Compare::GREATER);
      break;
    case Compare::Op::kLess:
      out->set_result(pb::Compare::LESS);
      break;
    case Compare::Op::kNotEqual:
      out->set_result(pb::Compare::NOT_EQUAL);
      break;
  }
  switch (c.target) {
    case Compare::Target::kValue:
      out->set_target(pb::Compare::VALUE);
      out->set_value(c.value);
      break;
    case Compare::Target::kVersion:
      out->set_target(pb::Compare::VERSION);
      out->set_version(c.number);
      break;
    case Compare::Target::kCreateRevision:
      out->set_target(pb::Compare::CREATE);
      out->set_create_revision(c.number);
      break;
    case Compare::Target::kModRevision:
      out->set_target(pb::Compare::MOD);
      out->set_mod_revision(c.number);
      break;
    case Compare::Target::kLease:
      out->set_target(pb::Compare::LEASE);
      out->set_lease(c.number);
      break;
  }
}

void ToProto(const TxnOp& op, pb::RequestOp* out) {
  switch (op.kind) {
    case TxnOp::Kind::kPut: {
      pb::PutRequest* put = out->mutable_request_put();
      put->set_key(op.key);
      put->set_value(op.value);
      put->set_lease(op.lease);
      break;
    }
    case TxnOp::Kind::kDelete:
      out->mutable_request_delete_range()->set_key(op.key);
      break;
  }
}

// One etcd endpoint: its channel and stubs. Shared with watch streams, which may outlive the
// client. Stubs are thread-safe.
struct Endpoint {
  std::string address;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<pb::KV::Stub> kv;
  std::unique_ptr<pb::Lease::Stub> lease;
  std::unique_ptr<pb::Watch::Stub> watch;
};

std::shared_ptr<Endpoint> Connect(const std::string& address) {
  grpc::ChannelArguments args;
  // Reconnect within a second of etcd coming back, however long it was away.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  // Notice a silently dead peer under a long-lived watch. etcd lets clients with an open
  // stream ping every 5 s (--grpc-keepalive-min-time) and rejects pings without one.
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 10000);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 5000);
  args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 0);
  args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  // A prefix listing may exceed gRPC's 4 MiB default; etcd bounds what it sends.
  args.SetMaxReceiveMessageSize(-1);
  auto e = std::make_shared<Endpoint>();
  e->address = address;
  e->channel = grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args);
  e->kv = pb::KV::NewStub(e->channel);
  e->lease = pb::Lease::NewStub(e->channel);
  e->watch = pb::Watch::NewStub(e->channel);
  return e;
}

// One watch stream and the thread that reads it. Shared by the Watch handle, the client's list
// of watches (weakly) and the thread itself, so that a callback may destroy its own Watch.
// Stop() joins or detaches the thread before the last reference goes away.
class WatchStream : public std::enable_shared_from_this<WatchStream> {
 public:
  WatchStream(std::shared_ptr<Endpoint> endpoint, std::string prefix, int64_t start_revision,
              std::function<void(std::span<const WatchEvent>)> on_events,
              std::function<void(absl::Status)> on_error)
      : endpoint_(std::move(endpoint)),
        prefix_(std::move(prefix)),
        start_revision_(start_revision),
        on_events_(std::move(on_events)),
        on_error_(std::move(on_error)) {}

  // Starts the reader thread and waits until etcd created the watch, or until `deadline`.
  absl::Status Start(absl::Time deadline) {
    {
      absl::MutexLock lock(&mu_);
      absl::StatusOr<std::thread> thread =
          StartThread("an etcd watch", [self = shared_from_this()] { self->Run(); });
      if (!thread.ok()) {
        stopping_ = true;
        done_ = true;  // Stop() has no thread to wait for
        return thread.status();
      }
      thread_ = *std::move(thread);
      const auto settled = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return state_ != State::kStarting;
      };
      mu_.AwaitWithDeadline(absl::Condition(&settled), deadline);
      if (state_ == State::kRunning) return absl::OkStatus();
    }
    absl::Status error;
    {
      absl::MutexLock lock(&mu_);
      error = state_ == State::kFailed
                  ? start_error_
                  : absl::DeadlineExceededError(absl::StrCat("etcd ", endpoint_->address, " Watch ",
                                                             prefix_, ": not created in time"));
    }
    Stop();
    return error;
  }

  // Cancels the stream; waits until the thread has finished unless called from it.
  void Stop() {
    std::thread thread;
    {
      absl::MutexLock lock(&mu_);
      stopping_ = true;
      context_.TryCancel();
      if (std::this_thread::get_id() == run_thread_id_) {
        // From a callback: the thread finishes once the callback returns, and owns `this`.
        if (thread_.joinable()) thread_.detach();
        return;
      }
      thread = std::move(thread_);
    }
    if (thread.joinable()) thread.join();
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(&done_));  // another thread may be joining it
  }

 private:
  enum class State { kStarting, kRunning, kFailed };

  void Run() {
    {
      absl::MutexLock lock(&mu_);
      run_thread_id_ = std::this_thread::get_id();
    }
    absl::Status error = Stream();
    std::function<void(absl::Status)> on_error;
    {
      absl::MutexLock lock(&mu_);
      if (state_ == State::kStarting) {
        state_ = State::kFailed;
        start_error_ = error;
      } else if (!stopping_) {
        on_error = std::move(on_error_);
      }
    }
    if (on_error) {
      spdlog::warn("{}", error.ToString());
      on_error(error);
    }
    absl::MutexLock lock(&mu_);
    done_ = true;
  }

  // Runs the stream until it fails or is cancelled; returns why it ended.
  absl::Status Stream() {
    const std::string op = absl::StrCat("Watch ", prefix_);
    // etcd ends the stream when its member loses the leader (else a member cut off from the
    // quorum keeps it open and silent: no events, no error).
    context_.AddMetadata("hasleader", "true");
    std::unique_ptr<grpc::ClientReaderWriter<pb::WatchRequest, pb::WatchResponse>> stream =
        endpoint_->watch->Watch(&context_);
    pb::WatchRequest request;
    pb::WatchCreateRequest* create = request.mutable_create_request();
    create->set_key(prefix_.empty() ? std::string(1, '\0') : prefix_);
    create->set_range_end(PrefixRangeEnd(prefix_));
    create->set_start_revision(start_revision_);
    pb::WatchResponse response;
    absl::Status error;
    bool created = false;
    if (stream->Write(request)) {
      while (stream->Read(&response)) {
        if (response.canceled()) {
          error = response.compact_revision() > 0
                      ? absl::OutOfRangeError(absl::StrCat(
                            "etcd ", endpoint_->address, " ", op, ": revision ", start_revision_,
                            " is compacted (oldest kept ", response.compact_revision(), ")"))
                      : absl::AbortedError(
                            absl::StrCat("etcd ", endpoint_->address, " ", op,
                                         ": cancelled by etcd: ", response.cancel_reason()));
          break;
        }
        if (!created) {
          if (!response.created()) continue;
          created = true;
          absl::MutexLock lock(&mu_);
          state_ = State::kRunning;
        }
        if (response.events_size() == 0) continue;  // creation or progress notice
        std::vector<WatchEvent> events;
        events.reserve(response.events_size());
        for (const mvccpb::Event& e : response.events()) {
          events.push_back(WatchEvent{.type = e.type() == mvccpb::Event::DELETE
                                                  ? WatchEvent::Type::kDelete
                                                  : WatchEvent::Type::kPut,
                                      .kv = FromProto(e.kv())});
        }
        {
          absl::MutexLock lock(&mu_);
          if (stopping_) break;
        }
        on_events_(events);
      }
    }
    // After a break the stream is still open; Finish() would wait for etcd to end it.
    context_.TryCancel();
    grpc::Status status = stream->Finish();
    if (!error.ok()) return error;
    if (status.ok()) {
      return absl::UnavailableError(
          absl::StrCat("etcd ", endpoint_->address, " ", op, ": stream ended by etcd"));
    }
    if (status.error_code() == grpc::StatusCode::CANCELLED) {
      // Not by us (Stop() suppresses the callback): etcd ended the stream, as it does when
      // shutting down. To the caller that is etcd going away.
      return absl::UnavailableError(
          absl::StrCat("etcd ", endpoint_->address, " ", op,
                       ": stream cancelled by etcd: ", status.error_message()));
    }
    return FromGrpc(status, endpoint_->address, op);
  }

  const std::shared_ptr<Endpoint> endpoint_;
  const std::string prefix_;
  const int64_t start_revision_;
  const std::function<void(std::span<const WatchEvent>)> on_events_;
  grpc::ClientContext context_;  // TryCancel() is thread-safe

  absl::Mutex mu_;
  std::function<void(absl::Status)> on_error_ ABSL_GUARDED_BY(mu_);
  State state_ ABSL_GUARDED_BY(mu_) = State::kStarting;
  absl::Status start_error_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool done_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_ ABSL_GUARDED_BY(mu_);
  std::thread::id run_thread_id_ ABSL_GUARDED_BY(mu_);
};

class WatchHandle : public EtcdClient::Watch {
 public:
  explicit WatchHandle(std::shared_ptr<WatchStream> stream) : stream_(std::move(stream)) {}
  ~WatchHandle() override { stream_->Stop(); }

 private:
  std::shared_ptr<WatchStream> stream_;
};

class EtcdClientImpl : public EtcdClient {
 public:
  EtcdClientImpl(EtcdOptions options, std::vector<std::shared_ptr<Endpoint>> endpoints)
      : options_(std::move(options)), endpoints_(std::move(endpoints)) {}

  absl::Status Start() {
    absl::StatusOr<std::thread> thread =
        StartThread("the etcd connectivity watch", [this] { ConnectivityLoop(); });
    if (!thread.ok()) return thread.status();
    connectivity_thread_ = *std::move(thread);
    return absl::OkStatus();
  }

  ~EtcdClientImpl() override {
    {
      absl::MutexLock lock(&connectivity_mu_);
      connectivity_stopping_ = true;
    }
    connectivity_cq_.Shutdown();  // no watch is armed after connectivity_stopping_
    if (connectivity_thread_.joinable()) {
      connectivity_thread_.join();
    } else {  // never started: nothing was armed, the queue only says it shut down
      void* tag = nullptr;
      bool ok = false;
      while (connectivity_cq_.Next(&tag, &ok)) {
      }
    }
    std::vector<std::shared_ptr<WatchStream>> watches;
    {
      absl::MutexLock lock(&watches_mu_);
      for (const std::weak_ptr<WatchStream>& w : watches_) {
        if (std::shared_ptr<WatchStream> s = w.lock()) watches.push_back(std::move(s));
      }
      watches_.clear();
    }
    for (const std::shared_ptr<WatchStream>& s : watches) s->Stop();
    {
      absl::MutexLock lock(&keepalive_mu_);
      keepalive_stopping_ = true;
      keepalive_wake_ = true;
      if (keepalive_context_ != nullptr) keepalive_context_->TryCancel();
    }
    if (keepalive_thread_.joinable()) keepalive_thread_.join();
  }

  absl::StatusOr<int64_t> Put(std::string_view key, std::string_view value,
                              int64_t lease) override {
    pb::PutRequest request;
    request.set_key(std::string(key));
    request.set_value(std::string(value));
    request.set_lease(lease);
    pb::PutResponse response;
    absl::Status s = Unary("Put", /*is_write=*/true, [&](Endpoint& e, grpc::ClientContext* ctx) {
      return e.kv->Put(ctx, request, &response);
    });
    if (!s.ok()) return s;
    return response.header().revision();
  }

  absl::StatusOr<std::optional<KeyValue>> Get(std::string_view key) override {
    pb::RangeRequest request;
    request.set_key(std::string(key));
    pb::RangeResponse response;
    absl::Status s = Unary("Get", /*is_write=*/false, [&](Endpoint& e, grpc::ClientContext* ctx) {
      return e.kv->Range(ctx, request, &response);
    });
    if (!s.ok()) return s;
    if (response.kvs_size() == 0) return std::nullopt;
    return FromProto(response.kvs(0));
  }

  using EtcdClient::GetPrefix;
  absl::StatusOr<RangeResult> GetPrefix(std::string_view prefix, absl::Time deadline) override {
    pb::RangeRequest request;
    request.set_key(prefix.empty() ? std::string(1, '\0') : std::string(prefix));
    request.set_range_end(PrefixRangeEnd(prefix));
    pb::RangeResponse response;
    absl::Status s = Unary(
        "GetPrefix", /*is_write=*/false,
        [&](Endpoint& e, grpc::ClientContext* ctx) { return e.kv->Range(ctx, request, &response); },
        deadline);
    if (!s.ok()) return s;
    RangeResult result;
    result.revision = response.header().revision();
    result.kvs.reserve(response.kvs_size());
    for (const mvccpb::KeyValue& kv : response.kvs()) result.kvs.push_back(FromProto(kv));
    return result;
  }

  absl::StatusOr<int64_t> Delete(std::string_view key) override {
    pb::DeleteRangeRequest request;
    request.set_key(std::string(key));
    pb::DeleteRangeResponse response;
    absl::Status s = Unary("Delete", /*is_write=*/true, [&](Endpoint& e, grpc::ClientContext* ctx) {
      return e.kv->DeleteRange(ctx, request, &response);
    });
    if (!s.ok()) return s;
    return response.deleted();
  }

  absl::StatusOr<bool> Txn(std::span<const Compare> compares, std::span<const TxnOp> on_success,
                           std::span<const TxnOp> on_failure) override {
    pb::TxnRequest request;
    for (const Compare& c : compares) ToProto(c, request.add_compare());
    for (const TxnOp& op : on_success) ToProto(op, request.add_success());
    for (const TxnOp& op : on_failure) ToProto(op, request.add_failure());
    pb::TxnResponse response;
    absl::Status s = Unary("Txn", /*is_write=*/true, [&](Endpoint& e, grpc::ClientContext* ctx) {
      return e.kv->Txn(ctx, request, &response);
    });
    if (!s.ok()) return s;
    return response.succeeded();
  }

  absl::StatusOr<int64_t> GrantLease(absl::Duration ttl) override {
    pb::LeaseGrantRequest request;
    request.set_ttl(std::max<int64_t>(1, absl::ToInt64Seconds(absl::Ceil(ttl, absl::Seconds(1)))));
    pb::LeaseGrantResponse response;
    // A grant that was applied but not acknowledged leaves a lease that expires on its own, so
    // trying the next endpoint is safe.
    absl::Status s =
        Unary("LeaseGrant", /*is_write=*/false, [&](Endpoint& e, grpc::ClientContext* ctx) {
          return e.lease->LeaseGrant(ctx, request, &response);
        });
    if (!s.ok()) return s;
    if (!response.error().empty()) {
      return absl::UnknownError(absl::StrCat("etcd LeaseGrant: ", response.error()));
    }
    return response.id();
  }

  absl::Status RevokeLease(int64_t lease) override {
    pb::LeaseRevokeRequest request;
    request.set_id(lease);
    pb::LeaseRevokeResponse response;
    return Unary(absl::StrCat("LeaseRevoke ", lease), /*is_write=*/true,
                 [&](Endpoint& e, grpc::ClientContext* ctx) {
                   return e.lease->LeaseRevoke(ctx, request, &response);
                 });
  }

  absl::Status KeepAlive(int64_t lease, absl::Duration ttl,
                         std::function<void(absl::Status)> on_lost) override {
    if (lease <= 0) return absl::InvalidArgumentError(absl::StrCat("KeepAlive: lease ", lease));
    if (ttl < absl::Seconds(1)) {
      return absl::InvalidArgumentError(
          absl::StrCat("KeepAlive: ttl ", absl::FormatDuration(ttl), " is under 1s"));
    }
    absl::MutexLock lock(&keepalive_mu_);
    if (keepalive_stopping_) return absl::FailedPreconditionError("KeepAlive: client closing");
    auto [it, inserted] = kept_.try_emplace(lease);
    if (!inserted) {
      return absl::AlreadyExistsError(absl::StrCat("KeepAlive: lease ", lease, " already kept"));
    }
    it->second = KeptLease{.ttl = ttl,
                           .on_lost = std::move(on_lost),
                           .next_refresh = SteadyNow() + ttl / 3,
                           .backoff = kFirstBackoff};
    keepalive_wake_ = true;
    if (keepalive_thread_.joinable()) return absl::OkStatus();
    absl::StatusOr<std::thread> thread =
        StartThread("the etcd lease keepalive", [this] { KeepAliveLoop(); });
    if (!thread.ok()) {
      kept_.erase(lease);
      return thread.status();
    }
    keepalive_thread_ = *std::move(thread);
    return absl::OkStatus();
  }

  void StopKeepAlive(int64_t lease) override {
    absl::MutexLock lock(&keepalive_mu_);
    kept_.erase(lease);
    keepalive_wake_ = true;
    if (std::this_thread::get_id() == keepalive_thread_.get_id()) return;
    // on_lost of this lease may be running now; it must be over when we return.
    const auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(keepalive_mu_) {
      return !keepalive_dispatching_;
    };
    keepalive_mu_.Await(absl::Condition(&idle));
  }

  absl::StatusOr<std::unique_ptr<Watch>> WatchPrefix(
      std::string_view prefix, int64_t start_revision,
      std::function<void(std::span<const WatchEvent>)> on_events,
      std::function<void(absl::Status)> on_error) override {
    if (start_revision < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("WatchPrefix: start revision ", start_revision));
    }
    const absl::Time deadline = absl::Now() + options_.request_timeout;
    const size_t first = current_.load();
    absl::Status error;
    for (size_t i = 0; i < endpoints_.size(); ++i) {
      const size_t index = (first + i) % endpoints_.size();
      auto stream = std::make_shared<WatchStream>(endpoints_[index], std::string(prefix),
                                                  start_revision, on_events, on_error);
      error = stream->Start(deadline);
      if (error.ok()) {
        current_.store(index);
        absl::MutexLock lock(&watches_mu_);
        std::erase_if(watches_, [](const std::weak_ptr<WatchStream>& w) { return w.expired(); });
        watches_.push_back(stream);
        return std::make_unique<WatchHandle>(std::move(stream));
      }
      if (error.code() != absl::StatusCode::kUnavailable || absl::Now() >= deadline) break;
    }
    return error;
  }

 private:
  struct KeptLease {
    absl::Duration ttl;
    std::function<void(absl::Status)> on_lost;
    absl::Duration next_refresh;  // on SteadyNow()'s clock
    absl::Duration backoff;       // wait before the next try while refreshes fail
  };

  // Runs `call` against the sticky endpoint, then the others while they are UNAVAILABLE (a
  // write: only while they had no connection when the call began, so it was never sent), all
  // within one request_timeout, or by `until` if that comes first.
  template <typename Call>
  absl::Status Unary(absl::string_view op, bool is_write, Call call,
                     absl::Time until = absl::InfiniteFuture()) {
    const absl::Time deadline = std::min(absl::Now() + options_.request_timeout, until);
    const size_t first = current_.load();
    absl::Status error;
    for (size_t i = 0; i < endpoints_.size(); ++i) {
      const size_t index = (first + i) % endpoints_.size();
      Endpoint& e = *endpoints_[index];
      const bool was_connected =
          e.channel->GetState(/*try_to_connect=*/false) == GRPC_CHANNEL_READY;
      grpc::ClientContext ctx;
      ctx.set_deadline(absl::ToChronoTime(deadline));
      const grpc::Status s = call(e, &ctx);
      if (s.ok()) {
        current_.store(index);
        return absl::OkStatus();
      }
      error = FromGrpc(s, e.address, op);
      if (s.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED && endpoints_.size() > 1) {
        // Connected but silent (wedged, or cut off from its leader): the next call starts at
        // the next endpoint, unless another call moved on already.
        size_t sticky = index;
        current_.compare_exchange_strong(sticky, (index + 1) % endpoints_.size());
      }
      if (s.error_code() != grpc::StatusCode::UNAVAILABLE || (is_write && was_connected) ||
          absl::Now() >= deadline) {
        break;
      }
    }
    return error;
  }

  // The keepalive thread: refreshes every lease that is due over one LeaseKeepAlive stream
  // per round (with a deadline, so a hung etcd cannot stall it), then sleeps until the next.
  void KeepAliveLoop() {
    bool failing = false;
    while (true) {
      std::vector<int64_t> due;
      auto context = std::make_shared<grpc::ClientContext>();
      {
        absl::MutexLock lock(&keepalive_mu_);
        while (!keepalive_stopping_) {
          absl::Duration next = absl::InfiniteDuration();
          for (const auto& [id, kept] : kept_) next = std::min(next, kept.next_refresh);
          const absl::Duration wait = next - SteadyNow();
          if (wait <= absl::ZeroDuration()) break;
          keepalive_wake_ = false;
          keepalive_mu_.AwaitWithTimeout(absl::Condition(&keepalive_wake_), wait);
        }
        if (keepalive_stopping_) return;
        const absl::Duration now = SteadyNow();
        for (const auto& [id, kept] : kept_) {
          if (kept.next_refresh <= now) due.push_back(id);
        }
        context->set_deadline(absl::ToChronoTime(absl::Now() + options_.request_timeout));
        keepalive_context_ = context;
      }

      const size_t index = current_.load();
      Endpoint& e = *endpoints_[index];
      absl::flat_hash_map<int64_t, int64_t> ttls;  // lease -> remaining TTL in seconds
      std::unique_ptr<
          grpc::ClientReaderWriter<pb::LeaseKeepAliveRequest, pb::LeaseKeepAliveResponse>>
          stream = e.lease->LeaseKeepAlive(context.get());
      bool sent = true;
      for (int64_t id : due) {
        pb::LeaseKeepAliveRequest request;
        request.set_id(id);
        if (!stream->Write(request)) {
          sent = false;
          break;
        }
      }
      if (sent) sent = stream->WritesDone();
      pb::LeaseKeepAliveResponse response;
      while (stream->Read(&response)) ttls[response.id()] = response.ttl();
      absl::Status status = FromGrpc(stream->Finish(), e.address, "LeaseKeepAlive");
      if (status.ok() && (!sent || ttls.size() < due.size())) {
        status = absl::UnavailableError(
            absl::StrCat("etcd ", e.address, " LeaseKeepAlive: stream ended early"));
      }

      std::vector<std::pair<int64_t, std::function<void(absl::Status)>>> lost;
      {
        absl::MutexLock lock(&keepalive_mu_);
        keepalive_context_ = nullptr;
        const absl::Duration now = SteadyNow();
        for (int64_t id : due) {
          auto it = kept_.find(id);
          if (it == kept_.end()) continue;  // stopped meanwhile
          KeptLease& kept = it->second;
          auto ttl = ttls.find(id);
          if (ttl != ttls.end() && ttl->second <= 0) {
            lost.emplace_back(id, std::move(kept.on_lost));
            kept_.erase(it);
          } else if (ttl != ttls.end()) {
            kept.next_refresh = now + kept.ttl / 3;
            kept.backoff = kFirstBackoff;
          } else {
            kept.next_refresh = now + kept.backoff;
            kept.backoff = std::min({kept.backoff * 2, kept.ttl / 3, kMaxBackoff});
          }
        }
        keepalive_dispatching_ = !lost.empty();
      }
      if (!status.ok()) {
        if (!failing) spdlog::warn("{}; retrying", status.ToString());
        failing = true;
        // Gone, or connected but silent (wedged, cut off from its leader): the next round goes
        // to another endpoint, as a one-off call's would. Staying, every lease would lapse
        // while the rest of the cluster is healthy.
        if (status.code() == absl::StatusCode::kUnavailable ||
            (status.code() == absl::StatusCode::kDeadlineExceeded && endpoints_.size() > 1)) {
          MoveOffEndpoint(index);
        }
      } else if (failing) {
        spdlog::info("etcd {} LeaseKeepAlive: refreshing again", e.address);
        failing = false;
      }
      for (auto& [id, on_lost] : lost) {
        if (on_lost) {
          on_lost(absl::NotFoundError(
              absl::StrCat("etcd ", e.address, " LeaseKeepAlive: lease ", id, " expired")));
        }
      }
      if (!lost.empty()) {
        absl::MutexLock lock(&keepalive_mu_);
        keepalive_dispatching_ = false;
      }
    }
  }

  // gRPC's synchronous API advances a connection only while some thread polls it (a call in
  // flight, a completion queue). Calls that fail fast while a channel is in TRANSIENT_FAILURE
  // barely poll, so a restarted etcd would stay unused until gRPC's backup poller comes round
  // (seconds). This thread keeps a connectivity watch on every channel, polling them all.
  void ConnectivityLoop() {
    for (size_t i = 0; i < endpoints_.size(); ++i) WatchConnectivity(i);
    void* tag = nullptr;
    bool ok = false;
    while (connectivity_cq_.Next(&tag, &ok)) WatchConnectivity(reinterpret_cast<uintptr_t>(tag));
  }

  void WatchConnectivity(size_t index) {
    absl::MutexLock lock(&connectivity_mu_);
    if (connectivity_stopping_) return;
    grpc::Channel& channel = *endpoints_[index]->channel;
    // A short deadline bounds how long the destructor waits for the last watch to fire.
    channel.NotifyOnStateChange(channel.GetState(/*try_to_connect=*/false),
                                absl::ToChronoTime(absl::Now() + absl::Milliseconds(200)),
                                &connectivity_cq_, reinterpret_cast<void*>(index));
  }

  // After `index` failed, the next call starts at the following endpoint (unless another call
  // already moved on).
  void MoveOffEndpoint(size_t index) {
    size_t expected = index;
    current_.compare_exchange_strong(expected, (index + 1) % endpoints_.size());
  }

  const EtcdOptions options_;
  const std::vector<std::shared_ptr<Endpoint>> endpoints_;
  std::atomic<size_t> current_{0};  // the sticky endpoint

  grpc::CompletionQueue connectivity_cq_;
  absl::Mutex connectivity_mu_;
  bool connectivity_stopping_ ABSL_GUARDED_BY(connectivity_mu_) = false;
  std::thread connectivity_thread_;

  absl::Mutex watches_mu_;
  std::vector<std::weak_ptr<WatchStream>> watches_ ABSL_GUARDED_BY(watches_mu_);

  absl::Mutex keepalive_mu_;
  absl::flat_hash_map<int64_t, KeptLease> kept_ ABSL_GUARDED_BY(keepalive_mu_);
  bool keepalive_wake_ ABSL_GUARDED_BY(keepalive_mu_) = false;  // kept_ changed, or stopping
  bool keepalive_stopping_ ABSL_GUARDED_BY(keepalive_mu_) = false;
  bool keepalive_dispatching_ ABSL_GUARDED_BY(keepalive_mu_) = false;  // on_lost running
  std::shared_ptr<grpc::ClientContext> keepalive_context_ ABSL_GUARDED_BY(keepalive_mu_);
  std::thread keepalive_thread_;  // started under keepalive_mu_, joined by the destructor
};

}  // namespace

std::string PrefixRangeEnd(std::string_view prefix) {
  std::string end(prefix);
  for (size_t i = end.size(); i > 0; --i) {
    if (static_cast<unsigned char>(end[i - 1]) < 0xff) {
      end[i - 1] = static_cast<char>(static_cast<unsigned char>(end[i - 1]) + 1);
      end.resize(i);
      return end;
    }
  }
  return std::string(1, '\0');
}

absl::StatusOr<std::unique_ptr<EtcdClient>> EtcdClient::Create(const EtcdOptions& options) {
  if (options.endpoints.empty()) {
    return absl::InvalidArgumentError("etcd client: no endpoints");
  }
  if (options.request_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(absl::StrCat("etcd client: request_timeout ",
                                                   absl::FormatDuration(options.request_timeout)));
  }
  std::vector<std::shared_ptr<Endpoint>> endpoints;
  for (const std::string& address : options.endpoints) {
    if (absl::Status s = ValidateEndpoint(address); !s.ok()) return s;
    endpoints.push_back(Connect(address));
  }
  auto client = std::make_unique<EtcdClientImpl>(options, std::move(endpoints));
  if (absl::Status started = client->Start(); !started.ok()) return started;
  return client;
}

}  // namespace strata::cluster
