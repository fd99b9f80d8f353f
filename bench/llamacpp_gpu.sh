#!/usr/bin/env bash
# The llama.cpp peer for `tpnode bench`: runs llama.cpp's CUDA llama-bench and
# llama-batched-bench on a Llama-3-8B-shaped GGUF with random weights in llama.cpp's Q4_K_M
# mix, the one `tpnode bench --shape llama3-8b --type q4_k_m` synthesises (Q4_K matrices and
# token_embd; Q6_K output, and Q6_K attn_v and ffn_down in 16 of the 32 layers; F32 ones for
# norms; Llama 3.1 rope_freqs), so both engines read the same bytes per token. The GGUF
# setting mix=flat gives the earlier records' mix (Q6_K ffn_down everywhere); the Q5_K attn_v
# that llama.cpp gives an 80-layer model is not written. The GGUF is written on the GPU
# machine (~5 GB) with gguf-py and numpy. Given a tpnode binary, `run` also runs `tpnode bench
# -m <that file>` at the same points right after llama.cpp (one GPU; with NGPU >= 2, `mpirun
# -np NGPU` tensor parallel after llama.cpp's multi-GPU runs) and prints both side by side with
# the ratio (bench/peer_table.py).
#
# Here (CPU machine):
#   bench/llamacpp_gpu.sh pack [CUDA_BUILD]   -> .device/llama (llama-tools.xz, lib-fallback.tar.xz,
#                                             gguf-py; ~25 MB)
#   bench/llamacpp_gpu.sh check [TPNODE]      small GGUF through the CPU llama-bench and tpnode,
#                                             and the comparison table of the two
# There (GPU machine, no network; carry .device/llama):
#   bench/llamacpp_gpu.sh run OUTDIR [NGPU [TPNODE]]   GGUF + benchmarks; OUTDIR gets
#                                             llama_summary.md, llama_results.tgz (raw outputs)
#                                             and, with a tpnode binary, tpnode_vs_llama.md
#   bench/llamacpp_gpu.sh gguf FILE [key=value...]   the GGUF alone (layers=, vocab=, embd=, ...,
#                                             mix=llama|flat)
# Anywhere:
#   bench/llamacpp_gpu.sh table RAW               the comparison again from saved raw outputs
#                                             (a directory or llama_results.tgz)
# Settings (environment, for this script only): LLAMA_DIR (default .device/llama),
# LLAMA_WORK (default /tmp/tpnode-llama: unpacked binary, GGUF, raw results),
# LLAMA_MIX (the mix `run` writes: llama, the default, or flat),
# LLAMA_GGUF (default $LLAMA_WORK/llama3-8b-q4_k_m-random.gguf, -flat-random for mix flat),
# TPNODE_BIN (the tpnode binary when none is given as an argument; none: llama.cpp alone),
# TPNODE_MPIRUN (default "mpirun --allow-run-as-root --bind-to none"; -np NGPU is added),
# TPNODE_BENCH_ARGS (extra `tpnode bench` arguments), TPNODE_TIMEOUT (seconds per tpnode
# run, default 300).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LLAMA="${LLAMA_DIR:-$ROOT/.device/llama}"
WORK="${LLAMA_WORK:-/tmp/tpnode-llama}"   # unpacked binaries, the GGUF, raw results
MIX="${LLAMA_MIX:-llama}"
GGUF="${LLAMA_GGUF:-$WORK/llama3-8b-q4_k_m$([[ $MIX == llama ]] || echo "-$MIX")-random.gguf}"
LLAMA_SRC="${LLAMA_SRC:-/work/llama/src}"
TOOLS="$WORK/bin/llama-tools"   # llama-bench + llama-batched-bench (see pack)
LLAMA_BENCH=("$TOOLS" bench)
LLAMA_BATCHED_BENCH=("$TOOLS" batched-bench)
TPNODE_BACKEND=cuda
TPNODE_REPS=3
PEER_TABLE="$ROOT/bench/peer_table.py"
source "$ROOT/bench/llamacpp_instances.sh"

