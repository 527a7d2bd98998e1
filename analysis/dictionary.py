"""Dictionary-level scores: how the SAE as a whole relates to the ground truth.

- MCC: Hungarian matching of features to ground-truth columns by |Pearson correlation| over held-out tokens;
  the mean matched |correlation| (and the same for the random-direction nulls' best correlations, as a floor);
- per-concept coverage: for every concept, the feature with the highest cross-validated eta^2 and that eta^2;
- DCI (disentanglement, completeness, informativeness; Eastwood & Williams 2018) and MIG (mutual information gap;
  Chen et al. 2018) between the per-image mean feature activations and the per-image scene factors;
- stability: with a second SAE (another seed), features matched by activation correlation (Hungarian); the mean
  matched correlation.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment


def mcc(corr_FG: np.ndarray) -> float:
    c = np.abs(np.nan_to_num(corr_FG))
    if c.size == 0:
        return float("nan")
    r, k = linear_sum_assignment(-c)
    return float(c[r, k].mean())


def coverage(single_r2: dict[str, list], alive: np.ndarray) -> dict:
    out = {}
    for name, r2 in single_r2.items():
        r2 = np.where(alive, np.nan_to_num(np.asarray(r2, float), nan=-1), -1)
        j = int(r2.argmax())
        out[name] = {"feature": j, "r2": float(r2[j])}
    return out


def _discretize(x: np.ndarray, bins: int = 10) -> np.ndarray:
    edges = np.unique(np.quantile(x, np.linspace(0, 1, bins + 1)[1:-1]))
    return np.searchsorted(edges, x, side="right")


def _mutual_info(a: np.ndarray, b: np.ndarray) -> float:
    joint = np.zeros((a.max() + 1, b.max() + 1))
    np.add.at(joint, (a, b), 1)
    p = joint / joint.sum()
    pa, pb = p.sum(1, keepdims=True), p.sum(0, keepdims=True)
    nz = p > 0
    return float((p[nz] * np.log(p[nz] / (pa @ pb)[nz])).sum())


def _mutual_info_all(codes_IF: np.ndarray, b: np.ndarray) -> np.ndarray:
    """:func:`_mutual_info` of every column of the discretised codes with ``b``, at once ``(F,)``: one joint
    histogram per column (a bincount), the same cells and terms (summed in another order)."""
    n, F = codes_IF.shape
    A, B = int(codes_IF.max()) + 1, int(b.max()) + 1
    idx = (np.arange(F)[None] * A + codes_IF) * B + b[:, None]
    p = np.bincount(idx.ravel(), minlength=F * A * B).reshape(F, A, B) / n
    pa, pb = p.sum(2, keepdims=True), p.sum(1, keepdims=True)
    nz = p > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(nz, p * np.log(np.where(nz, p, 1) / np.where(nz, pa * pb, 1)), 0.0)
    return terms.reshape(F, -1).sum(1)


def mig(codes_IF: np.ndarray, factors_IK: np.ndarray) -> float:
    """Mean over factors of (top-2 gap in MI between a feature and the factor) / H(factor)."""
    if codes_IF.shape[1] < 2 or len(codes_IF) < 4:
        return float("nan")
    c = np.stack([_discretize(x) for x in codes_IF.T], 1)
    gaps = []
    for k in range(factors_IK.shape[1]):
        fk = _discretize(factors_IK[:, k])
        h = _mutual_info(fk, fk)
        if h <= 0:
            continue
        mi = np.sort(_mutual_info_all(c, fk))[::-1]
        gaps.append((mi[0] - mi[1]) / h)
    return float(np.mean(gaps)) if gaps else float("nan")


DCI_LAMBDAS = (1e-3, 1e-2, 1e-1, 1.0)
"""Ridge penalties per image tried for DCI; the one with the best inner held-out R^2 is used."""


def _ridge(x, y, lam):
    """Ridge coefficients ``(x^T x + lam I)^-1 x^T y``; with fewer rows than columns (codes of thousands of features
    on hundreds of images) in the equal dual form ``x^T (x x^T + lam I)^-1 y``, an n x n solve instead of F x F."""
    if x.shape[0] < x.shape[1]:
        return x.T @ np.linalg.solve(x @ x.T + lam * np.eye(x.shape[0]), y)
    return np.linalg.solve(x.T @ x + lam * np.eye(x.shape[1]), x.T @ y)


def _held_out_r2(y, pred):
    return 1 - ((y - pred) ** 2).sum(0) / np.maximum(((y - y.mean(0)) ** 2).sum(0), 1e-12)


def dci(codes_IF: np.ndarray, factors_IK: np.ndarray) -> dict:
    """DCI with importances |coefficients| of per-factor ridge regressions on standardised codes, informativeness
    the mean held-out R^2 (trained on the even images, tested on the odd ones). The ridge penalty (per image, from
    ``DCI_LAMBDAS``) is chosen by an inner split of the training images only (``ridge_lambda_per_image``)."""
    if len(codes_IF) < 6:
        return {"disentanglement": float("nan"), "completeness": float("nan"), "informativeness": float("nan"),
                "ridge_lambda_per_image": float("nan")}
    x = (codes_IF - codes_IF.mean(0)) / np.maximum(codes_IF.std(0), 1e-9)
    y = (factors_IK - factors_IK.mean(0)) / np.maximum(factors_IK.std(0), 1e-9)
    tr, te = np.arange(len(x)) % 2 == 0, np.arange(len(x)) % 2 == 1
    xt, yt = x[tr], y[tr]
    fit, val = np.arange(len(xt)) % 2 == 0, np.arange(len(xt)) % 2 == 1
    inner = [np.clip(_held_out_r2(yt[val], xt[val] @ _ridge(xt[fit], yt[fit], lam * len(x))), -1, 1).mean()
             for lam in DCI_LAMBDAS]
    lam = DCI_LAMBDAS[int(np.argmax(inner))]
    W = _ridge(xt, yt, lam * len(x))  # (F, K)
    r2 = _held_out_r2(y[te], x[te] @ W)
    imp = np.abs(W) + 1e-12
    k = imp.shape[1]
    p_code = imp / imp.sum(1, keepdims=True)
    dis = 1 + (p_code * np.log(p_code)).sum(1) / np.log(max(k, 2))
    rho = imp.sum(1) / imp.sum()
    p_fac = imp / imp.sum(0, keepdims=True)
    comp = 1 + (p_fac * np.log(p_fac)).sum(0) / np.log(max(imp.shape[0], 2))
    return {"disentanglement": float((rho * dis).sum()), "completeness": float(comp.mean()),
            "informativeness": float(np.clip(r2, -1, 1).mean()), "ridge_lambda_per_image": lam}


def stability(sae_a, sae_b, acts: np.ndarray) -> float:
    """Mean matched activation correlation between two SAEs on the same tokens (Hungarian matching)."""
    import torch

    with torch.no_grad():
        fa = sae_a.encode(torch.from_numpy(acts)).numpy()
        fb = sae_b.encode(torch.from_numpy(acts)).numpy()
    fa, fb = fa[:, fa.std(0) > 0], fb[:, fb.std(0) > 0]
    if not fa.size or not fb.size:
        return float("nan")
    za = (fa - fa.mean(0)) / fa.std(0)
    zb = (fb - fb.mean(0)) / fb.std(0)
    c = np.abs(za.T @ zb / len(acts))
    r, k = linear_sum_assignment(-c)
    return float(c[r, k].mean())


def dictionary_scores(scores, store, hook: str, sae, other_sae=None) -> dict:
    """MCC, coverage, MIG, DCI (and stability with ``other_sae``) of a scored SAE (``scores``: a
    :class:`~frobnolab.analysis.score.Scores`)."""
    table, summary = scores.table, scores.summary
    alive = np.asarray(table["freq"]) > 0
    out = {"mcc": mcc(scores.corr[alive]) if alive.any() else float("nan"),
           "coverage": coverage(summary["single_r2"], alive)}
    ds = store.dataset
    img_sum = scores.image_sums
    images = np.array(sorted(img_sum))
    tokens = store[hook]
    counts = np.bincount(np.asarray(tokens.where)[:, 0], minlength=len(ds))
    codes = np.stack([img_sum[i][: len(alive)] for i in images]) / np.maximum(counts[images], 1)[:, None]
    codes = codes[:, alive]
    fac = ds.factors[images]
    keep = np.isfinite(fac).all(0) & (fac.std(0) > 0)
    names = [n for n, k in zip(ds.factor_names, keep) if k]
    out["factors"] = names
    out["mig"] = mig(codes, fac[:, keep]) if keep.any() else float("nan")
    out["dci"] = dci(codes, fac[:, keep]) if keep.any() else {}
    if other_sae is not None:
        out["stability"] = stability(sae, other_sae, tokens.activations("test", max_tokens=50_000))
    return out
