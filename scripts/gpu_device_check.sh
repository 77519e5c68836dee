#!/usr/bin/env bash
# Packs the device-machine checks for a GPU machine that lacks our Debian libraries:
# cuda_copy_test, gpu_agent_device_test (with the strata-storenode it starts) and
# strata-gpu-copy-bench, stripped, with every shared library they load except the C
# library's own parts and the NVIDIA driver's. With --benches it also packs what
# bench/peer_bench.py (issue 4) and bench/cluster_bench.py (issue 5) need there: strata,
# strata-bench, redis-server, redis-benchmark, ucx_perftest, UCX's cma module and etcd, so the
# speed goals can be measured on a machine with more cores than this one. Everything goes
# into build/gpu-carry/bundle.tar.xz (under the device tool's 64 MiB), beside
# build/gpu-carry/run.sh, which unpacks it under /tmp there, runs the checks and leaves their
# output in $OUT (or build/gpu-carry/out).
#
# Here, after a build of the targets (release: the benches' figures are worth comparing):
#   cmake --build --preset release -j2 --target cuda_copy_test gpu_agent_device_test \
#     strata-storenode strata-gpu-copy-bench strata strata-bench strata-lookup-bench
#   scripts/gpu_device_check.sh [--benches]     # BUILD_DIR=build/<dir> packs another build
# There (the repository root, build/gpu-carry carried along):
#   bash build/gpu-carry/run.sh                 # GPU checks ~2 min, benches ~5 min more
set -euo pipefail
cd "$(dirname "$0")/.."

benches=0
case "${1:-}" in
  "") ;;
  --benches) benches=1 ;;
  *) echo "usage: $0 [--benches]" >&2; exit 2 ;;
esac

build_dir="${BUILD_DIR:-build/release}"
carry=build/gpu-carry
stage="$carry/stage"
binaries=(cuda_copy_test gpu_agent_device_test strata-storenode strata-gpu-copy-bench)
peer_tools=()
if [[ $benches -eq 1 ]]; then
  binaries+=(strata strata-bench strata-lookup-bench)
  peer_tools=(redis-server redis-benchmark ucx_perftest etcd)
fi

for b in "${binaries[@]}"; do
  if [[ ! -x "$build_dir/bin/$b" ]]; then
    echo "gpu_device_check: $build_dir/bin/$b missing; build it first:" >&2
    echo "  cmake --build --preset release -j2 --target ${binaries[*]}" >&2
    exit 2
  fi
done
tool_paths=()
for t in "${peer_tools[@]}"; do
  p=$(command -v "$t") || { echo "gpu_device_check: no $t here (scripts/setup.sh)" >&2; exit 2; }
  tool_paths+=("$p")
done
ucx_modules=()
if [[ $benches -eq 1 ]]; then
  # UCX loads its transports from modules; cma carries the shared-memory rows' large messages.
  cma=$(find /usr/lib -path '*/ucx/libuct_cma.so.0' -print -quit)
  [[ -n "$cma" ]] || { echo "gpu_device_check: UCX's libuct_cma.so.0 not found" >&2; exit 2; }
  ucx_modules=("$cma")
fi

rm -rf "$carry"
mkdir -p "$stage/bin" "$stage/bin/ucx"
for b in "${binaries[@]}"; do
  strip --strip-debug -o "$stage/bin/$b" "$build_dir/bin/$b"
done
for p in "${tool_paths[@]}"; do cp -L "$p" "$stage/bin/"; done
for m in "${ucx_modules[@]}"; do cp -L "$m" "$stage/bin/ucx/"; done
# peer_bench.py reads the build type from the CMakeCache.txt above the binary's folder.
grep '^CMAKE_BUILD_TYPE:' "$build_dir/CMakeCache.txt" >"$stage/CMakeCache.txt" || true

