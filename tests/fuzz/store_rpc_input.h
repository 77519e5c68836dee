// The input format of store_rpc_fuzzer, shared with the seed generator (corpus_gen.cc).
//
//   input := setup_byte call*
//   call  := op_byte flags_byte len_lo len_hi message[len]   (len is clipped to what is left)
//
// setup_byte configures the node the input runs against (a fresh one per input, see
// store_rpc_fuzzer.cc): bit 0 adds cool and cold tiers (RocksDB on an in-memory Env), bit 1
// turns debug_fault_injection on, bits 2-3 pick the warm tier's eviction policy.
// op_byte % kOpCount picks an RPC of strata.v1.StoreService (or kAdvanceClock, the harness's
// stand-in for the node's reaper); the message bytes are parsed as that RPC's request.
//
// A byte-level mutator cannot guess the ids and hashes the node hands out or holds, so the
// flags rewrite fields before the call:
//   kKnownNamespace  namespace_id := a namespace the harness registered (kQuantNamespace: the
//                    one that quantizes blocks offloaded to disk)
//   kLastIds         reservation_id / lease_id := the last one BeginPut / BeginGet returned
//   kKnownHashes     every 1-byte chain hash b := KnownHash(b % kKnownHashes), every 2-byte
//                    one := ExtraHash(its big-endian value) (more blocks than the arena holds)
//   kFixPayloads     CommitPut: no blocks := every block of the last BeginPut; a payload of a block
//   of the last BeginPut gets its reserved
//                    size (empty: compressible fp16 values; else: incompressible bytes
//                    seeded by it), and every checksum := xxh3 of its payload
//   kKnownSession    session_id := kKnownSession
// Plain constants and helpers; header-only.
#pragma once

#include <cstdint>
#include <string>

#include "strata/common/block_key.h"

namespace strata::fuzz {

enum StoreOp : uint8_t {
  kRegisterNamespace,
  kLookup,
  kPublish,
  kBeginPut,
  kCommitPut,
  kAbortPut,
  kBeginGet,
  kEndGet,
  kDelete,
  kStats,
  kPauseSession,
  kResumeSession,
  kPrefetch,
  kInjectFault,
  kConnectData,
  kCloseData,
  kPutData,
  kGetData,
  kAdvanceClock,  // message: up to 4 bytes, little-endian milliseconds (then reap)
  kOpCount
};

// setup_byte bits.
inline constexpr uint8_t kSetupDiskTiers = 1 << 0;
inline constexpr uint8_t kSetupFaultInjection = 1 << 1;
inline constexpr int kSetupPolicyShift = 2;  // 2 bits: lru, lfu, prefix, cost

// flags_byte bits.
inline constexpr uint8_t kFlagKnownNamespace = 1 << 0;
inline constexpr uint8_t kFlagLastIds = 1 << 1;
inline constexpr uint8_t kFlagKnownHashes = 1 << 2;
inline constexpr uint8_t kFlagFixPayloads = 1 << 3;
inline constexpr uint8_t kFlagKnownSession = 1 << 4;
inline constexpr uint8_t kFlagQuantNamespace = 1 << 5;  // with kFlagKnownNamespace

inline constexpr uint8_t kAllFlags =
    kFlagKnownNamespace | kFlagLastIds | kFlagKnownHashes | kFlagFixPayloads | kFlagKnownSession;

inline constexpr int kKnownHashes = 16;
inline constexpr char kKnownSession[] = "fuzz-session";

// Known hash i: 32 bytes derived from i. The harness stores blocks under the first few.
inline ChainHash KnownHash(int i) {
  ChainHash h;
  for (size_t b = 0; b < kChainHashBytes; ++b) {
    h.bytes[b] = static_cast<uint8_t>(0xA0 + i * 13 + b * 7);
  }
  return h;
}

// Extra hash v (0..65535): hashes no block starts under, distinct from the known ones.
inline ChainHash ExtraHash(int v) {
  ChainHash h = KnownHash(0);
  h.bytes[0] = 0x01;
  h.bytes[1] = static_cast<uint8_t>(v >> 8);
  h.bytes[2] = static_cast<uint8_t>(v & 0xff);
  return h;
}

// Appends one call record.
inline void AppendCall(std::string* input, StoreOp op, uint8_t flags, const std::string& message) {
  const size_t len = message.size() > 0xffff ? 0xffff : message.size();
  input->push_back(static_cast<char>(op));
  input->push_back(static_cast<char>(flags));
  input->push_back(static_cast<char>(len & 0xff));
  input->push_back(static_cast<char>(len >> 8));
  input->append(message, 0, len);
}

}  // namespace strata::fuzz
