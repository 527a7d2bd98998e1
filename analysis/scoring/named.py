"""Named match: how much of a feature one named concept, or a pair of them, explains.

- singles: the cross-validated correlation ratio eta^2 (the variance of the per-bin mean activation over the
  activation's variance, bins of the concept's value) of every named variable;
- detection: AUROC and best-threshold F1 against binary concepts and categorical classes;
- pairs (a second pass): eta^2 with joint coarse bins, among candidates per feature: its top singles by eta^2 and
  its top variables by |correlation| (a factor of a product can have a low eta^2 of its own but still correlate);
  the pairs are the best single with every other candidate, the pairs among the top three singles, and each of
  the top three singles with the variable that best explains what it leaves (:func:`residual_corr`: a gate's
  second factor, such as depth in depth x foreground, neither ranks high alone nor correlates), and the pairs
  among the four concepts the feature's scene MLP reads most (an XOR of two concepts shows in neither alone); a pair is
  always of two distinct concepts (a concept "paired" with itself is its single score on coarser bins). Each
  image fold chooses its best pair by eta^2 on itself and the other fold scores that choice (``pair_r2`` averages
  the two directions), so no pair is picked by the tokens that score it. (The best single is still the best of
  the variables by cross-validated eta^2: a choice among ~50 concepts, made for the nulls alike.)

Every score here bins the concepts as :mod:`frobnolab.analysis.variables` does: atoms (ties, such as the zeros of a
sparse concept) get bins of their own and heavy tails are split geometrically, so a rare highlight or a thin edge
is not averaged into the bulk; the cost stays one bincount per variable per chunk, linear in tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .engine import Chunk
from .stats import BinnedStats, DetectionStats


@dataclass
class NamedResult:
    single_r2: np.ndarray
    """(V, F) cross-validated eta^2 of every variable (named or withheld)."""
    best_single: np.ndarray
    """(F,) index of the best named variable."""
    best_single_r2: np.ndarray
    """(F,) its eta^2."""
    pair_best: np.ndarray
    """(F, 2) variable indices of the best pair (the one chosen on image fold 0)."""
    pair_r2: np.ndarray
    """(F,) its eta^2, each fold's choice scored on the other fold (-inf where no pair could be scored)."""
    auroc: np.ndarray
    """(T, F) detection AUROC per target."""
    f1: np.ndarray
    """(T, F) best-threshold F1 per target."""
    single_means: np.ndarray | None = None
    """(2, F, B) each feature's mean activation per bin of its best named variable, per image fold."""
    pair_means: np.ndarray | None = None
    """(2, F, C*C) per joint coarse bin of its best pair, per image fold."""
    coarse: int = 0
    """C: coarse bins per variable in a joint bin."""
    pair_fold: np.ndarray | None = None
    """(2, F, 2) the pair chosen on each image fold (the one its means are of; None: ``pair_best`` for both)."""

    @property
    def named_best(self) -> np.ndarray:
        return np.maximum(self.best_single_r2, self.pair_r2)

    def predict(self, g: np.ndarray, variables, fit: int, features=None) -> np.ndarray:
        """What the named match predicts at tokens ``g (N, G)``: each feature's mean activation in the bin of its
        best named concept, or of its best pair where the pair scores higher (``named_best``), with the means of
        image fold ``fit``; ``(N, len(features))``."""
        features = np.arange(len(self.best_single)) if features is None else np.asarray(features)
        out = np.zeros((len(g), len(features)), np.float32)
        use_pair = self.pair_r2[features] > self.best_single_r2[features]
        for v in np.unique(self.best_single[features][~use_pair]):
            sel = np.flatnonzero(~use_pair & (self.best_single[features] == v))
            out[:, sel] = self.single_means[fit][features[sel]][:, variables[v].bins(g)].T
        pairs = np.sort((self.pair_best if self.pair_fold is None else self.pair_fold[fit])[features], 1)
        for p, q in np.unique(pairs[use_pair], axis=0) if use_pair.any() else ():
            sel = np.flatnonzero(use_pair & (pairs[:, 0] == p) & (pairs[:, 1] == q))
            jb = variables[p].bins(g, coarse=True) * self.coarse + variables[q].bins(g, coarse=True)
            out[:, sel] = self.pair_means[fit][features[sel]][:, jb].T
        return out


