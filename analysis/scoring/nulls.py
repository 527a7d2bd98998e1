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

import warnings

import numpy as np

from .frobnoloid import gap


def directions(acts_Nd: np.ndarray, freq_F: np.ndarray, n: int, rng: np.random.Generator):
    """``n`` null directions ``U (d, n)``, thresholds ``tau (n,)`` and their projections of the sample.

    Firing rates: half are live features' rates (the features' own p-values need nulls there), half log-uniform
    between 1e-3 and 0.9, so that a dictionary scored later against these nulls (a baseline: dense units, PCA)
    finds nulls of its own rates too."""
    alive = np.flatnonzero(freq_F > 0)
    U = rng.normal(size=(acts_Nd.shape[1], n))
    U /= np.linalg.norm(U, axis=0, keepdims=True)
    proj = acts_Nd @ U
    spread = np.exp(rng.uniform(np.log(1e-3), np.log(0.9), n))
    rates = np.where(rng.random(n) < 0.5, freq_F[rng.choice(alive, n)], spread) if len(alive) else spread
    tau = np.array([np.quantile(proj[:, r], 1 - rates[r]) for r in range(n)])
    return U, tau, proj


def q95(x) -> float:
    x = np.asarray(x, float)
    x = x[np.isfinite(x)]
    return float(np.quantile(x, 0.95)) if len(x) else float("nan")


BANK = ("rate", "named_best", "scene_r2", "gap", "auroc")
"""What is kept of every null feature (``null_features.parquet``): its firing rate and its scores."""


def bank(null_f: slice, rate, named_best, scene_r2, auroc) -> dict:
    """The null features ``null_f``'s :data:`BANK` columns."""
    return {"rate": np.asarray(rate[null_f], float), "named_best": np.asarray(named_best[null_f], float),
            "scene_r2": np.asarray(scene_r2[null_f], float), "gap": gap(scene_r2[null_f], named_best[null_f]),
            "auroc": auroc[:, null_f].max(0) if len(auroc) else np.full(null_f.stop - null_f.start, np.nan)}


def percentiles(nulls: dict, causal_null) -> dict:
    """95th percentiles over a null bank (:func:`bank`) of the named match, scene R^2, gap and AUROC, and of
    |effect| of the causal null."""
    return {"named_r2": q95(nulls["named_best"]), "scene_r2": q95(nulls["scene_r2"]),
            "causal": q95(np.abs(causal_null)) if len(causal_null) else float("nan"),
            "gap": q95(nulls["gap"]), "auroc": q95(nulls["auroc"])}


MIN_EXCEED = 10
"""Fewer matched nulls than this reaching a statistic: its p-value from the fitted tail (:func:`tail_p`)."""


def tail_p(stat: float, null_n: np.ndarray, min_exceed: int = MIN_EXCEED, floor: float = 0.1):
    """The p-value of ``stat`` against the null sample ``null_n``, with a fitted tail where the sample is too small.

    Where at least ``min_exceed`` nulls reach the statistic, the empirical ``(1 + M) / (1 + n)``. Beyond that, the
    tail is a generalised Pareto distribution fitted (scipy, maximum likelihood) to the largest nulls over a
    threshold, the method of Knijnenburg et al. 2009 ("Fewer permutations, more accurate P-values"): the threshold
    takes in the top quarter of the nulls and is raised until a Cramer-von Mises test no longer rejects the fit
    (at 0.05) or 25 exceedances remain, where the empirical value is kept. ``p = N_exc / n * sf(stat - t)``.
    Conservative on two counts: a fitted shape below 0 (a bounded tail, whose survival is 0 past its fitted end;
    maximum likelihood biases the shape that way in small samples, and p came out 2.6x too small at a true 1e-3)
    is replaced by the exponential tail (shape 0), whose p is larger; and p is never below ``floor / (1 + n)``, so
    the tail reaches at most one decade past the sample's resolution.
    Fewer than 100 nulls: empirical (too few to fit a tail). Returns ``(p, how)``, ``how`` 0 empirical, 1 fitted
    tail.
    """
    from scipy import stats

    s = np.sort(np.asarray(null_n, float)[np.isfinite(null_n)])[::-1]  # descending
    n = len(s)
    m = int((s >= stat).sum())
    emp = (1 + m) / (1 + n)
    if m >= min_exceed or n < 100:
        return emp, 0
    k = n // 4
    while k >= 25:
        t = 0.5 * (s[k - 1] + s[k])
        y = s[:k] - t
        if np.ptp(y) > 0 and len(np.unique(y)) >= 10:
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                c, _, scale = stats.genpareto.fit(y, floc=0)
                if c < 0:  # a bounded tail: the exponential (c = 0) over it instead, whose p is larger
                    c, scale = 0.0, float(y.mean())
                fit_ok = np.isfinite(c) and scale > 0 and \
                    stats.cramervonmises(y, stats.genpareto.cdf, args=(c, 0, scale)).pvalue > 0.05
            if fit_ok:
                return max(k / n * float(stats.genpareto.sf(stat - t, c, 0, scale)), floor / (1 + n)), 1
        k = int(k * 0.8)
    return emp, 0


