"""Analytic primitives: a tessellated mesh for the rasteriser and an exact signed distance for queries.

Every primitive lives in its own local frame: y is up, the shape is centred on the origin (its bounding box spans
[-half_height, +half_height] in y), and its characteristic radius is 1. A scene places it with a uniform scale, a
rotation and a translation, so world distances are ``scale * sdf_local``.

Signed distances are negative inside (the opposite of ``trimesh.proximity.signed_distance``). The formulas are the
exact ones of Inigo Quilez's catalogue; the meshes are fine enough that the tessellated surface lies within about
1e-3 (relative to the scale) of the analytic one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import trimesh

from frobnolab.errors import unknown

#: Shape classes, in the order of the ``shape_class`` buffer (0 is the background).
SHAPE_CLASSES = ("background", "floor", "sphere", "box", "cylinder", "cone", "torus", "capsule", "mesh")
ANALYTIC_SHAPES = ("sphere", "box", "cylinder", "cone", "torus", "capsule")
MAX_CURVATURE = 20.0  # local units
_STACK_MAX = 2048  # points up to which Primitive._stencil evaluates the SDF as one (7, N) batch

_Z_TO_Y = trimesh.transformations.rotation_matrix(-np.pi / 2, [1, 0, 0])  # trimesh builds along +z; we want +y


def row_norms(v_N3: np.ndarray) -> np.ndarray:
    """Euclidean norms ``(N,)`` of the rows of ``v_N3``: the same floats as ``np.linalg.norm(v, axis=1)`` (which
    sums the three squares in this order), several times faster, since numpy reduces a short last axis slowly."""
    x, y, z = v_N3[:, 0], v_N3[:, 1], v_N3[:, 2]
    return np.sqrt(x * x + y * y + z * z)


def as_rows(a: np.ndarray) -> np.ndarray:
    """A view of a C-contiguous array ``(..., C)`` as ``(...)`` opaque records, one per row of its last axis.

    Boolean and fancy indexing (gathers and scatters of rows) copy each record whole through the view, several times
    faster than numpy moves a short last axis element by element; the bytes moved are the same."""
    if not a.flags.c_contiguous:
        raise ValueError("as_rows needs a C-contiguous array")
    return a.view(np.dtype((np.void, a.dtype.itemsize * a.shape[-1])))[..., 0]


@dataclass(frozen=True)
class Primitive:
    """One analytic shape in its local frame.

    shape: one of ``ANALYTIC_SHAPES`` or ``"floor"``.
    aspect: half-height over radius for box, cylinder, cone; half segment length for the capsule.
    minor: the torus's tube radius (its ring radius is 1).
    extent: the floor's half side (its thickness is ``2 * thickness``).
    """

    shape: str
    aspect: float = 1.0
    minor: float = 0.35
    extent: float = 5.0
    thickness: float = 0.05
    _cache: dict = field(default_factory=dict, compare=False, hash=False, repr=False)

    @property
    def half_height(self) -> float:
        """Half of the y extent of the shape in local units."""
        return {
            "sphere": 1.0,
            "box": self.aspect,
            "cylinder": self.aspect,
            "cone": self.aspect,
            "torus": self.minor,
            "capsule": self.aspect + 1.0,
            "floor": self.thickness,
        }[self.shape]

    @property
    def radius(self) -> float:
        """Bounding-sphere radius of the mesh about the local origin."""
        if "radius" not in self._cache:
            self._cache["radius"] = float(np.linalg.norm(self.mesh().vertices, axis=1).max()) * (1 + 1e-6)
        return self._cache["radius"]

    @property
    def convex(self) -> bool:
        return self.shape != "torus"

    @property
    def base(self) -> "Primitive":
        """The shape this one is a stretch of (itself if none), so renders and ray casts share its triangles:
        boxes, cylinders and cones of any aspect, and floors, are a unit shape scaled along axes."""
        if self.shape in ("box", "cylinder", "cone", "floor"):
            return _unit(self.shape if self.shape != "floor" else "box")
        return self

    @property
    def stretch(self) -> np.ndarray:
        """Per-axis scale from :attr:`base`'s local frame to this one's, ``(3,)``."""
        if self.shape in ("box", "cylinder", "cone"):
            return np.array([1.0, self.aspect, 1.0])
        if self.shape == "floor":
            return np.array([self.extent, self.thickness, self.extent])
        return np.ones(3)

    def mesh(self) -> trimesh.Trimesh:
        """The tessellated surface in the local frame (cached: primitives are immutable)."""
        if "mesh" not in self._cache:
            self._cache["mesh"] = self._build_mesh()
        return self._cache["mesh"]

    def _build_mesh(self) -> trimesh.Trimesh:
        a = self.aspect
        if self.shape == "sphere":
            return trimesh.creation.icosphere(subdivisions=4, radius=1.0)
        if self.shape == "box":
            return trimesh.creation.box(extents=[2.0, 2.0 * a, 2.0])
        if self.shape == "floor":
            return trimesh.creation.box(extents=[2 * self.extent, 2 * self.thickness, 2 * self.extent])
        if self.shape == "cylinder":
            m = trimesh.creation.cylinder(radius=1.0, height=2.0 * a, sections=96)
        elif self.shape == "cone":
            m = trimesh.creation.cone(radius=1.0, height=2.0 * a, sections=96)
            m.apply_translation([0, 0, -a])
        elif self.shape == "capsule":
            m = trimesh.creation.capsule(height=2.0 * a, radius=1.0, count=[64, 64])
        elif self.shape == "torus":
            m = trimesh.creation.torus(1.0, self.minor, major_sections=96, minor_sections=48)
        else:
            raise unknown("primitive shape", self.shape, ANALYTIC_SHAPES + ("floor",))
        m.apply_transform(_Z_TO_Y)
        return m

    def sdf(self, p_N3: np.ndarray) -> np.ndarray:
        """Exact signed distance (negative inside) at local points ``(N, 3)`` -> ``(N,)``."""
        p = np.asarray(p_N3, dtype=np.float64)
        return self._sdf_xyz(p[:, 0], p[:, 1], p[:, 2])

    def _sdf_xyz(self, x, y, z):
        """:meth:`sdf` at points given by their coordinate columns ``(N,)`` each."""
        s = self.shape
        if s == "sphere":
            return np.sqrt(x * x + y * y + z * z) - 1.0
        if s in ("box", "floor"):
            half = (1.0, self.aspect, 1.0) if s == "box" else (self.extent, self.thickness, self.extent)
            # Per-column arithmetic: numpy's axis=1 reductions over 3 columns are slow on many points.
            qx, qy, qz = np.abs(x) - half[0], np.abs(y) - half[1], np.abs(z) - half[2]
            ox, oy, oz = np.maximum(qx, 0.0), np.maximum(qy, 0.0), np.maximum(qz, 0.0)
            return np.sqrt(ox * ox + oy * oy + oz * oz) + np.minimum(np.maximum(np.maximum(qx, qy), qz), 0.0)
        r = np.hypot(x, z)
        if s == "cylinder":
            dx, dy = r - 1.0, np.abs(y) - self.aspect
            return np.minimum(np.maximum(dx, dy), 0.0) + np.hypot(np.maximum(dx, 0), np.maximum(dy, 0))
        if s == "capsule":
            yc = y - np.clip(y, -self.aspect, self.aspect)
            return np.sqrt(r**2 + yc**2) - 1.0
        if s == "torus":
            return np.hypot(r - 1.0, y) - self.minor
        if s == "cone":
            return _capped_cone(r, y, self.aspect, 1.0, 0.0)
        raise unknown("primitive shape", s, ANALYTIC_SHAPES + ("floor",))

    def normal(self, p_N3: np.ndarray, h: float = 1e-5) -> np.ndarray:
        """Unit outward normal: the normalised gradient of the SDF (central differences), ``(N, 3)``."""
        p = np.asarray(p_N3, dtype=np.float64)
        g = np.empty_like(p)
        for k in range(3):
            e = np.zeros(3)
            e[k] = h
            g[:, k] = self.sdf(p + e) - self.sdf(p - e)
        n = row_norms(g)[:, None]
        return g / np.where(n > 0, n, 1.0)

    def normal_and_curvature(self, p_N3: np.ndarray, h: float = 1e-4):
        """:meth:`normal` and :meth:`mean_curvature` from one 7-point stencil (what rendering needs)."""
        p = np.asarray(p_N3, dtype=np.float64)
        centre, offsets = self._stencil(p, h)
        g, lap = [], -6.0 * centre
        for hi, lo in offsets:
            g.append(hi - lo)
            lap += hi + lo
        # The gradient's columns normalised one by one: the same floats as row_norms and one (N, 3) division.
        n = np.sqrt(g[0] * g[0] + g[1] * g[1] + g[2] * g[2])
        n = np.where(n > 0, n, 1.0)
        normal = np.empty_like(p)
        for k in range(3):
            np.divide(g[k], n, out=normal[:, k])
        return normal, np.clip(0.5 * lap / h**2, -MAX_CURVATURE, MAX_CURVATURE)

    def _stencil(self, p, h):
        """The SDF at p ``(N,)`` and an iterator over k = 0, 1, 2 of its values at p + h e_k and p - h e_k (the
        offset coordinate ``c +- h``, the others as they are).

        Every SDF is elementwise arithmetic, so each value is the same float however the points are batched: few
        points go through the SDF as one (7, N) batch (numpy's per-call cost dominates there); many are evaluated
        offset by offset, as they are needed (a (7, N) batch of temporaries would leave the cache), and boxes
        reuse the terms of the coordinates an offset leaves unchanged."""
        n = len(p)
        if n <= _STACK_MAX:
            cols = []
            for k in range(3):
                c = np.empty((7, n))
                c[:] = p[:, k]
                c[1 + 2 * k] += h
                c[2 + 2 * k] -= h
                cols.append(c)
            d = self._sdf_xyz(*cols)
            return d[0], ((d[1 + 2 * k], d[2 + 2 * k]) for k in range(3))
        xyz = p[:, 0], p[:, 1], p[:, 2]
        if self.shape in ("box", "floor"):
            return self._box_stencil(xyz, h)

        def offsets():
            for k in range(3):
                # Offset only coordinate k (what ``sdf(p +- h e_k)`` does, without building two (N, 3) arrays).
                yield (self._sdf_xyz(*(c + h if j == k else c for j, c in enumerate(xyz))),
                       self._sdf_xyz(*(c - h if j == k else c for j, c in enumerate(xyz))))

        return self._sdf_xyz(*xyz), offsets()

    def _box_stencil(self, xyz, h):
        """:meth:`_stencil` of a box (or the floor), reusing the terms of the coordinates an offset leaves unchanged:
        each coordinate's ``q = |c| - half`` and squared outside part, combined as :meth:`_sdf_xyz` does (same order).
        """
        half = (1.0, self.aspect, 1.0) if self.shape == "box" else (self.extent, self.thickness, self.extent)

        def terms(c, k):  # (q, max(q, 0)^2) of coordinate k at values c
            q = np.abs(c) - half[k]
            o = np.maximum(q, 0.0)
            return q, o * o

        def sdf(sxy, mxy, qz, sz):
            return np.sqrt(sxy + sz) + np.minimum(np.maximum(mxy, qz), 0.0)

        (qx, sx), (qy, sy), (qz, sz) = (terms(c, k) for k, c in enumerate(xyz))
        sxy, mxy = sx + sy, np.maximum(qx, qy)  # shared by the centre and the z offsets

        def at(k, c):
            q, s = terms(c, k)
            if k == 0:
                return sdf(s + sy, np.maximum(q, qy), qz, sz)
            if k == 1:
                return sdf(sx + s, np.maximum(qx, q), qz, sz)
            return sdf(sxy, mxy, q, s)

        return sdf(sxy, mxy, qz, sz), ((at(k, c + h), at(k, c - h)) for k, c in enumerate(xyz))

    def mean_curvature(self, p_N3: np.ndarray, h: float = 1e-3) -> np.ndarray:
        """Mean curvature (local units) at surface points: half the SDF's Laplacian, ``(N,)``.

        On sharp edges the curvature is a delta; it is clipped to +-MAX_CURVATURE (radius 1/20 of the shape's).
        """
        p = np.asarray(p_N3, dtype=np.float64)
        lap = -6.0 * self.sdf(p)
        for k in range(3):
            e = np.zeros(3)
            e[k] = h
            lap += self.sdf(p + e) + self.sdf(p - e)
        return np.clip(0.5 * lap / h**2, -MAX_CURVATURE, MAX_CURVATURE)


_UNIT: dict[str, Primitive] = {}


def _unit(shape: str) -> Primitive:
    if shape not in _UNIT:
        _UNIT[shape] = Primitive(shape)
    return _UNIT[shape]


def _capped_cone(r, y, h, r1, r2):
    """Exact SDF of a cone frustum of half-height h, bottom radius r1 and top radius r2 (iq)."""
    qx, qy = r, y
    k1x, k1y = r2, h
    k2x, k2y = r2 - r1, 2.0 * h
    cax = qx - np.minimum(qx, np.where(qy < 0.0, r1, r2))
    cay = np.abs(qy) - h
    t = np.clip(((k1x - qx) * k2x + (k1y - qy) * k2y) / (k2x**2 + k2y**2), 0.0, 1.0)
    cbx = qx - k1x + k2x * t
    cby = qy - k1y + k2y * t
    sign = np.where((cbx < 0.0) & (cay < 0.0), -1.0, 1.0)
    return sign * np.sqrt(np.minimum(cax**2 + cay**2, cbx**2 + cby**2))


class MeshShape:
    """A triangle mesh from a file, normalised into the local frame of the primitives.

    Its bounding box is centred on the origin and its largest horizontal half-extent is 1, so ``size`` means the
    same thing as for the analytic shapes. Queries go through trimesh (exact for the mesh, slower than analytic).
    """

    shape = "mesh"

    def __init__(self, path: str):
        loaded = trimesh.load(path, force="mesh")
        if not isinstance(loaded, trimesh.Trimesh) or len(loaded.faces) == 0:
            raise ValueError(f"{path}: no triangles in mesh file")
        m = loaded.copy()
        lo, hi = m.bounds
        m.apply_translation(-(lo + hi) / 2)
        half = (hi - lo) / 2
        m.apply_scale(1.0 / max(half[0], half[2], 1e-12))
        self.path = str(path)
        self._mesh = m
        self._query = trimesh.proximity.ProximityQuery(m)

    @property
    def half_height(self) -> float:
        return float(self._mesh.bounds[1, 1])

    @property
    def convex(self) -> bool:
        return bool(self._mesh.is_convex)

    @property
    def base(self) -> "MeshShape":
        return self

    @property
    def stretch(self) -> np.ndarray:
        return np.ones(3)

    @property
    def radius(self) -> float:
        return float(np.linalg.norm(self._mesh.vertices, axis=1).max()) * (1 + 1e-6)

    def mesh(self) -> trimesh.Trimesh:
        return self._mesh

    def sdf(self, p_N3: np.ndarray) -> np.ndarray:
        # trimesh's sign is positive inside; ours is negative inside.
        return -self._query.signed_distance(np.asarray(p_N3, dtype=np.float64))

    def normal(self, p_N3: np.ndarray) -> np.ndarray:
        _, _, tri = self._query.on_surface(np.asarray(p_N3, dtype=np.float64))
        return self._mesh.face_normals[tri]

    def mean_curvature(self, p_N3: np.ndarray) -> np.ndarray:
        # Meshes carry no analytic curvature; flat facets have none.
        return np.zeros(len(p_N3))

    def normal_and_curvature(self, p_N3: np.ndarray):
        return self.normal(p_N3), self.mean_curvature(p_N3)