class NamedMatch:
    """Pass 1: single-variable bins and detection histograms; keeps coarse bins (and features) for pass 2 while
    their nonzeros fit in ``cache_nnz``."""

    def __init__(self, variables, targets, n_features: int, scale: np.ndarray, cache_nnz: int, pair_candidates: int):
        self.variables, self.targets, self.F = variables, targets, n_features
        self.singles = BinnedStats(len(variables), max(v.n_bins for v in variables), n_features)
        self.detect = DetectionStats(len(targets), n_features, scale)
        self.cache: list | None = []
        self.cache_nnz, self.cached_nnz, self.m = cache_nnz, 0, pair_candidates

    def add(self, c: Chunk):
        self.singles.add(c.f, c.bins, c.fold)
        if self.cache is not None:
            self.cached_nnz += c.f.nnz
            if self.cached_nnz > self.cache_nnz:
                self.cache = None  # too many nonzeros to keep: pass 2 reads and encodes the store again
            else:
                self.cache.append((c.f, c.fold, self.coarse(c.gt)))
        self.detect.add(c.f, np.stack([t[1](c.gt) for _, t in self.targets]) if self.targets
                        else np.zeros((0, len(c.gt))))

    def coarse(self, g: np.ndarray) -> np.ndarray:
        return np.stack([v.bins(g, coarse=True) for v in self.variables]).astype(np.int16)

    def finish(self, corr_all: np.ndarray, rechunk, progress: bool = True, sample=None,
               saliency: np.ndarray | None = None) -> NamedResult:
        """``corr_all (F, G)``: correlation with every column; ``rechunk()``: the chunks again, for pass 2 when
        the cache did not fit; ``sample``: the scoring sample (:class:`~.scene.FoldSample`), whose residuals after
        each feature's best single give two more pair candidates (:func:`residual_corr`); ``saliency (F, G)``:
        what each feature's scene MLP reads (``scene._saliency``), whose top concepts are paired among themselves
        (an XOR of two concepts has no marginal signal in either, so only a predictor that learned it points at
        them)."""
        variables, F = self.variables, self.F
        single_r2 = self.singles.r2_cv()  # (V, F)
        auroc, f1 = self.detect.finish() if self.targets else (np.zeros((0, F)), np.zeros((0, F)))
        named_idx = np.array([k for k, v in enumerate(variables) if v.named])
        named_r2 = np.where(np.isnan(single_r2[named_idx]), -np.inf, single_r2[named_idx])
        best_single = named_idx[named_r2.argmax(0)]
        best_single_r2 = named_r2.max(0)
        # pairs are of scalar concepts: a vector is scored whole, alone (its coarse centres in a pair add little)
        scalar = np.array([k for k in named_idx if variables[k].kind != "vector"])
        scalar_r2 = np.where(np.isnan(single_r2[scalar]), -np.inf, single_r2[scalar])
        m = min(self.m, len(scalar))
        top_vars = scalar[np.argsort(-scalar_r2, 0)[:m]].T  # (F, m)
        var_corr = np.stack([np.abs(corr_all[:, variables[k].cols]).max(1) for k in scalar], 1)  # (F, n_scalar)
        top_corr = scalar[np.argsort(-var_corr, 1)[:, :m]]  # (F, m)
        cands = np.concatenate([top_vars, top_corr], 1)
        slots = [np.stack([cands[:, 0], cands[:, c]], 1) for c in range(1, cands.shape[1])]
        for p, q in ((1, 2), (1, 3), (2, 3)):
            if q < m:
                slots.append(np.stack([top_vars[:, p], top_vars[:, q]], 1))
        s = self.singles  # (2, V, B) counts, (2, V, B, F) sums
        f_idx = np.arange(F)
        single_means = _bin_means(s.count[:, best_single], s.s1[:, best_single, :, f_idx].transpose(1, 0, 2))
        if sample is not None and min(sample.n.values()) > 0 and len(scalar) > 1:
            unnamed = [k for k in range(len(variables)) if k not in set(scalar.tolist())]
            for c in range(min(3, m)):  # each of the top three singles, and what is left given it
                cond = top_vars[:, c]
                means = _bin_means(s.count[:, cond], s.s1[:, cond, :, f_idx].transpose(1, 0, 2))
                rc = residual_corr(sample, variables, cond, means)  # (F, V)
                rc[:, unnamed] = -np.inf
                rc[f_idx, cond] = -np.inf
                slots.append(np.stack([cond, rc.argmax(1)], 1))
        if saliency is not None and len(scalar) > 1:
            sal = np.stack([np.nan_to_num(saliency[:, variables[k].cols], nan=-1).max(1) for k in scalar], 1)
            top_sal = scalar[np.argsort(-sal, 1)[:, :min(4, len(scalar))]]  # (F, <=4)
            for p in range(top_sal.shape[1]):
                for q in range(p + 1, top_sal.shape[1]):
                    slots.append(np.stack([top_sal[:, p], top_sal[:, q]], 1))
        pair_r2 = np.full(F, -np.inf)
        pair_best = np.zeros((F, 2), np.int64)
        C = max(v.n_coarse for v in variables)
        pair_means = np.zeros((2, F, C * C))
        if slots:
            pv = np.stack(slots, 1)  # (F, S, 2)
            cnt, ps1, ps2 = self._pairs(pv, rechunk, progress)
            # each fold chooses its pair by eta^2 on itself and the other fold scores the choice: no pair is
            # picked by the tokens that score it
            inside, across = pair_eta_folds(cnt, ps1, ps2)  # (2, F, S) each
            inside[:, pv[..., 0] == pv[..., 1]] = -np.inf  # a pair is two distinct concepts, never one with itself
            slot = inside.argmax(2)  # (2, F)
            f_ = np.arange(F)
            got = np.stack([across[a, f_, slot[a]] for a in (0, 1)])  # (2, F)
            ok = np.isfinite(got) & np.isfinite(np.stack([inside[a, f_, slot[a]] for a in (0, 1)]))
            with np.errstate(invalid="ignore"):
                pair_r2 = np.where(ok.any(0), np.where(ok, got, 0).sum(0) / np.maximum(ok.sum(0), 1), -np.inf)
            pair_fold = np.stack([pv[f_, slot[a]] for a in (0, 1)])  # (2, F, 2)
            pair_best = pair_fold[0]
            pair_means = np.stack([_bin_means(cnt[:, f_, slot[a]], ps1[:, f_, slot[a]])[a] for a in (0, 1)])
            return NamedResult(single_r2, best_single, best_single_r2, pair_best, pair_r2, auroc, f1, single_means,
                               pair_means, C, pair_fold)
        return NamedResult(single_r2, best_single, best_single_r2, pair_best, pair_r2, auroc, f1, single_means,
                           pair_means, C)

    def _pairs(self, pv: np.ndarray, rechunk, progress: bool):
        """Pass 2: the joint bins' counts and sums of f and f^2, ``(2, F, S, C*C)`` each, of each feature's
        candidate pairs ``pv (F, S, 2)``."""
        from tqdm.auto import tqdm

        variables, F = self.variables, self.F
        V, S = len(variables), pv.shape[1]
        C = max(v.n_coarse for v in variables)
        lo, hi = np.minimum(pv[..., 0], pv[..., 1]), np.maximum(pv[..., 0], pv[..., 1])
        pair_ids, inv = np.unique(lo * V + hi, return_inverse=True)
        inv = inv.reshape(F, S)
        U, CC = len(pair_ids), C * C
        cnt = np.zeros((2, U, CC))
        ps1 = np.zeros((2, S, F, CC))  # slot-major, so each chunk's sums are one contiguous add
        ps2 = np.zeros((2, S, F, CC))
        first, second = pair_ids // V, pair_ids % V
        cached = self.cache
        chunks = cached if cached is not None else ((c.f, c.fold, self.coarse(c.gt)) for c in rechunk())
        bar = tqdm(desc="score: pass 2 (pairs)", unit="tok", disable=not progress)
        for f, fold, cb in chunks:
            cb = cb.astype(np.int64)
            jb = cb[first] * C + cb[second]  # (U, N): every pair's joint bin of every token
            cell = (np.arange(U)[:, None] * 2 + fold[None]) * CC + jb
            cnt += np.bincount(cell.ravel(), minlength=U * 2 * CC).reshape(U, 2, CC).transpose(1, 0, 2)
            coo = f.tocoo()
            i, j, val = coo.row, coo.col, coo.data
            # every slot in one bincount: index (fold, slot, feature, joint bin); the same terms in the same
            # order per cell as one bincount per slot
            u = inv[j]  # (nnz, S): the pair of each nonzero's feature in each slot
            idx = ((fold[i][None] * S + np.arange(S)[:, None]) * F + j[None]) * CC + jb[u.T, i[None]]
            idx = idx.ravel()
            ps1 += np.bincount(idx, weights=np.tile(val.astype(np.float64), S),
                               minlength=2 * S * F * CC).reshape(2, S, F, CC)
            ps2 += np.bincount(idx, weights=np.tile(val * val, S), minlength=2 * S * F * CC).reshape(2, S, F, CC)
            bar.update(f.shape[0])
        bar.close()
        self.cache = None
        ps1, ps2 = ps1.transpose(0, 2, 1, 3), ps2.transpose(0, 2, 1, 3)  # (2, F, S, CC)
        return cnt[:, inv], ps1, ps2


