"""Activation moments of every feature over the held-out tokens: firing rate, mean, maximum, per-image sums, the
top activations with where they happened, and the sums from which its Pearson correlation with every ground-truth
column follows."""

from __future__ import annotations

import numpy as np

from .engine import Chunk

TOP_K = 32


class Moments:
    def __init__(self, n_features: int, n_columns: int, top_k: int = TOP_K):
        F, G = n_features, n_columns
        self.F, self.k = F, top_k
        self.n_tok, self.s1, self.f_sq, self.nnz, self.mx = 0, np.zeros(F), np.zeros(F), np.zeros(F), np.zeros(F)
        self.fg_sum, self.g_sum, self.g_sq = np.zeros((F, G)), np.zeros(G), np.zeros(G)
        self.img_sum: dict[int, np.ndarray] = {}
        self.top_val = np.full((F, top_k), -np.inf)
        self.top_where = np.full((F, top_k, 3), -1, np.int64)

    def add(self, c: Chunk):
        f, g, w = c.f, c.gt, c.where
        F = self.F
        self.n_tok += len(g)
        self.s1 += np.asarray(f.sum(0)).ravel()
        self.f_sq += np.asarray(f.multiply(f).sum(0)).ravel()
        self.nnz += np.bincount(f.indices, minlength=F)
        self.mx = np.maximum(self.mx, f.max(0).toarray().ravel())
        gg = np.nan_to_num(g)
        self.fg_sum += (f.T @ gg)
        self.g_sum += gg.sum(0)
        self.g_sq += (gg**2).sum(0)
        for im in np.unique(w[:, 0]):
            rows = w[:, 0] == im
            self.img_sum[int(im)] = self.img_sum.get(int(im), 0) + np.asarray(f[rows].sum(0)).ravel()
        self._top(f.tocoo(), w)

    def _top(self, coo, w):
        """Running top activations per feature, from the nonzeros only. A nonzero can enter a feature's list only
        if it beats that list's last value (a tie ranks after the entries already there), so only those
        features' lists are merged again, as they would be in a merge of every list."""
        k = self.k
        beats = coo.data > self.top_val[coo.col, k - 1]
        if not beats.any():
            return
        new_j, new_v, new_w = coo.col[beats], coo.data[beats], w[coo.row[beats]][:, :3]
        touched = np.unique(new_j)
        cand_j = np.concatenate([np.repeat(touched, k), new_j])
        cand_v = np.concatenate([self.top_val[touched].ravel(), new_v])
        cand_w = np.concatenate([self.top_where[touched].reshape(-1, 3), new_w])
        order = np.lexsort((-cand_v, cand_j))
        cand_j, cand_v, cand_w = cand_j[order], cand_v[order], cand_w[order]
        start = np.searchsorted(cand_j, touched)
        rank = np.arange(len(cand_j)) - start[np.searchsorted(touched, cand_j)]
        keep = rank < k
        self.top_val[touched] = -np.inf
        self.top_where[touched] = -1
        self.top_val[cand_j[keep], rank[keep]] = cand_v[keep]
        self.top_where[cand_j[keep], rank[keep]] = cand_w[keep]

    @property
    def freq(self) -> np.ndarray:
        return self.nnz / max(self.n_tok, 1)

    def corr(self, features=slice(None)) -> np.ndarray:
        """Pearson correlation ``(F, G)`` of the features (a slice or index array) with every column."""
        return pearson(self.fg_sum[features], self.s1[features], self.f_sq[features], self.g_sum, self.g_sq,
                       self.n_tok)


def pearson(fg, s1, f_sq, g_sum, g_sq, n):
    """Pearson correlation (F, G) from sums."""
    mf, mg = s1 / max(n, 1), g_sum / max(n, 1)
    cov = fg / max(n, 1) - mf[:, None] * mg[None]
    sf = np.sqrt(np.maximum(f_sq / max(n, 1) - mf**2, 0))
    sg = np.sqrt(np.maximum(g_sq / max(n, 1) - mg**2, 0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((sf[:, None] > 0) & (sg[None] > 0), cov / (sf[:, None] * sg[None]), 0.0)
