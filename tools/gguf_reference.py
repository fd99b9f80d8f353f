#!/usr/bin/env python3
"""Writes what gguf-py reads from a GGUF model, for tests/model/default_model_test.cpp to compare
ModelFile against field by field: architecture, hparams, tokenizer basics, every tensor's
name / type / GGUF-order shape / absolute data offset / size, and the metadata key list.

  python3 tools/gguf_reference.py [MODEL.gguf] [OUT.json]
Defaults: models/SmolLM2-135M-Instruct.Q4_1.gguf -> tests/fixtures/model_files/smollm2_reference.json
Needs gguf (pip) and numpy.
"""
import json
import os
import sys

import gguf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
OUT = sys.argv[2] if len(sys.argv) > 2 else os.path.join(ROOT, "tests", "fixtures", "model_files",
                                                         "smollm2_reference.json")


def scalar(reader, key, default=None):
    field = reader.get_field(key)
    return default if field is None else field.contents()


PROBES = ["token_embd.weight", "blk.0.attn_norm.weight", "blk.0.attn_q.weight", "output_norm.weight"]


def probe(reader, name):
    t = next(t for t in reader.tensors if t.name == name)
    qt = gguf.GGMLQuantizationType(t.tensor_type)
    values = gguf.quants.dequantize(t.data, qt).reshape(-1, int(t.shape[0]))[0]
    return {"name": name, "row0_first": [float(x) for x in values[:8]],
            "row0_sum": float(values.astype("float64").sum())}


def main():
    r = gguf.GGUFReader(MODEL)
    arch = scalar(r, "general.architecture")
    tokens = r.get_field("tokenizer.ggml.tokens")
    n_tokens = len(tokens.data) if tokens is not None else 0
    n_head = scalar(r, f"{arch}.attention.head_count")
    n_embd = scalar(r, f"{arch}.embedding_length")
    names = {t.name for t in r.tensors}
    gpt2 = scalar(r, "tokenizer.ggml.model") == "gpt2"
    ref = {
        "file": os.path.basename(MODEL),
        "file_size": os.path.getsize(MODEL),
        "version": scalar(r, "GGUF.version"),
        "alignment": scalar(r, "general.alignment", 32),
        "data_offset": int(r.data_offset),
        "arch": arch,
        "hparams": {
            "name": scalar(r, "general.name", ""),
            "n_layer": scalar(r, f"{arch}.block_count"),
            "n_embd": n_embd,
            "n_head": n_head,
            "n_head_kv": scalar(r, f"{arch}.attention.head_count_kv", n_head),
            "head_dim": scalar(r, f"{arch}.attention.key_length", n_embd // n_head),
            "n_ff": scalar(r, f"{arch}.feed_forward_length"),
            "n_vocab": scalar(r, f"{arch}.vocab_size", n_tokens),
            "n_ctx_train": scalar(r, f"{arch}.context_length"),
            "rope_theta": scalar(r, f"{arch}.rope.freq_base", 10000.0),
            "rms_eps": scalar(r, f"{arch}.attention.layer_norm_rms_epsilon"),
            "tied_embeddings": "output.weight" not in names,
            "attn_bias": "blk.0.attn_q.bias" in names,
        },
        "tokenizer": {
            "model": scalar(r, "tokenizer.ggml.model"),
            "pre": scalar(r, "tokenizer.ggml.pre", "default"),
            "n_tokens": n_tokens,
            "n_merges": len(r.get_field("tokenizer.ggml.merges").data) if "tokenizer.ggml.merges" in r.fields else 0,
            "bos": scalar(r, "tokenizer.ggml.bos_token_id", -1),
            "eos": scalar(r, "tokenizer.ggml.eos_token_id", -1),
            "unk": scalar(r, "tokenizer.ggml.unknown_token_id", -1),
            "pad": scalar(r, "tokenizer.ggml.padding_token_id", -1),
            "add_bos": scalar(r, "tokenizer.ggml.add_bos_token", not gpt2),
            "add_space_prefix": scalar(r, "tokenizer.ggml.add_space_prefix", not gpt2),
            "first_tokens": [tokens.contents(i) for i in range(min(8, n_tokens))],
            "last_token": tokens.contents(n_tokens - 1) if n_tokens else "",
            "chat_template_length": len(scalar(r, "tokenizer.chat_template", "").encode()),
        },
        "tensor_count": len(r.tensors),
        "tensors": [{
            "name": t.name,
            "type": t.tensor_type.name,
            "shape": [int(x) for x in t.shape],
            "offset": int(t.data_offset),
            "nbytes": int(t.n_bytes),
        } for t in r.tensors],
        # Row 0 of a few tensors, dequantized by gguf-py: proves the views point at the right bytes.
        "probes": [probe(r, name) for name in PROBES if name in names],
        # gguf-py lists the three header fields as pseudo-keys; the file's own keys follow.
        "metadata_keys": [k for k in r.fields if not k.startswith("GGUF.")],
    }
    with open(OUT, "w") as f:
        json.dump(ref, f, indent=1)
        f.write("\n")
    print(f"{OUT}: {len(r.tensors)} tensors, {len(ref['metadata_keys'])} keys")


if __name__ == "__main__":
    main()
