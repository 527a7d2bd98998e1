"""The named-concept vocabulary: ground-truth concepts computed from renders (pixels) or from the scene (3D points).

A concept has a kind: ``continuous`` (a real number), ``binary`` (0/1), or ``categorical`` (an integer class code).
Pixel concepts read a batch of render buffers ``{name: (B, H, W[, C])}`` and return ``(B, H, W)``; point concepts
read a :class:`PointContext` and return ``(N,)``. Add your own with :func:`register`::

    from frobnolab.analysis.concepts import Concept, register
    register(Concept("warmth", "continuous", pixel=lambda b: b["albedo"][..., 0] - b["albedo"][..., 2],
                     description="red minus blue albedo"))

Pooled over a token's pixel footprint (see :func:`pool`), a continuous or binary concept becomes one column (its
mean: a binary concept's mean is the fraction of the footprint where it holds); a categorical concept becomes one
column per class (``name=class``: the fraction of the footprint in that class) and ``name.purity`` (the largest
fraction). A ``circular`` concept (an angle in radians, NaN where it has no direction) becomes two columns,
``name.cos`` and ``name.sin``: the mean unit vector over the footprint (an undefined pixel adds the zero vector, so
the vector's length says how consistent the direction is). It is never a number with a wrap at 360 degrees:
scene regressions see the two smooth columns, and named match bins the angle of the mean vector (a partition of
the circle, plus one bin for "no direction"; see :mod:`frobnolab.analysis.variables`).

Pixel functions read the render buffers of :data:`frobnolab.scenes.render.BUFFERS` and, when a concept lists them
in ``inputs``, per-image quantities from the scene description (:data:`EXTRA_INPUTS`); :func:`pixel_inputs` builds
that dict for images of a dataset.

The painter's vocabulary (all exact functions of the buffers; "luma" is Rec. 709 luma of the sRGB image the model
sees, ``0.2126 R' + 0.7152 G' + 0.0722 B'``; distances are in units of the image height):

| concept | kind | definition |
| --- | --- | --- |
| ``hue`` | circular | HSV hue of the sRGB image, ``60 deg x ((G-B)/C mod 6, (B-R)/C + 2, (R-G)/C + 4)`` by the largest channel; undefined where the chroma ``C = max - min`` is 0 |
| ``saturation`` | continuous | HSV saturation of the image, ``C / max`` (0 where ``max`` is 0) |
| ``value`` | continuous | HSV value of the image, ``max(R', G', B')`` |
| ``albedo_hue``, ``albedo_saturation``, ``albedo_value`` | circular, continuous | the same of the albedo, sRGB-encoded (as a painter would mix it) |
| ``image_gradient`` | continuous | magnitude of the luma gradient (central differences, one-sided at the border), per pixel |
| ``gradient_orientation`` | circular | direction of the luma gradient, dark to bright, ``atan2(-d/drow, d/dcol)`` (x right, y up); undefined where the gradient is below 1e-6 |
| ``edge_orientation`` | circular | the same as an axis (mod 180 deg: polarity ignored), stored as twice the angle |
| ``local_contrast`` | continuous | RMS contrast: the standard deviation of luma in the 5 x 5 window around the pixel (edges reflected) |
| ``texture_energy`` | continuous | RMS of the luma's 3 x 3 Laplacian (4-neighbour) in the 5 x 5 window: band-pass energy |
| ``spatial_frequency`` | continuous | local dominant frequency in cycles per pixel, ``sqrt(mean |grad|^2 / var) / (2 pi)`` of luma in the 7 x 7 window (a sinusoid of frequency f gives sin(2 pi f) / (2 pi) ~ f); 0 where luma is flat |
| ``row``, ``column`` | continuous | image position of the pixel centre, ``(i + 0.5) / H`` and ``(j + 0.5) / W`` (0 top / left, 1 bottom / right) |
| ``border_distance`` | continuous | distance of the pixel centre to the nearest image border |
| ``silhouette_distance`` | continuous | Euclidean distance to the nearest silhouette pixel (``edge_silhouette``; 0 on one; the image diagonal when none) |
| ``object_size`` | continuous | projected size of the pixel's instance: the fraction of the image its visible pixels cover (floor included; 0 on background) |
| ``n_dot_l``, ``n_dot_l1`` | continuous | cosine of the angle between the world normal and the direction to light 0 (the key light) and light 1, signed (negative: facing away; before shadows); 0 on background and where the scene has no such light |
| ``n_dot_v`` | continuous | facing ratio: cosine of the angle between the normal and the direction to the camera; 0 on background |

Texture coordinates and texture phase are not concepts: the buffers carry no UV or texture-frame coordinates
(textures are evaluated in each object's own frame during the render), so they cannot be computed exactly here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from frobnolab.errors import unknown
from frobnolab.scenes.primitives import SHAPE_CLASSES
from frobnolab.scenes.textures import MATERIAL_CLASSES

KINDS = ("continuous", "binary", "categorical", "circular")
MAX_INSTANCES = 8  # instance classes: background, 1 .. MAX_INSTANCES - 1 and "more" for higher ids
MAX_LIGHTS = 2  # n_dot_l for light 0 (the key light) and n_dot_l1 for light 1
EXTRA_INPUTS = {
    "camera_center": "(B, 3) world position of each image's camera centre",
    "lights": f"(B, {MAX_LIGHTS}, 4) each image's first lights, homogeneous: (-direction, 0) for a directional "
              "light, (position, 1) for a point or spot light, zeros where the scene has fewer lights",
}
"""Per-image inputs beyond the render buffers that a pixel function may read (a concept names them in ``inputs``)."""


@dataclass
class PointContext:
    """What point concepts read: world points ``(N, 3)``, unit view directions ``(N, 3)`` and the exact queries."""

    points: np.ndarray
    dirs: np.ndarray
    nearest: dict = field(default_factory=dict)  # SceneQuery.nearest(points)
    sdf: np.ndarray | None = None


@dataclass(frozen=True)
class Concept:
    name: str
    kind: str
    pixel: Callable[[dict], np.ndarray] | None = None
    point: Callable[[PointContext], np.ndarray] | None = None
    classes: tuple[str, ...] = ()
    description: str = ""
    inputs: tuple[str, ...] = ()
    """Names in :data:`EXTRA_INPUTS` the pixel function reads besides the buffers."""

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"concept {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind == "categorical" and not self.classes:
            raise ValueError(f"concept {self.name!r}: a categorical concept needs its classes")
        if self.pixel is None and self.point is None:
            raise ValueError(f"concept {self.name!r}: give a pixel function, a point function or both")
        bad = set(self.inputs) - set(EXTRA_INPUTS)
        if bad:
            raise ValueError(f"concept {self.name!r}: unknown inputs {sorted(bad)} (known: {', '.join(EXTRA_INPUTS)})")

    @property
    def columns(self) -> list[str]:
        if self.kind == "categorical":
            return [f"{self.name}={c}" for c in self.classes] + [f"{self.name}.purity"]
        if self.kind == "circular":
            return [f"{self.name}.cos", f"{self.name}.sin"]
        return [self.name]


REGISTRY: dict[str, Concept] = {}


def register(concept: Concept, replace: bool = False) -> Concept:
    if concept.name in REGISTRY and not replace:
        raise ValueError(f"concept {concept.name!r} is already registered (pass replace=True to redefine it)")
    REGISTRY[concept.name] = concept
    return concept


def load(spec: str) -> Concept:
    """The concept an import path ``module:function`` names (a function returning a Concept, or a Concept),
    registered here under its name: this is how a custom concept reaches every extraction worker."""
    import importlib

    mod, _, attr = spec.partition(":")
    try:
        obj = getattr(importlib.import_module(mod), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"concept {spec!r}: cannot import it ({e})") from None
    concept = obj if isinstance(obj, Concept) else obj()
    if not isinstance(concept, Concept):
        raise ValueError(f"concept {spec!r}: {attr} gave a {type(concept).__name__}, not a Concept")
    if REGISTRY.get(concept.name) is not concept:
        register(concept, replace=True)
    return concept


def get(names: list[str] | None = None, domain: str = "pixel") -> list[Concept]:
    """Registered concepts usable in ``domain`` ("pixel" or "point"), all or the named ones (names, or import
    paths ``module:function``, see :func:`load`)."""
    if names is None:
        return [c for c in REGISTRY.values() if getattr(c, domain) is not None]
    out = []
    for n in names:
        if ":" in n:
            out.append(load(n))
            n = out[-1].name
        elif n not in REGISTRY:
            raise unknown("concept", n, REGISTRY)
        else:
            out.append(REGISTRY[n])
        if getattr(out[-1], domain) is None:
            raise ValueError(f"concept {n!r} has no {domain} definition")
    return out


def binary_masks(values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Binary masks of concepts' per-pixel values ``{name: (B, H, W)}``: a binary concept where it holds, a
    categorical one per class present (``name=class``). Continuous concepts have none."""
    out = {}
    for name, v in values.items():
        c = REGISTRY[name]
        if c.kind == "binary":
            out[name] = np.asarray(v) >= 0.5
        elif c.kind == "categorical":
            for k, cls in enumerate(c.classes):
                m = np.asarray(v) == k
                if m.any():
                    out[f"{name}={cls}"] = m
    return out


