"""Concept variables: each named concept of a store, discretised into bins for correlation ratios.

- continuous and binary concepts: bins of the pooled value (a binary concept's value is the fraction of the
  footprint where it holds; its detection target is "holds on at least half the footprint"), made by
  :func:`bin_edges` from a sample of tokens: each distinct value its own bin when there are few (a binary fraction
  takes at most stride^2 + 1 values); otherwise an atom at either end of the range (a value that holds a bin's
  share of the tokens, such as the zeros of a sparse concept) its own bin, quantile bins of the rest, and a heavy
  tail split geometrically (bins of 1/2, 1/4, ... of the extreme bin's tokens, at least ``MIN_COUNT`` each) while
  its extreme bin holds more than ``TAIL_SHARE`` of the concept's variance. So the bins that a rare highlight or a
  thin edge falls in are not merged with the bulk (16 equal-count bins put 91% of a highlight's variance into its
  top bin). About ``FINE`` bins for single-concept scores, ``COARSE`` per concept for pairs;
- circular concept (columns ``name.cos``, ``name.sin``): bin 0 where the mean unit vector is shorter than
  ``MIN_RESULTANT`` (no direction), otherwise bins of its angle in (-pi, pi] (:func:`circular_edges`: equal
  sectors and quantiles): the bins partition the circle, so nothing is scored across a wrap at 360 degrees;
- categorical concept: the footprint's majority class; one detection target per class present;
- vector concepts (:data:`VECTORS`: albedo colour, normal, position, the image's colour), each scored as a whole:
  the nearest of about ``FINE`` (``COARSE`` for pairs) k-means centres of its standardised columns on the sample,
  so that a function of colour (a magenta detector, "warm versus cool") is named by colour, not by whichever
  channel carries most of it. A vector is named when all its concepts are.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

FINE, COARSE = 32, 10
MIN_COUNT = 8
"""Fewest sample tokens in a tail bin."""
TAIL_SHARE = 0.01
"""An extreme bin that holds more than this share of the concept's variance is split geometrically."""
MAX_TAIL = 8
"""At most this many geometric splits at each end."""
MIN_RESULTANT = 0.05
"""A circular concept's mean unit vector shorter than this has no direction (its own bin)."""
VECTORS = {
    "albedo": ("albedo_r", "albedo_g", "albedo_b"),
    "normal": ("normal_x", "normal_y", "normal_z"),
    "position": ("position_x", "position_y", "position_z"),
    "colour": ("hue", "saturation", "value"),
}
"""Vector concepts scored as a whole: name -> the concepts whose columns are its components."""


def bin_edges(x: np.ndarray, budget: int, min_count: int = MIN_COUNT) -> np.ndarray:
    """Edges (for ``searchsorted(edges, v, side="right")``) of at most about ``budget`` bins of the values ``x``:
    distinct values when few, else atoms, quantiles of the rest and geometric heavy tails (module docstring)."""
    x = np.asarray(x, np.float64)
    x = x[np.isfinite(x)]
    if not len(x):
        return np.array([])
    u, cnt = np.unique(x, return_counts=True)
    mid = (u[1:] + u[:-1]) / 2
    if len(u) <= budget:
        return mid
    atom = cnt >= max(len(x) / budget, min_count)
    atom[1:-1] = False  # only the ends: a sparse concept's zeros, a saturated value (an interior tie is often one
    # image's constant, such as its floor's normal, whose own bin would be empty in the other image fold)
    k = np.flatnonzero(atom)
    atom_edges = np.concatenate([mid[k[k > 0] - 1], mid[k[k < len(mid)]]])
    lo_hi = [(mid[i - 1] if i > 0 else -np.inf, mid[i] if i < len(mid) else np.inf) for i in k]
    rest = np.repeat(u[~atom], cnt[~atom])
    free = budget - len(k)
    if len(rest) < 2 * min_count or free < 2:
        return np.unique(atom_edges)
    levels = _levels(rest, free, min_count, float(((x - x.mean()) ** 2).sum()))
    q = np.quantile(rest, levels)
    q = q[[not any(a <= e <= b for a, b in lo_hi) for e in q]]  # an atom's bin holds that value alone
    return np.unique(np.concatenate([atom_edges, q]))