# Every library ldd resolves, less glibc's own (it must match the loader there), the vDSO and
# the driver (libcuda comes with the GPU machine's driver; the runtime is linked statically).
system_lib='^(linux-vdso|ld-linux|libc|libm|libmvec|libpthread|libdl|librt|libresolv|libutil'
system_lib+='|libcuda|libnvidia-)[.-]'
objects=("$stage"/bin/* "$stage"/bin/ucx/*)
for o in "${objects[@]}"; do
  [[ -f "$o" ]] || continue
  ldd "$o" | awk '$2 == "=>" && $3 ~ /^\// {print $1, $3}'
done | sort -u | while read -r name path; do
  if [[ "$name" =~ $system_lib ]]; then continue; fi
  cp -L "$path" "$stage/bin/$name"
done

missing=$(for o in "${objects[@]}"; do
  [[ -f "$o" ]] && LD_LIBRARY_PATH="$stage/bin" ldd "$o" | grep "not found" || true
done)
if [[ -n "$missing" ]]; then
  echo "gpu_device_check: unresolved libraries:" >&2
  echo "$missing" >&2
  exit 1
fi
tar -C "$stage" -cJf "$carry/bundle.tar.xz" .
rm -rf "$stage"

cat >"$carry/run.sh" <<'EOF'
#!/usr/bin/env bash
# Written by scripts/gpu_device_check.sh: unpacks bundle.tar.xz under /tmp, runs the CUDA
# copy engine's test, the agent on device pools and a short copy bench on this machine's GPU
# and, when the bundle has them, bench/peer_bench.py and bench/cluster_bench.py. Every log
# and JSON file goes into one $OUT/device-out.tgz (the device tool brings back at most 8
# files; OUT unset: ./out beside this script). SKIP_GPU=1 skips the GPU part; after
# "--", the rest of the command line runs instead of the benches, with the bundle's
# binaries on PATH (e.g. a sweep of strata-bench flags). After peer_bench, SHM_AB=1 (the
# default) also runs one stream over shm four ways (default, --shm-rma, every get
# two-sided, put checksums first), twice (~60 s; 30 s at most per run).
set -uo pipefail
carry="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$carry/../.." && pwd)"
dest="${OUT:-$carry/out}"
mkdir -p "$dest"
root=/tmp/strata-device
out="$root/out"
rm -rf "$root" && mkdir -p "$out"
trap 'tar -C "$root" -czf "$dest/device-out.tgz" out' EXIT
custom=()
if [[ "${1:-}" == "--" ]]; then shift; custom=("$@"); fi
if command -v xz >/dev/null; then
  tar -C "$root" -xJf "$carry/bundle.tar.xz"
else
  python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' \
    "$carry/bundle.tar.xz" "$root"
fi
dir="$root/bin"
export LD_LIBRARY_PATH="$dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PATH="$dir:$PATH" STRATA_BIN_DIR="$dir" UCX_MODULE_DIR="$dir/ucx"

{ nproc; grep -m1 'model name' /proc/cpuinfo; uptime; } 2>&1 | tee "$out/machine.txt"
nvidia-smi --query-gpu=name,driver_version,memory.total,pcie.link.gen.max,pcie.link.width.max \
  --format=csv 2>&1 | tee -a "$out/machine.txt"

test_rc=0 agent_rc=0 bench_rc=0 skipped=0
if [[ "${SKIP_GPU:-0}" != 1 ]]; then
  echo "== cuda_copy_test"
  timeout 150 "$dir/cuda_copy_test" --gtest_brief=1 --gtest_output="xml:$out/cuda_copy_test.xml" \
    2>&1 | tee "$out/cuda_copy_test.log"
  test_rc=${PIPESTATUS[0]}
  skipped=$(grep -c '^\[  SKIPPED \]' "$out/cuda_copy_test.log" || true)

  echo "== gpu_agent_device_test"
  timeout 200 "$dir/gpu_agent_device_test" 2>&1 | grep -v '\[info\]' | tee "$out/gpu_agent_device_test.log"
  agent_rc=${PIPESTATUS[0]}

  echo "== strata-gpu-copy-bench (llama-3.1-8b blocks, fp16, flash-attn; 16 and 64 blocks a call)"
  timeout 120 "$dir/strata-gpu-copy-bench" --cuda --blocks 64 --batch 16 --min-seconds 0.2 \
    --json "$out/gpu_copy_bench.json" 2>&1 | tee "$out/gpu_copy_bench.log"
  bench_rc=${PIPESTATUS[0]}
  timeout 120 "$dir/strata-gpu-copy-bench" --cuda --blocks 256 --batch 64 --min-seconds 0.2 \
    --json "$out/gpu_copy_bench_64.json" 2>&1 | tee "$out/gpu_copy_bench_64.log"
  bench_rc=$((bench_rc | PIPESTATUS[0]))
  echo "== cuda_copy_test exit $test_rc (skip lines: $skipped), gpu_agent_device_test exit" \
    "$agent_rc, strata-gpu-copy-bench exit $bench_rc"
fi

peer_rc=0
if [[ ${#custom[@]} -gt 0 ]]; then
  echo "== ${custom[*]}"
  (cd "$repo" && "${custom[@]}") 2>&1 | tee "$out/custom.log"
  peer_rc=${PIPESTATUS[0]}
elif [[ -x "$dir/strata-bench" && -f "$repo/bench/peer_bench.py" ]]; then
  echo "== bench/peer_bench.py (issue 4)"
  timeout "${PEER_BENCH_TIMEOUT:-300}" python3 "$repo/bench/peer_bench.py" \
    --strata-bench "$dir/strata-bench" --ucx-put-test tag_bw --out-dir "$root/peer" \
    --json "$out/peer_bench.json" ${PEER_BENCH_ARGS:-} 2>&1 | tee "$out/peer_bench.log"
  peer_rc=${PIPESTATUS[0]}
  # Each strata row's own JSON (with the node's handler time per call, "node_ops").
  mkdir -p "$out/peer" && cp "$root"/peer/strata-*.json "$out/peer/" 2>/dev/null
  if [[ "${SHM_AB:-1}" == 1 ]]; then
    echo "== one stream over shm: default (two-sided puts, gets from 512 KiB), RMA only," \
      "every get two-sided, put checksums first"
    mkdir -p "$out/shm_ab"
    for round in 1 2; do
      for size in 256KiB 2MiB; do
        blocks=1024 && [[ $size == 2MiB ]] && blocks=128
        for mode in default rma gets-two-sided checksums-first; do
          case $mode in
          default) flags=() ;;
          rma) flags=(--shm-rma) ;;
          gets-two-sided) flags=(--shm-two-sided-gets-from 0) ;;
          checksums-first) flags=(--trailing-checksums-from 0) ;;
          esac
          timeout 30 "$dir/strata-bench" --blocks "$blocks" --block-size "$size" --streams 1 \
            --batch 16 --ops put,get --transport ucx --ucx-tls shm "${flags[@]}" \
            --json "$out/shm_ab/$size-$mode-$round.json" 2>&1 | grep -E '^(put|get) ' |
            sed "s/^/$size $mode: /"
        done
      done
    done
  fi
  echo "== bench/cluster_bench.py (issue 5)"
  timeout "${CLUSTER_BENCH_TIMEOUT:-150}" python3 "$repo/bench/cluster_bench.py" \
    --bindir "$dir" --json "$out/cluster_bench.json" 2>&1 | tee "$out/cluster_bench.log"
  peer_rc=$((peer_rc | PIPESTATUS[0]))
  if [[ -x "$dir/strata-lookup-bench" ]]; then
    echo "== strata-lookup-bench (a lookup's per-block work without gRPC)"
    timeout 60 "$dir/strata-lookup-bench" --json "$out/lookup_bench.json" 2>&1 |
      tee "$out/lookup_bench.log"
    peer_rc=$((peer_rc | PIPESTATUS[0]))
  fi
  echo "== peer_bench / cluster_bench exit $peer_rc"
fi
[[ $test_rc -eq 0 && $agent_rc -eq 0 && $bench_rc -eq 0 && $peer_rc -eq 0 ]]
EOF
chmod +x "$carry/run.sh"

echo "gpu_device_check: packed $(du -sh "$carry/bundle.tar.xz" | cut -f1) in $carry"
echo "on the GPU machine (repository root, carrying $carry): bash $carry/run.sh"
