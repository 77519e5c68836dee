#!/usr/bin/env bash
# README command 2: install what the build needs, build the lean Debug preset and run every
# test (unit, integration with real strata-storenode processes, doc vectors, bench smoke).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
jobs=$(nproc 2>/dev/null || echo 2)
export CCACHE_DIR="${CCACHE_DIR:-$HOME/.cache/ccache}"
ccache --max-size=5G >/dev/null 2>&1 || true

cmake --preset debug
cmake --build --preset debug -j "$jobs"
ctest --preset debug -j "$jobs" --timeout 900
