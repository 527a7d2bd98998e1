"""The feature map: every alive feature as one point, placed by a 2-D embedding of its decoder direction, coloured
by its best named concept or by its frobnoloid score, each point a link to the feature's page.

Placement: t-SNE (scikit-learn, cosine metric, PCA initialisation, a fixed seed) of the unit decoder directions
(the rows of ``W_dec``); PCA for fewer than 8 features. t-SNE keeps neighbours together and says little about far
distances, so the map is for finding families of features, not for measuring between them.

Whether the dictionary's geometry follows the concepts at all is measured, not read off the picture
(:func:`concept_agreement`): the share of each feature's ``k`` nearest features (decoder cosine, in the full space)
that share its best named concept, against the same share with the concepts dealt to the features at random.
"""

from __future__ import annotations

import html

import numpy as np

PALETTE = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c", "#ccb974",
           "#64b5cd")
"""Colours of the most frequent concepts (seaborn's "deep"); the rest are grey."""
OTHER = "#d0d0d0"


def unit_rows(w_FD: np.ndarray) -> np.ndarray:
    w = np.asarray(w_FD, np.float64)
    return w / np.maximum(np.linalg.norm(w, axis=1, keepdims=True), 1e-12)


def embed(w_FD: np.ndarray, seed: int = 0) -> np.ndarray:
    """(F, 2) map positions of ``F`` decoder directions ``(F, D)``, scaled into [0, 1]."""
    w = unit_rows(w_FD)
    n = len(w)
    if n == 0:
        return np.zeros((0, 2))
    if n < 8:
        c = w - w.mean(0)
        u, s, _ = np.linalg.svd(c, full_matrices=False)
        xy = np.zeros((n, 2))
        k = min(2, u.shape[1])
        xy[:, :k] = u[:, :k] * s[:k]
    else:
        from sklearn.manifold import TSNE

        xy = TSNE(n_components=2, metric="cosine", init="pca", perplexity=min(30.0, (n - 1) / 3),
                  random_state=seed).fit_transform(w.astype(np.float32))
    lo, span = xy.min(0), float(np.ptp(xy, 0).max())  # one scale for both axes: no stretching
    return (xy - lo) / (span if span > 0 else 1.0)


def concept_agreement(w_FD: np.ndarray, concepts, k: int = 5, n_null: int = 200, seed: int = 0) -> dict:
    """Share of each feature's ``k`` nearest features by decoder cosine that have its best named concept, and the
    same share under ``n_null`` random permutations of the concepts (95th percentile, one-sided p)."""
    concepts = np.asarray(concepts, dtype=object)
    n = len(concepts)
    if n < 2 * k + 2:  # fewer, and every permutation gives nearly the same share: p cannot be small
        return {"k": k, "share": float("nan"), "null95": float("nan"), "p": float("nan"), "features": n}
    w = unit_rows(w_FD).astype(np.float32)
    near_FK = np.empty((n, k), np.int64)
    for a in range(0, n, 512):  # blocks of rows: 8 MB at F = 4,096 instead of the whole (F, F)
        cos = w[a:a + 512] @ w.T
        cos[np.arange(len(cos)), np.arange(a, a + len(cos))] = -np.inf
        near_FK[a:a + 512] = np.argpartition(-cos, k, axis=1)[:, :k]
    _, code = np.unique(concepts.astype(str), return_inverse=True)
    share = float((code[near_FK] == code[:, None]).mean())
    rng = np.random.default_rng(seed)
    null = np.empty(n_null)
    for i in range(n_null):
        c = rng.permutation(code)
        null[i] = (c[near_FK] == c[:, None]).mean()
    return {"k": k, "share": share, "null95": float(np.quantile(null, 0.95)),
            "p": float((1 + (null >= share).sum()) / (1 + n_null)), "features": n}


def _frob_colour(v: float, top: float) -> str:
    """Light grey (0) to dark red (the largest score)."""
    t = 0.0 if not np.isfinite(v) or top <= 0 else min(max(v / top, 0.0), 1.0)
    a, b = np.array([225, 225, 225]), np.array([165, 15, 21])
    r, g, bl = (a + (b - a) * t).round().astype(int)
    return f"#{r:02x}{g:02x}{bl:02x}"


