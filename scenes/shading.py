"""The image model: linear RGB = albedo * diffuse shading + specular, composed from rasterised geometry.

Diffuse shading is ambient plus, per light, its colour x irradiance x max(0, n.l) x visibility; the highlight is an
energy-normalised Blinn-Phong lobe tinted by the material's specular colour. Visibility is exact: one shadow ray per
pixel and light, cast with embree against the same triangles pyrender rasterised.
"""

from __future__ import annotations

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
    for light in scene.lights:
        to_light, dist, power = light.incident(pos_N3)
        ndl = np.einsum("ij,ij->i", normal_N3, to_light)
        lit = (ndl > 0) & (power > 0)
        visible = lit.copy()
        idx = np.flatnonzero(lit)
        if len(idx):
            # Rows gathered with take: the same values as origins_N3[idx], much faster over a last axis of 3.
            inst_idx = inst_N[idx]
            hit_d, hit_inst = _shadow_hits(scene, origins_N3.take(idx, axis=0), to_light.take(idx, axis=0), inst_idx)
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


def _shadow_hits(scene: Scene, origins_N3, dirs_N3, leaving_N):
    """``scene.intersect(origins_N3, dirs_N3, leaving_N=leaving_N)``, with the floor left out of the casts of the
    rays that cannot reach it.

    The floor's bounding sphere holds the whole scene, so the intersection's culling keeps every ray for it and each
    shadow ray from an object would be cast against its triangles. A ray that starts above the top of an unrotated
    floor slab (by FLOOR_CLEARANCE, hundreds of float32 steps in the slab's frame) and heads upwards stays above
    every one of its triangles, so its cast there is a miss (inf, which changes no ray's nearest hit); rays leaving
    the floor itself are not cast against it anyway. Those rays are cast against the other objects only (ids mapped
    back), the rest against the whole scene: each ray's result is exactly the one of the single call."""
    ks = [k for k, o in enumerate(scene.objects) if o.shape_name == "floor" and np.array_equal(o.rotation, np.eye(3))]
    if not ks:
        return scene.intersect(origins_N3, dirs_N3, leaving_N=leaving_N)
    kf = ks[0]
    floor = scene.objects[kf]
    top = floor.translation[1] + floor.scale * floor.shape.half_height
    away = (leaving_N == kf + 1) | ((origins_N3[:, 1] > top + FLOOR_CLEARANCE) & (dirs_N3[:, 1] > 0))
    far = np.flatnonzero(away)
    if not len(far):
        return scene.intersect(origins_N3, dirs_N3, leaving_N=leaving_N)
    others = replace(scene, objects=scene.objects[:kf] + scene.objects[kf + 1:], _cache={})
    leave = leaving_N if len(far) == len(leaving_N) else leaving_N[far]
    leave = np.where(leave > kf + 1, leave - 1, np.where(leave == kf + 1, 0, leave))  # ids in `others`
    if len(far) == len(leaving_N):
        hit_d, hit_inst = others.intersect(origins_N3, dirs_N3, leaving_N=leave)
        return hit_d, np.where(hit_inst > kf, hit_inst + 1, hit_inst)
    near = np.flatnonzero(~away)
    hit_d, hit_inst = np.empty(len(leaving_N)), np.empty(len(leaving_N), np.int64)
    hit_d[near], hit_inst[near] = scene.intersect(origins_N3.take(near, axis=0), dirs_N3.take(near, axis=0),
                                                  leaving_N=leaving_N[near])
    d_far, i_far = others.intersect(origins_N3.take(far, axis=0), dirs_N3.take(far, axis=0), leaving_N=leave)
    hit_d[far], hit_inst[far] = d_far, np.where(i_far > kf, i_far + 1, i_far)
    return hit_d, hit_inst
