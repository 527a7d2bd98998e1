"""What a feature computes: the best short formula of the named ground truth, with its cross-validated R^2.

Two families of formulas, over *atoms* of the named vocabulary (a continuous or binary concept's value, a
categorical concept's class fraction ``name=class``, a circular concept's angle; classes and angles as the
variables give them), fitted on the scoring sample (:class:`~frobnolab.analysis.scoring.scene.FoldSample`):

- a depth-2 regression tree: a split of one atom at a threshold, each side split again (on the same atom or on
  another) or not, constant leaves: ``if foreground > 0.5: (2.3 if depth < 4.1 else 0.8) else 0.01``;
- a sparse product of at most three factors, affine in the product: ``0.9 * depth * [foreground > 0.5] + 0.02``,
  each factor a transform of one atom: its value, ``(hi - x)``, ``(x - median)``, ``rank(x)``, ``(1 - rank(x))``,
  ``(rank(x) - 0.5)``, an indicator ``[x > t]`` / ``[x < t]``, or for a circular concept ``cos(hue - 30deg)``.

Cheaply: each feature's candidates are its ``k`` best atoms (its best named concept, its best pair, then its best
singles by eta^2 and its best columns by |correlation|: :func:`candidate_atoms`); every atom is cut into about
``bins`` bins at its quantiles (:func:`~frobnolab.analysis.variables.bin_edges`: ties and heavy tails get bins of
their own) and each feature's activation sums per bin and per joint bin of two candidates, per image fold, give
every tree and every one- and two-factor product at once (vectorised over features; a product's factor is its
transform's mean over the bin during the search). The third factor is sought greedily on each of the three best
two-factor products (a beam), and the chosen product is then scored on the exact values. Every score is
cross-validated like ``scene_r2``: the structure's values (leaf means, the affine coefficients) fitted on one image
fold and scored on the other, both ways, averaged; the structure is the one with the best such score, less 0.01 per unit of complexity (a factor, a
tree's atom, its second split), so a simpler formula wins a tie. Nothing here is random, and a feature's formula
depends only on its own activations (never on which other features are described beside it). Angles are written
in degrees in (-180, 180].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..variables import MIN_RESULTANT, bin_edges, circular_edges

N_CONT = 6
"""Continuous transforms per atom (value, hi - x, x - median, rank, 1 - rank, rank - 1/2; circular: 6 cosines)."""
N_THR = 8
"""Thresholds per atom for the indicator transforms (each as [x > t] and [x < t])."""
T = N_CONT + 2 * N_THR
PENALTY = 0.01
"""R^2 given up per unit of complexity, so that a simpler formula wins a tie."""
BEAM = 3
"""Two-factor products per feature on which a third factor is sought."""


def _polar(cs: np.ndarray):
    """Length and angle in (-pi, pi] of (cos, sin) rows (as the variables bin them)."""
    cs = np.asarray(cs, np.float64)
    return np.hypot(cs[:, 0], cs[:, 1]), np.arctan2(cs[:, 1], cs[:, 0])


@dataclass
class Atom:
    name: str
    kind: str  # "linear" or "circular"
    var: int
    cols: list[int]
    edges: np.ndarray

    @property
    def n_bins(self) -> int:
        return len(self.edges) + 1 + (self.kind == "circular")

    def bins(self, g: np.ndarray) -> np.ndarray:
        if self.kind == "circular":
            r, ang = _polar(g[:, self.cols])
            return np.where(r < MIN_RESULTANT, 0, 1 + np.searchsorted(self.edges, ang, side="right"))
        return np.searchsorted(self.edges, g[:, self.cols[0]], side="right")


def build_atoms(variables, g: np.ndarray, bins: int = 16) -> list[Atom]:
    """Atoms of the named variables from the sample's ground truth ``g`` (class columns that never hold: none)."""
    out = []
    for k, v in enumerate(variables):
        if not v.named or v.kind == "vector":  # a vector's components are atoms of their own
            continue
        if v.kind == "categorical":
            for c, cls in zip(v.cols, v.classes):
                x = g[:, c].astype(np.float64)
                if np.ptp(x) > 0:
                    out.append(Atom(f"{v.name}={cls}", "linear", k, [c], bin_edges(x, bins)))
        elif v.kind == "circular":
            r, ang = _polar(g[:, v.cols])
            out.append(Atom(v.name, "circular", k, list(v.cols), circular_edges(ang[r >= MIN_RESULTANT], bins)))
        else:
            x = g[:, v.cols[0]].astype(np.float64)
            if np.ptp(x) > 0:
                out.append(Atom(v.name, "linear", k, list(v.cols), bin_edges(x, bins)))
    return out