# Prompt lengths, generation length, decode batch sizes: the same points as `tpnode bench`.
PP="512,2048"
TG=128
NPL="1,8,32,64"
BB_PP=128
BB_TG=128

# Writes the GGUF. Arguments: FILE then key=value overrides of the Llama-3-8B shape
# (layers, embd, heads, kv_heads, ff, vocab). Each distinct tensor shape gets one random
# template that every layer reuses: identical bytes in each layer cost nothing in speed
# (each layer is its own memory) and keep writing disk-bound.
make_gguf() {
  local gguf_py="$LLAMA/gguf-py"
  [[ -d "$gguf_py" ]] || gguf_py="$LLAMA_SRC/gguf-py"
  PYTHONPATH="$gguf_py${PYTHONPATH:+:$PYTHONPATH}" python3 - "$@" <<'PY'
import math
import os
import sys
import time

import numpy as np
import gguf
from gguf import GGMLQuantizationType as QT

out = sys.argv[1]
cfg = dict(layers=32, embd=4096, heads=32, kv_heads=8, ff=14336, vocab=128256)
mix = "llama"
for kv in sys.argv[2:]:
    k, v = kv.split("=")
    if k == "mix":
        assert v in ("llama", "flat"), f"mix={v} (expected llama or flat)"
        mix = v
        continue
    assert k in cfg, f"unknown setting {k} (expected {', '.join(cfg)}, mix)"
    cfg[k] = int(v)
L, E, H, KV, FF, V = (cfg[k] for k in ("layers", "embd", "heads", "kv_heads", "ff", "vocab"))
HD = E // H
ROPE_THETA = 500000.0
t0 = time.time()
rng = np.random.default_rng(0)


def random_bytes(n):
    return np.frombuffer(rng.bytes(n), dtype=np.uint8).copy()


def fp16_bytes(x):
    return np.array([x], dtype=np.float16).view(np.uint8)


# As kernels/cuda/synth.cu: random quants; block scales chosen so values have std
# ~1/sqrt(cols), which keeps activations finite through the layers.
def q4_k(rows, cols):
    n = rows * cols // 256
    b = random_bytes(n * 144).reshape(n, 144)
    d = fp16_bytes(1.0 / math.sqrt(cols) / (6.0 * 4.6))
    b[:, 0:2] = d  # d
    b[:, 2:4] = d  # dmin
    b[:, 4:8] = 4 + b[:, 4:8] % 5         # 6-bit scales of sub-blocks 0..3: 4..8
    b[:, 8:12] = 30 + b[:, 8:12] % 31     # 6-bit mins of sub-blocks 0..3: 30..60
    b[:, 12:16] = (4 + b[:, 12:16] % 5) | 0xF0  # sub-blocks 4..7: scale 4..8, min 15
    return b.reshape(rows, -1)


def q6_k(rows, cols):
    n = rows * cols // 256
    b = random_bytes(n * 210).reshape(n, 210)
    b[:, 192:208] = 4 + b[:, 192:208] % 5  # int8 sub-block scales 4..8
    b[:, 208:210] = fp16_bytes(1.0 / math.sqrt(cols) / (6.0 * 18.5))
    return b.reshape(rows, -1)


# Llama 3.1 rope scaling as llama.cpp's converter stores it (divisors of the inverse
# frequencies); tpnode reads the same tensor.
def rope_freqs():
    factor, low, high, old_ctx = 8.0, 1.0, 4.0, 8192
    freqs = 1.0 / (ROPE_THETA ** (np.arange(0, HD, 2, dtype=np.float32) / HD))
    out = []
    for f in freqs:
        wavelen = 2 * math.pi / f
        if wavelen < old_ctx / high:
            out.append(1.0)
        elif wavelen > old_ctx / low:
            out.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


w = gguf.GGUFWriter(out, "llama")
w.add_name(f"random-llama3-8b-shape-q4_k_m-{L}l")
w.add_context_length(131072)
w.add_embedding_length(E)
w.add_block_count(L)
w.add_feed_forward_length(FF)
w.add_head_count(H)
w.add_head_count_kv(KV)
w.add_rope_dimension_count(HD)
w.add_rope_freq_base(ROPE_THETA)
w.add_layer_norm_rms_eps(1e-5)
w.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_K_M)
w.add_vocab_size(V)
# A dummy SentencePiece vocabulary: control tokens, the 256 byte tokens, then plain pieces.
w.add_tokenizer_model("llama")
toks = [b"<unk>", b"<s>", b"</s>"] + [f"<0x{i:02X}>".encode() for i in range(256)]
toks += [f"t{i}".encode() for i in range(V - len(toks))]
w.add_token_list(toks)
w.add_token_scores([-float(i) for i in range(V)])
w.add_token_types([2, 3, 3] + [6] * 256 + [1] * (V - 259))
w.add_unk_token_id(0)
w.add_bos_token_id(1)
w.add_eos_token_id(2)

