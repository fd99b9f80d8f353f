#!/usr/bin/env bash
# Makes tests/fixtures/llamacpp/: llama.cpp's own tokenization and greedy (argmax) continuations of
# five plain-text prompts on the default model, for tpnode's end-to-end tests. Format:
# tests/fixtures/llamacpp/README.md.
#
# usage: tools/make_llamacpp_fixtures.sh [--model GGUF] [--bin DIR] [--out DIR] [--n N]
#   --model  default models/SmolLM2-135M-Instruct.Q4_1.gguf
#   --bin    llama.cpp binaries from tools/build_llamacpp.sh (default /work/llama/build-cpu/bin)
#   --out    default tests/fixtures/llamacpp
#   --n      tokens to generate per prompt (default 32)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODEL="$REPO/models/SmolLM2-135M-Instruct.Q4_1.gguf"
BIN=/work/llama/build-cpu/bin
OUT="$REPO/tests/fixtures/llamacpp"
N=32
TOP=5

while [[ $# -gt 0 ]]; do
  case "$1" in
    --model) MODEL="$2"; shift 2 ;;
    --bin) BIN="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --n) N="$2"; shift 2 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done

for tool in llamacpp-greedy llama-tokenize; do
  [[ -x "$BIN/$tool" ]] || { echo "missing $BIN/$tool: run tools/build_llamacpp.sh first" >&2; exit 1; }
done
[[ -f "$MODEL" ]] || { echo "missing model $MODEL" >&2; exit 1; }

mkdir -p "$OUT"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

# Plain text, no chat template. Varied on purpose: prose, a question, code (indentation and
# newlines), a numbered list, and digits with punctuation.
NAMES=(story question code list numbers)
PROMPTS=(
  "Once upon a time, in a small village at the edge of a great forest, there lived"
  "Question: What is the largest planet in our solar system?
Answer:"
  "def fibonacci(n):
    \"\"\"Return the n-th Fibonacci number.\"\"\"
"
  "Here is a list of five fruits:
1."
  "In 2023, the company sold 1,250 units at \$19.99 each, which adds up to"
)

# Tokenizer-only cases: the awkward corners of byte-level BPE pre-tokenization.
TOK_TEXTS=(
  "Hello world"
  "  two leading spaces, three trailing   "
  "tabs\tand\nnewlines\n\n\nend"
  "It's, I'm, we've, they'll, she'd, DON'T"
  "1234567890 3.14159 1,000,000 -42 0x1F"
  "caf\u00e9 na\u00efve \u00fcber \u65e5\u672c\u8a9e \U0001F600\U0001F680"
  "<|im_start|>user is plain text here<|im_end|>"
  "x=a+b*(c-d)/e; y[i]={k:v}; // comment"
)
for i in "${!TOK_TEXTS[@]}"; do
  printf '%b' "${TOK_TEXTS[$i]}" > "$WORK/tok$i.txt"  # %b expands \t, \n, \uXXXX
  "$BIN/llama-tokenize" -m "$MODEL" -f "$WORK/tok$i.txt" --ids --no-escape --log-disable --no-parse-special \
    > "$WORK/tok$i.ids" 2> "$WORK/tok$i.log" || { cat "$WORK/tok$i.log" >&2; exit 1; }
  # The same with special-token names recognised (llama-tokenize's default; what chat prompts need).
  "$BIN/llama-tokenize" -m "$MODEL" -f "$WORK/tok$i.txt" --ids --no-escape --log-disable \
    > "$WORK/tok$i.special.ids" 2> "$WORK/tok$i.log" || { cat "$WORK/tok$i.log" >&2; exit 1; }
done

for i in "${!NAMES[@]}"; do
  name="${NAMES[$i]}"
  printf '%s' "${PROMPTS[$i]}" > "$WORK/$name.txt"
  "$BIN/llamacpp-greedy" -m "$MODEL" -f "$WORK/$name.txt" -n "$N" -t 2 --top "$TOP" \
    > "$WORK/$name.greedy.json" 2> "$WORK/$name.greedy.log" \
    || { cat "$WORK/$name.greedy.log" >&2; exit 1; }
  # llama-tokenize reads the file verbatim; --no-escape keeps backslashes and quotes as they are,
  # and --no-parse-special treats the prompt as plain text, as llamacpp-greedy does.
  "$BIN/llama-tokenize" -m "$MODEL" -f "$WORK/$name.txt" --ids --no-escape --log-disable --no-parse-special \
    > "$WORK/$name.tokenize.txt" 2> "$WORK/$name.tokenize.log" \
    || { cat "$WORK/$name.tokenize.log" >&2; exit 1; }
  echo "$name: done"
