#!/usr/bin/env bash
# Runs on the GPU machine (device tool) from the repository root, with .gpu/bundle.tgz carried:
# the CUDA conformance tests, a server smoke test on the CUDA backend, and the benchmark.
# Logs and results go to $OUT. Usage: bash kernels/bench/run_on_gpu.sh [bench args...]
set -uo pipefail
source kernels/bench/gpu_bundle_env.sh
nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total --format=csv | tee "$OUT/gpu.txt"

echo "== conformance"
LMHEAD_CUDA_MODULE=$BIN/liblmhead_cuda.so LMHEAD_REQUIRE_CUDA=1 $BIN/cuda_backend_test 2>&1 | tee "$OUT/conformance.log" | grep -E "^\[  (PASSED|FAILED|SKIPPED) |OK \]|FAILED|Failure|accuracy" | head -40
grep -E "^\[  (PASSED|FAILED|SKIPPED) |^\[==========\]" "$OUT/conformance.log"  # (the summary, past the 40 lines)

echo "== server smoke test on the CUDA backend"
$BIN/lmhead-make-checkpoint --out=/tmp/ckpt --vocab=131072 --hidden=5120 > /dev/null 2>&1
$BIN/lmhead-server --checkpoint=/tmp/ckpt --backend=cuda --listen=127.0.0.1:50051 --metrics_listen=127.0.0.1:9400 \
  --threads=16 > "$OUT/server.log" 2>&1 &
SERVER=$!
for _ in $(seq 1 300); do $BIN/lmhead health > /dev/null 2>&1 && break; sleep 0.2; done
$BIN/lmhead info && $BIN/lmhead logits --rows=2 --top_k=3 && $BIN/lmhead stream --steps=20 --top_k=1 | tail -2
python3 -c "import urllib.request;print('\n'.join(l for l in urllib.request.urlopen('http://127.0.0.1:9400/metrics').read().decode().splitlines() if l.startswith(('lmhead_weight','lmhead_gpu','lmhead_backend','lmhead_compute_duration_seconds_sum','lmhead_compute_duration_seconds_count'))))"
nvidia-smi --query-compute-apps=pid,used_memory --format=csv | tee "$OUT/server_memory.txt"
kill -TERM $SERVER; wait $SERVER; echo "server exit $?"
grep -E "loaded|serving|tuning" "$OUT/server.log"; tail -2 "$OUT/server.log"

echo "== the same server with --activation_precision=fp8 (memory)"
# 200-row requests and batches: the call below runs the FP8 x FP8 GEMM (above the GEMV's 64 rows).
$BIN/lmhead-server --checkpoint=/tmp/ckpt --backend=cuda --activation_precision=fp8 --listen=127.0.0.1:50051 \
  --metrics_listen=127.0.0.1:9400 --threads=16 --max_rows_per_request=256 --max_batch_rows=256 \
  > "$OUT/server_fp8.log" 2>&1 &
SERVER=$!
for _ in $(seq 1 300); do $BIN/lmhead health > /dev/null 2>&1 && break; sleep 0.2; done
$BIN/lmhead logits --rows=200 --top_k=3 | tail -1
nvidia-smi --query-compute-apps=pid,used_memory --format=csv | tee "$OUT/server_fp8_memory.txt"
kill -TERM $SERVER; wait $SERVER; echo "server exit $?"
grep -E "loaded" "$OUT/server_fp8.log"

echo "== benchmark"
$BIN/lmhead-gpu-bench --out="$OUT/gpu_bench.md" "$@" 2>&1 | tee "$OUT/bench.log"
