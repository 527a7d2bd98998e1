"""Score every SAE feature against exact ground truth and against the model's known optimal output.

All scores are computed on tokens of held-out images (the dataset's split), cross-validated by image (two folds),
and streamed chunk by chunk; each kind of score is one part in ``frobnolab.analysis.scoring``. Per feature:

- ``named_r2``: the best named concept's cross-validated correlation ratio (eta^2: the variance of the per-bin mean
  activation over the activation's variance, bins of the concept's value) and ``pair_r2`` for the best pair of named
  concepts (joint bins, among the feature's top 6 single concepts); ``named_best`` = the max of the two and of
  ``description_r2`` (a feature a short formula of named concepts describes is named by it);
- ``auroc`` / ``f1``: the best detection view against binary concepts and categorical classes;
- ``description``: what the feature computes, the best short formula of the named ground truth (a depth-2 tree
  or a product of at most three transformed concepts, ``scoring/describe.py``) and ``description_r2``, its
  cross-validated R^2;
- ``scene_r2``: cross-validated R^2 of the activation predicted from ALL ground-truth columns at the token, named
  or not, by a small MLP per feature (one estimator, not a maximum over several; ``ridge_r2``, a kernel ridge
  regression on random Fourier features, is kept beside it and stands in where no MLP could be fitted): is the
  feature a function of the scene at all?
- ``causal``: the loss change against the optimal output from ablating the feature in the spliced model, over the
  loss change from zero-ablating the layer: exact for the features with the most perturbation energy and for the
  leading candidates, otherwise ``causal_est``, the energy sum_t |f_j W_dec_j|^2 calibrated on the exact ones; and
  ``lands_on`` / ``lift``: the concept whose pixels take the largest share of that change;
- ``frob``: the frobnoloid score  gap * importance * real, where
  gap = max(0, scene_r2 - named_best)  (what the scene explains and no name, pair or short formula of names does),
  importance = min(1, causal / causal_null95), real = [scene_r2 > scene_floor (0.1)];
  with a bootstrap interval over held-out images for the top candidates.
- nulls: each score is computed for random unit directions in activation space, thresholded to the firing rate of a
  real feature (matched sparsity), and for causal effects random decoder directions carrying real features'
  activation patterns. ``*_null95`` are their 95th percentiles (pooled). Each feature's gap, named match and scene
  R^2 also get an empirical p-value against the nulls of its own firing rate (within 2x, at least 100 of them) and
  Benjamini-Hochberg q-values over all live features (``q_value`` for the gap, ``q_named``, ``q_scene``): a
  frobnoloid ``candidate`` has gap > 0.2, q_value <= 0.1 and causal > causal_null95. (Random directions in an
  activation space that encodes the scene are themselves functions of the scene, so "real" is a floor on scene_r2,
  and the null that matters for frobnoloids is the gap of random mixtures, which no single name explains either.)
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from frobnolab.files import atomic_write

from .scoring import nulls as N
from .scoring.bootstrap import Bootstrap
from .scoring.causal import CausalEffects
from .scoring.describe import Descriptions, describe_features
from .scoring.engine import FeatureSource, folds, halves, sae_encoder
from .scoring.frobnoloid import Frobnoloid, candidates, frobnoloid, has_causal_null
from .scoring.moments import Moments
from .scoring.named import NamedMatch
from .scoring.scene import SceneExplained
from .scoring.understood import understood_share
from .variables import build_variables

__all__ = ["ScoreConfig", "Scores", "score_features", "sae_encoder", "write_table", "read_table"]


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
    n_null: int = 1024
    """Random-direction null features, each thresholded to a live feature's firing rate (the p-values' nulls)."""
    n_causal_null: int = 32
    """Random decoder directions ablated for the causal null (a model pass each)."""
    null_window: float = 2.0
    """A feature's p-value uses the nulls whose firing rate is within this factor of its own ..."""
    null_min_matched: int = 100
    """... or at least this many nulls nearest in firing rate."""
    null_tail: bool = True
    """Past the 10th-largest matched null, p from a fitted generalised Pareto tail (``nulls.tail_p``: conservative,
    at most a decade below the empirical 1/(1+n)); False: empirical p-values only."""
    candidate_q: float = 0.1
    """A frobnoloid candidate's gap must have a Benjamini-Hochberg q-value at most this."""
    ridge_dim: int = 384
    """Random Fourier features of the scene-explained kernel regression."""
    scene_steps: int = 2000
    """Training steps of the per-feature scene MLPs (per fold; 2,000 at learning rate 0.04 learn planted three-way
    parities that 1,000 at 0.02 miss: dev seeds 0-2 of the grammar, R^2 >= 0.62 for 6 of 9 against 2)."""
    scene_lr: float = 0.04
    """Peak learning rate of the scene MLPs (one-cycle schedule)."""
    scene_hidden: int = 32
    """Hidden width of each feature's scene MLP."""
    scene_batch: int = 128
    """Tokens per step of the scene MLPs (128: half the cost of 256 at the same planted-truth recovery)."""
    scene_tokens: int = 30_000
    """Tokens per fold the MLP trains on (and the bootstrap resamples)."""
    pair_candidates: int = 6
    """Top single concepts per feature among which the best pair is sought."""
    causal_top: int = 64
    """Features ablated exactly, by perturbation energy (the rest: a calibrated energy estimate)."""
    causal_images: int = 16
    """Held-out images used for causal effects."""
    understood_shuffles: int = 20
    """Shuffled-description nulls of the understood share (0: no null)."""
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


