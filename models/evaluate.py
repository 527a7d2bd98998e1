"""Evaluation of models against their known optimal outputs, on held-out images.

- Autoencoders: the optimal output is the input image: MSE, PSNR, SSIM.
- Coordinate fields: the optimal output is the scene: held-out-view PSNR and SSIM, depth error on foreground
  pixels (expected termination distance vs the exact ray distance), mask IoU (opacity > 0.5 vs geometry hit),
  and at random 3D points (half uniform in the field's box, half within 0.05 of a visible surface, where mistakes
  are likely) occupancy IoU and SDF-sign accuracy.
"""

from __future__ import annotations

import numpy as np
import torch

from frobnolab.scenes.dataset import Dataset

from .metrics import psnr, ssim


def only_scene(ds: Dataset):
    """The one scene of a single-scene dataset (only the camera varies); ValueError otherwise."""
    if not ds.single_scene():
        raise ValueError(f"{ds.path}: not a single-scene dataset (factors vary: "
                         f"{', '.join(ds.varying_factors()[:5])})")
    return ds.scene(0)


@torch.no_grad()
def evaluate_autoencoder(model, ds: Dataset, split: str = "test", device: str = "cpu", batch: int = 32) -> dict:
    idx = ds.split(split)
    model = model.to(device).eval()
    preds, targets = [], []
    for k in range(0, len(idx), batch):
        x = torch.from_numpy(np.ascontiguousarray(ds["rgb"][idx[k:k + batch]])).permute(0, 3, 1, 2).to(device)
        preds.append(model(x).float().cpu())
        targets.append(x.cpu())
    p, t = torch.cat(preds), torch.cat(targets)
    return {"images": len(idx), "mse": torch.mean((p.clamp(0, 1) - t) ** 2).item(), "psnr": psnr(p, t),
            "ssim": ssim(p, t)}


@torch.no_grad()
def render_views(model, ds: Dataset, idx: np.ndarray, device: str = "cpu", n_samples: int = 64,
                 n_importance: int = 64, chunk: int = 4096):
    """Render dataset views with a field: rgb (n, H, W, 3), depth (n, H, W), acc (n, H, W), as numpy."""
    from .field import render_rays

    o, d = ds.rays(idx)
    shape = o.shape[:3]
    o, d = torch.as_tensor(o.reshape(-1, 3), dtype=torch.float32), torch.as_tensor(d.reshape(-1, 3), dtype=torch.float32)
    outs = [render_rays(model, o[k:k + chunk].to(device), d[k:k + chunk].to(device), n_samples,
                        n_importance=n_importance)
            for k in range(0, len(o), chunk)]
    rgb = torch.cat([r.rgb for r in outs]).cpu().numpy().reshape(shape + (3,))
    depth = torch.cat([r.depth for r in outs]).cpu().numpy().reshape(shape)
    acc = torch.cat([r.acc for r in outs]).cpu().numpy().reshape(shape)
    return rgb, depth, acc


@torch.no_grad()
def evaluate_field(model, ds: Dataset, split: str = "test", device: str = "cpu", n_points: int = 20000,
                   seed: int = 0, n_samples: int = 64, n_importance: int = 64) -> dict:
    """Held-out views rendered with ``n_samples`` even and ``n_importance`` importance samples per ray (more of
    either: less quadrature error, the same field) against the exact renders and the exact 3D scene."""
    from frobnolab.scenes.queries import SceneQuery

    model = model.to(device).eval()
    idx = ds.split(split)
    rgb, depth, acc = render_views(model, ds, idx, device, n_samples=n_samples, n_importance=n_importance)
    gt = np.asarray(ds["rgb"][idx])
    fg = np.asarray(ds["instance"][idx]) > 0
    dist = np.asarray(ds["distance"][idx])
    p, t = torch.from_numpy(rgb).permute(0, 3, 1, 2), torch.from_numpy(gt).permute(0, 3, 1, 2)
    mask = acc > 0.5
    scene = only_scene(ds)
    q = SceneQuery(scene)
    rng = np.random.default_rng(seed)
    lo, hi = np.array(model.config.aabb[0]), np.array(model.config.aabb[1])
    pos = np.asarray(ds["position"][idx])[fg]
    near = pos[rng.integers(len(pos), size=n_points // 2)] + rng.uniform(-0.05, 0.05, size=(n_points // 2, 3))
    pts = np.concatenate([rng.uniform(lo, hi, size=(n_points - n_points // 2, 3)), near])
    occ_true = q.sdf(pts) < 0
    occ_pred = model.occupancy(torch.as_tensor(pts, dtype=torch.float32, device=device)).cpu().numpy() > 0.5
    inter, union = (occ_true & occ_pred).sum(), (occ_true | occ_pred).sum()
    return {
        "views": len(idx),
        "psnr": psnr(p, t),
        "ssim": ssim(p, t),
        "depth_mae_fg": float(np.abs(depth[fg] - dist[fg]).mean()),
        "depth_rel_fg": float((np.abs(depth[fg] - dist[fg]) / dist[fg]).mean()),
        "mask_iou": float((mask & fg).sum() / max((mask | fg).sum(), 1)),
        "occupancy_iou": float(inter / max(union, 1)),
        "sdf_sign_accuracy": float((occ_true == occ_pred).mean()),
        "points": n_points,
    }
