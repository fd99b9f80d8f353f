#!/usr/bin/env python3
"""Tables of bench/llamacpp_gpu.sh from its raw outputs (standard library only).

  peer_table.py summary FILE...   llama.cpp alone: one row per llama-bench test
                                  (llama_bench_<label>.json) and llama-batched-bench point
                                  (batched_<label>.log)
  peer_table.py compare RAWDIR [--single LABEL] [--prefill 512,2048] [--batches 1,8,32,64]
                               [--tg 128] [--depth 128]
                                  tpnode (tpnode_<label>.log: `tpnode bench` output) next to
                                  llama.cpp measured in the same run, with the ratio; at
                                  batch 1 also against llama-bench's tg at the depth of
                                  tpnode's --context (--depth), where llama-bench ran it (-d)

compare prints one section for LABEL (default 1gpu) and one for each N >= 2 with raw files
named <N>gpu_*: tpnode_<N>gpu_tp.log (tensor parallel under mpirun) against the fastest
llama.cpp split mode (llama_bench_<N>gpu_<mode>.json, batched_<N>gpu_<mode>.log) of each
point. A number that is missing or unreadable prints as "-"; nothing here fails on bad input.
"""
import glob
import json
import os
import re
import sys

# A row of llama-batched-bench's table:
# |    PP |     TG |    B |   N_KV |   T_PP s | S_PP t/s |   T_TG s | S_TG t/s |      T s |    S t/s |
BATCHED_ROW = re.compile(
    r"^\|\s*(\d+)\s*\|\s*(\d+)\s*\|\s*(\d+)\s*\|\s*\d+\s*\|\s*[\d.]+\s*\|\s*([\d.]+)\s*"
    r"\|\s*[\d.]+\s*\|\s*([\d.]+)\s*\|", re.M)
# A row of `tpnode bench`'s table: "decode batch 8 +greedy   1787.8   4.475   25.3%  HBM ..."
TPNODE_ROW = re.compile(
    r"^(prefill (\d+)|decode batch (\d+))(?: \+\S+)?\s+([\d.]+)\s+([\d.]+)\s+[\d.]+%", re.M)


def read(path):
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def llama_bench_rows(path):
    """llama-bench's JSON list (-oe json, written to stderr among its log lines). llama-bench
    writes each test's object when the test ends, so a run cut short leaves an unclosed list:
    then the complete objects are read one by one."""
    text = read(path)
    decoder = json.JSONDecoder()
    for m in re.finditer(r"^\[\s*$", text, re.M):
        try:
            rows, _ = decoder.raw_decode(text, m.start())
        except ValueError:
            continue
        if isinstance(rows, list):
            return [r for r in rows if isinstance(r, dict)]
    rows = []
    for m in re.finditer(r"^\s*\{\s*$", text, re.M):
        try:
            row, _ = decoder.raw_decode(text, m.start() + m.group(0).index("{"))
        except ValueError:
            continue
        if isinstance(row, dict) and "avg_ts" in row:
            rows.append(row)
    return rows


def test_name(kind, n, depth=0):
    """llama-bench's name of a test: "pp512", "tg128", and at a depth "tg128 @ d128"."""
    return f"{kind}{n}" + (f" @ d{depth}" if depth else "")


def llama_bench_tests(path):
    """{"pp512": (mean, sd), "tg128": (mean, sd), "tg128 @ d128": ...} from one llama-bench
    JSON file (the depth is the KV context filled before the test, -d)."""
    out = {}
    for r in llama_bench_rows(path):
        try:
            depth = int(r.get("n_depth", 0) or 0)
            test = (test_name("pp", r["n_prompt"], depth) if r["n_gen"] == 0
                    else test_name("tg", r["n_gen"], depth))
            out[test] = (float(r["avg_ts"]), float(r.get("stddev_ts", 0.0)))
        except (KeyError, TypeError, ValueError):
            continue
    return out


def batched_points(path):
    """[(pp, tg, batch, S_PP, S_TG)] from one llama-batched-bench log."""
    return [(int(pp), int(tg), int(b), float(s_pp), float(s_tg))
            for pp, tg, b, s_pp, s_tg in BATCHED_ROW.findall(read(path))]


