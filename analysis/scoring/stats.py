"""Streaming sufficient statistics for feature scores: everything is accumulated chunk by chunk over the tokens, so
scoring never holds the store (or the dense feature matrix) in memory.

Cross-validation is by image: each held-out image falls in fold 0 or 1; a score fitted on one fold is evaluated on
the other and the two directions are averaged.

- :class:`BinnedStats`: per (fold, variable, bin) counts and per-feature sums of f and f^2, from which the
  cross-validated correlation ratio (eta^2, a nonlinear R^2 of "feature from one discretised concept") follows.
- :class:`DetectionStats`: histograms of each feature's activation for positives and negatives of binary targets:
  AUROC and best-threshold F1.
- :class:`RidgeStats`: random-Fourier-feature ridge regression of every feature from all the ground truth at the
  token (a kernel regression), with its cross-validated R^2 computed from fold sums alone.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def as_csr(f) -> sp.csr_matrix:
    return f if sp.issparse(f) else sp.csr_matrix(np.asarray(f, dtype=np.float64))


class BinnedStats:
    """Sums of features per (fold, variable, bin): ``count (2, V, B)``, ``s1`` and ``s2 (2, V, B, F)``."""

    def __init__(self, n_vars: int, n_bins: int, n_features: int):
        self.V, self.B, self.F = n_vars, n_bins, n_features
        self.count = np.zeros((2, n_vars, n_bins))
        self.s1 = np.zeros((2, n_vars, n_bins, n_features))
        self.s2 = np.zeros((2, n_vars, n_bins, n_features))

    def add(self, f, bins_VN: np.ndarray, fold_N: np.ndarray, w_N: np.ndarray | None = None):
        """f: (N, F) features (sparse or dense); bins: (V, N) ints in [0, B); fold: (N,) 0/1; w: token weights."""
        f = as_csr(f).tocoo()
        i, j, v = f.row, f.col, f.data
        w = np.ones(bins_VN.shape[1]) if w_N is None else w_N
        wi = w[i]
        w1, w2 = v * wi, v * v * wi  # the same weights for every variable
        n = 2 * self.B * self.F
        for k in range(self.V):
            cell = fold_N * self.B + bins_VN[k]  # (N,)
            self.count[:, k] += np.bincount(cell, weights=w, minlength=2 * self.B).reshape(2, self.B)
            idx = cell[i] * self.F + j
            self.s1[:, k] += np.bincount(idx, weights=w1, minlength=n).reshape(2, self.B, self.F)
            self.s2[:, k] += np.bincount(idx, weights=w2, minlength=n).reshape(2, self.B, self.F)

    def r2_directed(self) -> np.ndarray:
        """``(2, V, F)``: row a is the R^2 on the other fold of bin means fitted on fold a (a bin empty in fold a
        predicts fold a's overall mean), clipped below at -1; NaN where the feature does not vary in that fold."""
        out = np.full((2, self.V, self.F), np.nan)
        for a, b in ((0, 1), (1, 0)):
            n_a, n_b = self.count[a][..., None], self.count[b][..., None]  # (V, B, 1)
            tot_a = self.s1[a].sum(1, keepdims=True) / np.maximum(n_a.sum(1, keepdims=True), 1e-12)
            mean_a = np.where(n_a > 0, self.s1[a] / np.maximum(n_a, 1e-12), tot_a)  # (V, B, F)
            sse = (self.s2[b] - 2 * mean_a * self.s1[b] + n_b * mean_a**2).sum(1)  # (V, F)
            nb = n_b.sum(1)  # (V, 1)
            sst = self.s2[b].sum(1) - self.s1[b].sum(1) ** 2 / np.maximum(nb, 1e-12)
            ok = sst > 1e-12 * np.maximum(self.s2[b].sum(1), 1e-30)
            out[a] = np.where(ok, np.clip(1 - sse / np.where(ok, sst, 1), -1, 1), np.nan)
        return out

    def r2_cv(self) -> np.ndarray:
        """Cross-validated correlation ratio ``(V, F)``: bin means fitted on one fold, R^2 on the other, averaged
        over the directions where the feature varies (NaN where it varies in neither), clipped below at -1."""
        d = self.r2_directed()
        ok = np.isfinite(d)
        with np.errstate(invalid="ignore"):
            return np.clip(np.where(ok.any(0), np.where(ok, d, 0).sum(0) / np.maximum(ok.sum(0), 1), np.nan), -1, 1)


class DetectionStats:
    """Activation histograms per (target, label, feature): AUROC and best-threshold F1 of "feature fires"."""

    def __init__(self, n_targets: int, n_features: int, scale_F: np.ndarray, n_bins: int = 32):
        self.T, self.F, self.A = n_targets, n_features, n_bins
        self.scale = np.maximum(scale_F, 1e-12)
        self.hist = np.zeros((n_targets, 2, n_features, n_bins))  # bin 0: zero activation
        self.n_label = np.zeros((n_targets, 2))

    def add(self, f, labels_TN: np.ndarray):
        f = as_csr(f).tocoo()
        i, j, v = f.row, f.col, f.data
        a = np.clip((v / self.scale[j] * (self.A - 1)).astype(np.int64) + 1, 1, self.A - 1)
        for t in range(self.T):
            lab = labels_TN[t].astype(np.int64)
            self.n_label[t] += np.bincount(lab, minlength=2)
            idx = (lab[i] * self.F + j) * self.A + a
            self.hist[t] += np.bincount(idx, minlength=2 * self.F * self.A).reshape(2, self.F, self.A)

    def finish(self):
        """AUROC ``(T, F)`` and best-threshold F1 ``(T, F)`` (threshold over activation bins; 0.5 AUROC = chance)."""
        h = self.hist.copy()
        for lab in (0, 1):  # zero activations: the tokens not counted as nonzero
            h[:, lab, :, 0] = self.n_label[:, lab][:, None] - h[:, lab, :, 1:].sum(-1)
        neg, pos = h[:, 0], h[:, 1]  # (T, F, A)
        n_neg, n_pos = neg.sum(-1, keepdims=True), pos.sum(-1, keepdims=True)
        # AUROC = P(score_pos > score_neg) + 0.5 P(tie), from histograms
        cneg = np.cumsum(neg, -1) - neg
        auroc = ((pos * (cneg + 0.5 * neg)).sum(-1)) / np.maximum(n_pos[..., 0] * n_neg[..., 0], 1e-12)
        # F1 for "activation >= bin b" (b >= 1: fires)
        tp = np.cumsum(pos[..., ::-1], -1)[..., ::-1][..., 1:]
        fp = np.cumsum(neg[..., ::-1], -1)[..., ::-1][..., 1:]
        f1 = 2 * tp / np.maximum(2 * tp + fp + (n_pos - tp), 1e-12)
        return auroc, f1.max(-1)


class RidgeStats:
    """Random Fourier features of the standardised ground truth, ``phi (N, D+1)``, and sums ``phi^T phi`` and
    ``phi^T f`` per (fold, half of the fold): the cross-validated R^2 of a kernel ridge regression for every feature,
    each feature's penalty chosen inside the fitting fold (fit on one half, score on the other), so the evaluation
    fold never picks it."""

    def __init__(self, mean_G: np.ndarray, std_G: np.ndarray, n_features: int, dim: int = 384,
                 bandwidth: float = 1.0, seed: int = 0):
        rng = np.random.default_rng(seed)
        g = len(mean_G)
        self.mean, self.std = mean_G, np.maximum(std_G, 1e-6)
        # Bandwidth scaled by sqrt(G): the kernel's length scale grows with the number of inputs.
        self.omega = rng.normal(0, 1.0 / (bandwidth * np.sqrt(g)), size=(g, dim))
        self.beta = rng.uniform(0, 2 * np.pi, size=dim)
        self.D, self.F = dim + 1, n_features
        self.A = np.zeros((2, 2, self.D, self.D))  # (fold, half, D, D)
        self.Bm = np.zeros((2, 2, self.D, n_features))
        self.s2 = np.zeros((2, 2, n_features))
        self.s1 = np.zeros((2, 2, n_features))
        self.n = np.zeros((2, 2))

    def phi(self, gt_NG: np.ndarray) -> np.ndarray:
        z = (np.nan_to_num(gt_NG, nan=0.0) - self.mean) / self.std
        p = np.cos(z @ self.omega + self.beta) * np.sqrt(2.0 / (self.D - 1))
        return np.concatenate([p, np.ones((len(z), 1))], 1)

    def add(self, f, gt_NG: np.ndarray, fold_N: np.ndarray, w_N: np.ndarray | None = None,
            half_N: np.ndarray | None = None):
        """``half_N``: each token's half of its fold (by image; None: all in half 0, so no penalty can be chosen
        inside a fold and the first of the penalties is used)."""
        f = as_csr(f)
        p = self.phi(gt_NG)
        cell = 2 * fold_N + (0 if half_N is None else half_N)
        for k in range(4):
            sel = np.flatnonzero(cell == k)
            if not len(sel):
                continue
            i, h = divmod(k, 2)
            whole = len(sel) == len(p)
            pk = p if whole else p[sel]
            fk = f if whole else f[sel]
            if w_N is None:  # unit weights: phi^T phi as a symmetric rank-k update (numpy's syrk), no weighting
                self.A[i, h] += pk.T @ pk
                fw = fk.astype(np.float64)  # sums in float64, as with weights
                self.n[i, h] += len(sel)
                self.s2[i, h] += np.asarray(fk.multiply(fk).T @ np.ones(len(sel))).ravel()
            else:
                wk = w_N[sel]
                self.A[i, h] += (pk * wk[:, None]).T @ pk
                fw = sp.diags(wk) @ fk
                self.n[i, h] += wk.sum()
                self.s2[i, h] += np.asarray(fk.multiply(fk).T @ wk).ravel()
            self.Bm[i, h] += (fw.T @ pk).T
            self.s1[i, h] += np.asarray(fw.sum(0)).ravel()

    @staticmethod
    def _r2(W, A, Bm, s2, s1, n):
        sse = s2 - 2 * (W * Bm).sum(0) + (W * (A @ W)).sum(0)
        sst = s2 - s1 ** 2 / max(n, 1e-12)
        ok = sst > 1e-12
        return np.where(ok, 1 - sse / np.where(ok, sst, 1), np.nan)

    def _solve(self, A, Bm, lam):
        return np.linalg.solve(A + lam * np.trace(A) / self.D * np.eye(self.D), Bm)  # (D, F)

    def r2_cv(self, lambdas=(1e-4, 1e-3, 1e-2, 1e-1)) -> tuple[np.ndarray, float]:
        """Cross-validated R^2 ``(F,)``: for each direction (fit fold a, evaluate fold b) every feature's penalty
        (relative to the mean eigenvalue) is the one that scores best between the halves of fold a; returns
        (r2, the median chosen penalty)."""
        L = len(lambdas)
        tot, valid, chosen = np.zeros(self.F), np.zeros(self.F), []
        self.chosen = {}  # fitting fold -> (F,) penalties chosen inside it
        for a, b in ((0, 1), (1, 0)):
            inner = np.zeros((L, self.F))
            for h in (0, 1):
                if self.n[a, h] == 0 or self.n[a, 1 - h] == 0:
                    continue
                for li, lam in enumerate(lambdas):
                    W = self._solve(self.A[a, h], self.Bm[a, h], lam)
                    inner[li] += np.nan_to_num(self._r2(W, self.A[a, 1 - h], self.Bm[a, 1 - h], self.s2[a, 1 - h],
                                                        self.s1[a, 1 - h], self.n[a, 1 - h]), nan=-np.inf)
            pick = inner.argmax(0)  # ties (no inner score: every penalty -inf or 0) take the first
            chosen.append(np.asarray(lambdas)[pick])
            self.chosen[a] = chosen[-1]
            A, Bm = self.A[a].sum(0), self.Bm[a].sum(0)
            W = np.zeros((self.D, self.F))
            for li, lam in enumerate(lambdas):
                cols = np.flatnonzero(pick == li)
                if len(cols):
                    W[:, cols] = self._solve(A, Bm[:, cols], lam)
            r = self._r2(W, self.A[b].sum(0), self.Bm[b].sum(0), self.s2[b].sum(0), self.s1[b].sum(0),
                         self.n[b].sum())
            tot += np.nan_to_num(r)
            valid += np.isfinite(r)
        with np.errstate(invalid="ignore"):
            r2 = np.clip(np.where(valid > 0, tot / np.maximum(valid, 1), np.nan), -1, 1)
        return r2, float(np.median(np.concatenate(chosen)))
