#!/usr/bin/env python3
"""Writes the small model-file fixtures under tests/fixtures/model_files/.

  all_types.gguf        every GGUF metadata type (scalars, arrays of each, arrays of strings,
                        nested arrays), general.alignment = 64, tensors of F32 / F16 / Q8_0 / Q4_1
  tiny_llama.gguf       a 2-layer llama (SentencePiece vocabulary, untied output, Q8_0 / Q4_1 / F16)
  tiny_qwen2.gguf       a 2-layer qwen2 (byte-level BPE, q/k/v biases, tied embeddings, BF16)
  tiny_llama3_rope.gguf a 1-layer llama with Llama 3 rope scaling stored the converter's way: as a
                        rope_freqs.weight tensor of per-pair frequency divisors
  tiny_llama_st/        a Hugging Face folder: config.json (llama3 rope scaling), model.safetensors
                        (F32 / F16 / BF16, a skipped rotary inv_freq), tokenizer.json, tokenizer_config.json
  tiny_qwen2_sharded/   a qwen2 folder in two shards with model.safetensors.index.json, tied, with a
                        redundant lm_head.weight that the loader must ignore
  expected.json         what each fixture holds, as read back by gguf-py's GGUFReader (GGUF) or
                        as written (safetensors): hparams, tokenizer basics, every tensor's internal
                        name, type, GGUF-order shape, file offset, size, first values and sum

Needs gguf (pip) and numpy. Deterministic: run it again and the files are byte-identical.
  python3 tools/make_model_file_fixtures.py [OUT_DIR]
"""
import json
import math
import os
import struct
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as QT, GGUFValueType as VT

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "tests", "fixtures", "model_files")

TYPE_NAMES = {QT.F32: "F32", QT.F16: "F16", QT.BF16: "BF16", QT.Q8_0: "Q8_0", QT.Q4_1: "Q4_1"}


def rng(seed):
    return np.random.default_rng(seed)


def summary(values):
    flat = np.asarray(values, dtype=np.float32).reshape(-1)
    return {"first": [float(x) for x in flat[:8]], "sum": float(flat.astype(np.float64).sum())}


# ----------------------------------------------------------------------------------------------
# GGUF

def add_tensor(w, name, data, qtype):
    """data: float32 array in numpy (row-major) shape; stored as qtype."""
    data = np.ascontiguousarray(data, dtype=np.float32)
    if qtype == QT.F32:
        w.add_tensor(name, data)
    elif qtype == QT.F16:
        w.add_tensor(name, data.astype(np.float16))
    else:
        w.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)


def gguf_expected(path):
    """Reads a written GGUF back with gguf-py's reader: the independent reference."""
    r = gguf.GGUFReader(path)
    out = []
    for t in r.tensors:
        qt = QT(t.tensor_type)
        values = gguf.quants.dequantize(t.data, qt) if qt not in (QT.F32, QT.F16) else t.data
        out.append({
            "name": t.name,
            "type": TYPE_NAMES[qt],
            "shape": [int(x) for x in t.shape],
            "offset": int(t.data_offset),
            "nbytes": int(t.n_bytes),
            "file": os.path.basename(path),
            **summary(values),
        })
    return out