def _lum(rgb):
    return rgb[..., 0] * 0.2126 + rgb[..., 1] * 0.7152 + rgb[..., 2] * 0.0722


def _instance_code(ids):
    return np.minimum(ids, MAX_INSTANCES).astype(np.int64)


_INSTANCE_CLASSES = ("background",) + tuple(str(i) for i in range(1, MAX_INSTANCES)) + ("more",)


# ---------------------------------------------------------------------------------------- the painter's vocabulary
# Every function takes a batch (B, H, W[, C]) and is vectorised over it (image filters along axes 1 and 2 only).


def _srgb(linear):
    from frobnolab.scenes.scene import linear_to_srgb

    return linear_to_srgb(linear)


def _luma(rgb):
    return rgb[..., 0] * 0.2126 + rgb[..., 1] * 0.7152 + rgb[..., 2] * 0.0722


def hsv(rgb: np.ndarray):
    """HSV of RGB in [0, 1] ``(..., 3)``: hue in radians [0, 2 pi) (NaN where the chroma is 0), saturation, value."""
    rgb = np.asarray(rgb, np.float64)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    mx, mn = rgb.max(-1), rgb.min(-1)
    c = mx - mn
    safe = np.where(c > 0, c, 1.0)
    h = np.where(mx == r, np.mod((g - b) / safe, 6.0), np.where(mx == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0))
    hue = np.where(c > 0, h * (np.pi / 3), np.nan)
    sat = np.where(mx > 0, c / np.where(mx > 0, mx, 1.0), 0.0)
    return hue, sat, mx