def tpnode_points(path):
    """({prefill length: tok/s}, {decode batch: tok/s}, header lines) from `tpnode bench`."""
    text = read(path)
    prefill, decode = {}, {}
    for _, p, b, tok_s, _ms in TPNODE_ROW.findall(text):
        (prefill if p else decode)[int(p or b)] = float(tok_s)
    lines = text.splitlines()
    header = [l.lstrip("# ") for l in lines if l.startswith(("# command:", "device:", "model:"))]
    if not prefill and not decode:
        said = [l.strip() for l in lines
                if l.strip().strip("-") and not l.startswith(("# ", "[bench]"))]
        errors = [l for l in said if "error" in l.lower()]
        why = (errors or said or ["(no output)"])[-1]
        header.append(f"no results; {'first error' if errors else 'last line'}: "
                      f"{errors[0] if errors else why}")
    return prefill, decode, header


def label_of(path):
    return re.sub(r"^(llama_bench|batched|tpnode)_|\.(json|log)$", "", os.path.basename(path))


def summary(paths):
    print("\n## llama.cpp summary (tokens/s; llama-bench: mean ± sd of 3 runs)\n")
    print("| tool | run | test | tok/s |")
    print("| --- | --- | --- | --- |")
    for path in paths:
        label = label_of(path)
        if path.endswith(".json"):
            rows = llama_bench_tests(path)
            if not rows:
                print(f"| llama-bench | {label} | no results | |")
            for test, (mean, sd) in rows.items():
                print(f"| llama-bench | {label} | {test} | {mean:.1f} ± {sd:.1f} |")
        else:
            rows = batched_points(path)
            if not rows:
                print(f"| llama-batched-bench | {label} | no results | |")
            for pp, tg, b, s_pp, s_tg in rows:
                print(f"| llama-batched-bench | {label} | decode batch {b} (tg{tg} after pp{pp}) "
                      f"| {s_tg} |")
            for pp, tg, b, s_pp, s_tg in rows:
                print(f"| llama-batched-bench | {label} | prefill {b} x pp{pp} | {s_pp} |")


class Peer:
    """llama.cpp's numbers of one machine size: the fastest split mode of each point."""

    def __init__(self, raw, labels):
        self.bench = {}    # test -> (mean, sd, mode)
        self.batched = {}  # batch -> (S_TG, pp, tg, mode)
        for label in labels:
            mode = label.split("_", 1)[1] if "_" in label else ""
            for test, (mean, sd) in llama_bench_tests(
                    os.path.join(raw, f"llama_bench_{label}.json")).items():
                if test not in self.bench or mean > self.bench[test][0]:
                    self.bench[test] = (mean, sd, mode)
            for pp, tg, b, _s_pp, s_tg in batched_points(os.path.join(raw, f"batched_{label}.log")):
                if b not in self.batched or s_tg > self.batched[b][0]:
                    self.batched[b] = (s_tg, pp, tg, mode)


def num(v):
    if v is None:
        return "-"
    return f"{v:,.1f}" if v >= 100 else f"{v:.2f}"


def ratio(a, b):
    return f"{a / b:.2f}x" if a is not None and b else "-"


def mode_note(mode):
    return f", -sm {mode}" if mode else ""


