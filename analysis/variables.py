"""Concept variables: each named concept of a store, discretised into bins for correlation ratios.

- continuous concept: quantile bins of its pooled value (16 for single-concept scores, 10 for pairs);
- binary concept: bins of the fraction of the footprint where it holds ({0}, (0, .25], ..., {1}); a detection
  target "holds on at least half the footprint";
- categorical concept: the footprint's majority class; one detection target per class present.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

FINE, COARSE = 16, 10
BINARY_EDGES = np.array([1e-6, 0.25, 0.5, 0.75, 1 - 1e-6])
BINARY_COARSE = np.array([1e-6, 1 - 1e-6])


@dataclass
class Variable:
    name: str
    kind: str
    cols: list[int]
    classes: list[str] = field(default_factory=list)
    edges: np.ndarray | None = None
    coarse_edges: np.ndarray | None = None
    named: bool = True

    @property
    def n_bins(self) -> int:
        if self.kind == "categorical":
            return len(self.classes)
        return len(self.edges) + 1

    @property
    def n_coarse(self) -> int:
        if self.kind == "categorical":
            return len(self.classes)
        return len(self.coarse_edges) + 1

    def bins(self, gt: np.ndarray, coarse: bool = False) -> np.ndarray:
        if self.kind == "categorical":
            return gt[:, self.cols].argmax(1)
        return np.searchsorted(self.coarse_edges if coarse else self.edges, gt[:, self.cols[0]], side="right")

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
    known = {c["name"] for c in concepts}
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
        elif c["kind"] == "binary":
            v.edges, v.coarse_edges = BINARY_EDGES, BINARY_COARSE
        else:
            x = sample_gt[:, cols[0]]
            x = x[np.isfinite(x)]
            v.edges = np.unique(np.quantile(x, np.linspace(0, 1, FINE + 1)[1:-1])) if len(x) else np.array([])
            v.coarse_edges = np.unique(np.quantile(x, np.linspace(0, 1, COARSE + 1)[1:-1])) if len(x) else np.array([])
        out.append(v)
    return out