def write_all_types(path):
    w = gguf.GGUFWriter(path, arch="fixture")
    w.add_custom_alignment(64)
    w.add_key_value("t.u8", 200, VT.UINT8)
    w.add_key_value("t.i8", -100, VT.INT8)
    w.add_key_value("t.u16", 60000, VT.UINT16)
    w.add_key_value("t.i16", -30000, VT.INT16)
    w.add_key_value("t.u32", 4000000000, VT.UINT32)
    w.add_key_value("t.i32", -2000000000, VT.INT32)
    w.add_key_value("t.u64", 2**64 - 1, VT.UINT64)
    w.add_key_value("t.i64", -2**63, VT.INT64)
    w.add_key_value("t.f32", 0.1, VT.FLOAT32)
    w.add_key_value("t.f64", 3.141592653589793, VT.FLOAT64)
    w.add_key_value("t.bool_true", True, VT.BOOL)
    w.add_key_value("t.bool_false", False, VT.BOOL)
    w.add_key_value("t.string", "h\u00e9llo w\u00f6rld \u2713", VT.STRING)
    w.add_key_value("t.empty_string", "", VT.STRING)
    w.add_key_value("t.arr_u8", [1, 2, 255], VT.ARRAY, sub_type=VT.UINT8)
    w.add_key_value("t.arr_i8", [-128, 0, 127], VT.ARRAY, sub_type=VT.INT8)
    w.add_key_value("t.arr_u16", [0, 65535], VT.ARRAY, sub_type=VT.UINT16)
    w.add_key_value("t.arr_i16", [-32768, 32767], VT.ARRAY, sub_type=VT.INT16)
    w.add_key_value("t.arr_u32", [0, 4294967295], VT.ARRAY, sub_type=VT.UINT32)
    w.add_key_value("t.arr_i32", [-2147483648, 7, 2147483647], VT.ARRAY, sub_type=VT.INT32)
    w.add_key_value("t.arr_u64", [0, 2**64 - 1], VT.ARRAY, sub_type=VT.UINT64)
    w.add_key_value("t.arr_i64", [-2**63, 2**63 - 1], VT.ARRAY, sub_type=VT.INT64)
    w.add_key_value("t.arr_f32", [0.5, -1.25, 1e30], VT.ARRAY, sub_type=VT.FLOAT32)
    w.add_key_value("t.arr_f64", [0.1, -2.5e-300], VT.ARRAY, sub_type=VT.FLOAT64)
    w.add_key_value("t.arr_bool", [True, False, True], VT.ARRAY, sub_type=VT.BOOL)
    w.add_key_value("t.arr_string", ["a", "", "ccc", "\u2581tok"], VT.ARRAY, sub_type=VT.STRING)
    w.add_key_value("t.arr_nested", [[1, 2], [3, 4, 5]], VT.ARRAY)  # arrays of i32 arrays
    w.add_key_value("t.arr_nested_str", [["x"], ["y", "z"]], VT.ARRAY)
    w.add_key_value("t.arr_nested3", [[[7]], [[8, 9]]], VT.ARRAY)
    add_tensor(w, "f32_tensor", np.arange(12, dtype=np.float32).reshape(3, 4) * 0.5, QT.F32)
    add_tensor(w, "f16_tensor", rng(1).standard_normal((2, 32)), QT.F16)
    add_tensor(w, "q8_0_tensor", rng(2).standard_normal((3, 64)), QT.Q8_0)
    add_tensor(w, "q4_1_tensor", rng(3).standard_normal((2, 32)), QT.Q4_1)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def spm_vocab():
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    words = ["\u2581", "\u2581a", "\u2581the", "\u2581b", "er", "in", "\u2581in", "on", "an", "\u2581c",
             "\u2581hello", "\u2581world", "lo"]
    tokens += words
    scores = [0.0, 0.0, 0.0] + [0.0] * 256 + [-float(i) for i in range(len(words))]
    types = [2, 3, 3] + [6] * 256 + [1] * len(words)
    return tokens, scores, types


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\u00a1"), ord("\u00ac") + 1)) + \
        list(range(ord("\u00ae"), ord("\u00ff") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def bpe_vocab(specials):
    byte_chars = [bytes_to_unicode()[b] for b in range(256)]
    merges = ["\u0120 t", "h e", "\u0120t he", "l l", "\u0120 a", "i n", "e r", "o n"]
    merged = ["\u0120t", "he", "\u0120the", "ll", "\u0120a", "in", "er", "on"]
    tokens = byte_chars + merged + specials
    return tokens, merges


