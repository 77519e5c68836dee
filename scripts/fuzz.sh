#!/usr/bin/env bash
# scripts/fuzz.sh [SECONDS] — builds the libFuzzer targets of tests/fuzz (the `fuzz` preset:
# clang, -fsanitize=fuzzer,address,undefined) and runs each for SECONDS (default 600), one
# after the other, then prints executions, exec/s, coverage and corpus size per fuzzer.
#
#   FUZZ_TARGETS="trace_fuzzer"  run only these (default: all three)
#   FUZZ_BUILD_JOBS=1            build parallelism (default: nproc)
#
# Each run starts from the committed seeds (tests/fuzz/corpus/<target>, never written) plus
# its working corpus build/fuzz/corpus/<target> (kept between runs; new inputs land there).
# Crash, leak, timeout and OOM inputs are saved as build/fuzz/crashes/<target>-<kind>-<sha1>;
# logs are in build/fuzz/logs/<target>/. Exit status 1 if any fuzzer found something.
# Reproduce a finding: build/fuzz/bin/<target> build/fuzz/crashes/<file>
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
secs=${1:-600}
targets=(${FUZZ_TARGETS:-store_rpc_fuzzer stored_block_fuzzer trace_fuzzer})

if ! command -v clang++ >/dev/null 2>&1; then
  echo "== installing clang (libFuzzer comes with it on Debian 12)"
  sudo_cmd=()
  [ "$(id -u)" -ne 0 ] && sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  "${sudo_cmd[@]}" apt-get install -y -qq clang
fi
export CCACHE_DIR="${CCACHE_DIR:-$HOME/.cache/ccache}"

echo "== building the fuzzers (build/fuzz)"
cmake --preset fuzz >/dev/null
cmake --build --preset fuzz -j "${FUZZ_BUILD_JOBS:-$(nproc 2>/dev/null || echo 2)}"

crashes="$root/build/fuzz/crashes"
mkdir -p "$crashes"
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=0}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
# tests/fuzz/lsan.supp: a glibc TLS record LSan can mistake for a leak (see the file).
export LSAN_OPTIONS="${LSAN_OPTIONS:-suppressions=$root/tests/fuzz/lsan.supp}"

failed=0
summary=()
for t in "${targets[@]}"; do
  work="$root/build/fuzz/corpus/$t"
  logs="$root/build/fuzz/logs/$t"
  mkdir -p "$work" "$logs"
  rm -f "$logs"/fuzz-*.log
  extra=()
  [ -f "tests/fuzz/$t.dict" ] && extra+=("-dict=$root/tests/fuzz/$t.dict")
  before=$(ls "$crashes" | grep -c "^$t-" || true)
  echo "== $t: ${secs} s (log: build/fuzz/logs/$t/fuzz-0.log)"
  # -jobs=1: one fuzzing process whose output goes to fuzz-0.log in the working directory.
  (cd "$logs" && "$root/build/fuzz/bin/$t" -max_total_time="$secs" -jobs=1 \
    -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 -max_len=4096 \
    -artifact_prefix="$crashes/$t-" "${extra[@]}" "$work" "$root/tests/fuzz/corpus/$t") ||
    failed=1
  log="$logs/fuzz-0.log"
  last=$(grep -E '^#[0-9]+' "$log" | tail -1 || true)
  execs=$(grep -oE 'stat::number_of_executed_units: +[0-9]+' "$log" | grep -oE '[0-9]+$' || true)
  rate=$(grep -oE 'stat::average_exec_per_sec: +[0-9]+' "$log" | grep -oE '[0-9]+$' || true)
  cov=$(echo "$last" | grep -oE 'cov: [0-9]+' | grep -oE '[0-9]+' || true)
  ft=$(echo "$last" | grep -oE 'ft: [0-9]+' | grep -oE '[0-9]+' || true)
  corp=$(echo "$last" | grep -oE 'corp: [0-9]+/[0-9]+[a-zA-Z]*' | cut -d' ' -f2 || true)
  found=$(($(ls "$crashes" | grep -c "^$t-" || true) - before))
  [ "$found" -gt 0 ] && failed=1
  if grep -qE '^==[0-9]+==ERROR|^SUMMARY: |deadly signal|fuzz invariant violated' "$log"; then
    failed=1
    echo "   $t reported an error; see $log"
    grep -m5 -E 'ERROR|SUMMARY|invariant|Test unit written' "$log" | sed 's/^/   /'
  fi
  summary+=("$(printf '%-20s %12s %8s %7s %7s %13s %8s' "$t" "${execs:-?}" "${rate:-?}" \
    "${cov:-?}" "${ft:-?}" "${corp:-?}" "$found")")
done

echo
printf '%-20s %12s %8s %7s %7s %13s %8s\n' fuzzer execs exec/s cov ft corpus crashes
printf '%s\n' "${summary[@]}"
echo "(cov: edges covered; ft: features; corpus: inputs/bytes; $secs s each)"
exit $failed