class Transforms:
    """The factor transforms of one atom: exact values on tokens, their display, their thresholds."""

    def __init__(self, atom: Atom, g: np.ndarray, parts: tuple = ()):
        """``g``: the sample's ground truth, the concatenation of ``parts`` (its folds), whose ranks are cached."""
        self.atom, self._ranks = atom, {}
        nb = atom.n_bins
        lo = 2 if atom.kind == "circular" else 1  # a circular atom's bin 0 (no direction) is no threshold
        self.thr = np.linspace(lo, nb - 1, N_THR).round().astype(int) if nb - 1 >= lo else np.full(N_THR, lo)
        if atom.kind == "linear":
            x = g[:, atom.cols[0]].astype(np.float64)
            u, inv, cnt = np.unique(x, return_inverse=True, return_counts=True)
            self.xs = u
            self._mid = (np.cumsum(cnt) - cnt / 2) / len(x)  # each distinct value's mid-rank
            self.hi, self.med = float(u[-1]), float(np.median(x))
            ranks = self._mid[inv.ravel()]
            self._ranks[(id(g), len(g))] = ranks
            at = 0
            for part in parts:
                self._ranks[(id(part), len(part))] = ranks[at:at + len(part)]
                at += len(part)

    def rank(self, g):
        """The sample's mid-rank of each token's value, in [0, 1] (cached per array of tokens)."""
        key = (id(g), len(g))
        if key not in self._ranks:
            self._ranks[key] = self._rank(g)
        return self._ranks[key]

    def _rank(self, g):  # values between the sample's: interpolated mid-ranks
        return np.interp(g[:, self.atom.cols[0]].astype(np.float64), self.xs, self._mid)

    def values(self, g: np.ndarray, t: int, b: np.ndarray | None = None, cached: bool = True) -> np.ndarray:
        """Transform ``t`` of every token of ``g`` (``b``: their bins, if known; ``cached``: keep the ranks of
        ``g`` for the next call, for the sample's arrays only)."""
        a = self.atom
        if t >= N_CONT:
            b = a.bins(g) if b is None else b
            i = (t - N_CONT) % N_THR
            above = b >= self.thr[i]
            return (above if t < N_CONT + N_THR else (~above) & ((b > 0) | (a.kind != "circular"))).astype(float)
        if a.kind == "circular":
            th = np.radians(30 * t)
            return g[:, a.cols[0]] * np.cos(th) + g[:, a.cols[1]] * np.sin(th)
        x = g[:, a.cols[0]].astype(np.float64)
        if t < 3:
            return (x, self.hi - x, x - self.med)[t]
        r = self.rank(g) if cached else self._rank(g)
        return (r, 1 - r, r - 0.5)[t - 3]

    def text(self, t: int) -> str:
        a, n = self.atom, self.atom.name
        if t >= N_CONT:
            i = (t - N_CONT) % N_THR
            return "[" + condition(a, self.thr[i], t < N_CONT + N_THR) + "]"
        if a.kind == "circular":
            return {0: f"{n}.cos", 3: f"{n}.sin"}.get(t, f"cos({n} - {30 * t}deg)")
        return (n, f"({self.hi:.3g} - {n})", f"({n} - {self.med:.3g})", f"rank({n})", f"(1 - rank({n}))",
                f"(rank({n}) - 0.5)")[t]


def condition(atom: Atom, b: int, above: bool) -> str:
    """``bin >= b`` (above) or ``bin < b`` of an atom, as text."""
    if atom.kind == "circular":
        if b <= 1:
            return f"has {atom.name}" if above else f"no {atom.name}"
        return f"{atom.name} {'>' if above else '<'} {np.degrees(atom.edges[b - 2]):.0f}deg"
    return f"{atom.name} {'>' if above else '<'} {atom.edges[b - 1]:.3g}"


def candidate_atoms(atoms: list[Atom], variables, single_r2: np.ndarray, pair_best: np.ndarray, corr: np.ndarray,
                    k: int) -> np.ndarray:
    """``(F, k)`` atom indices per feature: the atoms of its best named concept and best pair, then of its best
    singles by eta^2 and its best columns by |correlation|, alternately (a categorical concept's atom: its class
    the feature correlates with most); fewer distinct ones are padded by repeating the first."""
    by_col = {c: i for i, a in enumerate(atoms) for c in a.cols}
    by_var: dict[int, list[int]] = {}
    for i, a in enumerate(atoms):
        by_var.setdefault(a.var, []).append(i)
    named = np.array([v.named for v in variables])
    r2 = np.where(named[:, None] & np.isfinite(single_r2), single_r2, -np.inf)
    ac = np.abs(np.nan_to_num(corr))
    F = corr.shape[0]
    out = np.zeros((F, k), np.int64)
    for j in range(F):
        def of_var(v):
            ids = by_var.get(int(v), [])
            return max(ids, key=lambda i: ac[j, atoms[i].cols].max()) if ids else None

        order = [of_var(v) for v in (np.argmax(r2[:, j]), *pair_best[j])]
        top_v = [of_var(v) for v in np.argsort(-r2[:, j], kind="stable")[1:k + 1] if np.isfinite(r2[v, j])]
        top_c = [by_col[c] for c in np.argsort(-ac[j], kind="stable") if c in by_col][:k]
        for x, y in zip(top_v + [None] * k, top_c + [None] * k):
            order += [x, y]
        seen = []
        for i in order:
            if i is not None and i not in seen:
                seen.append(i)
        seen = (seen or [0])[:k]
        out[j] = seen + [seen[0]] * (k - len(seen))
    return out


