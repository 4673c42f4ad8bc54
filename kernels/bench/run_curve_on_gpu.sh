#!/usr/bin/env bash
# Runs on the GPU machine (device tool) from the repository root with .gpu/bundle.tgz carried:
# the latency/throughput curve of the server on the CUDA backend (131072x5120 head) over 1..64
# concurrent B=1 streams, and the same for 64-row steps. One JSON line per point in $OUT/curve.jsonl
# (plot with client/loadgen/plot_curve.py).
set -uo pipefail
source kernels/bench/gpu_bundle_env.sh
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
$BIN/lmhead-make-checkpoint --out=/tmp/ckpt --vocab=131072 --hidden=5120 > /dev/null 2>&1
$BIN/lmhead-server --checkpoint=/tmp/ckpt --backend=cuda --listen=127.0.0.1:50051 --metrics_listen= \
  --max_batch_rows=512 --max_queued_rows=65536 > "$OUT/server.log" 2>&1 &
SERVER=$!
for _ in $(seq 1 300); do $BIN/lmhead health > /dev/null 2>&1 && break; sleep 0.2; done
: > "$OUT/curve.jsonl"
for rows in 1 64; do
  for c in 1 2 4 8 16 32 64; do
    j=$($BIN/lmhead-bench --mode=stream --concurrency=$c --rows=$rows --duration=4s --progress=false --json --top_k=20)
    echo "{\"rows\": $rows, \"concurrency\": $c, \"result\": $j}" | tee -a "$OUT/curve.jsonl"
  done
done
kill -TERM $SERVER; wait $SERVER
