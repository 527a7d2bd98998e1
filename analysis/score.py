"""Score every SAE feature against exact ground truth and against the model's known optimal output.

All scores are computed on tokens of held-out images (every 8th image), cross-validated by image (two folds), and
streamed chunk by chunk (``score_stats``). Per feature:

- ``named_r2``: the best named concept's cross-validated correlation ratio (eta^2: the variance of the per-bin mean
  activation over the activation's variance, bins of the concept's value) and ``pair_r2`` for the best pair of named
  concepts (joint bins, among the feature's top 6 single concepts); ``named_best = max`` of the two;
- ``auroc`` / ``f1``: the best detection view against binary concepts and categorical classes;
- ``scene_r2``: cross-validated R^2 of the activation predicted from ALL ground-truth columns at the token, named
  or not (the better of a kernel ridge regression on random Fourier features and a small MLP): is the feature a
  function of the scene at all?
- ``causal``: the loss change against the optimal output from ablating the feature in the spliced model, over the
  loss change from zero-ablating the layer: exact for the features with the most perturbation energy and for the
  leading candidates, otherwise ``causal_est``, the energy sum_t |f_j W_dec_j|^2 calibrated on the exact ones; and
  ``lands_on`` / ``lift``: the concept whose pixels take the largest share of that change;
- ``frob``: the frobnoloid score  gap * importance * real, where
  gap = max(0, scene_r2 - named_best)  (what the scene explains and no name or pair of names does),
  importance = min(1, causal / causal_null95), real = [scene_r2 > scene_floor (0.1)];
  with a bootstrap interval over held-out images for the top candidates.
- nulls: each score is computed for random unit directions in activation space, thresholded to the firing rate of a
  real feature (matched sparsity), and for causal effects random decoder directions carrying real features'
  activation patterns. ``*_null95`` are their 95th percentiles; a feature is a finding only above them: a
  frobnoloid ``candidate`` has gap > max(0.2, gap_null95) and causal > causal_null95. (Random directions in an
  activation space that encodes the scene are themselves functions of the scene, so "real" is a floor on scene_r2,
  and the null that matters for frobnoloids is the gap of random mixtures, which no single name explains either.)
"""

from __future__ import annotations

import json
import os
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from frobnolab.scenes.dataset import HOLDOUT_EVERY

from .scene_mlp import FoldSample, r2, scene_r2_mlp
from .score_stats import BinnedStats, DetectionStats, RidgeStats
from .store import ActivationStore
from .variables import build_variables


@dataclass
class ScoreConfig:
    holdout_concepts: tuple[str, ...] = ()
    """Concepts withheld from the named set (still ground truth for scene_r2 and for recovery)."""
    max_tokens: int = 0
    """Held-out tokens scored (0: all)."""
    chunk_tokens: int = 8192
    """Tokens per streamed chunk."""
    cache_nnz: int = 60_000_000
    """Nonzero feature activations kept in memory between the two passes (beyond it, pass 2 re-reads the store)."""
    n_null: int = 32
    """Random-direction null features."""
    ridge_dim: int = 384
    """Random Fourier features of the scene-explained kernel regression."""
    scene_steps: int = 1500
    """Training steps of the scene-explained MLP (per fold)."""
    scene_tokens: int = 30_000
    """Tokens per fold the MLP trains on (and the bootstrap resamples)."""
    pair_candidates: int = 6
    """Top single concepts per feature among which the best pair is sought."""
    causal_top: int = 64
    """Features ablated exactly, by perturbation energy (the rest: a calibrated energy estimate)."""
    causal_images: int = 16
    """Held-out images used for causal effects."""
    bootstrap: int = 50
    """Bootstrap resamples of held-out images for the frobnoloid interval."""
    bootstrap_top: int = 16
    """Candidates (by frobnoloid score) that get a bootstrap interval."""
    candidate_gap: float = 0.2
    """A frobnoloid candidate's gap must exceed this and its null."""
    track_r2: float = 0.5
    """For held-out concepts: a feature "tracks" a concept when its eta^2 with it is at least this."""
    scene_floor: float = 0.1
    """A feature is "real" (consistent) when the scene explains more than this share of its variance."""
    seed: int = 0
    """Seed of nulls, folds of randomness and bootstraps."""
    device: str = "cpu"
    """cpu or cuda (feature encoding and causal ablations)."""