class Formula:
    """One feature's description as a function of the ground truth: :meth:`predict` evaluates it on any tokens,
    with the values (leaf means, affine coefficients) fitted on one image fold or on both.

    ``kind``: "tree" (``rec``: root slot and threshold bin, each side's split) or "product" (``rec["factors"]``:
    (slot, transform) pairs); ``slots``: the atoms' :class:`Transforms` by slot; ``values``: per fitting fold
    (0, 1) and pooled (None), the leaf means (tree) or (intercept, slope) (product)."""

    def __init__(self, kind: str, rec: dict, slots: dict, values: dict, r2: float):
        self.kind, self.rec, self.slots, self.values, self.r2 = kind, rec, slots, values, r2

    def leaves(self, bins_of) -> np.ndarray:
        """A tree's leaf (0..3) of every token; ``bins_of(slot)``: the tokens' bins of that slot's atom."""
        rb = bins_of(self.rec["root"])
        right = rb >= self.rec["t"]
        leaf = right.astype(np.int64) * 2
        for side, (s, u) in ((False, self.rec["left"]), (True, self.rec["right"])):
            if s >= 0:
                leaf += (right == side) & (bins_of(s) >= u)
        return leaf

    def predict(self, g: np.ndarray, fit: int | None = None) -> np.ndarray:
        """The formula's value ``(N,)`` at tokens with ground truth ``g (N, G)`` (the store's columns), with the
        values fitted on image fold ``fit`` (0 or 1: cross-fitted predictions of the other fold) or on both."""
        g = np.asarray(g, np.float64)
        v = self.values[fit]
        if self.kind == "tree":
            cache = {}

            def bins_of(s):
                if s not in cache:
                    cache[s] = self.slots[s].atom.bins(g)
                return cache[s]

            return np.asarray(v, np.float64)[self.leaves(bins_of)]
        z = np.ones(len(g))
        for c, t in self.rec["factors"]:
            z = z * self.slots[c].values(g, t, cached=False)
        a, b = v
        return a + b * z


@dataclass
class Descriptions:
    text: np.ndarray
    """(F,) the formula of each feature ("" where it never varies in the sample)."""
    r2: np.ndarray
    """(F,) its cross-validated R^2 (NaN where it never varies)."""
    formulas: list
    """(F,) each feature's :class:`Formula` (None where it never varies)."""

    def predict(self, g: np.ndarray, fit: int | None = None, fallback: np.ndarray | None = None) -> np.ndarray:
        """Every feature's description evaluated at tokens ``g (N, G)``: ``(N, F)``; a feature without one
        predicts ``fallback[j]`` (default 0) everywhere."""
        out = np.zeros((len(g), len(self.formulas)), np.float32)
        if fallback is not None:
            out[:] = np.asarray(fallback, np.float32)[None]
        for j, fm in enumerate(self.formulas):
            if fm is not None:
                out[:, j] = fm.predict(g, fit)
        return out


def describe_features(sample, variables, single_r2, pair_best, corr, features=None, k: int = 7,
                      bins: int = 24, group: int = 128) -> Descriptions:
    """The best short formula of each feature, from a :class:`FoldSample` (both image folds), the variables, and
    from named matching the candidates' evidence: ``single_r2 (V, F)``, ``pair_best (F, 2)``, ``corr (F, G)``;
    ``features``: the columns of the sample's features to describe (None: all)."""
    if min(sample.n.values()) < 10:  # no cross-validation without both folds
        F = len(np.arange(sample.f[0][0].shape[1] if sample.f[0] else sample.f[1][0].shape[1] if sample.f[1] else 0)
                [features if features is not None else slice(None)])
        return Descriptions(np.full(F, "", dtype=object), np.full(F, np.nan), [None] * F)
    (g0, f0, _), (g1, f1, _) = sample.arrays(0), sample.arrays(1)
    if features is not None:
        f0, f1 = f0[:, features], f1[:, features]
        single_r2, pair_best, corr = single_r2[:, features], pair_best[features], corr[features]
    g = np.concatenate([g0, g1]).astype(np.float64)
    F = f0.shape[1]
    atoms = build_atoms(variables, g, bins)
    if not atoms or F == 0:
        return Descriptions(np.full(F, "", dtype=object), np.full(F, np.nan), [None] * F)
    cand = candidate_atoms(atoms, variables, single_r2, pair_best, corr, k)
    text, r2, formulas = np.full(F, "", dtype=object), np.full(F, np.nan), [None] * F
    for lo in range(0, F, group):  # groups of features only bound memory (each feature's formula is its own)
        sl = slice(lo, min(lo + group, F))
        text[sl], r2[sl], formulas[sl] = _describe_group(atoms, g, (g0, g1), (f0[:, sl], f1[:, sl]), cand[sl], k)
    return Descriptions(text, r2, formulas)


