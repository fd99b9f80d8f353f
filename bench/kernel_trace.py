#!/usr/bin/env python3
"""Per-kernel table of the decode steps in a kernel_trace CSV (bench/kernel_trace.cpp).

Kernels replayed from one CUDA graph launch share the launch's correlation id: each such group
is one step. For the last N steps (default: all), each kernel's share of the step is the time
from the end of the kernel before it to its own end (`critical`), which is what the step would
lose without it when kernels run back to back; `busy` is its own start-to-end time, and
`early` how long it had started before the previous kernel ended (programmatic dependent
launch lets its prologue run then). Rows aggregate kernels of one name per step.

With --gaps it also shows what separates one step from the next (traces that hold copies and
runtime calls, kind memcpy and api): the idle time from a step's last kernel to the next step's
first, and within it the kernels outside graphs (such as sampling), the copies, and the host's
runtime calls (the time inside each call, clipped to the gap), medians over the steps.

  bench/kernel_trace.py trace.1234.csv [--steps N] [--device D] [--top K] [--list K] [--gaps]
"""
import argparse
import collections
import csv
import statistics
import sys


def short(name, width):
    """The kernel's name and template arguments, without namespaces and parameters."""
    name = name.replace("(anonymous namespace)::", "")
    if name.startswith("void "):
        name = name[5:]
    depth, cut = 0, len(name)
    for i, c in enumerate(name):
        depth += c == "<"
        depth -= c == ">"
        if c == "(" and depth == 0:
            cut = i
            break
    head, lt, args = name[:cut].partition("<")
    base = head.split("::")[-1] + lt + args
    return base if len(base) <= width else base[: width - 1] + "~"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("csv")
    ap.add_argument("--steps", type=int, default=0, help="the last N graph launches (0: all)")
    ap.add_argument("--device", type=int, default=None)
    ap.add_argument("--top", type=int, default=40)
    ap.add_argument("--width", type=int, default=70)
    ap.add_argument("--list", type=int, default=0, help="also list the last step's first K kernels in order")
    ap.add_argument("--gaps", action="store_true", help="also show what lies between two steps")
    a = ap.parse_args()

    groups = collections.OrderedDict()
    others = []  # kernels outside graphs, copies, runtime calls
    with open(a.csv) as f:
        for r in csv.DictReader(f):
            kind = r.get("kind") or "kernel"
            if kind == "kernel" and a.device is not None and int(r["device"]) != a.device:
                continue
            if kind != "kernel" or int(r["graph"]) == 0:
                others.append(r)
                continue
            key = (r["device"], r["correlation"])
            groups.setdefault(key, []).append(r)
    steps = list(groups.values())
    if a.steps > 0:
        steps = steps[-a.steps :]
    if not steps:
        sys.exit("no kernels replayed from a graph in " + a.csv)

    totals, per_name = [], collections.defaultdict(lambda: collections.defaultdict(list))
    for ks in steps:
        ks.sort(key=lambda r: int(r["start_ns"]))
        t0 = int(ks[0]["start_ns"])
        prev_end = t0
        sums = collections.defaultdict(lambda: [0, 0.0, 0.0, 0.0])
        for r in ks:
            s, e = int(r["start_ns"]), int(r["end_ns"])
            crit = max(0, e - prev_end)
            early = max(0, prev_end - s)
            v = sums[r["name"]]
            v[0] += 1
            v[1] += crit / 1e3
            v[2] += (e - s) / 1e3
            v[3] += early / 1e3
            prev_end = max(prev_end, e)
        totals.append((prev_end - t0) / 1e3)
        for name, v in sums.items():
            for i, x in enumerate(v):
                per_name[name][i].append(x)

    med = statistics.median
    print(f"{len(steps)} steps (graph launches); step {med(totals):.1f} us median "
          f"(min {min(totals):.1f}, max {max(totals):.1f}); {len(steps[-1])} kernels in the last")
    print(f"{'kernel':<{a.width}} {'n':>4} {'critical us':>11} {'share':>6} {'busy us':>9} {'early us':>9}")
    rows = sorted(per_name.items(), key=lambda kv: -med(kv[1][1]))
    step = med(totals)
    for name, v in rows[: a.top]:
        c = med(v[1])
        print(f"{short(name, a.width):<{a.width}} {med(v[0]):>4.0f} {c:>11.1f} {100 * c / step:>5.1f}% "
              f"{med(v[2]):>9.1f} {med(v[3]):>9.1f}")
    if a.list > 0:
        ks = steps[-1]
        t0, prev_end = int(ks[0]["start_ns"]), int(ks[0]["start_ns"])
        print(f"\nthe last step in order (us from its first kernel's start)")
        print(f"{'kernel':<{a.width}} {'start':>8} {'end':>8} {'critical':>9} {'grid':>6} {'block':>6}")
        for r in ks[: a.list]:
            s, e = int(r["start_ns"]), int(r["end_ns"])
            print(f"{short(r['name'], a.width):<{a.width}} {(s - t0) / 1e3:>8.1f} {(e - t0) / 1e3:>8.1f} "
                  f"{max(0, e - prev_end) / 1e3:>9.1f} {r['grid']:>6} {r['block']:>6}")
            prev_end = max(prev_end, e)


    if a.gaps:
        gaps(steps, others, a.width)


def gaps(steps, others, width):
    """Between consecutive steps: the idle time and what fills it (medians over the steps)."""
    spans = sorted((min(int(r["start_ns"]) for r in ks), max(int(r["end_ns"]) for r in ks)) for ks in steps)
    idle, inside = [], collections.defaultdict(list)
    for (_, end), (start, _) in zip(spans, spans[1:]):
        idle.append(max(0, start - end) / 1e3)
        sums = collections.defaultdict(float)
        for r in others:
            s, e = max(int(r["start_ns"]), end), min(int(r["end_ns"]), start)
            if e <= s:
                continue
            kind = r.get("kind") or "kernel"
            label = short(r["name"], width - 8) if kind == "kernel" else r["name"]
            sums[f"{kind}: {label}"] += (e - s) / 1e3
        for k in set(inside) | set(sums):
            inside[k].append(sums.get(k, 0.0))
    if not idle:
        print("\nno two consecutive steps")
        return
    med = statistics.median
    print(f"\nbetween steps: idle {med(idle):.1f} us median (min {min(idle):.1f}, max {max(idle):.1f}) "
          f"over {len(idle)} gaps; inside it (us, median; runtime calls on the host):")
    for k, v in sorted(inside.items(), key=lambda kv: -med(kv[1] + [0.0] * (len(idle) - len(kv[1])))):
        v = v + [0.0] * (len(idle) - len(v))
        print(f"  {k:<{width}} {med(v):>9.1f}")


if __name__ == "__main__":
    main()