def _window_mean(x, size: int):
    from scipy.ndimage import uniform_filter

    return uniform_filter(x, size=(1, size, size), mode="reflect")


def _grad(lum):
    """d/drow, d/dcol (central differences, one-sided at the border)."""
    return np.gradient(lum, axis=1), np.gradient(lum, axis=2)


def _luma_of(b):
    return _luma(np.asarray(b["rgb"], np.float64))


def gradient_magnitude(b):
    gr, gc = _grad(_luma_of(b))
    return np.hypot(gr, gc)


def gradient_direction(b, axial: bool = False):
    gr, gc = _grad(_luma_of(b))
    ang = np.mod(np.arctan2(-gr, gc), 2 * np.pi)
    if axial:
        ang = np.mod(2 * ang, 2 * np.pi)
    return np.where(np.hypot(gr, gc) > 1e-6, ang, np.nan)


def local_contrast(b, size: int = 5):
    lum = _luma_of(b)
    m, m2 = _window_mean(lum, size), _window_mean(lum * lum, size)
    return np.sqrt(np.maximum(m2 - m * m, 0))


def texture_energy(b, size: int = 5):
    from scipy.ndimage import laplace

    lum = _luma_of(b)
    lap = np.stack([laplace(x, mode="reflect") for x in lum]) if len(lum) else lum
    return np.sqrt(np.maximum(_window_mean(lap * lap, size), 0))


