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
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from frobnolab.errors import unknown
from frobnolab.files import atomic_folder, atomic_write, sweep_temporaries, write_json
from frobnolab.models.io import load_model, model_hash
from frobnolab.scenes.dataset import Dataset, split_indices, versions

from . import concepts as C
from .domain import domain_named, domain_of
from .context import check_scales, context_concepts
from .tokens import HookTokens

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
    """Images: train, test (the dataset's held-out images) or all."""
    batch_size: int = 16
    """Images per forward pass and per chunk."""
    tokens_per_image: int = 0
    """Keep this many random tokens per image and hook point (0: all). Fields: rays per image."""
    samples_per_ray: int = 16
    """Fields: points per ray (evenly spaced through the field's box)."""
    concepts: tuple[str, ...] = ()
    """Concepts to store, by name or by import path ``module:function`` (a function returning a Concept, or the
    Concept itself), so that every worker process can load it; empty for every registered concept of the model's
    domain."""
    seed: int = 0
    """Seed of the token subsampling."""
    device: str = "cpu"
    """cpu or cuda."""
    context: tuple[int, ...] = ()
    """Image models: also store every concept averaged over the k x k tokens around each token, for each k (odd,
    >= 3), as concepts ``NAME@k`` (``analysis/context.py``); empty: the footprint alone."""

    def check(self):
        if self.batch_size < 1 or self.tokens_per_image < 0 or self.samples_per_ray < 1:
            raise ValueError(f"batch_size >= 1, tokens_per_image >= 0, samples_per_ray >= 1; got {self}")
        check_scales(self.context)
        split_indices(1, self.split)


def resolve_hooks(model, names) -> list:
    """The model's hook points named in ``names`` (names or module paths); all of them when empty."""
    table = model.hook_points
    if not names:
        return table
    out = []
    for n in names:
        match = [h for h in table if n in (h.name, h.path)]
        if not match:
            raise unknown("hook point", n, [h.name for h in table], type(model).__name__)
        out.append(match[0])
    return out


def manifest_concepts(concepts, context=()) -> list[dict]:
    """The manifest's ``concepts``: each concept, then its context copies (``analysis/context.py``)."""
    own = [{"name": c.name, "kind": c.kind, "columns": c.columns, "description": c.description} for c in concepts]
    return own + context_concepts(own, context)


def store_columns(concepts, context=()) -> list[str]:
    """The ground-truth columns a store of these concepts (and context scales) holds, in order."""
    return [col for c in manifest_concepts(concepts, context) for col in c["columns"]]


_WORKER: dict = {}


def _init_worker(cfg: ExtractConfig, model=None, columns: list | None = None):
    """Set up this process for ``_extract_chunk``: the model (loaded once), its hook points, the dataset, concepts.

    ``columns``: the ground-truth columns the driver planned; a worker whose concepts give other columns (a concept
    the driver registered that this process cannot import) refuses to start."""
    model = (load_model(cfg.model, cfg.device) if model is None else model.to(cfg.device)).eval()
    domain = domain_of(model)
    concepts = C.get(list(cfg.concepts) or None, domain.concept_domain)
    mine = store_columns(concepts, cfg.context)
    if columns is not None and mine != list(columns):
        missing = [col for col in columns if col not in mine]
        raise ValueError(f"this worker's concepts give other ground-truth columns than the driver planned "
                         f"(missing here: {', '.join(missing) or 'none'}); register custom concepts by import "
                         f"path in ExtractConfig.concepts ('module:function') so every worker can load them")
    _WORKER.clear()
    _WORKER.update(cfg=cfg, model=model, hooks=resolve_hooks(model, cfg.hooks), ds=Dataset(cfg.dataset),
                   domain=domain, concepts=concepts)