def matched_p_values(stat_F, rate_F, null_stat_R, null_rate_R, window: float = 2.0, min_matched: int = 100,
                     tail: bool = False, exclude_self: bool = False):
    """Empirical p-values of ``stat_F`` against the nulls of a matching firing rate, and how many nulls each used.

    A feature's nulls are those whose firing rate is within a factor ``window`` of its own (dense random directions
    have larger gaps than sparse ones, so a pooled null is wrong at both ends), widened to the ``min_matched``
    nearest in log rate where the window holds fewer. ``p = (1 + #{null >= stat}) / (1 + n)``: never 0, and exact
    for a feature exchangeable with its nulls. NaN where the statistic is NaN or no null is finite.

    ``tail``: where fewer than :data:`MIN_EXCEED` matched nulls reach a statistic, :func:`tail_p`'s fitted tail
    instead (a few hundred matched nulls put the empirical p at >= ~1/266, which over hundreds of tests no q-value
    can pass).
    ``exclude_self``: the statistics ARE the nulls (same order); each is tested against the others (the
    leave-one-out calibration of :func:`null_calibration`).
    """
    stat = np.asarray(stat_F, float)
    ok = np.isfinite(np.asarray(null_stat_R, float))
    ns, nr = np.asarray(null_stat_R, float)[ok], np.log(np.maximum(np.asarray(null_rate_R, float)[ok], 1e-12))
    p, n = np.full(len(stat), np.nan), np.zeros(len(stat), int)
    if not len(ns):
        return p, n
    d = np.abs(np.log(np.maximum(np.asarray(rate_F, float), 1e-12))[:, None] - nr[None])  # (F, R)
    if exclude_self:
        d[np.arange(len(stat))[ok], np.arange(len(ns))] = np.inf
    k = min(min_matched, len(ns))
    kth = np.partition(d, k - 1, axis=1)[:, k - 1:k]  # the distance that takes in the k nearest
    sel = d <= np.maximum(np.log(window), kth)
    n = sel.sum(1)
    m = (sel & (ns[None] >= stat[:, None])).sum(1)
    p = (1 + m) / (1 + n)
    if tail:
        for f in np.flatnonzero(np.isfinite(stat) & (m < MIN_EXCEED)):
            p[f] = tail_p(stat[f], ns[sel[f]])[0]
    return np.where(np.isfinite(stat), p, np.nan), n


def null_calibration(null_stat_R, null_rate_R, window: float = 2.0, min_matched: int = 100, tail: bool = True,
                     levels=(0.01, 0.05)) -> dict:
    """How often a null, tested against the other nulls exactly as a feature is, reaches p <= each level: the
    p-values' calibration on this run's own nulls (about the level itself if they are right; well above it, the
    fitted tail is too thin and candidates are too easy)."""
    p, _ = matched_p_values(null_stat_R, null_rate_R, null_stat_R, null_rate_R, window, min_matched, tail,
                            exclude_self=True)
    p = p[np.isfinite(p)]
    return {f"p_le_{lv:g}": float((p <= lv).mean()) if len(p) else float("nan") for lv in levels} | \
        {"nulls": int(len(p))}


def benjamini_hochberg(p) -> np.ndarray:
    """Benjamini-Hochberg q-values of the finite p-values (NaN stays NaN): the smallest false-discovery rate at
    which each test is a discovery, over all the tests given."""
    p = np.asarray(p, float)
    q = np.full(len(p), np.nan)
    idx = np.flatnonzero(np.isfinite(p))
    if not len(idx):
        return q
    order = idx[np.argsort(p[idx], kind="stable")]
    m = len(order)
    adj = p[order] * m / np.arange(1, m + 1)
    q[order] = np.minimum(np.minimum.accumulate(adj[::-1])[::-1], 1.0)
    return q
