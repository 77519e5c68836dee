#!/usr/bin/env bash
# README command 1: install what the build needs, build the Release preset, start a local
# store node and run the worked prefill→decode example (`strata demo`), then the same life
# cycle through the GPU agent (`strata-engine-example`: prefill and decode engine stand-ins
# with paged KV pools, host twin), each stopping its node afterwards.
# Extra arguments go to `strata demo` (e.g. --model llama-3.1-70b --prompt-tokens 8192).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
jobs=$(nproc 2>/dev/null || echo 2)
export CCACHE_DIR="${CCACHE_DIR:-$HOME/.cache/ccache}"

cmake --preset release >/dev/null
cmake --build --preset release -j "$jobs" --target strata strata-storenode strata-engine-example
build/release/bin/strata demo "$@"
echo
echo "== the same through the GPU agent (engine stand-ins, host twin) =="
exec build/release/bin/strata-engine-example
