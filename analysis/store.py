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

from frobnolab.errors import unknown
from frobnolab.files import atomic_folder, atomic_write, sweep_temporaries, write_json
from frobnolab.models.io import load_model, model_hash
from frobnolab.scenes.dataset import ChunkedArray, Dataset, is_held_out, split_indices, versions

from . import concepts as C
from .domain import domain_named, domain_of

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

    def check(self):
        if self.batch_size < 1 or self.tokens_per_image < 0 or self.samples_per_ray < 1:
            raise ValueError(f"batch_size >= 1, tokens_per_image >= 0, samples_per_ray >= 1; got {self}")
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


_WORKER: dict = {}


def _init_worker(cfg: ExtractConfig, model=None, columns: list | None = None):
    """Set up this process for ``_extract_chunk``: the model (loaded once), its hook points, the dataset, concepts.

    ``columns``: the ground-truth columns the driver planned; a worker whose concepts give other columns (a concept
    the driver registered that this process cannot import) refuses to start."""
    model = (load_model(cfg.model, cfg.device) if model is None else model.to(cfg.device)).eval()
    domain = domain_of(model)
    concepts = C.get(list(cfg.concepts) or None, domain.concept_domain)
    mine = [col for c in concepts for col in c.columns]
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
        "concepts": [{"name": c.name, "kind": c.kind, "columns": c.columns, "description": c.description}
                     for c in concepts],
        "hooks": hook_meta, "chunks": [c.name for c in chunk_dirs], "versions": versions(),
        "torch": torch.__version__, "seconds": round(time.time() - t0, 2),
        "executor": f"ray ({ray.address})" if ray is not None else "this process",
    }
    write_json(work / "manifest.json", manifest)
    plan.unlink()
    os.replace(work, out)
    return out


# ------------------------------------------------------------------------------------------------------- reading

SPLITS = ("train", "test", "all")


@dataclass
class TokenChunk:
    """Some tokens of one hook point: ``acts (n, C)``, ``gt (n, G)``, ``where (n, 3 | 4)``; fields also
    ``points (n, 6)`` (point and view direction)."""

    acts: np.ndarray
    gt: np.ndarray
    where: np.ndarray
    points: np.ndarray | None = None

    def __len__(self):
        return len(self.acts)

    @property
    def images(self) -> np.ndarray:
        return self.where[:, 0]


class Tokens:
    """The tokens of one hook point, read chunk by chunk; subclasses say where the chunks come from
    (:class:`HookTokens`: a store's files; :class:`ArrayTokens`: arrays in memory)."""

    name: str
    d_in: int
    columns: list[str]
    holdout_every: int = 8

    @property
    def n_chunks(self) -> int:
        raise NotImplementedError

    def _read(self, k: int, part: str, rows=None) -> np.ndarray:
        raise NotImplementedError

    def held_out(self, images: np.ndarray) -> np.ndarray:
        """Which of ``images`` are held out (the dataset's rule)."""
        return is_held_out(images, self.holdout_every)

    def chunk(self, k: int, split: str = "all", parts: tuple[str, ...] = ("acts", "gt", "where")) -> TokenChunk:
        """Stored chunk ``k``, only the tokens of ``split`` (train, test or all) and only ``parts`` (others
        empty); ``acts`` as float32."""
        if split not in SPLITS:
            raise unknown("split", split, SPLITS)
        where = self._read(k, "where")
        rows = None if split == "all" else np.flatnonzero(self.held_out(where[:, 0]) == (split == "test"))
        empty = np.zeros((0, 0), np.float32)
        got = {p: (np.asarray(self._read(k, p, rows), np.float32) if p == "acts" else self._read(k, p, rows))
               if p in parts else empty for p in ("acts", "gt", "points")}
        return TokenChunk(got["acts"], got["gt"], where if rows is None else where[rows], got["points"])

    def chunks(self, split: str = "all", size: int = 0, max_tokens: int = 0,
               parts: tuple[str, ...] = ("acts", "gt", "where")):
        """The tokens of ``split`` in order, re-cut into chunks of ``size`` tokens (0: as stored), at most
        ``max_tokens`` in all (0: all)."""
        buf, n, total = [], 0, 0
        for k in range(self.n_chunks):
            c = self.chunk(k, split, parts)
            if not len(c.where):
                continue
            if not size:
                if max_tokens:
                    c = _rows(c, slice(0, max_tokens - total))
                total += len(c.where)
                yield c
                if max_tokens and total >= max_tokens:
                    return
                continue
            buf.append(c)
            n += len(c.where)
            while n >= size:
                c = _concat(buf)
                take = size if not max_tokens else min(size, max_tokens - total)
                yield _rows(c, slice(0, take))
                total += take
                if max_tokens and total >= max_tokens:
                    return
                buf, n = [_rows(c, slice(take, None))], len(c.where) - take
        if n:
            c = _concat(buf)
            if max_tokens:
                c = _rows(c, slice(0, max_tokens - total))
            if len(c.where):
                yield c

    def images(self, split: str = "all") -> np.ndarray:
        """The distinct images that have tokens in ``split``, sorted."""
        ims = np.unique(np.concatenate([self._read(k, "where")[:, 0] for k in range(self.n_chunks)]
                                       or [np.zeros(0, np.int64)]))
        return ims if split == "all" else ims[self.held_out(ims) == (split == "test")]

    def activations(self, split: str = "test", max_tokens: int = 0) -> np.ndarray:
        """Activations ``(N, d_in)`` of ``split``'s tokens, float32 (streamed chunk by chunk)."""
        parts = [c.acts for c in self.chunks(split, parts=("acts", "where"), max_tokens=max_tokens)]
        if not parts:
            raise ValueError(f"hook {self.name} has no tokens of the {split} images; extract with --split all "
                             f"or {split}")
        return np.concatenate(parts)


