"""Counterfactual rendering throughput: a counterfactual dataset vs an ordinary dataset of as many images, in one run.

Both are whole `render_dataset` runs (one process, `workers=1`) of the same family at the same size into fresh
folders: the ordinary one renders images 0..N-1; the counterfactual one renders N/R base scenes at R rungs of one
factor, which also samples (not renders) every base at every rung once before writing anything (the check that an
impossible value fails first). Best of ``repeats`` interleaved runs. Target: >= 0.8x the ordinary render.

    .venv/bin/python benchmarks/counterfactual_throughput.py [--images 48] [--size 64] [--family clutter]
"""

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

from frobnolab.scenes.counterfactual import render_counterfactual
from frobnolab.scenes.dataset import RenderConfig, render_dataset


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--family", default="clutter")
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--factor", default="object0.material.color.hsv[0]")
    ap.add_argument("--values", default="0,120,240")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    values = [float(v) for v in args.values.split(",")]
    bases = args.images // len(values)
    n = bases * len(values)
    tmp = Path(tempfile.mkdtemp(prefix="cf_bench_"))
    runs = {
        "ordinary": lambda out: render_dataset(RenderConfig(args.family, n=n, size=args.size, seed=0), out,
                                               workers=1, progress=False),
        "counterfactual": lambda out: render_counterfactual(args.family, args.factor, values=values, n=bases, seed=0,
                                                            size=args.size, out=out, workers=1, progress=False),
    }
    best = {k: 0.0 for k in runs}
    load_before = os.getloadavg()[0]
    try:
        runs["ordinary"](tmp / "warm")  # warm-up: GL context, shader compilation, meshes
        for rep in range(args.repeats):
            for name, run in runs.items():
                t = time.perf_counter()
                run(tmp / f"{name}{rep}")
                best[name] = max(best[name], n / (time.perf_counter() - t))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    load = (round(load_before, 2), round(os.getloadavg()[0], 2))  # other work on the machine skews the rates
    ratio = best["counterfactual"] / best["ordinary"]
    res = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "family": args.family, "size": args.size,
           "images": n, "bases": bases, "rungs": len(values), "factor": args.factor,
           "ordinary_img_s": round(best["ordinary"], 1), "counterfactual_img_s": round(best["counterfactual"], 1),
           "ratio": round(ratio, 3), "load_avg_1min_before_after": load}
    print(f"{args.family} {args.size}x{args.size}, {n} images ({bases} bases x {len(values)} rungs of {args.factor}): "
          f"ordinary {best['ordinary']:.1f} img/s, counterfactual {best['counterfactual']:.1f} img/s, ratio "
          f"{ratio:.2f} (1-min load average {load[0]} before, {load[1]} after)")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
