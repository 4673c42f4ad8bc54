#!/usr/bin/env bash
# One command from a fresh Debian 12 machine to a running lmhead: installs dependencies, builds,
# writes a demo checkpoint, starts the server, calls it (info, logits, stream) and shows the
# memory metrics. Environment: LMHEAD_PORT (50051), LMHEAD_METRICS_PORT (9400),
# DEMO_VOCAB (32000), DEMO_HIDDEN (2048), KEEP_RUNNING=1 to leave the server up.
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${LMHEAD_PORT:-50051}
METRICS_PORT=${LMHEAD_METRICS_PORT:-9400}
VOCAB=${DEMO_VOCAB:-32000}
HIDDEN=${DEMO_HIDDEN:-2048}
CKPT=build/demo-checkpoint-${VOCAB}x${HIDDEN}

bash deploy/install-deps.sh
bash deploy/build.sh

echo "== demo checkpoint: $CKPT"
[ -f "$CKPT/config.json" ] || build/service/lmhead-make-checkpoint --out="$CKPT" --vocab="$VOCAB" --hidden="$HIDDEN"

echo "== starting lmhead-server on 127.0.0.1:$PORT (metrics on :$METRICS_PORT)"
build/service/lmhead-server --checkpoint="$CKPT" --listen="127.0.0.1:$PORT" \
  --metrics_listen="127.0.0.1:$METRICS_PORT" > build/lmhead-server.log 2>&1 &
SERVER=$!
stop() { if [ -z "${KEEP_RUNNING:-}" ]; then kill -TERM "$SERVER" 2>/dev/null && wait "$SERVER" || true; fi; }
trap stop EXIT
CLI="build/client/lmhead --target=127.0.0.1:$PORT"
for _ in $(seq 1 300); do
  $CLI health > /dev/null 2>&1 && break
  kill -0 "$SERVER" 2>/dev/null || { cat build/lmhead-server.log; exit 1; }
  sleep 0.2
done
$CLI health

echo "== lmhead info"
$CLI info
echo "== lmhead logits (2 seeded random hidden states, top 5)"
$CLI logits --rows=2 --top_k=5 --ids=0,1
echo "== lmhead logits with a sampled token (temperature 0.8, top-p 0.95, seed 7)"
$CLI logits --rows=1 --top_k=3 --sample=temperature=0.8,top_p=0.95,seed=7
echo "== lmhead stream (8 decode steps on one stream)"
$CLI stream --steps=8 --top_k=1
echo "== metrics (http://127.0.0.1:$METRICS_PORT/metrics)"
curl -s "http://127.0.0.1:$METRICS_PORT/metrics" | grep -E '^lmhead_(weight|vocab|hidden|model_load|requests_total\{code="OK")'
if [ -n "${KEEP_RUNNING:-}" ]; then
  echo "server left running (pid $SERVER); stop it with: kill $SERVER"
  trap - EXIT
fi
