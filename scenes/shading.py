"""The image model: linear RGB = albedo * diffuse shading + specular, composed from rasterised geometry.

Diffuse shading is ambient plus, per light, its colour x irradiance x max(0, n.l) x visibility; the highlight is an
energy-normalised Blinn-Phong lobe tinted by the material's specular colour. Visibility is exact: one shadow ray per
pixel and light, cast with embree against the same triangles pyrender rasterised.
"""

from __future__ import annotations

import numpy as np

from .primitives import row_norms
from .scene import Scene

SHADOW_OFFSET = 2e-3  # world units along the normal, so a shadow ray does not hit its own facet


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
            hit_d, hit_inst = scene.intersect(origins_N3.take(idx, axis=0), to_light.take(idx, axis=0),
                                              leaving_N=inst_idx)
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

