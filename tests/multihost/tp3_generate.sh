#!/usr/bin/env bash
# Tensor parallelism across hosts: `tpnode generate --temp 0 -n 32` with tp 3, one rank on each
# of 3 namespace hosts (MPI over TCP on the test subnet only), prints the same greedy text as
# tp 1 on the default model, and each rank reports the host it ran on.
#   TPNODE_BIN=build/tpnode bash tests/multihost/tp3_generate.sh   (root; exit 77 = skipped)
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/netns_lib.bash"

N=32
mh_init tpmh2 10.213.2
mh_require_tpnode generate --no-progress
mh_hosts_up 3

echo "== tp 1 (root namespace)"
mh_reference "$N"
sed 's/^/   | /' "$WORK/tp1.txt"; echo

echo "== tp 3 on $(mh_host 1), $(mh_host 2), $(mh_host 3)"
t0="$(mh_now)"
if ! mh_generate "$WORK/tp3.txt" "$N" "${MH_MPIRUN[@]}" -np 3; then
  mh_fail "tp 3 generate failed"
  tail -30 "$WORK/tp3.txt.err"
fi
echo "   took $(mh_elapsed "$t0") s with start-up; $(grep -hao 'generation: .*' "$WORK/tp3.txt.err" "$WORK/tp3.txt.raw" | head -1)"
sed 's/^/   | /' "$WORK/tp3.txt"; echo
cmp -s "$WORK/tp1.txt" "$WORK/tp3.txt" || {
  mh_fail "tp 3 across hosts differs from tp 1"
  diff <(fold -w 60 "$WORK/tp1.txt") <(fold -w 60 "$WORK/tp3.txt") | head -20
}
# Each rank logs "rank R/3 on HOST" (rank 0 to its console, the others to --log-dir): the
# ranks really ran on different hosts.
for i in 1 2 3; do
  grep -haE "rank $((i - 1))/3 on $(mh_host "$i") " "$WORK/tp3.txt.raw" "$WORK/tp3.txt.err" "$WORK"/logs/*.log \
      2>/dev/null | sed 's/^/   | /' | head -1 | grep . || mh_fail "no log line shows rank $((i - 1)) on $(mh_host "$i")"
done

mh_finish