def _rows(c: TokenChunk, sel) -> TokenChunk:
    pick = lambda a: a[sel] if a is not None and len(a) == len(c.where) else a  # noqa: E731
    return TokenChunk(pick(c.acts), pick(c.gt), c.where[sel], pick(c.points))


def _concat(cs: list[TokenChunk]) -> TokenChunk:
    if len(cs) == 1:
        return cs[0]
    cat = lambda xs: np.concatenate(xs) if all(x is not None for x in xs) else None  # noqa: E731
    return TokenChunk(cat([c.acts for c in cs]), cat([c.gt for c in cs]), cat([c.where for c in cs]),
                      cat([c.points for c in cs]))


class HookTokens(Tokens):
    """The tokens of one hook point of a store: ``acts`` (N, C), ``where`` (N, 3 or 4), ``gt`` (N, G) as lazily
    memory-mapped arrays, and chunk by chunk (:meth:`chunk`, :meth:`chunks`), each chunk checked against the
    manifest's shapes."""

    def __init__(self, store: "ActivationStore", name: str):
        meta = store.manifest["hooks"][name]
        m = store.manifest
        self.store, self.name, self.meta, self.columns = store, name, meta, m["columns"]
        self.d_in, self.stride = meta["d_in"], meta["stride"]
        self.holdout_every = m.get("holdout_every", 8)
        self._counts = meta["chunk_tokens"]
        dirs = [store.path / "chunks" / c for c in m["chunks"]]
        widths = {"acts": meta["d_in"], "where": len(m["where_columns"]), "gt": len(self.columns), "points": 6}
        self._widths = widths
        self._paths = {p: [d / f"{name}.{p}.npy" for d in dirs] for p in widths}
        self._maps: dict = {}
        arr = lambda p, dt: ChunkedArray(self._paths[p], self._counts, dt, (widths[p],))  # noqa: E731
        self.acts, self.where, self.gt = arr("acts", "float32"), arr("where", "int32"), arr("gt", "float32")
        self.points = arr("points", "float32") if m["kind"] == "field" else None

    @property
    def n_chunks(self) -> int:
        return len(self._counts)

    def _read(self, k: int, part: str, rows=None) -> np.ndarray:
        if (k, part) not in self._maps:
            path = self._paths[part][k]
            if part == "points" and self.points is None:
                return np.zeros((0, 6), np.float32)
            a = np.load(path, mmap_mode="r")
            want = (self._counts[k], self._widths[part])
            if a.shape != want:
                raise ValueError(f"{path}: shape {a.shape}, but the store's manifest says {want} "
                                 f"(a chunk from another extraction?)")
            self._maps[(k, part)] = a
        a = self._maps[(k, part)]
        return np.asarray(a if rows is None else a[rows])

    def __len__(self):
        return self.meta["n_tokens"]

    def column(self, name: str) -> int:
        if name not in self.columns:
            raise unknown("ground-truth column", name, self.columns)
        return self.columns.index(name)


class ArrayTokens(Tokens):
    """Tokens held in memory, cut into chunks like a store's (the planted-truth validation makes these)."""

    def __init__(self, name: str, acts: list[np.ndarray], gt: list[np.ndarray], where: list[np.ndarray],
                 columns: list[str], holdout_every: int = 8):
        self.name, self.columns, self.holdout_every = name, list(columns), holdout_every
        self._parts = {"acts": acts, "gt": gt, "where": where}
        self.d_in = acts[0].shape[1] if acts else 0

    @property
    def n_chunks(self) -> int:
        return len(self._parts["acts"])

    def _read(self, k: int, part: str, rows=None) -> np.ndarray:
        if part == "points":
            return np.zeros((0, 6), np.float32)
        a = self._parts[part][k]
        return a if rows is None else a[rows]


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
