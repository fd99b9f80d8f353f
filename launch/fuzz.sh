#!/usr/bin/env bash
# Builds the model-file fuzzers with clang (libFuzzer + ASan + UBSan) in build-fuzz and runs
# each for SECONDS over a scratch copy of its committed seed corpus (tests/fuzz/corpus/<target>).
# Exits non-zero when any target finds a crash, leak, timeout or sanitizer report; the
# reproducer is left in build-fuzz/findings/<target>/.
#   launch/fuzz.sh [SECONDS=60] [TARGET...]      targets: gguf_fuzz safetensors_fuzz
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SECONDS_EACH="${1:-60}"
shift || true
TARGETS=("$@")
if [[ ${#TARGETS[@]} -eq 0 ]]; then TARGETS=(gguf_fuzz safetensors_fuzz); fi
BUILD="$ROOT/build-fuzz"
JOBS="${JOBS:-$(nproc)}"

log() { printf '\033[1m[fuzz]\033[0m %s\n' "$*"; }

GEN=()
if command -v ninja >/dev/null; then GEN=(-G Ninja); fi
if [[ ! -f "$BUILD/CMakeCache.txt" ]]; then
  log "configuring $BUILD"
  CC=clang CXX=clang++ cmake -S "$ROOT" -B "$BUILD" "${GEN[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DTPNODE_FUZZ=ON -DTPNODE_CUDA=OFF -DTPNODE_MPI=OFF -DTPNODE_TESTS=OFF >/dev/null
fi
log "building ${TARGETS[*]}"
cmake --build "$BUILD" -j "$JOBS" --target "${TARGETS[@]}"

status=0
for t in "${TARGETS[@]}"; do
  work="$BUILD/corpus/$t"
  findings="$BUILD/findings/$t"
  rm -rf "$work"
  mkdir -p "$work" "$findings"
  cp "$ROOT/tests/fuzz/corpus/$t/"* "$work/"
  log "$t: ${SECONDS_EACH}s over $(ls "$work" | wc -l) seeds"
  # -max_len: GGUF and safetensors headers of interest fit in 64 KiB.
  if ! "$BUILD/$t" "$work" -dict="$ROOT/tests/fuzz/$t.dict" -max_total_time="$SECONDS_EACH" \
      -max_len=65536 -timeout=10 -rss_limit_mb=2048 \
      -print_final_stats=1 -artifact_prefix="$findings/" 2>"$BUILD/$t.log"; then
    log "$t: FINDING (see $BUILD/$t.log and $findings/)"
    tail -40 "$BUILD/$t.log" >&2
    status=1
  else
    log "$t: clean ($(grep -m1 -o 'stat::number_of_executed_units: *[0-9]*' "$BUILD/$t.log" | grep -o '[0-9]*$') runs)"
  fi
done
exit $status
