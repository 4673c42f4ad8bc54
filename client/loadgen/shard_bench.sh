#!/usr/bin/env bash
# Latency and throughput of a vocab-sharded head (1, 2 and 4 shard processes on loopback, CPU
# backend) through ShardedClient, and the bytes per row on the wire: merged compact results
# (argmax + top-20 + sample) against full fp32 logits. Prints a markdown table. The machine's
# cores are split evenly among the shard processes (so 1 shard gets all of them).
# Usage: client/loadgen/shard_bench.sh [BUILD_DIR] [VOCAB] [HIDDEN] [SECONDS]
set -euo pipefail
B=${1:-build}
VOCAB=${2:-32000}
HIDDEN=${3:-4096}
SECS=${4:-5}
BACKEND=${BACKEND:-cpu}
DEVICES=${DEVICES:-}   # e.g. "0 1" to pin shard i to GPU DEVICES[i] (CUDA backend)
CORES=$(nproc)
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"' EXIT
"$B/service/lmhead-make-checkpoint" --out="$WORK/ckpt" --vocab="$VOCAB" --hidden="$HIDDEN" > /dev/null
PORT=51300
echo "| shards | rows/request | concurrency | requests/s | rows/s | p50 ms | p99 ms | response bytes/row |"
echo "|---|---|---|---|---|---|---|---|"
for N in 1 2 4; do
  targets=()
  devs=($DEVICES)
  for ((i = 0; i < N; i++)); do
    PORT=$((PORT + 1))
    extra=()
    if [ ${#devs[@]} -gt 0 ]; then extra+=(--device="${devs[$((i % ${#devs[@]}))]}"); fi
    "$B/service/lmhead-server" --checkpoint="$WORK/ckpt" --shard="$i/$N" --listen=127.0.0.1:$PORT --metrics_listen= \
      --backend="$BACKEND" --threads=$(( CORES / N > 0 ? CORES / N : 1 )) --max_rows_per_request=512 "${extra[@]}" > "$WORK/s$PORT.log" 2>&1 &
    targets+=("127.0.0.1:$PORT")
  done
  for t in "${targets[@]}"; do
    for _ in $(seq 1 600); do "$B/client/lmhead" --target="$t" health > /dev/null 2>&1 && break; sleep 0.2; done
  done
  SHARDS=$(IFS=';'; echo "${targets[*]}")
  for spec in "1 1" "1 8" "16 8"; do
    set -- $spec
    for mode in compact logits; do
      if [ $mode = logits ]; then out="--logits"; else out="--top_k=20 --sample=temperature=0.8"; fi
      json=$("$B/client/lmhead-bench" --shards="$SHARDS" --mode=unary --rows=$1 --concurrency=$2 \
        --duration=${SECS}s --progress=false --json $out)
      python3 - "$N" "$1" "$2" "$mode" "$json" <<'PY'
import json, sys
n, rows, conc, mode, j = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], json.loads(sys.argv[5])
label = "full fp32 logits" if mode == "logits" else "argmax + top-20 + sample"
print(f"| {n} | {rows} ({label}) | {conc} | {j['requests_per_second']:.1f} | {j['rows_per_second']:.1f} | "
      f"{j['latency_ms']['p50']:.3f} | {j['latency_ms']['p99']:.3f} | {j['mean_response_bytes'] / rows:.0f} |")
PY
    done
  done
  kill $(jobs -p) 2>/dev/null; wait 2>/dev/null || true
done
