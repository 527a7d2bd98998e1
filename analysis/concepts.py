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
fraction).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from frobnolab.errors import unknown
from frobnolab.scenes.primitives import SHAPE_CLASSES
from frobnolab.scenes.textures import MATERIAL_CLASSES

KINDS = ("continuous", "binary", "categorical")
MAX_INSTANCES = 8  # instance classes: background, 1 .. MAX_INSTANCES - 1 and "more" for higher ids


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

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"concept {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind == "categorical" and not self.classes:
            raise ValueError(f"concept {self.name!r}: a categorical concept needs its classes")
        if self.pixel is None and self.point is None:
            raise ValueError(f"concept {self.name!r}: give a pixel function, a point function or both")

    @property
    def columns(self) -> list[str]:
        if self.kind == "categorical":
            return [f"{self.name}={c}" for c in self.classes] + [f"{self.name}.purity"]
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


_builtin()


def pool(values_BHW: np.ndarray, concept: Concept, stride: int) -> np.ndarray:
    """Pool one concept's per-pixel values over each ``stride x stride`` footprint: (B, H, W) -> (B*h*w, cols)."""
    b, h, w = values_BHW.shape
    if h % stride or w % stride:
        raise ValueError(f"image {h}x{w} is not divisible by stride {stride}")
    gh, gw = h // stride, w // stride
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
    return values_N.astype(np.float32)[:, None]
