"""Activation stores: tokens of hooked layers, each with its provenance and its exact ground truth.

A token is one activation vector at one place. Image models: one spatial position of a feature map (B, C, h, w),
whose pixel footprint is its stride cell (stride = image size / h); its ground truth is every named concept pooled
over that footprint (``frobnolab.analysis.concepts.pool``). Coordinate fields: one 3D sample point along a camera
ray, whose ground truth is the exact scene query at that point.

Layout (one folder per hook point, so stores of different resolutions sit side by side)::

    manifest.json            config, model and dataset hashes, hook points, columns, versions, per-hook token counts
    chunks/000000/HOOK.acts.npy   (n, C) float32 activations
                  HOOK.where.npy  (n, 3) int32 image, row, col  |  (n, 4) image, row, col, sample (fields)
                  HOOK.gt.npy     (n, G) float32 ground-truth columns (names in the manifest)
                  HOOK.points.npy (n, 6) float32 point and view direction (fields only)

Extraction goes chunk by chunk (``batch_size`` images each) into ``OUT.partial/`` and renames each finished chunk into
place, so an interrupted extraction resumes; ``OUT`` appears only when complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from frobnolab.models.hooks import capture
from frobnolab.models.io import load_model, model_hash
from frobnolab.scenes.dataset import ChunkedArray, Dataset, split_indices, versions

from . import concepts as C

FORMAT = "frobnolab.store/1"


@dataclass(frozen=True)
class ExtractConfig:
    """What an extraction makes."""

    model: str
    """A saved model folder or a pretrained name (taesd[:PATH], sd-vae[:SOURCE], random-taesd[:SEED])."""
    dataset: str
    """Dataset folder (frobnolab render)."""
    hooks: tuple[str, ...] = ()
    """Hook point names or module paths; empty for all of the model's documented hook points."""
    split: str = "all"
    """Images: train, test (every 8th) or all."""
    batch_size: int = 16
    """Images per forward pass and per chunk."""
    tokens_per_image: int = 0
    """Keep this many random tokens per image and hook point (0: all). Fields: rays per image."""
    samples_per_ray: int = 16
    """Fields: points per ray (evenly spaced through the field's box)."""
    concepts: tuple[str, ...] = ()
    """Concept names to store; empty for every registered concept of the model's domain."""
    seed: int = 0
    """Seed of the token subsampling."""
    device: str = "cpu"
    """cpu or cuda."""

    def check(self):
        if self.batch_size < 1 or self.tokens_per_image < 0 or self.samples_per_ray < 1:
            raise ValueError(f"batch_size >= 1, tokens_per_image >= 0, samples_per_ray >= 1; got {self}")
        split_indices(1, self.split)


def _resolve_hooks(model, names) -> list:
    table = model.hook_points
    if not names:
        return table
    out = []
    for n in names:
        match = [h for h in table if n in (h.name, h.path)]
        if not match:
            raise ValueError(f"unknown hook point {n!r} for {type(model).__name__} "
                             f"(known: {', '.join(h.name for h in table)})")
        out.append(match[0])
    return out


def _check_finite(name: str, acts: torch.Tensor, chunk: int, lo: int, hi: int):
    if not torch.isfinite(acts).all():
        bad = (~torch.isfinite(acts)).sum().item()
        raise ValueError(f"hook point {name}: {bad} non-finite activations (NaN or inf) in batch {chunk} "
                         f"(images {lo}..{hi - 1}); refusing to store them")


def _subsample(n_per_image: int, k: int, seed: int, image: int) -> np.ndarray:
    if k == 0 or k >= n_per_image:
        return np.arange(n_per_image)
    return np.sort(np.random.default_rng([seed, image]).choice(n_per_image, size=k, replace=False))


def is_field(model) -> bool:
    from frobnolab.models.field import CoordinateField

    return isinstance(model, CoordinateField)


