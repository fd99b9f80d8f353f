#!/usr/bin/env bash
# tpnode's CPU backend against llama.cpp's CPU build on the same GGUF, same machine, same run:
# prompt processing (a ~128-token prompt) and generation (64 tokens), 2 threads, best of 3.
# llama.cpp: bench/llamacpp_cpu.sh (llama-bench -p 128 -n 64); build it with
# tools/build_llamacpp.sh first.
#   bench/cpu_vs_llamacpp.sh [--model GGUF] [--threads N] [--bin DIR]
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODEL="$REPO/models/SmolLM2-135M-Instruct.Q4_1.gguf"
THREADS=2
BIN=/work/llama/build-cpu/bin
TPNODE="${TPNODE_BIN:-$REPO/build/tpnode}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --model) MODEL="$2"; shift 2 ;;
    --threads) THREADS="$2"; shift 2 ;;
    --bin) BIN="$2"; shift 2 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done

PROMPT="The history of computing is a story of abstraction. Early machines were programmed by \
rewiring panels and flipping switches; then came stored programs, assemblers, and compilers that \
let people describe what they wanted rather than how the hardware should do it. Operating systems \
hid the details of devices, networks hid the distance between machines, and databases hid the \
layout of data on disk. Each layer made the next generation of programmers more productive, and \
each layer also made it harder to understand what the machine was actually doing when something \
went wrong. Today, large language models add"

echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== tpnode ($TPNODE generate, $THREADS threads, best of 3)"
best_pp=0; best_tg=0
for rep in 1 2 3; do
  line="$("$TPNODE" generate -m "$MODEL" -p "$PROMPT" -n 64 --temp 0 --ignore-eos -t "$THREADS" \
          --no-progress 2>&1 >/dev/null | grep '^prompt:')"
  pp="$(sed -E 's/.*tokens in [0-9.]+ s \(([0-9.]+) tok\/s\); generation.*/\1/' <<<"$line")"
  tg="$(sed -E 's/.*generation: .* \(([0-9.]+) tok\/s\).*/\1/' <<<"$line")"
  echo "   run $rep: $line"
  best_pp="$(awk -v a="$best_pp" -v b="$pp" 'BEGIN{print (b>a)?b:a}')"
  best_tg="$(awk -v a="$best_tg" -v b="$tg" 'BEGIN{print (b>a)?b:a}')"
done
echo "== llama.cpp"
"$REPO/bench/llamacpp_cpu.sh" --model "$MODEL" --threads "$THREADS" --bin "$BIN" | tee /tmp/llamacpp_cpu.$$
echo "== tpnode best: prompt $best_pp tok/s, generation $best_tg tok/s"
