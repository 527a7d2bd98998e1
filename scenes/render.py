"""Render a scene into an image and its exact ground-truth buffers.

Who computes what:
- pyrender (OpenGL; OSMesa on CPU, EGL on GPU) rasterises the triangles once per image, one sample at each pixel
  centre: z-depth and instance ids (its segmentation pass).
- numpy composes everything else from those two buffers: world position (depth unprojected), normals and curvature
  (gradient and Laplacian of the object's exact SDF), albedo (the material's texture at the point), diffuse shading,
  specular and cast shadows (lights evaluated per pixel, shadow rays cast with embree on the same triangles), edge
  maps, and the image itself: ``rgb_linear = albedo * shading + specular`` exactly, ``rgb`` its sRGB encoding.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import numpy as np

from . import edges
from .gl import pyrender
from .primitives import SHAPE_CLASSES, as_rows, row_norms
from .scene import Scene, linear_to_srgb, look_at, orient_towards
from .shading import shade
from .textures import MATERIAL_CLASSES


@dataclass(frozen=True)
class BufferSpec:
    name: str
    dtype: str
    channels: int  # 0 for (H, W), else (H, W, channels)
    units: str
    meaning: str


#: Every per-pixel buffer of a render, as stored in datasets (arrays of shape (N, H, W[, C])).
BUFFERS = (
    BufferSpec("rgb", "float32", 3, "sRGB in [0, 1]", "the image the models see: sRGB encoding of clip(rgb_linear)"),
    BufferSpec("rgb_linear", "float32", 3, "linear RGB", "albedo * shading + specular, unclipped"),
    BufferSpec("depth", "float32", 0, "world units", "z-depth along the camera's -z axis; 0 on background"),
    BufferSpec("distance", "float32", 0, "world units", "distance from the camera centre along the ray; 0 on background"),
    BufferSpec("normal_cam", "float32", 3, "unit vector", "surface normal in the camera frame (OpenGL: -z forward); 0 on background"),
    BufferSpec("normal_world", "float32", 3, "unit vector", "surface normal in the world frame (y up); 0 on background"),
    BufferSpec("position", "float32", 3, "world units", "world position of the visible surface point; 0 on background"),
    BufferSpec("instance", "int16", 0, "id", "object k of the scene is k + 1 (the floor, when present, is 1); 0 background"),
    BufferSpec("shape_class", "uint8", 0, "class", "index into SHAPE_CLASSES: " + ", ".join(SHAPE_CLASSES)),
    BufferSpec("material", "uint8", 0, "class", "index into MATERIAL_CLASSES: " + ", ".join(MATERIAL_CLASSES)),
    BufferSpec("albedo", "float32", 3, "linear RGB", "diffuse reflectance; the background colour on background"),
    BufferSpec("shading", "float32", 3, "linear RGB irradiance", "ambient + sum of lights' n.l x visibility; 1 on background"),
    BufferSpec("specular", "float32", 3, "linear RGB", "Blinn-Phong highlight radiance; 0 on background"),
    BufferSpec("shadow", "bool", 0, "mask", "in the cast shadow of another object for at least one light"),
    BufferSpec("foreground", "bool", 0, "mask", "shows an object other than the floor"),
    BufferSpec("curvature", "float32", 0, "1 / world units", "mean curvature of the exact surface (0 for meshes)"),
    BufferSpec("edge_silhouette", "bool", 0, "mask", "instance id differs from a 4-neighbour"),
    BufferSpec("edge_depth", "bool", 0, "mask", f"ray distance jumps by > {edges.DEPTH_EDGE_REL:.0%} to a 4-neighbour"),
    BufferSpec("edge_crease", "bool", 0, "mask", f"normal turns by > {edges.CREASE_DEG:g} degrees within one instance"),
    BufferSpec("edge_albedo", "bool", 0, "mask", f"linear albedo changes by > {edges.ALBEDO_EDGE} in a channel"),
)
BUFFER_NAMES = tuple(b.name for b in BUFFERS)


class _KeepAliveScene(pyrender.Scene):
    """A pyrender scene whose ``meshes`` (what the renderer keeps uploaded) also include ``kept``, meshes no node
    draws. Keep-alive nodes would do the same, but pyrender sorts every mesh node by its distance to the camera
    each frame (a scene-graph walk per node), which cost more than drawing the segmentation pass."""

    kept: frozenset = frozenset()

    @property
    def meshes(self):
        return super().meshes | self.kept


# glibc's mallopt parameters (malloc.h) and the values a renderer's process gets.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
KEEP_FREED_HEAP = 64 << 20  # bytes of freed heap a rendering process keeps instead of handing them back each frame
HEAP_BELOW = 32 << 20  # allocations below this size come from the heap (glibc's largest dynamic threshold)


def keep_freed_heap() -> bool:
    """Let this process keep freed heap memory (glibc only; elsewhere nothing changes): True if set.

    A frame's composition allocates and frees tens of (N, 3) float64 arrays, megabytes in all. By default glibc
    hands the top of the heap back to the kernel whenever more than about twice its largest recent allocation lies
    free there, so every frame faults fresh zeroed pages in again (a few hundred page faults a frame at 128x128,
    dearer still on a busy machine). Keeping up to KEEP_FREED_HEAP bytes (and serving allocations below HEAP_BELOW
    from the heap, which glibc's own adaptive threshold reaches anyway) lets each frame reuse the last frame's
    pages: the process's memory stays flat at its working set. It changes no value computed."""
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, HEAP_BELOW)) and bool(mallopt(_M_TRIM_THRESHOLD, KEEP_FREED_HEAP))


