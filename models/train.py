"""Training loops, flat and readable (nanoGPT-style): the small autoencoder and the coordinate field.

Each loop seeds everything, shows a progress bar, checkpoints (model, optimiser, step, generator) every
``checkpoint_every`` steps into ``OUT/checkpoint.pt`` and resumes from it, and ends by saving the model
(``model.safetensors`` + ``model.json`` with the training record) and ``training.json`` (the loss curve and the
evaluation against the optimal output on held-out images).
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from frobnolab.files import atomic_write, dumps, write_json
from frobnolab.scenes.dataset import Dataset

from .conv_ae import ConvAEConfig, ConvAutoencoder
from .evaluate import evaluate_autoencoder, evaluate_field, only_scene
from .field import CoordinateField, FieldConfig, render_rays
from .hashgrid import HashGridConfig
from .io import model_hash, save_model
from .voxel_grid import VoxelGrid, VoxelGridConfig


def _device(name: str) -> torch.device:
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    return torch.device(name)


def _save_checkpoint(path: Path, **state):
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write(path, buf.getvalue())


def _resume(ckpt: Path, model, opt, sched, gen) -> dict | None:
    """Restore model, optimiser, scheduler and batch generator from ``ckpt`` if it exists; returns its state."""
    if not ckpt.exists():
        return None
    state = torch.load(ckpt, weights_only=False)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    if sched is not None:
        sched.load_state_dict(state["sched"])
    gen.set_state(state["gen"])
    return state


def _images(ds: Dataset, idx: np.ndarray) -> torch.Tensor:  # (N, 3, H, W) float32 in [0, 1]
    return torch.from_numpy(np.ascontiguousarray(ds["rgb"][idx])).permute(0, 3, 1, 2).contiguous()


def _up_to_date(out: Path, cfg, ds: Dataset) -> dict | None:
    """The saved record when ``out`` already holds a model trained with this config on this dataset."""
    meta = out / "model.json"
    if not meta.exists():
        return None
    rec = json.loads(meta.read_text()).get("record", {})
    same = rec.get("train_config") == json.loads(dumps(dataclasses.asdict(cfg))) and \
        rec.get("dataset_sha256") == ds.manifest["dataset_sha256"]
    return json.loads((out / "training.json").read_text()) if same and (out / "training.json").exists() else None


def _finish(model, out: Path, cfg, ds: Dataset, curve: list, evaluation: dict, seconds: float, steps_done: int):
    record = {"train_config": dataclasses.asdict(cfg), "dataset": str(ds.path),
              "dataset_sha256": ds.manifest["dataset_sha256"], "steps": steps_done, "seconds": round(seconds, 2),
              "evaluation": evaluation, "torch": torch.__version__}
    save_model(model.cpu(), out, record=record)
    record["model_sha256"] = model_hash(model)
    write_json(out / "training.json", {**record, "curve": curve})
    (out / "checkpoint.pt").unlink(missing_ok=True)
    return record


# -------------------------------------------------------------------------------------------------------- autoencoder


@dataclass
class TrainAEConfig:
    model: ConvAEConfig = field(default_factory=ConvAEConfig)
    """The autoencoder's architecture."""
    steps: int = 1500
    """Optimiser steps."""
    batch_size: int = 32
    """Images per step."""
    lr: float = 2e-3
    """Adam learning rate (cosine-decayed to 10% over the run)."""
    seed: int = 0
    """Seed of the initialisation and of the batch order."""
    device: str = "cpu"
    """cpu or cuda."""
    checkpoint_every: int = 250
    """Steps between checkpoints (resume points)."""
    crop: int = 0
    """Train on one random square crop of this side per batch (0: whole images). The model is convolutional, so it
    is evaluated on whole images; crops of large renders cost less per step and vary more than whole images."""
    channels_last: bool = False
    """Run in channels-last memory layout (measured 1.5x faster on a 2-core CPU; floats differ in the last bits)."""

    def __post_init__(self):
        if self.crop < 0 or self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"TrainAEConfig: steps and batch_size >= 1, crop >= 0; got {self}")