ones = np.ones(E, dtype=np.float32)
w.add_tensor("token_embd.weight", q4_k(V, E), raw_dtype=QT.Q4_K)
w.add_tensor("rope_freqs.weight", rope_freqs())
w.add_tensor("output_norm.weight", ones)
w.add_tensor("output.weight", q6_k(V, E), raw_dtype=QT.Q6_K)
# mix=llama: llama.cpp's Q4_K_M (llama-quant.cpp): attn_v and ffn_down in Q6_K where
# use_more_bits (the first and last eighth of the layers, every third between), else Q4_K;
# `tpnode bench --type q4_k_m` synthesises the same. mix=flat: Q6_K ffn_down everywhere, Q4_K
# attn_v (`--type q4_k_m-flat`, the records before 2026-12-01).
def more_bits(i):
    return mix == "flat" or i < L // 8 or i >= 7 * L // 8 or (i - L // 8) % 3 == 2


layer = {
    "attn_q.weight": (q4_k(H * HD, E), QT.Q4_K),
    "attn_k.weight": (q4_k(KV * HD, E), QT.Q4_K),
    "attn_v.weight": (q4_k(KV * HD, E), QT.Q4_K),
    "attn_output.weight": (q4_k(E, H * HD), QT.Q4_K),
    "ffn_gate.weight": (q4_k(FF, E), QT.Q4_K),
    "ffn_up.weight": (q4_k(FF, E), QT.Q4_K),
    "ffn_down.weight": (q4_k(E, FF), QT.Q4_K),
}
more = {"ffn_down.weight": (q6_k(E, FF), QT.Q6_K)}
if mix == "llama":
    more["attn_v.weight"] = (q6_k(KV * HD, E), QT.Q6_K)
for l in range(L):
    w.add_tensor(f"blk.{l}.attn_norm.weight", ones)
    w.add_tensor(f"blk.{l}.ffn_norm.weight", ones)
    for name, (data, qt) in layer.items():
        if more_bits(l) and name in more:
            data, qt = more[name]
        w.add_tensor(f"blk.{l}.{name}", data, raw_dtype=qt)
t1 = time.time()
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
print(f"wrote {out}: {os.path.getsize(out) / 1e9:.2f} GB, {L} layers, vocab {V} "
      f"(random data {t1 - t0:.1f} s, writing {time.time() - t1:.1f} s)")
PY
}