class Renderer:
    """An offscreen renderer of one size; keep one per process (it owns a GL context). Creating one also lets the
    process keep freed heap memory between frames (:func:`keep_freed_heap`)."""

    def __init__(self, width: int, height: int | None = None):
        height = width if height is None else height
        if width < 1 or height < 1:
            raise ValueError(f"image size must be positive, got {width}x{height}")
        keep_freed_heap()
        self.width, self.height = int(width), int(height)
        self._gl = pyrender.OffscreenRenderer(self.width, self.height)
        # id(base shape) -> (shape, uploaded mesh). Every frame's scene holds them all (as meshes without nodes,
        # see _KeepAliveScene), so pyrender never deletes and re-uploads a mesh that one frame happens not to use.
        self._meshes: dict[int, tuple] = {}

    def close(self):
        self._gl.delete()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _mesh(self, shape) -> pyrender.Mesh:
        """The uploaded mesh of ``shape.base`` (render it with ``shape.stretch`` in the node's pose)."""
        base = shape.base
        entry = self._meshes.get(id(base))
        if entry is None or entry[0] is not base:
            if len(self._meshes) > 256:  # continuous mesh-file families: do not hold meshes forever
                self._meshes.clear()
            entry = (base, pyrender.Mesh.from_trimesh(base.mesh(), smooth=False))
            self._meshes[id(base)] = entry
        return entry[1]

    def _check_size(self, scene: Scene):
        cam = scene.camera
        if (cam.width, cam.height) != (self.width, self.height):
            raise ValueError(f"scene camera is {cam.width}x{cam.height}, renderer is {self.width}x{self.height}")

    def rasterise(self, scene: Scene):
        """pyrender's z-depth ``(H, W)`` (0 on background) and instance ids ``(H, W)``."""
        self._check_size(scene)
        cam = scene.camera
        pr = _KeepAliveScene(bg_color=[0, 0, 0, 0])
        seg = {}
        # Nodes are added at the identity and then given their pose with set_pose, which stores the matrix as it is
        # (what add(pose=...) ends with too), without add's decomposition of it into a quaternion, scale and
        # translation that the renderer never reads.
        for k, obj in enumerate(scene.objects):
            node = pr.add(self._mesh(obj.shape))
            pr.set_pose(node, obj.pose @ np.diag(np.append(obj.shape.stretch, 1.0)))
            i = k + 1
            seg[node] = (i & 255, i >> 8, 0)
        pr.kept = {mesh for _, mesh in self._meshes.values()}  # uploaded, not drawn
        node = pr.add(pyrender.PerspectiveCamera(yfov=cam.yfov, aspectRatio=cam.width / cam.height,
                                                 znear=cam.znear, zfar=cam.zfar))
        pr.set_pose(node, cam.pose)
        color, depth = self._gl.render(pr, flags=pyrender.RenderFlags.SEG, seg_node_map=seg)
        ids = color[..., 0].astype(np.int16) + (color[..., 1].astype(np.int16) << 8)
        return depth.astype(np.float32), ids

    def render_rgb(self, scene: Scene):
        """Bare pyrender: its own PBR-shaded RGB and depth, for comparison (the benchmark's baseline)."""
        self._check_size(scene)
        cam = scene.camera
        pr = pyrender.Scene(bg_color=np.append(scene.background, 1.0), ambient_light=scene.ambient)
        for obj in scene.objects:
            m = obj.material
            mat = pyrender.MetallicRoughnessMaterial(baseColorFactor=np.append(m.color, 1.0),
                                                     metallicFactor=m.metallic, roughnessFactor=m.roughness)
            pr.add(pyrender.Mesh.from_trimesh(obj.shape.mesh(), material=mat, smooth=False), pose=obj.pose)
        for light in scene.lights:
            if light.kind == "directional":
                pose = look_at(-light.direction, np.zeros(3))
                pr.add(pyrender.DirectionalLight(color=light.color, intensity=light.intensity), pose=pose)
            else:
                pose = np.eye(4)
                pose[:3, 3] = light.position
                pr.add(pyrender.PointLight(color=light.color, intensity=light.intensity), pose=pose)
        pr.add(pyrender.PerspectiveCamera(yfov=cam.yfov, aspectRatio=cam.width / cam.height,
                                          znear=cam.znear, zfar=cam.zfar), pose=cam.pose)
        return self._gl.render(pr)

    def render(self, scene: Scene) -> dict[str, np.ndarray]:
        """All of :data:`BUFFERS` for one scene, as a dict of arrays ``(H, W[, C])``."""
        depth, ids = self.rasterise(scene)
        return compose(scene, depth, ids)


