#!/usr/bin/env bash
# Runs on a multi-GPU machine (device tool, e.g. nvidia-h100-x2) from the repository root with
# .gpu/bundle.tgz carried: for each head shape, one unsharded server on GPU 0 and N shard servers,
# shard i pinned to GPU i (--device=i), each holding 1/N of the head; then per-GPU memory, latency
# at B = 1, 64, 512 (unsharded vs sharded), throughput with 64 streams, the merge overhead and a
# correctness check (ids equal, logprobs within 1e-3). Results go to $OUT.
set -uo pipefail
source kernels/bench/gpu_bundle_env.sh
N=$(nvidia-smi --query-gpu=index --format=csv,noheader | wc -l)
nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv | tee "$OUT/gpus.txt"
SHAPES=${SHAPES:-"131072x5120 152064x8192"}
COMMON="--metrics_listen= --backend=cuda --max_rows_per_request=512 --max_batch_rows=512 --max_queued_rows=65536"

wait_up() { for _ in $(seq 1 600); do $BIN/lmhead --target="$1" health > /dev/null 2>&1 && return 0; sleep 0.2; done; return 1; }
bench() {  # bench LABEL ARGS... -> one table row
  local label=$1; shift
  local j
  j=$($BIN/lmhead-bench "$@" --progress=false --json --top_k=20)
  python3 - "$label" "$j" <<'PY'
import json, sys
j = json.loads(sys.argv[2])
print(f"| {sys.argv[1]} | {j['requests_per_second']:.1f} | {j['rows_per_second']:.0f} | {j['latency_ms']['p50']:.3f} | "
      f"{j['latency_ms']['p99']:.3f} | {sum(j['errors'].values())} |")
PY
}

for SHAPE in $SHAPES; do
  V=${SHAPE%x*}; H=${SHAPE#*x}
  echo "== $SHAPE on $N GPUs" | tee -a "$OUT/shards.md"
  $BIN/lmhead-make-checkpoint --out=/tmp/ck_$SHAPE --vocab=$V --hidden=$H > /dev/null 2>&1
  $BIN/lmhead-server --checkpoint=/tmp/ck_$SHAPE --listen=127.0.0.1:52000 --device=0 $COMMON > "$OUT/whole_$SHAPE.log" 2>&1 &
  WHOLE=$!
  wait_up 127.0.0.1:52000
  nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader > "$OUT/mem_whole_$SHAPE.txt"
  kill -TERM $WHOLE; wait $WHOLE
  # Per-GPU memory of the shards alone (the unsharded server is restarted afterwards).
  PIDS=(); TARGETS=()
  for ((i = 0; i < N; i++)); do
    $BIN/lmhead-server --checkpoint=/tmp/ck_$SHAPE --shard=$i/$N --listen=127.0.0.1:$((52001 + i)) --device=$i $COMMON \
      > "$OUT/shard${i}_$SHAPE.log" 2>&1 &
    PIDS+=($!); TARGETS+=(127.0.0.1:$((52001 + i)))
  done
  for t in "${TARGETS[@]}"; do wait_up $t; done
  nvidia-smi --query-gpu=index,memory.used --format=csv,noheader > "$OUT/mem_shards_$SHAPE.txt"
  nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader >> "$OUT/mem_shards_$SHAPE.txt"
  $BIN/lmhead-server --checkpoint=/tmp/ck_$SHAPE --listen=127.0.0.1:52000 --device=0 $COMMON >> "$OUT/whole_$SHAPE.log" 2>&1 &
  WHOLE=$!
  wait_up 127.0.0.1:52000
  SHARDS=$(IFS=';'; echo "${TARGETS[*]}")
  {
    echo "memory (MiB), unsharded process on GPU 0: $(cut -d, -f2 "$OUT/mem_whole_$SHAPE.txt" | tr '\n' ' ')"
    echo "memory (MiB) with the $N shards up, per GPU: $(head -$N "$OUT/mem_shards_$SHAPE.txt" | tr '\n' ' ')"
    grep -h "loaded" "$OUT"/shard*_$SHAPE.log | sed 's/^.*Z //'
    echo
    echo "| config | requests/s | rows/s | p50 ms | p99 ms | errors |"
    echo "|---|---|---|---|---|---|"
    for B in 1 64 512; do
      bench "1 GPU, B=$B, 1 caller" --target=127.0.0.1:52000 --mode=unary --concurrency=1 --rows=$B --count=$((B >= 512 ? 40 : 200))
      bench "$N shards, B=$B, 1 caller" --shards="$SHARDS" --mode=unary --concurrency=1 --rows=$B --count=$((B >= 512 ? 40 : 200))
    done
    bench "1 GPU, 64 streams of B=1" --target=127.0.0.1:52000 --mode=stream --concurrency=64 --rows=1 --duration=8s
    bench "$N shards, 64 streams of B=1" --shards="$SHARDS" --mode=stream --concurrency=64 --rows=1 --duration=8s
    bench "1 GPU, 8 streams of B=64" --target=127.0.0.1:52000 --mode=stream --concurrency=8 --rows=64 --duration=8s
    bench "$N shards, 8 streams of B=64" --shards="$SHARDS" --mode=stream --concurrency=8 --rows=64 --duration=8s
    echo
    $BIN/lmhead-shard-check --whole=127.0.0.1:52000 --shards="$SHARDS" --batches=1,64,512 --requests=4; echo "shard-check exit $?"
    echo
  } 2>&1 | tee -a "$OUT/shards.md"
  kill -TERM $WHOLE "${PIDS[@]}"; wait
done
