#!/usr/bin/env bash
# Sourced on the GPU host after tools/gpu_host/pack.sh: the set-up, then helpers that run
# `tpnode bench` on one GPU (tp1), two ranks (tp2), or under the CUPTI kernel tracer (trace,
# trace2), printing tagged result lines (results under $OUT). TYPE picks the synthetic mix
# (default q4_k_m; q4_k_m-flat for the records before 2026-12-01); CONTEXT and STEPS the
# decode point (default 128 and 64: `tpnode bench` takes --context and --decode-steps once).
source .device/pk/setup_remote.sh
B=/tmp/pk/bin
bench_args() { echo "bench --shape llama3-8b --type ${TYPE:-q4_k_m} --greedy-tokens --decode-steps ${STEPS:-64} --prefill 512 --context ${CONTEXT:-128}"; }
A=$(bench_args)
line() { grep -E "^decode batch|^prefill" | sed "s|^|$1 |"; }
tp1() { local tag=$1 bin=$2; shift 2; CUDA_VISIBLE_DEVICES=${GPU:-0} $B/$bin $(bench_args) "$@" 2>&1 | line "$tag TP1"; }
tp2() { local tag=$1 bin=$2; shift 2; mpirun --bind-to none -np 2 $B/$bin $(bench_args) "$@" 2>&1 | line "$tag TP2"; }
trace() { local tag=$1 bin=$2; shift 2;
  CUDA_VISIBLE_DEVICES=${GPU:-0} CUDA_INJECTION64_PATH=/tmp/pk/libtpnode_kernel_trace.so TPNODE_KERNEL_TRACE=/tmp/kt_$tag \
    $B/$bin bench --shape llama3-8b --type ${TYPE:-q4_k_m} --batches 1 --prefill 128 --context 128 --decode-steps 16 --greedy-tokens --profile-decode "$@" >/dev/null 2>&1
  python3 bench/kernel_trace.py /tmp/kt_$tag.*.csv --steps 16 > $OUT/trace_$tag.txt 2>&1; head -40 $OUT/trace_$tag.txt; }
trace2() { local tag=$1 bin=$2; shift 2;
  mpirun --bind-to none -np 2 -x CUDA_INJECTION64_PATH=/tmp/pk/libtpnode_kernel_trace.so -x TPNODE_KERNEL_TRACE=/tmp/kt2_$tag \
    $B/$bin bench --shape llama3-8b --type ${TYPE:-q4_k_m} --batches 1 --prefill 128 --context 128 --decode-steps 16 --greedy-tokens --profile-decode "$@" >/dev/null 2>&1
  for f in /tmp/kt2_$tag.*.csv; do python3 bench/kernel_trace.py $f --steps 16 --list 30 >> $OUT/trace2_$tag.txt 2>&1; done; head -30 $OUT/trace2_$tag.txt; }
