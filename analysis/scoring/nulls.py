"""Nulls: what a score looks like for features that mean nothing in particular.

- directions: random unit directions in activation space, thresholded so that each fires as often as a randomly
  chosen live feature (matched sparsity); scored as extra feature columns by every part;
- :func:`percentiles`: the 95th percentile of each score over the null features (and of the causal null's effects,
  random decoder directions carrying real features' activation patterns, made by the causal part). A finding must
  beat these. (Random directions in an activation space that encodes the scene are themselves functions of the
  scene, so "real" is a floor on scene_r2, and the null that matters for frobnoloids is the gap of random mixtures,
  which no single name explains either.)
"""

from __future__ import annotations

import numpy as np

from .frobnoloid import gap


def directions(acts_Nd: np.ndarray, freq_F: np.ndarray, n: int, rng: np.random.Generator):
    """``n`` null directions ``U (d, n)``, thresholds ``tau (n,)`` and their projections of the sample."""
    alive = np.flatnonzero(freq_F > 0)
    U = rng.normal(size=(acts_Nd.shape[1], n))
    U /= np.linalg.norm(U, axis=0, keepdims=True)
    proj = acts_Nd @ U
    rates = freq_F[rng.choice(alive, n)] if len(alive) else np.full(n, 0.05)
    tau = np.array([np.quantile(proj[:, r], 1 - rates[r]) for r in range(n)])
    return U, tau, proj


def q95(x) -> float:
    x = np.asarray(x, float)
    x = x[np.isfinite(x)]
    return float(np.quantile(x, 0.95)) if len(x) else float("nan")


def percentiles(null_f: slice, named_best, scene_r2, auroc, causal_null) -> dict:
    """95th percentiles over the null features ``null_f`` of the named match, scene R^2, gap and AUROC, and of
    |effect| of the causal null."""
    return {"named_r2": q95(named_best[null_f]), "scene_r2": q95(scene_r2[null_f]),
            "causal": q95(np.abs(causal_null)) if len(causal_null) else float("nan"),
            "gap": q95(gap(scene_r2[null_f], named_best[null_f])),
            "auroc": q95(auroc[:, null_f].max(0)) if len(auroc) else float("nan")}
