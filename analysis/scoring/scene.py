"""Scene-explained R^2: is the feature a function of the scene at all? Every feature predicted from ALL the
ground-truth columns at its token (named or not), cross-validated by image fold: ``scene_r2`` is the R^2 of a small
MLP per feature, trained on one image fold and evaluated on the other (then swapped, the two averaged). One
estimator, not the better of several (a maximum over cross-validated estimates is biased upward); the kernel ridge
regression on random Fourier features (streamed, ``stats.RidgeStats``) is reported beside it as ``ridge_r2`` and
stands in only for a feature no MLP could be fitted for (silent on a fold's sample).

A kernel regression on ~70 ground-truth columns cannot find a function of three of them (its length scale must be
large in high dimension); an MLP learns which columns matter. Each feature has its own MLP
(:class:`PerFeatureMLP`), so its scene R^2 does not depend on which other features are scored (a shared
multi-output MLP's did: a three-way conjunction scored 0.36 beside three units and 0.17 in a full run). They are
trained on a subsample of each fold's tokens (``max_tokens``); their out-of-fold predictions are kept for bootstrap
intervals. Cost: F small MLPs (hidden 32) for ``steps`` steps per fold. ReLU, not GELU: the same recovery of
planted three-way parities on the dev seeds at 2/3 of the step time (exact GELU and its backward were 28% of a
step). Adam's fused kernel: no measurable change beside ReLU (33.5 against 33.6 ms a step, 1,152 features).
"""

from __future__ import annotations

import warnings

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


class PerFeatureMLP(nn.Module):
    """``F`` independent MLPs (``G -> h -> h -> 1``, ReLU), one per feature, run as batched products.

    Independent by construction: every net starts from the same weights (drawn once, so a feature's start does not
    depend on which or how many features are fitted beside it), each loss is its own feature's mean squared error
    (summed over features, so no gradient is scaled by F) and Adam's steps are per parameter. A feature's scene R^2
    therefore does not change when other features are scored beside it (up to float rounding; tested).

    Feature-major layout: the hidden states are ``(F, h, N)``, so the first layer is one GEMM and the others are
    batched products with no permuted copies between them (a token-major ``(N, F, h)`` layout spent more time
    copying and in memory-bound ReLUs than in its products: 2x the time a step at 128 features)."""

    def __init__(self, G: int, F: int, hidden: int, seed: int):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        w1 = torch.randn(G, 1, hidden, generator=g) * (2 / G) ** 0.5
        w2 = torch.randn(1, hidden, hidden, generator=g) * (2 / hidden) ** 0.5
        w3 = torch.randn(1, hidden, generator=g) * (1 / hidden) ** 0.5
        # the same draws as the token-major layout had, transposed: (F*h, G), (F, h_out, h_in), (F, 1, h)
        self.w1 = nn.Parameter(w1.expand(G, F, hidden).reshape(G, F * hidden).t().contiguous())
        self.b1 = nn.Parameter(torch.zeros(F * hidden, 1))
        self.w2 = nn.Parameter(w2.expand(F, hidden, hidden).transpose(1, 2).contiguous())
        self.b2 = nn.Parameter(torch.zeros(F, hidden, 1))
        self.w3 = nn.Parameter(w3.expand(F, hidden).reshape(F, 1, hidden).clone())
        self.b3 = nn.Parameter(torch.zeros(F, 1))
        self.F, self.h = F, hidden

    def hidden_states(self, x_NG: torch.Tensor):
        """Pre-activations ``(F, h, N)`` of both hidden layers."""
        z1 = torch.addmm(self.b1, self.w1, x_NG.t()).view(self.F, self.h, len(x_NG))
        z2 = torch.baddbmm(self.b2, self.w2, torch.relu(z1))
        return z1, z2

    def forward(self, x_NG: torch.Tensor) -> torch.Tensor:  # (N, G) -> (F, N)
        _, z2 = self.hidden_states(x_NG)
        return torch.bmm(self.w3, torch.relu(z2)).squeeze(1) + self.b3


