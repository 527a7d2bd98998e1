"""A multiresolution hash-grid encoding (Instant-NGP, Mueller et al. 2022) in plain PyTorch: no CUDA extension.

``L`` grids from ``min_res`` to ``max_res`` cells per side (geometric steps); each grid's corners index a learned
table of ``F`` features, directly where the grid has at most ``table_size`` corners, by a spatial hash (XOR of
coordinate x prime) where it has more; a point's encoding is each level's trilinear interpolation of its cell's 8
corners, concatenated: ``(N, 3)`` in the unit cube -> ``(N, L * F)``. Collisions are resolved by training: the
MLP after it learns to weigh the levels, and coarse levels (no collisions) carry the smooth part.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# Instant-NGP's primes; the first is 1, so the x coordinate keeps its cache coherence.
_PRIMES = (1, 2654435761, 805459861)


@dataclass
class HashGridConfig:
    levels: int = 8
    """Grid levels (L): resolutions in geometric steps from min_res to max_res."""
    features: int = 2
    """Features per level (F); the encoding has L * F channels."""
    log2_table: int = 19
    """log2 of each level's table rows (T): fine levels with more corners than T share rows by hashing."""
    min_res: int = 16
    """Cells per side of the coarsest level."""
    max_res: int = 256
    """Cells per side of the finest level."""
    init_scale: float = 1e-4
    """Table entries start uniform in +-init_scale (near zero, so every level starts silent)."""

    def __post_init__(self):
        if self.levels < 1 or self.features < 1 or not 4 <= self.log2_table <= 24 or self.min_res < 1 \
                or self.max_res < self.min_res:
            raise ValueError(f"HashGridConfig: levels, features >= 1, log2_table in 4..24, "
                             f"1 <= min_res <= max_res; got {self}")

    @property
    def channels(self) -> int:
        return self.levels * self.features


class HashGrid(nn.Module):
    """``forward(x (N, 3) in [0, 1]) -> (N, levels * features)``; points outside are clamped to the cube."""

    def __init__(self, config: HashGridConfig):
        super().__init__()
        self.config = cfg = config
        growth = math.exp((math.log(cfg.max_res) - math.log(cfg.min_res)) / max(cfg.levels - 1, 1))
        res = [int(math.floor(cfg.min_res * growth ** i + 1e-6)) for i in range(cfg.levels)]  # 1e-6: 4 * 2.0 is 8
        size = 2 ** cfg.log2_table
        # Levels grow finer, so the directly indexed ones come first. Those are dense grids read by grid_sample
        # (one fused trilinear kernel: several times faster on a CPU than gathering 8 corners by index); the hashed
        # ones share one table, so one gather (and one scatter-add backward) serves them all.
        n_dense = sum((r + 1) ** 3 <= size for r in res)
        self.dense = nn.ParameterList(
            nn.Parameter(torch.empty(1, cfg.features, r + 1, r + 1, r + 1).uniform_(-cfg.init_scale, cfg.init_scale))
            for r in res[:n_dense])  # (1, F, z, y, x) corners each
        hashed = res[n_dense:]
        self.register_buffer("res", torch.tensor(hashed, dtype=torch.float32), persistent=False)  # (Lh,)
        self.register_buffer("offset", torch.arange(len(hashed), dtype=torch.long) * size,
                             persistent=False)  # (Lh,) first row of each hashed level in the table
        self.register_buffer("primes", torch.tensor(_PRIMES, dtype=torch.long), persistent=False)
        self.table = nn.Parameter(torch.empty(len(hashed) * size, cfg.features).uniform_(-cfg.init_scale,
                                                                                         cfg.init_scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 or x.shape[-1] != 3:
            raise ValueError(f"HashGrid: expected points of shape (N, 3), got {tuple(x.shape)}")
        n, x = len(x), x.clamp(0, 1)
        g = (x * 2 - 1).view(1, 1, 1, n, 3)  # grid_sample reads (x, y, z) as (W, H, D); corners at -1 and 1
        out = [F.grid_sample(d, g, mode="bilinear", align_corners=True).view(self.config.features, n).t()
               for d in self.dense]  # (N, F) per dense level
        if len(self.res):
            pos = x[:, None, :] * self.res[None, :, None]  # (N, Lh, 3) in cell units
            p0 = pos.floor().clamp(max=self.res[None, :, None] - 1)  # (N, Lh, 3): the cell's low corner
            frac = pos - p0  # (N, Lh, 3) in [0, 1]
            # Per axis, the two corner coordinates (N, Lh, 3, 2) and their weights; the 8 corners are their
            # products, built by broadcasting over (z, y, x) so that no (N, Lh, 8, 3) tensor is made.
            h = (p0.long()[..., None] + torch.arange(2, device=x.device)) * self.primes[:, None]  # (N, Lh, 3, 2)
            w = torch.stack([1 - frac, frac], -1)  # (N, Lh, 3, 2)
            w8 = (w[:, :, 2, :, None, None] * w[:, :, 1, None, :, None] * w[:, :, 0, None, None, :]).view(n, -1, 8)
            hh = h[:, :, 2, :, None, None] ^ h[:, :, 1, None, :, None] ^ h[:, :, 0, None, None, :]
            idx = (hh & (2 ** self.config.log2_table - 1)).view(n, -1, 8) + self.offset[None, :, None]  # (N, Lh, 8)
            feats = self.table.index_select(0, idx.view(-1)).view(n, -1, 8, self.config.features)  # (N, Lh, 8, F)
            out.append((feats * w8[..., None]).sum(2).flatten(1))  # (N, Lh * F)
        return torch.cat(out, -1)  # (N, L * F), coarse to fine