def residual_corr(sample, variables, cond: np.ndarray, cond_means: np.ndarray, group: int = 512) -> np.ndarray:
    """``(F, V)``: for each feature and variable, the share of what the feature's conditioning variable
    ``cond (F,)`` leaves unexplained (the activation less its bin means ``cond_means (2, F, B)``) that one of the
    variable's columns explains linearly with a slope of its own in each conditioning bin (on the scoring sample,
    per fold; the larger of the folds; features silent in a fold are skipped there).

    The second factor of a gated quantity has it: depth x foreground is foreground-like on average (one of its
    top singles), and depth ranks low by eta^2 and by plain correlation (on the floor depth varies and the unit
    is 0), but inside the foreground bin what is left of the activation is depth, with slope 1 there and 0 on the
    floor. Each of a feature's top three singles is paired with its top variable by this."""
    F = len(cond)
    acc = np.zeros((F, max(c for v in variables for c in v.cols) + 1))
    for fo in (0, 1):
        g, f, _ = sample.arrays(fo)
        g = g.astype(np.float64)
        f = f.tocsc()
        fires = np.diff(f.indptr) > 0
        for v in np.unique(cond):
            b = variables[v].bins(g)
            order = np.argsort(b, kind="stable")
            cuts = np.flatnonzero(np.diff(b[order])) + 1
            cells = [c for c in np.split(order, cuts) if len(c) > 1]
            gk = [g[c] - g[c].mean(0) for c in cells]
            vk = [np.maximum((x * x).sum(0), 1e-12) for x in gk]
            js = np.flatnonzero((cond == v) & fires)
            for lo in range(0, len(js), group):
                sel = js[lo:lo + group]
                r = f[:, sel].toarray().astype(np.float64) - cond_means[fo][sel][:, b].T  # (N, n)
                expl = np.zeros((len(sel), g.shape[1]))
                for c, x, var in zip(cells, gk, vk):
                    rc = r[c] - r[c].mean(0)
                    expl += (rc.T @ x) ** 2 / var  # (n, G): each column's per-cell slope fit
                tot = (r * r).sum(0)
                acc[sel] = np.maximum(acc[sel], expl / np.where(tot > 0, tot, np.inf)[:, None])
    return np.stack([acc[:, v.cols].max(1) for v in variables], 1)


