#!/usr/bin/env bash
# Service-level benchmark on the GPU machine (device tool, .gpu/bundle.tgz carried): the same load
# against a transport-only echo server (the ceiling) and against lmhead-server on the CUDA
# backend: (a) 64 streams of B=1, (b) 8 streams of 64-row steps. Results in $OUT/service_gpu.md.
# Env: VOCAB (131072), HIDDEN (5120), RUN_SECONDS (10), BACKEND (cuda).
set -uo pipefail
source kernels/bench/gpu_bundle_env.sh
VOCAB=${VOCAB:-131072}
HIDDEN=${HIDDEN:-5120}
SECONDS_PER_RUN=${RUN_SECONDS:-10}
BACKEND=${BACKEND:-cuda}
$BIN/lmhead-make-checkpoint --out=/tmp/svc_ckpt --vocab=$VOCAB --hidden=$HIDDEN > /dev/null 2>&1

load() {  # name target concurrency rows
  $BIN/lmhead-bench --target=$2 --mode=stream --concurrency=$3 --rows=$4 --duration=${SECONDS_PER_RUN}s \
    --json --progress=false > "$OUT/$1_$3x$4.json"
}

$BIN/lmhead-echo-server --listen=127.0.0.1:50052 --hidden_size=$HIDDEN --vocab_size=$VOCAB > "$OUT/echo.log" 2>&1 &
ECHO=$!
sleep 1
load echo 127.0.0.1:50052 64 1
load echo 127.0.0.1:50052 8 64
kill -TERM $ECHO; wait $ECHO

$BIN/lmhead-server --checkpoint=/tmp/svc_ckpt --backend=$BACKEND --listen=127.0.0.1:50051 --metrics_listen= \
  --max_batch_rows=64 --max_rows_per_request=64 --max_queued_rows=8192 > "$OUT/server_bench.log" 2>&1 &
SERVER=$!
for _ in $(seq 1 300); do $BIN/lmhead health --target=127.0.0.1:50051 > /dev/null 2>&1 && break; sleep 0.2; done
load lmhead 127.0.0.1:50051 64 1
load lmhead 127.0.0.1:50051 8 64
kill -TERM $SERVER; wait $SERVER

python3 - "$OUT" "$HIDDEN" "$BACKEND" <<'PY' | tee "$OUT/service_gpu.md"
import json, sys, os
out, hidden, backend = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def get(name, c, r):
    with open(os.path.join(out, f"{name}_{c}x{r}.json")) as f:
        return json.load(f)
print(f"| load | server | messages/s | rows/s | request MB/s | p50 ms | p99 ms | errors | vs echo |")
print("|---|---|---|---|---|---|---|---|---|")
for c, r in ((64, 1), (8, 64)):
    echo = get("echo", c, r)
    for name in ("echo", "lmhead"):
        s = get(name, c, r)
        mbs = s["rows_per_second"] * hidden * 2 / 1e6
        ratio = s["requests_per_second"] / echo["requests_per_second"] if echo["requests_per_second"] else 0
        label = "echo (transport only)" if name == "echo" else f"lmhead ({backend})"
        print(f"| {c} streams x {r} rows | {label} | {s['requests_per_second']:.0f} | {s['rows_per_second']:.0f} | "
              f"{mbs:.1f} | {s['latency_ms']['p50']:.2f} | {s['latency_ms']['p99']:.2f} | {sum(s['errors'].values())} | "
              f"{ratio:.2f} |")
PY