def _describe_group(atoms, g, gs, fs, cand, k):
    """Formulas of a group of features: ground truth ``g`` (both folds) and ``gs``, features ``fs`` per fold,
    candidate atoms ``cand (F, k)``."""
    F = cand.shape[0]
    used = np.unique(cand)
    pos = {int(a): i for i, a in enumerate(used)}
    ci = np.vectorize(pos.get)(cand)  # (F, k) into the used atoms
    B = max(atoms[a].n_bins for a in used)
    gk, fk = tuple(x.astype(np.float64) for x in gs), tuple(x.tocsr() for x in fs)
    tf = [Transforms(atoms[a], g, gk) for a in used]
    fc = [x.tocsc() for x in fk]  # a feature's column: its nonzeros' rows and values
    bk = [np.stack([atoms[a].bins(x) for a in used]) for x in gk]  # per fold (A_u, N_k)
    # the transforms' mean over each bin (both folds): the factor values of the search
    H = np.zeros((len(used), B, T))
    for i, t in enumerate(tf):
        b = np.concatenate([bk[0][i], bk[1][i]])
        cnt = np.maximum(np.bincount(b, minlength=B), 1)
        for tt in range(T):
            H[i, :, tt] = np.bincount(b, weights=t.values(g, tt, b), minlength=B) / cnt
    # totals per fold: count, sum, sum of squares, total sum of squares about the mean
    tot = np.array([[x.shape[0] * np.ones(F), np.asarray(x.sum(0)).ravel(), np.asarray(x.multiply(x).sum(0)).ravel()]
                    for x in fk])  # (2, 3, F)
    sst = tot[:, 2] - tot[:, 1] ** 2 / np.maximum(tot[:, 0], 1)
    valid = sst > 1e-12 * np.maximum(tot[:, 2], 1e-30)
    ctx = _Ctx(tot, sst, valid)
    # 1-D and joint-bin sums per feature and candidate slot
    pairs = [(c1, c2) for c1 in range(k) for c2 in range(c1 + 1, k)]
    one = np.zeros((3, 2, F, k, B))
    two = np.zeros((3, 2, F, len(pairs), B, B))
    for fo in (0, 1):
        coo = fk[fo].tocoo()
        i, j, v = coo.row, coo.col, coo.data.astype(np.float64)
        bb = bk[fo]
        for c in range(k):
            idx = j * B + bb[ci[j, c], i]
            one[1, fo, :, c] = np.bincount(idx, v, F * B).reshape(F, B)
            one[2, fo, :, c] = np.bincount(idx, v * v, F * B).reshape(F, B)
        cnt1 = np.stack([np.bincount(bb[a], minlength=B) for a in range(len(used))])  # (A_u, B)
        one[0, fo] = cnt1[ci]
        # token counts per joint bin: once per distinct pair of atoms (feature-independent)
        keys = np.stack([ci[:, c1] * len(used) + ci[:, c2] for c1, c2 in pairs], 1)  # (F, P)
        uniq, inv = np.unique(keys, return_inverse=True)
        jc = np.stack([np.bincount(bb[a1] * B + bb[a2], minlength=B * B)
                       for a1, a2 in (divmod(int(x), len(used)) for x in uniq)]).reshape(-1, B, B)
        two[0, fo] = jc[inv.reshape(F, len(pairs))]
        for p, (c1, c2) in enumerate(pairs):
            idx = (j * B + bb[ci[j, c1], i]) * B + bb[ci[j, c2], i]
            two[1, fo, :, p] = np.bincount(idx, v, F * B * B).reshape(F, B, B)
            two[2, fo, :, p] = np.bincount(idx, v * v, F * B * B).reshape(F, B, B)
    tree = _best_trees(one, two, pairs, ctx)
    prod = _best_products(one, two, pairs, H, ci, np.array([atoms[a].kind == "linear" for a in used]), ctx)
    prod = _third_factor(prod, ci, pairs, H, bk, fc, ctx, k)
    text, r2, formulas = np.full(F, "", dtype=object), np.full(F, np.nan), [None] * F
    for j in range(F):
        if not valid[:, j].any():
            continue
        pr = _exact_product(prod[j], tf, ci[j], gk, bk, fc, j, valid[:, j])
        options = [(tree[j]["r2"] - PENALTY * tree[j]["complexity"], tree[j]["r2"], "tree"),
                   (pr["r2"] - PENALTY * len(pr["factors"]), pr["r2"], "product")]
        _, best_r2, kind = max(options, key=lambda o: (np.nan_to_num(o[0], nan=-np.inf), o[2] == "product"))
        slots = {c: tf[ci[j, c]] for c in range(k)}
        if kind == "tree":
            fm = Formula("tree", tree[j], slots, {}, best_r2)
            fm.values = _leaf_means(fm, bk, ci[j], fc, j)
            formulas[j] = fm
            text[j] = _tree_text(tree[j], one, two, pairs, ci[j], [atoms[a] for a in used], j)
        else:
            a, b, _ = pr["coef"]
            formulas[j] = Formula("product", pr, slots, {0: pr["coef_fold"][0], 1: pr["coef_fold"][1],
                                                          None: (a, b)}, best_r2)
            text[j] = _product_text(pr, tf, ci[j])
        r2[j] = best_r2
    return text, r2, formulas


