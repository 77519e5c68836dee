#include "strata/transport/context.h"

#include <stdio.h>
#include <stdlib.h>
#include <ucp/api/ucp.h>
#include <unistd.h>

#include <atomic>
#include <optional>
#include <thread>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "sealed_bytes.h"
#include "strata/common/threads.h"
#include "strata/transport/worker.h"
#include "ucp_context.h"
#include "ucx_status.h"

namespace strata::transport {
namespace {

class UcpMemoryRegion final : public MemoryRegion {
 public:
  UcpMemoryRegion(std::shared_ptr<UcpContext> context, ucp_mem_h memh, void* base, size_t size,
                  std::string packed_rkey)
      : context_(std::move(context)),
        memh_(memh),
        base_(base),
        size_(size),
        packed_rkey_(std::move(packed_rkey)) {}
  ~UcpMemoryRegion() override { ucp_mem_unmap(context_->get(), memh_); }

  void* base() const override { return base_; }
  size_t size() const override { return size_; }
  const std::string& PackedRkey() const override { return packed_rkey_; }

 private:
  const std::shared_ptr<UcpContext> context_;
  const ucp_mem_h memh_;
  void* const base_;
  const size_t size_;
  const std::string packed_rkey_;
};

// UCX's memory-unit syntax (ucs_str_to_memunits): a number, optionally followed by b, k, m or g
// (binary multiples, case-insensitive, an optional trailing b).
absl::StatusOr<uint64_t> ParseUcxBytes(absl::string_view name, absl::string_view text) {
  absl::string_view t = absl::StripAsciiWhitespace(text);
  size_t digits = 0;
  while (digits < t.size() && absl::ascii_isdigit(static_cast<unsigned char>(t[digits]))) ++digits;
  uint64_t value = 0;
  std::string unit = absl::AsciiStrToLower(t.substr(digits));
  uint64_t factor = 0;
  if (unit.empty() || unit == "b") factor = 1;
  if (unit == "k" || unit == "kb") factor = 1 << 10;
  if (unit == "m" || unit == "mb") factor = 1 << 20;
  if (unit == "g" || unit == "gb") factor = 1 << 30;
  if (digits == 0 || factor == 0 || !absl::SimpleAtoi(t.substr(0, digits), &value) ||
      value > (uint64_t{1} << 40) / factor) {
    return absl::InvalidArgumentError(
        absl::StrCat("UCX setting ", name, "=\"", text, "\": not a size (e.g. 8K, 256K, 1M)"));
  }
  return value * factor;
}

// Empty progress polls before a busy worker sleeps (UcpContext::busy_polls_before_sleep).
// Without TCP (shared memory, RDMA) a sleep costs UCX's arming — a read of each transport's
// event fd — and a wake-up, each a system call, for an event that is often microseconds away
// (a profile of a node serving one 256 KiB shm stream: a quarter of its CPU in those reads).
// Over TCP the sockets' wake-ups drive progress, and spinning there only took CPU from the
// other streams on two cores. Figures: transfer-protocol.md, "Polling before sleeping".
constexpr int kBusyPollsWithoutTcp = 256;
constexpr int kBusyPollsOverTcp = 8;

bool MayUseTcp(std::string_view tls) {
  if (tls.empty() || tls[0] == '^') return true;  // UCX's default, or all but some
  for (absl::string_view name : absl::StrSplit(absl::string_view(tls.data(), tls.size()), ',')) {
    if (name == "tcp" || name == "all") return true;
  }
  return false;
}

class UcpTransportContext final : public Context {
 public:
  UcpTransportContext(std::shared_ptr<UcpContext> context, TcpSegments tcp)
      : context_(std::move(context)), tcp_(tcp) {}

  absl::StatusOr<std::unique_ptr<MemoryRegion>> Register(void* ptr, size_t len) override {
    if (ptr == nullptr || len == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("Register: need a non-null buffer and length, got ", len, " bytes at ",
                       absl::Hex(reinterpret_cast<uintptr_t>(ptr))));
    }
    ucp_mem_map_params_t params = {};
    params.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH;
    params.address = ptr;
    params.length = len;
    return Map(params, len, "Register");
  }

  absl::StatusOr<std::unique_ptr<MemoryRegion>> Allocate(size_t len) override {
    if (len == 0) return absl::InvalidArgumentError("Allocate: length 0");
    ucp_mem_map_params_t params = {};
    params.field_mask = UCP_MEM_MAP_PARAM_FIELD_LENGTH | UCP_MEM_MAP_PARAM_FIELD_FLAGS;
    params.length = len;
    params.flags = UCP_MEM_MAP_ALLOCATE;
    return Map(params, len, "Allocate");
  }

