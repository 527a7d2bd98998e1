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


class _GatherRows(torch.autograd.Function):
    """``table.index_select(0, idx)`` for a (T, F) float32 table, with the same values and the same gradient (the
    same additions in the same order), faster on a CPU where F is 2: each row's two floats move as one 8-byte word
    (an int64 view forward, a complex64 ``index_add_`` backward; complex addition adds each half as float32 does).
    The table's random rows miss the cache either way; the row-by-row loops of ``index_select``'s own backward (a
    ``scatter_add_`` with a broadcast index) cost about 4x more (measured, one thread: 23 -> 6 ms for 295k rows of a 3 x 2^19-row table of two floats)."""

    @staticmethod
    def forward(ctx, table: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:  # (T, F), (M,) -> (M, F)
        ctx.save_for_backward(idx)
        ctx.rows = len(table)
        if table.shape[1] == 2 and table.dtype == torch.float32 and table.is_contiguous():
            return table.view(torch.int64).view(-1).index_select(0, idx).view(torch.float32).view(len(idx), 2)
        return table.index_select(0, idx)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # (M, F) -> (T, F)
        (idx,) = ctx.saved_tensors
        grad = grad.contiguous()
        if grad.shape[1] == 2 and grad.dtype == torch.float32:
            out = torch.zeros(ctx.rows, dtype=torch.complex64, device=grad.device)
            return torch.view_as_real(out.index_add_(0, idx, torch.view_as_complex(grad))), None
        return grad.new_zeros(ctx.rows, grad.shape[1]).index_add_(0, idx, grad), None


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
            frac = (pos - p0).permute(2, 0, 1)  # (3, N, Lh) in [0, 1]
            hp = (p0.long() * self.primes).permute(2, 0, 1)  # (3, N, Lh): low corner x prime, per axis
            # Per axis, the two corners' hashes and weights (3, 2, N, Lh); the 8 corners are their products over
            # (z, y, x), built with the points in the last axes so that each broadcast runs over long rows.
            h = torch.stack([hp, hp + self.primes[:, None, None]], 1)
            w = torch.stack([1 - frac, frac], 1)
            w8 = (w[2, :, None, None] * w[1, None, :, None] * w[0, None, None, :]).view(8, n, -1)  # (8, N, Lh)
            hh = (h[2, :, None, None] ^ h[1, None, :, None] ^ h[0, None, None, :]).view(8, n, -1)
            idx = (hh & (2 ** self.config.log2_table - 1)) + self.offset  # (8, N, Lh)
            # corners last again, so the gather (and its gradient's sums) run in the order they always did
            idx, w8 = idx.permute(1, 2, 0).contiguous(), w8.permute(1, 2, 0).contiguous()  # (N, Lh, 8)
            feats = _GatherRows.apply(self.table, idx.view(-1)).view(n, -1, 8, self.config.features)  # (N, Lh, 8, F)
            out.append((feats * w8[..., None]).sum(2).flatten(1))  # (N, Lh * F)
        return torch.cat(out, -1)  # (N, L * F), coarse to fine
