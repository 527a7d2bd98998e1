"""Feature painting: set, add to or scale SAE features inside a mask, decode, and measure what changed against the
exact ground truth.

With the SAE spliced in at its hook (the model runs on the SAE's reconstruction, as the causal probe does), the
features of the tokens inside a mask are edited (``set`` to a value, ``add`` a value, ``scale`` by a factor; a
value is in units of the feature's largest activation on the store's held-out tokens, so 1 is "as strongly as it
ever fires") and decoded; the model runs on from the hook. The result (:func:`paint`, which dispatches on the
store's domain):

- the output before (the SAE spliced in, unedited) and after, and their difference;
- measurements of both inside and outside the mask, from the output image: mean luma (Rec. 709 of the sRGB
  output), mean hue (the circular mean of HSV hue, degrees) and edge energy (mean luma gradient magnitude); and
  **locality**, the share of the absolute change that falls inside the mask;
- whether the edited activations stay where the model's activations live: each edited token's distance to its
  nearest training activation (a sample of the store's training tokens) over the same distance of the clean
  token (1: as typical as before; much more: off the distribution, where edits make artefacts).

Image models (:class:`Painter`: the conv autoencoder, TAESD's encoder and decoder hooks, the SD VAE): masks come
from the image's exact ground truth (``foreground``, ``shadow``, ``instance=K``, any boolean buffer such as
``edge_silhouette``), a box of pixels ``box:R0,C0,R1,C1`` or ``all``; a token is inside when at least half its
pixel footprint is.

Coordinate fields (:class:`FieldPainter`): the mask is a 3D region (:func:`region`): ``all``,
``box3:X0,Y0,Z0,X1,Y1,Z1`` (world units) or ``instance=K`` (the points inside object K by its exact SDF; the
floor, when present, is 1). The held-out view ``image`` (its camera's rays through every pixel centre, or every
``stride``-th row and column) is volume-rendered with the domain's even samples per ray
(``domain.EVEN_SAMPLES``), the SAE spliced in at every sample; the edit changes the chosen features only at the
samples inside the region (their positions are the field's inputs, read by a forward pre-hook on the model), so
every other sample's spliced activation is bit-identical before and after. The image measurements use the
region's projection: the pixels whose exact first surface hit (the dataset's ``position`` and ``instance``
buffers) lies in the region; ``ray_locality`` is the share of the change on the rays that hold an edited sample
(1 exactly: nothing else can move).
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from frobnolab.errors import unknown
from frobnolab.files import write_json

OPS = ("set", "add", "scale")
DISTRIBUTION_TOKENS = 2048
"""Fields: the edited samples (at most, a seeded draw) whose nearest training activations are measured."""
RAYS_PER_PASS = 1024
"""Fields: rays rendered per forward pass at most; fewer for wide SAEs (:meth:`FieldPainter._passes`: the dense
codes of one pass stay near 64 MB whatever the SAE's width)."""


def pixel_mask(ds, image: int, spec: str) -> np.ndarray:
    """The mask ``(H, W)`` bool of ``spec`` on one image of a dataset (see the module docstring)."""
    H, W = ds.size
    if spec == "all":
        return np.ones((H, W), bool)
    if spec.startswith("box:"):
        try:
            r0, c0, r1, c1 = (int(v) for v in spec[4:].split(","))
        except ValueError:
            raise ValueError(f"mask {spec!r}: a box is box:ROW0,COL0,ROW1,COL1 in pixels") from None
        if not (0 <= r0 < r1 <= H and 0 <= c0 < c1 <= W):
            raise ValueError(f"mask {spec!r}: the box must lie inside the {H}x{W} image with ROW0 < ROW1, COL0 < COL1")
        m = np.zeros((H, W), bool)
        m[r0:r1, c0:c1] = True
        return m
    if spec.startswith("instance="):
        k = spec.split("=", 1)[1]
        if not k.isdigit():
            raise ValueError(f"mask {spec!r}: instance=K takes an instance id (0 background, 1 the first object)")
        return np.asarray(ds["instance"][image]) == int(k)
    boolean = [b["name"] for b in ds.manifest["buffers"] if b["dtype"] == "bool"]
    if spec not in boolean:
        raise unknown("mask", spec, ["all", "box:R0,C0,R1,C1", "instance=K"] + boolean)
    return np.asarray(ds[spec][image], bool)


class Region:
    """A 3D region of a field's scene (:func:`region`): ``contains(points (N, 3)) -> (N,) bool`` and its
    projection on a view, ``pixels(instance (H, W), position (H, W, 3)) -> (H, W) bool`` (the pixels whose first
    surface hit lies in it)."""

    def __init__(self, spec: str, contains, on_surface):
        self.spec, self._contains, self._on_surface = spec, contains, on_surface

    def contains(self, p_N3) -> np.ndarray:
        return np.asarray(self._contains(np.asarray(p_N3, np.float64).reshape(-1, 3)), bool)

    def pixels(self, instance_HW, position_HW3) -> np.ndarray:
        inst = np.asarray(instance_HW)
        return np.asarray(self._on_surface(inst, np.asarray(position_HW3, np.float64)), bool) & (
            (inst > 0) | (self.spec == "all"))


def region(spec: str, scene=None) -> Region:
    """The 3D region of a mask ``spec`` for a coordinate field (see the module docstring); ``scene``: the view's
    :class:`~frobnolab.scenes.scene.Scene` (for ``instance=K``). Checks the spec's syntax and the instance id."""
    if spec == "all":
        return Region(spec, lambda p: np.ones(len(p), bool), lambda inst, pos: np.ones(inst.shape, bool))
    if spec.startswith("box3:"):
        try:
            v = [float(x) for x in spec[5:].split(",")]
        except ValueError:
            v = []
        if len(v) != 6:
            raise ValueError(f"mask {spec!r}: a 3D box is box3:X0,Y0,Z0,X1,Y1,Z1 in world units (six numbers)")
        if not np.all(np.isfinite(v)):
            raise ValueError(f"mask {spec!r}: the box's corners must be finite")
        lo, hi = np.array(v[:3]), np.array(v[3:])
        if not np.all(lo < hi):
            raise ValueError(f"mask {spec!r}: the box is empty (it needs X0 < X1, Y0 < Y1 and Z0 < Z1)")
        inside = lambda p: ((p >= lo) & (p <= hi)).all(-1)  # noqa: E731
        r = Region(spec, inside, lambda inst, pos: inside(pos.reshape(-1, 3)).reshape(inst.shape))
        r.box = (lo, hi)
        return r
    if spec.startswith("instance="):
        k = spec.split("=", 1)[1]
        objects = [] if scene is None else list(scene.objects)
        names = ", ".join(f"{i + 1} {o.name or 'object'}" for i, o in enumerate(objects)) or "none"
        if not k.isdigit() or not 1 <= int(k) <= len(objects):
            raise ValueError(f"mask {spec!r}: instance=K takes the id of one of the scene's objects ({names})")
        obj = objects[int(k) - 1]
        return Region(spec, lambda p: obj.sdf(p) < 0, lambda inst, pos: inst == int(k))
    raise unknown("field mask", spec, ["all", "box3:X0,Y0,Z0,X1,Y1,Z1", "instance=K"])


def _luma(rgb_3HW: np.ndarray) -> np.ndarray:
    return 0.2126 * rgb_3HW[0] + 0.7152 * rgb_3HW[1] + 0.0722 * rgb_3HW[2]


def _hue_deg(rgb_3HW: np.ndarray, m: np.ndarray) -> float:
    """Circular mean of HSV hue (degrees) over ``m``; NaN where no pixel has a hue."""
    import colorsys

    px = np.clip(rgb_3HW[:, m].T, 0, 1)
    hs = np.array([colorsys.rgb_to_hsv(*p) for p in px]) if len(px) else np.zeros((0, 3))
    keep = hs[:, 1] > 1e-3 if len(hs) else np.zeros(0, bool)
    if not keep.any():
        return float("nan")
    a = 2 * np.pi * hs[keep, 0]
    return float(np.degrees(np.arctan2(np.sin(a).mean(), np.cos(a).mean())) % 360)


def measures(rgb_3HW: np.ndarray, mask_HW: np.ndarray) -> dict:
    """Luma, hue and edge energy of an output image inside and outside a mask."""
    luma = _luma(rgb_3HW)
    gy, gx = np.gradient(luma)
    edge = np.hypot(gx, gy)
    out = {}
    for where, m in (("inside", mask_HW), ("outside", ~mask_HW)):
        out[where] = {"luma": float(luma[m].mean()) if m.any() else float("nan"),
                      "hue": _hue_deg(rgb_3HW, m), "edge_energy": float(edge[m].mean()) if m.any() else float("nan")}
    return out


def _nearest(x_Nd: torch.Tensor, ref_Md: torch.Tensor) -> torch.Tensor:
    return torch.cdist(x_Nd, ref_Md).min(1).values


def _scores_summary(scores: str | Path):
    """The summary of a scores folder and its activation store."""
    from .store import ActivationStore

    scores = Path(scores)
    summ = scores / "summary.json"
    if not summ.exists():
        raise FileNotFoundError(f"{scores}: no summary.json (a scores folder made by frobnolab score)")
    s = json.loads(summ.read_text())
    return scores, s, ActivationStore(s["store"])


def _open(scores: str | Path, image: int, domain: str, refusal: str):
    """Checks shared by both painters: a scores folder of a store of ``domain`` (else ``refusal``, the reason), an
    image (a view) of its dataset; returns the scores folder, its summary, store and the features' largest held-out
    activations ``(F,)``."""
    from .score import read_table

    scores, s, store = _scores_summary(scores)
    if store.domain.name != domain:
        raise ValueError(f"{scores}: {refusal} (this store's domain is {store.domain.name!r})")
    n = len(store.dataset)
    if not 0 <= int(image) < n:
        raise ValueError(f"image {image}: the dataset {store.dataset.path} has "
                         f"{'images' if domain == 'image' else 'views'} 0..{n - 1}")
    return scores, s, store, np.asarray(read_table(scores / "features.parquet")["max_act"], float)


def _reference(store, hook: str, n: int, device: str = "cpu") -> torch.Tensor:
    """``n`` training activations of the hook: what an edited token's nearest-neighbour distance is measured to."""
    return torch.as_tensor(store[hook].activations("train", max_tokens=n), device=device)


def _check_edit(sae, features, op: str, value: float) -> list[int]:
    if op not in OPS:
        raise unknown("paint operation", op, OPS)
    features = [int(j) for j in np.atleast_1d(features)]
    bad = [j for j in features if not 0 <= j < sae.cfg.d_sae]
    if not features or bad:
        raise ValueError(f"features {bad or features}: the SAE has features 0..{sae.cfg.d_sae - 1}")
    if not np.isfinite(value):
        raise ValueError(f"value {value!r}: must be finite")
    return features


def _edit_codes(f: torch.Tensor, rows, features, op: str, value: float, fmax: np.ndarray) -> torch.Tensor:
    """``f (tokens, F)`` with ``features`` edited at ``rows`` (an index or a boolean mask); a new tensor."""
    f2 = f.clone()
    for j in features:
        unit = float(fmax[j]) if np.isfinite(fmax[j]) and fmax[j] > 0 else 1.0
        col = f2[rows, j]
        f2[rows, j] = (torch.full_like(col, value * unit) if op == "set" else col + value * unit if op == "add"
                       else col * value)
    return f2


def _change_figures(before, after, m_px) -> dict:
    change = np.abs(np.asarray(after, np.float64) - before).sum(0)  # (H, W)
    total = float(change.sum())
    return {"locality": float(change[m_px].sum() / total) if total > 0 else float("nan"),
            "mask_share": float(m_px.mean()),
            "mean_abs_change": {"inside": float(change[m_px].mean()) if m_px.any() else float("nan"),
                                "outside": float(change[~m_px].mean()) if (~m_px).any() else float("nan")}}


def _distribution(d_clean, d_edit, d_data, n_ref: int) -> dict:
    return {"edited_over_clean_nn_distance": float((d_edit / d_clean.clamp_min(1e-8)).median()),
            "clean_reconstruction_nn_distance": float(d_clean.median()),
            "model_activation_nn_distance": float(d_data.median()), "reference_tokens": int(n_ref)}


class Painter:
    """One image of a scored SAE's dataset, loaded once for any number of edits (:meth:`edit`); ``mask`` as in
    :func:`pixel_mask`. Image models (:class:`FieldPainter` paints fields; :func:`painter` picks). Every input is
    checked here, before any work."""

    def __init__(self, scores: str | Path, image: int, mask: str = "all", reference_tokens: int = 20_000, sae=None,
                 model=None):
        from .probe import CausalProbe
        from .sae import load_sae

        scores, s, store, self.fmax = _open(scores, image, "image", "Painter paints image models (FieldPainter "
                                                                      "paints fields, painter() picks)")
        ds = store.dataset
        self.scores, self.image, self.mask, self.store, self.hook = scores, int(image), mask, store, s["hook"]
        self.sae = sae if sae is not None else load_sae(s["sae"])  # a baseline's dictionary is given loaded
        self.m_px = pixel_mask(ds, int(image), mask)
        if not self.m_px.any():
            raise ValueError(f"mask {mask!r} is empty on image {image}")
        self._ref_tokens = reference_tokens
        model = store.load_model() if model is None else model  # a gallery passes the one it has loaded
        self.probe = CausalProbe(model, self.sae, store, self.hook, images=[int(image)])
        codes, self.rec = self.probe.codes()
        t = self.probe.clean_activation()
        _, c, h, w = t.shape
        stride = ds.size[0] // h
        self.inside_tok = self.m_px.reshape(h, stride, w, stride).mean((1, 3)).ravel() >= 0.5  # (h * w,)
        if not self.inside_tok.any():
            raise ValueError(f"mask {mask!r} covers no token's footprint by half on image {image} (tokens are "
                             f"{stride}x{stride} pixels)")
        self.rows = torch.as_tensor(np.flatnonzero(self.inside_tok))
        self.f = torch.as_tensor(codes.toarray(), dtype=torch.float32)  # (tokens, F)
        self.clean_tok = t.permute(0, 2, 3, 1).reshape(-1, c)[self.rows]
        with torch.no_grad():
            self.before = self.probe.output(self.probe.splice()).clamp(0, 1)[0].cpu().numpy()  # (3, H, W)
        self._ref = None

    @property
    def reference(self) -> torch.Tensor:
        if self._ref is None:
            self._ref = _reference(self.store, self.hook, self._ref_tokens)
        return self._ref

    def edit(self, features, op: str = "add", value: float = 1.0) -> dict:
        """The measurements of one edit (see the module docstring); ``after (3, H, W)`` included as an array."""
        features = _check_edit(self.sae, features, op, value)
        rows = self.rows
        f2 = _edit_codes(self.f, rows, features, op, value, self.fmax)
        with torch.no_grad():
            rec2 = torch.cat([self.sae.decode(f2[k:k + 8192]) for k in range(0, len(f2), 8192)])
            after = self.probe.output(self.probe.splice(rec=rec2)).clamp(0, 1)[0].cpu().numpy()
            ref = self.reference
            dist = _distribution(_nearest(self.rec[rows], ref), _nearest(rec2[rows], ref),
                                 _nearest(self.clean_tok, ref), len(ref))
        before, m_px = self.before, self.m_px
        return {"scores": str(self.scores), "domain": "image", "image": self.image, "features": features, "op": op,
                "value": float(value), "mask": self.mask, "mask_pixels": int(m_px.sum()),
                "tokens_edited": int(self.inside_tok.sum()),
                "before": measures(before, m_px), "after": measures(after, m_px),
                **_change_figures(before, after, m_px), "distribution": dist, "after_image": after}


@contextmanager
def _inputs_of(module: torch.nn.Module, seen: list):
    """Append the first positional input of every forward of ``module`` to ``seen`` (a forward pre-hook, removed
    on exit, even when the body raises)."""
    handle = module.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
    try:
        yield seen
    finally:
        handle.remove()


class FieldPainter:
    """One held-out view of a scored field SAE's dataset, rendered once with the SAE spliced in, for any number of
    edits (:meth:`edit`) inside a 3D region (``mask``, see :func:`region`); ``stride``: render every stride-th pixel
    row and column (1: the full image). Every input is checked before any rendering."""

    def __init__(self, scores: str | Path, image: int, mask: str = "all", reference_tokens: int = 20_000, sae=None,
                 model=None, stride: int = 1, device: str = "cpu"):
        from frobnolab.models.field import ray_box

        from .domain import EVEN_SAMPLES
        from .sae import load_sae

        scores, s, store, self.fmax = _open(scores, image, "field", "FieldPainter paints coordinate fields")
        ds = store.dataset
        H, W = ds.size
        if int(stride) != stride or not 1 <= stride <= min(H, W):
            raise ValueError(f"stride {stride!r}: a whole number from 1 to {min(H, W)}")
        self.scores, self.image, self.mask, self.store, self.hook = scores, int(image), mask, store, s["hook"]
        self.stride, self.device, self.samples_per_ray = int(stride), device, EVEN_SAMPLES
        self.region = region(mask, ds.scene(int(image)) if mask.startswith("instance=") else None)
        self.sae = sae if sae is not None else load_sae(s["sae"], device=device)
        self._ref_tokens, self._ref = reference_tokens, None
        self.model = (store.load_model(device) if model is None else model).to(device).eval()
        self.path = store[self.hook].meta["path"]
        sl = (slice(None, None, self.stride),) * 2
        o, d = (a[0][sl] for a in ds.rays([int(image)]))  # (h, w, 3) each
        self.shape = o.shape[:2]
        self.o = torch.as_tensor(o.reshape(-1, 3), dtype=torch.float32, device=device)
        self.d = torch.as_tensor(d.reshape(-1, 3), dtype=torch.float32, device=device)
        self.m_px = self.region.pixels(np.asarray(ds["instance"][int(image)])[sl],
                                       np.asarray(ds["position"][int(image)])[sl])  # (h, w) the projection
        box = getattr(self.region, "box", None)
        if box is not None:  # a box that no ray of the view crosses inside the field: refused before rendering
            lo = torch.maximum(torch.as_tensor(box[0], dtype=torch.float32), self.model.lo.cpu())
            hi = torch.minimum(torch.as_tensor(box[1], dtype=torch.float32), self.model.hi.cpu())
            near, far = ray_box(self.o.cpu(), self.d.cpu(), lo, hi)
            if not (lo <= hi).all() or not (far >= near).any():
                raise ValueError(f"mask {mask!r}: no ray of view {image} crosses the box inside the field's world "
                                 f"box {self.model.config.aabb}")
        self.inside, before = [], []  # per pass: (samples,) bool on the device
        with torch.no_grad():
            for o, d in self._passes():
                seen: list = []
                with _inputs_of(self.model, seen):
                    out = self._render(o, d, lambda t: self.sae.decode(self.sae.encode(t)))
                if len(seen) != 1:
                    raise ValueError(f"hook {self.hook}: expected one field evaluation per render, saw {len(seen)}")
                self.inside.append(torch.as_tensor(self.region.contains(seen[0].cpu().numpy()), device=device))
                before.append(out)
        self.before = self._image(before)
        self.ray_px = np.concatenate([m.reshape(len(o), -1).any(1).cpu().numpy()
                                      for m, (o, _) in zip(self.inside, self._passes())]).reshape(self.shape)
        n = sum(int(m.sum()) for m in self.inside)
        if n == 0:
            raise ValueError(f"mask {mask!r}: no sample point of view {image}'s rays lies in the region")
        self.samples_edited = n
        draw = np.sort(np.random.default_rng(0).choice(n, size=min(n, DISTRIBUTION_TOKENS), replace=False))
        starts = np.cumsum([0] + [int(m.sum()) for m in self.inside])
        self._draw = [torch.as_tensor(draw[(draw >= a) & (draw < b)] - a, device=device)
                      for a, b in zip(starts, starts[1:])]  # per pass: which of its edited samples are measured

    def _passes(self):
        rays = max(32, min(RAYS_PER_PASS, 2**24 // (self.samples_per_ray * self.sae.cfg.d_sae)))
        for a in range(0, len(self.o), rays):
            yield self.o[a:a + rays], self.d[a:a + rays]

    def _render(self, o, d, edit) -> torch.Tensor:
        from .domain import Batch

        return self.store.domain.forward(self.model, Batch(np.array([self.image]), (o, d), None),
                                         {self.path: edit})

    def _image(self, parts) -> np.ndarray:
        return torch.cat(parts).clamp(0, 1).cpu().numpy().reshape(*self.shape, 3).transpose(2, 0, 1)

    @property
    def reference(self) -> torch.Tensor:
        if self._ref is None:
            self._ref = _reference(self.store, self.hook, self._ref_tokens, self.device)
        return self._ref

    def edit(self, features, op: str = "add", value: float = 1.0) -> dict:
        """The measurements of one edit (see the module docstring); ``after (3, h, w)`` included as an array."""
        features = _check_edit(self.sae, features, op, value)
        after, picked = [], {"clean": [], "rec": [], "edited": []}
        with torch.no_grad():
            for inside, draw, (o, d) in zip(self.inside, self._draw, self._passes()):
                def paint_at(t, inside=inside, draw=draw):
                    if len(t) != len(inside):
                        raise ValueError(f"hook {self.hook}: {len(t)} activations for {len(inside)} sample points")
                    f = self.sae.encode(t)
                    rec = self.sae.decode(f)
                    out = torch.where(inside[:, None], self.sae.decode(_edit_codes(f, inside, features, op, value,
                                                                                    self.fmax)), rec)
                    for key, v in (("clean", t), ("rec", rec), ("edited", out)):
                        picked[key].append(v[inside][draw])
                    return out

                after.append(self._render(o, d, paint_at))
            after = self._image(after)
            ref = self.reference
            p = {k: torch.cat(v) for k, v in picked.items()}
            dist = _distribution(_nearest(p["rec"], ref), _nearest(p["edited"], ref), _nearest(p["clean"], ref),
                                 len(ref))
        dist["edited_samples_measured"] = int(len(p["rec"]))
        before, m_px = self.before, self.m_px
        change = np.abs(np.asarray(after, np.float64) - before).sum(0)
        total = float(change.sum())

        return {"scores": str(self.scores), "domain": "field", "image": self.image, "features": features, "op": op,
                "value": float(value), "mask": self.mask, "mask_pixels": int(m_px.sum()),
                "tokens_edited": self.samples_edited, "stride": self.stride, "samples_per_ray": self.samples_per_ray,
                "rays_edited": int(self.ray_px.sum()),
                "before": measures(before, m_px), "after": measures(after, m_px),
                **_change_figures(before, after, m_px),
                "ray_locality": float(change[self.ray_px].sum() / total) if total > 0 else float("nan"),
                "distribution": dist, "after_image": after}


def painter(scores: str | Path, image: int, mask: str = "all", reference_tokens: int = 20_000, **kw):
    """A :class:`Painter` or a :class:`FieldPainter`, as the store of ``scores`` is an image model's or a field's;
    ``kw``: their other options (``sae``, ``model``; fields also ``stride``, ``device``)."""
    _, _, store = _scores_summary(scores)
    if store.domain.name == "field":
        return FieldPainter(scores, image, mask, reference_tokens, **kw)
    for k in ("stride", "device"):
        if k in kw:
            raise ValueError(f"{k}: for coordinate fields only (an image model paints its whole image on the CPU)")
    return Painter(scores, image, mask, reference_tokens, **kw)


def paint(scores: str | Path, image: int, features, *, op: str = "add", value: float = 1.0, mask: str = "all",
          out: str | Path | None = None, reference_tokens: int = 20_000, **kw) -> dict:
    """Edit ``features`` of the SAE scored in ``scores`` on ``image`` of its store's dataset inside ``mask`` (an
    image model's pixel mask or a field's 3D region, see the module docstring); returns (and with ``out`` writes,
    as paint.json and paint.png) the measurements. ``kw``: as :func:`painter`. Every input is checked before any
    work."""
    from .sae import load_sae

    if op not in OPS:
        raise unknown("paint operation", op, OPS)
    if not np.isfinite(value):
        raise ValueError(f"value {value!r}: must be finite")
    _, s, _ = _scores_summary(scores)
    kw["sae"] = kw.get("sae") if kw.get("sae") is not None else load_sae(s["sae"], device=kw.get("device", "cpu"))
    _check_edit(kw["sae"], features, op, value)  # before the painter renders anything
    p = painter(scores, image, mask, reference_tokens, **kw)
    res = p.edit(features, op, value)
    after = res.pop("after_image")
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "paint.json", res)
        _figure(p.before, after, p.m_px, res, out / "paint.png")
    return res


def _figure(before, after, mask, res, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 4, figsize=(10, 2.8))
    ax[0].imshow(before.transpose(1, 2, 0))
    ax[0].set_title("before (SAE spliced)", fontsize=8)
    ax[1].imshow(after.transpose(1, 2, 0))
    ax[1].set_title(f"after: {res['op']} {res['value']:g} x max on {res['features']}", fontsize=8)
    ax[2].imshow(np.abs(after - before).sum(0), cmap="magma")
    ax[2].set_title(f"|change| (locality {res['locality']:.2f})", fontsize=8)
    ax[3].imshow(mask, cmap="gray")
    ax[3].set_title(f"mask: {res['mask']}", fontsize=8)
    for a in ax:
        a.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
