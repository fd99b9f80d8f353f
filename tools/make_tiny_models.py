#!/usr/bin/env python3
"""Makes tests/fixtures/tiny_models/: tiny random-weight llama, mistral and qwen2 models, each as a
Hugging Face folder (config.json, model.safetensors F32, tokenizer.json, tokenizer_config.json),
as GGUF files written by llama.cpp's own convert_hf_to_gguf.py, and with reference outputs from
transformers (float32, eager attention) and, optionally, from llama.cpp.

Everything is seeded: running it twice gives the same weights and references. The file formats
are described in tests/fixtures/tiny_models/README.md.

usage: tools/make_tiny_models.py [--out DIR] [--llama-src DIR] [--llama-bin DIR] [--no-gguf]

Needs: torch, transformers, safetensors, tokenizers, numpy (pip); for GGUF, the llama.cpp source
tree unpacked by tools/build_llamacpp.sh (its convert_hf_to_gguf.py and gguf-py); for llama.cpp
logits, its build (llamacpp-greedy and llama-tokenize).
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

REPO = Path(__file__).resolve().parent.parent
VOCAB = 512
EOS = "<|endoftext|>"

# Text the tokenizer is trained on: fixed, varied (prose, code, numbers, punctuation) so merges
# cover spaces, digits and symbols.
CORPUS = [
    "The quick brown fox jumps over the lazy dog. The dog sleeps in the sun all day long.",
    "Once upon a time, in a small village by the sea, there lived an old fisherman and his cat.",
    "def add(a, b):\n    return a + b\n\nfor i in range(10):\n    print(add(i, i * 2))\n",
    "In 1969, 3 astronauts flew 384,400 km to the Moon; the trip took about 3 days and 4 hours.",
    "Tensor parallel inference splits every layer's weights across 2, 4 or 8 devices.",
    "Prices: apples $1.25, pears $0.99, 12 eggs for $3.49 -- total = $5.73 (tax included).",
    "Q: What is the capital of France?\nA: Paris is the capital and largest city of France.",
    "She said, \"It's not what you look at that matters, it's what you see.\" Then she left.",
    "int main() { std::vector<int> v{1, 2, 3}; return v.size() == 3 ? 0 : 1; }",
    "Shopping list:\n- milk\n- bread\n- butter\n- 6 oranges\n- coffee beans\n",
]

# Strings whose tokenization is recorded for tokenizer tests (HF and llama.cpp must agree).
TOKENIZER_CASES = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "  leading spaces and trailing   ",
    "def add(a, b):\n    return a + b\n",
    "In 1969, 3 astronauts flew 384,400 km.",
    "It's what you see, isn't it? I'll go; we've been.",
    "tabs\tand\nnewlines\n\n",
    "unicode: caf\u00e9 na\u00efve \u00fcber \u65e5\u672c \U0001f600",
    "",
]

SHORT_TEXT = "Once upon a time, in a small village by the sea"
GREEDY_NEW_TOKENS = 16


@dataclass
class Spec:
    name: str
    arch: str  # transformers class
    seed: int
    config: dict
    embed_std: float = 1.0
    extra: dict = field(default_factory=dict)


def specs() -> list[Spec]:
    common = dict(
        vocab_size=VOCAB,
        hidden_size=128,
        num_hidden_layers=2,
        intermediate_size=256,
        max_position_embeddings=256,
        hidden_act="silu",
        rms_norm_eps=1e-5,
        bos_token_id=0,
        eos_token_id=0,
        torch_dtype="float32",
    )
    return [
        Spec(
            name="tiny-llama",
            arch="LlamaForCausalLM",
            seed=1001,
            config=dict(
                common,
                model_type="llama",
                num_attention_heads=8,
                num_key_value_heads=4,
                head_dim=16,
                rope_theta=500000.0,
                # original context 64: wavelengths below 16 are kept, above 64 divided by 8, and
                # the ones between smoothed, so all three llama3 regimes occur for head_dim 16.
                rope_scaling=dict(
                    rope_type="llama3",
                    factor=8.0,
                    low_freq_factor=1.0,
                    high_freq_factor=4.0,
                    original_max_position_embeddings=64,
                ),
                attention_bias=False,
                mlp_bias=False,
                tie_word_embeddings=False,
            ),
        ),
        Spec(
            name="tiny-mistral",
            arch="MistralForCausalLM",
            seed=2004,
            config=dict(
                common,
                model_type="mistral",
                num_attention_heads=8,
                num_key_value_heads=2,
                head_dim=16,
                rope_theta=10000.0,
                sliding_window=None,
                tie_word_embeddings=False,
            ),
        ),
        Spec(
            name="tiny-qwen2",
            arch="Qwen2ForCausalLM",
            seed=3003,
            # Tied: the embedding doubles as the LM head; a small one keeps the greedy text from
            # repeating the last input token forever.
            embed_std=0.1,
            config=dict(
                common,
                model_type="qwen2",
                num_attention_heads=4,
                num_key_value_heads=2,
                head_dim=32,
                rope_theta=1000000.0,
                rms_norm_eps=1e-6,
                use_sliding_window=False,
                sliding_window=None,
                max_window_layers=2,
                tie_word_embeddings=True,
            ),
        ),
    ]


# ---------------------------------------------------------------------------------------------
# tokenizer


def train_tokenizer() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    # GPT-2 style byte-level BPE: llama.cpp calls this pre-tokenizer "gpt2".
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        min_frequency=1,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Repeat the corpus so merge counts are stable and the vocabulary fills up.
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    if tok.get_vocab_size() != VOCAB:
        # The trainer stops early when it runs out of pairs; pad with unused added tokens.
        n = tok.get_vocab_size()
        tok.add_tokens([f"<|unused{i}|>" for i in range(VOCAB - n)])
    assert tok.get_vocab_size() == VOCAB, tok.get_vocab_size()
    return tok


def write_tokenizer(tok: Tokenizer, folder: Path) -> None:
    tok.save(str(folder / "tokenizer.json"))
    cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": EOS,
        "eos_token": EOS,
        "pad_token": EOS,
        "unk_token": None,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 256,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2) + "\n")


# ---------------------------------------------------------------------------------------------
# model


def build_model(spec: Spec) -> torch.nn.Module:
    cfg_cls = getattr(transformers, spec.arch.replace("ForCausalLM", "Config"))
    model_cls = getattr(transformers, spec.arch)
    # A deep copy: config classes may add keys to the nested rope_scaling dict in place.
    cfg = cfg_cls(**copy.deepcopy({k: v for k, v in spec.config.items() if k != "model_type"}))
    cfg._attn_implementation = "eager"
    model = model_cls(cfg).to(torch.float32)

    gen = torch.Generator().manual_seed(spec.seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            if "norm" in name:
                # Random gains around 1 so a mixed-up norm weight shows in the logits.
                p.copy_(1.0 + 0.25 * torch.randn(p.shape, generator=gen))
            elif name.endswith(".bias"):
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))
            elif "embed_tokens" in name:
                p.copy_(spec.embed_std * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[1]))
    model.eval()
    return model


def write_config(spec: Spec, folder: Path) -> None:
    # Write config.json in the long-standing layout of published checkpoints (rope_theta and
    # rope_scaling at top level) rather than whatever this transformers version serialises.
    cfg = {"architectures": [spec.arch], **spec.config}
    cfg["transformers_version"] = transformers.__version__
    (folder / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")


def save_hf_folder(spec: Spec, model: torch.nn.Module, tok: Tokenizer, folder: Path) -> None:
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    model.save_pretrained(str(folder), safe_serialization=True)
    for extra in ("generation_config.json",):
        (folder / extra).unlink(missing_ok=True)
    write_config(spec, folder)
    write_tokenizer(tok, folder)


def load_hf_folder(folder: Path) -> torch.nn.Module:
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(folder), dtype=torch.float32, attn_implementation="eager"
    )
    model.eval()
    return model


# ---------------------------------------------------------------------------------------------
# references


def write_f32(path: Path, arr: np.ndarray) -> None:
    np.ascontiguousarray(arr, dtype="<f4").tofile(path)


def dump_json(obj) -> str:
    """Indented JSON with every list of numbers on one line, so diffs stay readable."""
    text = json.dumps(obj, indent=1, ensure_ascii=False)
    return re.sub(r"\[[-0-9.e,\s]*\]", lambda m: re.sub(r"\s+", "", m.group(0)).replace(",", ", "), text) + "\n"


def max_abs_diff(ref_dir: Path, hf_seqs: list[dict], other_seqs: list[dict]) -> float:
    worst = 0.0
    for a, b in zip(hf_seqs, other_seqs):
        x = np.fromfile(ref_dir / a["logits_file"], dtype="<f4")
        y = np.fromfile(ref_dir / b["logits_file"], dtype="<f4")
        worst = max(worst, float(np.abs(x - y).max()))
    return worst


def top2_margin(row: torch.Tensor) -> float:
    top = torch.topk(row, 2).values
    return float(top[0] - top[1])


def greedy_reference(model: torch.nn.Module, prompt: list[int]) -> dict:
    ids = torch.tensor([prompt])
    # transformers' generate (KV cache path); no EOS stop so the length is always fixed.
    out = model.generate(
        ids,
        max_new_tokens=GREEDY_NEW_TOKENS,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
        use_cache=True,
    )
    generated = out[0, len(prompt):].tolist()
    # A full-recompute argmax loop must agree, and every step's top-2 gap is recorded so a test can
    # see how much numerical slack the greedy path has.
    seq = list(prompt)
    margins = []
    with torch.no_grad():
        for _ in range(GREEDY_NEW_TOKENS):
            row = model(torch.tensor([seq])).logits[0, -1]
            margins.append(top2_margin(row))
            seq.append(int(torch.argmax(row)))
    if seq[len(prompt):] != generated:
        raise RuntimeError(f"generate() {generated} != recompute {seq[len(prompt):]}")
    return {"generated_ids": generated, "top2_margins": margins, "min_top2_margin": min(margins)}


def make_sequences(tok: Tokenizer, seed: int) -> list[dict]:
    short_ids = tok.encode(SHORT_TEXT).ids[:9]
    assert len(short_ids) == 9, short_ids
    rng = np.random.default_rng(seed)
    # 23 fixed ids spread over the whole vocabulary (special id 0 excluded).
    long_ids = [int(x) for x in rng.integers(1, VOCAB, size=23)]
    return [
        {"name": "short", "ids": short_ids, "text": tok.decode(short_ids)},
        # Random ids need not decode to valid UTF-8, so this one has no text.
        {"name": "long", "ids": long_ids, "text": None},
    ]


def hf_references(model: torch.nn.Module, seqs: list[dict], ref_dir: Path) -> list[dict]:
    out = []
    with torch.no_grad():
        for s in seqs:
            logits = model(torch.tensor([s["ids"]])).logits[0].float().numpy()
            fname = f"hf_logits_{s['name']}.f32.bin"
            write_f32(ref_dir / fname, logits)
            out.append({**s, "logits_file": fname, "shape": list(logits.shape)})
    return out


# ---------------------------------------------------------------------------------------------
# llama.cpp: converter and logits

CONVERT_SHIM = r"""
# Runs llama.cpp's convert_hf_to_gguf.py unchanged, except that a BPE pre-tokenizer hash it does not
# know (our tiny tokenizer's) is registered as "gpt-2" (llama.cpp's name for the GPT-2 regex split),
# which is what the tokenizer really is.
import runpy, sys
src = sys.argv[1]
sys.path.insert(0, src)
sys.path.insert(1, src + "/gguf-py")
import conversion.base as base
orig = base.TextModel.get_vocab_base_pre
def patched(self, tokenizer):
    try:
        return orig(self, tokenizer)
    except NotImplementedError:
        return "gpt-2"