@dataclass
class Scores:
    """What scoring found: ``table`` (one equal-length column per score, a row per feature), ``summary`` (strict
    JSON), its null features, and what the dictionary-level scores need: ``corr (F, G)`` correlation of every feature with every
    ground-truth column and ``image_sums`` {image: (F,) summed activations}."""

    table: dict
    summary: dict
    corr: np.ndarray
    image_sums: dict
    nulls: dict | None = None
    """This run's null features (``nulls.bank``; None when they came from an earlier run)."""


def score_features(tokens, encode, n_features: int, cfg: ScoreConfig, *, probe=None, progress: bool = True,
                   concepts: list[dict], log=lambda *_: None, null_bank: dict | None = None) -> Scores:
    """Every score of every feature, for any feature source.

    tokens: a :class:`~frobnolab.analysis.store.Tokens` (a store's hook, or planted arrays); encode: activations ->
    features; probe: a :class:`~frobnolab.analysis.probe.Probe` (the causal probe or the planted one), or None;
    concepts: the store manifest's concepts; null_bank: the null features (``nulls.bank``) of an earlier run on the
    same tokens (a baseline scored against the SAE's nulls): none of this run's own are scored then.
    """
    from tqdm.auto import tqdm

    rng = np.random.default_rng(cfg.seed)
    src = FeatureSource(tokens, encode, cfg.chunk_tokens, cfg.max_tokens)
    fold_of = folds(tokens.images("test"))

    # ---- pre-pass on a sample: bin edges, standardisation, activation scales, null directions
    a_s, g_s = src.sample()
    variables = build_variables(concepts, tokens.columns, g_s, cfg.holdout_concepts)
    if hasattr(encode, "sparse"):  # firing rates and maxima from the nonzeros (the same numbers, no dense copy)
        f_s = encode.sparse(a_s)
        rate_s = np.bincount(f_s.indices[f_s.data > 0], minlength=f_s.shape[1]) / max(f_s.shape[0], 1)
        max_s = f_s.max(0).toarray().ravel().astype(np.float64) if f_s.shape[0] else np.zeros(f_s.shape[1])
    else:
        f_s = encode(a_s)
        f_s = f_s.double().numpy() if torch.is_tensor(f_s) else np.asarray(f_s, np.float64)
        rate_s, max_s = (f_s > 0).mean(0), f_s.max(0)
    del f_s
    R = cfg.n_null if null_bank is None else 0
    U, tau, proj = N.directions(a_s, rate_s, R, rng)
    if R:
        src.set_nulls(U, tau)
    F = n_features + R
    scale = np.concatenate([max_s, np.maximum(proj - tau, 0).max(0)])
    del proj  # (sample, nulls) float64: 200 MB at 1,024 nulls, needed for nothing else
    present = {v.name: np.bincount(v.bins(g_s), minlength=v.n_bins) > 0 for v in variables
               if v.kind == "categorical"}
    targets = [(v, t) for v in variables if v.named for t in v.targets(present.get(v.name))]

    named = NamedMatch(variables, targets, F, scale, cfg.cache_nnz, cfg.pair_candidates)
    scene = SceneExplained(g_s, F, cfg.ridge_dim, cfg.scene_tokens, cfg.seed, halves(tokens.images("test")))
    moments = Moments(F, g_s.shape[1])
    parts = (named, scene, moments)

    t0 = time.time()
    bar = tqdm(desc="score: pass 1", unit="tok", disable=not progress)
    for c in src.chunks(fold_of, variables):
        for part in parts:
            part.add(c)
        bar.update(len(c.gt))
    bar.close()
    timings = {"pass1": round(time.time() - t0, 2)}
    log(f"pass 1: {moments.n_tok} tokens in {time.time() - t0:.1f} s")
    t1 = time.time()
    scene_r2, ridge_r2, ridge_lam, predictors = scene.finish(cfg.scene_steps, cfg.seed, cfg.device,
                                                                  hidden=cfg.scene_hidden, batch=cfg.scene_batch,
                                                                  lr=cfg.scene_lr)
    timings["scene_predictors"] = round(time.time() - t1, 2)
    t1 = time.time()
    nm = named.finish(moments.corr(), lambda: src.chunks(fold_of, variables), progress, sample=scene.sample,
                      saliency=SceneExplained.saliency(predictors))
    named_best = nm.named_best
    timings["pass2_pairs"] = round(time.time() - t1, 2)
    t1 = time.time()
    desc_all = describe_features(scene.sample, variables, nm.single_r2, nm.pair_best, moments.corr(), np.arange(F))
    desc = Descriptions(desc_all.text[:n_features], desc_all.r2[:n_features], desc_all.formulas[:n_features])
    # a feature that a short formula of named concepts describes is named (by that compound), nulls alike
    named_best = np.fmax(named_best, np.where(np.isnan(desc_all.r2), -np.inf, desc_all.r2))
    timings["describe"] = round(time.time() - t1, 2)
    t1 = time.time()

    causal = CausalEffects(probe, n_features, F)
    causal.run(moments.f_sq, moments.mx, moments.n_tok, cfg.causal_top, a_s.shape[1], cfg.n_causal_null, rng)
    real_f, null_f = slice(0, n_features), slice(n_features, F)
    bank = N.bank(null_f, moments.freq, named_best, scene_r2, nm.auroc) if null_bank is None else null_bank
    nulls = N.percentiles(bank, causal.null)
    fr = frobnoloid(scene_r2, named_best, causal.effect, nulls["causal"], cfg.scene_floor)
    if probe is not None:  # the leading candidates get exact ablations, then their scores are recomputed
        causal.measure([j for j in np.argsort(-fr.frob[:n_features])[: cfg.bootstrap_top] if fr.frob[j] > 0])
        fr = frobnoloid(scene_r2, named_best, causal.effect, nulls["causal"], cfg.scene_floor)
    effect = causal.effect
    timings["causal"] = round(time.time() - t1, 2)
    t1 = time.time()
    understood = {"measured": False, "why": "no probe"}
    if probe is not None:
        understood = understood_share(probe, _predictors(desc, nm, variables, predictors, moments, n_features),
                                      fold_of, (moments.s1 / max(moments.n_tok, 1))[real_f],
                                      (moments.nnz[real_f] > 0) & np.array([x is not None for x in desc.formulas]),
                                      np.random.default_rng([cfg.seed, 1]), cfg.understood_shuffles)
    timings["understood"] = round(time.time() - t1, 2)
    t1 = time.time()
    # p-values against the nulls of each feature's own firing rate; BH over every live feature
    alive = moments.nnz[real_f] > 0
    rate = moments.freq
    tests = {}
    for name, stat, bank_key in (("gap", fr.gap, "gap"), ("named", named_best, "named_best"),
                                 ("scene", scene_r2, "scene_r2")):
        p, n_matched = N.matched_p_values(stat[real_f], rate[real_f], bank[bank_key], bank["rate"],
                                          cfg.null_window, cfg.null_min_matched, tail=cfg.null_tail)
        p[~alive] = np.nan
        tests[name] = (p, N.benjamini_hochberg(p), n_matched)
    p_empirical = N.matched_p_values(fr.gap[real_f], rate[real_f], bank["gap"], bank["rate"], cfg.null_window,
                                     cfg.null_min_matched)[0]
    p_empirical[~alive] = np.nan
    # the same test applied to each null against the others: how often a null reaches p <= 0.01 (about 0.01)
    calibration = N.null_calibration(bank["gap"], bank["rate"], cfg.null_window, cfg.null_min_matched,
                                     cfg.null_tail)
    q_value = tests["gap"][1]
    candidate = np.zeros(F, bool)
    candidate[real_f] = candidates(Frobnoloid(*(x[real_f] for x in (fr.frob, fr.gap, fr.importance, fr.real))),
                                   effect[real_f], q_value, nulls["causal"], cfg.candidate_gap, cfg.candidate_q)
    has_null = has_causal_null(nulls["causal"])

    auroc = nm.auroc
    table = {
        "feature": np.arange(n_features),
        "freq": moments.freq[real_f], "mean_act": (moments.s1 / max(moments.n_tok, 1))[real_f],
        "max_act": moments.mx[real_f],
        "named_concept": np.array([variables[k].name for k in nm.best_single[real_f]], dtype=object),
        "named_r2": nm.best_single_r2[real_f],
        "pair": np.array([f"{variables[p].name}+{variables[q].name}" for p, q in nm.pair_best[real_f]], dtype=object),
        "pair_r2": nm.pair_r2[real_f], "named_best": named_best[real_f],
        "description": desc.text, "description_r2": desc.r2,
        "detect_target": np.array([targets[t][1][0] if len(targets) else "" for t in
                                   (auroc[:, real_f].argmax(0) if len(auroc) else np.zeros(n_features, int))],
                                  dtype=object),
        "auroc": auroc[:, real_f].max(0) if len(auroc) else np.full(n_features, np.nan),
        "f1": np.take_along_axis(nm.f1[:, real_f], auroc[:, real_f].argmax(0)[None], 0)[0] if len(auroc)
        else np.full(n_features, np.nan),
        "scene_r2": scene_r2[real_f], "ridge_r2": ridge_r2[real_f],
        "causal": causal.causal[real_f], "causal_est": causal.causal_est[real_f],
        "lands_on": causal.lands[real_f], "lift": causal.lift[real_f],
        "gap": fr.gap[real_f], "frob": fr.frob[real_f], "frob_lo": np.full(n_features, np.nan),
        "beats_null_gap": fr.gap[real_f] > nulls["gap"],
        "beats_null_causal": (effect[real_f] > nulls["causal"]) if has_null else np.zeros(n_features, bool),
        "frob_hi": np.full(n_features, np.nan), "candidate": candidate[real_f],
        "p_gap": tests["gap"][0], "p_gap_empirical": p_empirical, "q_value": q_value,
        "q_named": tests["named"][1], "q_scene": tests["scene"][1],
        "null_matched": tests["gap"][2],
        "beats_null_named": named_best[real_f] > nulls["named_r2"],
        "beats_null_scene": scene_r2[real_f] > nulls["scene_r2"],
    }
    recovery = {}
    for k, v in enumerate(variables):
        if not v.named:
            table[f"heldout_r2:{v.name}"] = nm.single_r2[k, real_f]
            # features that tracked the withheld concept should now surface as frobnoloid candidates
            tracks = np.nan_to_num(nm.single_r2[k, real_f]) >= cfg.track_r2
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
        pairs = nm.pair_fold if nm.pair_fold is not None else nm.pair_best
        boot = Bootstrap(scene.sample, predictors, top, variables, pairs, causal, nulls["causal"], ridge_r2,
                         cfg.scene_floor, desc)
        table["frob_lo"][top], table["frob_hi"][top] = boot.intervals(cfg.bootstrap, rng)
        # the same formula: with every image weighted once the bootstrap's statistic is the point estimate again
        # (exactly so when the scoring sample holds every held-out token)
        identity = boot.statistic(np.ones(len(boot.images)))
        bootstrap_check = {"max_abs_diff_at_unit_weights": float(np.max(np.abs(identity - table["frob"][top]))),
                           "sample_holds_every_token": bool(scene.sample.n[0] + scene.sample.n[1] == moments.n_tok)}
    else:
        bootstrap_check = {}
    timings["bootstrap"] = round(time.time() - t1, 2)
    table["top_where"] = moments.top_where[real_f]
    table["top_val"] = moments.top_val[real_f]
    summary = {
        "tokens": int(moments.n_tok), "features": int(n_features), "alive": int((moments.nnz[real_f] > 0).sum()),
        "variables": [{"name": v.name, "kind": v.kind, "named": v.named} for v in variables],
        "nulls95": nulls, "n_null": len(bank["rate"]), "nulls_from": "this run" if null_bank is None
        else null_bank.get("from", "given"), "ridge_lambda": ridge_lam, "config": asdict(cfg),
        "fdr": {"q_level": cfg.candidate_q, "candidate_gap": cfg.candidate_gap, "tested": int(alive.sum()),
                "null_matched_median": float(np.median(tests["gap"][2][alive])) if alive.any() else 0.0,
                "tail": bool(cfg.null_tail), "null_calibration_gap": calibration,
                "discoveries_gap_empirical": int(np.sum(np.nan_to_num(N.benjamini_hochberg(p_empirical), nan=1)
                                                        <= cfg.candidate_q)),
                **{f"discoveries_{k}": int(np.sum(np.nan_to_num(v[1], nan=1) <= cfg.candidate_q))
                   for k, v in tests.items()}},
        "seconds": round(time.time() - t0, 2), "timings": timings,
        "candidates": int(table["candidate"].sum()), "heldout_recovery": recovery, "bootstrap_check": bootstrap_check,
        "understood": understood,
        "single_r2": {variables[k].name: nm.single_r2[k, real_f].tolist() for k in range(len(variables))},
    }
    img_sums = {im: v[:n_features] for im, v in moments.img_sum.items()}
    return Scores(table, summary, moments.corr(real_f), img_sums, bank if null_bank is None else None)


