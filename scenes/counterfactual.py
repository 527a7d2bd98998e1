"""Counterfactual datasets: the same scenes re-rendered with exactly one factor changed.

A counterfactual dataset is an ordinary dataset (``scenes/dataset.py``: same files, read by :class:`Dataset` and every
stage) of B base scenes x R rungs: image ``b * R + r`` is scene ``b`` of the family with the dataset's seed (what an
ordinary render of that seed gives as image b) with one factor, a field path such as ``object0.size``,
``object0.material.color.hsv[0]``, ``lights[0].intensity`` or ``shadows``, set to ``values[r]`` or moved by
``deltas[r]`` from its drawn value. Every value is drawn as without the change (``Family.sample(overrides=)``), so
everything else in the scene is the same, and every buffer the factor cannot reach is byte-identical across rungs.

The manifest's ``counterfactual`` entry records ``{factor, values, deltas, bases, rungs}``; ``factors.npy`` holds each
rung's actual value in the factor's column. Every base is sampled at every rung (no rendering) before anything is
written, so an impossible value (a hue past 360, a size <= 0) fails with one line naming the base, field and value.
"""

from __future__ import annotations

import re
from pathlib import Path

from .dataset import RenderConfig, check_counterfactual, render_dataset
from .family import check_sweep, load_family, sweep_rungs


def slug(factor: str) -> str:
    """A folder name for a factor: ``object0.material.color.hsv[0]`` -> ``object0.material.color.hsv_0``."""
    return re.sub(r"[^A-Za-z0-9.]+", "_", factor).strip("_")


def render_counterfactual(family: str | Path, factor: str, *, values=None, deltas=None, n: int, seed: int = 0,
                          size: int | None = None, out: str | Path, workers: int = 0, progress: bool = True,
                          force: bool = False, command: str = "") -> Path:
    """Render ``n`` base scenes of ``family`` (seed ``seed``), each at every rung of ``factor``, into the dataset
    ``out`` (n * rungs images); returns its path. Give exactly one of ``values`` (rung r sets the factor to
    values[r]) or ``deltas`` (rung r adds deltas[r] to the base's drawn value). Bad names and values are a
    ValueError before anything is written; an up-to-date dataset at ``out`` is left as it is."""
    sweep = check_sweep({"factor": factor, "values": None if values is None else list(values),
                         "deltas": None if deltas is None else list(deltas)})
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n (base scenes) must be an integer >= 1, got {n!r}")
    cfg = RenderConfig(str(family), n=n * sweep_rungs(sweep), size=size, seed=seed, counterfactual=sweep)
    return render_dataset(cfg, out, workers=workers, force=force, progress=progress, command=command)


def render_sweeps(family: str | Path, n: int, seed: int, size: int | None, out_root: str | Path, *, workers: int = 0,
                  progress: bool = True, force: bool = False, command: str = "") -> dict[str, Path]:
    """Every sweep the family lists (``counterfactuals:``), each into ``out_root/<slug of its factor>/``:
    ``{factor: dataset path}``. Every sweep's values are checked on every base before the first is rendered."""
    fam = load_family(family)
    if not fam.sweeps:
        raise ValueError(f"family {fam.name} ({fam.path}) lists no counterfactuals: give --factor and --values or "
                         "--deltas, or add a `counterfactuals:` list to the family file")
    factors = [s["factor"] for s in fam.sweeps]
    if len(set(map(slug, factors))) != len(factors):
        raise ValueError(f"family {fam.name}: two sweeps share a folder name (factors {factors}); list each factor "
                         "once")
    for sweep in fam.sweeps:  # before anything is written: the checks render_dataset makes for each, for all
        cfg = RenderConfig(str(fam.path), n=n * sweep_rungs(sweep), size=size, seed=seed, counterfactual=sweep)
        cfg.check()
        check_counterfactual(fam, cfg, fam.default_size if size is None else size)
    root = Path(out_root)
    return {s["factor"]: render_counterfactual(fam.path, s["factor"], values=s["values"], deltas=s["deltas"], n=n,
                                               seed=seed, size=size, out=root / slug(s["factor"]), workers=workers,
                                               progress=progress, force=force, command=command)
            for s in fam.sweeps}