base.TextModel.get_vocab_base_pre = patched
sys.argv = [src + "/convert_hf_to_gguf.py"] + sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def convert_gguf(llama_src: Path, hf_dir: Path, out: Path, outtype: str, name: str) -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(CONVERT_SHIM)
        shim = f.name
    try:
        cmd = [sys.executable, shim, str(llama_src), str(hf_dir), "--outtype", outtype, "--outfile", str(out),
               "--model-name", name]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            sys.stderr.write(res.stdout[-4000:] + res.stderr[-4000:])
            raise RuntimeError(f"convert_hf_to_gguf failed for {hf_dir} ({outtype})")
        if "pre-tokenizer was not recognized" in res.stdout + res.stderr:
            print("  note: converter did not know the tiny tokenizer's hash; registered as gpt-2")
    finally:
        os.unlink(shim)


def llamacpp_logits(bin_dir: Path, gguf: Path, ids: list[int], out: Path) -> dict:
    cmd = [str(bin_dir / "llamacpp-greedy"), "-m", str(gguf), "--ids", ",".join(map(str, ids)),
           "-n", str(GREEDY_NEW_TOKENS), "-t", "2", "--logits", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        sys.stderr.write(res.stderr[-2000:])
        raise RuntimeError(f"llamacpp-greedy failed on {gguf}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def llamacpp_tokenize(bin_dir: Path, gguf: Path, text: str) -> list[int]:
    with tempfile.NamedTemporaryFile("wb", suffix=".txt", delete=False) as f:
        f.write(text.encode("utf-8"))
        path = f.name
    try:
        cmd = [str(bin_dir / "llama-tokenize"), "-m", str(gguf), "-f", path, "--ids", "--no-escape",
               "--log-disable", "--no-bos", "--no-parse-special"]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            sys.stderr.write(res.stderr[-4000:])
            raise RuntimeError(f"llama-tokenize failed on {gguf}")
        return json.loads(res.stdout.strip().splitlines()[-1])
    finally:
        os.unlink(path)


# ---------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "tests/fixtures/tiny_models")
    ap.add_argument("--llama-src", type=Path, default=Path("/work/llama/src"))
    ap.add_argument("--llama-bin", type=Path, default=Path("/work/llama/build-cpu/bin"))
    ap.add_argument("--no-gguf", action="store_true", help="skip the GGUF conversions and llama.cpp references")
    # Every model gets a Q8_0 and an F32 GGUF (the engine test holds F32 to 1e-4 against
    # transformers); F16 for tiny-llama (whose Q/K the converter permutes) and tiny-qwen2.
    ap.add_argument("--gguf-types", default="q8_0,f32", help="converter --outtype list for every model")
    ap.add_argument("--extra-gguf", default="tiny-llama:f16,tiny-qwen2:f16",
                    help="comma list of MODEL:TYPE for further GGUFs, e.g. tiny-llama:f32,tiny-qwen2:f16")
    args = ap.parse_args()

    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    tok = train_tokenizer()
    have_llama_bin = (args.llama_bin / "llamacpp-greedy").exists() and (args.llama_bin / "llama-tokenize").exists()
    tokenizer_cases = [{"text": t, "ids": tok.encode(t).ids} for t in TOKENIZER_CASES]
    for case in tokenizer_cases:
        assert tok.decode(case["ids"]) == case["text"], case

    for spec in specs():
        print(f"== {spec.name}")
        root = out / spec.name
        hf_dir = root / "hf"
        ref_dir = root / "ref"
        gguf_dir = root / "gguf"
        for d in (ref_dir, gguf_dir):
            if d.exists():
                shutil.rmtree(d)
            d.mkdir(parents=True)

        save_hf_folder(spec, build_model(spec), tok, hf_dir)
        # References come from the folder as saved, so they describe exactly the committed files.
        model = load_hf_folder(hf_dir)
        seqs = make_sequences(tok, spec.seed)
        sequences = hf_references(model, seqs, ref_dir)
        greedy = {"prompt": "long", "prompt_ids": seqs[1]["ids"], **greedy_reference(model, seqs[1]["ids"])}
        print(f"  greedy {greedy['generated_ids']} min margin {greedy['min_top2_margin']:.4f}")

        reference = {
            "model": spec.name,
            "architecture": spec.arch,
            "vocab_size": VOCAB,
            "made_by": "tools/make_tiny_models.py",
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
            "hf": {"dtype": "float32", "attn_implementation": "eager", "sequences": sequences, "greedy": greedy},
            "gguf": {},
            "llamacpp": {},
        }

        if not args.no_gguf:
            extra = [e.split(":", 1)[1] for e in args.extra_gguf.split(",") if e.startswith(spec.name + ":")]
            types = extra + [t for t in args.gguf_types.split(",") if t and t not in extra]
            for t in types:
                path = gguf_dir / f"{spec.name}.{t}.gguf"
                convert_gguf(args.llama_src, hf_dir, path, t, spec.name)
                reference["gguf"][t] = f"gguf/{path.name}"
                print(f"  wrote {path.relative_to(out)} ({path.stat().st_size} bytes)")
            if have_llama_bin:
                for t in types:
                    gg = gguf_dir / f"{spec.name}.{t}.gguf"
                    entry = {"gguf": f"gguf/{gg.name}", "sequences": []}
                    for s in seqs:
                        fname = f"llamacpp_{t}_logits_{s['name']}.f32.bin"
                        res = llamacpp_logits(args.llama_bin, gg, s["ids"], ref_dir / fname)
                        entry["sequences"].append({"name": s["name"], "ids": s["ids"], "logits_file": fname,
                                                   "shape": [len(s["ids"]), res["n_vocab"]]})
                        if s["name"] == "long":
                            entry["greedy"] = {"prompt": "long", "generated_ids": res["generated_ids"]}
                    entry["max_abs_diff_vs_hf"] = max_abs_diff(ref_dir, sequences, entry["sequences"])
                    reference["llamacpp"][t] = entry
                    g = entry["greedy"]["generated_ids"]
                    print(f"  llama.cpp {t} greedy {g}{' (= HF)' if g == greedy['generated_ids'] else ''}")
                # The GGUF tokenizer must reproduce the HF tokenizer exactly.
                gg = gguf_dir / f"{spec.name}.{types[0]}.gguf"
                for case in tokenizer_cases:
                    got = llamacpp_tokenize(args.llama_bin, gg, case["text"]) if case["text"] else []
                    if got != case["ids"]:
                        raise RuntimeError(f"{gg.name}: llama.cpp tokenizes {case['text']!r} as {got}, "
                                           f"HF as {case['ids']}")
                    case["llamacpp_agrees"] = True

        (ref_dir / "reference.json").write_text(dump_json(reference))

    (out / "tokenizer_cases.json").write_text(dump_json(
        {"tokenizer": "tiny-*/hf/tokenizer.json (identical in every model)", "add_special_tokens": False,
         "cases": tokenizer_cases}))
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"total size of {out}: {total / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
