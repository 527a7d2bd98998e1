"""The supervised ceiling: how much of each concept a layer holds at all, whatever dictionary reads it.

A kernel ridge regression (random Fourier features, ``stats.RidgeStats`` with the roles swapped: the layer's
activations in, every ground-truth column out) from the activation at a held-out token to each concept's value
there, cross-validated by image fold with its penalty chosen inside the fitting fold. A concept's ceiling is the
mean R^2 of its columns. A dictionary's best feature for a concept (its coverage) can reach this only if one
feature carries all of what the layer knows of it; a concept with a low ceiling is one the layer does not encode,
and no dictionary should be blamed for missing it.
"""

from __future__ import annotations

import numpy as np

from ..variables import build_variables
from .engine import folds, halves
from .stats import RidgeStats


def probe_ceiling(tokens, concepts: list[dict], *, max_tokens: int = 0, chunk: int = 8192, dim: int = 384,
                  seed: int = 0) -> dict[str, float]:
    """{concept: cross-validated R^2 of its columns from the layer} over the held-out tokens of ``tokens``
    (a :class:`~frobnolab.analysis.tokens.Tokens`); ``concepts``: the store manifest's."""
    images = tokens.images("test")
    fold_of, half_of = folds(images), halves(images)
    rs, variables = None, None
    for c in tokens.chunks("test", size=chunk, max_tokens=max_tokens):
        acts = np.asarray(c.acts, np.float64)
        gt = np.nan_to_num(np.asarray(c.gt, np.float64))
        if rs is None:  # the first chunk sets the activations' standardisation and the concepts' columns
            rs = RidgeStats(acts.mean(0), acts.std(0), gt.shape[1], dim=dim, seed=seed)
            variables = build_variables(concepts, tokens.columns, gt)
        img = np.asarray(c.where)[:, 0]
        rs.add(gt, acts, fold_of[img], half_N=half_of[img])
    if rs is None:
        raise ValueError(f"hook {tokens.name}: no held-out tokens to fit the probe ceiling on")
    r2, _ = rs.r2_cv()
    return {v.name: float(np.nanmean(r2[v.cols])) if np.isfinite(r2[v.cols]).any() else float("nan")
            for v in variables}
