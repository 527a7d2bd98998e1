"""A NeRF-style coordinate field: encoded position -> MLP trunk -> density, plus view-dependent colour.

The position encoding is ``FieldConfig.encoding``: ``fourier`` (NeRF's sines and cosines, then a wide MLP) or
``hash`` (a multiresolution hash grid, ``models/hashgrid.py``, concatenated with the Fourier features of
``n_freqs`` octaves, then a small MLP: the grid holds the detail, so it learns in far fewer steps, each cheaper).

Its optimal output is read off the scene we built: density is the scene's occupancy, colour at a surface point is the
exact composed radiance seen along the ray (``frobnolab.scenes``). Volume rendering composites over the family's
background colour, so empty space and dark surfaces are not confused (a black background fills with floaters).

Hook points (inputs are points ``(N, 3)``, tokens are points):

| name | path | output shape | meaning |
| --- | --- | --- | --- |
| encoding | ``encoder`` | (N, levels * features) | the hash grid's interpolated features (``hash`` only) |
| trunk{i} | ``trunk.{i}`` | (N, hidden) | hidden layer i of the position MLP (after ReLU) |
| color_hidden | ``color.1`` | (N, hidden // 2) | the view-dependent colour head's hidden layer |
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .hashgrid import HashGrid, HashGridConfig
from .hooks import HookPoint

OCC_STEP = 0.02  # world units: density sigma counts as "occupied" where 1 - exp(-sigma * OCC_STEP) > 0.5


@dataclass
class FieldConfig:
    n_freqs: int = 8
    """Fourier octaves of the position encoding (frequencies 2^0 .. 2^(n_freqs-1), times pi)."""
    dir_freqs: int = 3
    """Fourier octaves of the view-direction encoding."""
    hidden: int = 128
    """Width of the trunk's hidden layers."""
    layers: int = 4
    """Hidden layers in the trunk."""
    aabb: tuple[tuple[float, float, float], tuple[float, float, float]] = ((-1.6, -0.15, -1.6), (1.6, 1.3, 1.6))
    """World box the field lives in (min corner, max corner); rays are sampled inside it, nothing lives outside."""
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """Colour composited behind the field (the family's background, in sRGB)."""
    encoding: str = "fourier"
    """Position encoding: fourier (Fourier features of n_freqs octaves) or hash (the hash grid ``grid``, beside the
    Fourier features of n_freqs octaves; n_freqs 0 passes the coordinates alone)."""
    grid: HashGridConfig = field(default_factory=HashGridConfig)
    """The hash grid (encoding hash only)."""

    def __post_init__(self):
        if isinstance(self.grid, dict):  # from a saved model.json
            self.grid = HashGridConfig(**self.grid)
        if self.encoding not in ("fourier", "hash"):
            raise ValueError(f"FieldConfig.encoding must be fourier or hash, got {self.encoding!r}")
        self.aabb = tuple(tuple(float(v) for v in c) for c in self.aabb)
        self.background = tuple(float(v) for v in self.background)
        if self.layers < 1 or self.hidden < 2 or self.n_freqs < 0 or self.dir_freqs < 0:
            raise ValueError(f"FieldConfig: layers >= 1, hidden >= 2, frequencies >= 0; got {self}")


def fourier(x: torch.Tensor, n: int) -> torch.Tensor:  # (N, D) -> (N, D * (1 + 2n))
    if n == 0:
        return x
    freqs = (2.0 ** torch.arange(n, device=x.device, dtype=x.dtype)) * math.pi
    xf = x[..., None] * freqs  # (N, D, n)
    return torch.cat([x, torch.sin(xf).flatten(-2), torch.cos(xf).flatten(-2)], dim=-1)