  absl::StatusOr<std::unique_ptr<Worker>> CreateWorker() override {
    return CreateUcpWorker(context_);
  }

  std::string Describe() const override {
    char* buf = nullptr;
    size_t len = 0;
    FILE* stream = open_memstream(&buf, &len);
    if (stream == nullptr) return "(ucp_context_print_info: open_memstream failed)";
    ucp_context_print_info(context_->get(), stream);
    fclose(stream);
    std::string out(buf, len);
    free(buf);
    return out;
  }

  TcpSegments tcp_segments() const override { return tcp_; }

 private:
  absl::StatusOr<std::unique_ptr<MemoryRegion>> Map(const ucp_mem_map_params_t& params, size_t len,
                                                    absl::string_view what) {
    ucp_mem_h memh = nullptr;
    ucs_status_t status = ucp_mem_map(context_->get(), &params, &memh);
    if (status != UCS_OK) {
      return UcsToStatus(status, absl::StrCat(what, ": ucp_mem_map of ", len, " bytes"));
    }
    ucp_mem_attr_t attr = {};
    attr.field_mask = UCP_MEM_ATTR_FIELD_ADDRESS | UCP_MEM_ATTR_FIELD_LENGTH;
    status = ucp_mem_query(memh, &attr);
    if (status != UCS_OK) {
      ucp_mem_unmap(context_->get(), memh);
      return UcsToStatus(status, absl::StrCat(what, ": ucp_mem_query"));
    }
    void* rkey_buf = nullptr;
    size_t rkey_len = 0;
    status = ucp_rkey_pack(context_->get(), memh, &rkey_buf, &rkey_len);
    if (status != UCS_OK) {
      ucp_mem_unmap(context_->get(), memh);
      return UcsToStatus(status, absl::StrCat(what, ": ucp_rkey_pack"));
    }
    std::string sealed = Seal(kRkeyTag, rkey_buf, rkey_len);
    ucp_rkey_buffer_release(rkey_buf);
    // A registered buffer is the caller's own range: UCX reports its start aligned down to a
    // page, which paired with `len` would leave the range's tail out.
    void* base = params.address != nullptr ? params.address : attr.address;
    return std::make_unique<UcpMemoryRegion>(context_, memh, base, len, std::move(sealed));
  }

  const std::shared_ptr<UcpContext> context_;
  const TcpSegments tcp_;
};

}  // namespace

std::string EffectiveTls(const TransportOptions& options) {
  std::string tls;
  if (const char* env = getenv("UCX_TLS"); env != nullptr) tls = env;
  if (!options.tls.empty()) tls = options.tls;
  for (const auto& [key, value] : options.ucx_settings) {
    absl::string_view name = key;
    if (absl::StartsWith(name, "UCX_")) name.remove_prefix(4);
    if (name == "TLS") tls = value;
  }
  return tls;
}