@dataclass
class _Ctx:
    tot: np.ndarray  # (2, 3, F)
    sst: np.ndarray  # (2, F)
    valid: np.ndarray  # (2, F)

    def loss(self, n, s1, s2):
        """Cross-validated normalised error of cells ``(2, F, ...)``: each fold predicted by the other fold's
        cell means (an empty cell: that fold's mean), mean over the folds of SSE / SST."""
        extra = (1,) * (n.ndim - 2)
        out = 0
        for fo in (0, 1):
            o = 1 - fo
            gm = (self.tot[o, 1] / np.maximum(self.tot[o, 0], 1)).reshape(-1, *extra)
            m = np.where(n[o] > 0, s1[o] / np.maximum(n[o], 1e-12), gm)
            sse = s2[fo] - 2 * m * s1[fo] + n[fo] * m * m
            w = np.where(self.valid[fo], 1 / np.where(self.valid[fo], self.sst[fo], 1), 0).reshape(-1, *extra)
            out = out + sse * w
        return out / np.maximum(self.valid.sum(0), 1).reshape(-1, *extra)

    def affine_r2(self, z1, z2, y1):
        """Cross-validated R^2 of ``a + b z`` from per-fold sums over tokens (each ``(2, F, ...)``) of z, z^2 and
        f z; a, b fitted on one fold, scored on the other."""
        extra = (1,) * (z1.ndim - 2)
        sh = lambda x: x.reshape(-1, *extra)  # noqa: E731
        out = 0
        for fo in (0, 1):
            o = 1 - fo
            n, s = sh(self.tot[o, 0]), sh(self.tot[o, 1])
            var = z2[o] - z1[o] ** 2 / n
            cov = y1[o] - s * z1[o] / n
            ok = var > 1e-12 * np.maximum(z2[o], 1e-30)
            b = np.where(ok, cov / np.where(ok, var, 1), 0)
            a = (s - b * z1[o]) / n
            nb, sb, ssb = sh(self.tot[fo, 0]), sh(self.tot[fo, 1]), sh(self.tot[fo, 2])
            sse = ssb - 2 * a * sb - 2 * b * y1[fo] + nb * a * a + 2 * a * b * z1[fo] + b * b * z2[fo]
            w = np.where(self.valid[fo], 1 / np.where(self.valid[fo], self.sst[fo], 1), 0)
            out = out + sse * sh(w)
        return np.clip(1 - out / sh(np.maximum(self.valid.sum(0), 1)), -1, 1)


