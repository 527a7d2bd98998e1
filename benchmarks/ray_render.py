"""Render throughput on Ray vs the local process pool, 2 workers each, in one run; and Ray's overhead per shard.

Same dataset config for both (byte-identical outputs, checked). *Local pool*: ``render_dataset(workers=2)``, which
spawns its 2 processes (each with a GL context) per run. *Ray*: ``render_dataset(ray=RayConfig(workers=2))`` on a
local Ray started once before the timing (its start-up is reported apart); each run makes 2 actors, one GL context
each. Overhead per shard: Ray's dispatch of a no-op shard (``int``), making its 2 actors included, and the wall-time difference of
the two renders divided by the number of shards. Best of ``--repeats`` interleaved runs.

    .venv/bin/python benchmarks/ray_render.py [--n 512] [--size 64] [--shard-size 16]
"""

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

from frobnolab.scenes.cluster import RayConfig, connect, run_shards
from frobnolab.scenes.dataset import RenderConfig, render_dataset


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--family", default="clutter")
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--shard-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    cfg = RenderConfig(args.family, n=args.n, size=args.size, seed=0, shard_size=args.shard_size)
    n_shards = -(-args.n // args.shard_size)
    t = time.perf_counter()
    ray = connect(RayConfig(workers=2))
    startup = time.perf_counter() - t
    rcfg = RayConfig(workers=2)
    tmp = Path(tempfile.mkdtemp(prefix="frobnolab-raybench-"))
    best = {"local": float("inf"), "ray": float("inf")}
    try:
        for rep in range(args.repeats):
            for name in best:
                out = tmp / f"{name}{rep}"
                t = time.perf_counter()
                if name == "local":
                    render_dataset(cfg, out, workers=2, progress=False)
                else:
                    render_dataset(cfg, out, ray=rcfg, progress=False)
                best[name] = min(best[name], time.perf_counter() - t)
        a = json.loads((tmp / "local0" / "manifest.json").read_text())["dataset_sha256"]
        b = json.loads((tmp / "ray0" / "manifest.json").read_text())["dataset_sha256"]
        assert a == b, "Ray and local renders differ"
        jobs = [str(i) for i in range(200)]
        t = time.perf_counter()
        list(run_shards(rcfg, int, jobs, init=print))
        noop = time.perf_counter() - t
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        ray.shutdown()
    res = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores", "family": args.family, "n": args.n,
        "size": args.size, "shards": n_shards, "ray_startup_s": round(startup, 2),
        "local_pool_img_s": round(args.n / best["local"], 1), "ray_img_s": round(args.n / best["ray"], 1),
        "ratio_ray_vs_local": round(best["local"] / best["ray"], 3),
        "overhead_per_shard_ms": round(1000 * (best["ray"] - best["local"]) / n_shards, 1),
        "noop_shard_dispatch_ms": round(1000 * noop / len(jobs), 2), "identical_outputs": True,
    }
    print(f"local pool (2 processes): {res['local_pool_img_s']} img/s; Ray (2 actors): {res['ray_img_s']} img/s; "
          f"ratio {res['ratio_ray_vs_local']}; Ray start-up {startup:.1f} s (once per session)")
    print(f"overhead per shard: {res['overhead_per_shard_ms']} ms from the render times; "
          f"{res['noop_shard_dispatch_ms']} ms to dispatch a no-op shard (200 shards, making the 2 actors included)")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