def _extract_chunk(job) -> int:
    """Extract one chunk of images into ``chunks/NNNNNN`` (atomically); returns its image count."""
    work, k, img_idx = job
    w = _WORKER
    res = w["domain"].extract(w["model"], w["hooks"], w["ds"], img_idx, w["cfg"], w["concepts"], k)
    with atomic_folder(Path(work) / "chunks" / f"{k:06d}") as tmp:
        for name, r in res.items():
            for part in ("acts", "where", "gt", "points"):
                if part in r:
                    np.save(tmp / f"{name}.{part}.npy", r[part])
        (tmp / "strides.json").write_text(json.dumps({n: r["stride"] for n, r in res.items()}))
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
    if Path(cfg.model).is_dir():  # a model folder is recorded (and loaded by workers) by its absolute path
        cfg = replace(cfg, model=str(Path(cfg.model).resolve()))
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
    hooks = resolve_hooks(model, cfg.hooks)
    domain = domain_of(model)
    concepts = C.get(list(cfg.concepts) or None, domain.concept_domain)
    columns = store_columns(concepts, cfg.context)
    conf = asdict(cfg)
    if not conf["context"]:  # a store without context keeps the key it had before the option existed
        del conf["context"]
    key = {"config": conf, "model_sha256": model_hash(model), "dataset_sha256": ds.manifest["dataset_sha256"],
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
    atomic_write(plan, json.dumps(key))

    img = ds.split(cfg.split)
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
            for count in run_shards(ray, _extract_chunk, todo, init=_init_worker, init_args=(cfg, given, columns),
                                    num_gpus=gpus_per_worker,
                                    check=lambda job: (Path(job[0]) / "chunks" / f"{job[1]:06d}").is_dir()):
                bar.update(count)
        else:
            _init_worker(cfg, model, columns)
            try:
                for job in todo:
                    bar.update(_extract_chunk(job))
            finally:
                _WORKER.clear()
    finally:
        bar.close()
    sweep_temporaries(work / "chunks")  # what a worker killed mid-write left behind

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
        "format": FORMAT, "key": key, "kind": domain.name, "model": cfg.model,
        "dataset": str(Path(cfg.dataset).resolve()), "images": img.tolist(), "holdout_every": ds.holdout_every,
        "where_columns": list(domain.where_columns),
        "columns": columns,
        "concepts": manifest_concepts(concepts, cfg.context),
        "hooks": hook_meta, "chunks": [c.name for c in chunk_dirs], "versions": versions(),
        "torch": torch.__version__, "seconds": round(time.time() - t0, 2),
        "executor": f"ray ({ray.address})" if ray is not None else "this process",
    }
    write_json(work / "manifest.json", manifest)
    plan.unlink()
    os.replace(work, out)
    return out


class ActivationStore:
    """An activation store folder (see the module docstring): the only way to read one."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        mf = self.path / "manifest.json"
        if not self.path.is_dir():
            raise FileNotFoundError(f"{self.path}: no such folder (an activation store made by frobnolab extract)")
        if not mf.exists():
            raise FileNotFoundError(f"{self.path}: not an activation store (no manifest.json)")
        self.manifest = json.loads(mf.read_text())
        if self.manifest.get("format") != FORMAT:
            raise ValueError(f"{mf}: format {self.manifest.get('format')!r}, expected {FORMAT!r}")
        self._dataset = None

    @property
    def hooks(self) -> list[str]:
        return list(self.manifest["hooks"])

    def __getitem__(self, hook: str) -> HookTokens:
        if hook not in self.manifest["hooks"]:
            raise unknown("hook point", hook, self.hooks, str(self.path))
        return HookTokens(self, hook)

    @property
    def dataset(self) -> Dataset:
        """The dataset the store was extracted from."""
        if self._dataset is None:
            self._dataset = Dataset(self.manifest["dataset"])
        return self._dataset

    @property
    def domain(self):
        """The model kind's adapter (``frobnolab.analysis.domain``)."""
        return domain_named(self.manifest["kind"])

    @property
    def concepts(self) -> list[dict]:
        return self.manifest["concepts"]

    @property
    def columns(self) -> list[str]:
        return self.manifest["columns"]

    def load_model(self, device: str = "cpu"):
        """The model the store was extracted from (as the manifest names it)."""
        return load_model(self.manifest["model"], device)
