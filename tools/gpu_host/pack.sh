#!/usr/bin/env bash
# Packs the CUDA binaries, their non-system shared libraries and Debian's Open MPI (with PMIx)
# into .device/pk for the GPU machine, which has no MPI and other library versions.
#   BUILD=build-h10 [EXTRA="name=path ..."] tools/gpu_host/pack.sh [binary ...]
# Then carry .device/pk to the GPU host and, in the repository root there,
#   source .device/pk/setup_remote.sh   (or .device/pk/bench_helpers.sh for tp1/tp2/trace)
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=${BUILD:-build-h10}
PK=.device/pk
BINS=("$@"); [[ ${#BINS[@]} -gt 0 ]] || BINS=(tpnode test_cuda test_nccl)
rm -rf $PK; mkdir -p $PK/stage/bin $PK/stage/lib
for b in "${BINS[@]}"; do cp "$BUILD/$b" $PK/stage/bin/; strip $PK/stage/bin/$b; done
# EXTRA="name=path ...": more binaries (e.g. a baseline tpnode) under bin/name.
for e in ${EXTRA:-}; do cp "${e#*=}" "$PK/stage/bin/${e%%=*}"; done
# The CUPTI tracer (bench_helpers.sh's trace) when built: ninja -C $BUILD tpnode_kernel_trace.
if [[ -f $BUILD/bench/libtpnode_kernel_trace.so ]]; then
  cp $BUILD/bench/libtpnode_kernel_trace.so $PK/stage/
else
  echo "pack: no $BUILD/bench/libtpnode_kernel_trace.so (trace helpers will not work)" >&2
fi
ldd $PK/stage/bin/* $(ls $PK/stage/*.so 2>/dev/null) 2>/dev/null | awk '/=>/ {print $3}' | sort -u |
  grep -v -E '/(libc|libm|libstdc\+\+|libgcc_s|libdl|libpthread|librt|ld-linux[^/]*|libcuda|libcublas|libcublasLt|libcudart|libnccl|libresolv|libutil)\.so' |
  xargs -I{} cp -L {} $PK/stage/lib/
# Open MPI and PMIx at their Debian paths (copied there without overwriting anything).
dpkg -L openmpi-bin openmpi-common libopenmpi3 libpmix2 libhwloc15 libevent-core-2.1-7 \
  libevent-pthreads-2.1-7 2>/dev/null | while read -r f; do [[ -f $f || -L $f ]] && echo "$f"; done \
  | grep -v -E '^/usr/share/(doc|man|lintian)' > $PK/ompi.list
tar cf - -T $PK/ompi.list 2>/dev/null | xz -T2 -3 > $PK/ompi.txz
(cd $PK/stage && tar cf - . | xz -T2 -9e > ../bins.txz)  # -9e: the binaries share most of their code
rm -rf $PK/stage $PK/ompi.list
cp tools/gpu_host/setup_remote.sh tools/gpu_host/bench_helpers.sh $PK/
du -sh $PK/*
