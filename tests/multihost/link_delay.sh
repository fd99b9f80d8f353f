#!/usr/bin/env bash
# Latency on the links: tp 3 over 3 namespace hosts, then the same with `tc netem delay 1ms` on
# every host's eth0 (or, on kernels without netem, the same delay from the user-space delay line
# of launch/netns_hosts.sh delay --userspace). The run with delay still gives the same greedy text, and it is slower. A
# decode step does 2 all-reduces per layer x 30 layers, each at least one delayed hop, so expect
# some 60+ ms more per token; the numbers are printed, only "finished and slower" is asserted.
#   TPNODE_BIN=build/tpnode bash tests/multihost/link_delay.sh   (root; exit 77 = skipped)
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/netns_lib.bash"

N=16
DELAY_MS=1
mh_init tpmh5 10.213.5
mh_require_tpnode generate --no-progress
mh_hosts_up 3
# tc netem where the kernel has it (CONFIG_NET_SCH_NETEM); else the user-space delay line.
DELAY_HOW=(); MECHANISM="tc netem"
if ! err="$(tc -n "$(mh_host 1)" qdisc add dev eth0 root netem delay "${DELAY_MS}ms" 2>&1)"; then
  echo "   no netem here ('tc qdisc add ... netem' says: $err): using tests/multihost/tap_delay.c"
  cc -O2 -o "$WORK/tap_delay" "$MH_SOURCE_DIR/tests/multihost/tap_delay.c" ||
    mh_skip "no netem ($err) and no C compiler for the user-space delay line"
  [[ -c /dev/net/tun ]] || mh_skip "no netem ($err) and no /dev/net/tun for the user-space delay line"
  DELAY_HOW=(--userspace "$WORK/tap_delay"); MECHANISM="user-space delay line (tap_delay)"
else
  tc -n "$(mh_host 1)" qdisc del dev eth0 root
fi

PROBE=""
if command -v mpicc >/dev/null && mpicc -O2 -o "$WORK/mpi_probe" "$MH_SOURCE_DIR/tests/multihost/mpi_probe.c"; then
  PROBE="$WORK/mpi_probe"
fi

# run LABEL: one tp 3 generate; sets MS_PER_TOKEN and leaves the text in $WORK/LABEL.txt.
run() {
  local label="$1"
  if [[ -n "$PROBE" ]]; then
    "${MH_MPIRUN[@]}" -np 3 "$PROBE" 100 2>/dev/null | grep -a allreduce_us |
      sed "s/^probe: allreduce_us/   $label: one 576-float all-reduce (us):/"
  fi
  if ! mh_generate "$WORK/$label.txt" "$N" "${MH_MPIRUN[@]}" -np 3; then
    mh_fail "$label: tp 3 generate failed"
    tail -20 "$WORK/$label.txt.err"
    MS_PER_TOKEN=""
    return
  fi
  # "generation: 16 tokens in 1.234 s (12.9 tok/s)"
  local stats
  stats="$(grep -haoE 'generation: [0-9]+ tokens in [0-9.]+ s \([0-9.]+ tok/s\)' "$WORK/$label.txt.raw" "$WORK/$label.txt.err" |
           head -1)"
  echo "   $label: $stats"
  local tokens secs
  tokens="$(awk '{print $2}' <<<"$stats")"
  secs="$(awk '{print $5}' <<<"$stats")"
  if [[ -z "$tokens" || -z "$secs" ]]; then
    mh_fail "$label: no 'generation: N tokens in S s' line to measure"
    MS_PER_TOKEN=""
    return
  fi
  MS_PER_TOKEN="$(echo "scale=1; 1000 * $secs / $tokens" | bc)"
}

# Two rounds, alternating, and the faster run of each kind: on a shared 2-core machine one run
# can be twice as slow as the next.
min_ms() { if [[ -z "$1" ]]; then echo "$2"; elif [[ -z "$2" ]] || (( $(echo "$1 < $2" | bc) )); then echo "$1"; else echo "$2"; fi; }
plain_ms=""; delayed_ms=""
for round in 1 2; do
  echo "== round $round: tp 3 on 3 hosts, links without delay"
  run "plain$round"
  plain_ms="$(min_ms "$plain_ms" "$MS_PER_TOKEN")"

  echo "== round $round: tp 3 on 3 hosts, ${DELAY_MS} ms delay on every host's link ($MECHANISM)"
  bash "$MH_HOSTS_SH" delay -p "$MH_PREFIX" "$DELAY_MS" "${DELAY_HOW[@]}" || mh_fail "could not add the delay"
  run "delayed$round"
  delayed_ms="$(min_ms "$delayed_ms" "$MS_PER_TOKEN")"
  bash "$MH_HOSTS_SH" delay -p "$MH_PREFIX" 0

  cmp -s "$WORK/plain1.txt" "$WORK/delayed$round.txt" || mh_fail "the text with delay differs from the text without"
done

if [[ -n "$plain_ms" && -n "$delayed_ms" ]]; then
  extra="$(echo "scale=1; $delayed_ms - $plain_ms" | bc)"
  echo "   per decoded token (best of 2): ${plain_ms} ms without delay, ${delayed_ms} ms with ${DELAY_MS} ms delay;" \
       "${extra} ms more, $(echo "scale=2; $extra / 60" | bc) ms per all-reduce if the 60 all-reduces of a step carry it all"
  (( $(echo "$delayed_ms > $plain_ms" | bc) )) || mh_fail "not slower with ${DELAY_MS} ms on every link"
fi

mh_finish
