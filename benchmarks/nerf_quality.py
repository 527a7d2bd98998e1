"""NeRF-style field on the `single` family at 64x64 after a fixed wall-clock budget of training (default 180 s), beside
a baseline trained in the same run on the same data with the same budget: held-out-view PSNR / SSIM, depth error,
mask IoU, occupancy IoU and SDF-sign accuracy against the exact scene, one row per model.

    .venv/bin/python benchmarks/nerf_quality.py [--seconds 180] [--models field,voxel] [--views 96]

Models: ``field`` (``TrainFieldConfig()``'s defaults: the Fourier-feature field), ``voxel`` (the dense voxel grid
baseline, ``VoxelGridConfig()``, through the same ``train_field`` loop and losses), ``hash`` (the hash-grid field,
``hash_field()``). Each trains in turn, in this process, so they share the machine's
conditions; the evaluation is not part of the budget.
"""

import argparse
import dataclasses
import json
import tempfile
from pathlib import Path

import torch

from frobnolab.models.evaluate import evaluate_field
from frobnolab.models.hashgrid import HashGridConfig
from frobnolab.models.io import load_model
from frobnolab.models.train import TrainFieldConfig, hash_field, train_field
from frobnolab.models.voxel_grid import VoxelGridConfig
from frobnolab.scenes.dataset import Dataset, RenderConfig, render_dataset

MODELS = {
    "field": lambda: TrainFieldConfig(),
    "voxel": lambda: TrainFieldConfig(model=VoxelGridConfig()),
    "hash": lambda: TrainFieldConfig(model=hash_field()),
    # variants of the hash field tried against the 31 dB target (issue 17)
    "hash_l16": lambda: TrainFieldConfig(model=dataclasses.replace(
        hash_field(), grid=HashGridConfig(levels=16, max_res=512))),
    "hash_glr3": lambda: TrainFieldConfig(model=hash_field(), grid_lr=3e-2),
    "hash_l6": lambda: TrainFieldConfig(model=dataclasses.replace(
        hash_field(), grid=HashGridConfig(levels=6, max_res=128))),
    "hash_layers2": lambda: TrainFieldConfig(model=dataclasses.replace(hash_field(), layers=2)),
    "hash_t17": lambda: TrainFieldConfig(model=dataclasses.replace(hash_field(), grid=HashGridConfig(log2_table=17))),
    "hash_lr1": lambda: TrainFieldConfig(model=hash_field(), lr=1e-2),
    "hash_rays1024": lambda: TrainFieldConfig(model=hash_field(), rays_per_batch=1024),
    "hash_pts2048": lambda: TrainFieldConfig(model=hash_field(), points_per_batch=2048),
    "hash_lr3": lambda: TrainFieldConfig(model=hash_field(), lr=3e-3),
    "hash_glr5": lambda: TrainFieldConfig(model=hash_field(), grid_lr=5e-3),
}
COLUMNS = ("psnr", "ssim", "depth_mae_fg", "mask_iou", "occupancy_iou", "sdf_sign_accuracy")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=180)
    ap.add_argument("--models", default="field,voxel", help=f"comma-separated, of {', '.join(MODELS)}")
    ap.add_argument("--views", type=int, default=96)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-quadrature", default="",
                    help="EVEN,IMPORTANCE: also evaluate every model with this many samples per ray (default "
                         "evaluation: 64,64), after its training, outside the budget")
    args = ap.parse_args()
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    if not names or set(names) - set(MODELS):
        raise SystemExit(f"--models: give some of {', '.join(MODELS)}; got {args.models!r}")
    tmp = Path(tempfile.mkdtemp())
    data = render_dataset(RenderConfig("single", n=args.views, size=64, seed=0), tmp / "single64", workers=1,
                          progress=False)
    print("| model | steps | seconds (train + eval) | PSNR | SSIM | depth MAE (fg) | mask IoU | occupancy IoU | SDF-sign acc. |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in names:
        cfg = MODELS[name]()
        cfg.steps, cfg.max_seconds, cfg.seed = 1_000_000, args.seconds, args.seed  # the clock ends every run
        rec = train_field(data, tmp / name, cfg, progress=False)
        ev = rec["evaluation"]
        print(f"| {name} | {rec['steps']:,} | {rec['seconds']:.0f} | {ev['psnr']:.2f} dB | {ev['ssim']:.3f} | "
              f"{ev['depth_mae_fg']:.4f} | {ev['mask_iou']:.3f} | {ev['occupancy_iou']:.3f} | "
              f"{ev['sdf_sign_accuracy']:.3f} |", flush=True)
        print(json.dumps({"model": name, "steps": rec["steps"], "seconds": rec["seconds"], "views": args.views,
                          "threads": torch.get_num_threads(), "config": rec["train_config"],
                          **{k: ev[k] for k in COLUMNS}}), flush=True)
        if args.eval_quadrature:  # the same trained field, rendered with a finer quadrature
            n_s, n_i = map(int, args.eval_quadrature.split(","))
            fine = evaluate_field(load_model(tmp / name), Dataset(data), n_samples=n_s, n_importance=n_i)
            print(f"| {name} (evaluated at {n_s} + {n_i} samples a ray) | {rec['steps']:,} | | "
                  f"{fine['psnr']:.2f} dB | {fine['ssim']:.3f} | {fine['depth_mae_fg']:.4f} | {fine['mask_iou']:.3f} | "
                  f"{fine['occupancy_iou']:.3f} | {fine['sdf_sign_accuracy']:.3f} |", flush=True)
            print(json.dumps({"model": name, "eval_quadrature": [n_s, n_i], **{k: fine[k] for k in COLUMNS}}),
                  flush=True)


if __name__ == "__main__":
    main()