def spatial_frequency(b, size: int = 7):
    lum = _luma_of(b)
    gr, gc = _grad(lum)
    m, m2 = _window_mean(lum, size), _window_mean(lum * lum, size)
    var = np.maximum(m2 - m * m, 0)
    g2 = np.maximum(_window_mean(gr * gr + gc * gc, size), 0)
    ok = var > 1e-10
    return np.where(ok, np.sqrt(g2 / np.where(ok, var, 1)) / (2 * np.pi), 0.0)


def _grid(b):
    """Pixel-centre row and column, (1, H, W) each, in units of the image height and width."""
    bsz, h, w = np.asarray(b["depth"]).shape
    rr, cc = np.meshgrid((np.arange(h) + 0.5) / h, (np.arange(w) + 0.5) / w, indexing="ij")
    return rr[None], cc[None], h, w


def _row(b):
    rr, _, _, _ = _grid(b)
    return np.broadcast_to(rr, np.asarray(b["depth"]).shape)


def _column(b):
    _, cc, _, _ = _grid(b)
    return np.broadcast_to(cc, np.asarray(b["depth"]).shape)


def border_distance(b):
    _, _, h, w = _grid(b)
    i, j = np.arange(h)[:, None] + 0.5, np.arange(w)[None] + 0.5
    d = np.minimum(np.minimum(i, h - i), np.minimum(j, w - j)) / h
    return np.broadcast_to(d[None], np.asarray(b["depth"]).shape)


def silhouette_distance(b):
    from scipy.ndimage import distance_transform_edt

    edge = np.asarray(b["edge_silhouette"], bool)
    _, h, w = edge.shape
    out = np.full(edge.shape, np.hypot(h, w) / h)
    for k in range(len(edge)):  # one exact transform per image
        if edge[k].any():
            out[k] = distance_transform_edt(~edge[k]) / h
    return out


def object_size(b):
    inst = np.asarray(b["instance"]).astype(np.int64)
    bsz, h, w = inst.shape
    top = int(inst.max()) + 1 if inst.size else 1
    code = np.arange(bsz)[:, None, None] * top + inst
    area = np.bincount(code.ravel(), minlength=bsz * top) / (h * w)
    return np.where(inst > 0, area[code], 0.0)


def _unit(v):
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


def n_dot_l(b, light: int = 0):
    n = np.asarray(b["normal_world"], np.float64)
    p = np.asarray(b["position"], np.float64)
    L = np.asarray(b["lights"], np.float64)[:, light]  # (B, 4)
    to_light = _unit(L[:, None, None, :3] - p * L[:, None, None, 3:4])
    fg = np.asarray(b["instance"]) > 0
    return np.where(fg, (n * to_light).sum(-1), 0.0)


def n_dot_v(b):
    n = np.asarray(b["normal_world"], np.float64)
    p = np.asarray(b["position"], np.float64)
    cam = np.asarray(b["camera_center"], np.float64)[:, None, None]
    fg = np.asarray(b["instance"]) > 0
    return np.where(fg, (n * _unit(cam - p)).sum(-1), 0.0)


def _scene_lights(scene) -> np.ndarray:
    out = np.zeros((MAX_LIGHTS, 4))
    for k, light in enumerate(scene.lights[:MAX_LIGHTS]):
        out[k] = np.append(-light.direction, 0.0) if light.kind == "directional" else np.append(light.position, 1.0)
    return out


def pixel_inputs(ds, images, concepts: list[Concept] | None = None) -> dict:
    """What pixel functions read for ``images`` of dataset ``ds``: every buffer ``(B, H, W[, C])``, and the
    :data:`EXTRA_INPUTS` that ``concepts`` (default: every registered one) name."""
    images = np.atleast_1d(np.asarray(images))
    out = {name: np.asarray(ds[name][images]) for name in ds.buffers}
    need = {i for c in (concepts if concepts is not None else REGISTRY.values()) for i in c.inputs}
    if "camera_center" in need:
        out["camera_center"] = np.asarray(ds.camera_pose)[images][:, :3, 3].astype(np.float64)
    if "lights" in need:
        # the scenes' lights, rebuilt from the stored family by the dataset (which knows a counterfactual's rungs)
        if ds.single_scene():
            out["lights"] = np.repeat(_scene_lights(ds.scene(0))[None], len(images), 0)
        else:
            out["lights"] = np.stack([_scene_lights(ds.scene(int(i))) for i in images])
    return out