def _fit(gx: np.ndarray, fy: sp.csr_matrix, steps: int, hidden: int, seed: int, device: str,
         fit: np.ndarray | None = None, group: int = 128, batch: int = 256, lr: float = 4e-2):
    """Per-feature MLPs of the scene (:class:`PerFeatureMLP`) fitted on one fold, for the features ``fit`` (bool
    ``(F,)``; None: all; the others predict NaN). Features in groups of ``group``: the groups bound memory, and at
    128 a step's working set stays in cache (the time per feature and step at 512 was 1.2-1.5x that at 128)."""
    qn = QuantileNormal(gx)
    F = fy.shape[1]
    cols = np.flatnonzero(np.ones(F, bool) if fit is None else fit)
    fd = fy[:, cols].toarray().astype(np.float32)
    mu_y, sd_y = fd.mean(0), np.maximum(fd.std(0), 1e-6)
    X = torch.from_numpy(qn(gx)).to(device)
    Y_FN = torch.from_numpy(np.ascontiguousarray(((fd - mu_y) / sd_y).T)).to(device)  # (F, N)
    nets = []
    for lo in range(0, len(cols), group):
        y = Y_FN[lo:lo + group]
        net = PerFeatureMLP(X.shape[1], y.shape[0], hidden, seed).to(device)
        opt = torch.optim.Adam(net.parameters(), lr=lr, fused=True)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps)
        g = torch.Generator().manual_seed(seed)
        for _ in range(steps):
            i = torch.randint(len(X), (min(batch, len(X)),), generator=g)
            loss = ((net(X[i]) - y[:, i]) ** 2).mean(1).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        nets.append(net.eval())
    sal = np.full((F, X.shape[1]), np.nan, np.float32)
    if len(cols):
        at = torch.randperm(len(X), generator=torch.Generator().manual_seed(seed))[:512]
        sal[cols] = torch.cat([_saliency(net, X[at]) for net in nets]).cpu().numpy()

    def predict(gnew: np.ndarray) -> np.ndarray:
        out = np.full((len(gnew), F), np.nan, np.float32)
        if not len(cols):
            return out
        x = torch.from_numpy(qn(gnew)).to(device)
        with torch.no_grad():
            p = torch.cat([torch.cat([net(x[s:s + 8192]) for s in range(0, len(x), 8192)], 1) for net in nets])
        out[:, cols] = p.t().cpu().numpy() * sd_y + mu_y
        return out

    predict.saliency = sal  # (F, G): what each feature's MLP reads (mean |d out / d input| on its fold)
    return predict


def _saliency(net: PerFeatureMLP, x_NG: torch.Tensor) -> torch.Tensor:
    """``(F, G)``: mean over the tokens of |d out_f / d x_g| of each feature's own net, in output standard
    deviations per unit of quantile-normalised input (the nets are independent, so the Jacobian is per feature:
    computed through the layers by hand rather than by F backward passes)."""
    G, F, h = x_NG.shape[1], net.F, net.h
    with torch.no_grad():
        z1, z2 = net.hidden_states(x_NG)  # (F, h, N) each
        d2 = (z2 > 0) * net.w3.transpose(1, 2)  # (F, h, N): ReLU's derivative times the output weights
        d1 = torch.bmm(net.w2.transpose(1, 2), d2) * (z1 > 0)  # (F, h, N)
        return torch.einsum("fhn,fhg->nfg", d1, net.w1.view(F, h, G)).abs().mean(0)


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


def scene_r2_mlp(sample: FoldSample, steps: int = 2000, hidden: int = 32, seed: int = 0, device: str = "cpu",
                 fit: np.ndarray | None = None, batch: int = 256, lr: float = 4e-2):
    """Cross-validated R^2 ``(F,)`` and the predictors {evaluated fold b: predict fitted on the other fold}; each
    predictor's ``held_out`` is its prediction of fold b's sample (the bootstrap reuses it)."""
    if min(sample.n.values()) < 10:
        return None, {}
    out, predictors = [], {}
    for a, b in ((0, 1), (1, 0)):
        ga, fa, _ = sample.arrays(a)
        gb, fb, _ = sample.arrays(b)
        fires = fa.getnnz(0) > 0  # a feature silent on the fold has nothing to fit (dead ones: most of a wide SAE)
        predictors[b] = _fit(ga, fa, steps, hidden, seed, device, fires if fit is None else fires & fit,
                             batch=batch, lr=lr)
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

    def __init__(self, sample_gt: np.ndarray, n_features: int, ridge_dim: int, sample_tokens: int, seed: int,
                 half_of: np.ndarray | None = None):
        """``half_of``: image -> half of its fold (``engine.halves``), where the ridge chooses its penalties."""
        self.ridge = RidgeStats(sample_gt.mean(0), sample_gt.std(0), n_features, dim=ridge_dim, seed=seed)
        self.sample = FoldSample(sample_tokens)
        self.half_of = half_of

    def add(self, c):
        self.ridge.add(c.f, c.gt, c.fold, half_N=None if self.half_of is None else self.half_of[c.where[:, 0]])
        self.sample.add(c.f, c.gt, c.fold, c.where[:, 0])

    def finish(self, steps: int, seed: int, device: str, fit: np.ndarray | None = None, hidden: int = 32,
               batch: int = 256, lr: float = 4e-2):
        """(scene_r2, ridge_r2, chosen ridge penalty, MLP predictors) of every feature; the MLPs only for ``fit``
        (bool ``(F,)``, None: all). ``scene_r2`` is the MLP's where it was fitted, the ridge's elsewhere."""
        ridge_r2, lam = self.ridge.r2_cv()
        mlp_r2, predictors = scene_r2_mlp(self.sample, steps, hidden, seed=seed, device=device, fit=fit, batch=batch,
                                          lr=lr)
        scene = ridge_r2 if mlp_r2 is None else np.where(np.isfinite(mlp_r2), mlp_r2, ridge_r2)
        return scene, ridge_r2, lam, predictors

    @staticmethod
    def saliency(predictors: dict) -> np.ndarray | None:
        """``(F, G)`` what each feature's MLP reads, averaged over the two folds' MLPs (None without MLPs)."""
        sal = [p.saliency for p in predictors.values() if hasattr(p, "saliency")]
        if not sal:
            return None
        with warnings.catch_warnings():  # "mean of empty slice" for a feature fitted on neither fold
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmean(np.stack(sal), 0)
