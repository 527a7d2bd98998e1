"""A built scene: objects with exact shapes, materials, lights and a camera, in world units.

World frame: y is up and the floor's top is y = 0. Camera frame: OpenGL's (looks down -z, +y up), as pyrender's.
Colours here are linear RGB (family files give sRGB; :func:`srgb_to_linear` converts).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import trimesh

from .primitives import MeshShape, Primitive, row_norms
from .textures import Texture


def srgb_to_linear(c):
    c = np.asarray(c, dtype=np.float64)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(c):
    c = np.clip(np.asarray(c, dtype=np.float64), 0.0, 1.0)
    return np.where(c <= 0.0031308, 12.92 * c, 1.055 * c ** (1 / 2.4) - 0.055)


@dataclass
class Material:
    """Surface appearance. ``color`` and ``color2`` are linear RGB; metallic tints and strengthens the highlight."""

    color: np.ndarray
    roughness: float = 0.5
    metallic: float = 0.0
    texture: Texture = field(default_factory=Texture)

    @property
    def shininess(self) -> float:
        # Blinn-Phong exponent from roughness (the usual 2/alpha^2 - 2 with alpha = roughness^2).
        alpha = max(self.roughness, 0.05) ** 2
        return 2.0 / alpha**2 - 2.0

    def specular_color(self, albedo_N3: np.ndarray) -> np.ndarray:
        """The highlight's colour: 4% white for dielectrics, the albedo for metals, ``(N, 3)``."""
        return (1.0 - self.metallic) * 0.04 + self.metallic * albedo_N3


@dataclass
class SceneObject:
    """One shape placed in the world: ``p_world = rotation @ (scale * p_local) + translation``."""

    shape: Primitive | MeshShape
    scale: float
    rotation: np.ndarray  # (3, 3)
    translation: np.ndarray  # (3,)
    material: Material
    name: str = ""

    @property
    def shape_name(self) -> str:
        return self.shape.shape

    @property
    def shape_radius(self) -> float:
        """Radius of the local mesh's bounding sphere about the local origin."""
        return self.shape.radius

    @property
    def pose(self) -> np.ndarray:
        """The 4x4 local-to-world transform, scale included."""
        T = np.eye(4)
        T[:3, :3] = self.rotation * self.scale
        T[:3, 3] = self.translation
        return T

    def to_local(self, p_N3: np.ndarray) -> np.ndarray:
        return (np.asarray(p_N3, dtype=np.float64) - self.translation) @ self.rotation / self.scale

    def sdf(self, p_N3: np.ndarray) -> np.ndarray:
        return self.scale * self.shape.sdf(self.to_local(p_N3))

    def normal(self, p_N3: np.ndarray) -> np.ndarray:
        return self.shape.normal(self.to_local(p_N3)) @ self.rotation.T

    def mean_curvature(self, p_N3: np.ndarray) -> np.ndarray:
        return self.shape.mean_curvature(self.to_local(p_N3)) / self.scale

    def normal_and_curvature(self, p_N3: np.ndarray):
        """World normals ``(N, 3)`` and mean curvature ``(N,)`` from one finite-difference stencil."""
        n, c = self.shape.normal_and_curvature(self.to_local(p_N3))
        return n @ self.rotation.T, c / self.scale

    def albedo(self, p_N3: np.ndarray) -> np.ndarray:
        """Linear albedo at world points on (or near) the surface, ``(N, 3)``."""
        return self.material.texture.albedo(self.to_local(p_N3), self.material.color)

    def surface(self, p_N3: np.ndarray):
        """:meth:`normal_and_curvature` and :meth:`albedo` at world points, the points taken to the local frame
        once: normals ``(N, 3)``, mean curvature ``(N,)``, linear albedo ``(N, 3)``."""
        local = self.to_local(p_N3)
        n, c = self.shape.normal_and_curvature(local)
        return n @ self.rotation.T, c / self.scale, self.material.texture.albedo(local, self.material.color)

    def world_mesh(self) -> trimesh.Trimesh:
        m = self.shape.mesh().copy()
        m.apply_transform(self.pose)
        return m


@dataclass
class Light:
    """kind: directional (``direction`` points from the light into the scene), point or spot (``position``)."""

    kind: str
    color: np.ndarray  # linear RGB, (3,)
    intensity: float
    direction: np.ndarray | None = None
    position: np.ndarray | None = None
    inner_angle: float = 0.0  # spot: radians, full intensity inside
    outer_angle: float = 0.0  # spot: radians, zero outside

    def incident(self, p_N3: np.ndarray):
        """Unit vectors towards the light ``(N, 3)``, their distances ``(N,)`` and irradiance scale ``(N,)``."""
        n = len(p_N3)
        if self.kind == "directional":
            to_light = np.broadcast_to(-self.direction, (n, 3)).copy()
            return to_light, np.full(n, np.inf), np.full(n, self.intensity)
        d = self.position - p_N3
        dist = row_norms(d)
        to_light = d / np.maximum(dist, 1e-12)[:, None]
        power = self.intensity / np.maximum(dist, 1e-6) ** 2
        if self.kind == "spot":
            cos_t = -(to_light @ self.direction)
            ci, co = np.cos(self.inner_angle), np.cos(self.outer_angle)
            t = np.clip((cos_t - co) / max(ci - co, 1e-9), 0.0, 1.0)
            power = power * t * t * (3 - 2 * t)
        return to_light, dist, power


