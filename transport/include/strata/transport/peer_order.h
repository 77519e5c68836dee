// Ordering that runs through another process, made visible to ThreadSanitizer.
//
// With UCX, a peer reads and writes our registered memory at our request: the client writes a
// buffer, sends PutData over gRPC, and the node's RMA get is then served by the client's own
// UCX worker thread (over shared memory or TCP, UCX emulates RMA with messages and memcpys the
// buffer inside libucp). The order between the writing thread and the worker thread runs
// through the peer process, which ThreadSanitizer cannot see, so it would report every such
// copy as a race (and, reporting thousands of them, slow a transfer past its deadline).
//
// ReleaseToPeers() before a call that lets a peer touch our memory and AcquireFromPeers()
// after it returns, together with the same pair around each UCX progress call on the worker
// thread, state that order to ThreadSanitizer. Both compile to nothing in other builds.
#pragma once

#if defined(__SANITIZE_THREAD__)
extern "C" void __tsan_acquire(void* addr);
extern "C" void __tsan_release(void* addr);
#endif

namespace strata::transport {

#if defined(__SANITIZE_THREAD__)
namespace internal {
inline char peer_order_sync;  // one address for the whole process: the order it states is coarse
}  // namespace internal
inline void ReleaseToPeers() { __tsan_release(&internal::peer_order_sync); }
inline void AcquireFromPeers() { __tsan_acquire(&internal::peer_order_sync); }
#else
inline void ReleaseToPeers() {}
inline void AcquireFromPeers() {}
#endif

}  // namespace strata::transport
