"""Exact queries of a scene at any 3D point or along any ray (the optimal outputs of coordinate models).

Points use the objects' exact SDFs (analytic primitives; trimesh for mesh files). Rays are cast with embree against
the same triangles the rasteriser draws, so a ray query through a pixel centre agrees with the rendered buffers;
its normal and albedo come from the exact surface at the hit.
"""

from __future__ import annotations

import numpy as np

from .scene import Scene, orient_towards


class SceneQuery:
    """Point and ray queries of one :class:`~frobnolab.scenes.scene.Scene`. Instance ids: object k is k + 1."""

    def __init__(self, scene: Scene):
        self.scene = scene

    def _per_object_sdf(self, p_N3) -> np.ndarray:
        p = np.asarray(p_N3, dtype=np.float64).reshape(-1, 3)
        if not self.scene.objects:
            return np.full((len(p), 1), np.inf)
        return np.stack([o.sdf(p) for o in self.scene.objects], axis=1)  # (N, K)

    def sdf(self, p_N3) -> np.ndarray:
        """Signed distance to the scene (union of objects), negative inside, ``(N,)``."""
        return self._per_object_sdf(p_N3).min(axis=1)

    def occupancy(self, p_N3) -> np.ndarray:
        """True where a point is inside some object, ``(N,)``."""
        return self.sdf(p_N3) < 0

    def nearest(self, p_N3) -> dict[str, np.ndarray]:
        """The nearest surface: ``instance (N,)``, signed ``distance (N,)``, its ``point``, ``normal``, ``albedo``."""
        p = np.asarray(p_N3, dtype=np.float64).reshape(-1, 3)
        d = self._per_object_sdf(p)
        k = np.abs(d).argmin(axis=1)
        dist = d[np.arange(len(p)), k]
        out = {"instance": (k + 1).astype(np.int64), "distance": dist, "point": np.zeros_like(p),
               "normal": np.zeros_like(p), "albedo": np.zeros_like(p)}
        for j, obj in enumerate(self.scene.objects):
            sel = k == j
            if sel.any():
                n = obj.normal(p[sel])
                surf = p[sel] - dist[sel, None] * n
                out["normal"][sel], out["point"][sel], out["albedo"][sel] = n, surf, obj.albedo(surf)
        return out

    def ray(self, origins_N3, dirs_N3) -> dict[str, np.ndarray]:
        """First hit along each ray: ``hit (N,)``, ``distance`` (inf if none), ``instance`` (0 if none),
        ``position``, ``normal`` (exact surface, facing the ray), ``albedo``."""
        o = np.asarray(origins_N3, dtype=np.float64).reshape(-1, 3)
        d = np.asarray(dirs_N3, dtype=np.float64).reshape(-1, 3)
        norms = np.linalg.norm(d, axis=1)
        if np.any(norms == 0):
            raise ValueError("ray directions must be non-zero")
        d = d / norms[:, None]
        n = len(o)
        out = {"hit": np.zeros(n, bool), "distance": np.full(n, np.inf), "instance": np.zeros(n, np.int64),
               "position": np.zeros((n, 3)), "normal": np.zeros((n, 3)), "albedo": np.zeros((n, 3))}
        if n == 0 or not self.scene.objects:
            return out
        dist, inst = self.scene.intersect(o, d)
        hit = np.isfinite(dist)
        out["hit"], out["distance"], out["instance"] = hit, dist, inst
        out["position"][hit] = o[hit] + dist[hit, None] * d[hit]
        for k, obj in enumerate(self.scene.objects):
            sel = np.flatnonzero(inst == k + 1)
            if len(sel):
                nrm = orient_towards(obj.normal(out["position"][sel]), -d[sel])
                out["normal"][sel], out["albedo"][sel] = nrm, obj.albedo(out["position"][sel])
        return out

    def pixel_rays(self) -> dict[str, np.ndarray]:
        """:meth:`ray` through every pixel centre of the scene's camera, reshaped to ``(H, W[, 3])``."""
        cam = self.scene.camera
        o, d = cam.pixel_rays()
        res = self.ray(o.reshape(-1, 3), d.reshape(-1, 3))
        return {k: v.reshape((cam.height, cam.width) + v.shape[1:]) for k, v in res.items()}
