// glibc malloc settings for a process that makes many calls of tens to hundreds of KiB each:
// a store node, and a client process (strata-bench, the CLI, an engine that opts in).
//
// With glibc's defaults, or once M_MMAP_THRESHOLD is set (which freezes the trim threshold
// at 128 KiB), memory freed at the top of a thread's heap goes back to the kernel whenever
// more than 128 KiB of it is free. A 2,048-block Lookup allocates a few hundred KiB and frees
// them, so every call gave its pages back (madvise, with a TLB shootdown that interrupts
// every CPU running the process) and faulted them in again on the next: about a third of a
// node's CPU per long lookup (docs/design/cluster.md, "Heap trimming").
#pragma once

#include <cstddef>
#include <string>

namespace strata {

struct MallocTuning {
  // Blocks of this size and more are mapped and unmapped whole (glibc's most: 32 MiB).
  // 0: left as it is.
  size_t mmap_threshold = 0;
  // Free memory at the top of a heap is given back only past this much: each malloc arena
  // (glibc makes at most 8 per core) may keep this much free beyond what is in use.
  // 0: left as it is.
  size_t trim_threshold = 0;

  // A store node: a freed payload of a MiB and more leaves the process, so RSS follows the
  // node's admission budgets (docs/design/security.md); smaller buffers stay for the next call
  // (a 4,096-block Lookup allocates well under 2 MiB).
  static MallocTuning Node() { return {size_t{1} << 20, size_t{2} << 20}; }
  // A client process: inline payloads up to 32 MiB are reused from the heap as well, instead
  // of being mapped (and faulted in page by page) for every call.
  static MallocTuning Client() { return {size_t{32} << 20, size_t{64} << 20}; }
};

// Applies `tuning` with mallopt, each threshold unless the environment sets that one — in
// GLIBC_TUNABLES (glibc.malloc.mmap_threshold, glibc.malloc.trim_threshold) or as
// MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_: the operator's choice stands. Returns what
// it did, for the log; it contains "(refused)" where glibc refused a value.
// Process-wide: call it once at the start of main(), before threads allocate; a library
// never calls it on its own.
std::string TuneMalloc(const MallocTuning& tuning);

}  // namespace strata