absl::Status CheckTcpSegments(TcpSegments local, TcpSegments peer, std::string_view tls) {
  if (!MayUseTcp(tls)) return absl::OkStatus();
  if (peer.tx == 0) peer.tx = kUcxDefaultTcpSegments.tx;
  if (peer.rx == 0) peer.rx = kUcxDefaultTcpSegments.rx;
  auto refuse = [](absl::string_view sender, uint64_t tx, absl::string_view receiver, uint64_t rx) {
    return absl::FailedPreconditionError(absl::StrCat(
        "UCX tcp segments: ", sender, " sends up to ", tx, " bytes (UCX_TCP_TX_SEG_SIZE) but ",
        receiver, " receives at most ", rx,
        " (UCX_TCP_RX_SEG_SIZE), which would abort it; set the same sizes on both sides"));
  };
  if (local.tx > peer.rx) return refuse("this side", local.tx, "the peer", peer.rx);
  if (peer.tx > local.rx) return refuse("the peer", peer.tx, "this side", local.rx);
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Context>> Context::Create(const TransportOptions& options) {
  ucp_config_t* config = nullptr;
  ucs_status_t status = ucp_config_read(nullptr, nullptr, &config);
  if (status != UCS_OK) return UcsToStatus(status, "ucp_config_read");

  auto modify = [config](absl::string_view name, const std::string& value) -> absl::Status {
    if (absl::StartsWith(name, "UCX_")) name.remove_prefix(4);
    const std::string key(name);
    ucs_status_t s = ucp_config_modify(config, key.c_str(), value.c_str());
    if (s != UCS_OK) {
      // ucp_config_modify answers NO_ELEM for unknown names and INVALID_PARAM for bad values;
      // both are the caller's input.
      return absl::InvalidArgumentError(
          absl::StrCat("UCX setting ", key, "=\"", value, "\" rejected: ", ucs_status_string(s)));
    }
    return absl::OkStatus();
  };
  // UCX_TCP_TX_SEG_SIZE, TCP_TX_SEG_SIZE and TX_SEG_SIZE all name the tcp transport's size.
  const auto segment_name = [](absl::string_view name) -> absl::string_view {
    if (absl::StartsWith(name, "UCX_")) name.remove_prefix(4);
    if (absl::StartsWith(name, "TCP_")) name.remove_prefix(4);
    return name == "TX_SEG_SIZE" || name == "RX_SEG_SIZE" ? name : absl::string_view();
  };
  absl::Status applied = absl::OkStatus();
  if (!options.tls.empty()) applied = modify("TLS", options.tls);
  for (const auto& [name, value] : options.ucx_settings) {
    if (!applied.ok()) break;
    if (segment_name(name).empty()) applied = modify(name, value);
  }
  const std::string tls_in_use = EffectiveTls(options);
  // The TCP segment sizes: named in the settings or the environment, else ours. UCX 1.13 applies
  // a transport's setting given to ucp_config_modify only under its name without the
  // transport's prefix (TX_SEG_SIZE: tcp is the only transport with it); "TCP_TX_SEG_SIZE" is
  // ignored with a warning ("invalid configurations").
  TcpSegments tcp;
  const auto segment = [&](absl::string_view name, uint64_t ours, uint64_t* out) {
    if (!applied.ok()) return;
    std::optional<std::string> value;
    for (const auto& [key, v] : options.ucx_settings) {
      if (segment_name(key) == name) value = v;
    }
    // UCX reads the environment by itself; settings and our default must be applied.
    const char* env = getenv(absl::StrCat("UCX_TCP_", name).c_str());
    const bool apply = value.has_value() || env == nullptr;
    if (!value.has_value()) value = env != nullptr ? std::string(env) : absl::StrCat(ours);
    absl::StatusOr<uint64_t> bytes = ParseUcxBytes(absl::StrCat("TCP_", name), *value);
    applied = bytes.status();
    if (!bytes.ok()) return;
    *out = *bytes;
    if (apply && MayUseTcp(tls_in_use)) applied = modify(name, *value);
  };
  segment("TX_SEG_SIZE", kStrataTcpSegments.tx, &tcp.tx);
  segment("RX_SEG_SIZE", kStrataTcpSegments.rx, &tcp.rx);
  if (!applied.ok()) {
    ucp_config_release(config);
    return applied;
  }

  ucp_params_t params = {};
  params.field_mask = UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_MT_WORKERS_SHARED;
  params.features = UCP_FEATURE_RMA | UCP_FEATURE_TAG | UCP_FEATURE_AM | UCP_FEATURE_WAKEUP;
  // Memory is registered from any thread while workers progress on theirs.
  params.mt_workers_shared = 1;
  // ucp_init starts UCX's async thread (once per process) and aborts the process when it
  // cannot (UCX 1.13: an assertion in ucs/async/thread.c). A thread started and ended just
  // before says whether one can be had: RESOURCE_EXHAUSTED then, instead of the abort. Best
  // effort: another thread of the process may take the room in between.
  std::atomic<pid_t> probe_tid{0};
  absl::StatusOr<std::thread> probe =
      StartThread("UCX's async thread", [&probe_tid] { probe_tid = gettid(); });
  if (!probe.ok()) {
    ucp_config_release(config);
    return probe.status();
  }
  probe->join();
  // A joined thread still counts against the limit until the kernel has released it, which
  // is when it leaves /proc/self/task.
  const std::string probe_task = absl::StrCat("/proc/self/task/", probe_tid.load());
  for (int i = 0; i < 100 && access(probe_task.c_str(), F_OK) == 0; ++i) {
    absl::SleepFor(absl::Microseconds(100));
  }
  ucp_context_h context = nullptr;
  status = ucp_init(&params, config, &context);
  ucp_config_release(config);
  if (status != UCS_OK) {
    return UcsToStatus(status, absl::StrCat("ucp_init (UCX_TLS=\"", options.tls, "\")"));
  }
  return std::make_unique<UcpTransportContext>(
      std::make_shared<UcpContext>(
          context, options.peer_failure_handling, options.deadline_drain_grace,
          MayUseTcp(tls_in_use) ? kBusyPollsOverTcp : kBusyPollsWithoutTcp),
      tcp);
}

}  // namespace strata::transport
