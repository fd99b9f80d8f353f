#!/usr/bin/env bash
# A rank that dies (kill -9) or hangs (SIGSTOP) must take the whole job down within 10 s, with
# a non-zero exit and an error that names the lost rank; Ctrl-C (SIGINT to mpirun) must stop
# every rank. Runs `mpirun -np 3 tpnode generate` on the default model, or, with --harness,
# test_parallel's stepping job on a small built-in model (no model file needed).
#   TPNODE_BIN=build/tpnode TPNODE_BINARY_DIR=build bash tests/integration/rank_failure.sh [--harness]
# Exit 77 (skipped) when what it needs is missing.
set -uo pipefail

MODE=tpnode
[[ "${1:-}" == "--harness" ]] && MODE=harness
SOURCE_DIR="${TPNODE_SOURCE_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}"
BINARY_DIR="${TPNODE_BINARY_DIR:-$SOURCE_DIR/build}"
TPNODE_BIN="${TPNODE_BIN:-$BINARY_DIR/tpnode}"
MODEL="${TPNODE_MODEL:-$SOURCE_DIR/models/SmolLM2-135M-Instruct.Q4_1.gguf}"
NP=3
LIMIT_S=10       # every process gone this long after the fault
TIMEOUT_S=5      # --collective-timeout: silence that declares a rank lost
READY_S=300      # loading the model on a slow machine

skip() { echo "SKIP: $*"; exit 77; }
command -v mpirun >/dev/null || skip "mpirun not found"

WORK="$(mktemp -d)"
PIDS=()
MPIRUN_PID=""
cleanup() {
  for p in "${PIDS[@]}" $MPIRUN_PID; do kill -CONT "$p" 2>/dev/null; kill -9 "$p" 2>/dev/null; done
  rm -rf "$WORK"
}
trap cleanup EXIT

if [[ $MODE == tpnode ]]; then
  [[ -x "$TPNODE_BIN" ]] || skip "no tpnode binary at $TPNODE_BIN"
  help="$("$TPNODE_BIN" generate --help 2>&1)" || skip "tpnode generate is not available"
  grep -q -- "--collective-timeout" <<<"$help" || skip "tpnode generate has no --collective-timeout"
  [[ -f "$MODEL" ]] || skip "model $MODEL absent (launch/fetch_model.sh)"
  JOB=("$TPNODE_BIN" generate -m "$MODEL" -p "Tell me a long story about a lighthouse keeper." -n 4000
       --temp 0 --ignore-eos --threads 1 --collective-timeout "$TIMEOUT_S" --log-dir "$WORK/logs"
       --no-progress)
else
  TEST_BIN="$BINARY_DIR/test_parallel"
  [[ -x "$TEST_BIN" ]] || skip "no test_parallel at $TEST_BIN"
  STEPPING_JOB=("$TEST_BIN" --gtest_also_run_disabled_tests --gtest_filter='*SoakForFailureScripts'
                "--tp-timeout=$TIMEOUT_S")
  IDLE_JOB=("$TEST_BIN" --gtest_also_run_disabled_tests --gtest_filter='*IdleRootForFailureScripts'
            "--tp-timeout=$TIMEOUT_S")
  JOB=("${STEPPING_JOB[@]}")
fi

now() { date +%s.%N; }
elapsed() { echo "$(now) - $1" | bc; }
# Gone: no such process, or a zombie nobody has reaped yet.
gone() { local s; s="$(ps -o stat= -p "$1" 2>/dev/null)"; [[ -z "$s" || "$s" == Z* ]]; }