def map_svg(features, xy_F2: np.ndarray, concepts, named_r2, frob, candidate, pages: dict, width: int = 640,
            height: int = 480) -> str:
    """The map as inline SVG: a circle per feature (a link to its page where it has one), coloured by concept;
    ``data-frob`` holds the other colouring, which the page's script swaps in."""
    concepts = [str(c) for c in concepts]
    names, counts = np.unique(concepts, return_counts=True)
    top = [str(n) for n in names[np.argsort(-counts, kind="stable")][: len(PALETTE)]]
    colour = {c: PALETTE[i] for i, c in enumerate(top)}
    finite = np.asarray(frob, float)[np.isfinite(np.asarray(frob, float))]
    fmax = float(finite.max()) if len(finite) else 0.0
    pad = 12
    dots = []
    for j, (x, y), c, r2, fr, cand in zip(features, xy_F2, concepts, named_r2, frob, candidate):
        cx, cy = pad + x * (width - 2 * pad), pad + y * (height - 2 * pad)
        tip = html.escape(f"feature {int(j)}: {c} ({float(r2):.2f}), frob {float(fr):.3f}"
                          f"{', candidate' if cand else ''}")
        dot = (f"<circle cx='{cx:.1f}' cy='{cy:.1f}' r='{5 if cand else 3.5}' fill='{colour.get(c, OTHER)}' "
               f"data-concept='{colour.get(c, OTHER)}' data-frob='{_frob_colour(float(fr), fmax)}' "
               f"stroke='{'#000' if cand else 'none'}'><title>{tip}</title></circle>")
        dots.append(f"<a href='{html.escape(pages[int(j)])}'>{dot}</a>" if int(j) in pages else dot)
    legend = "".join(f"<span class='key'><i style='background:{colour[c]}'></i>{html.escape(c)}</span>" for c in top)
    if any(c not in colour for c in concepts):
        legend += f"<span class='key'><i style='background:{OTHER}'></i>other concepts</span>"
    return (f"<svg id='fmap' width='{width}' height='{height}' style='border:1px solid #ddd'>"
            f"<title>feature map</title>{''.join(dots)}</svg><div id='fmap-legend' class='legend'>{legend}</div>"
            f"<div id='fmap-frob' class='legend' style='display:none'>frobnoloid score: "
            f"<span class='key'><i style='background:{_frob_colour(0, 1)}'></i>0</span>"
            f"<span class='key'><i style='background:{_frob_colour(1, 1)}'></i>{fmax:.3f}</span></div>")


MAP_JS = """function fmapColour(by){document.querySelectorAll('#fmap circle').forEach(c=>c.setAttribute('fill',
c.dataset[by]));document.getElementById('fmap-legend').style.display=by==='concept'?'':'none';
document.getElementById('fmap-frob').style.display=by==='frob'?'':'none'}
document.querySelectorAll('input[name=fmapby]').forEach(r=>r.onchange=()=>fmapColour(r.value));"""


def map_section(features, w_FD, concepts, named_r2, frob, candidate, pages: dict, seed: int = 0) -> str:
    """The index page's "Feature map" section (HTML): the map, its two colourings and the concept agreement."""
    features = [int(j) for j in features]
    if not features:
        return ""
    xy = embed(w_FD, seed)
    agree = concept_agreement(w_FD, concepts, seed=seed)
    how = "t-SNE" if len(features) >= 8 else "PCA"
    if np.isfinite(agree["share"]):
        verdict = "beyond" if agree["p"] <= 0.05 else "not beyond"
        agree_line = (f"On average {agree['share']:.0%} of a feature's {agree['k']} nearest decoder directions "
                      f"share its best named concept, against {agree['null95']:.0%} (95th percentile) with the concepts dealt at "
                      f"random (p {agree['p']:.3g}): {verdict} chance.")
    else:
        agree_line = "Too few features to measure whether neighbours share concepts."
    return (f"<h2>Feature map</h2><p>Each of the {len(features)} alive features, placed by {how} of its decoder "
            f"direction (cosine); near points write similar directions (t-SNE keeps neighbours, not distances: far "
            f"apart means only \"not neighbours\"). Candidates are outlined; click a point for "
            f"its page. {agree_line}</p><p class='controls'>colour by <label><input type='radio' name='fmapby' "
            f"value='concept' checked> best named concept</label><label><input type='radio' name='fmapby' "
            f"value='frob'> frobnoloid score</label></p>"
            f"{map_svg(features, xy, concepts, named_r2, frob, candidate, pages)}<script>{MAP_JS}</script>")