def _builtin():
    C = Concept
    axes = "xyz"
    for k, a in enumerate(axes):
        register(C(f"normal_{a}", "continuous", pixel=lambda b, k=k: b["normal_cam"][..., k],
                   point=lambda p, k=k: p.nearest["normal"][:, k],
                   description=f"surface normal {a} (pixels: camera frame; points: world frame, nearest surface)"))
        register(C(f"position_{a}", "continuous", pixel=lambda b, k=k: b["position"][..., k],
                   point=lambda p, k=k: p.points[:, k], description=f"world position {a}"))
        register(C(f"view_{a}", "continuous", point=lambda p, k=k: p.dirs[:, k],
                   description=f"view direction {a} (world; points only)"))
    for k, a in enumerate("rgb"):
        register(C(f"albedo_{a}", "continuous", pixel=lambda b, k=k: b["albedo"][..., k],
                   point=lambda p, k=k: p.nearest["albedo"][:, k], description=f"linear albedo, channel {a}"))
    register(C("depth", "continuous", pixel=lambda b: b["depth"], description="z-depth (0 on background)"))
    register(C("luminance", "continuous", pixel=lambda b: _lum(b["rgb_linear"]), description="image luminance"))
    register(C("shading", "continuous", pixel=lambda b: _lum(b["shading"]), description="diffuse shading"))
    register(C("specular", "continuous", pixel=lambda b: _lum(b["specular"]), description="specular highlight"))
    register(C("curvature", "continuous", pixel=lambda b: b["curvature"], description="mean curvature"))
    register(C("shadow", "binary", pixel=lambda b: b["shadow"], description="in a cast shadow"))
    register(C("foreground", "binary", pixel=lambda b: b["foreground"], description="an object, not floor"))
    register(C("silhouette", "binary", pixel=lambda b: b["edge_silhouette"], description="instance boundary"))
    register(C("depth_edge", "binary", pixel=lambda b: b["edge_depth"], description="depth discontinuity"))
    register(C("crease", "binary", pixel=lambda b: b["edge_crease"], description="normal edge within an object"))
    register(C("albedo_edge", "binary", pixel=lambda b: b["edge_albedo"], description="albedo edge"))
    register(C("instance", "categorical", pixel=lambda b: _instance_code(b["instance"]),
               point=lambda p: _instance_code(p.nearest["instance"]), classes=_INSTANCE_CLASSES,
               description="object instance (points: nearest surface)"))
    register(C("shape_class", "categorical", pixel=lambda b: b["shape_class"], classes=SHAPE_CLASSES,
               description="shape class"))
    register(C("material", "categorical", pixel=lambda b: b["material"], classes=MATERIAL_CLASSES,
               description="material (texture kind)"))
    register(C("occupancy", "binary", point=lambda p: p.sdf < 0, description="inside an object (points only)"))
    register(C("sdf", "continuous", point=lambda p: p.sdf, description="signed distance, negative inside"))
    _painter()