def compare_section(raw, title, tpnode_label, peer_labels, points):
    prefills, batches, tg, depth = points
    tp_prefill, tp_decode, header = tpnode_points(os.path.join(raw, f"tpnode_{tpnode_label}.log"))
    # tpnode at llama-bench's tg point (batch 1 from an empty context), where it was run.
    _, tp_empty, _ = tpnode_points(os.path.join(raw, f"tpnode_{tpnode_label}_d0.log"))
    peer = Peer(raw, peer_labels)
    print(f"\n## {title}\n")
    for line in header:
        print(f"- tpnode {line}")
    print(f"- llama.cpp runs: {', '.join(peer_labels) if peer_labels else 'none'}\n")
    print("| phase | tpnode tok/s | llama.cpp tok/s (tool/test) | tpnode / llama.cpp |")
    print("| --- | ---: | --- | ---: |")
    for p in prefills:
        mine = tp_prefill.get(p)
        mean, sd, mode = peer.bench.get(f"pp{p}", (None, None, ""))
        theirs = f"{num(mean)} ± {num(sd)}" if mean is not None else "-"
        print(f"| prefill {p} | {num(mine)} | {theirs} (llama-bench pp{p}{mode_note(mode)}) "
              f"| {ratio(mine, mean)} |")
    for b in batches:
        mine = tp_decode.get(b)
        s_tg, pp, bb_tg, mode = peer.batched.get(b, (None, None, None, ""))
        what = (f"llama-batched-bench S_TG, B={b}, tg{bb_tg} after pp{pp}" if s_tg is not None
                else f"llama-batched-bench S_TG, B={b}")
        print(f"| decode batch {b} | {num(mine)} | {num(s_tg)} ({what}{mode_note(mode)}) "
              f"| {ratio(mine, s_tg)} |")
        if b != 1:
            continue
        for d in sorted({0, depth}):
            test = test_name("tg", tg, d)
            mean, sd, mode = peer.bench.get(test, (None, None, ""))
            if mean is None and d:
                continue  # llama-bench ran no test at that depth (no -d)
            theirs = f"{num(mean)} ± {num(sd)}" if mean is not None else "-"
            ours, phase = mine, "decode batch 1"
            if d == 0 and 1 in tp_empty:
                ours, phase = tp_empty[1], "decode batch 1, empty context"
            print(f"| {phase} | {num(ours)} | {theirs} (llama-bench {test}{mode_note(mode)}) "
                  f"| {ratio(ours, mean)} |")


def int_list(s):
    return [int(x) for x in s.split(",") if x.strip()]


def compare(args):
    raw = args[0] if args else "."
    opts = {"--single": "1gpu", "--prefill": "512,2048", "--batches": "1,8,32,64", "--tg": "128",
            "--depth": "128"}
    rest = args[1:]
    for flag, value in zip(rest[::2], rest[1::2]):
        if flag not in opts:
            sys.exit(f"peer_table.py compare: unknown option {flag} (expected {', '.join(opts)})")
        opts[flag] = value
    points = (int_list(opts["--prefill"]), int_list(opts["--batches"]), int(opts["--tg"]),
              int(opts["--depth"]))
    single = opts["--single"]
    print("\n# tpnode against llama.cpp, same GGUF, same machine, same run\n")
    print("tok/s: tpnode prefill is the best of its repetitions, llama-bench the mean ± sd of 3 "
          "runs; decode compares one step of B sequences (tpnode --context and --decode-steps "
          "as llama-batched-bench's -npp and -ntg) and, for B=1, llama-bench's tg from an "
          "empty context (against tpnode from one token of context where that was run, "
          "tpnode_<label>_d0.log) and, where it ran one, at the depth of tpnode's context (-d).")
    compare_section(raw, f"{single}: tpnode against llama.cpp", single, [single], points)
    sizes = set()
    for path in glob.glob(os.path.join(raw, "*_*gpu_*.*")):
        m = re.match(r"^(\d+)gpu_", label_of(path))
        if m and int(m.group(1)) >= 2:
            sizes.add(int(m.group(1)))
    for n in sorted(sizes):
        labels = sorted({label_of(p) for p in glob.glob(os.path.join(raw, f"*_{n}gpu_*"))
                         if p.endswith((".json", ".log"))
                         and not os.path.basename(p).startswith("tpnode_")})
        compare_section(raw, f"{n} GPUs: tpnode tensor parallel (mpirun -np {n}) against "
                        f"llama.cpp's fastest split mode per point", f"{n}gpu_tp", labels, points)


def main(argv):
    if len(argv) >= 2 and argv[1] == "summary":
        summary(argv[2:])
    elif len(argv) >= 2 and argv[1] == "compare":
        compare(argv[2:])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
