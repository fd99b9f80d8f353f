#!/usr/bin/env python3
"""Makes the tokenizer fixtures under tests/fixtures/tokenizer/ from independent references.

  smollm2_vocab.bin     the default model's vocabulary (tokens, types, merges, special ids, pre,
                        chat template), read from its GGUF with gguf-py
  smollm2_cases.json    strings and the ids Hugging Face `tokenizers` gives them, with the
                        SmolLM2 pre-tokenizer (Digits(individual) + ByteLevel, as the model's own
                        tokenizer.json) and, on the same vocabulary, the Llama 3, Qwen2, GPT-2 and
                        llama.cpp-default splits
  spm_vocab.bin         a small SentencePiece BPE model (byte_fallback) trained here
  spm_cases.json        strings and sentencepiece's own ids for them
  hf_bytelevel/         a byte-level BPE tokenizer.json (GPT-2 style) trained with `tokenizers`
  hf_llama3/            a byte-level tokenizer.json with the Llama 3 Split regex and BOS template
  hf_llama2/            the SentencePiece model above as a Llama-2-style tokenizer.json
  hf_mistral/           ... and as a Mistral-style one (Metaspace pre-tokenizer)
                        each with tokenizer_config.json and cases.json (ids from `tokenizers`)
  chat_cases.json       conversations rendered with Jinja2 by the SmolLM2, Llama 3, Llama 2 and
                        Mistral templates

The .bin layout (little endian): "TPVOCAB1", then model, pre, chat_template as strings
(varint length + bytes), varint n_tokens and the tokens as strings, n_tokens type bytes, varint
n_scores and f32 scores, varint n_merges and merges as (varint left id, varint right id), then
bos, eos, eot, unk, pad as i32, then add_bos, add_eos, add_space_prefix as bytes.

Usage: pip install gguf transformers tokenizers sentencepiece protobuf jinja2
       python3 tools/make_tokenizer_fixtures.py [path/to/SmolLM2-135M-Instruct.Q4_1.gguf]
"""
import io
import json
import os
import random
import struct
import sys

import gguf
import jinja2
import sentencepiece as spm
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
from tokenizers import processors, trainers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "tokenizer")

LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
               r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"


# ---------------------------------------------------------------------------------------------
# Binary vocabulary files

def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def vstr(s) -> bytes:
    b = s if isinstance(s, bytes) else s.encode("utf-8")
    return varint(len(b)) + b


def write_vocab(path, d):
    tokens = d["tokens"]
    index = {t: i for i, t in reversed(list(enumerate(tokens)))}
    out = bytearray(b"TPVOCAB1")
    out += vstr(d["model"]) + vstr(d["pre"]) + vstr(d.get("chat_template", ""))
    out += varint(len(tokens))
    for t in tokens:
        out += vstr(t)
    out += bytes(d["types"])
    scores = d.get("scores", [])
    out += varint(len(scores)) + b"".join(struct.pack("<f", s) for s in scores)
    merges = d.get("merges", [])
    out += varint(len(merges))
    for m in merges:
        a, b = m.split(b" " if isinstance(m, bytes) else " ", 1)
        out += varint(index[a]) + varint(index[b])
    for key in ("bos", "eos", "eot", "unk", "pad"):
        out += struct.pack("<i", d.get(key, -1))
    out += bytes([int(d.get("add_bos", False)), int(d.get("add_eos", False)),
                  int(d.get("add_space_prefix", True))])
    with open(path, "wb") as fh:
        fh.write(out)
    print(f"wrote {path} ({len(out)} bytes)")


def write_json(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, ensure_ascii=False, indent=None, separators=(",", ":"))
        fh.write("\n")
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")


# ---------------------------------------------------------------------------------------------
# Test strings

