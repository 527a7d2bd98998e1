"""The composition's shortcuts give the very floats of the plain computations they replace (issue 17)."""

import numpy as np
import pytest

from frobnolab.scenes import load_family
from frobnolab.scenes.primitives import _STACK_MAX, MAX_CURVATURE, Primitive, as_rows, row_norms
from frobnolab.scenes.render import Renderer, _KeepAliveScene, pyrender
from frobnolab.scenes.shading import SHADOW_OFFSET, _shadow_hits


def _plain_stencil(prim, p, h=1e-4):
    """The 7-point stencil as it was first written: one SDF evaluation per offset point, (N, 3) gradient."""
    g, lap = np.empty_like(p), -6.0 * prim.sdf(p)
    for k in range(3):
        e = np.zeros(3)
        e[k] = h
        hi, lo = prim.sdf(p + e), prim.sdf(p - e)
        g[:, k] = hi - lo
        lap += hi + lo
    n = row_norms(g)[:, None]
    return g / np.where(n > 0, n, 1.0), np.clip(0.5 * lap / h**2, -MAX_CURVATURE, MAX_CURVATURE)


@pytest.mark.parametrize("shape", ["floor", "box", "sphere", "cylinder", "cone", "torus", "capsule"])
def test_stencil_batches_give_the_plain_stencils_floats(shape):
    prim = Primitive("floor", extent=8.0) if shape == "floor" else Primitive(shape, aspect=1.3)
    rng = np.random.default_rng(1)
    for n in (0, 1, 5, _STACK_MAX, _STACK_MAX + 1, 3 * _STACK_MAX):
        p = rng.normal(size=(n, 3)) * rng.choice([0.01, 1.0, 3.0], size=(n, 1))
        if shape == "floor":
            p[: n // 2, 1] = rng.normal(size=n // 2) * 1e-3  # near the top face, as rendered
        for got, want in zip(prim.normal_and_curvature(p), _plain_stencil(prim, p)):
            assert got.shape == want.shape and got.tobytes() == want.tobytes()


def test_row_records_move_the_same_bytes_as_fancy_indexing():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(9, 7, 3))
    mask = rng.random((9, 7)) < 0.6
    got = as_rows(a)[mask].view(np.float64).reshape(-1, 3)
    assert np.array_equal(got, a[mask])
    full = np.zeros((9, 7, 3), np.float32)
    as_rows(full)[mask] = as_rows(np.ascontiguousarray(a[mask], np.float32))
    ref = np.zeros((9, 7, 3), np.float32)
    ref[mask] = a[mask]
    assert full.tobytes() == ref.tobytes()
    with pytest.raises(ValueError):
        as_rows(a[:, :, :2])


def test_shadow_rays_skipping_the_floor_hit_what_the_whole_scene_hits():
    # Rays from the floor, from objects, from just above and below the floor's top, upwards and downwards: the
    # floor is left out only where it cannot be hit, and every ray's distance and id are those of one intersect.
    rng = np.random.default_rng(0)
    fam = load_family("clutter")
    for i in range(6):
        scene = fam.sample(i, seed=4, size=32)
        n = 6000
        o = rng.uniform(-3, 3, (n, 3))
        o[:, 1] = rng.choice([0.0, SHADOW_OFFSET, 1e-4, 2e-4, 0.3, 1.0], n) + rng.normal(size=n) * 1e-4
        d = rng.normal(size=(n, 3))
        d[: n // 2, 1] = np.abs(d[: n // 2, 1])
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        leaving = rng.integers(0, len(scene.objects) + 1, n)
        want = scene.intersect(o, d, leaving_N=leaving)
        got = _shadow_hits(scene, o, d, leaving)
        assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
        up = slice(0, n // 2)  # all of them may skip the floor: one call against the other objects
        o[up, 1] = np.abs(o[up, 1]) + 1e-3
        got = _shadow_hits(scene, o[up], d[up], leaving[up])
        want = scene.intersect(o[up], d[up], leaving_N=leaving[up])
        assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])


def test_rasterise_with_set_pose_matches_nodes_added_with_their_pose():
    fam = load_family("clutter")
    with Renderer(40) as r:
        for i in range(3):
            scene = fam.sample(i, seed=5, size=40)
            depth, ids = r.rasterise(scene)
            cam = scene.camera
            pr = _KeepAliveScene(bg_color=[0, 0, 0, 0])
            seg = {}
            for k, obj in enumerate(scene.objects):
                node = pr.add(r._mesh(obj.shape), pose=obj.pose @ np.diag(np.append(obj.shape.stretch, 1.0)))
                seg[node] = ((k + 1) & 255, (k + 1) >> 8, 0)
            pr.kept = {mesh for _, mesh in r._meshes.values()}
            pr.add(pyrender.PerspectiveCamera(yfov=cam.yfov, aspectRatio=cam.width / cam.height,
                                              znear=cam.znear, zfar=cam.zfar), pose=cam.pose)
            color, ref_depth = r._gl.render(pr, flags=pyrender.RenderFlags.SEG, seg_node_map=seg)
            ref_ids = color[..., 0].astype(np.int16) + (color[..., 1].astype(np.int16) << 8)
            assert depth.tobytes() == ref_depth.astype(np.float32).tobytes()
            assert np.array_equal(ids, ref_ids)