class Source:
    """Held-out tokens of one hook point, in chunks: activations, ground truth, image, and features.

    ``encode(acts (n, d_in)) -> (n, F)``: the SAE's encoder (or the planted identity). Null features are appended
    as the last ``n_null`` columns once :meth:`set_nulls` has been called.
    """

    def __init__(self, tokens, encode, chunk: int, max_tokens: int = 0):
        self.tokens, self.encode_fn, self.chunk, self.max_tokens = tokens, encode, chunk, max_tokens
        self.U = None

    def set_nulls(self, U_dR: np.ndarray, tau_R: np.ndarray):
        self.U, self.tau = U_dR, tau_R

    def raw_chunks(self):
        tok = self.tokens
        buf_a, buf_g, buf_w, n, total = [], [], [], 0, 0
        for k in range(len(tok.acts._files)):
            where = np.asarray(tok.where._shard(k))
            sel = np.flatnonzero(where[:, 0] % HOLDOUT_EVERY == HOLDOUT_EVERY - 1)
            if not len(sel):
                continue
            buf_a.append(np.asarray(tok.acts._shard(k)[sel], np.float32))
            buf_g.append(np.asarray(tok.gt._shard(k)[sel], np.float64))
            buf_w.append(where[sel])
            n += len(sel)
            while n >= self.chunk:
                a, g, w = (np.concatenate(b) for b in (buf_a, buf_g, buf_w))
                take = self.chunk if not self.max_tokens else min(self.chunk, self.max_tokens - total)
                yield a[:take], g[:take], w[:take]
                total += take
                if self.max_tokens and total >= self.max_tokens:
                    return
                buf_a, buf_g, buf_w, n = [a[take:]], [g[take:]], [w[take:]], len(a) - take
        if n:
            a, g, w = (np.concatenate(b) for b in (buf_a, buf_g, buf_w))
            if self.max_tokens:
                a, g, w = a[: self.max_tokens - total], g[: self.max_tokens - total], w[: self.max_tokens - total]
            if len(a):
                yield a, g, w

    def features(self, acts: np.ndarray) -> sp.csr_matrix:
        f = self.encode_fn(acts)
        f = f.float() if torch.is_tensor(f) else torch.as_tensor(np.asarray(f, dtype=np.float32))
        if self.U is not None:
            f = torch.cat([f, torch.as_tensor(np.maximum(acts @ self.U - self.tau, 0), dtype=torch.float32)], 1)
        with warnings.catch_warnings():  # torch calls its sparse CSR support "beta"; conversion is all we use
            warnings.simplefilter("ignore", UserWarning)
            c = f.to_sparse_csr()  # (much faster than scipy's dense -> csr on wide feature maps)
        return sp.csr_matrix((c.values().numpy(), c.col_indices().numpy(), c.crow_indices().numpy()), shape=f.shape)

    def chunks(self):
        for a, g, w in self.raw_chunks():
            yield self.features(a), a, g, w


def sae_encoder(sae, device: str = "cpu", batch: int = 8192):
    """acts (n, d_in) numpy -> features (n, F) torch float32 on the CPU."""

    def encode(acts):
        out = []
        with torch.no_grad():
            for s in range(0, len(acts), batch):
                out.append(sae.encode(torch.from_numpy(np.ascontiguousarray(acts[s:s + batch])).to(device)).cpu())
        return torch.cat(out) if out else torch.zeros((0, sae.cfg.d_sae))

    return encode


def _folds(images: np.ndarray) -> np.ndarray:
    """Fold of each held-out image: alternate by rank, so both folds span the dataset."""
    uniq = np.unique(images)
    fold = np.zeros(int(uniq.max()) + 1 if len(uniq) else 1, np.int64)
    fold[uniq[1::2]] = 1
    return fold