BASE_STRINGS = [
    "", "a", " ", "  ", "\n", "\n\n", "\t", " \t\n", "Hello", "Hello world", " Hello world",
    "Hello  world", "Hello   world   ", "hello\nworld", "line1\r\nline2", "   leading", "trailing   ",
    "a \n b", "a  \n  b", " \n \n ", "x\n\n\n\ny", "\t\n\r\n", "a\t\tb", "a \t b", "end\n",
    "I'm", "you're", "they've", "we'll", "she'd", "it's", "don't", "IT'S", "I'M FINE", "'s", "'sup",
    "o'clock", "rock'n'roll", "She'S", "We'Re here", "'ll'd've", "l'été", " 'quoted' ",
    "12345", "3.14159", "1,000,000", "phone 555-1234", "2024-01-01", " 42", "x1y2z3", "a 1 b 22 c 333",
    "1234567890123", "١٢٣ ٤٥٦", "²³ ⁴", "Ⅻ ⅻ", "½ ¾", "v2.0.1-rc3", "0x1F 0b1010",
    "def foo(x):\n    return x * 2\n", "for (int i = 0; i < n; ++i) {\n\tsum += a[i];\n}",
    "#include <stdio.h>\nint main(void) { return 0; }", "SELECT * FROM t WHERE id=1;",
    "<div class=\"x\">hi</div>", "$ ls -la | grep foo > out.txt", "{\"key\": [1, 2, {\"a\": null}]}",
    "a->b", "x!=y&&z||w", "    indented", "\t\ttabs", "{{ jinja }}", "https://example.com/path?q=1&r=2",
    "if (a) {\n        b();\n    }\n", "    \n    \n", "x = [i**2 for i in range(10)]  # squares",
    "你好，世界", "日本語のテキストです。", "한국어 문장입니다", "中文 English 混合", "漢字かなカナ",
    "😀", "Hello 👋 world 🌍!", "👨‍👩‍👧‍👦", "🇺🇸🇯🇵", "❤️", "✓ done", "🤗🤗🤗", " 🎉 party",
    "Привет, мир!", "Ελληνικά γράμματα", "مرحبا بالعالم", "שלום עולם", "नमस्ते दुनिया", "ภาษาไทย",
    "café résumé naïve", "Ünïcödé", "e\u0301 combining", "ﬁ ligature", "a\u00a0b", "a\u2003b",
    "a\u200bb", "\u3000全角スペース", "line\u2028sep", "Straße", "İstanbul", "ǅ titlecase",
    "Hello!!!", "...", "?!?!", "a--b", "(parenthetical)", "[bracket]", "\"quoted\"", "«guillemets»",
    "—em dash—", "…", "¡Hola!", "¿Qué?", "a_b_c", "snake_case_name", "CamelCaseName", "ALLCAPS",
    "mixedCASE123abc", "tab\tseparated\tvalues", "semi;colon", "@user #tag", "~/path/to/file",
    "C:\\Windows\\System32", "100%", "$9.99", "€5 £3 ¥7", "a+b=c", "x^2", "<<>>", "a  ", "  a",
    "llll", "lllll", "oooo", "ooooo", "++++", "+++++", "a+++b", "wellll", "cool oooo ll", "aaaa",
    "\n\nHello", "Hello\n\n", " \n", "\n ", " ' ", "''", "'", "\"\"\"docstring\"\"\"",
]

SPECIAL_STRINGS = [
    "<|im_start|>user\nHi<|im_end|>\n", "<|im_start|>", "<|im_end|>", "a<|endoftext|>b",
    "<|im_start|><|im_end|>", " <|im_start|> ", "<|im_start", "<|im_start|>system\nYou are "
    "helpful<|im_end|>\n<|im_start|>assistant\n", "<repo_name>x<file_sep>y", "<|im_end|>\n\n",
    "text <|endoftext|> more", "<|im_start|>assistant\n12345<|im_end|>",
]

FRAGMENTS = [
    "the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "It's", "we'll", "123", "4",
    "3.5", "你好", "世界", "😀", "🚀", "café", "über", "naïve", "Привет", "λόγος", "(", ")", "{",
    "}", "=>", "::", "//", "#", "...", "!", "?", "def", "return", "x_1", "CONST", "ǅ", "½",
    "\u00a0", "e\u0301", "한국", "日本", "١٢", "\u200d",
]
SEPARATORS = [" ", "", "\n", "  ", "\t", ", ", " \n", "\n\n", "   ", "\r\n", ". "]


def generated_strings(n, seed, with_special):
    rng = random.Random(seed)
    out = []
    specials = ["<|im_start|>", "<|im_end|>", "<|endoftext|>"]
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(2, 12)):
            if with_special and rng.random() < 0.08:
                parts.append(rng.choice(specials))
            else:
                parts.append(rng.choice(FRAGMENTS))
            parts.append(rng.choice(SEPARATORS))
        out.append("".join(parts))
    return out


def long_string(seed):
    rng = random.Random(seed)
    words = [w for w in FRAGMENTS if w.strip()] + ["lorem", "ipsum", "dolor", "sit", "amet"]
    paragraphs = []
    for _ in range(40):
        sentence = " ".join(rng.choice(words) for _ in range(rng.randint(8, 20)))
        paragraphs.append(sentence[0].upper() + sentence[1:] + ".")
    return "\n\n".join(paragraphs) + "\n" + " " * 40 + "\n" + "x" * 300 + " " + "1" * 50