def _image_chunk(model, hooks, ds, img_idx, cfg, concepts, chunk):
    x = torch.from_numpy(np.ascontiguousarray(ds["rgb"][img_idx])).permute(0, 3, 1, 2).to(cfg.device)
    with torch.no_grad(), capture(model.hook_root, [h.path for h in hooks]) as acts:
        model(x)
    bufs = {name: np.asarray(ds[name][img_idx]) for name in ds.buffers}
    per_pixel = [(c, np.asarray(c.pixel(bufs))) for c in concepts]
    H, W = ds.size
    out = {}
    for h in hooks:
        a = acts[h.path]
        _check_finite(h.name, a, chunk, int(img_idx[0]), int(img_idx[-1]) + 1)
        if a.ndim != 4:
            raise ValueError(f"hook point {h.name}: expected a (B, C, h, w) feature map, got {tuple(a.shape)}")
        b, c, gh, gw = a.shape
        if H % gh or W % gw or H // gh != W // gw:
            raise ValueError(f"hook point {h.name}: feature map {gh}x{gw} does not tile the {H}x{W} image")
        stride = H // gh
        acts_N = a.permute(0, 2, 3, 1).reshape(-1, c).float().cpu().numpy()
        gt = np.concatenate([C.pool(v, con, stride) for con, v in per_pixel], -1)
        rr, cc = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
        where = np.stack([np.repeat(img_idx, gh * gw), np.tile(rr.ravel(), b), np.tile(cc.ravel(), b)], -1)
        keep = np.concatenate([k * gh * gw + _subsample(gh * gw, cfg.tokens_per_image, cfg.seed, int(i))
                               for k, i in enumerate(img_idx)])
        out[h.name] = {"acts": acts_N[keep], "where": where[keep].astype(np.int32), "gt": gt[keep],
                       "stride": stride}
    return out


def _single_scene(ds) -> bool:
    scene_cols = [j for j, n in enumerate(ds.factor_names) if not n.startswith("camera")]
    return not scene_cols or bool(np.all(np.nanstd(ds.factors[:, scene_cols], axis=0) == 0))