def _best_trees(one, two, pairs, ctx: _Ctx) -> list[dict]:
    """Every feature's best depth-2 tree: root atom (a slot), root threshold, each side's split (slot or none)."""
    _, _, F, k, B = one.shape
    big = np.inf
    best = np.full(F, big)
    rec = [None] * F
    cells = lambda x: (x[0], x[1], x[2])  # noqa: E731
    for c in range(k):
        R = one[:, :, :, c]  # (3, 2, F, B)
        P = np.concatenate([np.zeros_like(R[..., :1]), np.cumsum(R, -1)], -1)  # (3, 2, F, B+1)
        tot = P[..., -1:]
        n_pool = P[0].sum(0)  # (F, B+1) pooled counts below t
        ok_t = (n_pool > 0) & (n_pool[:, -1:] - n_pool > 0)
        # side loss without a split
        left0 = ctx.loss(*cells(P))  # (F, B+1)
        right0 = ctx.loss(*cells(tot - P))
        # split on the root atom itself: left side [0,u) + [u,t), right side [t,u) + [u,B)
        Pt, Pu = P[..., :, None], P[..., None, :]  # t, u
        nt, nu = n_pool[:, :, None], n_pool[:, None, :]
        lu = ctx.loss(*cells(Pu + 0 * Pt)) + ctx.loss(*cells(Pt - Pu))
        lu = np.where((nu > 0) & (nt - nu > 0) & (np.arange(B + 1)[None, None] < np.arange(B + 1)[None, :, None]),
                      lu, big)
        ru = ctx.loss(*cells(Pu - Pt)) + ctx.loss(*cells(tot[..., None] - Pu))
        ru = np.where((nu - nt > 0) & (n_pool[:, -1:, None] - nu > 0), ru, big)
        opts_l = [(left0, -1, np.zeros((F, B + 1), int))]
        opts_r = [(right0, -1, np.zeros((F, B + 1), int))]
        opts_l.append((lu.min(-1), c, lu.argmin(-1)))
        opts_r.append((ru.min(-1), c, ru.argmin(-1)))
        for r in range(k):
            if r == c:
                continue
            p = pairs.index((min(c, r), max(c, r)))
            J = two[:, :, :, p] if c < r else two[:, :, :, p].swapaxes(-1, -2)  # (3, 2, F, B_root, B_child)
            C = np.concatenate([np.zeros_like(J[..., :1, :]), np.cumsum(J, -2)], -2)  # (3,2,F,B+1,B): root < t
            for side, S in (("l", C), ("r", C[..., -1:, :] - C)):
                Q = np.concatenate([np.zeros_like(S[..., :1]), np.cumsum(S, -1)], -1)  # (3,2,F,B+1,B+1)
                qn = Q[0].sum(0)
                loss = ctx.loss(*cells(Q)) + ctx.loss(*cells(Q[..., -1:] - Q))
                loss = np.where((qn > 0) & (qn[..., -1:] - qn > 0), loss, big)
                (opts_l if side == "l" else opts_r).append((loss.min(-1), r, loss.argmin(-1)))
        L = np.stack([o[0] for o in opts_l])  # (O, F, B+1)
        Rr = np.stack([o[0] for o in opts_r])
        il, ir = L.argmin(0), Rr.argmin(0)
        total = np.where(ok_t, L.min(0) + Rr.min(0), big)
        t_best = total.argmin(-1)
        val = total[np.arange(F), t_best]
        for j in np.flatnonzero(val < best):
            t = int(t_best[j])
            sl, sr = opts_l[il[j, t]], opts_r[ir[j, t]]
            rec[j] = {"root": c, "t": t, "left": (sl[1], int(sl[2][j, t])), "right": (sr[1], int(sr[2][j, t]))}
            best[j] = val[j]
    out = []
    for j in range(F):
        if rec[j] is None:
            out.append({"r2": np.nan, "complexity": 0})
            continue
        slots = {rec[j]["root"]} | {s for s, _ in (rec[j]["left"], rec[j]["right"]) if s >= 0}
        splits = sum(s >= 0 for s, _ in (rec[j]["left"], rec[j]["right"]))
        out.append({**rec[j], "r2": float(np.clip(1 - best[j], -1, 1)), "complexity": len(slots) + (splits == 2)})
    return out


