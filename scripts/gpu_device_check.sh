#!/usr/bin/env bash
# Packs the GPU checks for a GPU machine that lacks our Debian libraries: copies
# cuda_copy_test, gpu_agent_device_test (with the strata-storenode it starts) and
# strata-gpu-copy-bench, stripped of debug info, with every shared library they load except
# the C library's own parts and the NVIDIA driver's, into build/gpu-carry/ (under the device
# tool's 64 MiB), and writes build/gpu-carry/run.sh, which runs them there (< 2 min) and
# leaves their output in $OUT (or build/gpu-carry/out).
#
# Here, after a debug build of the two targets:
#   cmake --build --preset debug -j1 --target cuda_copy_test gpu_agent_device_test \
#     strata-storenode strata-gpu-copy-bench
#   scripts/gpu_device_check.sh            # BUILD_DIR=build/<dir> to pack another build
# There (the repository root, build/gpu-carry carried along):
#   bash build/gpu-carry/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."

build_dir="${BUILD_DIR:-build/debug}"
carry=build/gpu-carry
binaries=(cuda_copy_test gpu_agent_device_test strata-storenode strata-gpu-copy-bench)

for b in "${binaries[@]}"; do
  if [[ ! -x "$build_dir/bin/$b" ]]; then
    echo "gpu_device_check: $build_dir/bin/$b missing; build it first:" >&2
    echo "  cmake --build --preset debug -j1 --target ${binaries[*]}" >&2
    exit 2
  fi
done

rm -rf "$carry"
mkdir -p "$carry"
for b in "${binaries[@]}"; do
  strip --strip-debug -o "$carry/$b" "$build_dir/bin/$b"
done

# Every library ldd resolves, less glibc's own (it must match the loader there), the vDSO and
# the driver (libcuda comes with the GPU machine's driver; the runtime is linked statically).
system_lib='^(linux-vdso|ld-linux|libc|libm|libmvec|libpthread|libdl|librt|libresolv|libutil'
system_lib+='|libcuda|libnvidia-)[.-]'
for b in "${binaries[@]}"; do
  ldd "$carry/$b" | awk '$2 == "=>" && $3 ~ /^\// {print $1, $3}'
done | sort -u | while read -r name path; do
  if [[ "$name" =~ $system_lib ]]; then continue; fi
  cp -L "$path" "$carry/$name"
done

missing=$(for b in "${binaries[@]}"; do ldd "$carry/$b" | grep "not found" || true; done)
if [[ -n "$missing" ]]; then
  echo "gpu_device_check: unresolved libraries:" >&2
  echo "$missing" >&2
  exit 1
fi

cat >"$carry/run.sh" <<'EOF'
#!/usr/bin/env bash
# Written by scripts/gpu_device_check.sh: the CUDA copy engine's test and a short bench on
# this machine's GPU, with the libraries packed beside them. Output in $OUT (or ./out here).
set -uo pipefail
dir="$(cd "$(dirname "$0")" && pwd)"
out="${OUT:-$dir/out}"
mkdir -p "$out"
export LD_LIBRARY_PATH="$dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
chmod +x "$dir"/cuda_copy_test "$dir"/gpu_agent_device_test "$dir"/strata-storenode \
  "$dir"/strata-gpu-copy-bench 2>/dev/null
export STRATA_BIN_DIR="$dir"

nvidia-smi --query-gpu=name,driver_version,memory.total,pcie.link.gen.max,pcie.link.width.max \
  --format=csv 2>&1 | tee "$out/nvidia-smi.txt"

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
[[ $test_rc -eq 0 && $agent_rc -eq 0 && $bench_rc -eq 0 ]]
EOF
chmod +x "$carry/run.sh"

files=$(find "$carry" -type f | wc -l)
echo "gpu_device_check: packed $files files, $(du -sh "$carry" | cut -f1), in $carry"
echo "on the GPU machine (repository root, carrying $carry): bash $carry/run.sh"
