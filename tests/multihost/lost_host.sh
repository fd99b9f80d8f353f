#!/usr/bin/env bash
# A lost host must not hang the others: with `tpnode serve` at tp 3 over 3 namespace hosts and a
# request streaming to a client in the root namespace, (a) SIGKILL of the rank on host 2, and
# (b) host 3's link going down (ip link set eth0 down inside its namespace) each make every
# other rank exit within 10 s with an error that names the lost rank and its host, and the
# client's request ends with an error (an error line or a closed connection), not silence.
#   TPNODE_BIN=build/tpnode bash tests/multihost/lost_host.sh   (root; exit 77 = skipped)
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/netns_lib.bash"

LIMIT_S=10       # every surviving rank gone this long after the fault
TIMEOUT_S=5      # --collective-timeout: silence that declares a rank lost
mh_init tpmh4 10.213.4
mh_require_tpnode serve --host --port --no-http --collective-timeout
mh_hosts_up 3

# The tpnode process running on host $1 (one rank per host).
rank_pid() {
  local p
  for p in $(ip netns pids "$(mh_host "$1")" 2>/dev/null); do
    [[ "$(cat "/proc/$p/comm" 2>/dev/null)" == tpnode ]] && { echo "$p"; return 0; }
  done
  return 1
}

# scenario NAME LOST_HOST CLIENT_ENDS FAULT...: FAULT is run (in the root namespace)
# mid-request; CLIENT_ENDS is the regex of acceptable ends of the client's reply.
scenario() {
  local name="$1" lost="$2" client_ends="$3"
  shift 3
  local lost_rank=$((lost - 1)) lost_name
  lost_name="$(mh_host "$lost")"
  echo "== $name: rank $lost_rank on $lost_name"
  local log="$WORK/$name.log" reply="$WORK/$name.reply"
  mh_serve_start "$log" --collective-timeout "$TIMEOUT_S"
  mh_serve_wait_ready "$log" 300

  local pids=() i
  for i in 1 2 3; do
    pids[$i]="$(rank_pid "$i")" || { mh_fail "$name: no tpnode rank found on $(mh_host "$i")"; return; }
  done
  # A long request, read in the background; the fault comes once tokens are streaming.
  (
    mh_request "$reply" 60 \
      "{\"id\":\"long\",\"prompt\":\"$MH_PROMPT\",\"max_tokens\":1000,\"temperature\":0,\"stream\":true,\"ignore_eos\":true}"
    echo "$MH_REPLY_END $(mh_now)" >"$reply.end"
  ) &
  local client=$!
  MH_BG_PIDS+=("$client")
  local t_wait
  t_wait="$(mh_now)"
  until [[ -f "$reply" ]] && (( $(grep -c '"text":' "$reply") >= 3 )); do
    if [[ -f "$reply.end" ]] || (( $(echo "$(mh_elapsed "$t_wait") > 120" | bc) )); then
      mh_fail "$name: the request did not start streaming"; cat "$reply"; tail -20 "$log"
      kill -9 "$MH_SERVE_PID" 2>/dev/null
      return
    fi
    sleep 0.2
  done

  local t0 survivors=()
  for i in 1 2 3; do [[ $i != "$lost" ]] && survivors+=("${pids[$i]}"); done
  t0="$(mh_now)"
  "$@"
  # Every surviving rank gone (their hosts are fine, so their exit is the test).
  local gone_s=""
  while true; do
    local all=1 p
    for p in "${survivors[@]}"; do mh_gone "$p" || all=0; done
    if [[ $all == 1 ]]; then gone_s="$(mh_elapsed "$t0")"; break; fi
    (( $(echo "$(mh_elapsed "$t0") > $LIMIT_S + 20" | bc) )) && break
    sleep 0.1
  done
  # The client: its read ends on an error line, end of stream, or 60 s of silence.
  wait "$client" 2>/dev/null
  local end end_t
  read -r end end_t <"$reply.end"
  local client_s
  client_s="$(echo "$end_t - $t0" | bc)"
  # mpirun itself may wait long for a daemon on a host it cannot reach: not the test's
  # subject; it gets until 10 s after the survivors are gone, is reported, then cleaned up.
  local mpirun_state="exited" t_survivors
  t_survivors="$(mh_now)"
  while ! mh_gone "$MH_SERVE_PID" && (( $(echo "$(mh_elapsed "$t_survivors") < 10" | bc) )); do sleep 0.2; done
  if mh_gone "$MH_SERVE_PID"; then
    mpirun_state="exited after $(mh_elapsed "$t0") s"
  else
    mpirun_state="still running after $(mh_elapsed "$t0") s (killed now)"
  fi
  kill -9 "$MH_SERVE_PID" 2>/dev/null
  wait "$MH_SERVE_PID" 2>/dev/null

  echo "   surviving ranks gone after ${gone_s:-more than $((LIMIT_S + 20))} s; mpirun $mpirun_state"
  echo "   client: '$end' after $client_s s, $(grep -c '"text":' "$reply") text lines; last line:"
  tail -1 "$reply" | cut -c1-200 | sed 's/^/   | /'
  if [[ -z "$gone_s" ]] || (( $(echo "$gone_s > $LIMIT_S" | bc) )); then
    mh_fail "$name: surviving ranks still running ${gone_s:-$((LIMIT_S + 20))} s after the fault"
  fi
  [[ "$end" =~ ^($client_ends)$ ]] || mh_fail "$name: the client's reply ended with '$end', not $client_ends"
  if [[ "$end" == eof ]]; then
    echo "   note: the connection closed without an error line"
  fi
  # The error must name the lost rank and its host: tpnode's "rank 2 (tpmh4-h3) lost: ...", or,
  # when mpirun sees the process die first, its "process rank 1 with PID N on node tpmh4-h2".
  local named
  named="$(grep -ahE "rank $lost_rank \(${lost_name}[^)]*\)|process rank $lost_rank with PID [0-9]+ on node $lost_name" \
           "$log" "$WORK"/logs/*.log 2>/dev/null | head -3)"
  if [[ -n "$named" ]]; then
    sed 's/^/   | /' <<<"$named"
  else
    mh_fail "$name: no error names rank $lost_rank and host $lost_name"
    grep -aiE "lost|error|abort" "$log" | head -10 | sed 's/^/   | /'
  fi
  rm -rf "$WORK/logs"
  # Anything left (the lost host's rank, daemons) goes before the next scenario.
  for i in 1 2 3; do
    local left
    left="$(ip netns pids "$(mh_host "$i")" 2>/dev/null)"
    # shellcheck disable=SC2086  # one pid per word
    [[ -n "$left" ]] && kill -9 $left 2>/dev/null
  done
  ip -n "$lost_name" link set eth0 up
  sleep 0.5
}

kill_rank() { kill -9 "$(rank_pid "$1")"; }

# A killed process is seen by its Open MPI daemon at once: mpirun aborts the job (SIGTERM, then
# SIGKILL to every rank) before tpnode's own detection fires, so rank 0 may be gone before it
# can write an error line; the client then sees its connection close.
scenario killed 2 'error|eof' kill_rank 2
# A silent host is seen only by tpnode (heartbeats, --collective-timeout): rank 0 must fail the
# request with an error line naming the rank and host.
scenario link_down 3 error bash "$MH_HOSTS_SH" link "$(mh_host 3)" down

mh_finish
