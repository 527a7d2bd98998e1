"""NeRF-style field on the `single` family at 64x64 after a fixed wall-clock budget of training (default 180 s):
held-out-view PSNR / SSIM, depth error, mask IoU, occupancy IoU and SDF-sign accuracy against the exact scene.

    .venv/bin/python benchmarks/nerf_quality.py [--seconds 180] [--mode both] [--views 96] [--samples 24]
        [--importance 24]
"""

import argparse
import json
import tempfile
from pathlib import Path

import torch

from frobnolab.models.field import FieldConfig
from frobnolab.models.train import TrainFieldConfig, train_field
from frobnolab.scenes.dataset import RenderConfig, render_dataset


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=180)
    ap.add_argument("--mode", default="both")
    ap.add_argument("--views", type=int, default=96)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--rays", type=int, default=512)
    ap.add_argument("--samples", type=int, default=24)
    ap.add_argument("--importance", type=int, default=24)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    data = render_dataset(RenderConfig("single", n=args.views, size=64, seed=0), tmp / "single64", progress=False)
    cfg = TrainFieldConfig(model=FieldConfig(hidden=args.hidden), mode=args.mode, steps=100000,
                           max_seconds=args.seconds, rays_per_batch=args.rays, samples_per_ray=args.samples,
                           importance_samples=args.importance)
    rec = train_field(data, tmp / "field", cfg, progress=False)
    print(json.dumps({"mode": args.mode, "samples": args.samples, "importance": args.importance, "seconds": rec["seconds"], "steps": rec["steps"], "views": args.views,
                      "threads": torch.get_num_threads(), **rec["evaluation"]}))


if __name__ == "__main__":
    main()
