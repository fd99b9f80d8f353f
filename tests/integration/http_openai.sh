#!/usr/bin/env bash
# The official openai Python package (completions and chat, streaming and not) against
# `tpnode serve` with the default model. Skipped when python3 or openai is missing.
set -u
BIN=${TPNODE_BIN:-}
SRC=${TPNODE_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
MODEL=${TPNODE_MODEL:-$SRC/models/SmolLM2-135M-Instruct.Q4_1.gguf}
[ -n "$BIN" ] && [ -x "$BIN" ] || { echo "skip: TPNODE_BIN is not an executable"; exit 77; }
"$BIN" serve --help >/dev/null 2>&1 || { echo "skip: this tpnode has no serve command"; exit 77; }
[ -f "$MODEL" ] || { echo "skip: model $MODEL is missing (launch/fetch_model.sh)"; exit 77; }
command -v python3 >/dev/null || { echo "skip: python3 is missing"; exit 77; }
python3 -c "import openai" 2>/dev/null || { echo "skip: the openai package is missing"; exit 77; }

WORK=$(mktemp -d)
: >"$WORK/serve.log"
"$BIN" serve -m "$MODEL" --backend cpu --port 0 --http-port 0 --ctx 1024 --no-progress \
  >"$WORK/serve.log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null; rm -rf "$WORK"' EXIT
for _ in $(seq 1 600); do
  grep -q "ready:" "$WORK/serve.log" && break
  kill -0 $PID 2>/dev/null || { tail -20 "$WORK/serve.log"; exit 1; }
  sleep 0.2
done
HTTP=$(grep -o "HTTP on [0-9.]*:[0-9]*" "$WORK/serve.log" | sed 's/.*://')
[ -n "$HTTP" ] || { echo "FAIL: server not ready"; tail -20 "$WORK/serve.log"; exit 1; }
python3 "$(dirname "$0")/openai_client.py" "http://127.0.0.1:$HTTP/v1"
RC=$?
[ $RC -eq 0 ] || tail -20 "$WORK/serve.log"
exit $RC
