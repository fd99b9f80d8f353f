#!/usr/bin/env bash
# End to end over TCP JSON lines with the default model: streamed client reply, concurrent
# greedy requests equal to the same request alone, bad input answered while the connection
# keeps serving, cancellation, a short bench-serve, KV blocks all free afterwards, and a
# SIGTERM drain that lets the in-flight request finish and exits 0.
set -u
BIN=${TPNODE_BIN:-}
SRC=${TPNODE_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
MODEL=${TPNODE_MODEL:-$SRC/models/SmolLM2-135M-Instruct.Q4_1.gguf}
[ -n "$BIN" ] && [ -x "$BIN" ] || { echo "skip: TPNODE_BIN is not an executable"; exit 77; }
"$BIN" serve --help >/dev/null 2>&1 || { echo "skip: this tpnode has no serve command"; exit 77; }
[ -f "$MODEL" ] || { echo "skip: model $MODEL is missing (launch/fetch_model.sh)"; exit 77; }
command -v curl >/dev/null || { echo "skip: curl is missing"; exit 77; }

WORK=$(mktemp -d)
: >"$WORK/serve.log"  # exists before the background job opens it
"$BIN" serve -m "$MODEL" --backend cpu --port 0 --http-port 0 --ctx 1024 --no-progress \
  >"$WORK/serve.log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null; rm -rf "$WORK"' EXIT
fail() { echo "FAIL: $*"; echo "--- server log"; tail -30 "$WORK/serve.log"; exit 1; }

for _ in $(seq 1 600); do
  grep -q "ready:" "$WORK/serve.log" && break
  kill -0 $PID 2>/dev/null || fail "server exited while loading"
  sleep 0.2
done
grep -q "ready:" "$WORK/serve.log" || fail "server not ready after 120 s"
PORT=$(grep -o "TCP JSON lines on [0-9.]*:[0-9]*" "$WORK/serve.log" | sed 's/.*://')
HTTP=$(grep -o "HTTP on [0-9.]*:[0-9]*" "$WORK/serve.log" | sed 's/.*://')
echo "server on TCP $PORT, HTTP $HTTP"

# 1. A streamed greedy reply.
ALONE=$("$BIN" client --port "$PORT" -p "The capital of France is" -n 16 --no-usage) ||
  fail "client failed"
[ -n "$ALONE" ] || fail "empty reply"
echo "alone: $ALONE"

# 2. The same request among concurrent others gives the same text.
for i in 1 2 3; do
  "$BIN" client --port "$PORT" -p "The capital of France is" -n 16 --no-usage >"$WORK/same$i" &
  "$BIN" client --port "$PORT" -p "Write a list of fruits number $i:" -n 20 --no-usage \
    >"$WORK/other$i" &
done
wait $(jobs -p | grep -v "^$PID$") 2>/dev/null
for i in 1 2 3; do
  [ "$(cat "$WORK/same$i")" = "$ALONE" ] || fail "concurrent reply $i differs: $(cat "$WORK/same$i")"
  [ -s "$WORK/other$i" ] || fail "other reply $i empty"
done

# 3. Bad input gets an error; the same connection then serves a good request.
exec 3<>/dev/tcp/127.0.0.1/"$PORT"
printf '{not json\n' >&3
read -r -t 30 LINE <&3 || fail "no reply to bad JSON"
echo "$LINE" | grep -q '"code":"bad_request"' || fail "bad JSON: $LINE"
printf '{"id":"x","prompt":"hi","max_tokens":"many"}\n' >&3
read -r -t 30 LINE <&3 || fail "no reply to a bad field"
echo "$LINE" | grep -q '"id":"x","error":{"code":"bad_request"' || fail "bad field: $LINE"
printf '{"id":"ok","prompt":"Hello","max_tokens":4}\n' >&3
read -r -t 60 LINE <&3 || fail "no reply after errors"
echo "$LINE" | grep -q '"done":true' || fail "good request after errors: $LINE"

# 4. Cancellation.
printf '{"id":"long","prompt":"Tell me a story","max_tokens":500,"ignore_eos":true,"stream":true}\n' >&3
read -r -t 60 LINE <&3 || fail "no streamed text"
printf '{"cancel":"long"}\n' >&3
while read -r -t 60 LINE <&3; do
  case "$LINE" in *'"done":true'*) break ;; esac
done
echo "$LINE" | grep -q '"finish_reason":"cancelled"' || fail "cancel: $LINE"
exec 3>&-

# 5. A short load test.
"$BIN" bench-serve --port "$PORT" -c 4 -r 8 --prompt-words 16 --gen-tokens 8 >"$WORK/bench" 2>&1 ||
  fail "bench-serve: $(cat "$WORK/bench")"
grep -q "requests: 8 ok" "$WORK/bench" || fail "bench-serve: $(cat "$WORK/bench")"
# Its wall time runs to the last reply, not to the next tick of its progress display (2 s).
"$BIN" bench-serve --port "$PORT" -c 1 -r 1 --prompt-words 4 --gen-tokens 2 >"$WORK/bench1" 2>&1 ||
  fail "bench-serve: $(cat "$WORK/bench1")"
WALL=$(sed -n 's/^requests: 1 ok, 0 failed, 1 clients, \([0-9.]*\) s$/\1/p' "$WORK/bench1")
[ -n "$WALL" ] && awk -v w="$WALL" 'BEGIN { exit !(w < 1.5) }' ||
  fail "bench-serve wall time '$WALL' for one short request: $(cat "$WORK/bench1")"

# 6. Every KV block is free again.
sleep 0.5
curl -s "http://127.0.0.1:$HTTP/metrics" | grep -q "^tpnode_kv_blocks_used 0$" ||
  fail "KV blocks still in use: $(curl -s "http://127.0.0.1:$HTTP/metrics" | grep kv_blocks)"

# 7. SIGTERM drains: the in-flight request finishes, the server exits 0.
"$BIN" client --port "$PORT" -p "Count from one to twenty:" -n 24 --ignore-eos >"$WORK/drain" 2>&1 &
CLIENT=$!
for _ in $(seq 1 100); do
  curl -s "http://127.0.0.1:$HTTP/metrics" | grep -q "^tpnode_running_sequences 1$" && break
  sleep 0.05
done
kill -TERM $PID
wait $PID
RC=$?
wait $CLIENT || fail "client during drain: $(cat "$WORK/drain")"
grep -q "finish: length" "$WORK/drain" || fail "drained request did not finish: $(cat "$WORK/drain")"
[ $RC -eq 0 ] || fail "server exit code $RC after SIGTERM"
grep -q "stopped" "$WORK/serve.log" || fail "no clean stop in the log"
echo "PASS"
