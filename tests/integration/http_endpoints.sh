#!/usr/bin/env bash
# End to end over HTTP with the default model: every endpoint with curl, streaming and
# not, the error status codes, keep-alive, and /metrics in the Prometheus text format.
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
"$BIN" serve -m "$MODEL" --backend cpu --port 0 --http-port 0 --ctx 512 --max-body-bytes 65536 \
  --model-name smol --no-progress >"$WORK/serve.log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null; rm -rf "$WORK"' EXIT
fail() { echo "FAIL: $*"; echo "--- server log"; tail -30 "$WORK/serve.log"; exit 1; }

for _ in $(seq 1 300); do
  grep -q "HTTP on" "$WORK/serve.log" && break
  sleep 0.1
done
HTTP=$(grep -o "HTTP on [0-9.]*:[0-9]*" "$WORK/serve.log" | sed 's/.*://')
[ -n "$HTTP" ] || fail "no HTTP port in the log"
URL="http://127.0.0.1:$HTTP"
# status METHOD PATH [BODY] -> prints the status code; the body goes to $WORK/body
status() {
  if [ $# -ge 3 ]; then
    curl -s -o "$WORK/body" -w '%{http_code}' -X "$1" "$URL$2" -H 'Content-Type: application/json' \
      --data-binary "$3"
  else
    curl -s -o "$WORK/body" -w '%{http_code}' -X "$1" "$URL$2"
  fi
}

# /health is 503 while loading (when we catch it), then 200.
for _ in $(seq 1 600); do
  CODE=$(status GET /health)
  [ "$CODE" = 200 ] && break
  [ "$CODE" = 503 ] || [ "$CODE" = 000 ] || fail "/health while loading: $CODE"
  sleep 0.2
done
[ "$CODE" = 200 ] || fail "/health never became 200"
grep -q '"status":"ok"' "$WORK/body" || fail "/health body: $(cat "$WORK/body")"

[ "$(status GET /v1/models)" = 200 ] || fail "/v1/models"
grep -q '"id":"smol"' "$WORK/body" || fail "/v1/models body: $(cat "$WORK/body")"

[ "$(status POST /v1/completions '{"model":"smol","prompt":"The capital of France is","max_tokens":8,"temperature":0}')" = 200 ] ||
  fail "completion: $(cat "$WORK/body")"
grep -q '"object":"text_completion"' "$WORK/body" || fail "completion body: $(cat "$WORK/body")"
grep -q 'Paris' "$WORK/body" || fail "completion text: $(cat "$WORK/body")"
grep -q '"usage":{"prompt_tokens":5,"completion_tokens":8,"total_tokens":13}' "$WORK/body" ||
  fail "completion usage: $(cat "$WORK/body")"

[ "$(status POST /v1/chat/completions '{"messages":[{"role":"user","content":"What is the capital of France?"}],"max_tokens":16,"temperature":0}')" = 200 ] ||
  fail "chat: $(cat "$WORK/body")"
grep -q '"role":"assistant"' "$WORK/body" || fail "chat body: $(cat "$WORK/body")"

curl -sN "$URL/v1/completions" -d '{"prompt":"Once upon a time","max_tokens":8,"stream":true,"stream_options":{"include_usage":true}}' \
  >"$WORK/sse" || fail "stream"
[ "$(grep -c '^data: ' "$WORK/sse")" -ge 10 ] || fail "stream events: $(cat "$WORK/sse")"
[ "$(grep '^data: ' "$WORK/sse" | tail -1)" = "data: [DONE]" ] || fail "stream end: $(tail -3 "$WORK/sse")"
grep -q '"finish_reason":"length"' "$WORK/sse" || fail "stream finish: $(cat "$WORK/sse")"
grep -q '"completion_tokens":8' "$WORK/sse" || fail "stream usage: $(cat "$WORK/sse")"

curl -sN "$URL/v1/chat/completions" -d '{"messages":[{"role":"user","content":"Hi"}],"max_tokens":6,"stream":true}' \
  >"$WORK/sse" || fail "chat stream"
grep -q '"delta":{"role":"assistant"' "$WORK/sse" || fail "chat stream role: $(head -2 "$WORK/sse")"
[ "$(grep '^data: ' "$WORK/sse" | tail -1)" = "data: [DONE]" ] || fail "chat stream end"

# Errors.
[ "$(status POST /v1/completions '{oops')" = 400 ] || fail "bad JSON not 400"
[ "$(status POST /v1/completions '{"prompt":"x","n":2}')" = 400 ] || fail "n=2 not 400"
[ "$(status POST /v1/completions '{"prompt":"x","max_tokens":"ten"}')" = 400 ] || fail "bad field not 400"
[ "$(status POST /v1/chat/completions '{"prompt":"x"}')" = 400 ] || fail "chat without messages not 400"
LONG=$(printf 'word %.0s' $(seq 1 2000))
[ "$(status POST /v1/completions "{\"prompt\":\"$LONG\"}")" = 400 ] || fail "prompt past the context not 400"
grep -q too_long "$WORK/body" || fail "too long body: $(cat "$WORK/body")"
head -c 70000 /dev/zero | tr '\0' ' ' >"$WORK/big"
[ "$(curl -s -o /dev/null -w '%{http_code}' "$URL/v1/completions" --data-binary @"$WORK/big")" = 413 ] ||
  fail "large body not 413"
[ "$(status GET /nope)" = 404 ] || fail "unknown path not 404"
[ "$(status GET /v1/completions)" = 405 ] || fail "GET completions not 405"
[ "$(status POST /v1/completions '{"prompt":"x","max_tokens":2000,"ignore_eos":true,"timeout":0.2}')" = 504 ] ||
  fail "deadline not 504: $(cat "$WORK/body")"

# Keep-alive: two requests, one connection.
curl -sv "$URL/health" "$URL/v1/models" -o /dev/null -o /dev/null 2>"$WORK/verbose"
grep -q "Re-using existing connection" "$WORK/verbose" || fail "no keep-alive"

# /metrics: Prometheus text, with what happened above.
[ "$(status GET /metrics)" = 200 ] || fail "/metrics"
grep -q '^tpnode_requests_total{outcome="length"} [1-9]' "$WORK/body" || fail "metrics: requests"
grep -q '^tpnode_requests_total{outcome="bad_request"} [1-9]' "$WORK/body" || fail "metrics: bad"
grep -q '^tpnode_time_to_first_token_seconds_bucket{le="+Inf"} [1-9]' "$WORK/body" || fail "metrics: ttft"
# Every line is a comment or `name{labels} value`.
BAD=$(grep -v -E '^# (HELP|TYPE) [a-z_]+ .+$|^[a-z_]+(\{[a-z_]+="[^"]*"\})? [-+0-9.eInf]+$' "$WORK/body")
[ -z "$BAD" ] || fail "metrics lines not in the text format: $BAD"

kill -TERM $PID
wait $PID || fail "server exit code $? after SIGTERM"
echo "PASS"