def llama_layer_shapes(n_embd, n_head, n_kv, head_dim, n_ff):
    """numpy (row-major) shapes, i.e. [out, in] as Hugging Face stores them."""
    return {
        "attn_norm.weight": (n_embd,),
        "attn_q.weight": (n_head * head_dim, n_embd),
        "attn_k.weight": (n_kv * head_dim, n_embd),
        "attn_v.weight": (n_kv * head_dim, n_embd),
        "attn_output.weight": (n_embd, n_head * head_dim),
        "ffn_norm.weight": (n_embd,),
        "ffn_gate.weight": (n_ff, n_embd),
        "ffn_up.weight": (n_ff, n_embd),
        "ffn_down.weight": (n_embd, n_ff),
    }


def write_tiny_llama(path):
    n_layer, n_embd, n_head, n_kv, hd, n_ff = 2, 64, 4, 2, 16, 96
    tokens, scores, types = spm_vocab()
    w = gguf.GGUFWriter(path, arch="llama")
    w.add_name("tiny-llama-fixture")
    w.add_block_count(n_layer)
    w.add_context_length(256)
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_dimension_count(hd)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_chat_template("{% for m in messages %}[INST] {{ m['content'] }} [/INST]{% endfor %}")
    r = rng(10)
    add_tensor(w, "token_embd.weight", r.standard_normal((len(tokens), n_embd)), QT.Q8_0)
    add_tensor(w, "output_norm.weight", 1 + 0.1 * r.standard_normal(n_embd), QT.F32)
    add_tensor(w, "output.weight", r.standard_normal((len(tokens), n_embd)), QT.Q8_0)
    for i in range(n_layer):
        for name, shape in llama_layer_shapes(n_embd, n_head, n_kv, hd, n_ff).items():
            qt = QT.F32 if len(shape) == 1 else (QT.F16 if name.startswith("ffn") else QT.Q4_1)
            add_tensor(w, f"blk.{i}.{name}", 0.1 * r.standard_normal(shape), qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return {
        "hparams": {"arch": "llama", "name": "tiny-llama-fixture", "n_layer": n_layer, "n_embd": n_embd,
                    "n_head": n_head, "n_head_kv": n_kv, "head_dim": hd, "n_ff": n_ff, "n_vocab": len(tokens),
                    "n_ctx_train": 256, "rope_theta": 10000.0, "rope_style": "interleaved", "rms_eps": 1e-5,
                    "tied_embeddings": False, "attn_bias": False, "rope_scaling": "none"},
        "tokenizer": {"model": "llama", "pre": "default", "n_tokens": len(tokens), "bos": 1, "eos": 2,
                      "unk": 0, "pad": -1, "add_bos": True, "add_space_prefix": True, "n_merges": 0,
                      "n_scores": len(tokens), "token_5": tokens[5],
                      "chat_template_prefix": "{% for m in messages %}[INST]"},
    }


def write_tiny_qwen2(path):
    n_layer, n_embd, n_head, n_kv, hd, n_ff = 2, 64, 4, 2, 16, 128
    tokens, merges = bpe_vocab(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    n_vocab = 288  # padded past the token list, as the converter pads qwen2 vocabularies
    tokens += [f"[PAD{i}]" for i in range(n_vocab - len(tokens))]
    w = gguf.GGUFWriter(path, arch="qwen2")
    w.add_name("tiny-qwen2-fixture")
    w.add_block_count(n_layer)
    w.add_context_length(4096)
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_key_length(hd)
    w.add_value_length(hd)
    w.add_rope_freq_base(1000000.0)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_vocab_size(n_vocab)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types([1] * 264 + [3] * 3 + [4] * (n_vocab - 267))
    w.add_token_merges(merges)
    w.add_eos_token_id(266)
    w.add_pad_token_id(264)
    w.add_chat_template("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
                        "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}")
    r = rng(20)
    add_tensor(w, "token_embd.weight", r.standard_normal((n_vocab, n_embd)), QT.BF16)
    add_tensor(w, "output_norm.weight", 1 + 0.1 * r.standard_normal(n_embd), QT.F32)
    for i in range(n_layer):
        for name, shape in llama_layer_shapes(n_embd, n_head, n_kv, hd, n_ff).items():
            add_tensor(w, f"blk.{i}.{name}", 0.1 * r.standard_normal(shape), QT.F32 if len(shape) == 1 else QT.BF16)
        for name, n in (("attn_q.bias", n_head * hd), ("attn_k.bias", n_kv * hd), ("attn_v.bias", n_kv * hd)):
            add_tensor(w, f"blk.{i}.{name}", 0.1 * r.standard_normal(n), QT.F32)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return {
        "hparams": {"arch": "qwen2", "name": "tiny-qwen2-fixture", "n_layer": n_layer, "n_embd": n_embd,
                    "n_head": n_head, "n_head_kv": n_kv, "head_dim": hd, "n_ff": n_ff, "n_vocab": n_vocab,
                    "n_ctx_train": 4096, "rope_theta": 1000000.0, "rope_style": "neox", "rms_eps": 1e-6,
                    "tied_embeddings": True, "attn_bias": True, "rope_scaling": "none"},
        "tokenizer": {"model": "gpt2", "pre": "qwen2", "n_tokens": n_vocab, "bos": -1, "eos": 266, "unk": -1,
                      "pad": 264, "add_bos": False, "add_space_prefix": False, "n_merges": len(merges),
                      "n_scores": 0, "token_5": tokens[5],
                      "chat_template_prefix": "{% for message in messages %}{{'<|im_start|>'"},
    }


def llama3_rope_freqs(theta, head_dim, factor, low=1.0, high=4.0, original=8192):
    """The divisors llama.cpp's convert_hf_to_gguf.py writes for rope_type "llama3"."""
    out = []
    for i in range(0, head_dim, 2):
        freq = 1.0 / theta ** (i / head_dim)
        wavelen = 2 * math.pi / freq
        if wavelen < original / high:
            out.append(1.0)
        elif wavelen > original / low:
            out.append(factor)
        else:
            smooth = (original / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def write_tiny_llama3_rope(path):
    n_layer, n_embd, n_head, n_kv, hd, n_ff, theta = 1, 32, 2, 1, 16, 32, 500000.0
    tokens, merges = bpe_vocab(["<|begin_of_text|>", "<|eot_id|>"])
    w = gguf.GGUFWriter(path, arch="llama")
    w.add_block_count(n_layer)
    w.add_context_length(131072)
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_freq_base(theta)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("llama-bpe")
    w.add_token_list(tokens)
    w.add_token_merges(merges)
    w.add_bos_token_id(len(tokens) - 2)
    w.add_eos_token_id(len(tokens) - 1)
    w.add_key_value("tokenizer.ggml.add_bos_token", True, VT.BOOL)
    w.add_chat_template("{{- bos_token }}")
    r = rng(50)
    add_tensor(w, "token_embd.weight", r.standard_normal((len(tokens), n_embd)), QT.F16)
    add_tensor(w, "rope_freqs.weight", llama3_rope_freqs(theta, hd, 32.0), QT.F32)
    add_tensor(w, "output_norm.weight", np.ones(n_embd), QT.F32)
    for name, shape in llama_layer_shapes(n_embd, n_head, n_kv, hd, n_ff).items():
        add_tensor(w, f"blk.0.{name}", 0.1 * r.standard_normal(shape), QT.F32 if len(shape) == 1 else QT.F16)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return {
        "hparams": {"arch": "llama", "name": "", "n_layer": n_layer, "n_embd": n_embd, "n_head": n_head,
                    "n_head_kv": n_kv, "head_dim": hd, "n_ff": n_ff, "n_vocab": len(tokens),
                    "n_ctx_train": 131072, "rope_theta": theta, "rope_style": "interleaved", "rms_eps": 1e-5,
                    "tied_embeddings": True, "attn_bias": False, "rope_scaling": "none",
                    "rope_freq_factors": [float(x) for x in llama3_rope_freqs(theta, hd, 32.0)]},
        "tokenizer": {"model": "gpt2", "pre": "llama-bpe", "n_tokens": len(tokens), "bos": len(tokens) - 2,
                      "eos": len(tokens) - 1, "add_bos": True, "chat_template_prefix": "{{- bos_token }}"},
    }


# ----------------------------------------------------------------------------------------------
# safetensors (written by hand: the format is an 8-byte length, a JSON header, the data)

ST_DTYPES = {"F32": np.float32, "F16": np.float16}


def to_bf16_bytes(a):
    """Round-to-nearest-even float32 -> bfloat16, as torch does; returns (bytes, float32 values)."""
    bits = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    values = (rounded.astype(np.uint32) << 16).view(np.float32)
    return rounded.tobytes(), values


def encode(a, dtype):
    if dtype == "BF16":
        return to_bf16_bytes(a)
    arr = np.ascontiguousarray(a, dtype=ST_DTYPES[dtype])
    return arr.tobytes(), arr.astype(np.float32)


def write_safetensors(path, tensors, metadata=None):
    """tensors: list of (hf_name, float32 array, dtype). Returns {hf_name: (values, rel offset, nbytes)}."""
    header, blobs, info, offset = {}, [], {}, 0
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, a, dtype in tensors:
        data, values = encode(a, dtype)
        header[name] = {"dtype": dtype, "shape": list(a.shape), "data_offsets": [offset, offset + len(data)]}
        info[name] = (values, offset, len(data), dtype)
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the reference writer pads the header to 8 bytes
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)
    return {name: (v, 8 + len(text) + off, n, d) for name, (v, off, n, d) in info.items()}


HF_LAYER = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
}


def tokenizer_json(tokens_bpe, merges, specials, first_special_id):
    vocab = {t: i for i, t in enumerate(tokens_bpe)}
    added = [{"id": first_special_id + i, "content": s, "single_word": False, "lstrip": False,
              "rstrip": False, "normalized": False, "special": True} for i, s in enumerate(specials)]
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "vocab": vocab,
                  "merges": merges},
    }


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")