def plain_strings():
    return BASE_STRINGS + generated_strings(70, 7, False) + [long_string(1), long_string(2)]


def all_strings():
    return plain_strings() + SPECIAL_STRINGS + generated_strings(30, 11, True)


# ---------------------------------------------------------------------------------------------
# SmolLM2 (the default model)

def read_gguf_tokenizer(path):
    r = gguf.GGUFReader(path)

    def arr(key):
        f = r.fields[key]
        return [f.parts[i] for i in f.data]

    def scalar(key, default=None):
        if key not in r.fields:
            return default
        f = r.fields[key]
        v = f.parts[f.data[0]]
        return bytes(v).decode("utf-8") if f.types[0] == gguf.GGUFValueType.STRING else v[0].item()

    return {
        "model": scalar("tokenizer.ggml.model"),
        "pre": scalar("tokenizer.ggml.pre", "default"),
        "chat_template": scalar("tokenizer.chat_template", ""),
        "tokens": [bytes(t).decode("utf-8") for t in arr("tokenizer.ggml.tokens")],
        "types": [int(t[0]) for t in arr("tokenizer.ggml.token_type")],
        "merges": [bytes(m).decode("utf-8") for m in arr("tokenizer.ggml.merges")],
        "bos": scalar("tokenizer.ggml.bos_token_id", -1),
        "eos": scalar("tokenizer.ggml.eos_token_id", -1),
        "unk": scalar("tokenizer.ggml.unknown_token_id", -1),
        "pad": scalar("tokenizer.ggml.padding_token_id", -1),
        "add_bos": bool(scalar("tokenizer.ggml.add_bos_token", False)),
        "add_eos": bool(scalar("tokenizer.ggml.add_eos_token", False)),
        "add_space_prefix": bool(scalar("tokenizer.ggml.add_space_prefix", False)),
    }


