#!/usr/bin/env bash
# A served request across hosts: `tpnode serve` with tp 3, one rank on each of 3 namespace
# hosts, the coordinator (rank 0) on the first; a client in the root namespace sends one
# greedy request over the TCP JSON-lines protocol and gets a streamed reply whose text equals
# tp 1's `generate --temp 0`, ending in a done line; SIGTERM to mpirun then stops every rank.
#   TPNODE_BIN=build/tpnode bash tests/multihost/serve_client.sh   (root; exit 77 = skipped)
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/netns_lib.bash"

N=32
mh_init tpmh3 10.213.3
mh_require_tpnode serve --host --port --no-http
mh_require_tpnode generate --no-progress
mh_hosts_up 3

echo "== tp 1 (root namespace)"
mh_reference "$N"

echo "== tp 3 serve on $(mh_host 1), $(mh_host 2), $(mh_host 3)"
mh_serve_start "$WORK/serve.log"
mh_serve_wait_ready "$WORK/serve.log" 300

echo "== one request from the root namespace"
t0="$(mh_now)"
mh_request "$WORK/reply" 120 \
  "{\"id\":\"r1\",\"prompt\":\"$MH_PROMPT\",\"max_tokens\":$N,\"temperature\":0,\"stream\":true}"
echo "   reply ended with '$MH_REPLY_END' after $(mh_elapsed "$t0") s, $(wc -l <"$WORK/reply") lines"
head -3 "$WORK/reply" | sed 's/^/   | /'; echo "   | ..."; tail -1 "$WORK/reply" | sed 's/^/   | /'
[[ $MH_REPLY_END == done ]] || mh_fail "the reply did not end with a done line ($MH_REPLY_END)"
(( $(grep -c '"text":' "$WORK/reply") > 1 )) || mh_fail "the reply was not streamed (one text line or none)"
grep -v '"done":true' "$WORK/reply" | grep -vq '"id":"r1"' && mh_fail "a reply line without id r1"
tail -1 "$WORK/reply" | grep -q "\"completion_tokens\":$N" || mh_fail "done line does not report $N completion tokens"
# generate ends its text with one newline.
{ mh_reply_text "$WORK/reply"; echo; } >"$WORK/served.txt"
sed 's/^/   | /' "$WORK/served.txt"; echo
cmp -s "$WORK/tp1.txt" "$WORK/served.txt" || {
  mh_fail "served text differs from tp 1's greedy text"
  diff <(fold -w 60 "$WORK/tp1.txt") <(fold -w 60 "$WORK/served.txt") | head -20
}

echo "== SIGTERM to mpirun"
t0="$(mh_now)"
kill -TERM "$MH_SERVE_PID"
for _ in $(seq 1 300); do mh_gone "$MH_SERVE_PID" && break; sleep 0.1; done
wait "$MH_SERVE_PID" 2>/dev/null; rc=$?
echo "   mpirun gone after $(mh_elapsed "$t0") s, exit code $rc; its last lines:"
tail -4 "$WORK/serve.log" | sed 's/^/   | /'
mh_gone "$MH_SERVE_PID" || mh_fail "mpirun still running 30 s after SIGTERM"
for i in 1 2 3; do
  left="$(ip netns pids "$(mh_host "$i")" 2>/dev/null | tr '\n' ' ')"
  [[ -z "$left" ]] || mh_fail "processes left on $(mh_host "$i") after SIGTERM: $left"
done

mh_finish