@dataclass
class Camera:
    """A pinhole camera. ``pose`` is camera-to-world in OpenGL convention (looks down -z, +y up)."""

    yfov: float  # radians
    width: int
    height: int
    pose: np.ndarray  # (4, 4)
    znear: float = 0.05
    zfar: float = 100.0

    @property
    def K(self) -> np.ndarray:
        """Intrinsics for pixel centres at (col + 0.5, row + 0.5), row 0 at the top."""
        fy = 0.5 * self.height / np.tan(self.yfov / 2)
        return np.array([[fy, 0, self.width / 2], [0, fy, self.height / 2], [0, 0, 1.0]])

    @property
    def center(self) -> np.ndarray:
        return self.pose[:3, 3]

    def pixel_rays(self):
        """World ray origins and unit directions, ``(H, W, 3)`` each, through every pixel centre."""
        o, d = pixel_rays(self.K[None], self.pose[None], self.height, self.width)
        return o[0], d[0]

    def unproject(self, depth_HW: np.ndarray) -> np.ndarray:
        """World positions ``(H, W, 3)`` of pixels with z-depth ``depth_HW`` (z measured along -z_cam)."""
        K = self.K
        rows, cols = np.mgrid[0 : self.height, 0 : self.width] + 0.5
        p_cam = np.stack([(cols - K[0, 2]) / K[0, 0] * depth_HW, -(rows - K[1, 2]) / K[1, 1] * depth_HW, -depth_HW], -1)
        return p_cam @ self.pose[:3, :3].T + self.pose[:3, 3]


def pixel_rays(K_N33: np.ndarray, pose_N44: np.ndarray, height: int, width: int):
    """World ray origins and unit directions, ``(N, H, W, 3)`` each, through every pixel centre of N cameras with
    intrinsics ``K`` (pixel centres at +0.5) and camera-to-world poses (OpenGL convention). The one home of this
    maths: :meth:`Camera.pixel_rays` and ``Dataset.rays`` both call it."""
    K, P = np.asarray(K_N33, dtype=np.float64), np.asarray(pose_N44, dtype=np.float64)
    rows, cols = np.mgrid[0:height, 0:width] + 0.5
    d_cam = np.stack([(cols - K[:, None, None, 0, 2]) / K[:, None, None, 0, 0],
                      -(rows - K[:, None, None, 1, 2]) / K[:, None, None, 1, 1], -np.ones((len(K), height, width))],
                     -1)
    d = np.einsum("nhwj,nij->nhwi", d_cam, P[:, :3, :3])
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    return np.broadcast_to(P[:, None, None, :3, 3], d.shape).copy(), d


def orient_towards(normal_N3: np.ndarray, view_N3: np.ndarray) -> np.ndarray:
    """Normals made to face the viewer: where ``normal . view < 0`` the normal is projected onto the plane
    perpendicular to ``view`` (``view`` points from the surface to the viewer). A rasterised or ray-cast facet
    can face the camera where the smooth exact normal at the same point has just turned away (silhouettes)."""
    dots = np.einsum("ij,ij->i", normal_N3, view_N3)
    away = dots < 0
    out = normal_N3.copy()
    out[away] -= dots[away, None] * view_N3[away]
    return out / np.maximum(row_norms(out), 1e-12)[:, None]


def look_at(eye, target, up=(0.0, 1.0, 0.0)) -> np.ndarray:
    """Camera-to-world pose (OpenGL convention) at ``eye`` looking at ``target``."""
    eye, target, up = (np.asarray(v, dtype=np.float64) for v in (eye, target, up))
    back = eye - target
    if np.linalg.norm(back) < 1e-9:
        raise ValueError(f"look_at: eye {eye.tolist()} is at the target")
    back /= np.linalg.norm(back)
    right = np.cross(up, back)
    if np.linalg.norm(right) < 1e-9:  # looking straight down or up: any right vector will do
        right = np.cross((0.0, 0.0, 1.0), back)
    right /= np.linalg.norm(right)
    pose = np.eye(4)
    pose[:3, 0], pose[:3, 1], pose[:3, 2], pose[:3, 3] = right, np.cross(back, right), back, eye
    return pose