start_job() {
  : >"$WORK/out" ; : >"$WORK/err"
  mpirun --oversubscribe --allow-run-as-root -np "$NP" "${JOB[@]}" >"$WORK/out" 2>"$WORK/err" &
  MPIRUN_PID=$!
  PIDS=()
  local t0; t0="$(now)"
  # Ready: every rank started (mpirun's children carry OMPI_COMM_WORLD_RANK) and steps running.
  while true; do
    if gone "$MPIRUN_PID"; then echo "FAIL: the job ended before it was ready"; tail -30 "$WORK/err"; return 1; fi
    if (( $(echo "$(elapsed "$t0") > $READY_S" | bc) )); then echo "FAIL: not ready after ${READY_S} s"; return 1; fi
    local ready=0
    if [[ $MODE == tpnode ]]; then
      # Generated text on stdout (log lines, which start with "[20..", do not count).
      [[ $(grep -av '^\[20' "$WORK/out" | wc -c) -gt 40 ]] && ready=1
    else
      grep -Eq "soak: (stepping|idling)" "$WORK/err" && ready=1
    fi
    if [[ $ready == 1 ]]; then
      PIDS=()
      for r in $(seq 0 $((NP - 1))); do
        for p in $(pgrep -P "$MPIRUN_PID"); do
          if tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | grep -qx "OMPI_COMM_WORLD_RANK=$r"; then PIDS[$r]=$p; fi
        done
      done
      [[ ${#PIDS[@]} -eq $NP ]] && return 0
    fi
    sleep 0.2
  done
}

# wait_gone T0 -> sets GONE_S and RC
wait_gone() {
  local t0="$1"
  while true; do
    local all=1
    for p in "${PIDS[@]}" "$MPIRUN_PID"; do gone "$p" || all=0; done
    [[ $all == 1 ]] && break
    if (( $(echo "$(elapsed "$t0") > $LIMIT_S + 20" | bc) )); then break; fi
    sleep 0.1
  done
  GONE_S="$(elapsed "$t0")"
  wait "$MPIRUN_PID"; RC=$?
}

FAILED=0
fail() { echo "FAIL: $*"; FAILED=1; }

# scenario SIGNAL RANK: sends SIGNAL to rank RANK mid-run.
scenario() {
  local sig="$1" rank="$2"
  echo "== $MODE: SIG$sig to rank $rank of $NP"
  start_job || { FAILED=1; return; }
  sleep 1
  local t0; t0="$(now)"
  kill -"$sig" "${PIDS[$rank]}"
  wait_gone "$t0"
  echo "   all processes gone after ${GONE_S} s, mpirun exit code $RC"
  (( $(echo "$GONE_S <= $LIMIT_S" | bc) )) || fail "SIG$sig rank $rank: processes still there after ${GONE_S} s"
  [[ $RC -ne 0 ]] || fail "SIG$sig rank $rank: exit code 0"
  # Our message ("rank 2 (host) lost: ...") or mpirun's ("process rank 1 with PID ..."), on
  # the console (rank 0's, or another rank's errors) or in the ranks' log files.
  local said; said="$(cat "$WORK/err" "$WORK/out" "$WORK"/logs/*.log 2>/dev/null |
                      grep -E "rank $rank \([^)]*\) lost|process rank $rank ")"
  if [[ -z "$said" ]]; then
    fail "SIG$sig rank $rank: no error names rank $rank"
    tail -30 "$WORK/err"
  fi
  head -4 <<<"$said" | sed 's/^/   | /'
  for p in "${PIDS[@]}"; do kill -CONT "$p" 2>/dev/null; done
}

scenario KILL 1
scenario STOP 2
scenario STOP 0

if [[ $MODE == harness ]]; then
  # Rank 0 idle, outside any collective, and the only other rank stopped: only rank 0's
  # heartbeat thread can notice, and it must end the job by itself.
  JOB=("${IDLE_JOB[@]}"); NP=2
  scenario STOP 1
  JOB=("${STEPPING_JOB[@]}"); NP=3
fi

echo "== $MODE: SIGINT to mpirun"
if start_job; then
  sleep 1
  t0="$(now)"
  kill -INT "$MPIRUN_PID"
  wait_gone "$t0"
  echo "   all processes gone after ${GONE_S} s, mpirun exit code $RC"
  (( $(echo "$GONE_S <= 5" | bc) )) || fail "SIGINT: processes still there after ${GONE_S} s"
else
  FAILED=1
fi

[[ $FAILED == 0 ]] && echo "PASS" || exit 1
