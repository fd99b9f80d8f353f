#!/usr/bin/env bash
# A rank that stops (SIGSTOP) or exits while its peer waits inside a GPU all-reduce (one-shot
# and NCCL): every process must be gone within LIMIT_S, the job must exit non-zero, and rank
# 0's error must name the lost rank. Runs test_nccl's failure drill under mpirun -np 2.
#   TPNODE_BINARY_DIR=build bash tests/nccl/nccl_rank_failure.sh
# Exit 77 (skipped) without mpirun, test_nccl or two GPUs.
set -uo pipefail

SOURCE_DIR="${TPNODE_SOURCE_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}"
BINARY_DIR="${TPNODE_BINARY_DIR:-$SOURCE_DIR/build}"
TEST_BIN="$BINARY_DIR/test_nccl"
TIMEOUT_S=3   # heartbeat silence that declares a rank lost
LIMIT_S=12    # every process gone this long after the fault

skip() { echo "SKIP: $*"; exit 77; }
command -v mpirun >/dev/null || skip "mpirun not found"
[[ -x "$TEST_BIN" ]] || skip "no test_nccl at $TEST_BIN"
gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU') || gpus=0
(( gpus >= 2 )) || skip "needs 2 GPUs, $gpus visible"

# Gone: no such process, or a zombie nobody has reaped yet.
gone() { local s; s="$(ps -o stat= -p "$1" 2>/dev/null)"; [[ -z "$s" || "$s" == Z* ]]; }

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
failures=0
for kind in stop exit; do
  for path in oneshot nccl; do
    log="$WORK/$kind-$path.log"
    timeout -s KILL 120 mpirun --allow-run-as-root --oversubscribe -np 2 "$TEST_BIN" \
      "--drill=$kind" "--drill-path=$path" "--tp-timeout=$TIMEOUT_S" >"$log" 2>&1
    rc=$?
    end=$(date +%s.%N)
    fault=$(grep -oP 'drill: rank 1 \w+ at \K[0-9.]+' "$log" | head -1)
    # A rank left running (e.g. a stopped one) would still hold its GPU. Ranks mpirun has
    # just killed may take a moment to go (CUDA teardown); zombies count as gone.
    left=0
    for pid in $(grep -oP 'drill: rank \d+ pid \K\d+' "$log"); do
      for _ in $(seq 20); do gone "$pid" && break; sleep 0.1; done
      if ! gone "$pid"; then left=$((left + 1)); kill -CONT "$pid"; kill -KILL "$pid"; fi
    done
    after=$( [[ -n "$fault" ]] && awk "BEGIN { printf \"%.1f\", $end - $fault }" || echo "?")
    echo "--- $kind / $path: exit $rc, ${after} s after the fault, processes left: $left"
    grep -E "error|lost|abort|drill: rank 1" "$log" | head -8
    ok=1
    [[ $rc == 77 ]] && skip "the drill skipped: $(grep -m1 'drill skipped' "$log")"
    [[ -n "$fault" ]] || { echo "FAIL: the drill never reached the fault"; ok=0; }
    [[ $rc != 0 && $rc != 137 ]] || { echo "FAIL: exit code $rc (want non-zero, not killed by timeout)"; ok=0; }
    [[ $left == 0 ]] || { echo "FAIL: $left process(es) outlived mpirun"; ok=0; }
    [[ -z "$fault" ]] || awk "BEGIN { exit !($after < $LIMIT_S) }" || { echo "FAIL: ${after} s after the fault"; ok=0; }
    if [[ $kind == stop ]]; then
      grep -Eq "rank 0: error: .*rank 1 .*lost" "$log" || { echo "FAIL: rank 0 did not name rank 1 as lost"; ok=0; }
    fi
    (( ok )) || { failures=$((failures + 1)); tail -20 "$log"; }
  done
done
exit $(( failures > 0 ))
