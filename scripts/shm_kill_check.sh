#!/usr/bin/env bash
# Kills shared-memory put streams at random moments and checks after each kill that a fresh
# client still gets a put through (docs/design/transfer-protocol.md, "A wedged lane"): a client
# killed mid-send can leave a node lane unable to read any message; the node's lane check
# must replace it. Prints each failed check and, at the end, the failures and the lanes the
# node replaced.
#
#   scripts/shm_kill_check.sh [KILLS] [BIN_DIR]     (defaults: 80, build/debug/bin)
#
# Bounded: each kill comes within 2 s, each check has 20 s; about 8 s a round in all.
set -euo pipefail
kills=${1:-80}
bin=${2:-build/debug/bin}
work=$(mktemp -d)
trap 'kill "$node" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
"$bin/strata-storenode" --listen 127.0.0.1:0 --port-file "$work/ports" --warm-bytes 1GiB \
  --max-block-bytes 4MiB --ucx-tls shm --log-level error >"$work/node.log" 2>&1 &
node=$!
for _ in $(seq 100); do [[ -s "$work/ports" ]] && break; sleep 0.1; done
address=$(sed -n 's/^grpc=//p' "$work/ports")
[[ -n "$address" ]] || { echo "the node did not start"; cat "$work/node.log"; exit 1; }
failed=0
for i in $(seq "$kills"); do
  "$bin/strata-bench" --node "$address" --blocks 3072 --block-size 1MiB --streams 4 --ops put \
    --transport ucx --max-seconds 30 --seed "$i" >/dev/null 2>&1 &
  victim=$!
  sleep "$(awk -v r="$RANDOM" 'BEGIN { printf "%.2f", 0.4 + 1.2 * r / 32767 }')"
  kill -9 "$victim" 2>/dev/null || true
  wait "$victim" 2>/dev/null || true
  if ! timeout 20 "$bin/strata-bench" --node "$address" --blocks 64 --block-size 1MiB \
      --streams 4 --ops put --transport ucx --call-timeout 5 --max-seconds 10 \
      --seed $((100000 + i)) >"$work/check.log" 2>&1 ||
      grep -q "errors *[1-9]" "$work/check.log"; then
    failed=$((failed + 1))
    echo "kill $i: the check put failed"
  fi
done
replaced=$(grep -c "replaced its UCX worker" "$work/node.log" || true)
echo "kills=$kills failed_checks=$failed lanes_replaced=$replaced"
