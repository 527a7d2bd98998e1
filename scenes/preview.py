"""A contact sheet of a dataset: one row per image, one column per ground-truth buffer, as a PNG."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from frobnolab.files import atomic_write

COLUMNS = ("rgb", "albedo", "shading", "specular", "normal_cam", "depth", "instance", "shadow", "edges")


def _panel(img: dict, name: str) -> np.ndarray:
    """One buffer of one image as an (H, W, 3) float picture in [0, 1]."""
    from .scene import linear_to_srgb

    if name == "rgb":
        return img["rgb"]
    if name in ("albedo", "specular"):
        return linear_to_srgb(img[name])
    if name == "shading":
        return linear_to_srgb(img[name] / max(float(img[name].max()), 1e-6))
    if name == "normal_cam":
        return np.where(img["instance"][..., None] > 0, img[name] * 0.5 + 0.5, 0)
    if name == "depth":
        d, fg = img["depth"], img["depth"] > 0
        out = np.zeros_like(d)
        if fg.any():
            lo, hi = d[fg].min(), d[fg].max()
            out[fg] = 1 - (d[fg] - lo) / max(hi - lo, 1e-6) * 0.8
        return np.repeat(out[..., None], 3, -1)
    if name == "instance":
        rng = np.random.default_rng(0)
        palette = rng.uniform(0.2, 1.0, size=(int(img["instance"].max()) + 1, 3))
        palette[0] = 0
        return palette[img["instance"]]
    if name == "shadow":
        return np.repeat(img["shadow"][..., None].astype(float), 3, -1)
    if name == "edges":
        e = np.zeros(img["rgb"].shape)
        e[img["edge_silhouette"]] = (1, 1, 1)
        e[img["edge_crease"]] = (1, 0.3, 0.3)
        e[img["edge_albedo"] & ~img["edge_silhouette"]] = (0.3, 0.6, 1)
        return e
    raise ValueError(f"unknown preview column {name!r}")


def contact_sheet(images: list[dict], path: str | Path, scale: int = 2) -> Path:
    """Write a PNG grid of ``COLUMNS`` for each image dict; returns the path."""
    from PIL import Image, ImageDraw

    rows = [np.concatenate([_panel(img, c) for c in COLUMNS], axis=1) for img in images]
    grid = (np.clip(np.concatenate(rows, axis=0), 0, 1) * 255).astype(np.uint8)
    grid = np.repeat(np.repeat(grid, scale, 0), scale, 1)
    w = grid.shape[1] // len(COLUMNS)
    header = Image.new("RGB", (grid.shape[1], 14), "white")
    draw = ImageDraw.Draw(header)
    for i, c in enumerate(COLUMNS):
        draw.text((i * w + 2, 1), c, fill="black")
    out = Image.new("RGB", (grid.shape[1], grid.shape[0] + 14), "white")
    out.paste(header, (0, 0))
    out.paste(Image.fromarray(grid), (0, 14))
    buf = io.BytesIO()
    out.save(buf, format="PNG")
    return atomic_write(path, buf.getvalue())
