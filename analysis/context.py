"""Context: the ground truth of a token's neighbourhood, beside that of its footprint.

A deep layer's token sees its receptive field, not only its footprint: a feature can be a function of what is around
it (the edge of an object two cells away, the depth of the surroundings). With ``ExtractConfig.context = (3, 5)``,
every concept of an image store also gets copies averaged over the ``k x k`` tokens centred on each token (the mean
of the footprint values of the cells of the window inside the image: the concept pooled over a window ``k`` times
the footprint's side), stored as concepts ``NAME@k`` of the same kind (a categorical copy holds class fractions and
their maximum as its purity; a circular one the mean unit vector). They are ordinary concepts to the scorer: named
(the neighbourhood's depth is still depth), binned and described like any other, and inputs of the scene R^2.
"""

from __future__ import annotations

import numpy as np


def context_name(name: str, k: int) -> str:
    return f"{name}@{k}"


def context_concepts(concepts: list[dict], scales) -> list[dict]:
    """Manifest entries ``{name, kind, columns, description}`` of the context copies of ``concepts`` (manifest
    entries), scale by scale."""
    out = []
    for k in scales:
        for c in concepts:
            name = context_name(c["name"], k)
            out.append({"name": name, "kind": c["kind"], "columns": [name + col[len(c["name"]):]
                                                                      for col in c["columns"]],
                        "description": f"{c['name']} averaged over the {k}x{k} tokens around the token"})
    return out


def check_scales(scales):
    for k in scales:
        if not isinstance(k, int) or k < 3 or k % 2 == 0:
            raise ValueError(f"context scales are odd window sizes in tokens >= 3, got {tuple(scales)}")


def box_mean(grid_BhwG: np.ndarray, k: int) -> np.ndarray:
    """The mean over the ``k x k`` cells centred on each cell, of the cells inside the grid ``(B, h, w, G)``."""
    b, h, w, G = grid_BhwG.shape
    r = k // 2
    x = np.asarray(grid_BhwG, np.float64)
    S = np.zeros((b, h + 1, w + 1, G))
    S[:, 1:, 1:] = x.cumsum(1).cumsum(2)
    N = np.zeros((h + 1, w + 1))
    N[1:, 1:] = np.ones((h, w)).cumsum(0).cumsum(1)
    y0, y1 = np.clip(np.arange(h) - r, 0, h), np.clip(np.arange(h) + r + 1, 0, h)
    x0, x1 = np.clip(np.arange(w) - r, 0, w), np.clip(np.arange(w) + r + 1, 0, w)
    box = lambda A: (A[:, y1][:, :, x1] - A[:, y0][:, :, x1] - A[:, y1][:, :, x0]  # noqa: E731
                     + A[:, y0][:, :, x0])
    return box(S) / box(N[None, ..., None])


def add_context(gt_NG: np.ndarray, grid: tuple[int, int, int], concepts: list[dict], scales) -> np.ndarray:
    """The footprint's ground truth ``(B * h * w, G)`` (image, row, column order; ``grid = (B, h, w)``) followed by
    its context copies, scale by scale, in the columns of :func:`context_concepts`."""
    if not scales:
        return gt_NG
    b, h, w = grid
    x = gt_NG.reshape(b, h, w, -1)
    out = [gt_NG]
    starts = np.cumsum([0] + [len(c["columns"]) for c in concepts])
    for k in scales:
        m = box_mean(x, k)
        for c, s0 in zip(concepts, starts):
            if c["kind"] == "categorical":  # the purity of the window's class fractions, not their mean purity
                n = len(c["columns"]) - 1
                m[..., s0 + n] = m[..., s0:s0 + n].max(-1)
        out.append(m.reshape(b * h * w, -1).astype(gt_NG.dtype))
    return np.concatenate(out, -1)
