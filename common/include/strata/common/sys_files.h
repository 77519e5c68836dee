// Reading the one-line files of /proc and /sys (cgroup limits, CPU quotas).
#pragma once

#include <fstream>
#include <string>

namespace strata {

// The first line of `path`; "" when it cannot be read.
inline std::string FirstLineOf(const char* path) {
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);
  return line;
}

}  // namespace strata
