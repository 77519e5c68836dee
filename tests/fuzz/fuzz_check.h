// FUZZ_CHECK: the fuzz targets' invariant check. A violated invariant prints what failed and
// aborts, which libFuzzer reports as a crash (and the corpus replay test as a failure), in
// every build type: these are not debug-only assertions.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <string>

#define FUZZ_CHECK(cond)                                                                       \
  do {                                                                                         \
    if (!(cond)) {                                                                             \
      std::fprintf(stderr, "%s:%d: fuzz invariant violated: %s\n", __FILE__, __LINE__, #cond); \
      std::abort();                                                                            \
    }                                                                                          \
  } while (false)

// As FUZZ_CHECK, printing a message (e.g. a status) as well.
#define FUZZ_CHECK_MSG(cond, msg)                                                                  \
  do {                                                                                             \
    if (!(cond)) {                                                                                 \
      std::fprintf(stderr, "%s:%d: fuzz invariant violated: %s (%s)\n", __FILE__, __LINE__, #cond, \
                   std::string(msg).c_str());                                                      \
      std::abort();                                                                                \
    }                                                                                              \
  } while (false)
