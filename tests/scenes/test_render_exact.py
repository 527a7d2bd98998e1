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


def _random_shadow_rays(scene, light, rng, n=6000):
    """Shadow rays as shade casts them: from p + SHADOW_OFFSET n towards the light, p on or above the floor (some
    just above or below its top), with each ray's distance to the light (inf for a directional one)."""
    p = rng.uniform(-3, 3, (n, 3))
    p[:, 1] = rng.choice([0.0, 1e-4, 2e-4, 0.3, 1.0], n) + rng.normal(size=n) * 1e-4
    nrm = rng.normal(size=(n, 3))
    nrm /= np.linalg.norm(nrm, axis=1, keepdims=True)
    to_light, dist, _ = light.incident(p)
    return p + SHADOW_OFFSET * nrm, to_light, dist, rng.integers(0, len(scene.objects) + 1, n)


def test_shadow_shortcuts_block_exactly_the_rays_the_whole_scene_blocks():
    # The floor left out where it cannot be hit, rays that pass no bounding sphere before the light not cast: the
    # rays blocked before the light, and their distances and ids, are those of one intersect with the whole scene.
    rng = np.random.default_rng(0)
    fam = load_family("clutter")
    for i in range(6):
        scene = fam.sample(i, seed=4, size=32)
        rays = [(light, *_random_shadow_rays(scene, light, rng)) for light in scene.lights]
        hits = _shadow_hits(scene, [(light, o, d, leaving) for light, o, d, _, leaving in rays])  # one batch
        for (light, o, d, dist, leaving), (got_d, got_i) in zip(rays, hits):
            want_d, want_i = scene.intersect(o, d, leaving_N=leaving)
            blocked = want_d < dist
            assert np.array_equal(got_d < dist, blocked)
            assert np.array_equal(got_d[blocked], want_d[blocked]) and np.array_equal(got_i[blocked], want_i[blocked])
            assert blocked.any() and not blocked.all()


def test_shading_with_the_shortcuts_gives_the_plain_casts_bytes(monkeypatch):
    # Every buffer of real renders, with the shadow shortcuts and with every lit point's ray cast at the whole scene.
    import frobnolab.scenes.shading as shading

    scenes = [(f, load_family(f).sample(i, seed=6, size=40)) for f in ("clutter", "shapes", "single") for i in range(3)]
    with Renderer(40) as r:
        fast = [r.render(s) for _, s in scenes]
        monkeypatch.setattr(shading, "_shadow_hits", lambda scene, rays: [
            scene.intersect(o, d, leaving_N=leaving) for _, o, d, leaving in rays])
        plain = [r.render(s) for _, s in scenes]
    for a, b in zip(fast, plain):
        assert a.keys() == b.keys() and all(a[k].tobytes() == b[k].tobytes() for k in a)
    assert any(a["shadow"].any() for a in fast)


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