def compose(scene: Scene, depth_HW: np.ndarray, ids_HW: np.ndarray) -> dict[str, np.ndarray]:
    """Every ground-truth buffer and the image, from rasterised z-depth and instance ids."""
    cam = scene.camera
    h, w = depth_HW.shape
    fg = ids_HW > 0
    # Rows of (N, 3) arrays are gathered and scattered as whole records (as_rows) or with take: the same bytes as
    # boolean or fancy indexing, which numpy does slowly over a last axis of 3.
    pos = as_rows(cam.unproject(depth_HW.astype(np.float64)))[fg].view(np.float64).reshape(-1, 3)
    inst = ids_HW[fg].astype(np.int64)
    n = len(pos)
    normal, albedo, tint = np.zeros((n, 3)), np.zeros((n, 3)), np.zeros((n, 3))  # tint: the specular colour
    curv, shape_cls, mat_cls = np.zeros(n), np.zeros(n, np.uint8), np.zeros(n, np.uint8)
    for k, obj in enumerate(scene.objects):
        sel = np.flatnonzero(inst == k + 1)  # indices, found once for the six uses below
        if not len(sel):
            continue
        normal_k, curv[sel], albedo_k = obj.surface(pos.take(sel, axis=0))
        albedo_k = np.ascontiguousarray(albedo_k, np.float64)
        as_rows(normal)[sel] = as_rows(np.ascontiguousarray(normal_k, np.float64))
        as_rows(albedo)[sel] = as_rows(albedo_k)
        as_rows(tint)[sel] = as_rows(np.ascontiguousarray(obj.material.specular_color(albedo_k), np.float64))
        shape_cls[sel] = SHAPE_CLASSES.index(obj.shape_name)
        mat_cls[sel] = MATERIAL_CLASSES.index(obj.material.texture.kind)
    dist = row_norms(pos - cam.center)
    view = (cam.center - pos) / np.maximum(dist, 1e-12)[:, None]
    normal = orient_towards(normal, view)
    diffuse, spec, cast = shade(scene, pos, normal, inst, view)
    spec *= tint

    out = {}

    def scatter(values, fill, dtype):
        """``values`` (N[, C]) at the foreground pixels of an (H, W[, C]) buffer of ``dtype``, ``fill`` elsewhere."""
        full = np.full((h, w) + values.shape[1:], fill, dtype=dtype)
        if values.ndim == 1:
            full[fg] = values
        else:  # cast first (the same rounding as the assignment's), then move whole rows
            as_rows(full)[fg] = as_rows(np.ascontiguousarray(values, dtype))
        return full

    out["albedo"] = scatter(albedo, 0, np.float32)
    out["albedo"][~fg] = scene.background
    out["shading"] = scatter(diffuse, 1, np.float32)
    out["specular"] = scatter(spec, 0, np.float32)
    out["rgb_linear"] = out["albedo"] * out["shading"] + out["specular"]
    out["rgb"] = linear_to_srgb(out["rgb_linear"]).astype(np.float32)
    out["depth"] = np.where(fg, depth_HW, 0).astype(np.float32)
    out["distance"] = scatter(dist, 0, np.float32)
    out["normal_world"] = scatter(normal, 0, np.float32)
    out["normal_cam"] = scatter(normal @ cam.pose[:3, :3], 0, np.float32)
    out["position"] = scatter(pos, 0, np.float32)
    out["instance"] = ids_HW.astype(np.int16)
    out["shape_class"] = scatter(shape_cls, 0, np.uint8)
    out["material"] = scatter(mat_cls, 0, np.uint8)
    out["shadow"] = scatter(cast, False, bool)
    out["foreground"] = fg & (out["shape_class"] != SHAPE_CLASSES.index("floor"))
    out["curvature"] = scatter(curv, 0, np.float32)
    out["edge_silhouette"] = edges.silhouette(out["instance"])
    out["edge_depth"] = edges.depth_edge(out["distance"], out["instance"])
    out["edge_crease"] = edges.crease(out["normal_world"], out["instance"])
    out["edge_albedo"] = edges.albedo_edge(out["albedo"])
    return {b.name: out[b.name] for b in BUFFERS}