# Library search path: the CUDA 13 runtime and NCCL from the Python nvidia-nccl package
# (torch's); lib-fallback (bundled copies, an NCCL stub) only for what is still missing.
setup_libs() {
  local dirs="" d nccl
  for d in /usr/local/cuda-13.0/targets/x86_64-linux/lib /usr/local/cuda/lib64 /usr/local/cuda/lib \
           /usr/local/nvidia/lib64 /usr/local/nvidia/lib; do
    [[ -d "$d" ]] && dirs="$dirs:$d"
  done
  nccl="$(python3 - <<'PY' 2>/dev/null || true
import glob, os, site, sys
for r in site.getsitepackages() + [site.getusersitepackages()] + sys.path:
    for f in glob.glob(os.path.join(r, "nvidia", "**", "libnccl.so.2"), recursive=True):
        print(os.path.dirname(f)); sys.exit(0)
PY
)"
  [[ -n "$nccl" ]] && dirs="$dirs:$nccl"
  export LD_LIBRARY_PATH="${dirs#:}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  local missing
  missing="$(ldd "$TOOLS" | grep "not found" || true)"
  if [[ -n "$missing" ]]; then
    printf 'not found on this machine (lib-fallback used):\n%s\n' "$missing"
    tar -C "$WORK/bin" -xJf "$LLAMA/lib-fallback.tar.xz"
    export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$WORK/bin/lib-fallback"
  fi
  ldd "$TOOLS" | grep -E "nccl|cudart|cublas|ssl|crypto|gomp" || true
  missing="$(ldd "$TOOLS" | grep "not found" || true)"
  if [[ -n "$missing" ]]; then
    printf 'still missing:\n%s\n' "$missing" >&2
    return 1
  fi
  # Never NVLink multicast on the shared hosts.
  export NCCL_NVLS_ENABLE=0
}

# Markdown summary from llama-bench JSON files (llama_bench_<label>.json) and
# llama-batched-bench logs (batched_<label>.log).
summarise() {
  python3 "$PEER_TABLE" summary "$@"
}

# The comparison table from the raw outputs in DIR (tpnode_<label>.log next to llama.cpp's),
# at this script's points.
compare() {
  local dir="$1"; shift
  python3 "$PEER_TABLE" compare "$dir" --prefill "$PP" --batches "$NPL" --tg "$TG" \
    --depth "$BB_PP" "$@"
}

# One llama-bench run: NAME, then extra arguments. Failures are reported, not fatal.
bench_one() {
  local name="$1"; shift
  local t0=$SECONDS
  echo "== llama-bench $name: $*"
  if "${LLAMA_BENCH[@]}" -m "$GGUF" -ngl 99 -fa 1 -p "$PP" -n "$TG" -d "0,$BB_PP" -r 3 -o md \
      -oe json "$@" \
      2> "$RAW/llama_bench_$name.json" | tee "$RAW/llama_bench_$name.md"; then
    echo "   ($((SECONDS - t0)) s)"
  else
    echo "   FAILED (rc $?)"
    tail -5 "$RAW/llama_bench_$name.json"
  fi
  RESULTS+=("$RAW/llama_bench_$name.json")
}

batched_one() {
  local name="$1"; shift
  local t0=$SECONDS
  local npl_max="${NPL##*,}"
  echo "== llama-batched-bench $name: $*"
  if "${LLAMA_BATCHED_BENCH[@]}" -m "$GGUF" -ngl 99 -fa on -c $((npl_max * (BB_PP + BB_TG))) \
      -npp "$BB_PP" -ntg "$BB_TG" -npl "$NPL" "$@" > "$RAW/batched_$name.log" 2>&1; then
    grep '^|' "$RAW/batched_$name.log" || true
    echo "   ($((SECONDS - t0)) s)"
  else
    echo "   FAILED (rc $?)"
    tail -5 "$RAW/batched_$name.log"
  fi
  RESULTS+=("$RAW/batched_$name.log")
}

# One `tpnode bench` on the GGUF llama.cpp read, at the same points: prefill lengths PP,
# decode batches NPL after BB_PP tokens of context, BB_TG timed steps (llama-batched-bench's
# -npp and -ntg). NAME, then the launcher words (none, or mpirun ... -np N). The output goes to
# $RAW/tpnode_NAME.log; failures are reported, not fatal (the table shows "-"). With NAME
# ending in _d0, llama-bench's tg point instead: batch 1 from an empty context (one token),
# TG steps.
tpnode_one() {
  local name="$1"; shift
  local log="$RAW/tpnode_$name.log" t0=$SECONDS extra=()
  read -ra extra <<< "${TPNODE_BENCH_ARGS:-}"
  local points=(--batches "$NPL" --prefill "$PP" --context "$BB_PP" --decode-steps "$BB_TG"
                --reps "$TPNODE_REPS")
  [[ $name != *_d0 ]] || points=(--batches 1 --prefill 16 --context 1 --decode-steps "$TG" --reps 1)
  local cmd=("$@" "$TPNODE" bench -m "$GGUF" --backend "$TPNODE_BACKEND" "${points[@]}"
             --greedy-tokens "${extra[@]}")
  echo "== tpnode $name: ${cmd[*]}"
  echo "# command: ${cmd[*]}" > "$log"
  if timeout "${TPNODE_TIMEOUT:-300}" "${cmd[@]}" >> "$log" 2>&1; then
    sed -n -e '/^device:/p' -e '/^rooflines:/p' -e '/^model:/p' -e '/^phase /,$p' "$log"
    echo "   ($((SECONDS - t0)) s)"
  else
    echo "   FAILED (rc $?)"
    tail -5 "$log"
  fi
}

