"""Matching the features of two models, or of two SAE widths, on the same pixels of the same held-out images.

Two scores folders (``frobnolab score``) whose stores were extracted on the same dataset: the conv autoencoder and
TAESD, TAESD and TAESDXL, an encoder and a decoder hook, or two SAEs of different widths on one store. Each side's
features are encoded on its held-out tokens and pooled onto the coarser side's grid (a token of stride s covers an
s x s cell of pixels: a finer side's tokens are averaged over each coarse cell), so both sides are seen at the same
cells. For every feature of either side, its best match on the other side is the feature whose activation it
correlates with most (Pearson, over the common cells).

**The null**: the same matching with one side's images rotated by k held-out images (cell (image i, r, c) paired
with (image i+k, r, c)), k = 1..19: what each feature's best match reaches when the two sides see different scenes
at the same places. A feature is **shared** when its best match beats every one of its own rotated best matches
(p = 1/20 <= 0.05), **specific** to its model otherwise. A feature of image position alone matches as well in the
null and is not called shared: shared means the two see the same content.

For two widths of one store, each narrow feature's **children** are the wide features whose best narrow match it
is, with the named concept of each: how a feature splits as the dictionary grows.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from frobnolab.files import atomic_write, write_json


def _side(scores: Path):
    """(summary, tokens of the scored hook, SAE, feature table) of a scores folder."""
    from .sae import load_sae
    from .score import read_table
    from .store import ActivationStore

    summ = Path(scores) / "summary.json"
    if not summ.exists():
        raise FileNotFoundError(f"{scores}: no summary.json (a scores folder made by frobnolab score)")
    s = json.loads(summ.read_text())
    if s.get("baseline"):
        raise ValueError(f"{scores}: scores of a baseline ({s['baseline'].get('kind')}); compare SAEs")
    store = ActivationStore(s["store"])
    return s, store, store[s["hook"]], load_sae(s["sae"]), read_table(Path(scores) / "features.parquet")


def _cells(z_NF: np.ndarray, where_N3: np.ndarray, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """Features averaged over ``factor x factor`` blocks of tokens: (cell keys (M, 3) sorted, features (M, F))."""
    key = np.stack([where_N3[:, 0], where_N3[:, 1] // factor, where_N3[:, 2] // factor], 1).astype(np.int64)
    uniq, inv = np.unique(key, axis=0, return_inverse=True)
    inv = inv.ravel()
    out = np.zeros((len(uniq), z_NF.shape[1]))
    np.add.at(out, inv, z_NF)
    return uniq, out / np.bincount(inv, minlength=len(uniq))[:, None]


def _standardise(z: np.ndarray) -> np.ndarray:
    sd = z.std(0)
    return np.where(sd > 0, (z - z.mean(0)) / np.where(sd > 0, sd, 1), np.nan)


def _best(za: np.ndarray, zb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Correlations (Fa, Fb) of standardised columns, and each side's best match index and correlation."""
    C = np.nan_to_num(za, nan=0.0).T @ np.nan_to_num(zb, nan=0.0) / len(za)
    C[np.isnan(za).all(0)] = np.nan
    C[:, np.isnan(zb).all(0)] = np.nan
    filled = np.nan_to_num(C, nan=-np.inf)
    return C, filled.argmax(1), filled.argmax(0)


def _rolled(keys: np.ndarray, k: int) -> np.ndarray:
    """Each cell's key with its image replaced by the k-th next held-out image (cyclically)."""
    ims = np.unique(keys[:, 0])
    nxt = dict(zip(ims, np.roll(ims, -k)))
    return np.stack([np.vectorize(nxt.get)(keys[:, 0]), keys[:, 1], keys[:, 2]], 1)


