#!/usr/bin/env bash
# tpnode inspect on good and corrupt model files: a good one prints its summary (exit 0); a
# corrupt one prints exactly one error line naming the file and the problem (exit 1).
set -u
: "${TPNODE_BIN:?}" "${TPNODE_SOURCE_DIR:?}"
FIX="$TPNODE_SOURCE_DIR/tests/fixtures/model_files"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

out="$("$TPNODE_BIN" inspect "$FIX/tiny_llama.gguf" --tensors --metadata 2>&1)" || fail "good GGUF: exit $?: $out"
grep -q '^architecture: *llama' <<<"$out" || fail "good GGUF: no architecture line: $out"
grep -q '^blk.1.ffn_down.weight' <<<"$out" || fail "good GGUF: --tensors did not list tensors"
grep -q '^llama.block_count = 2' <<<"$out" || fail "good GGUF: --metadata did not dump keys"
"$TPNODE_BIN" inspect "$FIX/tiny_qwen2_sharded" >/dev/null 2>&1 || fail "good safetensors folder failed"

# expect_bad FILE SUBSTRING: exit 1, one line of output, naming FILE and SUBSTRING.
expect_bad() {
  local file="$1" want="$2" out rc
  out="$("$TPNODE_BIN" inspect "$file" 2>&1)"
  rc=$?
  [[ $rc -eq 1 ]] || fail "$file: exit $rc, expected 1: $out"
  [[ $(printf '%s\n' "$out" | wc -l) -eq 1 ]] || fail "$file: expected one line, got: $out"
  [[ "$out" == *"$file"* ]] || fail "$file: message does not name the file: $out"
  [[ "$out" == *"$want"* ]] || fail "$file: message lacks '$want': $out"
  echo "ok: $out"
}

head -c 3000 "$FIX/tiny_llama.gguf" >"$TMP/truncated.gguf"
expect_bad "$TMP/truncated.gguf" "truncated"

printf 'GGUX\003\000\000\000' >"$TMP/magic.gguf"
head -c 100 /dev/zero >>"$TMP/magic.gguf"
expect_bad "$TMP/magic.gguf" "not a GGUF file"

{ printf 'GGUF\001\000\000\000'; head -c 100 /dev/zero; } >"$TMP/v1.gguf"
expect_bad "$TMP/v1.gguf" "version 1 is not supported"

: >"$TMP/empty.gguf"
expect_bad "$TMP/empty.gguf" "truncated"

cp -r "$FIX/tiny_llama_st" "$TMP/st"
sed -i 's/"hidden_size"/"hidden_sizes"/' "$TMP/st/config.json"
expect_bad "$TMP/st" "missing required key 'hidden_size'"

expect_bad "$TMP/does_not_exist.gguf" "no such file"
echo "PASS"
