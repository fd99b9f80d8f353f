#!/usr/bin/env bash
# The llama.cpp CPU peer: runs llama-bench on the default model and prints prompt-processing and
# generation throughput in the same shape as tpnode's bench output, so the two can sit side by side
# in docs/BENCHMARKS.md. Build llama.cpp first with tools/build_llamacpp.sh.
#
# usage: bench/llamacpp_cpu.sh [--model GGUF] [--bin DIR] [--threads N] [--prompt N] [--gen N] [--reps N]
#   defaults: models/SmolLM2-135M-Instruct.Q4_1.gguf, /work/llama/build-cpu/bin, -t 2 -p 128 -n 64 -r 3
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODEL="$REPO/models/SmolLM2-135M-Instruct.Q4_1.gguf"
BIN=/work/llama/build-cpu/bin
THREADS=2
PROMPT=128
GEN=64
REPS=3

while [[ $# -gt 0 ]]; do
  case "$1" in
    --model) MODEL="$2"; shift 2 ;;
    --bin) BIN="$2"; shift 2 ;;
    --threads) THREADS="$2"; shift 2 ;;
    --prompt) PROMPT="$2"; shift 2 ;;
    --gen) GEN="$2"; shift 2 ;;
    --reps) REPS="$2"; shift 2 ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done

[[ -x "$BIN/llama-bench" ]] || { echo "missing $BIN/llama-bench: run tools/build_llamacpp.sh first" >&2; exit 1; }
[[ -f "$MODEL" ]] || { echo "missing model $MODEL" >&2; exit 1; }

CMD=("$BIN/llama-bench" -m "$MODEL" -t "$THREADS" -p "$PROMPT" -n "$GEN" -r "$REPS" -o json)
LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
JSON="$("${CMD[@]}" 2>/dev/null)"

# The sdist carries no git metadata, so name the llama-cpp-python version it came from.
SDIST="$(ls "$(dirname "$(dirname "$BIN")")"/src/.sdist-* 2>/dev/null | sed 's/.*\.sdist-//' | head -1 || true)"

python3 - "$JSON" "${CMD[*]}" "${SDIST:-unknown}" "$LOAD_BEFORE" <<'EOF'
import datetime, json, os, platform, sys
runs, cmd, sdist, LOAD_BEFORE = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
cpu = runs[0].get("cpu_info") or platform.processor()
print(f"# llama.cpp CPU peer, {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
print(f"# machine: {cpu}, {os.cpu_count()} cores visible, {platform.system()} {platform.release()}")
# Other processes on a small machine skew these numbers; the load average says how much.
print(f"# load average before/after: {LOAD_BEFORE} / {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
if float(LOAD_BEFORE.split()[0]) > 0.5 * (os.cpu_count() or 1):
    # llama.cpp's threads meet at a barrier after every op; when other processes hold the cores,
    # each barrier waits for a descheduled thread and throughput collapses far below a fair share.
    print("# WARNING: the machine was busy before the run; these numbers are not representative")
print(f"# llama.cpp from llama-cpp-python {sdist} sdist, "
      f"backend {runs[0].get('backends', '?')}, model {os.path.basename(runs[0]['model_filename'])} "
      f"({runs[0].get('model_type', '?')})")
print(f"# command: {cmd}")
print(f"{'engine':<10} {'test':<8} {'threads':>7} {'tok/s':>10} {'stddev':>8} {'reps':>4}")
for r in runs:
    test = f"pp{r['n_prompt']}" if r["n_gen"] == 0 else f"tg{r['n_gen']}"
    print(f"{'llama.cpp':<10} {test:<8} {r['n_threads']:>7} {r['avg_ts']:>10.2f} {r['stddev_ts']:>8.2f} "
          f"{len(r.get('samples_ts', [])) or '?':>4}")
EOF
