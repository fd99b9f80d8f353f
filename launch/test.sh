#!/usr/bin/env bash
# Sets up a fresh machine (launch/setup.sh), builds with warnings as errors, and runs every
# test: the ctest suite (unit, mpirun and end-to-end tests; GPU tests skip without a GPU)
# and each libFuzzer target for FUZZ_SECONDS (default 60).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${BUILD_DIR:-$ROOT/build}"
"$ROOT/launch/setup.sh" --build-dir "$BUILD_DIR" -- -DTPNODE_WERROR=ON
cd "$BUILD_DIR"
status=0
ctest --output-on-failure -j "${CTEST_JOBS:-2}" --timeout 1200 || status=$?
if [[ -x "$ROOT/launch/fuzz.sh" ]]; then
  "$ROOT/launch/fuzz.sh" "${FUZZ_SECONDS:-60}" || status=$?
fi
exit $status