def _levels(rest: np.ndarray, free: int, min_count: int, total_ss: float) -> np.ndarray:
    """Quantile levels: uniform, then geometric splits of an extreme bin that holds more than ``TAIL_SHARE`` of the
    concept's variance (its sum of squares about its own mean), within ``free`` bins in all."""
    xs = np.sort(rest)
    n = len(xs)
    c1, c2 = np.concatenate([[0], np.cumsum(xs)]), np.concatenate([[0], np.cumsum(xs * xs)])

    def ss(lo, hi):  # sum of squares of xs[lo:hi] about their mean
        k = max(hi - lo, 1)
        return (c2[hi] - c2[lo]) - (c1[hi] - c1[lo]) ** 2 / k

    m = free
    for _ in range(2):  # once with every bin uniform, once with room made for the tails found
        tails = []
        for side in (1, -1):
            p = 1.0 / m
            for _t in range(MAX_TAIL):
                k = int(round(p * n))
                inside = ss(n - k, n) if side > 0 else ss(0, k)
                if k / 2 < min_count or inside <= TAIL_SHARE * total_ss:
                    break
                p /= 2
                tails.append(1 - p if side > 0 else p)
        if not tails or m == free - len(tails) or free - len(tails) < 4:
            break
        m = max(free - len(tails), 4)
    return np.unique(np.concatenate([np.arange(1, m) / m, tails]))


@dataclass
class Variable:
    name: str
    kind: str
    cols: list[int]
    classes: list[str] = field(default_factory=list)
    edges: np.ndarray | None = None
    coarse_edges: np.ndarray | None = None
    named: bool = True
    scale: tuple | None = None
    """Vectors: the columns' mean and standard deviation (the centres live in standardised units)."""

    @property
    def n_bins(self) -> int:
        if self.kind == "categorical":
            return len(self.classes)
        if self.kind == "vector":
            return len(self.edges)
        return len(self.edges) + 1 + (self.kind == "circular")

    @property
    def n_coarse(self) -> int:
        if self.kind == "categorical":
            return len(self.classes)
        if self.kind == "vector":
            return len(self.coarse_edges)
        return len(self.coarse_edges) + 1 + (self.kind == "circular")

    def bins(self, gt: np.ndarray, coarse: bool = False) -> np.ndarray:
        if self.kind == "categorical":
            return gt[:, self.cols].argmax(1)
        if self.kind == "vector":  # ``edges``: the k-means centres (K, d)
            centres = self.coarse_edges if coarse else self.edges
            x = (np.nan_to_num(np.asarray(gt[:, self.cols], np.float64)) - self.scale[0]) / self.scale[1]
            d = (x * x).sum(1)[:, None] - 2 * x @ centres.T + (centres * centres).sum(1)[None]
            return d.argmin(1)
        edges = self.coarse_edges if coarse else self.edges
        if self.kind == "circular":
            r, ang = _polar(gt[:, self.cols])
            return np.where(r < MIN_RESULTANT, 0, 1 + np.searchsorted(edges, ang, side="right"))
        return np.searchsorted(edges, gt[:, self.cols[0]], side="right")

    def targets(self, present: np.ndarray | None = None) -> list[tuple[str, callable]]:
        """Detection targets: (name, gt -> bool labels)."""
        if self.kind == "binary":
            c = self.cols[0]
            return [(self.name, lambda g, c=c: g[:, c] >= 0.5)]
        if self.kind == "categorical":
            out = []
            for k, cls in enumerate(self.classes):
                if present is None or present[k]:
                    out.append((f"{self.name}={cls}", lambda g, k=k, cols=self.cols: g[:, cols].argmax(1) == k))
            return out
        return []