def _painter():
    """The painter's, photographer's and lighting artist's vocabulary (the module's table)."""
    C = Concept
    srgb_albedo = lambda b: _srgb(b["albedo"])  # noqa: E731
    for prefix, rgb, what in (("", lambda b: b["rgb"], "the sRGB image"),
                              ("albedo_", srgb_albedo, "the albedo, sRGB-encoded")):
        register(C(f"{prefix}hue", "circular", pixel=lambda b, rgb=rgb: hsv(rgb(b))[0],
                   description=f"HSV hue of {what} (circular; undefined where the chroma is 0)"))
        register(C(f"{prefix}saturation", "continuous", pixel=lambda b, rgb=rgb: hsv(rgb(b))[1],
                   description=f"HSV saturation of {what}, chroma / max"))
        register(C(f"{prefix}value", "continuous", pixel=lambda b, rgb=rgb: hsv(rgb(b))[2],
                   description=f"HSV value of {what}, max(R, G, B)"))
    register(C("image_gradient", "continuous", pixel=gradient_magnitude,
               description="magnitude of the image's luma gradient (central differences), per pixel"))
    register(C("gradient_orientation", "circular", pixel=gradient_direction,
               description="direction of the luma gradient, dark to bright (circular, x right, y up)"))
    register(C("edge_orientation", "circular", pixel=lambda b: gradient_direction(b, axial=True),
               description="orientation of the luma gradient as an axis, polarity ignored (circular, twice the angle)"))
    register(C("local_contrast", "continuous", pixel=local_contrast,
               description="RMS contrast: standard deviation of luma in the 5x5 window"))
    register(C("texture_energy", "continuous", pixel=texture_energy,
               description="RMS of the luma's Laplacian in the 5x5 window (band-pass energy)"))
    register(C("spatial_frequency", "continuous", pixel=spatial_frequency,
               description="local dominant frequency of luma, cycles per pixel (7x7 window; 0 where flat)"))
    register(C("row", "continuous", pixel=_row, description="image row of the pixel centre, 0 top to 1 bottom"))
    register(C("column", "continuous", pixel=_column,
               description="image column of the pixel centre, 0 left to 1 right"))
    register(C("border_distance", "continuous", pixel=border_distance,
               description="distance to the nearest image border (image heights)"))
    register(C("silhouette_distance", "continuous", pixel=silhouette_distance,
               description="distance to the nearest silhouette pixel (image heights)"))
    register(C("object_size", "continuous", pixel=object_size,
               description="fraction of the image covered by the pixel's instance (0 on background)"))
    for k in range(MAX_LIGHTS):
        register(C("n_dot_l" + (str(k) if k else ""), "continuous", pixel=lambda b, k=k: n_dot_l(b, k),
                   inputs=("lights",),
                   description=f"n.l: cosine between the normal and the direction to light {k}"
                               + (" (the key light)" if k == 0 else "") + ", signed, before shadows; 0 on background"
                               " and where the scene has no such light"))
    register(C("n_dot_v", "continuous", pixel=n_dot_v, inputs=("camera_center",),
               description="facing ratio n.v: cosine between the normal and the direction to the camera"))


_builtin()


def pool(values_BHW: np.ndarray, concept: Concept, stride: int) -> np.ndarray:
    """Pool one concept's per-pixel values over each ``stride x stride`` footprint: (B, H, W) -> (B*h*w, cols)."""
    b, h, w = values_BHW.shape
    if h % stride or w % stride:
        raise ValueError(f"image {h}x{w} is not divisible by stride {stride}")
    gh, gw = h // stride, w // stride
    if concept.kind == "circular":
        ang = values_BHW.astype(np.float64).reshape(b, gh, stride, gw, stride)
        vec = np.stack([np.nan_to_num(np.cos(ang)).mean(axis=(2, 4)), np.nan_to_num(np.sin(ang)).mean(axis=(2, 4))], -1)
        return vec.reshape(-1, 2).astype(np.float32)
    if concept.kind == "categorical":
        codes = values_BHW.astype(np.int64).reshape(b, gh, stride, gw, stride)
        k = len(concept.classes)
        frac = np.stack([(codes == c).mean(axis=(2, 4)) for c in range(k)], -1)  # (B, gh, gw, K)
        frac = frac.reshape(-1, k)
        return np.concatenate([frac, frac.max(-1, keepdims=True)], -1).astype(np.float32)
    v = values_BHW.astype(np.float64).reshape(b, gh, stride, gw, stride).mean(axis=(2, 4))
    return v.reshape(-1, 1).astype(np.float32)


def point_values(values_N: np.ndarray, concept: Concept) -> np.ndarray:
    """One concept at points, as columns: (N,) -> (N, cols) (categorical: one-hot plus purity 1)."""
    if concept.kind == "categorical":
        onehot = (values_N[:, None] == np.arange(len(concept.classes))[None]).astype(np.float32)
        return np.concatenate([onehot, np.ones((len(values_N), 1), np.float32)], -1)
    if concept.kind == "circular":
        ang = values_N.astype(np.float64)
        return np.stack([np.nan_to_num(np.cos(ang)), np.nan_to_num(np.sin(ang))], -1).astype(np.float32)
    return values_N.astype(np.float32)[:, None]