def _best_products(one, two, pairs, H, ci, linear, ctx: _Ctx) -> list[dict]:
    """Every feature's best one- and two-factor product (binned factor values); ``linear (A_u,)``: which atoms are
    not circular. Each record also keeps ``pairs``: the :data:`BEAM` best two-factor products over the candidate
    pairs (each pair's best), best first, on which the third factor is sought."""
    F, k = ci.shape
    best = np.full(F, -np.inf)
    rec = [None] * F
    best1 = np.full(F, -np.inf)
    for c in range(k):
        Hc = H[ci[:, c]]  # (F, B, T)
        z1 = np.einsum("kfb,fbt->kft", one[0, :, :, c], Hc)
        z2 = np.einsum("kfb,fbt->kft", one[0, :, :, c], Hc ** 2)
        y1 = np.einsum("kfb,fbt->kft", one[1, :, :, c], Hc)
        r2 = ctx.affine_r2(z1, z2, y1) - PENALTY  # (F, T)
        # alone, (hi - x) and (x - median) are x, and (1 - rank) and (rank - 1/2) are rank (affine in the fit)
        r2[np.ix_(linear[ci[:, c]], [1, 2, 4, 5])] = -np.inf
        t = r2.argmax(1)
        v = r2[np.arange(F), t]
        for j in np.flatnonzero(v > best1):
            best1[j] = v[j]
            if v[j] > best[j]:
                best[j], rec[j] = v[j], {"factors": [(c, int(t[j]))]}
    pair_v, pair_t = np.full((F, len(pairs)), -np.inf), np.zeros((F, len(pairs)), np.int64)
    for p, (c1, c2) in enumerate(pairs):
        H1, H2 = H[ci[:, c1]], H[ci[:, c2]]  # (F, B, T)
        H1t, H1s, H2s = H1.swapaxes(1, 2)[None], (H1 ** 2).swapaxes(1, 2)[None], (H2 ** 2)[None]
        z1 = H1t @ two[0, :, :, p] @ H2[None]  # (2, F, T, T)
        z2 = H1s @ two[0, :, :, p] @ H2s
        y1 = H1t @ two[1, :, :, p] @ H2[None]
        r2 = (ctx.affine_r2(z1, z2, y1) - 2 * PENALTY).reshape(F, T * T)
        r2[ci[:, c1] == ci[:, c2]] = -np.inf  # a product of two distinct atoms
        t = r2.argmax(1)
        v = r2[np.arange(F), t]
        pair_v[:, p], pair_t[:, p] = v, t
        for j in np.flatnonzero(v > best):
            best[j], rec[j] = v[j], {"factors": [(c1, int(t[j] // T)), (c2, int(t[j] % T))]}
    out = [r if r is not None else {"factors": [(0, 0)]} for r in rec]
    for j in range(F):
        order = [p for p in np.argsort(-pair_v[j], kind="stable")[:BEAM] if np.isfinite(pair_v[j, p])]
        out[j]["pairs"] = [[(pairs[p][0], int(pair_t[j, p] // T)), (pairs[p][1], int(pair_t[j, p] % T))]
                           for p in order]
    return out


def _third_factor(prod, ci, pairs, H, bk, fk, ctx: _Ctx, k: int) -> list[dict]:
    """A third factor on each of a feature's :data:`BEAM` best two-factor products: the best three-factor product
    found (binned values) becomes ``third`` (its two base factors and the third), kept later only when it beats the
    best product by more than PENALTY per extra factor. A beam, not the best pair alone: a conjunction of three cuts
    is often best approximated by a pair that holds only one of its concepts (plus a near-alias), so the greedy
    third factor on that pair cannot complete it (dev seeds 0-2 of the planted grammar)."""
    F = len(prod)
    B = H.shape[1]
    for j in range(F):
        if not ctx.valid[:, j].any():
            continue
        sub = _Ctx(ctx.tot[:, :, j:j + 1], ctx.sst[:, j:j + 1], ctx.valid[:, j:j + 1])
        cols = [_column(fk[fo], j) for fo in (0, 1)]
        best_v, best_f = -np.inf, None
        for fac in prod[j].get("pairs", []):
            base = []
            for fo in (0, 1):
                z = H[ci[j, fac[0][0]], bk[fo][ci[j, fac[0][0]]], fac[0][1]] * \
                    H[ci[j, fac[1][0]], bk[fo][ci[j, fac[1][0]]], fac[1][1]]
                base.append((z, *cols[fo]))
            for c in range(k):
                if c in (fac[0][0], fac[1][0]) or ci[j, c] in (ci[j, fac[0][0]], ci[j, fac[1][0]]):
                    continue
                a = ci[j, c]
                s = np.zeros((3, 2, B))
                for fo, (z, idx, val) in enumerate(base):
                    b = bk[fo][a]
                    s[0, fo] = np.bincount(b, z, B)
                    s[1, fo] = np.bincount(b, z * z, B)
                    s[2, fo] = np.bincount(b[idx], z[idx] * val, B)
                z1 = (s[0] @ H[a])[:, None]  # (2, 1, T)
                z2 = (s[1] @ H[a] ** 2)[:, None]
                y1 = (s[2] @ H[a])[:, None]
                r2 = sub.affine_r2(z1, z2, y1)[0]
                t = int(r2.argmax())
                if r2[t] > best_v:
                    best_v, best_f = r2[t], list(fac) + [(c, t)]
        if best_f is not None:
            prod[j]["third"] = (best_f, best_v)
    return prod


def _exact_product(rec, tf, ci_j, gk, bk, fk, j, valid) -> dict:
    """Cross-validated R^2 of a product on the exact transform values (two and three factors both tried)."""
    def score(factors):
        out, n = 0.0, 0
        zs, ys = [], []
        for fo in (0, 1):
            z = np.ones(len(gk[fo]))
            for c, t in factors:
                z = z * tf[ci_j[c]].values(gk[fo], t, bk[fo][ci_j[c]])
            zs.append(z)
            y = np.zeros(len(gk[fo]))
            rows, vals = _column(fk[fo], j)
            y[rows] = vals
            ys.append(y)
        coef = []
        for fo in (0, 1):
            z, y = zs[fo], ys[fo]
            vz = z.var()
            b = np.cov(z, y, bias=True)[0, 1] / vz if vz > 1e-12 * max((z * z).mean(), 1e-30) else 0.0
            coef.append((y.mean() - b * z.mean(), b))
        for fo in (0, 1):
            if not valid[fo]:
                continue
            a, b = coef[1 - fo]
            y = ys[fo]
            out += 1 - ((y - a - b * zs[fo]) ** 2).sum() / max(((y - y.mean()) ** 2).sum(), 1e-30)
            n += 1
        y_all, z_all = np.concatenate(ys), np.concatenate(zs)
        vz = z_all.var()
        b = np.cov(z_all, y_all, bias=True)[0, 1] / vz if vz > 1e-12 else 0.0
        return float(np.clip(out / max(n, 1), -1, 1)), (float(y_all.mean() - b * z_all.mean()), float(b),
                                                       float(np.sqrt(vz))), [tuple(map(float, c)) for c in coef]

    factors = list(rec["factors"])
    r2, coef, per_fold = score(factors)
    if "third" in rec:
        f3 = list(rec["third"][0])
        r3, c3, p3 = score(f3)
        if r3 - PENALTY * (3 - len(factors)) > r2:
            factors, r2, coef, per_fold = f3, r3, c3, p3
    return {"factors": factors, "r2": r2, "coef": coef, "coef_fold": per_fold}


def _leaf_means(fm: Formula, bk, ci_j, fk, j) -> dict:
    """A tree's leaf means fitted on each image fold and on both (a leaf empty in a fold: that fold's mean)."""
    sums = np.zeros((2, 2, 4))
    for fo in (0, 1):
        leaf = fm.leaves(lambda s: bk[fo][ci_j[s]])
        y = np.zeros(len(leaf))
        rows, vals = _column(fk[fo], j)
        y[rows] = vals
        sums[fo] = np.bincount(leaf, minlength=4), np.bincount(leaf, y, 4)

    def means(n, s1):
        return np.where(n > 0, s1 / np.maximum(n, 1), s1.sum() / max(n.sum(), 1)).tolist()

    return {0: means(*sums[0]), 1: means(*sums[1]), None: means(*sums.sum(0))}


def _column(csc, j: int):
    lo, hi = csc.indptr[j], csc.indptr[j + 1]
    return csc.indices[lo:hi], csc.data[lo:hi].astype(np.float64)


def _fmt(v: float) -> str:
    return f"{v:.3g}"


def _product_text(pr, tf, ci_j) -> str:
    a, b, sd = pr["coef"]
    terms = " * ".join(tf[ci_j[c]].text(t) for c, t in pr["factors"])
    terms = terms if abs(b - 1) < 5e-3 else f"{_fmt(b)} * {terms}"
    if abs(a) <= 0.01 * abs(b) * sd:  # no intercept worth writing
        return terms
    return f"{terms} {'+' if a >= 0 else '-'} {_fmt(abs(a))}"


def _tree_text(rec, one, two, pairs, ci_j, atoms_u, j) -> str:
    """``if C: A else B`` with each side a value or ``(x if C' else y)`` (``x * [C']`` when y is about 0)."""
    c, t = rec["root"], rec["t"]
    R = one[:, :, j, c].sum(1)  # (3, B) pooled over folds
    root = atoms_u[ci_j[c]]
    B = R.shape[-1]

    def mean(n, s):
        return s / n if n > 0 else 0.0

    def side(rng, split):
        s, u = split
        in_root = np.zeros(B, bool)
        in_root[rng[0]:rng[1]] = True
        if s < 0:
            return [(None, mean(R[0, in_root].sum(), R[1, in_root].sum()))], None
        if s == c:
            lo = in_root & (np.arange(B) < u)
            hi = in_root & (np.arange(B) >= u)
            return [(False, mean(R[0, lo].sum(), R[1, lo].sum())), (True, mean(R[0, hi].sum(), R[1, hi].sum()))], \
                (root, u)
        p = pairs.index((min(c, s), max(c, s)))
        J = two[:, :, j, p].sum(1)
        J = J if c < s else J.swapaxes(-1, -2)  # (3, B_root, B_child)
        sub = J[:, in_root]  # (3, n, B)
        lo, hi = sub[..., :u].sum((1, 2)), sub[..., u:].sum((1, 2))
        return [(False, mean(lo[0], lo[1])), (True, mean(hi[0], hi[1]))], (atoms_u[ci_j[s]], u)

    def render(leaves, cond):
        if cond is None:
            return _fmt(leaves[0][1])
        (_, lo), (_, hi) = leaves
        atom, u = cond
        up = hi >= lo
        big, small = (hi, lo) if up else (lo, hi)
        cs = condition(atom, u, up)
        if abs(small) <= 0.05 * max(abs(big), 1e-30):
            return f"{_fmt(big)} * [{cs}]"
        return f"({_fmt(big)} if {cs} else {_fmt(small)})"

    left, lc = side((0, t), rec["left"])
    right, rc = side((t, B), rec["right"])
    lm = np.mean([v for _, v in left])
    rm = np.mean([v for _, v in right])
    up = rm >= lm
    a, b = (render(right, rc), render(left, lc)) if up else (render(left, lc), render(right, rc))
    return f"if {condition(root, t, up)}: {a} else {b}"
