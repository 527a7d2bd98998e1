"""Procedural solid textures and image textures, evaluated exactly at any local 3D point.

Solid textures need no UV map, so the albedo of any surface point (rendered or queried) is one formula of its local
coordinates. Image textures use a spherical projection around the local y axis and nearest-texel lookup.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from frobnolab.errors import unknown

#: Material classes, in the order of the ``material`` buffer (0 is the background).
MATERIAL_CLASSES = ("background", "plain", "checker", "stripes", "noise", "image")


@dataclass
class Texture:
    """kind: one of MATERIAL_CLASSES[1:]; ``scale`` is cells per local unit; ``color2`` linear RGB."""

    kind: str = "plain"
    scale: float = 2.0
    color2: np.ndarray = field(default_factory=lambda: np.ones(3))
    seed: int = 0
    image: np.ndarray | None = None  # (h, w, 3) linear RGB, for kind == "image"

    def albedo(self, p_N3: np.ndarray, color: np.ndarray) -> np.ndarray:
        """Linear albedo ``(N, 3)`` at local points ``(N, 3)`` for a surface of base ``color``."""
        p = np.asarray(p_N3, dtype=np.float64)
        n = len(p)
        if self.kind == "plain":
            return np.broadcast_to(color, (n, 3)).astype(np.float64)
        if self.kind == "image":
            h, w, _ = self.image.shape
            u = np.arctan2(p[:, 2], p[:, 0]) / (2 * np.pi) + 0.5
            v = 0.5 - np.arctan2(p[:, 1], np.hypot(p[:, 0], p[:, 2])) / np.pi
            i = np.clip((v * h).astype(int), 0, h - 1)
            j = np.clip((u * w).astype(int), 0, w - 1)
            return self.image[i, j] * color
        if self.kind == "checker":
            cell = np.floor(p * self.scale)
            t = ((cell[:, 0] + cell[:, 1] + cell[:, 2]) % 2).astype(np.float64)  # sum(axis=1), in its order
        elif self.kind == "stripes":
            t = (np.floor(p[:, 1] * self.scale) % 2).astype(np.float64)
        elif self.kind == "noise":
            t = value_noise(p * self.scale, self.seed)
        else:
            raise unknown("texture kind", self.kind, ("plain", "image", "checker", "stripes", "noise"))
        # Computed as (3, N): the same products as (1 - t)[:, None] * color + ..., broadcast along N (fast) instead
        # of along a last axis of 3.
        return np.ascontiguousarray((np.multiply.outer(color, 1 - t) + np.multiply.outer(self.color2, t)).T)


def _lattice(ijk_N3: np.ndarray, seed: int) -> np.ndarray:
    """A deterministic pseudo-random value in [0, 1) per integer lattice point (integer hashing)."""
    h = ijk_N3.astype(np.int64) * np.array([73856093, 19349663, 83492791], dtype=np.int64)
    x = (h[:, 0] ^ h[:, 1] ^ h[:, 2] ^ np.int64(seed * 2654435761 % (1 << 31))) & 0xFFFFFFFF
    x = (x ^ (x >> 16)) * 0x45D9F3B & 0xFFFFFFFF
    x = (x ^ (x >> 16)) * 0x45D9F3B & 0xFFFFFFFF
    x = x ^ (x >> 16)
    return (x & 0xFFFFFF).astype(np.float64) / float(1 << 24)


def value_noise(p_N3: np.ndarray, seed: int = 0) -> np.ndarray:
    """Trilinear value noise with smoothstep weights, in [0, 1], ``(N,)``."""
    base = np.floor(p_N3)
    f = p_N3 - base
    w = f * f * (3 - 2 * f)
    out = np.zeros(len(p_N3))
    for dx in (0, 1):
        for dy in (0, 1):
            for dz in (0, 1):
                corner = _lattice(base + np.array([dx, dy, dz]), seed)
                weight = (w[:, 0] if dx else 1 - w[:, 0]) * (w[:, 1] if dy else 1 - w[:, 1])
                out += corner * weight * (w[:, 2] if dz else 1 - w[:, 2])
    return out
