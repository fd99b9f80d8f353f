#!/usr/bin/env python3
"""Writes the seed corpora of the model-file fuzzers: tests/fuzz/corpus/{gguf_fuzz,safetensors_fuzz}/.
Small valid files that reach every stage of the readers (header, metadata of each type, tensor
infos, HParams, tokenizer, shape checks) and slightly broken copies of them.
  python3 tests/fuzz/make_corpus.py          (needs gguf and numpy from pip)
"""
import json
import os
import shutil
import struct

import numpy as np
import gguf
from gguf import GGMLQuantizationType as QT, GGUFValueType as VT

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
GGUF_DIR = os.path.join(HERE, "corpus", "gguf_fuzz")
ST_DIR = os.path.join(HERE, "corpus", "safetensors_fuzz")


def micro_model(path, arch, bias, tied, tokenizer):
    """A complete, consistent 1-layer model of F32 tensors, a few hundred bytes each."""
    n_embd, n_head, n_kv, hd, n_ff, tokens = 8, 2, 1, 4, 8, ["<unk>", "<s>", "</s>", "a", "b", "ab"]
    w = gguf.GGUFWriter(path, arch=arch)
    w.add_block_count(1)
    w.add_context_length(64)
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model(tokenizer)
    w.add_token_list(tokens)
    if tokenizer == "llama":
        w.add_token_scores([0.0, 0.0, 0.0, -1.0, -2.0, -3.0])
    else:
        w.add_tokenizer_pre("qwen2")
        w.add_token_merges(["a b"])
        w.add_key_value("tokenizer.ggml.add_bos_token", True, VT.BOOL)
    w.add_token_types([2, 3, 3, 1, 1, 1])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_chat_template("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    f = lambda *shape: np.full(shape, 0.5, np.float32)
    w.add_tensor("token_embd.weight", f(len(tokens), n_embd))
    w.add_tensor("output_norm.weight", f(n_embd))
    if arch == "llama":
        w.add_tensor("rope_freqs.weight", np.array([1.0, 4.0], np.float32))  # head_dim / 2 divisors
    if not tied:
        w.add_tensor("output.weight", f(len(tokens), n_embd).astype(np.float16))
    w.add_tensor("blk.0.attn_norm.weight", f(n_embd))
    w.add_tensor("blk.0.attn_q.weight", f(n_head * hd, n_embd))
    w.add_tensor("blk.0.attn_k.weight", f(n_kv * hd, n_embd))
    w.add_tensor("blk.0.attn_v.weight", f(n_kv * hd, n_embd))
    w.add_tensor("blk.0.attn_output.weight", f(n_embd, n_head * hd))
    if bias:
        w.add_tensor("blk.0.attn_q.bias", f(n_head * hd))
        w.add_tensor("blk.0.attn_k.bias", f(n_kv * hd))
        w.add_tensor("blk.0.attn_v.bias", f(n_kv * hd))
    w.add_tensor("blk.0.ffn_norm.weight", f(n_embd))
    w.add_tensor("blk.0.ffn_gate.weight", f(n_ff, n_embd))
    w.add_tensor("blk.0.ffn_up.weight", f(n_ff, n_embd))
    w.add_tensor("blk.0.ffn_down.weight", f(n_embd, n_ff))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def quantized(path):
    w = gguf.GGUFWriter(path, arch="fixture")
    w.add_custom_alignment(64)
    w.add_key_value("t.nested", [[1, 2], [3]], VT.ARRAY)
    w.add_key_value("t.f64", 2.5, VT.FLOAT64)
    w.add_key_value("t.u64s", [1, 2], VT.ARRAY, sub_type=VT.UINT64)
    for qt in (QT.Q8_0, QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1):
        data = np.linspace(-1, 1, 64, dtype=np.float32).reshape(1, 64)
        w.add_tensor(f"t_{qt.name}", gguf.quants.quantize(data, qt), raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write_st(path, tensors, metadata=None, pad=True):
    header, blobs, off = {}, [], 0
    if metadata:
        header["__metadata__"] = metadata
    for name, dtype, shape, nbytes in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + nbytes]}
        blobs.append(bytes(range(256)) * (nbytes // 256) + bytes(range(nbytes % 256)))
        off += nbytes
    text = json.dumps(header).encode()
    if pad:
        text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def mutate(src, dst, fn):
    with open(src, "rb") as f:
        b = bytearray(f.read())
    fn(b)
    with open(dst, "wb") as f:
        f.write(b)


def main():
    for d in (GGUF_DIR, ST_DIR):
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
    g = lambda name: os.path.join(GGUF_DIR, name)
    micro_model(g("micro_llama.gguf"), "llama", bias=False, tied=False, tokenizer="llama")
    micro_model(g("micro_qwen2.gguf"), "qwen2", bias=True, tied=True, tokenizer="gpt2")
    quantized(g("quantized.gguf"))
    shutil.copy(os.path.join(ROOT, "tests", "fixtures", "model_files", "all_types.gguf"), g("all_types.gguf"))
    mutate(g("micro_llama.gguf"), g("micro_llama_v2.gguf"), lambda b: b.__setitem__(4, 2))
    mutate(g("micro_llama.gguf"), g("micro_llama_truncated.gguf"), lambda b: b.__delitem__(slice(len(b) // 2, None)))
    mutate(g("micro_qwen2.gguf"), g("micro_qwen2_flipped.gguf"), lambda b: b.__setitem__(300, b[300] ^ 0x40))
    mutate(g("all_types.gguf"), g("all_types_cut_kv.gguf"), lambda b: b.__delitem__(slice(700, None)))

    s = lambda name: os.path.join(ST_DIR, name)
    tensors = [("model.embed_tokens.weight", "BF16", [4, 8], 64), ("model.norm.weight", "F32", [8], 32),
               ("model.layers.0.mlp.up_proj.weight", "F16", [2, 8], 32), ("position_ids", "I64", [1, 4], 32),
               ("scalar", "F32", [], 4)]
    write_st(s("valid.safetensors"), tensors, {"format": "pt"})
    write_st(s("unpadded.safetensors"), tensors[:2], pad=False)
    write_st(s("empty.safetensors"), [])
    mutate(s("valid.safetensors"), s("truncated.safetensors"), lambda b: b.__delitem__(slice(len(b) - 20, None)))
    mutate(s("valid.safetensors"), s("bad_json.safetensors"), lambda b: b.__setitem__(20, ord("{")))
    mutate(s("valid.safetensors"), s("long_header.safetensors"), lambda b: b.__setitem__(5, 1))
    for d in (GGUF_DIR, ST_DIR):
        for name in sorted(os.listdir(d)):
            print(f"{os.path.getsize(os.path.join(d, name)):>7}  {os.path.relpath(os.path.join(d, name), HERE)}")


if __name__ == "__main__":
    main()
