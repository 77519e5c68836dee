// strata-transport-bench: the transport library alone (no store node, no gRPC): two UCX
// contexts in one process, connected both ways, moving batches of blocks with tagged messages
// (send/recv) or one-sided puts/gets. Isolates what the library can do from what the data
// plane around it costs; compare with `ucx_perftest -t tag_bw|ucp_put_bw|ucp_get` on the same
// transport. Prints one line of figures (and JSON with --json); never a timed test.
//
// Exit code: 0 done; 1 a transfer failed; 2 bad flags or UCX setup failed.
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/str_format.h"
#include "strata/common/byte_size.h"
#include "strata/transport/context.h"
#include "strata/transport/worker.h"

namespace {

using strata::transport::Context;
using strata::transport::TransferOp;
using strata::transport::TransportOptions;
using strata::transport::Worker;

struct Flags {
  std::string tls = "tcp";
  std::string op = "tag";  // tag, put, get
  std::string block_size_text = "256KiB";
  uint32_t blocks = 16;  // per batch
  uint32_t rounds = 50;
  uint32_t late_recv_ms = 0;  // tag: post receives this long after the sends
  bool json = false;
  uint32_t arena_mib = 0;      // >0: the target is a registered anonymous mapping of this size
  bool two_processes = false;  // tag only: sender and receiver in two processes
};

bool WriteAll(int fd, const std::string& bytes) {
  uint32_t n = static_cast<uint32_t>(bytes.size());
  return write(fd, &n, 4) == 4 && write(fd, bytes.data(), n) == static_cast<ssize_t>(n);
}

bool ReadAll(int fd, std::string* bytes) {
  uint32_t n = 0;
  if (read(fd, &n, 4) != 4 || n > (1u << 20)) return false;
  bytes->resize(n);
  size_t got = 0;
  while (got < n) {
    ssize_t r = read(fd, bytes->data() + got, n - got);
    if (r <= 0) return false;
    got += static_cast<size_t>(r);
  }
  return true;
}

// Tagged messages between two processes (the store node's and a client's situation): fork
// first, then each side builds its own context; worker addresses cross over pipes.
int RunTwoProcesses(const Flags& f, uint64_t size, const TransportOptions& topts) {
  int to_child[2], to_parent[2];
  if (pipe(to_child) != 0 || pipe(to_parent) != 0) return 2;
  const pid_t pid = fork();
  if (pid < 0) return 2;
  const bool receiver = pid == 0;
  const int out = receiver ? to_parent[1] : to_child[1];
  const int in = receiver ? to_child[0] : to_parent[0];
  auto context = Context::Create(topts);
  if (!context.ok()) return 2;
  auto worker = (*context)->CreateWorker();
  if (!worker.ok()) return 2;
  std::string peer;
  if (!WriteAll(out, (*worker)->Address()) || !ReadAll(in, &peer)) return 2;
  auto ep = (*worker)->Connect(peer);
  if (!ep.ok()) return 2;
  const uint64_t bytes = size * f.blocks;
  auto region = (*context)->Allocate(bytes);
  if (!region.ok()) return 2;
  auto* buf = static_cast<uint8_t*>((*region)->base());
  uint64_t tag = 1;
  const auto start = std::chrono::steady_clock::now();
  for (uint32_t r = 0; r < f.rounds; ++r) {
    std::vector<TransferOp> ops;
    for (uint32_t i = 0; i < f.blocks; ++i, ++tag) {
      ops.push_back(receiver ? TransferOp::Recv(buf + i * size, size, tag)
                             : TransferOp::Send(buf + i * size, size, tag));
    }
    absl::Status s = (*worker)->Transfer(*ep, ops, absl::Now() + absl::Seconds(60));
    if (!s.ok()) {
      std::fprintf(stderr, "strata-transport-bench (%s): %s\n", receiver ? "receiver" : "sender",
                   s.ToString().c_str());
      if (receiver) _exit(1);
      return 1;
    }
  }
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  // Both sides stay until both are done: a worker torn down early would fail the other.
  std::string done;
  WriteAll(out, "done");
  ReadAll(in, &done);
  if (receiver) _exit(0);
  int status = 0;
  waitpid(pid, &status, 0);
  std::printf(
      "transport %s tag, two processes: %u x %s per batch, %u batches: %.3f GB/s "
      "(%.2f ms per batch)\n",
      f.tls.c_str(), f.blocks, strata::FormatByteSize(size).c_str(), f.rounds,
      static_cast<double>(bytes) * f.rounds / secs / 1e9, secs * 1e3 / f.rounds);
  return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : 1;
}

int Run(const Flags& f) {
  absl::StatusOr<uint64_t> size = strata::ParseByteSize(f.block_size_text);
  if (!size.ok() || *size == 0) {
    std::fprintf(stderr, "strata-transport-bench: --block-size: bad size\n");
    return 2;
  }
  TransportOptions topts;
  topts.tls = f.tls == "shm" ? "posix,sysv,cma,self" : f.tls;
  topts.peer_failure_handling = f.tls != "shm";
  if (f.two_processes) return RunTwoProcesses(f, *size, topts);
  auto a = Context::Create(topts);
  auto b = Context::Create(topts);
  if (!a.ok() || !b.ok()) {
    std::fprintf(stderr, "strata-transport-bench: UCX: %s\n",
                 (!a.ok() ? a.status() : b.status()).ToString().c_str());
    return 2;
  }
  auto wa = (*a)->CreateWorker();
  auto wb = (*b)->CreateWorker();
  if (!wa.ok() || !wb.ok()) return 2;
  auto ab = (*wa)->Connect((*wb)->Address());
  auto ba = (*wb)->Connect((*wa)->Address());
  if (!ab.ok() || !ba.ok()) return 2;
  const uint64_t bytes = *size * f.blocks;
  std::vector<uint8_t> src(bytes, 0x5a);
  auto src_region = (*a)->Register(src.data(), src.size());
  // The target side: memory from UCX (shared segments under shm), or, with --arena-mib, a
  // registered anonymous mapping as a store node's warm arena is.
  std::vector<uint8_t> arena;
  if (f.arena_mib > 0) arena.resize(std::max<uint64_t>(bytes, uint64_t{f.arena_mib} << 20));
  auto dst_region =
      arena.empty() ? (*b)->Allocate(bytes) : (*b)->Register(arena.data(), arena.size());
  if (!src_region.ok() || !dst_region.ok()) return 2;
  auto* dst = static_cast<uint8_t*>((*dst_region)->base());

  uint64_t tag = 1;
  const auto start = std::chrono::steady_clock::now();
  for (uint32_t r = 0; r < f.rounds; ++r) {
    std::vector<TransferOp> a_ops, b_ops;
    for (uint32_t i = 0; i < f.blocks; ++i, ++tag) {
      uint8_t* s = src.data() + i * *size;
      uint8_t* d = dst + i * *size;
      if (f.op == "tag") {
        a_ops.push_back(TransferOp::Send(s, *size, tag));
        b_ops.push_back(TransferOp::Recv(d, *size, tag));
      } else {
        a_ops.push_back({.kind = f.op == "put" ? TransferOp::Kind::kPut : TransferOp::Kind::kGet,
                         .local = s,
                         .length = *size,
                         .remote_addr = (*dst_region)->remote_addr() + i * *size,
                         .packed_rkey = (*dst_region)->PackedRkey()});
      }
    }
    const absl::Time deadline = absl::Now() + absl::Seconds(60);
    absl::Status received = absl::OkStatus();
    std::thread receiver([&] {
      if (b_ops.empty()) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(f.late_recv_ms));
      received = (*wb)->Transfer(*ba, b_ops, deadline);
    });
    absl::Status sent = (*wa)->Transfer(*ab, a_ops, deadline);
    receiver.join();
    if (!sent.ok() || !received.ok()) {
      std::fprintf(stderr, "strata-transport-bench: %s / %s\n", sent.ToString().c_str(),
                   received.ToString().c_str());
      return 1;
    }
  }
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const double gbps = static_cast<double>(bytes) * f.rounds / secs / 1e9;
  if (f.json) {
    std::printf(
        "{\"tls\": \"%s\", \"op\": \"%s\", \"block_size\": %llu, \"blocks\": %u, \"rounds\": %u, "
        "\"late_recv_ms\": %u, \"seconds\": %.4f, \"gbps\": %.4f}\n",
        f.tls.c_str(), f.op.c_str(), static_cast<unsigned long long>(*size), f.blocks, f.rounds,
        f.late_recv_ms, secs, gbps);
  } else {
    std::printf("transport %s %s: %u x %s per batch, %u batches: %.3f GB/s (%.2f ms per batch)\n",
                f.tls.c_str(), f.op.c_str(), f.blocks, strata::FormatByteSize(*size).c_str(),
                f.rounds, gbps, secs * 1e3 / f.rounds);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Flags f;
  CLI::App app{"strata-transport-bench: the UCX transport library alone, batch throughput"};
  app.add_option("--tls", f.tls, "tcp or shm")
      ->check(CLI::IsMember({"tcp", "shm"}))
      ->capture_default_str();
  app.add_option("--op", f.op, "tag (send/recv), put or get")
      ->check(CLI::IsMember({"tag", "put", "get"}))
      ->capture_default_str();
  app.add_option("--block-size", f.block_size_text, "Bytes per block")->capture_default_str();
  app.add_option("--blocks", f.blocks, "Blocks per batch")
      ->check(CLI::Range(1, 4096))
      ->capture_default_str();
  app.add_option("--rounds", f.rounds, "Batches")
      ->check(CLI::Range(1, 1000000))
      ->capture_default_str();
  app.add_option("--late-recv-ms", f.late_recv_ms, "tag: post receives this long after sends")
      ->capture_default_str();
  app.add_flag("--json", f.json, "One JSON object instead of the line");
  app.add_option("--arena-mib", f.arena_mib, "Target: a registered mapping of this many MiB");
  app.add_flag("--two-processes", f.two_processes,
               "tag: sender and receiver in two processes (fork), as a client and a node are");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  }
  return Run(f);
}