done

LLAMA_SRC="$(dirname "$(dirname "$BIN")")/src"
VERSION="$(ls "$LLAMA_SRC"/.sdist-* 2>/dev/null | sed 's/.*\.sdist-//' | head -1 || true)"

python3 - "$WORK" "$OUT" "$MODEL" "$N" "$TOP" "${VERSION:-unknown}" "${#TOK_TEXTS[@]}" "${NAMES[@]}" <<'EOF'
import hashlib, json, os, re, sys
work, out, model, n, top, version, n_tok, *names = sys.argv[1:]
sha = hashlib.sha256(open(model, "rb").read()).hexdigest()
cases = []
for name in names:
    prompt = open(os.path.join(work, name + ".txt"), encoding="utf-8").read()
    g = json.loads(open(os.path.join(work, name + ".greedy.json")).read().strip().splitlines()[-1])
    tok = json.loads(open(os.path.join(work, name + ".tokenize.txt")).read().strip().splitlines()[-1])
    if g["prompt"] != prompt:
        sys.exit(f"{name}: prompt changed on the way through llamacpp-greedy")
    if tok != g["prompt_ids"]:
        sys.exit(f"{name}: llama-tokenize {tok} != llama_tokenize in llamacpp-greedy {g['prompt_ids']}")
    # Gap between the two best logits at each step: where it is small, a forward with slightly
    # different rounding may legitimately pick the other token.
    margins = [step[0][1] - step[1][1] for step in g["top_logits"]]
    cases.append({
        "name": name,
        "prompt": prompt,
        "prompt_ids": g["prompt_ids"],
        "tokenize_ids": tok,
        "generated_ids": g["generated_ids"],
        "generated_text": g["generated_text"],
        "finish": g["finish"],
        "min_top2_margin": round(min(margins), 5),
        "steps_with_margin_below_0.1": [i for i, m in enumerate(margins) if m < 0.1],
        "top_logits": g["top_logits"],
    })
tokenizer_cases = []
for i in range(int(n_tok)):
    text = open(os.path.join(work, f"tok{i}.txt"), encoding="utf-8").read()
    ids = json.loads(open(os.path.join(work, f"tok{i}.ids")).read().strip().splitlines()[-1])
    special = json.loads(open(os.path.join(work, f"tok{i}.special.ids")).read().strip().splitlines()[-1])
    tokenizer_cases.append({"text": text, "ids": ids, "ids_parse_special": special})
doc = {
    "model": os.path.basename(model),
    "model_sha256": sha,
    "made_by": "tools/make_llamacpp_fixtures.sh",
    "llama_cpp": f"vendored in llama-cpp-python {version} (PyPI sdist), CPU build",
    "sampling": {"method": "greedy argmax, lowest id on ties", "temperature": 0, "top_k": 1,
                 "n_predict": int(n), "stop_on_eog": True, "chat_template": False},
    "add_bos": g["add_bos"],
    "n_vocab": g["n_vocab"],
    "top_logits_k": int(top),
    "cases": cases,
    "tokenizer_cases": tokenizer_cases,
}
text = json.dumps(doc, indent=1, ensure_ascii=False)
# Lists of numbers on one line keeps the file short and diffs readable.
one_line = lambda m: re.sub(r"\s+", "", m.group(0)).replace(",", ", ")
text = re.sub(r"\[[-0-9.e,\s]*\]", one_line, text)
# ... and each step's top logits ([[id, logit], ...]) on one line too.
text = re.sub(r"\[\s*\[[-0-9.e,\s]*\](?:,\s*\[[-0-9.e,\s]*\])*\s*\]", one_line, text)
path = os.path.join(out, "smollm2_135m_q4_1_greedy.json")
open(path, "w", encoding="utf-8").write(text + "\n")
print(f"wrote {path}")
for c in cases:
    print(f"  {c['name']}: {len(c['prompt_ids'])} prompt ids, {len(c['generated_ids'])} generated ({c['finish']}): "
          f"{c['generated_text']!r}")
EOF
