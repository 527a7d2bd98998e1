"""The image model: linear RGB = albedo * diffuse shading + specular, composed from rasterised geometry.

Diffuse shading is ambient plus, per light, its colour x irradiance x max(0, n.l) x visibility; the highlight is an
energy-normalised Blinn-Phong lobe tinted by the material's specular colour. Visibility is exact: one shadow ray per
pixel and light, cast with embree against the same triangles pyrender rasterised (none when ``scene.shadows`` is
False, a family's ``shadows: no``: then every point with n.l > 0 sees every light).
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from .primitives import row_norms
from .scene import Scene

SHADOW_OFFSET = 2e-3  # world units along the normal, so a shadow ray does not hit its own facet
FLOOR_CLEARANCE = 1e-4  # world units above the floor's top from which an upward ray provably misses the floor


def shade(scene: Scene, pos_N3, normal_N3, inst_N, view_N3):
    """Diffuse shading ``(N, 3)``, specular ``(N, 3)`` and the cast-shadow mask ``(N,)`` at surface points.

    inst_N: instance ids (``k + 1`` for ``scene.objects[k]``); view_N3: unit vectors from the points to the camera.
    """
    n = len(pos_N3)
    # Summed channel by channel, (3, N): the same products and sums as on (N, 3) rows, but numpy broadcasts a
    # weight (N,) against a colour (3,) far faster along N than along a last axis of 3. Returned as (N, 3) arrays
    # (C order, as the callers' other (N, 3) arrays, so their elementwise products stay fast).
    diffuse_3N = np.repeat(np.asarray(scene.ambient, np.float64)[:, None], n, axis=1)
    specular_3N = np.zeros((3, n))
    cast = np.zeros(n, dtype=bool)
    if n == 0 or not scene.lights:
        return np.ascontiguousarray(diffuse_3N.T), np.ascontiguousarray(specular_3N.T), cast
    shininess = np.array([o.material.shininess for o in scene.objects])[inst_N - 1]
    lobe_scale = (shininess + 8) / (8 * np.pi)  # the lobe's normalisation, the same for every light
    origins_N3 = pos_N3 + SHADOW_OFFSET * normal_N3  # every point's shadow-ray origin, once for all lights
    per_light, rays = [], []
    for light in scene.lights:
        to_light, dist, power = light.incident(pos_N3)
        ndl = np.einsum("ij,ij->i", normal_N3, to_light)
        idx = np.flatnonzero((ndl > 0) & (power > 0))
        per_light.append((to_light, dist, power, ndl, idx))
        # Rows gathered with take: the same values as origins_N3[idx], much faster over a last axis of 3.
        rays.append((light, origins_N3.take(idx, axis=0), to_light.take(idx, axis=0), inst_N[idx]))
    if scene.shadows:
        hits = _shadow_hits(scene, rays)  # every light's rays in one batch
    else:  # no shadow rays: every ray reaches its light
        hits = [(np.full(len(o), np.inf), np.zeros(len(o), np.int64)) for _, o, _, _ in rays]
    for light, (to_light, dist, power, ndl, idx), (hit_d, hit_inst), (_, _, _, inst_idx) in zip(
            scene.lights, per_light, hits, rays):
        visible = np.zeros(n, bool)
        visible[idx] = True
        blocked = hit_d < dist[idx]
        visible[idx[blocked]] = False
        cast[idx[blocked & (hit_inst != inst_idx)]] = True
        w = np.where(visible, power * np.maximum(ndl, 0.0), 0.0)
        diffuse_3N += np.multiply.outer(light.color, w)
        half = to_light + view_N3
        half /= np.maximum(row_norms(half), 1e-12)[:, None]
        ndh = np.clip(np.einsum("ij,ij->i", normal_N3, half), 0.0, 1.0)
        lobe = lobe_scale * ndh**shininess
        specular_3N += np.multiply.outer(light.color, w * lobe)
    return np.ascontiguousarray(diffuse_3N.T), np.ascontiguousarray(specular_3N.T), cast


def _shadow_hits(scene: Scene, rays):
    """Each shadow ray's nearest hit closer than its light. ``rays``: per light, ``(light, origins (M, 3),
    directions (M, 3), leaving ids (M,))``; returns per light distances ``(M,)`` and instance ids ``(M,)``: those of
    ``scene.intersect(origins, directions, leaving_N=leaving)`` for every ray whose hit there is closer than the
    light (a point light: than the ray's point's distance to it), inf and 0 for every other ray.

    Every ray's hit is its own, whatever batch it is cast in, so the rays of all lights are cast together. Two exact
    shortcuts, since the intersection's bounding-sphere culling costs more than its casts here:
    - The floor's bounding sphere holds the whole scene, so the culling keeps every ray for it and each shadow ray
      from an object would be cast at its triangles. A ray that starts above the top of an unrotated floor slab (by
      FLOOR_CLEARANCE, hundreds of float32 steps in the slab's frame) and heads upwards stays above all of them (a
      miss, inf, which changes no ray's nearest hit); rays leaving the floor are not cast at it anyway. Those rays
      are cast against the other objects only (ids mapped back), the rest against the whole scene.
    - Of the rays cast against the other objects, those that pass no object's bounding sphere (grown by margins
      that dwarf the rounding) before the light reach nothing that could block it (:func:`_may_block`) and are not
      cast at all.
    """
    n_obj = len(scene.objects)
    ks = [k for k, o in enumerate(scene.objects) if o.shape_name == "floor" and np.array_equal(o.rotation, np.eye(3))]
    if ks:
        kf = ks[0]
        floor = scene.objects[kf]
        top = floor.translation[1] + floor.scale * floor.shape.half_height
        others = replace(scene, objects=scene.objects[:kf] + scene.objects[kf + 1:], _cache={})
        back = np.array([0] + [k + 1 for k in range(n_obj) if k != kf])  # id in `others` -> id in `scene`
        fwd = np.zeros(n_obj + 1, np.int64)  # id in `scene` -> id in `others` (the floor: none)
        fwd[back[1:]] = np.arange(1, n_obj)
    else:
        others, back, fwd = scene, np.arange(n_obj + 1), np.arange(n_obj + 1)
    out, near_parts, far_parts = [], [], []  # parts: (light's index, rows, origins, directions, leaving ids)
    for j, (light, o, d, leaving) in enumerate(rays):
        out.append((np.full(len(o), np.inf), np.zeros(len(o), np.int64)))
        if ks:
            away = (leaving == kf + 1) | ((o[:, 1] > top + FLOOR_CLEARANCE) & (d[:, 1] > 0))
            near = np.flatnonzero(~away)
            if len(near):
                near_parts.append((j, near, o.take(near, axis=0), d.take(near, axis=0), leaving[near]))
                far = np.flatnonzero(away)
                o, d, leaving = o.take(far, axis=0), d.take(far, axis=0), leaving[far]
            else:
                far = None
        else:
            far = None
        leave = fwd[leaving]
        kept = np.flatnonzero(_may_block(others.objects, light, o, d, leave))
        rows = kept if far is None else far[kept]
        far_parts.append((j, rows, o.take(kept, axis=0), d.take(kept, axis=0), leave[kept]))
    for target, ids, parts in ((scene, None, near_parts), (others, back, far_parts)):
        parts = [p for p in parts if len(p[1])]
        if not parts:
            continue
        hit_d, hit_inst = target.intersect(np.concatenate([p[2] for p in parts]), np.concatenate([p[3] for p in parts]),
                                           leaving_N=np.concatenate([p[4] for p in parts]))
        if ids is not None:
            hit_inst = ids[hit_inst]
        start = 0
        for j, rows, *_ in parts:
            out[j][0][rows], out[j][1][rows] = hit_d[start:start + len(rows)], hit_inst[start:start + len(rows)]
            start += len(rows)
    return out


RAY_MARGIN = 1e-5  # relative and absolute growth of the bounding spheres in _may_block (world units)


def _may_block(objects, light, o_N3, d_N3, leaving_N):
    """A superset of the rays that may hit one of ``objects`` before ``light``, ``(N,)`` bool.

    Rays ``o + t d`` from the points' shadow origins towards the light, ``d`` the points' direction to it. Each
    object lies within its bounding sphere (centre, ``scale * shape_radius``: every mesh vertex, with a 1e-6 margin
    already), grown here by RAY_MARGIN. A directional light's rays are parallel: one misses a sphere when its line
    passes farther than the radius from the centre (distances in the plane across the rays). A point or spot
    light's ray from o = p + SHADOW_OFFSET n runs alongside the segment from p to the light, within SHADOW_OFFSET
    of it, so it can meet a sphere before the light only if that segment meets the sphere grown by SHADOW_OFFSET,
    that is only if seen from the light the point lies within the sphere's angular radius (every object whose
    grown sphere holds the light keeps all rays). A ray that leaves a convex object is not cast at it."""
    n = len(o_N3)
    if not objects or not n:
        return np.zeros(n, bool)
    c_K3 = np.array([ob.translation for ob in objects], np.float64)
    r_K = np.array([ob.scale * ob.shape_radius for ob in objects]) * (1 + RAY_MARGIN) + RAY_MARGIN
    if light.kind == "directional":
        ux, uy, uz = (float(v) for v in d_N3[0])
        un = math.sqrt(ux * ux + uy * uy + uz * uz)
        ux, uy, uz = ux / un, uy / un, uz / un
        # Two unit vectors across the rays (python floats: numpy's cross and stack cost more than the arithmetic).
        ax, ay, az = (0.0, -uz, uy) if abs(ux) < 0.9 else (uz, 0.0, -ux)  # u x (1, 0, 0), or u x (0, 1, 0)
        an = math.sqrt(ax * ax + ay * ay + az * az)
        ax, ay, az = ax / an, ay / an, az / an
        bx, by, bz = uy * az - uz * ay, uz * ax - ux * az, ux * ay - uy * ax
        E = np.array([[ax, bx], [ay, by], [az, bz]])  # (3, 2), orthonormal
        p_N2, c_K2 = o_N3 @ E, c_K3 @ E
        p2 = p_N2[:, 0] * p_N2[:, 0] + p_N2[:, 1] * p_N2[:, 1]
        c2 = c_K2[:, 0] * c_K2[:, 0] + c_K2[:, 1] * c_K2[:, 1]
        # Squared distances across the rays, |c|^2 - 2 c.p + |p|^2 (one matrix product for all objects).
        keep_KN = c2[:, None] - 2.0 * (c_K2 @ p_N2.T) + p2 <= (r_K * r_K)[:, None]
    else:
        cl_K3 = c_K3 - light.position
        dist_K = np.sqrt(np.einsum("ij,ij->i", cl_K3, cl_K3))
        reach_K = r_K + SHADOW_OFFSET * (1 + RAY_MARGIN)
        holds = dist_K <= reach_K
        sin_K = np.where(holds, 1.0, reach_K / np.where(holds, 1.0, dist_K))
        cos_K = np.sqrt(np.maximum(1.0 - sin_K * sin_K, 0.0))
        # -d points from the light to the point: within the angular radius when -d . c_hat >= cos.
        keep_KN = (cl_K3 / np.maximum(dist_K, 1e-300)[:, None]) @ d_N3.T <= -(cos_K - RAY_MARGIN)[:, None]
        keep_KN[holds] = True
    for k, ob in enumerate(objects):
        if ob.shape.convex:
            keep_KN[k] &= leaving_N != k + 1
    return np.logical_or.reduce(keep_KN, axis=0)
