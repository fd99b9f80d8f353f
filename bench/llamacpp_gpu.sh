#!/usr/bin/env bash
# The GPU peer for `tpnode bench`: builds llama.cpp's CUDA llama-bench from the llama.cpp
# vendored in llama-cpp-python's sdist, writes a Llama-3-8B-shaped Q4_K_M GGUF with random
# weights (gguf-py from the same tree, numpy), and runs llama-bench on it.
#
# Status: written for the GPU machine but NOT yet run there (see docs/BENCHMARKS.md).
#
# Here (network):  bench/llamacpp_gpu.sh fetch     -> .llama/llama.cpp (trimmed, < 30 MB)
# There (no net):  bench/llamacpp_gpu.sh run OUT   (carry .llama)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LLAMA="$ROOT/.llama"
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"

fetch() {
  mkdir -p "$LLAMA" && cd "$LLAMA"
  python3 -m pip download --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d sdist
  tar xzf "sdist/llama_cpp_python-$VERSION.tar.gz"
  rm -rf llama.cpp && mv "llama_cpp_python-$VERSION/vendor/llama.cpp" llama.cpp
  rm -rf "llama_cpp_python-$VERSION" sdist
  # Vocabulary models, docs and other backends are not needed: keep the carry small.
  rm -rf llama.cpp/models llama.cpp/docs llama.cpp/benches llama.cpp/examples/*/
  du -sh llama.cpp
}

# Writes a GGUF of the Llama-3-8B shape in Q4_K_M-like types (Q4_K matrices, Q6_K ffn_down and
# output), random quants with sane scales, and a dummy SentencePiece vocabulary.
make_gguf() {
  local out="$1"
  PYTHONPATH="$LLAMA/llama.cpp/gguf-py" python3 - "$out" <<'PY'
import sys
import numpy as np
import gguf
from gguf import GGMLQuantizationType as QT

out = sys.argv[1]
L, E, H, KV, HD, FF, V = 32, 4096, 32, 8, 128, 14336, 128256
rng = np.random.default_rng(0)
w = gguf.GGUFWriter(out, "llama")
w.add_name("random-llama3-8b-q4_k_m")
w.add_context_length(8192); w.add_embedding_length(E); w.add_block_count(L)
w.add_feed_forward_length(FF); w.add_head_count(H); w.add_head_count_kv(KV)
w.add_rope_freq_base(500000.0); w.add_layer_norm_rms_eps(1e-5); w.add_file_type(15)
w.add_vocab_size(V)
w.add_tokenizer_model("llama")
toks = [b"<unk>", b"<s>", b"</s>"] + [f"<0x{i:02X}>".encode() for i in range(256)]
toks += [f"t{i}".encode() for i in range(V - len(toks))]
w.add_token_list(toks)
w.add_token_scores([0.0] * V)
w.add_token_types([2, 3, 3] + [6] * 256 + [1] * (V - 259))
w.add_bos_token_id(1); w.add_eos_token_id(2)

def q_tensor(name, rows, cols, qt):
    bs, bb = gguf.GGML_QUANT_SIZES[qt]
    raw = rng.integers(0, 256, size=(rows, cols // bs * bb), dtype=np.uint8)
    blk = raw.reshape(rows, cols // bs, bb)
    d = np.float16(0.0005).view(np.uint8)
    if qt == QT.Q4_K:
        blk[:, :, 0:2] = d; blk[:, :, 2:4] = d; blk[:, :, 4:16] &= 0x3F
    elif qt == QT.Q6_K:
        blk[:, :, 208:210] = d; blk[:, :, 192:208] = rng.integers(1, 16, size=blk[:, :, 192:208].shape)
    w.add_tensor(name, raw, raw_dtype=qt)

def f32(name, n):
    w.add_tensor(name, np.ones(n, dtype=np.float32))

q_tensor("token_embd.weight", V, E, QT.Q4_K)
f32("output_norm.weight", E)
q_tensor("output.weight", V, E, QT.Q6_K)
for l in range(L):
    p = f"blk.{l}."
    f32(p + "attn_norm.weight", E); f32(p + "ffn_norm.weight", E)
    q_tensor(p + "attn_q.weight", H * HD, E, QT.Q4_K)
    q_tensor(p + "attn_k.weight", KV * HD, E, QT.Q4_K)
    q_tensor(p + "attn_v.weight", KV * HD, E, QT.Q4_K)
    q_tensor(p + "attn_output.weight", E, H * HD, QT.Q4_K)
    q_tensor(p + "ffn_gate.weight", FF, E, QT.Q4_K)
    q_tensor(p + "ffn_up.weight", FF, E, QT.Q4_K)
    q_tensor(p + "ffn_down.weight", E, FF, QT.Q6_K)
w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
PY
}

run() {
  local out="${1:-${OUT:-/tmp}}"
  local build="$LLAMA/build"
  local t0=$SECONDS
  cmake -S "$LLAMA/llama.cpp" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=ON \
    -DCMAKE_CUDA_ARCHITECTURES=90 -DGGML_NATIVE=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF > "$out/llama_cmake.log" 2>&1
  ninja -C "$build" -j "$(nproc)" llama-bench > "$out/llama_build.log" 2>&1
  echo "llama.cpp build: $((SECONDS - t0)) s"
  make_gguf /tmp/llama3-8b-q4_k_m.gguf
  # tg at 1 sequence; pp 512/2048; batched decode throughput comes from -npl in llama-batched-bench.
  "$build/bin/llama-bench" -m /tmp/llama3-8b-q4_k_m.gguf -ngl 99 -p 512,2048 -n 128 -r 3 \
    -o md | tee "$out/llama_bench.md"
}

case "${1:-}" in
  fetch) fetch ;;
  run) shift; run "$@" ;;
  *) echo "usage: $0 fetch | run [OUT]" >&2; exit 2 ;;
esac