def build_variables(concepts: list[dict], columns: list[str], sample_gt: np.ndarray,
                    holdout: tuple[str, ...] = ()) -> list[Variable]:
    """Variables for a store's concepts (manifest ``concepts``), with bin edges from a sample of its tokens."""
    names = {c["name"] for c in concepts}
    vectors = {k: v for k, v in VECTORS.items() if set(v) <= names}
    known = names | set(vectors)
    unknown = set(holdout) - known
    if unknown:
        raise ValueError(f"held-out concepts {sorted(unknown)} are not in the store (has: {', '.join(sorted(known))})")
    out = []
    for c in concepts:
        cols = [columns.index(col) for col in c["columns"]]
        v = Variable(c["name"], c["kind"], cols, named=c["name"] not in holdout)
        if c["kind"] == "categorical":
            v.cols = cols[:-1]  # the last column is the purity
            v.classes = [col.split("=", 1)[1] for col in c["columns"][:-1]]
        else:
            if c["kind"] == "circular":
                r, x = _polar(sample_gt[:, cols])
                x = x[r >= MIN_RESULTANT]
                v.edges, v.coarse_edges = circular_edges(x, FINE), circular_edges(x, COARSE)
            else:
                x = sample_gt[:, cols[0]]
                v.edges, v.coarse_edges = bin_edges(x, FINE), bin_edges(x, COARSE)
        out.append(v)
    by_name = {v.name: v for v in out}
    for name, parts in vectors.items():
        cols = [c for p in parts for c in by_name[p].cols]
        x = np.nan_to_num(np.asarray(sample_gt[:, cols], np.float64))
        mu, sd = x.mean(0), np.where(x.std(0) > 0, x.std(0), 1)
        z = (x - mu) / sd
        v = Variable(name, "vector", cols, named=name not in holdout and all(by_name[p].named for p in parts),
                     scale=(mu, sd))
        v.edges, v.coarse_edges = kmeans_centres(z, FINE), kmeans_centres(z, COARSE)
        out.append(v)
    return out


def kmeans_centres(z: np.ndarray, k: int, seed: int = 0, iters: int = 25) -> np.ndarray:
    """About ``k`` distinct k-means centres ``(<= k, d)`` of the rows of ``z`` (k-means++ start, seeded; ties such
    as a floor's one albedo are one centre)."""
    u, w = np.unique(np.round(z, 6), axis=0, return_counts=True)
    if len(u) <= k:
        return u
    rng = np.random.default_rng(seed)
    c = [u[rng.choice(len(u), p=w / w.sum())]]
    d = ((u - c[0]) ** 2).sum(1)
    for _ in range(k - 1):  # k-means++: the next centre far from the chosen ones, in proportion to the weight
        p = w * d
        c.append(u[rng.choice(len(u), p=p / p.sum())] if p.sum() > 0 else u[rng.integers(len(u))])
        d = np.minimum(d, ((u - c[-1]) ** 2).sum(1))
    c = np.array(c)
    for _ in range(iters):
        a = ((u[:, None] - c[None]) ** 2).sum(-1).argmin(1)
        n = np.bincount(a, w, len(c))
        keep = n > 0
        c = np.stack([np.bincount(a, w * u[:, j], len(c)) for j in range(u.shape[1])], 1)[keep] / n[keep, None]
    return np.unique(c, axis=0)


def circular_edges(angle: np.ndarray, budget: int) -> np.ndarray:
    """Edges of about ``budget`` bins of angles in (-pi, pi]: equal sectors (two thirds of the budget: a colour
    wheel, so that a narrow hue range no scene dwells on still has its own bins) and quantile bins of the angles
    (the rest), merged."""
    sectors = max(budget * 2 // 3, 2)
    wheel = -np.pi + 2 * np.pi * np.arange(1, sectors) / sectors
    return np.unique(np.concatenate([wheel, bin_edges(angle, budget - sectors)]))


def _polar(cs: np.ndarray):
    """Length and angle in (-pi, pi] of (cos, sin) rows."""
    cs = np.asarray(cs, np.float64)
    return np.hypot(cs[:, 0], cs[:, 1]), np.arctan2(cs[:, 1], cs[:, 0])