def train_autoencoder(dataset: str | Path, out: str | Path, cfg: TrainAEConfig, progress: bool = True) -> dict:
    """Train :class:`ConvAutoencoder` on a dataset's training images; returns the training record."""
    from tqdm.auto import trange

    ds, out, dev = Dataset(dataset), Path(out), _device(cfg.device)
    if (done := _up_to_date(out, cfg, ds)) is not None:
        return done
    out.mkdir(parents=True, exist_ok=True)
    train = _images(ds, ds.split("train"))
    m = 2 ** len(cfg.model.channels)
    if cfg.crop and (cfg.crop % m or cfg.crop > min(train.shape[-2:])):
        raise ValueError(f"TrainAEConfig.crop {cfg.crop}: must be a multiple of {m} and at most the image side "
                         f"({min(train.shape[-2:])} in {ds.path})")
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    torch.manual_seed(cfg.seed)
    model = ConvAutoencoder(cfg.model).to(dev, memory_format=fmt)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.steps, eta_min=cfg.lr * 0.1)
    gen = torch.Generator().manual_seed(cfg.seed)
    step, curve, t0 = 0, [], time.time()
    ckpt = out / "checkpoint.pt"
    if (state := _resume(ckpt, model, opt, sched, gen)) is not None:
        step, curve = state["step"], state["curve"]
    bar = trange(step, cfg.steps, desc="train autoencoder", disable=not progress, initial=step, total=cfg.steps)
    for step in bar:
        x = train[torch.randint(len(train), (cfg.batch_size,), generator=gen)]
        if cfg.crop and cfg.crop < min(x.shape[-2:]):
            i = int(torch.randint(0, x.shape[-2] - cfg.crop + 1, (1,), generator=gen))
            j = int(torch.randint(0, x.shape[-1] - cfg.crop + 1, (1,), generator=gen))
            x = x[..., i:i + cfg.crop, j:j + cfg.crop]
        x = x.to(dev, memory_format=fmt)
        loss = F.mse_loss(model(x), x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 10 == 0:
            curve.append((step, loss.item()))
            bar.set_postfix(loss=f"{loss.item():.4f}")
        if (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
            _save_checkpoint(ckpt, model=model.state_dict(), opt=opt.state_dict(), sched=sched.state_dict(),
                             gen=gen.get_state(), step=step + 1, curve=curve)
    evaluation = evaluate_autoencoder(model, ds, split="test", device=cfg.device)
    return _finish(model, out, cfg, ds, curve, evaluation, time.time() - t0, cfg.steps)


# -------------------------------------------------------------------------------------------------------------- field


def hash_field() -> FieldConfig:
    """The hash-grid field's measured configuration (hidden 64, 3 layers, no Fourier features)."""
    return FieldConfig(encoding="hash", hidden=64, layers=3, n_freqs=0, grid=HashGridConfig())


@dataclass
class TrainFieldConfig:
    model: FieldConfig | VoxelGridConfig = field(default_factory=FieldConfig)
    """The model: a coordinate field's architecture (default: Fourier features; ``hash_field()``: hash-grid
    encoding, not yet shown better at a fixed budget) or a dense voxel grid's (the baseline,
    ``models/voxel_grid.py``)."""
    mode: str = "both"
    """volume: photometric loss through volume rendering; direct: regression on the exact 3D ground truth
    (occupancy everywhere, surface colour near surfaces); both: the sum."""
    steps: int = 3000
    """Optimiser steps (the run also stops at max_seconds)."""
    max_seconds: float = 0.0
    """Wall-clock budget for the loop; 0 for none."""
    rays_per_batch: int = 512
    """Rays per step (volume)."""
    samples_per_ray: int = 24
    """Evenly spaced samples per ray (volume; jittered while training)."""
    importance_samples: int = 24
    """More samples per ray drawn where the first ones found the surfaces (volume); with them, only these carry
    gradient (see ``render_rays``)."""
    points_per_batch: int = 4096
    """Points per step (direct): half uniform in the box, half jittered around visible surface points."""
    alpha_weight: float = 0.1
    """Weight of the opacity loss against the foreground masks (volume)."""
    lr: float = 5e-3
    """Adam learning rate, cosine-decayed to 5% over the run: over ``steps``, or over ``max_seconds`` when the
    clock will end the run first."""
    grid_lr: float = 1e-2
    """Adam learning rate of grid tables (hash grid, voxel grid), on the same schedule; 0: lr. Grid entries each
    see few points per step, so they take larger steps than the MLP's shared weights."""
    seed: int = 0
    """Seed of the initialisation and of all sampling."""
    device: str = "cpu"
    """cpu or cuda."""
    checkpoint_every: int = 500
    """Steps between checkpoints."""

    def __post_init__(self):
        if self.mode not in ("volume", "direct", "both"):
            raise ValueError(f"TrainFieldConfig.mode must be volume, direct or both, got {self.mode!r}")
        if self.grid_lr < 0:
            raise ValueError(f"TrainFieldConfig.grid_lr must be >= 0, got {self.grid_lr}")
        if self.samples_per_ray < 2 or self.importance_samples < 0:
            raise ValueError(f"TrainFieldConfig: samples_per_ray >= 2 and importance_samples >= 0, got "
                             f"{self.samples_per_ray} and {self.importance_samples}")


def _field_optimizer(model, cfg: TrainFieldConfig) -> torch.optim.Adam:
    """Adam over the model; grid tables (``grid``, ``encoder.*``) in a group of their own at ``grid_lr``."""
    is_grid = lambda n: n == "grid" or n.startswith("encoder.")  # noqa: E731
    grids = [p for n, p in model.named_parameters() if is_grid(n)]
    if not grids:  # one group, as before grids existed (the same steps for the same config)
        return torch.optim.Adam(model.parameters(), lr=cfg.lr)
    rest = [p for n, p in model.named_parameters() if not is_grid(n)]
    groups = [{"params": grids, "lr": cfg.grid_lr or cfg.lr}] + ([{"params": rest, "lr": cfg.lr}] if rest else [])
    # Instant-NGP's betas and epsilon: rarely touched entries keep their second moment small, so a tiny epsilon
    # lets them take full steps when they are touched
    return torch.optim.Adam(groups, betas=(0.9, 0.99), eps=1e-15)


def train_field(dataset: str | Path, out: str | Path, cfg: TrainFieldConfig, progress: bool = True) -> dict:
    """Train a :class:`CoordinateField` (or the :class:`VoxelGrid` baseline) on a single-scene dataset; returns the
    training record."""
    from tqdm.auto import trange

    from frobnolab.scenes.queries import SceneQuery

    ds, out, dev = Dataset(dataset), Path(out), _device(cfg.device)
    if (done := _up_to_date(out, cfg, ds)) is not None:
        return done
    out.mkdir(parents=True, exist_ok=True)
    scene = only_scene(ds)
    query = SceneQuery(scene)
    tr = ds.split("train")
    o, d = ds.rays(tr)
    rgb = np.asarray(ds["rgb"][tr])
    fg = np.asarray(ds["instance"][tr]) > 0
    pos = np.asarray(ds["position"][tr])
    to = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32)  # noqa: E731
    rays_o, rays_d, rays_rgb, rays_fg = to(o.reshape(-1, 3)), to(d.reshape(-1, 3)), to(rgb.reshape(-1, 3)), \
        to(fg.reshape(-1))
    surf = fg.reshape(-1)
    surf_pos, surf_d, surf_rgb = pos.reshape(-1, 3)[surf], d.reshape(-1, 3)[surf], rgb.reshape(-1, 3)[surf]

    torch.manual_seed(cfg.seed)
    model = (VoxelGrid if isinstance(cfg.model, VoxelGridConfig) else CoordinateField)(cfg.model).to(dev)
    opt = _field_optimizer(model, cfg)
    base_lr = [g["lr"] for g in opt.param_groups]
    gen = torch.Generator().manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    lo, hi = np.array(cfg.model.aabb[0]), np.array(cfg.model.aabb[1])
    step, curve, t0, spent = 0, [], time.time(), 0.0
    ckpt = out / "checkpoint.pt"
    if (state := _resume(ckpt, model, opt, None, gen)) is not None:
        rng.bit_generator.state = state["rng"]
        step, curve, spent = state["step"], state["curve"], state.get("seconds", 0.0)
    bar = trange(step, cfg.steps, desc=f"train field ({cfg.mode})", disable=not progress, initial=step,
                 total=cfg.steps)
    for step in bar:
        # The schedule runs over the budget that will end the run: steps, or the clock when it is set.
        done = step / cfg.steps
        if cfg.max_seconds:
            done = max(done, (spent + time.time() - t0) / cfg.max_seconds)
        for g, lr in zip(opt.param_groups, base_lr):
            g["lr"] = lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(done, 1.0))))
        loss = torch.zeros((), device=dev)
        if cfg.mode in ("volume", "both"):
            i = torch.randint(len(rays_o), (cfg.rays_per_batch,), generator=gen)
            r = render_rays(model, rays_o[i].to(dev), rays_d[i].to(dev), cfg.samples_per_ray, stratified=True,
                            n_importance=cfg.importance_samples)
            loss = loss + F.mse_loss(r.rgb, rays_rgb[i].to(dev))
            loss = loss + cfg.alpha_weight * F.binary_cross_entropy(r.acc.clamp(1e-5, 1 - 1e-5), rays_fg[i].to(dev))
        if cfg.mode in ("direct", "both"):
            n = cfg.points_per_batch // 2
            j = rng.integers(len(surf_pos), size=n)
            near = surf_pos[j] + rng.normal(0, 0.03, size=(n, 3))
            pts = np.concatenate([rng.uniform(lo, hi, size=(n, 3)), near])
            occ = to(query.sdf(pts) < 0).to(dev)
            p = torch.as_tensor(pts, dtype=torch.float32, device=dev)
            pred_occ = model.occupancy(p).clamp(1e-5, 1 - 1e-5)
            loss = loss + 0.1 * F.binary_cross_entropy(pred_occ, occ)
            # Colour at the surface is the pixel's colour seen along its ray.
            _, col = model(to(surf_pos[j]).to(dev), to(surf_d[j]).to(dev))
            loss = loss + F.mse_loss(col, to(surf_rgb[j]).to(dev))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 10 == 0:
            curve.append((step, loss.item()))
            bar.set_postfix(loss=f"{loss.item():.4f}")
        if (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
            _save_checkpoint(ckpt, model=model.state_dict(), opt=opt.state_dict(), gen=gen.get_state(),
                             rng=rng.bit_generator.state, step=step + 1, curve=curve, seconds=spent + time.time() - t0)
        if cfg.max_seconds and spent + time.time() - t0 > cfg.max_seconds:
            break
    bar.close()
    evaluation = evaluate_field(model, ds, split="test", device=cfg.device)
    return _finish(model, out, cfg, ds, curve, evaluation, time.time() - t0, step + 1)