def bytes_to_unicode():
    """GPT-2's byte alphabet (as in its encoder.py)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def byte_level_reference(d, pre, with_specials):
    """A `tokenizers` BPE over the vocabulary with the given pre-tokenizer."""
    vocab = {}
    for i, t in enumerate(d["tokens"]):
        vocab.setdefault(t, i)
    merges = [tuple(m.split(" ", 1)) for m in d["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=(pre == "llama3")))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    split = lambda rx: pre_tokenizers.Split(Regex(rx), behavior="isolated")  # noqa: E731
    tok.pre_tokenizer = {
        "smollm": lambda: pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]),
        "gpt2": lambda: pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        "llama3": lambda: pre_tokenizers.Sequence([split(LLAMA3_SPLIT), byte_level]),
        "qwen2": lambda: pre_tokenizers.Sequence([split(QWEN2_SPLIT), byte_level]),
        # llama.cpp's fallback list of regexes, applied one after the other
        "default": lambda: pre_tokenizers.Sequence([
            split(r"[\p{P}\$\+<=>\^~\|]+"), split(GPT2_SPLIT.rsplit("|", 1)[0]),
            split(r"\p{N}+"), split(r"[0-9][0-9][0-9]"), byte_level]),
    }[pre]()
    tok.decoder = decoders.ByteLevel()
    if with_specials:
        tok.add_special_tokens([AddedToken(t, normalized=False, special=True)
                                for t, ty in zip(d["tokens"], d["types"]) if ty == 3])
    return tok


def make_smollm2(gguf_path):
    d = read_gguf_tokenizer(gguf_path)
    assert d["model"] == "gpt2" and d["pre"] == "smollm", (d["model"], d["pre"])
    write_vocab(os.path.join(OUT, "smollm2_vocab.bin"), d)

    refs = {pre: byte_level_reference(d, pre, True)
            for pre in ("smollm", "gpt2", "llama3", "qwen2", "default")}
    plain = byte_level_reference(d, "smollm", False)
    unspell = {v: k for k, v in bytes_to_unicode().items()}
    cases = []
    for s in all_strings():
        case = {"text": s}
        for pre, tok in refs.items():
            case[pre] = tok.encode(s, add_special_tokens=False).ids
            if len(s) < 400 and "<|" not in s:
                # The pre-tokenizer's pieces themselves, spelled back from the byte alphabet.
                pieces = tok.pre_tokenizer.pre_tokenize_str(s)
                case[pre + "_pieces"] = [
                    bytes(unspell[ch] for ch in p).decode("utf-8") for p, _ in pieces]
        if "<" in s:
            case["smollm_plain"] = plain.encode(s, add_special_tokens=False).ids
        cases.append(case)
    write_json(os.path.join(OUT, "smollm2_cases.json"), {
        "source": "tokenizers " + __import__("tokenizers").__version__, "cases": cases})
    return d


# ---------------------------------------------------------------------------------------------
# SentencePiece

def corpus():
    """A deterministic training text: English-like sentences, code, and a few other scripts."""
    rng = random.Random(1234)
    words = ("the of and to in is that for it as was with be by on not he this are or his from at "
             "which but have an they you were her she there been one all we their has would when "
             "what will more if no out so said can who about them some could him into than time "
             "only new other like these two may first then do any now such people my over also "
             "function return value string number list object class import print error file data "
             "token model layer tensor parallel server request batch cache memory kernel").split()
    lines = []
    for _ in range(3000):
        n = rng.randint(4, 16)
        s = " ".join(rng.choice(words) for _ in range(n))
        if rng.random() < 0.2:
            s += f" {rng.randint(0, 99999)}"
        if rng.random() < 0.3:
            s = s.capitalize() + rng.choice([".", "!", "?", ",", ";"])
        lines.append(s)
    lines += ["def foo(x): return x * 2", "for (int i = 0; i < n; ++i) { sum += a[i]; }",
              "if (a != b) { return -1; }", "x = [i for i in range(10)]"] * 30
    lines += ["你好世界，这是中文。", "日本語のテキストです。", "Привет мир как дела", "café résumé naïve"] * 20
    return lines


def make_spm():
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus()), model_writer=model, vocab_size=800, model_type="bpe",
        byte_fallback=True, normalization_rule_name="identity", add_dummy_prefix=True,
        remove_extra_whitespaces=False, split_digits=True, allow_whitespace_only_pieces=True,
        character_coverage=0.9995, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1,
        minloglevel=2)
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())

    def type_of(i):
        if sp.IsUnknown(i):
            return 2
        if sp.IsControl(i):
            return 3
        if sp.IsByte(i):
            return 6
        if sp.IsUnused(i):
            return 5
        return 1

    n = sp.GetPieceSize()
    d = {"model": "llama", "pre": "default", "tokens": [sp.IdToPiece(i) for i in range(n)],
         "types": [type_of(i) for i in range(n)], "scores": [sp.GetScore(i) for i in range(n)],
         "bos": sp.bos_id(), "eos": sp.eos_id(), "unk": sp.unk_id(), "add_bos": True,
         "add_space_prefix": True}
    write_vocab(os.path.join(OUT, "spm_vocab.bin"), d)
    cases = [{"text": s, "ids": sp.EncodeAsIds(s), "decoded": sp.DecodeIds(sp.EncodeAsIds(s))}
             for s in plain_strings()]
    write_json(os.path.join(OUT, "spm_cases.json"), {
        "source": "sentencepiece " + spm.__version__, "cases": cases})
    return sp, d


# ---------------------------------------------------------------------------------------------
# tokenizer.json

def json_cases(tok, strings, add_special):
    return [{"text": s, "ids": tok.encode(s, add_special_tokens=add_special).ids} for s in strings]


def write_hf(name, tok, config, strings, add_special):
    folder = os.path.join(OUT, name)
    os.makedirs(folder, exist_ok=True)
    tok.save(os.path.join(folder, "tokenizer.json"))
    print(f"wrote {folder}/tokenizer.json ({os.path.getsize(os.path.join(folder, 'tokenizer.json'))} bytes)")
    write_json(os.path.join(folder, "tokenizer_config.json"), config)
    write_json(os.path.join(folder, "cases.json"), {"add_special": add_special,
                                                    "cases": json_cases(tok, strings, add_special)})


def make_hf_bytelevel():
    strings = BASE_STRINGS[:120] + SPECIAL_STRINGS[:6] + [long_string(3)]
    # GPT-2 style: ByteLevel with its own regex, no BOS.
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok.train_from_iterator(corpus(), trainers.BpeTrainer(
        vocab_size=700, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    tok.add_tokens([AddedToken("<tool>", normalized=False, special=False)])
    write_hf("hf_bytelevel", tok, {"bos_token": None, "eos_token": "<|endoftext|>"},
             strings + ["use <tool> here"], True)

    # Llama 3 style: Split(regex) + ByteLevel without regex, ignore_merges, BOS by template.
    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                "<|eot_id|>"]
    tok.train_from_iterator(corpus(), trainers.BpeTrainer(
        vocab_size=700, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B",
        special_tokens=[("<|begin_of_text|>", tok.token_to_id("<|begin_of_text|>"))])
    write_hf("hf_llama3", tok, {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
             strings + ["<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"], True)


def spm_merges(sp):
    """Merges as transformers' SentencePiece conversion ranks them: by the merged piece's score."""
    n = sp.GetPieceSize()
    normal = {sp.IdToPiece(i): (sp.GetScore(i), i) for i in range(n)
              if not (sp.IsControl(i) or sp.IsUnknown(i) or sp.IsByte(i) or sp.IsUnused(i))}
    ranked = []
    for piece, (score, i) in normal.items():
        for k in range(1, len(piece)):
            left, right = piece[:k], piece[k:]
            if left in normal and right in normal:
                ranked.append((-score, i, left, right))
    return [(left, right) for _, _, left, right in sorted(ranked)]


def make_hf_spm(sp):
    strings = [s for s in plain_strings() if s][:150]
    n = sp.GetPieceSize()
    vocab = {sp.IdToPiece(i): i for i in range(n)}
    merges = spm_merges(sp)
    special = [AddedToken(sp.IdToPiece(i), normalized=False, special=True)
               for i in range(n) if sp.IsControl(i) or sp.IsUnknown(i)]

    def base():
        tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True,
                                   byte_fallback=True))
        tok.add_special_tokens(special)
        tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                         decoders.Fuse(), decoders.Strip(" ", 1, 0)])
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", sp.bos_id())])
        return tok

    config = {"bos_token": {"content": "<s>", "lstrip": False}, "eos_token": "</s>",
              "add_bos_token": True}
    # Llama 2: the prefix and the spaces come from the normalizer.
    tok = base()
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    write_hf("hf_llama2", tok, config, strings + ["<s>[INST] hi [/INST]"], True)
    # Mistral: a Metaspace pre-tokenizer that prepends to the first piece only.
    tok = base()
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    write_hf("hf_mistral", tok, config, strings, True)


# ---------------------------------------------------------------------------------------------
# Chat templates

LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + "
    "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant"
    "<|end_header_id|>\n\n' }}{% endif %}")

MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != "
    "(loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate "
    "user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}"
    "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant "
    "roles are supported!') }}{% endif %}{% endfor %}")

LLAMA2_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set "
    "system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set "
    "system_message = false %}{% endif %}{% for message in loop_messages %}{% if (message['role'] == "
    "'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate "
    "user/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == 0 and system_message != "
    "false %}{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + "
    "message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if "
    "message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif "
    "message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}"
    "{% endfor %}")

CONVERSATIONS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hello there"}],
    [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"},
     {"role": "user", "content": "And 3+3?"}],
    [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "  padded  \n"},
     {"role": "assistant", "content": " Sure. "}, {"role": "user", "content": "Thanks 😀"}],
    [{"role": "user", "content": "multi\nline\n\ntext"}, {"role": "assistant", "content": "ok"}],
    [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！"},
     {"role": "user", "content": "<b>tags</b> & \"quotes\""}],
]


def make_chat(smollm_template):
    env = jinja2.Environment(trim_blocks=False, lstrip_blocks=False)

    def raise_exception(msg):
        raise jinja2.exceptions.TemplateError(msg)

    env.globals["raise_exception"] = raise_exception
    families = [("smollm2", smollm_template, "<|im_start|>", "<|im_end|>"),
                ("llama3", LLAMA3_TEMPLATE, "<|begin_of_text|>", "<|eot_id|>"),
                ("llama2", LLAMA2_TEMPLATE, "<s>", "</s>"),
                ("mistral", MISTRAL_TEMPLATE, "<s>", "</s>")]
    cases = []
    for name, source, bos, eos in families:
        template = env.from_string(source)
        for messages in CONVERSATIONS:
            for gen in (True, False):
                try:
                    text = template.render(messages=messages, add_generation_prompt=gen,
                                           bos_token=bos, eos_token=eos)
                except jinja2.exceptions.TemplateError:
                    continue  # the template refuses this conversation (e.g. a system role)
                cases.append({"name": name, "messages": messages, "add_generation_prompt": gen,
                              "expected": text})
    write_json(os.path.join(OUT, "chat_cases.json"), {
        "templates": {name: {"source": src, "bos": bos, "eos": eos}
                      for name, src, bos, eos in families},
        "cases": cases})


def main():
    gguf_path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
    os.makedirs(OUT, exist_ok=True)
    d = make_smollm2(gguf_path)
    sp, _ = make_spm()
    make_hf_bytelevel()
    make_hf_spm(sp)
    make_chat(d["chat_template"])


if __name__ == "__main__":
    main()
