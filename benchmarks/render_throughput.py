"""Render throughput: full ground truth vs bare pyrender RGB + depth on the same scenes, in one run.

Both paths build the same sampled scenes; bare pyrender renders its own PBR-shaded RGB and depth (one pass), the lab
rasterises depth + ids and composes every buffer of frobnolab.scenes.render.BUFFERS. Then peak memory over many
frames of the full pipeline (flat after warm-up if pyrender's shader cache hits).

    .venv/bin/python benchmarks/render_throughput.py [--frames 1000] [--family clutter]
"""

import argparse
import json
import os
import platform
import resource
import time

from frobnolab.scenes import load_family
from frobnolab.scenes.render import Renderer


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return float("nan")


def throughputs(scenes, fns, repeats=3):
    """Images per second of each fn over the scenes: best of ``repeats`` interleaved passes (noise-robust)."""
    for fn in fns:
        fn(scenes[0])  # warm-up: shader compilation, mesh upload
    best = [0.0] * len(fns)
    for _ in range(repeats):
        for j, fn in enumerate(fns):
            t = time.perf_counter()
            for s in scenes:
                fn(s)
            best[j] = max(best[j], len(scenes) / (time.perf_counter() - t))
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--family", default="clutter")
    ap.add_argument("--scenes", type=int, default=50)
    ap.add_argument("--frames", type=int, default=1000)
    args = ap.parse_args()
    fam = load_family(args.family)
    res = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "family": args.family}
    for size in (64, 128):
        scenes = [fam.sample(i, seed=0, size=size) for i in range(args.scenes)]
        load_before = os.getloadavg()[0]
        with Renderer(size) as r:
            bare, full = throughputs(scenes, [r.render_rgb, r.render])
        load = (round(load_before, 2), round(os.getloadavg()[0], 2))  # other work on the machine skews the rates
        res[f"{size}"] = {"bare_pyrender_img_s": round(bare, 1), "full_gt_img_s": round(full, 1),
                          "ratio": round(full / bare, 3), "load_avg_1min_before_after": load}
        print(f"{size}x{size}: bare pyrender {bare:.1f} img/s, full ground truth {full:.1f} img/s, "
              f"ratio {full / bare:.2f} (1-min load average {load[0]} before, {load[1]} after)")
    scenes = [fam.sample(i, seed=1, size=64) for i in range(50)]
    trace = []
    with Renderer(64) as r:
        for k in range(args.frames):
            r.render(scenes[k % len(scenes)])
            if k % 100 == 99:
                trace.append(round(rss_mib(), 1))
    res["rss_mib_every_100_frames"] = trace
    res["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"RSS every 100 frames (MiB): {trace}; growth after warm-up {trace[-1] - trace[1]:+.1f} MiB")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
