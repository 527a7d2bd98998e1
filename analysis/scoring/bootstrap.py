"""Bootstrap intervals of the frobnoloid score over resampled held-out images.

Each resample reweights the scoring sample's tokens by their image's multiplicity and recomputes the named matches
(single, each fold's chosen pair scored on the other fold, and the description's R^2 of its fixed cross-fitted predictions), the scene R^2 of the fixed out-of-fold predictions (per fold, averaged, as the point
estimate; the predictors are NOT refitted, so the interval leaves out the predictors' own variance) and the causal
effect over the resampled probe images, then applies the same :func:`~.frobnoloid.frobnoloid` as the point
estimate. With every image weighted once, :meth:`Bootstrap.statistic` gives the point estimate again (up to float
rounding) whenever the scoring sample holds every held-out token.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp

from .frobnoloid import frobnoloid
from .scene import r2
from .stats import BinnedStats


class Bootstrap:
    def __init__(self, sample, predictors, top, variables, pair_best, causal, causal_null95, ridge_r2, scene_floor,
                 descriptions=None):
        """``pair_best``: ``(F, 2)`` one pair per feature, or ``(2, F, 2)`` the pair each fold chose
        (``NamedResult.pair_fold``); ``descriptions``: the features' :class:`~.describe.Descriptions` (their cross-fitted predictions of the
        sample are reweighted like the MLP's, and count as named)."""
        self.top, self.variables, self.pair_best, self.causal = top, variables, pair_best, causal
        self.causal_null95, self.ridge_r2, self.scene_floor, self.predictors = causal_null95, ridge_r2, scene_floor, \
            predictors
        parts = [sample.arrays(k) for k in (0, 1)]
        g = np.concatenate([p[0] for p in parts])
        self.f = sp.vstack([p[1][:, top] for p in parts]).toarray()
        im = np.concatenate([p[2] for p in parts])
        self.fold = np.concatenate([np.full(len(p[0]), k) for k, p in enumerate(parts)])
        if predictors:
            self.pred = np.concatenate([(predictors[k].held_out if hasattr(predictors[k], "held_out")
                                         else predictors[k](parts[k][0]))[:, top] for k in (0, 1)])
        self.desc = None
        if descriptions is not None:  # cross-fitted: fold k predicted with the values fitted on the other fold
            self.desc = np.zeros_like(self.f)
            at = 0
            for k, p in enumerate(parts):
                g_k = np.nan_to_num(p[0]).astype(np.float64)
                for t, j in enumerate(top):
                    fm = descriptions.formulas[j]
                    if fm is not None:
                        self.desc[at:at + len(g_k), t] = fm.predict(g_k, 1 - k)
                at += len(g_k)
            self.has_desc = np.array([descriptions.formulas[j] is not None for j in top])
        self.images = np.unique(im)
        self.pos = np.searchsorted(self.images, im)
        self.named = [k for k, v in enumerate(variables) if v.named]
        self.bins_named = np.stack([variables[k].bins(g) for k in self.named])
        self.coarse = np.stack([v.bins(g, coarse=True) for v in variables])
        self.C = max(v.n_coarse for v in variables)

    def statistic(self, wimg: np.ndarray) -> np.ndarray:
        """frob of the features ``top`` with image weights ``wimg`` (one per image of the sample)."""
        top, f, fold, C = self.top, self.f, self.fold, self.C
        w = wimg[self.pos]
        st = BinnedStats(len(self.named), max(self.variables[k].n_bins for k in self.named), len(top))
        st.add(f, self.bins_named, fold, w)
        r = st.r2_cv()
        single = np.nanmax(np.where(np.isnan(r), -np.inf, r), 0)
        pair = np.full(len(top), -np.inf)
        for t, j in enumerate(top):  # each fold's pair scored on the other fold, as the point estimate
            pairs = self.pair_best[:, j] if self.pair_best.ndim == 3 else np.stack([self.pair_best[j]] * 2)
            ps = BinnedStats(2, C * C, 1)
            ps.add(f[:, t:t + 1], np.stack([self.coarse[min(pq)] * C + self.coarse[max(pq)] for pq in pairs]),
                   fold, w)
            d = ps.r2_directed()[[0, 1], [0, 1], 0]
            pair[t] = np.nanmean(d) if np.isfinite(d).any() else -np.inf
        scene = self.ridge_r2[top]
        if self.predictors:
            per_fold = np.stack([r2(f[fold == k], self.pred[fold == k], w[fold == k]) for k in (0, 1)])
            with warnings.catch_warnings():  # "mean of empty slice" where both folds are undefined
                warnings.simplefilter("ignore", RuntimeWarning)
                mlp = np.nanmean(per_fold, 0)
            scene = np.where(np.isfinite(mlp), mlp, scene)  # as the point estimate: the MLP's, the ridge's where none
        named = np.maximum(single, pair)
        if self.desc is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                d = np.nanmean(np.stack([r2(f[fold == k], self.desc[fold == k], w[fold == k]) for k in (0, 1)]), 0)
            named = np.where(self.has_desc, np.fmax(named, d), named)
        eff = np.array([self.causal.resampled(int(j), self.images, wimg) for j in top])
        return frobnoloid(scene, named, eff, self.causal_null95, self.scene_floor).frob

    def intervals(self, n: int, rng: np.random.Generator):
        """(5th, 95th percentile) of frob over ``n`` resamples of the images."""
        k = len(self.images)
        frobs = np.stack([self.statistic(np.bincount(rng.integers(k, size=k), minlength=k).astype(float))
                          for _ in range(n)])
        return np.quantile(frobs, 0.05, 0), np.quantile(frobs, 0.95, 0)