def _bin_means(n: np.ndarray, s1: np.ndarray) -> np.ndarray:
    """Mean per bin ``(2, F, B)`` from counts and sums ``(2, F, B)``; an empty bin: its fold's mean."""
    tot = s1.sum(-1, keepdims=True) / np.maximum(n.sum(-1, keepdims=True), 1e-12)
    return np.where(n > 0, s1 / np.maximum(n, 1e-12), tot)


def pair_eta_folds(cnt, s1, s2) -> tuple[np.ndarray, np.ndarray]:
    """eta^2 with joint bins, ``(2, F, S)`` each: ``inside[a]`` of fold a's bin means on fold a itself (what fold
    a chooses by), ``across[a]`` of fold a's bin means on the other fold (clipped below at -1); -inf where
    undefined (a feature constant in the fold)."""
    inside, across = np.full((2,) + cnt.shape[1:-1], -np.inf), np.full((2,) + cnt.shape[1:-1], -np.inf)
    for a, b in ((0, 1), (1, 0)):
        n_a, n_b = cnt[a], cnt[b]
        tot_a = s1[a].sum(-1, keepdims=True) / np.maximum(n_a.sum(-1, keepdims=True), 1e-12)
        mean_a = np.where(n_a > 0, s1[a] / np.maximum(n_a, 1e-12), tot_a)
        for k, (n, s_1, s_2) in enumerate(((n_a, s1[a], s2[a]), (n_b, s1[b], s2[b]))):
            sse = (s_2 - 2 * mean_a * s_1 + n * mean_a**2).sum(-1)
            sst = s_2.sum(-1) - s_1.sum(-1) ** 2 / np.maximum(n.sum(-1), 1e-12)
            ok = sst > 1e-12 * np.maximum(s_2.sum(-1), 1e-30)
            r = np.where(ok, np.clip(1 - sse / np.where(ok, sst, 1), -1, 1), -np.inf)
            (inside if k == 0 else across)[a] = r
    return inside, across
