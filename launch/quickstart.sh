#!/usr/bin/env bash
# Sets up a fresh machine (launch/setup.sh) and runs tpnode on the default model
# (SmolLM2-135M-Instruct, Q4_1): a chat prompt generated with `tpnode generate`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/launch/setup.sh"
MODEL="$ROOT/models/SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPT="${1:-What is the capital of France? Answer in one sentence.}"
exec "$ROOT/build/tpnode" generate -m "$MODEL" --chat -p "$PROMPT" -n 128 --temp 0