def _align(ka: np.ndarray, kb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row indices into a and b of the keys both have."""
    _, ia, ib = np.intersect1d(_flat(ka), _flat(kb), return_indices=True)
    return ia, ib


def _flat(k: np.ndarray) -> np.ndarray:
    return (k[:, 0] * 100_003 + k[:, 1]) * 100_003 + k[:, 2]


ROTATIONS = 19
"""Rotations of one side's images in the null (so a p-value can reach 1 / 20)."""


def match(keys_a: np.ndarray, z_a: np.ndarray, keys_b: np.ndarray, z_b: np.ndarray, level: float = 0.05) -> dict:
    """Best matches both ways between features ``z_a (Ma, Fa)`` and ``z_b (Mb, Fb)`` at cells ``keys (M, 3)``
    (image, row, col on one grid), against the rotated-image null. Per side: ``best`` (index on the other side),
    ``corr``, ``alive`` (not constant on the common cells), ``p`` (the share of rotations, plus one, in which the
    feature's best match is at least as good: its own null, so a feature of position alone, which matches as well
    between different scenes, gets p = 1), ``shared`` (p <= ``level``), ``null95`` (median over live features of
    the 95th percentile of their rotated best matches)."""
    ia, ib = _align(keys_a, keys_b)
    if len(ia) < 16 or len(np.unique(keys_a[ia, 0])) < 2:
        raise ValueError(f"only {len(ia)} cells of {len(np.unique(keys_a[ia, 0]))} image(s) in common between the "
                         "two stores' held-out tokens (a null needs two images; subsampled tokens do not line up: "
                         "extract both with --tokens-per-image 0)")
    ka, za, zb = keys_a[ia], z_a[ia], z_b[ib]
    A, B = _standardise(za), _standardise(zb)
    C, best_ab, best_ba = _best(A, B)

    def best_corr(M):
        with np.errstate(all="ignore"):
            filled = np.where(np.isnan(M), -np.inf, M)
            return filled.max(1), filled.max(0)

    corr_a, corr_b = best_corr(C)
    n_img = len(np.unique(ka[:, 0]))
    nulls_a, nulls_b = [], []
    for k in range(1, min(ROTATIONS, n_img - 1) + 1):  # a's cells of image i against b's of image i + k
        ra, rb = _align(_rolled(ka, k), keys_b[ib])
        Cn, _, _ = _best(_standardise(za[ra]), _standardise(zb[rb]))
        na, nb = best_corr(Cn)
        nulls_a.append(na)
        nulls_b.append(nb)
    alive_a, alive_b = np.isfinite(A).all(0), np.isfinite(B).all(0)

    def side(best, corr, nulls, alive):
        nulls = np.array(nulls)  # (K, F); -inf for a feature constant on the rotated cells
        p = (1 + (nulls >= corr[None] - 1e-9).sum(0)) / (1 + len(nulls))
        with np.errstate(all="ignore"):
            n95 = np.quantile(np.where(np.isfinite(nulls), nulls, np.nan), 0.95, axis=0) if len(nulls) \
                else np.full(len(corr), np.nan)
        live = alive & np.isfinite(n95)
        return {"best": best, "corr": corr, "alive": alive, "p": p, "shared": alive & (p <= level),
                "null95_F": n95, "null95": float(np.median(n95[live])) if live.any() else float("nan")}

    return {"cells": int(len(ia)), "rotations": len(nulls_a),
            "a": side(best_ab, corr_a, nulls_a, alive_a), "b": side(best_ba, corr_b, nulls_b, alive_b)}


def _rows(side: dict, tab_self, tab_other) -> list[dict]:
    return [{"feature": int(j), "match": int(side["best"][j]), "corr": float(side["corr"][j]),
             "p": float(side["p"][j]), "null95": float(side["null95_F"][j]), "shared": bool(side["shared"][j]),
             "concept": str(tab_self["named_concept"][j]),
             "match_concept": str(tab_other["named_concept"][side["best"][j]])}
            for j in np.flatnonzero(side["alive"])]


def compare(scores_a: str | Path, scores_b: str | Path, out: str | Path | None = None, *,
            max_tokens: int = 200_000) -> dict:
    """Match the features of two scores folders on the same held-out pixels (see the module docstring); writes
    ``OUT/compare.json`` and ``OUT/compare.md`` when ``out`` is given; returns the result."""
    from .scoring.engine import sae_encoder

    sa, store_a, tok_a, sae_a, tab_a = _side(Path(scores_a))
    sb, store_b, tok_b, sae_b, tab_b = _side(Path(scores_b))
    da, db = store_a.dataset, store_b.dataset
    if da.manifest.get("dataset_sha256") != db.manifest.get("dataset_sha256"):
        raise ValueError(f"{scores_a} and {scores_b}: their stores were extracted on different datasets "
                         f"({da.path}, {db.path}); features are matched on the same pixels")
    if store_a.domain.name != "image" or store_b.domain.name != "image":
        raise ValueError("compare matches image models' features (one store is of a field)")
    sA, sB = int(tok_a.stride), int(tok_b.stride)
    coarse = max(sA, sB)
    if coarse % sA or coarse % sB:
        raise ValueError(f"strides {sA} and {sB} do not nest: no common grid of cells")

    def encoded(tok, sae, stride):
        parts = list(tok.chunks("test", parts=("acts", "where"), max_tokens=max_tokens))
        if not parts:
            raise ValueError(f"{tok.store.path}: hook {tok.name} has no held-out tokens")
        acts = np.concatenate([c.acts for c in parts])
        where = np.concatenate([c.where for c in parts])
        z = sae_encoder(sae)(acts).double().numpy()
        return _cells(z, where, coarse // stride)

    ka, za = encoded(tok_a, sae_a, sA)
    kb, zb = encoded(tok_b, sae_b, sB)
    m = match(ka, za, kb, zb)
    rows_a = _rows(m["a"], tab_a, tab_b)
    rows_b = _rows(m["b"], tab_b, tab_a)
    alive_a, alive_b = m["a"]["alive"], m["b"]["alive"]
    bar_a, bar_b, ia = m["a"]["null95"], m["b"]["null95"], m["cells"]
    same_store = Path(sa["store"]).resolve() == Path(sb["store"]).resolve() and sa["hook"] == sb["hook"]
    res = {"a": {"scores": str(Path(scores_a)), "hook": sa["hook"], "stride": sA, "features": int(len(alive_a)),
                 "alive": int(alive_a.sum()), "shared": int(sum(r["shared"] for r in rows_a)), "null95": bar_a},
           "b": {"scores": str(Path(scores_b)), "hook": sb["hook"], "stride": sB, "features": int(len(alive_b)),
                 "alive": int(alive_b.sum()), "shared": int(sum(r["shared"] for r in rows_b)), "null95": bar_b},
           "cells": int(ia), "rotations": m["rotations"], "grid_stride": coarse, "features_a": rows_a, "features_b": rows_b,
           "same_store": bool(same_store)}
    if same_store and len(alive_a) != len(alive_b):  # two widths: which features split into which
        narrow, wide = ("a", "b") if len(alive_a) < len(alive_b) else ("b", "a")
        wide_rows = res[f"features_{wide}"]
        res["splits"] = {"narrow": narrow, "children": {
            str(r["feature"]): [{"feature": w["feature"], "corr": w["corr"], "concept": w["concept"]}
                                for w in wide_rows if w["match"] == r["feature"] and w["shared"]]
            for r in res[f"features_{narrow}"]}}
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "compare.json", res)
        atomic_write(out / "compare.md", "\n".join(report_lines(res)) + "\n")
    return res


def report_lines(res: dict) -> list[str]:
    """A markdown summary of :func:`compare`'s result."""
    a, b = res["a"], res["b"]
    lines = ["## Shared and model-specific features", "",
             f"A: `{a['scores']}` ({a['hook']}, stride {a['stride']}); B: `{b['scores']}` ({b['hook']}, stride "
             f"{b['stride']}); matched on {res['cells']} held-out cells of {res['grid_stride']} x {res['grid_stride']} "
             "pixels by the correlation of their activations. Null: the same matching with B's images rotated by 1 to "
             f"{res.get('rotations', 19)} images (different scenes at the same places); shared = the best match beats "
             "every rotation's (p <= 0.05).", "",
             "| side | live features | shared | median null 95th pct best match |", "| --- | --- | --- | --- |",
             f"| A | {a['alive']} | {a['shared']} | {a['null95']:.3f} |",
             f"| B | {b['alive']} | {b['shared']} | {b['null95']:.3f} |", ""]
    for side in ("a", "b"):
        rows = sorted(res[f"features_{side}"], key=lambda r: -r["corr"])
        shared = [r for r in rows if r["shared"]][:10]
        specific = [r for r in rows if not r["shared"]][:5]
        lines.append(f"Side {side.upper()}'s best shared features: " + (", ".join(
            f"{r['feature']} ({r['concept']}) ~ {r['match']} ({r['match_concept']}) r {r['corr']:.2f}"
            for r in shared) or "none") + ".")
        lines.append(f"Side {side.upper()}'s specific features (no match beyond the null), their concepts: " + (", ".join(
            f"{r['feature']} ({r['concept']}, best r {r['corr']:.2f})" for r in specific) or "none") + ".")
        lines.append("")
    if "splits" in res:
        kids = {k: v for k, v in res["splits"]["children"].items() if len(v) > 1}
        lines.append(f"Splits ({len(kids)} narrow features with two or more wide children): " + "; ".join(
            f"{k} -> " + ", ".join(f"{c['feature']} ({c['concept']})" for c in v) for k, v in list(kids.items())[:10])
            + ".")
    return lines
