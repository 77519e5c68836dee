// Block checksums: xxh3-64 of the payload bytes, computed by the writer, stored at commit
// and verified on every read. Stateless; thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>

namespace strata {

uint64_t BlockChecksum(const void* data, size_t size);

}  // namespace strata
