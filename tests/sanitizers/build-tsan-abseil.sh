#!/usr/bin/env bash
# Builds ThreadSanitizer-instrumented shared libraries of the abseil that the machine has
# (Debian's libabsl-dev, same version, same Debian patches: same SONAMEs, same options.h and
# inline namespace) into build/tsan-deps/abseil/lib. The `tsan` test preset puts that folder
# on LD_LIBRARY_PATH, so our binaries, the strata-storenode processes the tests start, and
# libgrpc/libgpr (whose gpr_mu and grpc_core::Mutex are absl::Mutex) load these instead of
# the system ones.
#
# Why: absl::Mutex::Lock/Unlock, CondVar and Notification live in libabsl_synchronization.so.
# Built without -fsanitize=thread they never tell TSan that a lock was taken, so every access
# guarded by an absl::Mutex (212 uses in our code) is reported as a data race: false
# positives in our own frames that no suppression may hide. Built with it, abseil's own
# ABSL_TSAN_MUTEX_* annotations give TSan the happens-before edges.
#
# Every abseil library is rebuilt, not only libabsl_synchronization: abseil's inline
# templates (absl::call_once's CallOnceImpl, for one) are emitted in several of its shared
# libraries and the dynamic linker binds every caller to the first copy it finds, so an
# uninstrumented copy in, say, libabsl_random_internal_pool_urbg would hide the
# happens-before edge of a call_once made by an instrumented one.
#
# The source comes from Debian's source package through apt-get with private state dirs
# (nothing under /etc/apt is changed). Idempotent: does nothing if the libraries are there.
# Usage: tests/sanitizers/build-tsan-abseil.sh [-j N]   (default -j1; prefix with nice)
set -euo pipefail

jobs=1
if [[ "${1:-}" == "-j" && -n "${2:-}" ]]; then jobs=$2; fi

root=$(cd "$(dirname "$0")/../.." && pwd)
deps=$root/build/tsan-deps
prefix=$deps/abseil
lib=$prefix/lib

pkg=$(dpkg-query -W -f='${Package}\n' 'libabsl2*' 2>/dev/null | grep -E '^libabsl[0-9]+$' | head -1)
if [[ -z "$pkg" ]]; then
  echo "build-tsan-abseil: no libabsl<version> package installed" >&2
  exit 1
fi
version=$(dpkg-query -W -f='${Version}' "$pkg")
stamp=$lib/.built-from
if [[ -f "$stamp" && "$(cat "$stamp")" == "abseil=$version" ]]; then
  echo "build-tsan-abseil: $lib already holds abseil $version with -fsanitize=thread"
  exit 0
fi

# 1. Debian's source package, patched, through apt-get with private lists.
apt_dir=$deps/apt
src_parent=$deps/src
mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/sources" \
  "$src_parent"
suite=$(. /etc/os-release && echo "$VERSION_CODENAME")
cat > "$apt_dir/sources/debian-src.sources" <<EOF
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: $suite $suite-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://deb.debian.org/debian-security
Suites: $suite-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
apt_opts=(-o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$apt_dir/sources"
  -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache")
src=$(ls -d "$src_parent"/abseil-*/ 2>/dev/null | head -1 || true)
if [[ -z "$src" || ! -f "$src_parent/abseil_$version.dsc" ]]; then
  rm -rf "$src_parent"/abseil*
  apt-get "${apt_opts[@]}" update >/dev/null
  (cd "$src_parent" && apt-get "${apt_opts[@]}" source "abseil=$version")
  src=$(ls -d "$src_parent"/abseil-*/ | head -1)
fi

# 2. Configure as debian/rules does (C++17, shared, no NDEBUG), plus -fsanitize=thread.
build=$deps/abseil-build
cmake -S "$src" -B "$build" -G Ninja \
  -DCMAKE_BUILD_TYPE= \
  -DCMAKE_CXX_STANDARD=17 \
  -DBUILD_SHARED_LIBS=ON \
  -DBUILD_TESTING=OFF \
  -DCMAKE_CXX_COMPILER_LAUNCHER=ccache \
  -DCMAKE_CXX_FLAGS="-g -O1 -fsanitize=thread -fno-omit-frame-pointer" \
  -DCMAKE_SHARED_LINKER_FLAGS="-fsanitize=thread" \
  >/dev/null

# 3. Build every library; copy the .so files and their SONAME links out.
cmake --build "$build" -j "$jobs"
mkdir -p "$lib"
rm -f "$lib"/libabsl_*.so*
find "$build" -name 'libabsl_*.so.*' -exec cp -P {} "$lib"/ \;
ls "$lib"/libabsl_synchronization.so.* >/dev/null
if ! nm -D "$lib"/libabsl_synchronization.so.*.*.* | grep -q __tsan_mutex_pre_lock; then
  echo "build-tsan-abseil: $lib/libabsl_synchronization is not instrumented" >&2
  exit 1
fi
echo "abseil=$version" > "$stamp"
echo "build-tsan-abseil: $(ls "$lib" | grep -c '\.so\.[0-9]*$') libraries in $lib"
