"""Model kinds ("domains"): what a token is, and how a model is run against its known optimal output.

The lab studies two kinds of model, and every difference between them lives here, chosen once:

| domain | model | token | optimal output | error |
| --- | --- | --- | --- | --- |
| ``image`` | image in, image out (autoencoders) | one position of a ``(B, C, h, w)`` feature map; ground truth pooled over its pixel footprint | the input image | squared error per pixel |
| ``field`` | ``CoordinateField`` (point, view direction -> density, colour) | one 3D sample along a camera ray; ground truth = the exact scene query there | the exact render of the ray | squared error per ray |

A domain extracts the tokens of one chunk of images (:meth:`extract`), builds a fixed batch of held-out images to
run the model on (:meth:`batch`), runs the model on it with or without an edit at a hook (:meth:`forward`) and
measures the per-pixel (per-ray) error against the optimal output (:meth:`pixel_error`). Stores record their
domain's name in the manifest (``kind``); :func:`domain_of` and :func:`domain_named` give the adapter.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from frobnolab.errors import unknown
from frobnolab.models.hooks import capture

from . import concepts as C

EVEN_SAMPLES = 48
"""Fields: even samples per ray when a model is run under an edit. Not the importance samples of training and
evaluation: those are placed by a first pass that an edit would move, and a splice replays one fixed set of hooked
activations."""


@dataclass
class Batch:
    """A fixed set of held-out images to run a model on: ``inputs`` for the model, the optimal ``target``, and for
    fields the pixels whose rays are rendered (``pixel_index (n_images, R)``)."""

    images: np.ndarray
    inputs: tuple
    target: torch.Tensor
    pixel_index: np.ndarray | None = None


def _subsample(n_per_image: int, k: int, seed: int, image: int) -> np.ndarray:
    if k == 0 or k >= n_per_image:
        return np.arange(n_per_image)
    return np.sort(np.random.default_rng([seed, image]).choice(n_per_image, size=k, replace=False))


def check_finite(name: str, acts: torch.Tensor, chunk: int, lo: int, hi: int):
    if not torch.isfinite(acts).all():
        bad = (~torch.isfinite(acts)).sum().item()
        raise ValueError(f"hook point {name}: {bad} non-finite activations (NaN or inf) in batch {chunk} "
                         f"(images {lo}..{hi - 1}); refusing to store them")


class ImageDomain:
    name = "image"
    concept_domain = "pixel"
    where_columns = ("image", "row", "col")
    crops = True
    """Each token has a pixel footprint: its top examples are drawn as image crops with heatmaps."""
    figures = ("crops", "ablation")
    """The gallery's pictures of a feature beyond its histogram and concept bars."""

    def extract(self, model, hooks, ds, img_idx, cfg, concepts, chunk) -> dict:
        x = torch.from_numpy(np.ascontiguousarray(ds["rgb"][img_idx])).permute(0, 3, 1, 2).to(cfg.device)
        with torch.no_grad(), capture(model.hook_root, [h.path for h in hooks], stop=True) as acts:
            model(x)
        H, W = ds.size
        per_pixel = None
        out = {}
        for h in hooks:
            a = acts[h.path]
            check_finite(h.name, a, chunk, int(img_idx[0]), int(img_idx[-1]) + 1)
            if a.ndim != 4:
                raise ValueError(f"hook point {h.name}: expected a (B, C, h, w) feature map, got {tuple(a.shape)}")
            b, c, gh, gw = a.shape
            if H % gh or W % gw or H // gh != W // gw:
                raise ValueError(f"hook point {h.name}: feature map {gh}x{gw} does not tile the {H}x{W} image")
            stride = H // gh
            acts_N = a.permute(0, 2, 3, 1).reshape(-1, c).float().cpu().numpy()
            if per_pixel is None:  # the concepts' pixel values once for every hook point
                per_pixel = self.pixel_values(ds, img_idx, concepts)
            gt = self.pool(per_pixel, stride, getattr(cfg, "context", ()), (b, gh, gw))
            rr, cc = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
            where = np.stack([np.repeat(img_idx, gh * gw), np.tile(rr.ravel(), b), np.tile(cc.ravel(), b)], -1)
            # seeded by the base scene: the rungs of a counterfactual ladder keep the same positions
            keep = np.concatenate([k * gh * gw + _subsample(gh * gw, cfg.tokens_per_image, cfg.seed, int(b))
                                   for k, b in enumerate(ds.base_of(img_idx))])
            out[h.name] = {"acts": acts_N[keep], "where": where[keep].astype(np.int32), "gt": gt[keep],
                           "stride": stride}
        return out

    @staticmethod
    def pixel_values(ds, images, concepts) -> list:
        """[(concept, its per-pixel values (B, H, W))] of ``images``."""
        bufs = C.pixel_inputs(ds, images, concepts)  # the buffers and what the concepts read beside them
        return [(c, np.asarray(c.pixel(bufs))) for c in concepts]

    @staticmethod
    def pool(per_pixel: list, stride: int, context=(), grid=None) -> np.ndarray:
        """Every token's ground truth ``(B * h * w, G)`` (image, row, column order): each concept pooled over the
        token's ``stride x stride`` footprint, then its context copies (``analysis/context.py``) at each scale of
        ``context`` (``grid``: ``(B, h, w)``)."""
        gt = np.concatenate([C.pool(v, con, stride) for con, v in per_pixel], -1)
        if context:
            from .context import add_context

            gt = add_context(gt, grid, [{"name": c.name, "kind": c.kind, "columns": c.columns} for c, _ in per_pixel],
                             context)
        return gt

    def ground_truth(self, ds, images, stride: int, concepts, context=()) -> np.ndarray:
        """The ground truth of every token of ``images`` at ``stride`` ``(B * h * w, G)``, as extraction stores it."""
        H, W = ds.size
        return self.pool(self.pixel_values(ds, images, concepts), stride, context,
                         (len(images), H // stride, W // stride))

    def batch(self, ds, images: np.ndarray, device: str = "cpu", rays_per_image: int = 0) -> Batch:
        # kept in the (B, H, W, C) memory layout, as in extraction: a splice hands back the same layout, so splicing
        # an exact identity reproduces the clean output bit for bit
        x = torch.from_numpy(np.ascontiguousarray(ds["rgb"][images])).permute(0, 3, 1, 2).to(device)
        return Batch(np.asarray(images), (x,), x)

    def forward(self, model, batch: Batch, edit: dict | None = None) -> torch.Tensor:
        """The model's output on the batch, ``edit``: {module path: fn} applied at hooks (none: clean)."""
        with capture(model.hook_root, [], edit=edit or None):
            return model(*batch.inputs)

    def pixel_error(self, out: torch.Tensor, batch: Batch) -> torch.Tensor:
        """(n_images, P) squared error per pixel against the optimal output (channels summed)."""
        return ((out - batch.target) ** 2).sum(1).reshape(len(batch.images), -1)

    def pixels(self, values_NHW: np.ndarray, batch: Batch) -> np.ndarray:
        """Per-pixel values of the batch's images, laid out as :meth:`pixel_error` lays out its pixels."""
        return values_NHW.reshape(len(batch.images), -1)


class FieldDomain(ImageDomain):
    name = "field"
    concept_domain = "point"
    where_columns = ("image", "row", "col", "sample")
    crops = False
    figures = ("slice",)
    ground_truth = None
    """A probe's tokens (its rays' even samples) are not the store's: no per-token ground truth of them here."""

    def __init__(self):
        self._scenes: dict = {}

    def _query(self, ds, image: int):
        from frobnolab.scenes.queries import SceneQuery

        key = 0 if ds.single_scene() else int(image)  # one scene for all: build its queries once
        if key not in self._scenes:
            self._scenes[key] = SceneQuery(ds.scene(key))
        return self._scenes[key]

    def extract(self, model, hooks, ds, img_idx, cfg, concepts, chunk) -> dict:
        from frobnolab.models.field import ray_box

        if getattr(cfg, "context", ()):
            raise ValueError("ExtractConfig.context: context pooling is for image models (a field's token is a 3D "
                             "point, with no neighbouring tokens)")

        H, W = ds.size
        rays = cfg.tokens_per_image or 64
        o, d = ds.rays(img_idx)
        pts, dirs, where = [], [], []
        for k, i in enumerate(img_idx):
            pix = _subsample(H * W, rays, cfg.seed, int(i))
            oo = torch.as_tensor(o[k].reshape(-1, 3)[pix], dtype=torch.float32)
            dd = torch.as_tensor(d[k].reshape(-1, 3)[pix], dtype=torch.float32)
            near, far = ray_box(oo, dd, model.lo.cpu(), model.hi.cpu())
            far = torch.maximum(far, near + 1e-3)
            u = (torch.arange(cfg.samples_per_ray) + 0.5) / cfg.samples_per_ray
            t = near[:, None] + (far - near)[:, None] * u
            pts.append((oo[:, None] + t[..., None] * dd[:, None]).reshape(-1, 3).numpy())
            dirs.append(np.repeat(dd.numpy(), cfg.samples_per_ray, 0))
            where.append(np.stack([np.full(len(pix) * cfg.samples_per_ray, i),
                                   np.repeat(pix // W, cfg.samples_per_ray), np.repeat(pix % W, cfg.samples_per_ray),
                                   np.tile(np.arange(cfg.samples_per_ray), len(pix))], -1))
        P, D = np.concatenate(pts), np.concatenate(dirs)
        with torch.no_grad(), capture(model.hook_root, [h.path for h in hooks], stop=True) as acts:
            model(torch.as_tensor(P, device=cfg.device), torch.as_tensor(D, device=cfg.device))
        gts = []
        for k, i in enumerate(img_idx):  # each image may show a different scene
            sl = slice(k * rays * cfg.samples_per_ray, (k + 1) * rays * cfg.samples_per_ray)
            q = self._query(ds, int(i))
            ctx = C.PointContext(P[sl], D[sl], q.nearest(P[sl]), q.sdf(P[sl]))
            gts.append(np.concatenate([C.point_values(np.asarray(c.point(ctx)), c) for c in concepts], -1))
        gt = np.concatenate(gts)
        out = {}
        for h in hooks:
            a = acts[h.path]
            check_finite(h.name, a, chunk, int(img_idx[0]), int(img_idx[-1]) + 1)
            out[h.name] = {"acts": a.float().cpu().numpy(), "where": np.concatenate(where).astype(np.int32),
                           "gt": gt, "points": np.concatenate([P, D], -1).astype(np.float32), "stride": 0}
        return out

    def batch(self, ds, images: np.ndarray, device: str = "cpu", rays_per_image: int = 256) -> Batch:
        """``rays_per_image`` random pixels of each image (seeded, so every caller sees the same rays)."""
        images = np.asarray(images)
        o, d = ds.rays(images)
        h, w = ds.size
        rng = np.random.default_rng(0)
        pix = np.stack([rng.choice(h * w, size=min(rays_per_image, h * w), replace=False) for _ in images])
        take = lambda a: np.take_along_axis(a.reshape(len(images), h * w, -1), pix[..., None], 1)  # noqa: E731
        o = torch.as_tensor(take(o).reshape(-1, 3), dtype=torch.float32, device=device)
        d = torch.as_tensor(take(d).reshape(-1, 3), dtype=torch.float32, device=device)
        target = torch.as_tensor(take(np.asarray(ds["rgb"][images])).reshape(-1, 3), device=device)
        return Batch(images, (o, d), target, pix)

    def forward(self, model, batch: Batch, edit: dict | None = None) -> torch.Tensor:
        from frobnolab.models.field import render_rays

        with capture(model.hook_root, [], edit=edit or None):
            return render_rays(model, *batch.inputs, EVEN_SAMPLES).rgb

    def pixel_error(self, out: torch.Tensor, batch: Batch) -> torch.Tensor:
        return ((out - batch.target) ** 2).sum(-1).reshape(len(batch.images), -1)

    def pixels(self, values_NHW: np.ndarray, batch: Batch) -> np.ndarray:
        return np.take_along_axis(values_NHW.reshape(len(batch.images), -1), batch.pixel_index, 1)


DOMAINS = {"image": ImageDomain, "field": FieldDomain}


def domain_named(name: str):
    """A fresh adapter for a store manifest's ``kind``."""
    if name not in DOMAINS:
        raise unknown("model domain", name, DOMAINS)
    return DOMAINS[name]()


def domain_of(model):
    """The adapter for a built model: a ``CoordinateField`` is a field; anything else maps images to images."""
    from frobnolab.models.field import CoordinateField

    return domain_named("field" if isinstance(model, CoordinateField) else "image")