def _predictors(desc, nm, variables, scene_predictors, moments, n_features: int) -> dict:
    """The understood share's predictors of the real features from the ground truth (``scoring/understood.py``):
    each ``(g (n, G), fit fold) -> (n, n_features)``; a feature a predictor has nothing for: its mean."""
    mean = (moments.s1 / max(moments.n_tok, 1))[:n_features].astype(np.float32)
    real = np.arange(n_features)
    out = {"descriptions": lambda g, fit: desc.predict(np.nan_to_num(g), fit, fallback=mean),
           "named": lambda g, fit: nm.predict(g, variables, fit, real)}
    if scene_predictors:  # predictors[b] evaluates fold b, fitted on the other
        def scene(g, fit):
            p = scene_predictors[1 - fit](np.nan_to_num(g))[:, :n_features]
            return np.where(np.isnan(p), mean[None], p)

        out["scene"] = scene
    return out


def write_table(table: dict, path: Path):
    """One row per feature, as parquet (top-activation provenance flattened to lists)."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = {}
    for k, v in table.items():
        v = np.asarray(v)
        cols[k] = pa.array(v.tolist()) if v.ndim > 1 or v.dtype == object else pa.array(v)
    buf = io.BytesIO()
    pq.write_table(pa.table(cols), buf)
    atomic_write(path, buf.getvalue())


def read_table(path: str | Path) -> dict:
    import pyarrow.parquet as pq

    t = pq.read_table(path)
    return {name: t.column(name).to_pylist() for name in t.column_names}