@dataclass
class Scene:
    """Everything needed to render one image and to answer exact queries about its 3D content.

    Instance ids: object ``k`` of ``objects`` has id ``k + 1``; 0 is the background.
    """

    objects: list[SceneObject]
    lights: list[Light]
    camera: Camera
    ambient: np.ndarray  # linear RGB irradiance, (3,)
    background: np.ndarray  # linear RGB, (3,)
    factors: dict[str, float] = field(default_factory=dict)
    shadows: bool = True  # whether lights cast shadows (False: every point with n.l > 0 sees every light)
    _cache: dict = field(default_factory=dict, repr=False)

    def combined_mesh(self):
        """All objects as one world mesh and each face's instance id ``(F,)`` (cached)."""
        if "mesh" not in self._cache:
            meshes = [o.world_mesh() for o in self.objects]
            face_ids = np.concatenate([np.full(len(m.faces), k + 1, np.int32) for k, m in enumerate(meshes)])
            self._cache["mesh"] = (trimesh.util.concatenate(meshes), face_ids)
        return self._cache["mesh"]

    def intersect(self, origins_N3: np.ndarray, dirs_N3: np.ndarray, leaving_N: np.ndarray | None = None):
        """First hit of each ray (unit directions): distance ``(N,)`` (inf on a miss) and instance id ``(N,)``.

        Rays are cast with embree against each object's triangles in its local frame, so an object's BVH is built
        once per shape rather than once per scene; rays that miss an object's bounding sphere skip it.
        leaving_N: for rays that start on the surface of instance i heading outwards (shadow rays), i; such a ray
        cannot hit its own object again when that object is convex, so it is not tested against it.
        """
        o, d = np.asarray(origins_N3, np.float64), np.asarray(dirs_N3, np.float64)
        best = np.full(len(o), np.inf)
        inst = np.zeros(len(o), np.int64)
        if not self.objects:
            return best, inst
        # Bounding-sphere test of every ray against every object: the ray's closest approach to the centre c, ahead
        # of the origin or inside. With oc = c - o: oc.d = c.d - o.d and |oc|^2 = |c|^2 - 2 c.o + |o|^2, so all
        # objects take two matrix products (K, 3) @ (3, N) instead of K passes over (N, 3) arrays. The test only
        # culls: a ray it keeps is cast exactly as before, and the radius' 1e-6 margin (Primitive.radius) dwarfs
        # the rounding of the expansion, so a ray it drops cannot hit the mesh and the result is unchanged.
        centres_K3 = np.array([obj.translation for obj in self.objects], np.float64)
        t_mid_KN = centres_K3 @ d.T - np.einsum("ij,ij->i", o, d)
        oc2_KN = np.einsum("ij,ij->i", centres_K3, centres_K3)[:, None] - 2.0 * (centres_K3 @ o.T) \
            + np.einsum("ij,ij->i", o, o)
        for k, obj in enumerate(self.objects):
            c, rad2 = obj.translation, (obj.scale * obj.shape_radius) ** 2
            t_mid, oc2 = t_mid_KN[k], oc2_KN[k]
            miss = (oc2 - t_mid**2 > rad2) | ((t_mid < 0) & (oc2 > rad2))
            if leaving_N is not None and obj.shape.convex:
                miss |= leaving_N == k + 1
            idx = np.flatnonzero(~miss)
            if not len(idx):
                continue
            o_l = (o[idx] - c) @ obj.rotation / obj.scale
            d_l = d[idx] @ obj.rotation
            st = obj.shape.stretch  # cast in the base shape's frame: o + t d maps to o_l + t d_l, same t
            t = obj.scale * _caster(obj.shape.base).first_hit(o_l / st, d_l / st)
            closer = t < best[idx]
            hit = idx
            best[hit[closer]] = t[closer]
            inst[hit[closer]] = k + 1
        return best, inst


class _Caster:
    """embree's first-hit query over one local mesh (small coordinates, so float32 is precise enough)."""

    def __init__(self, mesh: trimesh.Trimesh):
        from embreex import rtcore_scene
        from embreex.mesh_construction import TriangleMesh

        self.scene = rtcore_scene.EmbreeScene()
        TriangleMesh(scene=self.scene, vertices=np.asarray(mesh.vertices, np.float32),
                     indices=np.asarray(mesh.faces, np.int32))

    def first_hit(self, o_N3: np.ndarray, d_N3: np.ndarray) -> np.ndarray:
        """Ray parameter t of the first hit along ``o + t d`` (d need not be unit), inf on a miss, ``(N,)``."""
        res = self.scene.run(np.ascontiguousarray(o_N3, np.float32), np.ascontiguousarray(d_N3, np.float32),
                             output=1)
        t = res["tfar"].astype(np.float64)
        t[res["primID"] < 0] = np.inf
        return t


_CASTERS: dict[int, tuple] = {}


def _caster(shape) -> _Caster:
    """The ray caster of a shape's local mesh, built once per shape."""
    entry = _CASTERS.get(id(shape))
    if entry is None or entry[0] is not shape:
        if len(_CASTERS) > 1024:
            _CASTERS.clear()
        entry = (shape, _Caster(shape.mesh()))
        _CASTERS[id(shape)] = entry
    return entry[1]
