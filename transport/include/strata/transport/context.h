// The UCX data plane's process-wide state: a Context wraps one UCX context (ucp_context) with
// RMA, active messages and wakeups enabled, registers memory for zero-copy transfers
// (MemoryRegion, whose packed rkey a peer needs to put/get into it) and creates Workers
// (worker.h) that move the bytes.
//
// Thread-safety: Context and MemoryRegion are thread-safe; every method may be called from
// any thread. UCX runs with its context shared between threads (mt_workers_shared), so
// registering memory never waits for a worker's progress thread.
//
// Lifetimes: MemoryRegions and Workers keep the underlying UCX context alive, so they may
// outlive the Context object that created them. Destroying a MemoryRegion while a transfer
// still reads or writes its memory (locally or from a peer holding its rkey) is a bug of the
// caller: the owner must drain or lease-protect it first (DESIGN.md §4, leases). Puts a peer
// sent before giving up on a transfer (DEADLINE_EXCEEDED on its side) may still be applied by
// this process's Workers afterwards, so a region exposed to peers must outlive the Workers (or
// the lease of every peer that had its rkey).
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace strata::transport {

class Worker;

// The segment sizes UCX's tcp transport sends and receives (UCX_TCP_TX_SEG_SIZE,
// UCX_TCP_RX_SEG_SIZE), in bytes. UCX 1.13 aborts a process that receives a segment larger
// than its own rx size, so two peers must agree: see CheckTcpSegments.
struct TcpSegments {
  uint64_t tx = 0;
  uint64_t rx = 0;
};
// UCX 1.13's own defaults: what a peer that does not say runs with.
inline constexpr TcpSegments kUcxDefaultTcpSegments{8 << 10, 64 << 10};
// Ours, unless the settings or the environment name them: 64 KiB sends instead of 8 KiB move
// 10-25 % more over loopback TCP (docs/design/transfer-protocol.md), and still fit a peer on
// UCX's defaults; 512 KiB receives take any peer's sends up to that size.
inline constexpr TcpSegments kStrataTcpSegments{64 << 10, 512 << 10};

// OK when neither side sends TCP segments larger than the other receives, or when `tls` (UCX_TLS
// as both sides use it) cannot select tcp. FAILED_PRECONDITION otherwise, naming both sizes and
// the settings to align. A zero field of `peer` means kUcxDefaultTcpSegments' (an older peer).
absl::Status CheckTcpSegments(TcpSegments local, TcpSegments peer, std::string_view tls);

struct TransportOptions {
  // UCX transports to use, as UCX_TLS takes them ("tcp", "posix,sysv,cma,self", "rc,sm",
  // "^ib"). Empty: UCX's default (UCX_TLS from the environment, else "all").
  std::string tls;
  // Further UCX settings, by name without the UCX_ prefix (a leading "UCX_" is accepted and
  // stripped), e.g. {"TCP_CM_REUSEADDR", "y"} or {"KEEPALIVE_INTERVAL", "2s"}. Applied after
  // `tls`, so an explicit "TLS" entry here wins.
  std::map<std::string, std::string> ucx_settings;
  // Endpoints detect dead peers (UCP_ERR_HANDLING_MODE_PEER): operations to a dead peer fail
  // with UNAVAILABLE instead of waiting for their deadline. Keep this on. UCX 1.13 only offers
  // it on transports with peer-failure support (tcp, RDMA, cma), so it rules out RMA over
  // posix/sysv shared memory (see worker.h); false allows those, and then a dead peer is only
  // noticed when a transfer's deadline force-closes the endpoint.
  bool peer_failure_handling = true;
  // With peer_failure_handling: after a transfer's deadline, how long the requests it posted
  // may drain before its endpoint is force-closed (bounds how far past its deadline Transfer
  // returns). Transfers that only receive do not wait for it.
  absl::Duration deadline_drain_grace = absl::Seconds(1);
};

// A range of this process's memory registered with one Context: the local side of zero-copy
// transfers, and, through its packed rkey, the remote side for peers. Unregisters (and, for
// Context::Allocate, frees) the memory in its destructor. Thread-safe (immutable).
class MemoryRegion {
 public:
  virtual ~MemoryRegion() = default;

  // First byte of the region; valid until the region is destroyed.
  virtual void* base() const = 0;
  // Length in bytes, as requested at registration.
  virtual size_t size() const = 0;
  // base() as a peer names it in TransferOp::remote_addr.
  uint64_t remote_addr() const { return reinterpret_cast<uintptr_t>(base()); }

  // The remote key a peer passes as TransferOp::packed_rkey to reach this region: UCX's packed
  // rkey wrapped in a checksummed envelope (so garbage or truncated bytes are rejected before
  // UCX parses them). Opaque bytes, safe to send over the control plane; valid while this
  // region exists. Returns a reference to an immutable member (no copy, never fails).
  virtual const std::string& PackedRkey() const = 0;

  // True iff [addr, addr + len) lies inside the region (false on overflow). len 0 is contained
  // when addr is in [base, base + size].
  bool Contains(const void* addr, size_t len) const {
    const uintptr_t a = reinterpret_cast<uintptr_t>(addr);
    const uintptr_t b = reinterpret_cast<uintptr_t>(base());
    return a >= b && a - b <= size() && len <= size() - (a - b);
  }
};

class Context {
 public:
  // Creates a UCX context with features RMA | AM | WAKEUP, shared between threads.
  // INVALID_ARGUMENT: an unknown UCX setting or an invalid value (names the setting).
  // Other codes: UCX initialization failed (converted from ucs_status_t, with context).
  // Blocks while UCX opens its transports (milliseconds).
  static absl::StatusOr<std::unique_ptr<Context>> Create(const TransportOptions& options);

  virtual ~Context() = default;

  // Registers the caller's memory [ptr, ptr + len) for zero-copy transfers. The caller keeps
  // ownership of the memory and must keep it mapped for the region's lifetime.
  // INVALID_ARGUMENT: null ptr or len 0. RESOURCE_EXHAUSTED: out of registration resources
  // (pinned memory limits). Other codes from UCX. Blocks while the memory is registered
  // (proportional to len on RDMA devices).
  virtual absl::StatusOr<std::unique_ptr<MemoryRegion>> Register(void* ptr, size_t len) = 0;

  // Allocates len bytes through UCX (ucp_mem_map ALLOCATE: shared-memory segments where a
  // shared-memory transport is enabled, so peers on this host reach it by posix/sysv as well
  // as cma) and registers them. The region owns the memory, frees it on destruction; contents
  // are unspecified. INVALID_ARGUMENT: len 0. RESOURCE_EXHAUSTED: allocation failed.
  virtual absl::StatusOr<std::unique_ptr<MemoryRegion>> Allocate(size_t len) = 0;

  // Starts a Worker (one UCX worker and its progress thread) on this context.
  // Errors: UCX could not create the worker, its event fd or its address. Blocks while the
  // worker's transports start (milliseconds).
  virtual absl::StatusOr<std::unique_ptr<Worker>> CreateWorker() = 0;

  // UCX's own description of this context (ucp_context_print_info: memory domains,
  // transports and devices in use), for a node's startup log. Never fails; thread-safe.
  virtual std::string Describe() const = 0;

  // The TCP segment sizes this context runs with: from the settings, else the environment
  // (UCX_TCP_TX_SEG_SIZE / UCX_TCP_RX_SEG_SIZE), else kStrataTcpSegments.
  virtual TcpSegments tcp_segments() const = 0;
};

}  // namespace strata::transport