def score_features(tokens, encode, n_features: int, cfg: ScoreConfig, *, probe=None, progress: bool = True,
                   concepts: list[dict], columns: list[str], log=lambda *_: None) -> tuple[dict, dict]:
    """The per-feature scores (a dict of equal-length columns) and a summary, for any feature source.

    tokens: a store's HookTokens (or an object with the same ``acts``/``gt``/``where`` chunked arrays);
    encode: activations -> features; probe: a causal probe (CausalProbe or the planted one), or None.
    """
    from tqdm.auto import tqdm

    rng = np.random.default_rng(cfg.seed)
    src = Source(tokens, encode, cfg.chunk_tokens, cfg.max_tokens)
    all_images = np.unique(np.concatenate([np.asarray(tokens.where._shard(k))[:, 0]
                                           for k in range(len(tokens.acts._files))]))
    fold_of = _folds(all_images[all_images % HOLDOUT_EVERY == HOLDOUT_EVERY - 1])

    # ---- pre-pass on a sample: bin edges, standardisation, activation scales, null directions
    sample = []
    for a, g, w in src.raw_chunks():
        sample.append((a, g))
        if sum(len(x[0]) for x in sample) >= 20_000:
            break
    if not sample:
        raise ValueError("no tokens from held-out images to score (every 8th image is held out)")
    a_s, g_s = np.concatenate([x[0] for x in sample]), np.concatenate([x[1] for x in sample])
    variables = build_variables(concepts, columns, g_s, cfg.holdout_concepts)
    f_s = encode(a_s)
    f_s = f_s.double().numpy() if torch.is_tensor(f_s) else np.asarray(f_s, np.float64)
    freq_s = (f_s > 0).mean(0)
    alive = np.flatnonzero(freq_s > 0)
    R = cfg.n_null
    U = rng.normal(size=(a_s.shape[1], R))
    U /= np.linalg.norm(U, axis=0, keepdims=True)
    proj = a_s @ U
    rates = freq_s[rng.choice(alive, R)] if len(alive) else np.full(R, 0.05)
    tau = np.array([np.quantile(proj[:, r], 1 - rates[r]) for r in range(R)])
    src.set_nulls(U, tau)
    F = n_features + R
    scale = np.concatenate([f_s.max(0), np.maximum(proj - tau, 0).max(0)])
    present = {v.name: np.bincount(v.bins(g_s), minlength=v.n_bins) > 0 for v in variables
               if v.kind == "categorical"}
    targets = [(v, t) for v in variables if v.named for t in v.targets(present.get(v.name))]

    V, B = len(variables), max(v.n_bins for v in variables)
    singles = BinnedStats(V, B, F)
    detect = DetectionStats(len(targets), F, scale)
    ridge = RidgeStats(g_s.mean(0), g_s.std(0), F, dim=cfg.ridge_dim, seed=cfg.seed)
    n_tok, s1, nnz, mx = 0, np.zeros(F), np.zeros(F), np.zeros(F)
    G = g_s.shape[1]
    fg_sum, g_sum, g_sq = np.zeros((F, G)), np.zeros(G), np.zeros(G)
    f_sq = np.zeros(F)
    img_sum: dict[int, np.ndarray] = {}
    top_k = 32
    sample_fold = FoldSample(cfg.scene_tokens)
    top_val = np.full((F, top_k), -np.inf)
    top_where = np.full((F, top_k, 3), -1, np.int64)
    cache: list | None = []  # pass 1's sparse features, folds and coarse bins, for pass 2 (if they fit)
    cached_nnz = 0

    t0 = time.time()
    bar = tqdm(desc="score: pass 1", unit="tok", disable=not progress)
    for f, a, g, w in src.chunks():
        fold = fold_of[w[:, 0]]
        bins = np.stack([v.bins(g) for v in variables])
        singles.add(f, bins, fold)
        if cache is not None:
            cached_nnz += f.nnz
            if cached_nnz > cfg.cache_nnz:
                cache = None  # too many nonzeros to keep: pass 2 reads and encodes the store again
            else:
                cache.append((f, fold, np.stack([v.bins(g, coarse=True) for v in variables]).astype(np.int16)))
        detect.add(f, np.stack([t[1](g) for _, t in targets]) if targets else np.zeros((0, len(g))))
        ridge.add(f, g, fold)
        sample_fold.add(f, g, fold, w[:, 0])
        n_tok += len(g)
        s1 += np.asarray(f.sum(0)).ravel()
        f_sq += np.asarray(f.multiply(f).sum(0)).ravel()
        nnz += np.diff(f.tocsc().indptr)
        mx = np.maximum(mx, f.max(0).toarray().ravel())
        gg = np.nan_to_num(g)
        fg_sum += (f.T @ gg)
        g_sum += gg.sum(0)
        g_sq += (gg**2).sum(0)
        for im in np.unique(w[:, 0]):
            rows = w[:, 0] == im
            img_sum[int(im)] = img_sum.get(int(im), 0) + np.asarray(f[rows].sum(0)).ravel()
        # running top activations per feature, from the nonzeros only
        coo = f.tocoo()
        cand_j = np.concatenate([np.repeat(np.arange(F), top_k), coo.col])
        cand_v = np.concatenate([top_val.ravel(), coo.data])
        cand_w = np.concatenate([top_where.reshape(-1, 3), w[coo.row][:, :3]])
        order = np.lexsort((-cand_v, cand_j))
        cand_j, cand_v, cand_w = cand_j[order], cand_v[order], cand_w[order]
        start = np.searchsorted(cand_j, np.arange(F))
        rank = np.arange(len(cand_j)) - start[cand_j]
        keep = rank < top_k
        top_val = np.full((F, top_k), -np.inf)
        top_where = np.full((F, top_k, 3), -1, np.int64)
        top_val[cand_j[keep], rank[keep]] = cand_v[keep]
        top_where[cand_j[keep], rank[keep]] = cand_w[keep]
        bar.update(len(g))
    bar.close()
    timings = {"pass1": round(time.time() - t0, 2)}
    log(f"pass 1: {n_tok} tokens in {time.time() - t0:.1f} s")
    t1 = time.time()

    single_r2 = singles.r2_cv()  # (V, F)
    ridge_r2, ridge_lam = ridge.r2_cv()
    mlp_r2, predictors = scene_r2_mlp(sample_fold, cfg.scene_steps, seed=cfg.seed, device=cfg.device)
    timings["scene_predictors"] = round(time.time() - t1, 2)
    t1 = time.time()
    scene_r2 = ridge_r2 if mlp_r2 is None else np.fmax(ridge_r2, mlp_r2)
    auroc, f1 = detect.finish() if targets else (np.zeros((0, F)), np.zeros((0, F)))
    named_idx = np.array([k for k, v in enumerate(variables) if v.named])
    named_r2 = np.where(np.isnan(single_r2[named_idx]), -np.inf, single_r2[named_idx])
    best_single = named_idx[named_r2.argmax(0)]
    best_single_r2 = named_r2.max(0)

    # ---- pass 2: pairs. Candidates per feature: its top singles by eta^2 and its top variables by |correlation|
    # (a factor of a product can have a low eta^2 of its own but still correlate); pairs are the best single with
    # every other candidate, plus the pairs among the top three singles.
    m = min(cfg.pair_candidates, len(named_idx))
    top_vars = named_idx[np.argsort(-named_r2, 0)[:m]].T  # (F, m)
    corr_all = _corr(fg_sum, s1, f_sq, g_sum, g_sq, n_tok)  # (F, G)
    var_corr = np.stack([np.abs(corr_all[:, variables[k].cols]).max(1) for k in named_idx], 1)  # (F, n_named)
    top_corr = named_idx[np.argsort(-var_corr, 1)[:, :m]]  # (F, m)
    cands = np.concatenate([top_vars, top_corr], 1)
    slot_list = [np.stack([cands[:, 0], cands[:, c]], 1) for c in range(1, cands.shape[1])]
    for p, q in ((1, 2), (1, 3), (2, 3)):
        if q < m:
            slot_list.append(np.stack([top_vars[:, p], top_vars[:, q]], 1))
    slots = slot_list
    pair_r2 = np.full(F, -np.inf)
    pair_best = np.zeros((F, 2), np.int64)
    if slots:
        C = max(v.n_coarse for v in variables)
        pv = np.stack(slots, 1)  # (F, S, 2)
        lo, hi = np.minimum(pv[..., 0], pv[..., 1]), np.maximum(pv[..., 0], pv[..., 1])
        pair_ids, inv = np.unique(lo * V + hi, return_inverse=True)
        inv = inv.reshape(F, len(slots))
        S = len(slots)
        cnt = np.zeros((2, len(pair_ids), C * C))
        ps1 = np.zeros((2, F, S, C * C))
        ps2 = np.zeros((2, F, S, C * C))
        bar = tqdm(desc="score: pass 2 (pairs)", unit="tok", disable=not progress)
        def pass2_chunks():
            if cache is not None:
                yield from cache
                return
            for f, a, g, w in src.chunks():
                yield f, fold_of[w[:, 0]], np.stack([v.bins(g, coarse=True) for v in variables])

        for f, fold, cb in pass2_chunks():
            for u, pid in enumerate(pair_ids):
                jb = cb[pid // V] * C + cb[pid % V]
                cnt[:, u] += np.bincount(fold * C * C + jb, minlength=2 * C * C).reshape(2, C * C)
            coo = f.tocoo()
            i, j, val = coo.row, coo.col, coo.data
            fi = fold[i] * F + j
            for s_ in range(S):
                pid = pair_ids[inv[j, s_]]
                idx = fi * (C * C) + cb[pid // V, i] * C + cb[pid % V, i]
                ps1[:, :, s_] += np.bincount(idx, weights=val, minlength=2 * F * C * C).reshape(2, F, C * C)
                ps2[:, :, s_] += np.bincount(idx, weights=val * val, minlength=2 * F * C * C).reshape(2, F, C * C)
            bar.update(f.shape[0])
        bar.close()
        cache = None
        pr2 = _pair_r2(cnt[:, inv], ps1, ps2)  # (F, S)
        pr2 = np.where(np.isnan(pr2), -np.inf, pr2)
        best_slot = pr2.argmax(1)
        pair_r2 = pr2[np.arange(F), best_slot]
        pair_best = pv[np.arange(F), best_slot]

    named_best = np.maximum(best_single_r2, pair_r2)
    timings["pass2_pairs"] = round(time.time() - t1, 2)
    t1 = time.time()

    # ---- causal effects: exact ablations for the features with the most perturbation energy
    # (sum over tokens of |f_j W_dec_j|^2), a calibrated energy estimate for the rest, then exact ablations for the
    # leading frobnoloid candidates too. (A first-order attribution is useless here: a trained model sits near its
    # optimum, where the loss gradient with respect to its activations is close to zero.)
    causal = np.full(F, np.nan)
    causal_est = np.full(F, np.nan)
    lands, lift = np.array([""] * F, dtype=object), np.full(F, np.nan)
    causal_null = np.array([])
    per_image_delta = {}
    if probe is not None:
        base = probe.baseline()
        layer_gap = float(np.mean(base["zero"]) - np.mean(base["sae"]))
        masks = probe.concept_masks()
        energy = f_sq[:n_features] * probe.decoder_norms() ** 2 / max(n_tok, 1)

        def measure(features):
            features = [int(j) for j in features if mx[j] > 0 and np.isnan(causal[j])]
            if not features:
                return
            losses, changes = probe.ablate(features)
            land = _landing(changes, masks)
            for k, j in enumerate(features):
                causal[j] = (losses[k].mean() - np.mean(base["sae"])) / layer_gap
                lands[j], lift[j] = land[k]
                per_image_delta[j] = (np.asarray(probe.images), (losses[k] - base["sae"]) / layer_gap)

        measure(np.argsort(-energy)[: cfg.causal_top])
        done = np.flatnonzero(np.isfinite(causal[:n_features]))
        c = float((causal[done] * energy[done]).sum() / max((energy[done] ** 2).sum(), 1e-30)) if len(done) else 0.0
        causal_est[:n_features] = c * energy
        # null: random decoder directions carrying real features' activation patterns
        live = np.flatnonzero(mx[:n_features] > 0)
        donors = rng.choice(live, size=min(R, len(live)), replace=False) if len(live) else np.array([], int)
        dirs = {}
        for j in donors:
            u = rng.normal(size=a_s.shape[1])
            dirs[int(j)] = torch.as_tensor(u / np.linalg.norm(u), dtype=torch.float32, device=probe.device)
        if dirs:
            null_losses, _ = probe.ablate(list(dirs), direction=dirs)
            causal_null = (null_losses.mean(1) - np.mean(base["sae"])) / layer_gap
    effect = np.where(np.isnan(causal), causal_est, causal)
    real_f = slice(0, n_features)
    null_f = slice(n_features, F)

    def q95(x):
        x = np.asarray(x, float)
        x = x[np.isfinite(x)]
        return float(np.quantile(x, 0.95)) if len(x) else float("nan")

    nulls = {"named_r2": q95(named_best[null_f]), "scene_r2": q95(scene_r2[null_f]),
             "causal": q95(np.abs(causal_null)) if len(causal_null) else float("nan"),
             "gap": q95(np.clip(scene_r2[null_f] - named_best[null_f], 0, 1)),
             "auroc": q95(auroc[:, null_f].max(0)) if len(auroc) else float("nan")}
    gap = np.clip(scene_r2 - np.where(np.isfinite(named_best), named_best, 0), 0, 1)
    imp_ref = nulls["causal"] if np.isfinite(nulls["causal"]) and nulls["causal"] > 0 else None
    importance = np.clip(effect / imp_ref, 0, 1) if imp_ref else np.where(np.isfinite(effect), 1.0, 0.0)
    importance = np.nan_to_num(importance)
    real = scene_r2 > cfg.scene_floor
    frob = gap * importance * real
    if probe is not None:  # the leading candidates get exact ablations, then their scores are recomputed
        lead = [j for j in np.argsort(-frob[:n_features])[: cfg.bootstrap_top] if frob[j] > 0]
        measure(lead)
        effect = np.where(np.isnan(causal), causal_est, causal)
        importance = np.nan_to_num(np.clip(effect / imp_ref, 0, 1) if imp_ref else np.isfinite(effect) * 1.0)
        frob = gap * importance * real
    timings["causal"] = round(time.time() - t1, 2)
    t1 = time.time()
    candidate = real & (gap > max(cfg.candidate_gap, nulls["gap"])) & (
        (effect > nulls["causal"]) if imp_ref else True)

    freq = nnz / max(n_tok, 1)
    table = {
        "feature": np.arange(n_features),
        "freq": freq[real_f], "mean_act": (s1 / max(n_tok, 1))[real_f], "max_act": mx[real_f],
        "named_concept": np.array([variables[k].name for k in best_single[real_f]], dtype=object),
        "named_r2": best_single_r2[real_f],
        "pair": np.array([f"{variables[p].name}+{variables[q].name}" for p, q in pair_best[real_f]], dtype=object),
        "pair_r2": pair_r2[real_f], "named_best": named_best[real_f],
        "detect_target": np.array([targets[t][1][0] if len(targets) else "" for t in
                                   (auroc[:, real_f].argmax(0) if len(auroc) else np.zeros(n_features, int))],
                                  dtype=object),
        "auroc": auroc[:, real_f].max(0) if len(auroc) else np.full(n_features, np.nan),
        "f1": np.take_along_axis(f1[:, real_f], auroc[:, real_f].argmax(0)[None], 0)[0] if len(auroc)
        else np.full(n_features, np.nan),
        "scene_r2": scene_r2[real_f], "causal": causal[real_f], "causal_est": causal_est[real_f],
        "lands_on": lands[real_f], "lift": lift[real_f],
        "gap": gap[real_f], "frob": frob[real_f], "frob_lo": np.full(n_features, np.nan),
        "beats_null_gap": gap[real_f] > nulls["gap"],
        "beats_null_causal": (effect[real_f] > nulls["causal"]) if imp_ref else np.zeros(n_features, bool),
        "frob_hi": np.full(n_features, np.nan), "candidate": candidate[real_f],
        "beats_null_named": named_best[real_f] > nulls["named_r2"],
        "beats_null_scene": scene_r2[real_f] > nulls["scene_r2"],
    }
    recovery = {}
    for k, v in enumerate(variables):
        if not v.named:
            table[f"heldout_r2:{v.name}"] = single_r2[k, real_f]
            # features that tracked the withheld concept should now surface as frobnoloid candidates
            tracks = np.nan_to_num(single_r2[k, real_f]) >= cfg.track_r2
            flagged = candidate[real_f]
            recovery[v.name] = {
                "tracking_features": int(tracks.sum()),
                "recall": float((tracks & flagged).sum() / tracks.sum()) if tracks.any() else float("nan"),
                "precision": float((tracks & flagged).sum() / flagged.sum()) if flagged.any() else float("nan"),
            }
    # ---- bootstrap intervals for the top candidates
    top = np.argsort(-table["frob"])[: cfg.bootstrap_top]
    top = top[table["frob"][top] > 0]
    if len(top) and cfg.bootstrap:
        lo, hi = _bootstrap(sample_fold, predictors, top, variables, pair_best, per_image_delta, nulls, imp_ref,
                            effect, ridge_r2, cfg, rng)
        table["frob_lo"][top], table["frob_hi"][top] = lo, hi
    timings["bootstrap"] = round(time.time() - t1, 2)
    table["top_where"] = top_where[real_f]
    table["top_val"] = top_val[real_f]
    corr = _corr(fg_sum[real_f], s1[real_f], f_sq[real_f], g_sum, g_sq, n_tok)
    summary = {
        "tokens": int(n_tok), "features": int(n_features), "alive": int((nnz[real_f] > 0).sum()),
        "variables": [{"name": v.name, "kind": v.kind, "named": v.named} for v in variables],
        "nulls95": nulls, "n_null": R, "ridge_lambda": ridge_lam, "config": asdict(cfg),
        "seconds": round(time.time() - t0, 2), "timings": timings,
        "candidates": int(table["candidate"].sum()), "heldout_recovery": recovery,
        "single_r2": {variables[k].name: single_r2[k, real_f].tolist() for k in range(V)},
        "_corr": corr, "_img_sum": img_sum, "_columns": columns,
    }
    return table, summary


def _weighted_effect(delta: tuple, images: np.ndarray, wimg: np.ndarray) -> float:
    """A feature's causal effect averaged over its probe images with their bootstrap multiplicities."""
    probe_images, d = delta
    pos = np.searchsorted(images, probe_images)
    ok = (pos < len(images)) & (images[np.minimum(pos, len(images) - 1)] == probe_images)
    w = np.where(ok, wimg[np.minimum(pos, len(images) - 1)], 0.0)
    return float(np.average(d, weights=w)) if w.sum() > 0 else float(np.mean(d))


def _pair_r2(cnt, s1, s2) -> np.ndarray:
    """Cross-validated eta^2 with joint bins: cnt (2, F, S, J), s1/s2 (2, F, S, J) -> (F, S)."""
    out, valid = 0, 0
    for a, b in ((0, 1), (1, 0)):
        n_a, n_b = cnt[a], cnt[b]
        tot_a = s1[a].sum(-1, keepdims=True) / np.maximum(n_a.sum(-1, keepdims=True), 1e-12)
        mean_a = np.where(n_a > 0, s1[a] / np.maximum(n_a, 1e-12), tot_a)
        sse = (s2[b] - 2 * mean_a * s1[b] + n_b * mean_a**2).sum(-1)
        sst = s2[b].sum(-1) - s1[b].sum(-1) ** 2 / np.maximum(n_b.sum(-1), 1e-12)
        ok = sst > 1e-12 * np.maximum(s2[b].sum(-1), 1e-30)
        out = out + np.where(ok, 1 - sse / np.where(ok, sst, 1), 0)
        valid = valid + ok
    with np.errstate(invalid="ignore"):
        return np.clip(np.where(valid > 0, out / np.maximum(valid, 1), np.nan), -1, 1)


def _landing(changes, masks):
    from .causal import landing

    return landing(changes.reshape(len(changes), -1), {k: m.reshape(-1) for k, m in masks.items()})


def _corr(fg, s1, f_sq, g_sum, g_sq, n):
    """Pearson correlation (F, G) from sums."""
    mf, mg = s1 / max(n, 1), g_sum / max(n, 1)
    cov = fg / max(n, 1) - mf[:, None] * mg[None]
    sf = np.sqrt(np.maximum(f_sq / max(n, 1) - mf**2, 0))
    sg = np.sqrt(np.maximum(g_sq / max(n, 1) - mg**2, 0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((sf[:, None] > 0) & (sg[None] > 0), cov / (sf[:, None] * sg[None]), 0.0)


def _bootstrap(sample, predictors, top, variables, pair_best, per_image_delta, nulls, imp_ref, effect, ridge_r2,
               cfg, rng):
    """frob intervals (5th, 95th percentile) over resamples of held-out images, for features ``top``.

    Each resample reweights the scoring sample's tokens by their image's multiplicity and recomputes the named
    matches (single and the chosen pair) and the scene R^2 of the fixed out-of-fold predictions (the predictors
    are not refitted), and averages the causal effect over the resampled probe images.
    """
    parts = [sample.arrays(k) for k in (0, 1)]
    g = np.concatenate([p[0] for p in parts])
    f = sp.vstack([p[1][:, top] for p in parts]).toarray()
    im = np.concatenate([p[2] for p in parts])
    fold = np.concatenate([np.full(len(p[0]), k) for k, p in enumerate(parts)])
    if predictors:
        pred = np.concatenate([predictors[k](parts[k][0])[:, top] for k in (0, 1)])
    images = np.unique(im)
    pos = np.searchsorted(images, im)
    named = [k for k, v in enumerate(variables) if v.named]
    bins_named = np.stack([variables[k].bins(g) for k in named])
    coarse = np.stack([v.bins(g, coarse=True) for v in variables])
    C = max(v.n_coarse for v in variables)
    frobs = np.zeros((cfg.bootstrap, len(top)))
    for b in range(cfg.bootstrap):
        wimg = np.bincount(rng.integers(len(images), size=len(images)), minlength=len(images)).astype(float)
        w = wimg[pos]
        st = BinnedStats(len(named), max(variables[k].n_bins for k in named), len(top))
        st.add(f, bins_named, fold, w)
        single = np.nanmax(np.where(np.isnan(st.r2_cv()), -np.inf, st.r2_cv()), 0)
        pair = np.full(len(top), -np.inf)
        for t, j in enumerate(top):
            p, q = pair_best[j]
            ps = BinnedStats(1, C * C, 1)
            ps.add(f[:, t:t + 1], (coarse[p] * C + coarse[q])[None], fold, w)
            pair[t] = np.nan_to_num(ps.r2_cv()[0, 0], nan=-np.inf)
        scene = r2(f, pred, w) if predictors else ridge_r2[top]
        scene = np.fmax(np.nan_to_num(scene, nan=-1), ridge_r2[top])
        gap = np.clip(scene - np.maximum(single, pair), 0, 1)
        eff = np.array([_weighted_effect(per_image_delta[int(j)], images, wimg) if int(j) in per_image_delta
                        else effect[j] for j in top])
        imp = np.clip(np.abs(eff) / imp_ref, 0, 1) if imp_ref else np.ones(len(top))
        frobs[b] = gap * imp * (scene > cfg.scene_floor)
    return np.quantile(frobs, 0.05, 0), np.quantile(frobs, 0.95, 0)


# ------------------------------------------------------------------------------------------------------------- runs


def score_sae(store_path: str | Path, sae_folder: str | Path, out: str | Path, cfg: ScoreConfig | None = None,
              *, hook: str | None = None, model=None, progress: bool = True, other_sae: str | Path | None = None,
              log=print) -> dict:
    """Score the SAE in ``sae_folder`` on its store; writes ``features.parquet``, ``summary.json`` and
    ``report.md`` (with pictures) into ``out``. Returns the summary."""
    from frobnolab.models.io import load_model

    from .causal import CausalProbe
    from .dictionary import dictionary_scores
    from .report import write_report
    from .sae import load_sae

    cfg = cfg or ScoreConfig()
    store = ActivationStore(store_path)
    sae_folder = Path(sae_folder)
    rec_path = sae_folder / "training.json"
    if hook is None:
        if not rec_path.exists():
            raise ValueError(f"{sae_folder}: give the hook point (no training.json to read it from)")
        hook = json.loads(rec_path.read_text())["hook"]
    sae = load_sae(sae_folder, device=cfg.device)
    tokens = store[hook]
    if sae.cfg.d_in != tokens.d_in:
        raise ValueError(f"SAE d_in {sae.cfg.d_in} does not match hook {hook} ({tokens.d_in} channels)")
    if model is None:
        model = load_model(store.manifest["model"], cfg.device)
    probe = CausalProbe(model, sae, store, hook, n_images=cfg.causal_images, device=cfg.device)
    table, summary = score_features(tokens, sae_encoder(sae, cfg.device), sae.cfg.d_sae, cfg, probe=probe,
                                    progress=progress, concepts=store.manifest["concepts"],
                                    columns=store.manifest["columns"], log=log)
    other = load_sae(other_sae, device=cfg.device) if other_sae else None
    summary["dictionary"] = dictionary_scores(table, summary, store, hook, sae, other, cfg)
    summary.update({"store": str(store.path.resolve()), "hook": hook, "sae": str(sae_folder.resolve()),
                    "store_hook_sha256": tokens.meta["sha256"]})
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_table(table, out / "features.parquet")
    public = {k: v for k, v in summary.items() if not k.startswith("_")}
    tmp = out / f".summary.json.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(public, indent=1, default=_jsonable))
    os.replace(tmp, out / "summary.json")
    write_report(table, public, store, hook, sae, out)
    return public


def _jsonable(x):
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)


def write_table(table: dict, path: Path):
    """One row per feature, as parquet (top-activation provenance flattened to lists)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = {}
    for k, v in table.items():
        v = np.asarray(v)
        cols[k] = pa.array(v.tolist()) if v.ndim > 1 or v.dtype == object else pa.array(v)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(pa.table(cols), tmp)
    os.replace(tmp, path)


def read_table(path: str | Path) -> dict:
    import pyarrow.parquet as pq

    t = pq.read_table(path)
    return {name: t.column(name).to_pylist() for name in t.column_names}
