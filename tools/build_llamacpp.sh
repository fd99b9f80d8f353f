#!/usr/bin/env bash
# Builds llama.cpp (the copy vendored in the llama-cpp-python sdist on PyPI) outside the repo, as an
# independent reference and benchmark peer for tpnode. Only the targets we use are built:
# libllama, llama-bench, llama-batched-bench, llama-tokenize, plus our own tools/llamacpp_greedy.cpp.
#
# usage: tools/build_llamacpp.sh [--cuda [--full]] [--dir DIR] [--jobs N] [--version X.Y.Z]
#   --dir DIR      where to download, unpack and build (default /work/llama)
#   --cuda         GPU build: -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 (H100/H200), static,
#                  build dir build-cuda, llama-bench and llama-batched-bench for
#                  bench/llamacpp_gpu.sh pack
#   --full         with --cuda, every ggml-cuda template instance; by default the instances this
#                  model never runs are left out (see "slim" below)
#   --jobs N       parallel build jobs (default 2)
#   --version V    llama-cpp-python sdist version (default: the one pinned below)
# Prints the path of the binaries directory on its last line.
set -euo pipefail

DIR=/work/llama
CUDA=0
SLIM=1
JOBS=2
# Pinned so that fixtures and benchmarks are reproducible; bump deliberately.
VERSION=0.3.36

while [[ $# -gt 0 ]]; do
  case "$1" in
    --dir) DIR="$2"; shift 2 ;;
    --cuda) CUDA=1; shift ;;
    --full) SLIM=0; shift ;;
    --jobs) JOBS="$2"; shift 2 ;;
    --version) VERSION="$2"; shift 2 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd)"
SDIST_DIR="$DIR/sdist"
SRC="$DIR/src"

# 1. Fetch the sdist (it carries the full llama.cpp source tree under vendor/llama.cpp).
TARBALL="$SDIST_DIR/llama_cpp_python-$VERSION.tar.gz"
if [[ ! -f "$TARBALL" ]]; then
  mkdir -p "$SDIST_DIR"
  pip download --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$SDIST_DIR"
fi

# 2. Unpack only the vendored llama.cpp into $SRC.
if [[ ! -f "$SRC/CMakeLists.txt" || ! -f "$SRC/.sdist-$VERSION" ]]; then
  rm -rf "$SRC" "$DIR/unpack"
  mkdir -p "$DIR/unpack"
  tar xzf "$TARBALL" -C "$DIR/unpack" "llama_cpp_python-$VERSION/vendor/llama.cpp"
  mv "$DIR/unpack/llama_cpp_python-$VERSION/vendor/llama.cpp" "$SRC"
  rm -rf "$DIR/unpack"
  touch "$SRC/.sdist-$VERSION"
fi

# 2b. Slim (--cuda without --full): the template instances the benchmark's model never runs
# (bench/llamacpp_instances.sh), which `pack` drops from libggml-cuda.a anyway, move to
# $DIR/unused-instances (back again for --full): about half of the CUDA build. The vector
# instances of the default GGML_CUDA_FA_QUANTS stay, since configure requires their files.
source "$HERE/../bench/llamacpp_instances.sh"
INSTANCES="$SRC/ggml/src/ggml-cuda/template-instances"
UNUSED="$DIR/unused-instances"
CONFIGURE_NEEDS='^fattn-vec-instance-(q4_0-q4_0|q8_0-q8_0|bf16-bf16)\.cu$'
if [[ $CUDA == 1 && $SLIM == 1 ]]; then
  mkdir -p "$UNUSED"
  ls "$INSTANCES" | grep -E "$LLAMA_INSTANCE_FAMILIES" |
    { grep -Ev "$LLAMA_INSTANCES_USED|$CONFIGURE_NEEDS" || true; } |
    while read -r f; do mv "$INSTANCES/$f" "$UNUSED/"; done
  echo "slim: $(ls "$UNUSED" | wc -l) template instances left out (in $UNUSED)"
elif [[ -d "$UNUSED" ]]; then
  find "$UNUSED" -maxdepth 1 -name '*.cu' -exec mv -t "$INSTANCES" {} +
fi

# 3. Configure and build the few targets we need.
GEN=()
command -v ninja >/dev/null && GEN=(-G Ninja)
LAUNCHER=()
command -v ccache >/dev/null && LAUNCHER=(-DCMAKE_C_COMPILER_LAUNCHER=ccache -DCMAKE_CXX_COMPILER_LAUNCHER=ccache)

if [[ $CUDA == 1 ]]; then
  # Static libraries for bench/llamacpp_gpu.sh pack (one self-contained binary travels to the
  # GPU machine, whose CPU may differ from this one: no -march=native).
  BUILD="$DIR/build-cuda"
  BACKEND=(-DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DGGML_NATIVE=OFF -DBUILD_SHARED_LIBS=OFF)
  TARGETS=(llama-bench llama-batched-bench)
else
  BUILD="$DIR/build-cpu"
  BACKEND=(-DGGML_CUDA=OFF -DGGML_NATIVE=ON -DBUILD_SHARED_LIBS=ON)
  # llama-batched-bench: `bench/llamacpp_gpu.sh check` runs the peer's steps on this build.
  TARGETS=(llama llama-bench llama-batched-bench llama-tokenize)
fi

cmake -S "$SRC" -B "$BUILD" "${GEN[@]}" "${LAUNCHER[@]}" \
  -DCMAKE_BUILD_TYPE=Release \
  -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF \
  "${BACKEND[@]}"

if [[ $CUDA == 1 && $SLIM == 1 ]]; then
  # The tools' own links fail on the left-out instances; pack links its binary from the
  # libraries, so build all of those (keep going past the failed links) and check them.
  KEEP_GOING=(-k)
  [[ ${#GEN[@]} -gt 0 ]] && KEEP_GOING=(-k 0)
  cmake --build "$BUILD" -j "$JOBS" --target "${TARGETS[@]}" -- "${KEEP_GOING[@]}" || true
  for lib in tools/llama-bench/libllama-bench-impl.a tools/batched-bench/libllama-batched-bench-impl.a \
             src/libllama.a ggml/src/ggml-cuda/libggml-cuda.a ggml/src/libggml-base.a; do
    [[ -f "$BUILD/$lib" ]] || { echo "slim build: $BUILD/$lib is missing" >&2; exit 1; }
  done
  echo "(slim: the links of llama-bench and llama-batched-bench fail on the left-out kernels; that is expected)"
else
  cmake --build "$BUILD" -j "$JOBS" --target "${TARGETS[@]}"
fi
if [[ $CUDA == 1 ]]; then
  echo "llama.cpp (CUDA, static) from llama-cpp-python $VERSION built in $BUILD;"
  echo "next: bench/llamacpp_gpu.sh pack $BUILD"
  exit 0
fi

# 4. Our greedy/logits dumper, linked against the libllama just built (rpath to bin/).
BIN="$BUILD/bin"
LIBS=(-lllama -lggml -lggml-base)
g++ -std=c++17 -O2 -Wall -Wextra \
  -I "$SRC/include" -I "$SRC/ggml/include" \
  "$HERE/llamacpp_greedy.cpp" -o "$BIN/llamacpp-greedy" \
  -L "$BIN" "${LIBS[@]}" -Wl,-rpath,"$BIN"

echo "llama.cpp from llama-cpp-python $VERSION built in:"
echo "$BIN"
