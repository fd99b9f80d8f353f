#!/usr/bin/env python3
"""bench/kernel_trace.py on hand-made traces: the step table's sums against values worked out
here from the kernels' start and end times (overlap by PDL, an idle gap, a kernel outside any
graph, two graph launches), and --gaps: what lies between steps (kernels outside graphs, copies,
runtime calls)."""
import os
import subprocess
import sys
import tempfile

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "..", "bench", "kernel_trace.py")
GEMV = "void tpnode::cuda::(anonymous namespace)::gemv_kernel<(tpnode::TensorType)12; 2>(tpnode::cuda::P)"
NORM = "void tpnode::cuda::(anonymous namespace)::rmsnorm_kernel(tpnode::cuda::R)"
HEADER = "start_ns,end_ns,device,stream,graph,correlation,grid,block,regs,smem,name\n"


def row(start, end, corr, name, graph=3):
    return f"{start},{end},0,7,{graph},{corr},132,128,64,0,{name}\n"


def run(csv_text, *args):
    with tempfile.NamedTemporaryFile("w", suffix=".csv", delete=False) as f:
        f.write(csv_text)
        path = f.name
    try:
        return subprocess.run([sys.executable, SCRIPT, path, *args], capture_output=True,
                              text=True, check=True).stdout
    finally:
        os.unlink(path)


def table(out):
    """kernel name -> (n, critical, busy, early) from the per-kernel table."""
    rows = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 6 and parts[0] in ("gemv_kernel<(tpnode::TensorType)12;", "rmsnorm_kernel"):
            name = parts[0] if parts[0] == "rmsnorm_kernel" else "gemv"
            nums = parts[-5:]
            rows[name] = (float(nums[0]), float(nums[1]), float(nums[3]), float(nums[4]))
    return rows


def main():
    # Step 1 (correlation 10): gemv 1000-3000, norm 2500-4000 (starts 0.5 us early), gemv
    # 4500-6000 after a 0.5-us gap. Step 2 (11): the same shifted by 10 us but its norm ends
    # 1 us later. A kernel outside any graph (graph 0) must not count.
    csv = HEADER
    csv += row(0, 500, 5, "void warmup(int)", graph=0)
    csv += row(1000, 3000, 10, GEMV) + row(2500, 4000, 10, NORM) + row(4500, 6000, 10, GEMV)
    csv += row(11000, 13000, 11, GEMV) + row(12500, 15000, 11, NORM) + row(15500, 17000, 11, GEMV)
    out = run(csv)
    assert "2 steps (graph launches)" in out, out
    # Step lengths 5.0 and 6.0 us: the median of two is their mean.
    assert "step 5.5 us median (min 5.0, max 6.0)" in out, out
    t = table(out)
    # gemv: critical 2.0 + 2.0 per step (the second one's 0.5-us gap counts to it), busy 1.5 + 2.0
    # -> medians over the steps of the per-step sums: critical 4.0, busy (3.5 + 3.5) = 3.5.
    assert t["gemv"] == (2.0, 4.0, 3.5, 0.0), t
    # norm: critical 1.0 then 2.0 (median 1.5), busy 1.5 then 2.5 (2.0), early 0.5 both steps.
    assert t["rmsnorm_kernel"] == (1.0, 1.5, 2.0, 0.5), t
    # --steps 1 keeps the last launch only.
    t1 = table(run(csv, "--steps", "1"))
    assert t1["rmsnorm_kernel"] == (1.0, 2.0, 2.5, 0.5), t1
    # --list prints the last step in order with offsets from its first kernel.
    listed = run(csv, "--list", "3").splitlines()[-3:]
    assert listed[1].split()[-5:-2] == ["1.5", "4.0", "2.0"], listed
    gaps_between_steps()
    print("kernel_trace.py: step table and gaps as expected")


def gaps_between_steps():
    """--gaps on a trace with copies and runtime calls (the kind column): three steps, between
    each two a sampling kernel outside the graph, a copy to the host and the host's calls."""
    csv = HEADER.rstrip("\n") + ",kind\n"
    for i, corr in enumerate((20, 21, 22)):
        t = 100000 * i
        csv += row(t, t + 3000, corr, GEMV).rstrip("\n") + ",kernel\n"
        if i == 2:
            break
        # The gap from t + 3000 to t + 100000: sampling 3500-5500, the copy 6000-7000, the sync
        # call 3100-7200 and the next launch's call 90000-95000, all inside it.
        csv += row(t + 3500, t + 5500, 200 + i, "void sample_kernel(int)", graph=0).rstrip("\n") + ",kernel\n"
        csv += f"{t + 6000},{t + 7000},0,7,0,{300 + i},4,0,0,0,memcpy DtoH,memcpy\n"
        csv += f"{t + 3100},{t + 7200},-1,0,0,{400 + i},0,0,0,0,cudaStreamSynchronize_v3020,api\n"
        csv += f"{t + 90000},{t + 95000},-1,0,0,{corr + 1},0,0,0,0,cudaGraphLaunch_v10000,api\n"
    out = run(csv, "--gaps")
    assert "3 steps (graph launches)" in out, out  # copies and calls are not steps
    assert "between steps: idle 97.0 us median (min 97.0, max 97.0) over 2 gaps" in out, out
    inside = {}
    for line in out.split("between steps:")[1].splitlines()[1:]:
        name, value = line.rsplit(None, 1)
        inside[name.strip()] = float(value)
    assert inside == {"api: cudaStreamSynchronize_v3020": 4.1, "api: cudaGraphLaunch_v10000": 5.0,
                      "kernel: sample_kernel": 2.0, "memcpy: memcpy DtoH": 1.0}, inside


if __name__ == "__main__":
    main()