def _field_chunk(model, hooks, ds, img_idx, cfg, concepts, chunk, scene_cache):
    from frobnolab.models.field import ray_box
    from frobnolab.models.train import dataset_rays
    from frobnolab.scenes.queries import SceneQuery

    H, W = ds.size
    rays = cfg.tokens_per_image or 64
    o, d = dataset_rays(ds, img_idx)
    pts, dirs, where = [], [], []
    for k, i in enumerate(img_idx):
        pix = _subsample(H * W, rays, cfg.seed, int(i))
        oo = torch.as_tensor(o[k].reshape(-1, 3)[pix], dtype=torch.float32)
        dd = torch.as_tensor(d[k].reshape(-1, 3)[pix], dtype=torch.float32)
        near, far = ray_box(oo, dd, model.lo.cpu(), model.hi.cpu())
        far = torch.maximum(far, near + 1e-3)
        u = (torch.arange(cfg.samples_per_ray) + 0.5) / cfg.samples_per_ray
        t = near[:, None] + (far - near)[:, None] * u
        pts.append((oo[:, None] + t[..., None] * dd[:, None]).reshape(-1, 3).numpy())
        dirs.append(np.repeat(dd.numpy(), cfg.samples_per_ray, 0))
        where.append(np.stack([np.full(len(pix) * cfg.samples_per_ray, i), np.repeat(pix // W, cfg.samples_per_ray),
                               np.repeat(pix % W, cfg.samples_per_ray),
                               np.tile(np.arange(cfg.samples_per_ray), len(pix))], -1))
    P, D = np.concatenate(pts), np.concatenate(dirs)
    with torch.no_grad(), capture(model.hook_root, [h.path for h in hooks]) as acts:
        model(torch.as_tensor(P, device=cfg.device), torch.as_tensor(D, device=cfg.device))
    gts = []
    for k, i in enumerate(img_idx):  # each image may show a different scene
        sl = slice(k * rays * cfg.samples_per_ray, (k + 1) * rays * cfg.samples_per_ray)
        key = 0 if _single_scene(ds) else int(i)  # one scene for all: build its queries once
        if key not in scene_cache:
            scene_cache[key] = SceneQuery(ds.scene(key))
        q = scene_cache[key]
        ctx = C.PointContext(P[sl], D[sl], q.nearest(P[sl]), q.sdf(P[sl]))
        gts.append(np.concatenate([C.point_values(np.asarray(c.point(ctx)), c) for c in concepts], -1))
    gt = np.concatenate(gts)
    out = {}
    for h in hooks:
        a = acts[h.path]
        _check_finite(h.name, a, chunk, int(img_idx[0]), int(img_idx[-1]) + 1)
        out[h.name] = {"acts": a.float().cpu().numpy(), "where": np.concatenate(where).astype(np.int32), "gt": gt,
                       "points": np.concatenate([P, D], -1).astype(np.float32), "stride": 0}
    return out


_WORKER: dict = {}


def _init_worker(cfg: ExtractConfig, model=None):
    """Set up this process for ``_extract_chunk``: the model (loaded once), its hook points, the dataset, concepts."""
    model = (load_model(cfg.model, cfg.device) if model is None else model.to(cfg.device)).eval()
    field = is_field(model)
    _WORKER.clear()
    _WORKER.update(cfg=cfg, model=model, hooks=_resolve_hooks(model, cfg.hooks), ds=Dataset(cfg.dataset),
                   field=field, concepts=C.get(list(cfg.concepts) or None, "point" if field else "pixel"),
                   scene_cache={})


def _extract_chunk(job) -> int:
    """Extract one chunk of images into ``chunks/NNNNNN`` (atomically); returns its image count."""
    work, k, img_idx = job
    w = _WORKER
    args = (w["model"], w["hooks"], w["ds"], img_idx, w["cfg"], w["concepts"], k)
    res = _field_chunk(*args, w["scene_cache"]) if w["field"] else _image_chunk(*args)
    final = Path(work) / "chunks" / f"{k:06d}"
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for name, r in res.items():
        for part in ("acts", "where", "gt", "points"):
            if part in r:
                np.save(tmp / f"{name}.{part}.npy", r[part])
    (tmp / "strides.json").write_text(json.dumps({n: r["stride"] for n, r in res.items()}))
    os.replace(tmp, final)
    return len(img_idx)


def extract(cfg: ExtractConfig, out: str | Path, *, force: bool = False, progress: bool = True,
            model=None, ray=None) -> Path:
    """Run ``cfg.model`` over ``cfg.dataset`` and store tokens for its hook points in ``out``.

    ``model``: an already-built model (with ``hook_root`` and ``hook_points``) to use instead of loading
    ``cfg.model``, which then only names it in the manifest.
    ``ray``: a ``frobnolab.scenes.cluster.RayConfig`` to run the chunks on Ray actors, each loading the model once
    (one GPU each when ``cfg.device`` is cuda); the store's content is the same as a local run's.
    """
    from tqdm.auto import tqdm

    cfg.check()
    ds = Dataset(cfg.dataset)
    gpus_per_worker = 1 if cfg.device.startswith("cuda") else 0
    if ray is not None:  # reachable, and with GPUs if they are asked for, before anything is written
        from frobnolab.scenes.cluster import check_gpus

        check_gpus(ray, gpus_per_worker)
    given = model
    # with Ray the workers run the model; here it is only hashed and asked for its hook points, so a driver without
    # a GPU can send work to a cluster with GPUs
    here = "cpu" if ray is not None else cfg.device
    model = (load_model(cfg.model, here) if model is None else model.to(here)).eval()
    hooks = _resolve_hooks(model, cfg.hooks)
    field = is_field(model)
    concepts = C.get(list(cfg.concepts) or None, "point" if field else "pixel")
    columns = [col for c in concepts for col in c.columns]
    key = {"config": asdict(cfg), "model_sha256": model_hash(model), "dataset_sha256": ds.manifest["dataset_sha256"],
           "hooks": [h.name for h in hooks], "columns": columns}
    key = json.loads(json.dumps(key))  # as it reads back from JSON (tuples become lists)
    out = Path(out)
    if (out / "manifest.json").exists():
        if json.loads((out / "manifest.json").read_text()).get("key") == key:
            return out
        if not force:
            raise FileExistsError(f"{out}: a different activation store is already there (use --force to replace it)")
        shutil.rmtree(out)
    work = out.with_name(out.name + ".partial")
    plan = work / "plan.json"
    if work.exists() and (not plan.exists() or json.loads(plan.read_text()) != key):
        shutil.rmtree(work)
    (work / "chunks").mkdir(parents=True, exist_ok=True)
    plan.write_text(json.dumps(key))

    img = split_indices(len(ds), cfg.split)
    chunks = [img[k:k + cfg.batch_size] for k in range(0, len(img), cfg.batch_size)]
    todo = [(str(work.resolve()), k, idx) for k, idx in enumerate(chunks)
            if not (work / "chunks" / f"{k:06d}").is_dir()]
    t0 = time.time()
    bar = tqdm(total=len(img), initial=len(img) - sum(len(j[2]) for j in todo), unit="img",
               desc=f"extract {len(hooks)} hook point(s)", disable=not progress)
    try:
        if ray is not None:
            from frobnolab.scenes.cluster import run_shards

            # a model given in memory travels to the workers pickled; otherwise each worker loads cfg.model itself
            for count in run_shards(ray, _extract_chunk, todo, init=_init_worker, init_args=(cfg, given),
                                    num_gpus=gpus_per_worker,
                                    check=lambda job: (Path(job[0]) / "chunks" / f"{job[1]:06d}").is_dir()):
                bar.update(count)
        else:
            _init_worker(cfg, model)
            try:
                for job in todo:
                    bar.update(_extract_chunk(job))
            finally:
                _WORKER.clear()
    finally:
        bar.close()
    for stray in (work / "chunks").glob(".*.tmp-*"):  # what a worker killed mid-write left behind
        shutil.rmtree(stray, ignore_errors=True)

    chunk_dirs = [work / "chunks" / f"{k:06d}" for k in range(len(chunks))]
    strides = json.loads((chunk_dirs[0] / "strides.json").read_text()) if chunk_dirs else {}
    hook_meta = {}
    for h in hooks:
        counts = [int(np.load(c / f"{h.name}.acts.npy", mmap_mode="r").shape[0]) for c in chunk_dirs]
        d_in = int(np.load(chunk_dirs[0] / f"{h.name}.acts.npy", mmap_mode="r").shape[1]) if chunk_dirs else 0
        digest = hashlib.sha256()
        for c in chunk_dirs:
            for part in ("acts", "gt"):
                digest.update(hashlib.sha256((c / f"{h.name}.{part}.npy").read_bytes()).digest())
        hook_meta[h.name] = {"path": h.path, "meaning": h.meaning, "d_in": d_in, "n_tokens": sum(counts),
                             "chunk_tokens": counts, "stride": strides.get(h.name, 0), "sha256": digest.hexdigest()}
    manifest = {
        "format": FORMAT, "key": key, "kind": "field" if field else "image", "model": cfg.model,
        "dataset": str(Path(cfg.dataset).resolve()), "images": img.tolist(),
        "where_columns": ["image", "row", "col", "sample"] if field else ["image", "row", "col"],
        "columns": columns,
        "concepts": [{"name": c.name, "kind": c.kind, "columns": c.columns, "description": c.description}
                     for c in concepts],
        "hooks": hook_meta, "chunks": [c.name for c in chunk_dirs], "versions": versions(),
        "torch": torch.__version__, "seconds": round(time.time() - t0, 2),
        "executor": f"ray ({ray.address})" if ray is not None else "this process",
    }
    (work / "manifest.json").write_text(json.dumps(manifest, indent=1))
    plan.unlink()
    os.replace(work, out)
    return out


class HookTokens:
    """The tokens of one hook point: ``acts`` (N, C), ``where`` (N, 3 or 4), ``gt`` (N, G), lazily memory-mapped."""

    def __init__(self, store: "ActivationStore", name: str):
        meta = store.manifest["hooks"][name]
        dirs = [store.path / "chunks" / c for c in store.manifest["chunks"]]
        counts = meta["chunk_tokens"]
        self.name, self.meta, self.columns = name, meta, store.manifest["columns"]
        self.d_in, self.stride = meta["d_in"], meta["stride"]
        self.acts = ChunkedArray([d / f"{name}.acts.npy" for d in dirs], counts, "float32", (meta["d_in"],))
        self.where = ChunkedArray([d / f"{name}.where.npy" for d in dirs], counts, "int32",
                                  (len(store.manifest["where_columns"]),))
        self.gt = ChunkedArray([d / f"{name}.gt.npy" for d in dirs], counts, "float32", (len(self.columns),))
        self.points = (ChunkedArray([d / f"{name}.points.npy" for d in dirs], counts, "float32", (6,))
                       if store.manifest["kind"] == "field" else None)

    def __len__(self):
        return self.meta["n_tokens"]

    def column(self, name: str) -> int:
        if name not in self.columns:
            raise KeyError(f"no ground-truth column {name!r} (known: {', '.join(self.columns)})")
        return self.columns.index(name)


class ActivationStore:
    """An activation store folder (see the module docstring)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        mf = self.path / "manifest.json"
        if not mf.exists():
            raise FileNotFoundError(f"{self.path}: not an activation store (no manifest.json)")
        self.manifest = json.loads(mf.read_text())
        if self.manifest.get("format") != FORMAT:
            raise ValueError(f"{mf}: format {self.manifest.get('format')!r}, expected {FORMAT!r}")

    @property
    def hooks(self) -> list[str]:
        return list(self.manifest["hooks"])

    def __getitem__(self, hook: str) -> HookTokens:
        if hook not in self.manifest["hooks"]:
            raise KeyError(f"no hook point {hook!r} in {self.path} (has: {', '.join(self.hooks)})")
        return HookTokens(self, hook)
