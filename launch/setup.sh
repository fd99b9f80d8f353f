#!/usr/bin/env bash
# Sets up a fresh Debian 12 / Ubuntu 24.04 machine for tpnode: system packages, Python tools
# for fixtures and API tests, the default model, and a build in ./build. Idempotent: a second
# run only checks and rebuilds what changed.
#   launch/setup.sh [--no-build] [--build-dir DIR] [-- extra cmake args]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="$ROOT/build"
DO_BUILD=1
CMAKE_EXTRA=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --no-build) DO_BUILD=0 ;;
    --build-dir) BUILD_DIR="$2"; shift ;;
    --) shift; CMAKE_EXTRA=("$@"); break ;;
    *) echo "setup.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

log() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi

# --- system packages --------------------------------------------------------------------------
PKGS=(build-essential cmake ninja-build pkg-config git unzip ccache
      libboost-dev libboost-json-dev libcli11-dev libspdlog-dev libfmt-dev
      libopenmpi-dev openmpi-bin libgtest-dev libgmock-dev
      clang libclang-rt-dev iproute2 bc curl python3 python3-pip)
if grep -q 'bookworm' /etc/os-release 2>/dev/null; then
  # Debian 12's default Boost is 1.74; Asio/Beast/JSON as we use them need >= 1.81.
  PKGS=("${PKGS[@]/libboost-dev/libboost1.81-dev}")
  PKGS=("${PKGS[@]/libboost-json-dev/libboost-json1.81-dev}")
fi
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [[ ${#missing[@]} -gt 0 ]]; then
  log "installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  log "system packages present"
fi

# --- Python tools (fixture scripts and the OpenAI-client test; the C++ tests need none) ------
PY_PKGS=(gguf numpy openai)
py_missing=()
for p in "${PY_PKGS[@]}"; do
  python3 -c "import $p" 2>/dev/null || py_missing+=("$p")
done
if [[ ${#py_missing[@]} -gt 0 ]]; then
  log "pip installing ${py_missing[*]}"
  python3 -m pip install -q ${PIP_FLAGS:-} "${py_missing[@]}" 2>/dev/null ||
    python3 -m pip install -q --break-system-packages "${py_missing[@]}"
fi

# --- the default model -------------------------------------------------------------------------
"$ROOT/launch/fetch_model.sh"

# --- build -------------------------------------------------------------------------------------
if [[ $DO_BUILD -eq 1 ]]; then
  GEN=()
  if command -v ninja >/dev/null; then GEN=(-G Ninja); fi
  if [[ ! -f "$BUILD_DIR/CMakeCache.txt" ]]; then
    log "configuring $BUILD_DIR"
    cmake -S "$ROOT" -B "$BUILD_DIR" "${GEN[@]}" -DCMAKE_BUILD_TYPE=Release \
      -DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_CUDA_COMPILER_LAUNCHER=ccache "${CMAKE_EXTRA[@]}"
  elif [[ ${#CMAKE_EXTRA[@]} -gt 0 ]]; then
    cmake "$BUILD_DIR" "${CMAKE_EXTRA[@]}"
  fi
  log "building (binary: $BUILD_DIR/tpnode)"
  cmake --build "$BUILD_DIR" -j "$(nproc)"
fi
log "done"
