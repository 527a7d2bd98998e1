"""Scene-explained R^2: is the feature a function of the scene at all? Every feature predicted from ALL the
ground-truth columns at its token (named or not), cross-validated by image fold; ``scene_r2`` is the better of a
kernel ridge regression on random Fourier features (streamed, ``stats.RidgeStats``) and a small multi-output MLP,
trained on one image fold and evaluated on the other (then swapped).

A kernel regression on ~50 ground-truth columns cannot find a function of three of them (its length scale must be
large in high dimension); an MLP learns which columns matter. It is trained on a subsample of each fold's tokens
(``max_tokens``); its out-of-fold predictions are kept for bootstrap intervals.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from .stats import RidgeStats


class FoldSample:
    """Up to ``max_tokens`` tokens per fold: standardised-later ground truth, sparse features, images."""

    def __init__(self, max_tokens: int = 30_000):
        self.max = max_tokens
        self.g = {0: [], 1: []}
        self.f = {0: [], 1: []}
        self.im = {0: [], 1: []}
        self.n = {0: 0, 1: 0}

    def add(self, f: sp.csr_matrix, g: np.ndarray, fold: np.ndarray, images: np.ndarray):
        for k in (0, 1):
            room = self.max - self.n[k]
            if room <= 0:
                continue
            sel = np.flatnonzero(fold == k)[:room]
            if len(sel):
                self.g[k].append(np.nan_to_num(g[sel]).astype(np.float32))
                self.f[k].append(f[sel])
                self.im[k].append(images[sel])
                self.n[k] += len(sel)

    def arrays(self, k: int):
        return np.concatenate(self.g[k]), sp.vstack(self.f[k]).tocsr(), np.concatenate(self.im[k])


class QuantileNormal:
    """Per-column quantile transform to a standard normal, fitted on one fold: puts every ground-truth column on
    the same footing whatever its distribution (depth, fractions, one-hot classes), which is what lets the MLP find
    interactions of three concepts in a few thousand steps (plain standardisation does not)."""

    def __init__(self, x: np.ndarray, n_q: int = 101):
        self.grid = np.linspace(0, 1, n_q)
        self.q = np.quantile(x, self.grid, axis=0).T  # (G, n_q)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        from scipy.stats import norm

        u = np.stack([np.interp(x[:, k], self.q[k], self.grid) for k in range(x.shape[1])], 1)
        return norm.ppf(np.clip(u, 0.005, 0.995)).astype(np.float32)


def _fit(gx: np.ndarray, fy: sp.csr_matrix, steps: int, hidden: int, seed: int, device: str):
    torch.manual_seed(seed)
    qn = QuantileNormal(gx)
    fd = fy.toarray().astype(np.float32)
    mu_y, sd_y = fd.mean(0), np.maximum(fd.std(0), 1e-6)
    X = torch.from_numpy(qn(gx)).to(device)
    Y = torch.from_numpy((fd - mu_y) / sd_y).to(device)
    # A 64-wide last hidden layer: every feature is a nonlinear function of the scene through it, and the output
    # layer (the cost with thousands of features) is 4x cheaper than from the full width.
    net = nn.Sequential(nn.Linear(X.shape[1], hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                        nn.Linear(hidden, 64), nn.GELU(), nn.Linear(64, Y.shape[1])).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=steps)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        i = torch.randint(len(X), (min(512, len(X)),), generator=g)
        loss = ((net(X[i]) - Y[i]) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    net.eval()

    def predict(gnew: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = net(torch.from_numpy(qn(gnew)).to(device)).cpu().numpy()
        return out * sd_y + mu_y

    return predict


def r2(y: np.ndarray, pred: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
    """Per-column R^2 ``(F,)`` of predictions, optionally weighted by token weights."""
    if w is None:  # the common case, in float32 without weight temporaries
        y, pred = np.asarray(y, np.float32), np.asarray(pred, np.float32)
        sst = y.var(0) * len(y)
        sse = ((y - pred) ** 2).sum(0)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.clip(np.where(sst > 1e-12, 1 - sse / np.where(sst > 1e-12, sst, 1), np.nan), -1, 1)
    sw = max(w.sum(), 1e-12)
    mean = (w[:, None] * y).sum(0) / sw
    sst = (w[:, None] * (y - mean) ** 2).sum(0)
    sse = (w[:, None] * (y - pred) ** 2).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.clip(np.where(sst > 1e-12, 1 - sse / np.where(sst > 1e-12, sst, 1), np.nan), -1, 1)


def scene_r2_mlp(sample: FoldSample, steps: int = 1500, hidden: int = 256, seed: int = 0, device: str = "cpu"):
    """Cross-validated R^2 ``(F,)`` and the predictors {evaluated fold b: predict fitted on the other fold}; each
    predictor's ``held_out`` is its prediction of fold b's sample (the bootstrap reuses it)."""
    if min(sample.n.values()) < 10:
        return None, {}
    out, predictors = [], {}
    for a, b in ((0, 1), (1, 0)):
        ga, fa, _ = sample.arrays(a)
        gb, fb, _ = sample.arrays(b)
        predictors[b] = _fit(ga, fa, steps, hidden, seed, device)
        pred = predictors[b](gb)
        predictors[b].held_out = pred  # its predictions of fold b's sample, kept for the bootstrap
        out.append(r2(fb.toarray(), pred))
    stacked = np.stack(out)
    both = np.isfinite(stacked).any(0)
    mean = np.full(stacked.shape[1], np.nan)
    mean[both] = np.nanmean(stacked[:, both], 0)
    return mean, predictors


class SceneExplained:
    """The part: ridge sums over every chunk, a per-fold token sample for the MLP."""

    def __init__(self, sample_gt: np.ndarray, n_features: int, ridge_dim: int, sample_tokens: int, seed: int):
        self.ridge = RidgeStats(sample_gt.mean(0), sample_gt.std(0), n_features, dim=ridge_dim, seed=seed)
        self.sample = FoldSample(sample_tokens)

    def add(self, c):
        self.ridge.add(c.f, c.gt, c.fold)
        self.sample.add(c.f, c.gt, c.fold, c.where[:, 0])

    def finish(self, steps: int, seed: int, device: str):
        """(scene_r2, ridge_r2, chosen ridge penalty, MLP predictors) of every feature."""
        ridge_r2, lam = self.ridge.r2_cv()
        mlp_r2, predictors = scene_r2_mlp(self.sample, steps, seed=seed, device=device)
        scene = ridge_r2 if mlp_r2 is None else np.fmax(ridge_r2, mlp_r2)
        return scene, ridge_r2, lam, predictors
