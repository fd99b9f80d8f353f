#!/usr/bin/env python3
"""bench/peer_table.py on hand-made raw outputs of bench/llamacpp_gpu.sh: llama-bench's JSON
(among its log lines, tests at depth 0 and at depth 128), llama-batched-bench's table and two
`tpnode bench` logs (the batch table at context 128, and batch 1 from an empty context): the
comparison's rows and ratios, worked out here, and the same table without the depth runs."""
import json
import os
import subprocess
import sys
import tempfile

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "..", "bench", "peer_table.py")


def bench_row(n_prompt, n_gen, depth, avg, sd):
    return {"n_prompt": n_prompt, "n_gen": n_gen, "n_depth": depth, "avg_ts": avg, "stddev_ts": sd}


LLAMA_BENCH = ("ggml_cuda_init: found 1 CUDA devices\n[\n" + json.dumps([
    bench_row(512, 0, 0, 9000.0, 100.0), bench_row(512, 0, 128, 8000.0, 100.0),
    bench_row(0, 128, 0, 275.0, 1.0), bench_row(0, 128, 128, 250.0, 2.0)], indent=2)[1:] + "\n")

BATCHED = """main: n_kv_max = 16384
|    PP |     TG |    B |   N_KV |   T_PP s | S_PP t/s |   T_TG s | S_TG t/s |      T s |    S t/s |
|-------|--------|------|--------|----------|----------|----------|----------|----------|----------|
|   128 |    128 |    1 |    256 |    0.042 |  3000.00 |    0.485 |   264.00 |    0.527 |   485.75 |
|   128 |    128 |   64 |  16384 |    0.830 |  9875.33 |    1.755 |  4600.00 |    2.584 |  6339.71 |
"""

TPNODE = """# command: tpnode bench -m x.gguf --context 128
device: NVIDIA H200, 132 SMs
phase                     tok/s    ms/step     frac  of
prefill 512             36000.0     14.222    63.0%  BF16 GEMM peak
decode batch 1 +greedy        528.0      1.894    58.1%  HBM roofline
decode batch 64 +greedy      13800.0      4.638    22.4%  HBM roofline
"""

TPNODE_EMPTY = """# command: tpnode bench -m x.gguf --context 1
phase                     tok/s    ms/step     frac  of
decode batch 1 +greedy        550.0      1.818    59.6%  HBM roofline
"""


def compare(files):
    with tempfile.TemporaryDirectory() as raw:
        for name, text in files.items():
            with open(os.path.join(raw, name), "w") as f:
                f.write(text)
        return subprocess.run([sys.executable, SCRIPT, "compare", raw, "--prefill", "512",
                               "--batches", "1,64", "--tg", "128", "--depth", "128"],
                              capture_output=True, text=True, check=True).stdout


def rows(out):
    """[(phase, tpnode, llama.cpp test, ratio)] of the comparison table."""
    got = []
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith(("prefill", "decode")):
            got.append((cells[0], cells[1], cells[2].split("(", 1)[1].rstrip(")"), cells[3]))
    return got


def main():
    files = {"llama_bench_1gpu.json": LLAMA_BENCH, "batched_1gpu.log": BATCHED,
             "tpnode_1gpu.log": TPNODE, "tpnode_1gpu_d0.log": TPNODE_EMPTY}
    got = rows(compare(files))
    want = [
        ("prefill 512", "36,000.0", "llama-bench pp512", "4.00x"),
        ("decode batch 1", "528.0", "llama-batched-bench S_TG, B=1, tg128 after pp128", "2.00x"),
        ("decode batch 1, empty context", "550.0", "llama-bench tg128", "2.00x"),
        ("decode batch 1", "528.0", "llama-bench tg128 @ d128", "2.11x"),
        ("decode batch 64", "13,800.0", "llama-batched-bench S_TG, B=64, tg128 after pp128", "3.00x"),
    ]
    assert got == want, got
    # Older runs: no depth tests, no empty-context tpnode log.
    del files["tpnode_1gpu_d0.log"]
    files["llama_bench_1gpu.json"] = ("[\n" + json.dumps(
        [bench_row(512, 0, 0, 9000.0, 100.0), bench_row(0, 128, 0, 264.0, 1.0)])[1:] + "\n")
    got = rows(compare(files))
    assert ("decode batch 1", "528.0", "llama-bench tg128", "2.00x") in got, got
    assert not any("@ d" in r[2] for r in got), got
    print("peer_table: ok")


if __name__ == "__main__":
    main()
