"""Edge maps from exact buffers: a pixel is on an edge when it differs enough from one of its 4 neighbours.

Both pixels of a differing pair are marked, so edges are two pixels wide and symmetric.
"""

from __future__ import annotations

import numpy as np

DEPTH_EDGE_REL = 0.05  # relative jump in ray distance that counts as a depth discontinuity
CREASE_DEG = 30.0  # angle between neighbouring normals of one instance that counts as a crease
ALBEDO_EDGE = 0.1  # largest per-channel jump in linear albedo that counts as an albedo edge


def _mark(diff_fn, *maps):
    """OR of ``diff_fn(a, b)`` over right and down neighbours, marked on both pixels of each pair."""
    h, w = maps[0].shape[:2]
    out = np.zeros((h, w), dtype=bool)
    for axis in (0, 1):
        # Views, not copies: each pixel (a) and its down (axis 0) or right (axis 1) neighbour (b).
        a = [m[:-1] if axis == 0 else m[:, :-1] for m in maps]
        b = [m[1:] if axis == 0 else m[:, 1:] for m in maps]
        d = diff_fn(*a, *b)
        if axis == 0:
            out[:-1] |= d
            out[1:] |= d
        else:
            out[:, :-1] |= d
            out[:, 1:] |= d
    return out


def silhouette(instance_HW):
    return _mark(lambda a, b: a != b, instance_HW)


def depth_edge(distance_HW, instance_HW):
    def diff(da, ia, db, ib):
        fg_a, fg_b = ia > 0, ib > 0
        jump = np.abs(da - db) > DEPTH_EDGE_REL * np.maximum(np.minimum(da, db), 1e-9)
        return (fg_a != fg_b) | (fg_a & fg_b & jump)

    return _mark(diff, distance_HW, instance_HW)


def crease(normal_HW3, instance_HW):
    cos_t = np.cos(np.radians(CREASE_DEG))

    def diff(na, ia, nb, ib):
        return (ia == ib) & (ia > 0) & (np.einsum("...k,...k->...", na, nb) < cos_t)

    return _mark(diff, normal_HW3, instance_HW)


def albedo_edge(albedo_HW3):
    def diff(a, b):
        # The largest channel jump, as two np.maximum (exact; numpy's max over a last axis of 3 is slow).
        jump = np.abs(a - b)
        return np.maximum(np.maximum(jump[..., 0], jump[..., 1]), jump[..., 2]) > ALBEDO_EDGE

    return _mark(diff, albedo_HW3)