class CoordinateField(nn.Module):
    """``forward(points (N, 3), dirs (N, 3)) -> (sigma (N,), rgb (N, 3) in [0, 1])``; world coordinates."""

    def __init__(self, config: FieldConfig | None = None):
        super().__init__()
        self.config = cfg = config or FieldConfig()
        lo, hi = torch.tensor(cfg.aabb[0]), torch.tensor(cfg.aabb[1])
        self.register_buffer("lo", lo, persistent=False)
        self.register_buffer("hi", hi, persistent=False)
        d_in = 3 * (1 + 2 * cfg.n_freqs)
        if cfg.encoding == "hash":
            self.encoder = HashGrid(cfg.grid)
            d_in += cfg.grid.channels
        widths = [d_in] + [cfg.hidden] * cfg.layers
        self.trunk = nn.ModuleList(nn.Sequential(nn.Linear(a, b), nn.ReLU()) for a, b in zip(widths, widths[1:]))
        self.density = nn.Linear(cfg.hidden, 1)
        d_dir = 3 * (1 + 2 * cfg.dir_freqs)
        self.color = nn.Sequential(nn.Linear(cfg.hidden + d_dir, cfg.hidden // 2), nn.ReLU(),
                                   nn.Linear(cfg.hidden // 2, 3))

    @property
    def hook_root(self) -> nn.Module:
        return self

    @property
    def hook_points(self) -> list[HookPoint]:
        pts = [HookPoint("encoding", "encoder", f"the hash grid's features ({self.config.grid.channels} channels: "
                         f"{self.config.grid.levels} levels x {self.config.grid.features})")] \
            if self.config.encoding == "hash" else []
        pts += [HookPoint(f"trunk{i}", f"trunk.{i}", f"trunk hidden layer {i} ({self.config.hidden} units)")
               for i in range(self.config.layers)]
        pts.append(HookPoint("color_hidden", "color.1", "the colour head's hidden layer (after ReLU)"))
        return pts

    def features(self, x: torch.Tensor) -> torch.Tensor:  # (N, 3) -> (N, hidden)
        u = (x - self.lo) / (self.hi - self.lo)  # (N, 3) in [0, 1] inside the box
        h = fourier(u * 2 - 1, self.config.n_freqs)
        if self.config.encoding == "hash":
            h = torch.cat([self.encoder(u), h], -1)
        for layer in self.trunk:
            h = layer(h)
        return h

    def forward(self, x: torch.Tensor, d: torch.Tensor):
        if x.ndim != 2 or x.shape[-1] != 3 or d.shape != x.shape:
            raise ValueError(f"CoordinateField: expected points and dirs of shape (N, 3), got {tuple(x.shape)}, "
                             f"{tuple(d.shape)}")
        h = self.features(x)
        inside = ((x >= self.lo) & (x <= self.hi)).all(-1)
        sigma = F.softplus(self.density(h)[:, 0] - 1.0) * inside
        rgb = torch.sigmoid(self.color(torch.cat([h, fourier(d, self.config.dir_freqs)], -1)))
        return sigma, rgb

    def occupancy(self, x: torch.Tensor) -> torch.Tensor:
        """Probability-like occupancy in [0, 1] at points (N, 3): 1 - exp(-sigma * OCC_STEP)."""
        h = self.features(x)
        inside = ((x >= self.lo) & (x <= self.hi)).all(-1)
        return 1 - torch.exp(-F.softplus(self.density(h)[:, 0] - 1.0) * inside * OCC_STEP)


def ray_box(o: torch.Tensor, d: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor):
    """Entry and exit distances of rays (N, 3) through an axis-aligned box; exit < entry where they miss."""
    inv = 1.0 / torch.where(d.abs() < 1e-12, torch.full_like(d, 1e-12), d)
    t0, t1 = (lo - o) * inv, (hi - o) * inv
    near = torch.minimum(t0, t1).amax(-1).clamp(min=0.0)
    far = torch.maximum(t0, t1).amin(-1)
    return near, far


@dataclass
class RenderOut:
    rgb: torch.Tensor  # (R, 3)
    depth: torch.Tensor  # (R,) expected ray distance of the termination
    acc: torch.Tensor  # (R,) accumulated opacity
    points: torch.Tensor = field(repr=False, default=None)  # (R, S, 3)


def sample_pdf(bins: torch.Tensor, weights: torch.Tensor, n: int, stratified: bool = False) -> torch.Tensor:
    """Distances (R, n) drawn by inverse CDF from piecewise-constant weights (R, B) over bin edges (R, B + 1)."""
    pdf = (weights + 1e-5) / (weights + 1e-5).sum(-1, keepdim=True)  # a floor, so empty rays sample uniformly
    cdf = torch.cat([torch.zeros_like(pdf[:, :1]), torch.cumsum(pdf, -1)], -1).contiguous()  # (R, B + 1)
    u = (torch.arange(n, device=bins.device, dtype=bins.dtype) + 0.5) / n
    u = u.expand(len(bins), n)
    if stratified:
        u = u + (torch.rand_like(u) - 0.5) / n
    u = u.contiguous()
    hi = torch.searchsorted(cdf, u, right=True).clamp(1, cdf.shape[-1] - 1)
    c0, c1 = cdf.gather(-1, hi - 1), cdf.gather(-1, hi)
    b0, b1 = bins.gather(-1, hi - 1), bins.gather(-1, hi)
    return b0 + (u - c0) / (c1 - c0).clamp(min=1e-8) * (b1 - b0)


def render_rays(model: CoordinateField, o: torch.Tensor, d: torch.Tensor, n_samples: int = 64,
                stratified: bool = False, generator: torch.Generator | None = None,
                n_importance: int = 0) -> RenderOut:
    """Volume-render rays (R, 3) with unit directions; composited over ``config.background``.

    ``n_samples`` evenly spaced (jittered when ``stratified``) points per ray through the field's box; with
    ``n_importance``, that many more drawn where those first samples put the ray's weight (NeRF's hierarchical
    sampling with one network). The first pass is then evaluated without gradient: training gradients flow through
    the importance samples, which sit at the surfaces that make the image.
    """
    near, far = ray_box(o, d, model.lo, model.hi)
    valid = far > near
    far = torch.where(valid, far, near + 1e-3)
    u = (torch.arange(n_samples, device=o.device, dtype=o.dtype) + 0.5) / n_samples
    if stratified:
        u = u + (torch.rand(len(o), n_samples, device=o.device, generator=generator) - 0.5) / n_samples
    t = (near[:, None] + (far - near)[:, None] * u).expand(len(o), n_samples)  # (R, S)

    def field(t):  # (R, k) -> sigma (R, k), rgb (R, k, 3)
        pts = o[:, None] + t[..., None] * d[:, None]
        sigma, rgb = model(pts.reshape(-1, 3), d[:, None].expand_as(pts).reshape(-1, 3))
        return sigma.view(t.shape) * valid[:, None], rgb.view(*t.shape, 3)

    def weights(t, sigma):  # quadrature over the cells between midpoints, closed by near and far
        mids = (t[:, 1:] + t[:, :-1]) / 2
        delta = torch.cat([mids, far[:, None]], -1) - torch.cat([near[:, None], mids], -1)
        alpha = 1 - torch.exp(-sigma * delta.clamp(min=0))
        trans = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1 - alpha[:, :-1] + 1e-10], -1), -1)
        return alpha * trans, mids

    if n_importance:
        with torch.no_grad():
            sigma_c, rgb_c = field(t)
            w_c, mids = weights(t, sigma_c)
            edges = torch.cat([near[:, None], mids, far[:, None]], -1)
            t_f = sample_pdf(edges, w_c, n_importance, stratified)
        sigma_f, rgb_f = field(t_f)
        t, order = torch.sort(torch.cat([t, t_f], -1), -1)
        sigma = torch.cat([sigma_c, sigma_f], -1).gather(-1, order)
        rgb = torch.cat([rgb_c, rgb_f], 1).gather(1, order[..., None].expand(-1, -1, 3))
    else:
        sigma, rgb = field(t)
    w, _ = weights(t, sigma)
    acc = w.sum(-1)
    bg = torch.tensor(model.config.background, device=o.device, dtype=o.dtype)
    color = (w[..., None] * rgb).sum(1) + (1 - acc)[:, None] * bg
    depth = (w * t).sum(-1) / acc.clamp(min=1e-6)
    return RenderOut(color, depth, acc, o[:, None] + t[..., None] * d[:, None])
