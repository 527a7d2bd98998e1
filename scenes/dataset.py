"""Datasets of renders: chunked ``.npy`` arrays plus a JSON manifest, readable with numpy alone.

Layout of a dataset folder::

    manifest.json           schema (each buffer's dtype, shape, units, meaning), family, seed, split, versions, hashes
    provenance.json         when, where and how it was made (not hashed: it differs between identical runs)
    preview.png             a contact sheet of the first images and their ground truth
    family.yaml             the family file's text, as rendered
    camera_K.npy            (N, 3, 3) float64 intrinsics
    camera_pose.npy         (N, 4, 4) float64 camera-to-world poses (OpenGL convention)
    factors.npy             (N, F) float64 scene factors, NaN where an image lacks one; names in the manifest
    shards/000000/rgb.npy   (n, H, W, 3) ... one file per buffer per shard of ``shard_size`` images

Rendering works shard by shard in worker processes, into ``OUT.partial/``; each finished shard is renamed into
place atomically, so an interrupted render resumes with the shards it lacks. Only when every shard is done is the
folder renamed to ``OUT``: a dataset is never left half-written under its final name.

The dataset owns its train/test split (``holdout_every`` in the manifest: :meth:`Dataset.split`,
:meth:`Dataset.is_held_out`) and its cameras' rays (:meth:`Dataset.rays`); every stage asks it for them.

A counterfactual dataset (``RenderConfig.counterfactual``, ``frobnolab.scenes.counterfactual``) has the same format:
image ``b * R + r`` is scene ``b`` of the family with the dataset's seed with one factor changed to rung ``r`` of R;
the manifest's ``counterfactual`` entry says which (:attr:`Dataset.counterfactual`, :meth:`Dataset.base_of`).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import platform
import shutil
import socket
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from frobnolab.errors import unknown
from frobnolab.files import atomic_folder, dumps, sweep_temporaries, write_json

FORMAT = "frobnolab.dataset/1"
SHARDS = "shards"


@dataclass(frozen=True)
class RenderConfig:
    """What a render makes; two renders with equal configs write byte-identical arrays."""

    family: str
    """Shipped family name or path of a family file."""
    n: int = 64
    """Number of images."""
    size: int | None = None
    """Image side in pixels (square); None takes the family's default."""
    seed: int = 0
    """Dataset seed; image i draws from a generator seeded by (seed, i)."""
    shard_size: int = 16
    """Images per shard (one chunk of every array, one unit of parallel work and of resumption)."""
    holdout_every: int = 8
    """Every this many images, the last is held out: image i is a test image when i % holdout_every ==
    holdout_every - 1 (recorded in the manifest; training, extraction and scoring all split by it)."""
    counterfactual: dict | None = None
    """A counterfactual sweep {"factor": PATH, "values": [...] | None, "deltas": [...] | None}: image b * R + r is
    scene b with the factor set to values[r] (or its drawn value plus deltas[r]), R rungs; n must be a multiple of R.
    None: an ordinary dataset."""

    def check(self):
        for name, lo in (("n", 1), ("shard_size", 1), ("holdout_every", 2)):
            v = getattr(self, name)
            if not isinstance(v, int) or v < lo:
                raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
        if self.size is not None and (not isinstance(self.size, int) or not 8 <= self.size <= 4096):
            raise ValueError(f"size must be an integer in [8, 4096], got {self.size!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        if self.counterfactual is not None:
            from .family import check_sweep, sweep_rungs

            rungs = sweep_rungs(check_sweep(self.counterfactual))
            if self.n % rungs:
                raise ValueError(f"n must be a multiple of the counterfactual's {rungs} rungs, got {self.n}")


def image_scene(family, i: int, seed: int, size: int, counterfactual: dict | None = None):
    """Image ``i``'s scene: scene i of ``family`` with ``seed``, or for a counterfactual dataset (the sweep as
    :func:`frobnolab.scenes.family.check_sweep` gives it) base scene ``i // R`` at rung ``i % R``."""
    if counterfactual is None:
        return family.sample(i, seed=seed, size=size)
    from .family import sweep_override, sweep_rungs

    base, rung = divmod(i, sweep_rungs(counterfactual))
    return family.sample(base, seed=seed, size=size, overrides={counterfactual["factor"]:
                                                                 sweep_override(counterfactual, rung)})


def check_counterfactual(family, cfg: "RenderConfig", size: int):
    """Sample (not render) every base at every rung, so that an impossible value fails before anything is written:
    one line naming the base, the field and the value."""
    from frobnolab.errors import UnknownNameError

    from .family import sweep_rungs

    rungs = sweep_rungs(cfg.counterfactual)
    for i in range(cfg.n):
        try:
            image_scene(family, i, cfg.seed, size, cfg.counterfactual)
        except UnknownNameError:
            raise
        except ValueError as e:
            raise ValueError(f"counterfactual base {i // rungs} (rung {i % rungs}): {e}") from None


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("frobnolab", "numpy", "trimesh", "pyrender-maintained", "PyOpenGL", "embreex"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------------------ writing

_WORKER: dict = {}


def _init_worker(family_path: str, size: int):
    from .family import load_family
    from .render import Renderer

    _WORKER["family"] = load_family(family_path)
    _WORKER["renderer"] = Renderer(size)


def _init_pool_worker(family_path: str, size: int):
    """A pool worker's set-up: an error is kept and raised by the worker's first shard, so that the driver gets
    the real exception (an initializer that raises only breaks the pool: "a process terminated abruptly")."""
    try:
        _init_worker(family_path, size)
    except Exception as e:  # noqa: BLE001 - handed to the driver through the first shard
        _WORKER["setup_error"] = e


def _render_pool_shard(args) -> int:
    if "setup_error" in _WORKER:
        raise _WORKER["setup_error"]
    return _render_shard(args)


def _render_shard(args) -> int:
    """Render one shard into ``shards/NNNNNN`` (atomically) and return its image count."""
    work, cfg_dict, shard = args
    from .render import BUFFERS

    cfg = RenderConfig(**cfg_dict)
    fam, renderer = _WORKER["family"], _WORKER["renderer"]
    lo, hi = shard * cfg.shard_size, min(cfg.n, (shard + 1) * cfg.shard_size)
    bufs = {b.name: [] for b in BUFFERS}
    Ks, poses, factors = [], [], []
    for i in range(lo, hi):
        scene = image_scene(fam, i, cfg.seed, renderer.width, cfg.counterfactual)
        out = renderer.render(scene)
        for name in bufs:
            bufs[name].append(out[name])
        Ks.append(scene.camera.K)
        poses.append(scene.camera.pose)
        factors.append(scene.factors)
    with atomic_folder(Path(work) / SHARDS / f"{shard:06d}") as tmp:
        for b in BUFFERS:
            np.save(tmp / f"{b.name}.npy", np.stack(bufs[b.name]).astype(b.dtype))
        np.save(tmp / "camera_K.npy", np.stack(Ks))
        np.save(tmp / "camera_pose.npy", np.stack(poses))
        (tmp / "factors.json").write_text(dumps([dict(sorted(f.items())) for f in factors], indent=None))
    return hi - lo


def render_dataset(cfg: RenderConfig, out: str | Path, *, workers: int = 0, force: bool = False,
                   progress: bool = True, command: str = "", ray=None) -> Path:
    """Render ``cfg`` into the dataset folder ``out``; returns its path.

    workers: processes (0: one per core, at most one per shard; 1: render in this process).
    ray: a ``frobnolab.scenes.cluster.RayConfig`` to run the shards on Ray actors instead (same bytes out).
    An existing dataset with the same config is left as it is (up to date); a different one is an error unless
    ``force``. An interrupted render into the same ``out`` resumes.
    """
    from tqdm.auto import tqdm

    from .family import load_family
    from .render import BUFFERS

    cfg.check()
    family = load_family(cfg.family)  # validates before anything is written
    if ray is not None:  # so is the cluster: reachable before anything is written
        from .cluster import connect

        connect(ray)
    size = family.default_size if cfg.size is None else cfg.size
    cf = None
    if cfg.counterfactual is not None:
        from .family import check_sweep

        cf = check_sweep(cfg.counterfactual)
    cfg = RenderConfig(**{**asdict(cfg), "size": size, "family": str(family.path), "counterfactual": cf})
    key = {"family_sha256": family.sha256, "n": cfg.n, "size": size, "seed": cfg.seed, "shard_size": cfg.shard_size}
    if cf is not None:  # only then: the keys of ordinary datasets stay as they were
        key["counterfactual"] = cf
        check_counterfactual(family, cfg, size)
    out = Path(out)
    if (out / "manifest.json").exists():
        old = json.loads((out / "manifest.json").read_text())
        if old.get("key") == key and old.get("holdout_every", RenderConfig.holdout_every) == cfg.holdout_every:
            return out
        if not force:
            raise FileExistsError(f"{out}: a different dataset is already there (use --force to replace it)")
        shutil.rmtree(out)
    elif out.exists() and any(out.iterdir()):
        if not force:
            raise FileExistsError(f"{out}: exists and is not a frobnolab dataset (use --force to replace it)")
        shutil.rmtree(out)
    work = out.with_name(out.name + ".partial")
    plan = work / "plan.json"
    if work.exists() and (not plan.exists() or json.loads(plan.read_text()) != key):
        shutil.rmtree(work)  # a partial render of something else: not resumable
    (work / SHARDS).mkdir(parents=True, exist_ok=True)
    write_json(plan, key, indent=None)

    n_shards = -(-cfg.n // cfg.shard_size)
    todo = [s for s in range(n_shards) if not (work / SHARDS / f"{s:06d}").is_dir()]
    done_imgs = cfg.n - sum(min(cfg.n, (s + 1) * cfg.shard_size) - s * cfg.shard_size for s in todo)
    t0 = time.time()
    bar = tqdm(total=cfg.n, initial=done_imgs, unit="img", desc=f"render {family.name}", disable=not progress)
    jobs = [(str(work), asdict(cfg), s) for s in todo]
    workers = min(workers or os.cpu_count() or 1, max(len(todo), 1))
    executor = f"ray ({ray.address})" if ray is not None else f"{workers} local process(es)"
    try:
        if ray is not None:
            from .cluster import run_shards

            def visible(job):
                return (Path(job[0]) / SHARDS / f"{job[2]:06d}").is_dir()

            for count in run_shards(ray, _render_shard, jobs, init=_init_worker, init_args=(str(family.path), size),
                                    check=visible):
                bar.update(count)
        elif workers <= 1:
            _init_worker(str(family.path), size)
            try:
                for job in jobs:
                    bar.update(_render_shard(job))
            finally:
                _WORKER.pop("renderer").close()
        else:
            from concurrent.futures import ProcessPoolExecutor, as_completed
            from concurrent.futures.process import BrokenProcessPool

            # spawn: GL contexts do not survive fork. An executor, not mp.Pool: a worker that dies (killed, out of
            # memory, a crash in the GL driver) breaks the run with an error instead of hanging it.
            with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_init_pool_worker,
                                     initargs=(str(family.path), size)) as pool:
                try:
                    for fut in as_completed([pool.submit(_render_pool_shard, job) for job in jobs]):
                        bar.update(fut.result())
                except BrokenProcessPool:
                    raise RuntimeError(f"a render worker process died (killed, out of memory or crashed); the "
                                       f"finished shards are kept in {work}: run the same render again to resume"
                                       ) from None
                except BaseException:  # Ctrl-C or a shard's error: start no more shards
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise
    finally:
        bar.close()
    _finalize(work, out, cfg, family, key, BUFFERS, command=command, seconds=time.time() - t0, executor=executor)
    return out


def _finalize(work: Path, out: Path, cfg: RenderConfig, family, key: dict, buffers, command: str, seconds: float,
              executor: str = ""):
    sweep_temporaries(work / SHARDS)  # what a worker killed mid-write left behind
    shards = sorted(p for p in (work / SHARDS).iterdir() if p.is_dir() and not p.name.startswith("."))
    factor_rows: list[dict] = []
    for s in shards:
        factor_rows += json.loads((s / "factors.json").read_text())
    names = sorted({k for row in factor_rows for k in row})
    factors = np.array([[row.get(k, np.nan) for k in names] for row in factor_rows], dtype=np.float64)
    np.save(work / "factors.npy", factors.reshape(len(factor_rows), len(names)))
    for name in ("camera_K", "camera_pose"):
        np.save(work / f"{name}.npy", np.concatenate([np.load(s / f"{name}.npy") for s in shards]))
    (work / "family.yaml").write_text(family.source, encoding="utf-8")
    from .preview import contact_sheet

    first_shard = {b.name: np.load(shards[0] / f"{b.name}.npy", mmap_mode="r") for b in buffers}
    k = min(6, len(first_shard[buffers[0].name]))
    contact_sheet([{name: a[i] for name, a in first_shard.items()} for i in range(k)], work / "preview.png")

    hashes = {}
    for b in [x.name for x in buffers] + ["camera_K", "camera_pose"]:
        h = hashlib.sha256()
        for s in shards:
            h.update(_sha256(s / f"{b}.npy").encode())
        hashes[b] = h.hexdigest()
    hashes["factors"] = _sha256(work / "factors.npy")
    first = np.load(shards[0] / f"{buffers[0].name}.npy", mmap_mode="r")
    h, w = first.shape[1:3]
    manifest = {
        "format": FORMAT,
        "key": key,
        "family": {"name": family.name, "file": "family.yaml", "sha256": family.sha256, "source": str(family.path)},
        "n": cfg.n, "height": int(h), "width": int(w), "seed": cfg.seed, "shard_size": cfg.shard_size,
        "holdout_every": cfg.holdout_every,
        "shards": [s.name for s in shards],
        "buffers": [{"name": b.name, "dtype": b.dtype,
                     "shape": ["N", int(h), int(w)] + ([b.channels] if b.channels else []),
                     "units": b.units, "meaning": b.meaning} for b in buffers],
        "per_image": {"camera_K": "(N, 3, 3) intrinsics, pixel centres at +0.5",
                      "camera_pose": "(N, 4, 4) camera-to-world, OpenGL convention (looks down -z, +y up)",
                      "factors": "(N, F) scene factors; NaN where an image lacks one"},
        "factor_names": names,
        "versions": versions(),
        "sha256": hashes,
    }
    if cfg.counterfactual is not None:
        cf = cfg.counterfactual
        from .family import sweep_rungs

        rungs = sweep_rungs(cf)
        manifest["counterfactual"] = {"factor": cf["factor"], "values": cf["values"], "deltas": cf["deltas"],
                                      "bases": cfg.n // rungs, "rungs": rungs}
    manifest["dataset_sha256"] = hashlib.sha256(json.dumps(hashes, sort_keys=True).encode()).hexdigest()
    write_json(work / "manifest.json", manifest)
    write_json(work / "provenance.json", {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": socket.gethostname(), "command": command,
        "render_seconds": round(seconds, 3), "executor": executor, "argv": sys.argv})
    (work / "plan.json").unlink()
    os.replace(work, out)


# ------------------------------------------------------------------------------------------------------------ reading

SPLITS = ("train", "test", "all")


def is_held_out(images, every: int) -> np.ndarray:
    """Whether each image index is held out (a test image): ``i % every == every - 1``. The one split rule: it does
    not depend on the number of images, so every stage (training, extraction, scoring) agrees on it."""
    return np.asarray(images) % every == every - 1


def split_indices(n: int, part: str, every: int = RenderConfig.holdout_every) -> np.ndarray:
    """Image indices of ``part`` ("train", "test" or "all") of an n-image dataset split by :func:`is_held_out`."""
    if part not in SPLITS:
        raise ValueError(f"split must be 'train', 'test' or 'all', got {part!r}")
    idx = np.arange(n)
    if part == "all":
        return idx
    test = is_held_out(idx, every)
    return idx[test] if part == "test" else idx[~test]


class OpenMaps:
    """``.npy`` files memory-mapped on demand, at most ``keep`` open at once (the least recently used closed first).

    Every page read through an open mapping counts in the process's resident memory until the mapping closes, so
    keeping every shard a pass has read open made a pass over a store grow with the store (5 GiB of the 20.3 GiB
    peak when scoring 10M tokens); a few open at a time keep repeated reads of one shard cheap."""

    def __init__(self, keep: int = 4):
        from collections import OrderedDict

        self.keep, self._open = keep, OrderedDict()

    def get(self, key, path: Path, check=None) -> np.ndarray:
        """The mapping of ``path`` (``check(array)`` is called when it is opened, to refuse a wrong file)."""
        a = self._open.pop(key, None)
        if a is None:
            a = np.load(path, mmap_mode="r")
            if check is not None:
                check(a)
        self._open[key] = a
        while len(self._open) > self.keep:
            self._open.popitem(last=False)
        return a

    def __len__(self):
        return len(self._open)


class ChunkedArray:
    """One buffer of a dataset: shards memory-mapped lazily (a few at a time, :class:`OpenMaps`), indexed along the
    first axis like an array."""

    def __init__(self, files: list[Path], counts: list[int], dtype, tail_shape: tuple):
        self._files, self._maps = files, OpenMaps()
        self._starts = np.concatenate([[0], np.cumsum(counts)])
        self.dtype, self.shape = np.dtype(dtype), (int(self._starts[-1]),) + tuple(tail_shape)

    def __len__(self):
        return self.shape[0]

    def _shard(self, k: int) -> np.ndarray:
        return self._maps.get(k, self._files[k])

    def __getitem__(self, index):
        first, rest = (index[0], index[1:]) if isinstance(index, tuple) else (index, ())
        if isinstance(first, (int, np.integer)):
            i = int(first) + (len(self) if first < 0 else 0)
            if not 0 <= i < len(self):
                raise IndexError(f"index {first} out of range for {len(self)} images")
            k = int(np.searchsorted(self._starts, i, side="right") - 1)
            return np.asarray(self._shard(k)[(i - self._starts[k],) + rest])
        idx = np.arange(len(self))[first]
        if len(idx) == 0:
            return np.empty((0,) + self.shape[1:], self.dtype)[(slice(None),) + rest]
        shard = np.searchsorted(self._starts, idx, side="right") - 1
        parts = []
        # Consecutive indices within one shard are read as one slice.
        breaks = np.flatnonzero((np.diff(shard) != 0) | (np.diff(idx) != 1)) + 1
        for run in np.split(np.arange(len(idx)), breaks):
            k, a = shard[run[0]], idx[run[0]] - self._starts[shard[run[0]]]
            parts.append(self._shard(k)[(slice(a, a + len(run)),) + rest])
        return np.concatenate(parts)

    def __array__(self, dtype=None, copy=None):
        a = self[:]
        return a if dtype is None else a.astype(dtype)


class Dataset:
    """A rendered dataset folder. ``ds["depth"][10:20]`` reads ten depth maps without loading the rest."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        mf = self.path / "manifest.json"
        if not mf.exists():
            raise FileNotFoundError(f"{self.path}: not a frobnolab dataset (no manifest.json)")
        self.manifest = json.loads(mf.read_text())
        if self.manifest.get("format") != FORMAT:
            raise ValueError(f"{mf}: format {self.manifest.get('format')!r}, expected {FORMAT!r}")
        shard_dirs = [self.path / SHARDS / s for s in self.manifest["shards"]]
        n, ss = self.manifest["n"], self.manifest["shard_size"]
        counts = [min(n, (i + 1) * ss) - i * ss for i in range(len(shard_dirs))]
        self._arrays = {b["name"]: ChunkedArray([d / f"{b['name']}.npy" for d in shard_dirs], counts, b["dtype"],
                                                tuple(b["shape"][1:])) for b in self.manifest["buffers"]}
        self.camera_K = np.load(self.path / "camera_K.npy")
        self.camera_pose = np.load(self.path / "camera_pose.npy")
        self.factors = np.load(self.path / "factors.npy")
        self.factor_names: list[str] = self.manifest["factor_names"]

    def __len__(self):
        return self.manifest["n"]

    @property
    def buffers(self) -> list[str]:
        return list(self._arrays)

    @property
    def size(self) -> tuple[int, int]:
        return self.manifest["height"], self.manifest["width"]

    def __getitem__(self, name: str) -> ChunkedArray:
        if name not in self._arrays:
            raise unknown("buffer", name, self._arrays, str(self.path))
        return self._arrays[name]

    # -------------------------------------------------------------------------------------------------- split

    @property
    def holdout_every(self) -> int:
        """The split's period (see :attr:`RenderConfig.holdout_every`); datasets written before it was recorded
        used the default."""
        return int(self.manifest.get("holdout_every", RenderConfig.holdout_every))

    @property
    def counterfactual(self) -> dict | None:
        """The manifest's counterfactual entry ``{"factor", "values", "deltas", "bases", "rungs"}``: image
        ``b * rungs + r`` is base scene b at rung r; None for an ordinary dataset."""
        return self.manifest.get("counterfactual")

    def base_of(self, images) -> np.ndarray:
        """The base scene of each image index: ``images // rungs`` in a counterfactual dataset, else the index."""
        images = np.asarray(images)
        cf = self.counterfactual
        return images // cf["rungs"] if cf else images

    def is_held_out(self, images) -> np.ndarray:
        """Whether each of these image indices is a held-out (test) image."""
        return is_held_out(images, self.holdout_every)

    def split(self, part: str) -> np.ndarray:
        """Image indices of ``part``: "train", "test" or "all"."""
        return split_indices(len(self), part, self.holdout_every)

    # -------------------------------------------------------------------------------------------- cameras, scenes

    def rays(self, idx) -> tuple[np.ndarray, np.ndarray]:
        """World rays through every pixel centre of images ``idx`` (indices, a slice or a mask): origins and unit
        directions, each float64 ``(len(idx), H, W, 3)``, from the stored cameras (the maths of
        :meth:`frobnolab.scenes.scene.Camera.pixel_rays`, :func:`frobnolab.scenes.scene.pixel_rays`)."""
        from .scene import pixel_rays

        idx = np.atleast_1d(np.arange(len(self))[idx])
        return pixel_rays(self.camera_K[idx], self.camera_pose[idx], *self.size)

    def varying_factors(self) -> list[str]:
        """Names of the scene factors (not the camera's) that are not one constant over the dataset."""
        return [n for j, n in enumerate(self.factor_names)
                if not n.startswith("camera") and not np.nanstd(self.factors[:, j]) == 0]

    def single_scene(self) -> bool:
        """Whether every image shows the same scene (only the camera's factors vary)."""
        return not self.varying_factors()

    def image(self, i: int) -> dict[str, np.ndarray]:
        """Every buffer of image ``i``."""
        return {name: arr[i] for name, arr in self._arrays.items()}

    def family(self):
        """The scene family this dataset was rendered from (its stored text), to rebuild scene i exactly."""
        from .family import load_family

        # The original file first: its relative mesh and texture paths resolve next to it.
        src = Path(self.manifest["family"].get("source", ""))
        if src.is_file():
            fam = load_family(src)
            if fam.sha256 == self.manifest["family"]["sha256"]:
                return fam
        return load_family(self.path / "family.yaml")

    def scene(self, i: int):
        """Scene ``i`` rebuilt from the stored family and seed (and counterfactual rung): exact point and ray
        queries for that image."""
        cf = self.counterfactual
        sweep = None if cf is None else {k: cf[k] for k in ("factor", "values", "deltas")}
        return image_scene(self.family(), i, self.manifest["seed"], self.manifest["width"], sweep)
