#!/usr/bin/env bash
# Runs on the GPU machine (device tool) from the repository root, with .gpu/bundle.tgz carried:
# the CUDA conformance tests (sampling included), the selection-cost benchmark on the CUDA
# backend, and the end-to-end comparison of full fp32 logits vs a sampled token + top-20 through
# the server. Logs go to $OUT. Usage: bash kernels/bench/run_selection_on_gpu.sh
set -uo pipefail
source kernels/bench/gpu_bundle_env.sh
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"

echo "== conformance"
LMHEAD_CUDA_MODULE=$BIN/liblmhead_cuda.so LMHEAD_REQUIRE_CUDA=1 timeout 300 $BIN/cuda_backend_test 2>&1 \
  | tee "$OUT/conformance.log" | grep -E "^\[  (PASSED|FAILED|SKIPPED) |FAILED|Failure|accuracy|sampling \]" | head -40

echo "== selection cost (backend alone)"
timeout 240 $BIN/lmhead-selection-bench --backend=cuda --cuda_module=$BIN/liblmhead_cuda.so --vocab=131072 --hidden=5120 \
  --batches=1,64,512 --reps=30 2>&1 | tee "$OUT/selection_cuda.md"

echo "== end to end: full logits vs sampled token + top-20"
$BIN/lmhead-make-checkpoint --out=/tmp/ckpt --vocab=131072 --hidden=5120 > /dev/null 2>&1
$BIN/lmhead-server --checkpoint=/tmp/ckpt --backend=cuda --cuda_module=$BIN/liblmhead_cuda.so --listen=127.0.0.1:50051 \
  --metrics_listen=127.0.0.1:9400 --max_rows_per_request=64 > "$OUT/server.log" 2>&1 &
SERVER=$!
for _ in $(seq 1 300); do $BIN/lmhead health > /dev/null 2>&1 && break; sleep 0.2; done
$BIN/lmhead logits --rows=1 --top_k=3 --sample=temperature=0.8,top_p=0.95,seed=1 | head -6
for rows in 1 16; do
  for mode in logits sample; do
    if [ $mode = logits ]; then args="--logits"; else args="--sample=temperature=0.8,top_p=0.95 --top_k=20"; fi
    echo "-- rows=$rows $mode"
    $BIN/lmhead-bench --mode=unary --concurrency=1 --rows=$rows --count=300 --progress=false $args 2>&1 | tee -a "$OUT/e2e.log"
  done
done
kill -TERM $SERVER; wait $SERVER; echo "server exit $?"