# OUTDIR gets at most three files (the device call returns at most 8): llama_summary.md,
# llama_results.tgz (llama-bench markdown and JSON, llama-batched-bench logs, tpnode bench
# logs) and, with a tpnode binary, tpnode_vs_llama.md (the comparison table).
run() {
  OUTDIR="${1:?usage: run OUTDIR [NGPU [TPNODE]]}"
  local ngpu="${2:-1}"
  TPNODE="${3:-${TPNODE_BIN:-}}"
  local mpirun=()
  read -ra mpirun <<< "${TPNODE_MPIRUN:-mpirun --allow-run-as-root --bind-to none}"
  if [[ -n "$TPNODE" && ! -x "$TPNODE" ]]; then
    echo "tpnode binary $TPNODE is not executable: its column will be empty"
  fi
  RAW="$WORK/results"
  rm -rf "$RAW"
  mkdir -p "$OUTDIR" "$RAW"
  local t_all=$SECONDS
  mkdir -p "$WORK/bin"
  xz -dc "$LLAMA/llama-tools.xz" > "$TOOLS" 2>/dev/null ||
    python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
      "$LLAMA/llama-tools.xz" "$TOOLS"
  chmod +x "$TOOLS"
  setup_libs
  nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader || true
  if [[ -f "$GGUF" && -f "$GGUF.done" ]]; then
    echo "GGUF exists: $GGUF"
  else
    rm -f "$GGUF.done"
    local t0=$SECONDS
    make_gguf "$GGUF" "mix=$MIX"
    touch "$GGUF.done"
    echo "   GGUF: $((SECONDS - t0)) s"
  fi
  RESULTS=()
  # The GPUs to use: the first NGPU of the caller's CUDA_VISIBLE_DEVICES (so that a caller can
  # keep this run off a GPU that is busy with something else), else 0..NGPU-1.
  local gpus=()
  IFS=, read -ra gpus <<< "${CUDA_VISIBLE_DEVICES:-$(seq -s, 0 $((ngpu - 1)))}"
  if ((${#gpus[@]} < ngpu)); then
    echo "NGPU $ngpu but only ${#gpus[@]} visible GPU(s): ${gpus[*]}" >&2
    exit 2
  fi
  local gpu0="${gpus[0]}"
  CUDA_VISIBLE_DEVICES="$gpu0" bench_one 1gpu
  CUDA_VISIBLE_DEVICES="$gpu0" batched_one 1gpu
  if [[ -n "$TPNODE" ]]; then
    CUDA_VISIBLE_DEVICES="$gpu0" tpnode_one 1gpu
    CUDA_VISIBLE_DEVICES="$gpu0" tpnode_one 1gpu_d0
  fi
  if ((ngpu >= 2)); then
    local devs
    devs="$(IFS=,; echo "${gpus[*]:0:ngpu}")"
    CUDA_VISIBLE_DEVICES="$devs" bench_one "${ngpu}gpu_layer" -sm layer
    # With the llama.cpp of llama-cpp-python 0.3.36 this fails to load ("failed to load
    # model"; its loader refuses split buffers, ggml-org/llama.cpp#27465); kept for a newer copy.
    CUDA_VISIBLE_DEVICES="$devs" bench_one "${ngpu}gpu_row" -sm row
    # llama.cpp's tensor-parallel mode (all-reduce through NCCL): the closest to tpnode's TP.
    CUDA_VISIBLE_DEVICES="$devs" bench_one "${ngpu}gpu_tensor" -sm tensor
    CUDA_VISIBLE_DEVICES="$devs" batched_one "${ngpu}gpu_tensor" -sm tensor
    CUDA_VISIBLE_DEVICES="$devs" batched_one "${ngpu}gpu_layer" -sm layer
    # Each rank takes the GPU of its local rank.
    [[ -z "$TPNODE" ]] ||
      CUDA_VISIBLE_DEVICES="$devs" tpnode_one "${ngpu}gpu_tp" "${mpirun[@]}" -np "$ngpu"
  fi
  tar czf "$OUTDIR/llama_results.tgz" -C "$RAW" .
  summarise "${RESULTS[@]}" | tee "$OUTDIR/llama_summary.md"
  [[ -z "$TPNODE" ]] || compare "$RAW" | tee "$OUTDIR/tpnode_vs_llama.md"
  echo
  echo "llama.cpp stage: $((SECONDS - t_all)) s"
  echo "GGUF for tpnode bench -m: $GGUF"
}

# libggml-cuda.a without the kernels a Llama Q4_K_M model with head size 128 and an F16 KV
# cache never runs (the binary must travel in a 64 MiB call): MMQ only for Q4_K and Q6_K,
# FlashAttention tile kernels only for head size 128, vector kernels only for F16 K/V. The
# MMA FlashAttention kernels, MMVQ and everything else stay.
slim_cuda_library() {
  local build="$1" tmp="$2"
  cp "$build/ggml/src/ggml-cuda/libggml-cuda.a" "$tmp/libggml-cuda.a"
  # Nothing to drop after a slim build; grep finds no line then.
  ar t "$tmp/libggml-cuda.a" | grep -E "$LLAMA_INSTANCE_FAMILIES" |
    { grep -Ev "$LLAMA_INSTANCES_USED" || true; } > "$tmp/dropped"
  xargs ar d "$tmp/libggml-cuda.a" < "$tmp/dropped"
  echo "dropped $(wc -l < "$tmp/dropped") kernel instance objects from libggml-cuda.a"
}

# stubs.o: one function per name in $tmp/stub_syms that reports the name and aborts.
make_stubs() {
  local tmp="$1" i=0 sym
  {
    echo '.text'
    while read -r sym; do
      [[ -n "$sym" ]] || continue
      printf '.globl %s\n.type %s, @function\n%s:\n  leaq .Lname%d(%%rip), %%rdi\n  jmp llama_slim_missing\n' \
        "$sym" "$sym" "$sym" "$i"
      printf '.section .rodata\n.Lname%d: .string "%s"\n.text\n' "$i" "$sym"
      i=$((i + 1))
    done < "$tmp/stub_syms"
    echo '.section .note.GNU-stack,"",@progbits'
  } > "$tmp/stubs_asm.s"
  cat > "$tmp/stubs_c.c" <<'C'
#include <stdio.h>
#include <stdlib.h>
void llama_slim_missing(const char* name) {
  fprintf(stderr, "llama-tools: kernel family %s was left out of this slim build (see "
                  "bench/llamacpp_gpu.sh slim_cuda_library)\n", name);
  abort();
}
C
  cc -c -O2 "$tmp/stubs_asm.s" -o "$tmp/stubs_asm.o"
  cc -c -O2 -fPIC "$tmp/stubs_c.c" -o "$tmp/stubs_c.o"
  ld -r "$tmp/stubs_asm.o" "$tmp/stubs_c.o" -o "$tmp/stubs.o"
}

# Here: copy what the GPU machine needs into .device/llama. llama-bench and
# llama-batched-bench are linked into one static binary, llama-tools, so that the CUDA kernels
# travel once. Libraries the GPU machine is expected to have (CUDA 13, NCCL from the Python
# nvidia-nccl package, libssl, libgomp) go to lib-fallback, used only where they are missing.
pack() {
  local build="${1:-/work/llama/build-cuda}"
  rm -rf "$LLAMA"
  local tmp
  tmp="$(mktemp -d)"
  mkdir -p "$LLAMA" "$tmp/lib-fallback"
  cat > "$tmp/llama_tools.cpp" <<'CPP'
// llama-bench and llama-batched-bench in one binary: `llama-tools bench|batched-bench ARGS`.
#include <cstdio>
#include <cstring>
int llama_bench(int argc, char ** argv);
int llama_batched_bench(int argc, char ** argv);
int main(int argc, char ** argv) {
    if (argc >= 2 && std::strcmp(argv[1], "bench") == 0) return llama_bench(argc - 1, argv + 1);
    if (argc >= 2 && std::strcmp(argv[1], "batched-bench") == 0) {
        return llama_batched_bench(argc - 1, argv + 1);
    }
    std::fprintf(stderr, "usage: %s bench|batched-bench [arguments of that tool]\n", argv[0]);
    return 2;
}
CPP
  # The link line CMake uses for llama-bench, plus the batched-bench library.
  local libs
  libs="$(awk '/^build bin\/llama-bench:/ {f = 1} f && /LINK_LIBRARIES/ {sub(/^ *LINK_LIBRARIES = /, ""); print; exit}' \
    "$build/build.ninja")"
  [[ -n "$libs" ]] || { echo "no llama-bench link line in $build/build.ninja" >&2; return 1; }
  libs="$(sed -e 's#tools/llama-bench/libllama-bench-impl\.a#& tools/batched-bench/libllama-batched-bench-impl.a#' \
    -e 's#bin/libllama-bench-impl\.so#& bin/libllama-batched-bench-impl.so#' <<< "$libs")"
  g++ -O2 -std=c++17 -c "$tmp/llama_tools.cpp" -o "$tmp/llama_tools.o"
  slim_cuda_library "$build" "$tmp"
  libs="${libs//ggml\/src\/ggml-cuda\/libggml-cuda.a/$tmp/libggml-cuda.a}"
  # Link; every symbol of a dropped kernel family still referenced gets a stub that aborts
  # with its name (never reached by this model: see slim_cuda_library).
  : > "$tmp/stub_syms"
  local _
  for _ in 1 2 3; do
    make_stubs "$tmp"
    # shellcheck disable=SC2086  # the link line is a list of words
    if (cd "$build" && g++ -O3 "$tmp/llama_tools.o" "$tmp/stubs.o" -o "$tmp/llama-tools" $libs \
        -Wl,--no-demangle 2> "$tmp/link.err"); then
      break
    fi
    grep -o "undefined reference to \`[^']*'" "$tmp/link.err" | sed "s/.*\`//; s/'$//" \
      >> "$tmp/stub_syms" || { cat "$tmp/link.err" >&2; return 1; }
    sort -u -o "$tmp/stub_syms" "$tmp/stub_syms"
  done
  [[ -x "$tmp/llama-tools" ]] || { cat "$tmp/link.err" >&2; return 1; }
  echo "stubbed $(wc -l < "$tmp/stub_syms") symbols of dropped kernels (listed in slim_stubs.txt)"
  c++filt < "$tmp/stub_syms" > "$LLAMA/slim_stubs.txt"
  strip "$tmp/llama-tools"
  xz -T2 -9e -c "$tmp/llama-tools" > "$LLAMA/llama-tools.xz"
  # Libraries that are not glibc's, the C++ runtime's or the driver's.
  ldd "$tmp/llama-tools" | awk '/=> \//{print $1, $3}' | sort -u | while read -r name path; do
    case "$name" in
      libc.so*|libm.so*|libdl.so*|librt.so*|libpthread.so*|ld-linux*|libcuda.so*|libstdc++.so*|\
      libgcc_s.so*|libcudart.so*|libcublas*) ;;
      libnccl.so*) ;;  # 218 MB: the stub below stands in where there is none
      *) cp -L "$path" "$tmp/lib-fallback/$name" && echo "fallback copy of $name" ;;
    esac
  done
  # ggml-cuda's NCCL entry points; ncclCommInitAll fails, so llama.cpp uses its own all-reduce.
  cat > "$tmp/nccl_stub.c" <<'C'
typedef int ncclResult_t;
typedef void* ncclComm_t;
ncclResult_t ncclCommInitAll(ncclComm_t* comms, int n, const int* devs) {
  (void)comms; (void)n; (void)devs; return 1; /* ncclUnhandledCudaError */
}
ncclResult_t ncclCommDestroy(ncclComm_t c) { (void)c; return 0; }
ncclResult_t ncclGroupStart(void) { return 0; }
ncclResult_t ncclGroupEnd(void) { return 0; }
ncclResult_t ncclAllReduce(const void* s, void* r, unsigned long n, int t, int op, ncclComm_t c,
                           void* stream) {
  (void)s; (void)r; (void)n; (void)t; (void)op; (void)c; (void)stream; return 5;
}
const char* ncclGetErrorString(ncclResult_t r) { (void)r; return "NCCL stub (no libnccl.so.2)"; }
C
  cc -O2 -shared -fPIC -Wl,-soname,libnccl.so.2 -o "$tmp/lib-fallback/libnccl.so.2" "$tmp/nccl_stub.c"
  tar -C "$tmp" -cJf "$LLAMA/lib-fallback.tar.xz" lib-fallback
  rm -rf "$tmp"
  cp -r "$LLAMA_SRC/gguf-py" "$LLAMA/gguf-py"
  rm -rf "$LLAMA/gguf-py/tests" "$LLAMA/gguf-py/examples"
  find "$LLAMA/gguf-py" -name __pycache__ -prune -exec rm -rf {} +
  du -sh "$LLAMA" "$LLAMA"/*
}

# Here: a 2-layer, small-vocabulary GGUF of the same tensor types through the CPU build of
# llama.cpp (the same llama-bench / llama-batched-bench steps and summary as `run`, shrunk)
# and through tpnode (inspect, bench on the CPU backend), then the comparison table.
check() {
  TPNODE="${1:-${TPNODE_BIN:-$ROOT/build-peer/tpnode}}"
  local cpu_bin="${LLAMA_CPU_BIN:-/work/llama/build-cpu/bin}"
  LLAMA_BENCH=("$cpu_bin/llama-bench")
  LLAMA_BATCHED_BENCH=("$cpu_bin/llama-batched-bench")
  GGUF="$WORK/check-2l.gguf"
  RAW="$WORK/check-results"
  PP=32 TG=4 NPL=1,2 BB_PP=16 BB_TG=4 TPNODE_BACKEND=cpu TPNODE_REPS=1
  rm -rf "$RAW"
  mkdir -p "$RAW"
  local t0=$SECONDS
  make_gguf "$GGUF" layers=2 vocab=8192
  echo "GGUF writer: $((SECONDS - t0)) s"
  RESULTS=()
  bench_one cpu -t 2
  batched_one cpu -t 2
  summarise "${RESULTS[@]}"
  "$TPNODE" inspect "$GGUF"
  tpnode_one cpu
  compare "$RAW" --single cpu
}

# The comparison table from saved raw outputs (a directory or llama_results.tgz), at run's
# points.
table() {
  local raw="${1:?usage: table RAW_DIR|llama_results.tgz}"
  if [[ -d "$raw" ]]; then
    compare "$raw"
    return
  fi
  [[ -f "$raw" ]] || { echo "table: no directory or file $raw" >&2; return 2; }
  local tmp
  tmp="$(mktemp -d)"
  tar -C "$tmp" -xzf "$raw"
  compare "$tmp"
  rm -rf "$tmp"
}

case "${1:-}" in
  pack) shift; pack "$@" ;;
  check) shift; check "$@" ;;
  gguf) shift; make_gguf "$@" ;;
  run) shift; run "$@" ;;
  table) shift; table "$@" ;;
  *) echo "usage: $0 pack [CUDA_BUILD] | check [TPNODE] | gguf FILE [k=v...] |" \
       "run OUTDIR [NGPU [TPNODE]] | table RAW" >&2
     exit 2 ;;
esac