def st_entries(internal_by_hf, written, file):
    out = []
    for hf, internal in internal_by_hf:
        values, off, nbytes, dtype = written[hf]
        shape = list(reversed(values.shape)) if values.ndim else []
        out.append({"name": internal, "type": dtype, "shape": [int(x) for x in shape], "offset": int(off),
                    "nbytes": int(nbytes), "file": file, **summary(values)})
    return out


def write_tiny_llama_st(folder):
    os.makedirs(folder, exist_ok=True)
    n_layer, n_embd, n_head, n_kv, hd, n_ff, n_vocab = 2, 64, 4, 2, 16, 96, 272
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"]
    tokens, merges = bpe_vocab([])
    r = rng(30)
    tensors, names = [], []

    def add(hf, internal, shape, dtype, scale=0.1, bias=0.0):
        tensors.append((hf, (bias + scale * r.standard_normal(shape)).astype(np.float32), dtype))
        names.append((hf, internal))

    add("model.embed_tokens.weight", "token_embd.weight", (n_vocab, n_embd), "BF16", 1.0)
    for i in range(n_layer):
        for internal, shape in llama_layer_shapes(n_embd, n_head, n_kv, hd, n_ff).items():
            dtype = "F32" if len(shape) == 1 else ("BF16" if internal.startswith("ffn") else "F16")
            add(f"model.layers.{i}.{HF_LAYER[internal]}", f"blk.{i}.{internal}", shape, dtype,
                bias=1.0 if len(shape) == 1 else 0.0)
    tensors.append(("model.layers.0.self_attn.rotary_emb.inv_freq", np.ones(hd // 2, np.float32), "F32"))
    add("model.norm.weight", "output_norm.weight", (n_embd,), "F32", bias=1.0)
    add("lm_head.weight", "output.weight", (n_vocab, n_embd), "F32")
    written = write_safetensors(os.path.join(folder, "model.safetensors"), tensors, {"format": "pt"})
    write_json(os.path.join(folder, "config.json"), {
        "_name_or_path": "tiny-llama-st", "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": n_embd, "intermediate_size": n_ff, "num_hidden_layers": n_layer,
        "num_attention_heads": n_head, "num_key_value_heads": n_kv, "head_dim": None, "vocab_size": n_vocab,
        "max_position_embeddings": 131072, "rope_theta": 500000.0, "rms_norm_eps": 1e-05,
        "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 8192, "rope_type": "llama3"},
        "tie_word_embeddings": False, "attention_bias": False, "bos_token_id": 264, "eos_token_id": [265, 266],
        "torch_dtype": "bfloat16"})
    write_json(os.path.join(folder, "tokenizer.json"), tokenizer_json(tokens, merges, specials, len(tokens)))
    write_json(os.path.join(folder, "tokenizer_config.json"), {
        "add_bos_token": True, "bos_token": "<|begin_of_text|>",
        "eos_token": {"content": "<|eot_id|>", "lstrip": False, "normalized": False, "rstrip": False,
                      "single_word": False},
        "chat_template": "{{- bos_token }}{% for message in messages %}{{ '<|start_header_id|>' }}{% endfor %}"})
    return {
        "hparams": {"arch": "llama", "name": "tiny-llama-st", "n_layer": n_layer, "n_embd": n_embd, "n_head": n_head,
                    "n_head_kv": n_kv, "head_dim": hd, "n_ff": n_ff, "n_vocab": n_vocab, "n_ctx_train": 131072,
                    "rope_theta": 500000.0, "rope_style": "neox", "rms_eps": 1e-5, "tied_embeddings": False,
                    "attn_bias": False, "rope_scaling": "llama3", "rope_factor": 8.0, "rope_low_freq_factor": 1.0,
                    "rope_high_freq_factor": 4.0, "rope_original_context": 8192},
        "tokenizer": {"bos": 264, "eos": 266, "add_bos": True,
                      "chat_template_prefix": "{{- bos_token }}{% for message in messages %}"},
        "tensors": st_entries(names, written, "model.safetensors"),
    }


def write_tiny_qwen2_sharded(folder):
    os.makedirs(folder, exist_ok=True)
    n_layer, n_embd, n_head, n_kv, hd, n_ff, n_vocab = 2, 64, 4, 2, 16, 128, 288
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokens, merges = bpe_vocab([])
    r = rng(40)
    shards = {"model-00001-of-00002.safetensors": [], "model-00002-of-00002.safetensors": []}
    names = {k: [] for k in shards}

    def add(shard, hf, internal, shape, scale=0.1, bias=0.0):
        shards[shard].append((hf, (bias + scale * r.standard_normal(shape)).astype(np.float32), "F32"))
        if internal:
            names[shard].append((hf, internal))

    s1, s2 = list(shards)
    add(s1, "model.embed_tokens.weight", "token_embd.weight", (n_vocab, n_embd), 1.0)
    for i in range(n_layer):
        shard = s1 if i == 0 else s2
        shapes = llama_layer_shapes(n_embd, n_head, n_kv, hd, n_ff)
        shapes.update({"attn_q.bias": (n_head * hd,), "attn_k.bias": (n_kv * hd,), "attn_v.bias": (n_kv * hd,)})
        for internal, shape in shapes.items():
            norm = internal.endswith("norm.weight")
            add(shard, f"model.layers.{i}.{HF_LAYER[internal]}", f"blk.{i}.{internal}", shape,
                bias=1.0 if norm else 0.0)
    add(s2, "model.norm.weight", "output_norm.weight", (n_embd,), bias=1.0)
    add(s2, "lm_head.weight", None, (n_vocab, n_embd))  # tied: present but ignored
    index, expected = {"metadata": {"total_size": 0}, "weight_map": {}}, []
    for shard, tensors in shards.items():
        written = write_safetensors(os.path.join(folder, shard), tensors)
        for hf, _, _ in tensors:
            index["weight_map"][hf] = shard
        expected += st_entries(names[shard], written, shard)
    write_json(os.path.join(folder, "model.safetensors.index.json"), index)
    write_json(os.path.join(folder, "config.json"), {
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": n_embd,
        "intermediate_size": n_ff, "num_hidden_layers": n_layer, "num_attention_heads": n_head,
        "num_key_value_heads": n_kv, "vocab_size": n_vocab, "max_position_embeddings": 32768,
        "rope_theta": 1000000.0, "rms_norm_eps": 1e-06, "rope_scaling": None, "tie_word_embeddings": True,
        "bos_token_id": 256, "eos_token_id": 258})
    write_json(os.path.join(folder, "tokenizer.json"), tokenizer_json(tokens, merges, specials, len(tokens)))
    write_json(os.path.join(folder, "tokenizer_config.json"), {
        "add_bos_token": False, "bos_token": None, "eos_token": "<|im_end|>",
        "chat_template": [{"name": "tool_use", "template": "{{ tools }}"},
                          {"name": "default", "template": "{% for message in messages %}{{'<|im_start|>'"}]})
    return {
        "hparams": {"arch": "qwen2", "name": "", "n_layer": n_layer, "n_embd": n_embd, "n_head": n_head,
                    "n_head_kv": n_kv, "head_dim": hd, "n_ff": n_ff, "n_vocab": n_vocab, "n_ctx_train": 32768,
                    "rope_theta": 1000000.0, "rope_style": "neox", "rms_eps": 1e-6, "tied_embeddings": True,
                    "attn_bias": True, "rope_scaling": "none"},
        "tokenizer": {"bos": 256, "eos": 266, "add_bos": False,
                      "chat_template_prefix": "{% for message in messages %}{{'<|im_start|>'"},
        "tensors": expected,
    }


def main():
    os.makedirs(OUT, exist_ok=True)
    expected = {}
    p = os.path.join(OUT, "all_types.gguf")
    write_all_types(p)
    expected["all_types.gguf"] = {"tensors": gguf_expected(p)}
    p = os.path.join(OUT, "tiny_llama.gguf")
    expected["tiny_llama.gguf"] = write_tiny_llama(p)
    expected["tiny_llama.gguf"]["tensors"] = gguf_expected(p)
    p = os.path.join(OUT, "tiny_qwen2.gguf")
    expected["tiny_qwen2.gguf"] = write_tiny_qwen2(p)
    expected["tiny_qwen2.gguf"]["tensors"] = gguf_expected(p)
    p = os.path.join(OUT, "tiny_llama3_rope.gguf")
    expected["tiny_llama3_rope.gguf"] = write_tiny_llama3_rope(p)
    expected["tiny_llama3_rope.gguf"]["tensors"] = gguf_expected(p)
    expected["tiny_llama_st"] = write_tiny_llama_st(os.path.join(OUT, "tiny_llama_st"))
    expected["tiny_qwen2_sharded"] = write_tiny_qwen2_sharded(os.path.join(OUT, "tiny_qwen2_sharded"))
    write_json(os.path.join(OUT, "expected.json"), expected)
    for root, _, files in os.walk(OUT):
        for f in sorted(files):
            print(f"{os.path.getsize(os.path.join(root, f)):>8}  {os.path.relpath(os.path.join(root, f), OUT)}")


if __name__ == "__main__":
    main()
