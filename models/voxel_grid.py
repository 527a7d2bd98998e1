"""A dense voxel grid (Plenoxels-style, no MLP): the baseline the coordinate field is measured beside.

Every voxel corner of a ``res^3`` grid over the field's box holds a raw density and, per colour channel, the
coefficients of real spherical harmonics up to ``sh_degree`` (view dependence); a point's values are the trilinear
interpolation of its cell's corners (``F.grid_sample``). It has the field's interface (``forward(points, dirs) ->
(sigma, rgb)``, ``occupancy``, ``lo``/``hi``, ``config.aabb``/``config.background``), the same density activation
and the same occupancy threshold, so ``render_rays``, ``train_field`` and ``evaluate_field`` take it unchanged.

Hook points (inputs are points ``(N, 3)``, tokens are points):

| name | path | output shape | meaning |
| --- | --- | --- | --- |
| voxel | ``interp`` | (N, 1 + 3 * (sh_degree + 1)^2) | the interpolated voxel values (raw density, SH coefficients) |
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .field import OCC_STEP
from .hooks import HookPoint


@dataclass
class VoxelGridConfig:
    res: int = 96
    """Voxel corners per side of the grid (res^3 corners over the box)."""
    sh_degree: int = 1
    """Degree of the view-dependent colour's spherical harmonics (0: a colour per voxel, 1: + 3 linear terms)."""
    aabb: tuple[tuple[float, float, float], tuple[float, float, float]] = ((-1.6, -0.15, -1.6), (1.6, 1.3, 1.6))
    """World box the grid spans (min corner, max corner); nothing lives outside."""
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """Colour composited behind the grid (the family's background, in sRGB)."""
    init_density: float = -2.0
    """Raw density every voxel starts at (softplus(raw - 1) ~ 0.05: nearly empty, still with gradient)."""
    density_scale: float = 25.0
    """Raw density = stored value x this. Adam moves each stored value by about the learning rate per step, and an
    opaque surface needs a raw density near 40 (occupancy > 0.5 at sigma > 35): unscaled, a few hundred steps
    cannot get there."""

    def __post_init__(self):
        self.aabb = tuple(tuple(float(v) for v in c) for c in self.aabb)
        self.background = tuple(float(v) for v in self.background)
        if self.res < 2 or self.sh_degree not in (0, 1) or self.density_scale <= 0:
            raise ValueError(f"VoxelGridConfig: res >= 2, sh_degree 0 or 1, density_scale > 0; got {self}")

    @property
    def channels(self) -> int:
        return 1 + 3 * (self.sh_degree + 1) ** 2


def _sh(d: torch.Tensor, degree: int) -> torch.Tensor:  # unit dirs (N, 3) -> real SH basis (N, (degree + 1)^2)
    c0 = torch.full_like(d[:, :1], 0.28209479177387814)
    if degree == 0:
        return c0
    return torch.cat([c0, -0.4886025119029199 * d[:, 1:2], 0.4886025119029199 * d[:, 2:3],
                      -0.4886025119029199 * d[:, 0:1]], -1)


class _Interp(nn.Module):
    """Trilinear lookup of a grid (1, C, R, R, R) at points (N, 3) in [-1, 1] -> (N, C); its own module so that a
    hook can read (or edit) the interpolated values."""

    def forward(self, grid: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        # grid_sample reads its last coordinate axis as (x, y, z) = (W, H, D)
        out = F.grid_sample(grid, u.view(1, 1, 1, -1, 3), mode="bilinear", padding_mode="border",
                            align_corners=True)  # (1, C, 1, 1, N)
        return out.view(grid.shape[1], -1).t()


class VoxelGrid(nn.Module):
    """``forward(points (N, 3), dirs (N, 3)) -> (sigma (N,), rgb (N, 3) in [0, 1])``; world coordinates."""

    def __init__(self, config: VoxelGridConfig | None = None):
        super().__init__()
        self.config = cfg = config or VoxelGridConfig()
        self.register_buffer("lo", torch.tensor(cfg.aabb[0]), persistent=False)
        self.register_buffer("hi", torch.tensor(cfg.aabb[1]), persistent=False)
        grid = torch.zeros(1, cfg.channels, cfg.res, cfg.res, cfg.res)
        grid[:, 0] = cfg.init_density / cfg.density_scale
        self.grid = nn.Parameter(grid)  # (1, 1 + 3 * SH, D=z, H=y, W=x)
        self.interp = _Interp()

    @property
    def hook_root(self) -> nn.Module:
        return self

    @property
    def hook_points(self) -> list[HookPoint]:
        return [HookPoint("voxel", "interp", f"the interpolated voxel values ({self.config.channels}: raw density, "
                                             "then the colour's SH coefficients)")]

    def _values(self, x: torch.Tensor):  # (N, 3) -> raw density (N,), SH coefficients (N, 3, K), inside (N,)
        v = self.interp(self.grid, (x - self.lo) / (self.hi - self.lo) * 2 - 1)
        inside = ((x >= self.lo) & (x <= self.hi)).all(-1)
        return v[:, 0] * self.config.density_scale, v[:, 1:].view(len(x), 3, -1), inside

    def forward(self, x: torch.Tensor, d: torch.Tensor):
        if x.ndim != 2 or x.shape[-1] != 3 or d.shape != x.shape:
            raise ValueError(f"VoxelGrid: expected points and dirs of shape (N, 3), got {tuple(x.shape)}, "
                             f"{tuple(d.shape)}")
        raw, sh, inside = self._values(x)
        sigma = F.softplus(raw - 1.0) * inside
        rgb = torch.sigmoid((sh * _sh(d, self.config.sh_degree)[:, None, :]).sum(-1))
        return sigma, rgb

    def occupancy(self, x: torch.Tensor) -> torch.Tensor:
        """Probability-like occupancy in [0, 1] at points (N, 3): 1 - exp(-sigma * OCC_STEP), as the field's."""
        raw, _, inside = self._values(x)
        return 1 - torch.exp(-F.softplus(raw - 1.0) * inside * OCC_STEP)
