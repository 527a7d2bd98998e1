import resource

import numpy as np
import pytest

from frobnolab.scenes import load_family
from frobnolab.scenes.queries import SceneQuery
from frobnolab.scenes.render import BUFFERS, Renderer
from frobnolab.scenes.scene import srgb_to_linear

FAMILIES = ["shapes", "clutter", "textures", "single"]


@pytest.fixture(scope="module")
def renderer():
    with Renderer(48) as r:
        yield r


@pytest.fixture(scope="module")
def renders(renderer):
    out = []
    for fam_name in FAMILIES:
        fam = load_family(fam_name)
        for i in range(3):
            scene = fam.sample(i, seed=7, size=48)
            out.append((fam_name, scene, renderer.render(scene)))
    return out


def test_buffers_have_documented_shapes_and_dtypes(renders):
    _, _, b = renders[0]
    for spec in BUFFERS:
        assert b[spec.name].dtype == np.dtype(spec.dtype), spec.name
        assert b[spec.name].shape == (48, 48) + ((spec.channels,) if spec.channels else ()), spec.name


def test_raster_agrees_with_ray_casting(renders):
    agree, total = 0, 0
    for name, scene, b in renders:
        rays = SceneQuery(scene).pixel_rays()
        agree += int((rays["instance"] == b["instance"]).sum())
        total += b["instance"].size
        both = (rays["instance"] == b["instance"]) & (b["instance"] > 0) & ~b["edge_silhouette"]
        rel = np.abs(b["distance"][both] - rays["distance"][both]) / rays["distance"][both]
        assert rel.max() < 1e-4, (name, rel.max())
    assert agree / total >= 0.999, agree / total


def test_normals_are_unit_on_surfaces_and_face_the_camera(renders):
    for _, scene, b in renders:
        fg = b["instance"] > 0
        np.testing.assert_allclose(np.linalg.norm(b["normal_world"][fg], axis=-1), 1.0, atol=1e-5)
        np.testing.assert_allclose(np.linalg.norm(b["normal_cam"][fg], axis=-1), 1.0, atol=1e-5)
        to_cam = scene.camera.center - b["position"][fg]
        assert (np.einsum("ij,ij->i", b["normal_world"][fg], to_cam) >= -1e-5).all()  # visible normals face us
        R = scene.camera.pose[:3, :3]
        np.testing.assert_allclose(b["normal_cam"][fg] @ R.T, b["normal_world"][fg], atol=1e-5)
        assert (b["normal_world"][~fg] == 0).all()


def test_decomposition_reproduces_the_image(renders):
    for name, _, b in renders:
        composed = b["albedo"] * b["shading"] + b["specular"]
        lin = srgb_to_linear(b["rgb"])
        err = np.abs(np.clip(composed, 0, 1) - lin)
        assert err.max() <= 1 / 255, (name, err.max())
        assert np.abs(composed - b["rgb_linear"]).max() <= 1 / 255


def test_ground_truth_is_consistent(renders):
    for name, scene, b in renders:
        fg = b["instance"] > 0
        assert ((b["depth"] > 0) == fg).all()
        # world position and ray distance agree with the camera
        d = np.linalg.norm(b["position"] - scene.camera.center, axis=-1)
        np.testing.assert_allclose(d[fg], b["distance"][fg], rtol=1e-5)
        # points lie on the exact surfaces (tessellation tolerance)
        q = SceneQuery(scene)
        assert np.abs(q.sdf(b["position"][fg])).max() < 3e-3 * max(o.scale for o in scene.objects[1:] or scene.objects)
        assert (b["shadow"] <= fg).all() and (b["foreground"] <= fg).all()
        assert (b["specular"] >= 0).all() and (b["shading"] >= 0).all()


def test_cast_shadows_and_edges_appear_where_expected(renders):
    clutter = [b for n, _, b in renders if n == "clutter"]
    assert any(b["shadow"].mean() > 0.01 for b in clutter)
    textures = [b for n, _, b in renders if n == "textures"]
    # textures carry albedo edges that are not silhouettes
    assert any((b["edge_albedo"] & ~b["edge_silhouette"]).sum() > 20 for b in textures)
    for b in clutter:
        assert b["edge_silhouette"].any()
        # edge_depth recomputed pair by pair from the distance and instance buffers (scenes/edges.py): a pair of
        # 4-neighbours is a depth edge when exactly one of them is foreground, or both are and the ray distance jumps
        # by more than DEPTH_EDGE_REL of the nearer one; both pixels of such a pair are marked
        from frobnolab.scenes.edges import DEPTH_EDGE_REL

        dist, inst = b["distance"], b["instance"]
        want = np.zeros(inst.shape, bool)
        h, w = inst.shape
        for i in range(h):
            for j in range(w):
                for i2, j2 in ((i + 1, j), (i, j + 1)):
                    if i2 == h or j2 == w:
                        continue
                    fa, fb = inst[i, j] > 0, inst[i2, j2] > 0
                    jump = abs(dist[i, j] - dist[i2, j2]) > DEPTH_EDGE_REL * max(min(dist[i, j], dist[i2, j2]), 1e-9)
                    if fa != fb or (fa and fb and jump):
                        want[i, j] = want[i2, j2] = True
        np.testing.assert_array_equal(b["edge_depth"], want)
        # instance boundaries between objects at a similar depth (an object on the floor) are silhouettes only
        assert (b["edge_silhouette"] & ~b["edge_depth"]).any()


def test_shadow_mask_marks_pixels_a_light_cannot_reach():
    # A sphere floating above a floor, lit from straight above: the floor under it is in its cast shadow.
    fam_text = """
name: t
camera: {pose: {type: look_at, eye: [0, 2.5, 4], target: [0, 0.5, 0]}, yfov: 50}
lights: [{type: directional, azimuth: 0, elevation: 90, intensity: 1.0}]
ambient: {intensity: 0.1}
floor: {extent: 3}
objects: [{shape: sphere, size: 0.5, elevation: 1.0}]
"""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "t.yaml"
        p.write_text(fam_text)
        scene = load_family(p).sample(0, size=32)
    with Renderer(32) as r:
        b = r.render(scene)
    floor = b["instance"] == 1
    under = floor & (np.hypot(b["position"][..., 0], b["position"][..., 2]) < 0.4)
    away = floor & (np.hypot(b["position"][..., 0], b["position"][..., 2]) > 0.6)
    assert under.sum() > 0 and b["shadow"][under].all()
    assert not b["shadow"][away].any()
    np.testing.assert_allclose(b["shading"][under], 0.1, atol=1e-6)  # ambient only


def test_shader_cache_hits_and_memory_stays_flat():
    fam = load_family("clutter")
    scenes = [fam.sample(i, seed=1, size=32) for i in range(8)]
    with Renderer(32) as r:
        for s in scenes:
            r.render(s)
            r.render_rgb(s)
        cache = r._gl._renderer._program_cache._program_cache
        n_programs = len(cache)
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for k in range(150):
            r.render(scenes[k % 8])
            r.render_rgb(scenes[k % 8])
        rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert len(cache) == n_programs  # no recompilation: the cache hits
    assert (rss1 - rss0) / 1024 < 60, f"peak RSS grew by {(rss1 - rss0) / 1024:.0f} MiB over 300 frames"


def test_same_family_and_seed_give_identical_buffers(renderer):
    fam = load_family("clutter")
    a = renderer.render(fam.sample(3, seed=5, size=48))
    b = renderer.render(load_family("clutter").sample(3, seed=5, size=48))
    for k in a:
        assert a[k].tobytes() == b[k].tobytes(), k
    c = renderer.render(fam.sample(4, seed=5, size=48))
    assert a["rgb"].tobytes() != c["rgb"].tobytes()


def test_renderer_rejects_mismatched_scene(renderer):
    scene = load_family("shapes").sample(0, size=32)
    with pytest.raises(ValueError, match="32x32"):
        renderer.render(scene)


def test_meshes_stay_uploaded_across_frames_without_drawing_them():
    # Scenes with different meshes in turn: every mesh uploaded once stays in the GL context (no re-upload when a
    # frame does not use it), yet only the frame's own objects are drawn (ids match the scene).
    fam = load_family("clutter")
    scenes = [fam.sample(i, seed=3, size=32) for i in range(6)]
    with Renderer(32) as r:
        for s in scenes:
            r.render(s)
        uploaded = set(r._gl._renderer._meshes)
        assert {m for _, m in r._meshes.values()} <= uploaded
        for s in scenes:
            ids = r.render(s)["instance"]
            assert set(np.unique(ids)) <= set(range(len(s.objects) + 1))
            assert set(r._gl._renderer._meshes) == uploaded


def test_intersect_culling_drops_no_hit():
    # The bounding-sphere cull must only skip rays that miss: compare with casting every ray at every object.
    from frobnolab.scenes.scene import _caster  # the brute-force reference casts with the same embree scenes

    rng = np.random.default_rng(0)
    for i in range(4):
        scene = load_family("clutter").sample(i, seed=2, size=32)
        o = rng.uniform(-3, 3, (4000, 3)) + np.array([0.0, 1.5, 0.0])
        d = rng.normal(size=(4000, 3))
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        best, inst = scene.intersect(o, d)
        ref = np.full(len(o), np.inf)
        for obj in scene.objects:
            st = obj.shape.stretch
            o_l, d_l = (o - obj.translation) @ obj.rotation / obj.scale, d @ obj.rotation
            ref = np.minimum(ref, obj.scale * _caster(obj.shape.base).first_hit(o_l / st, d_l / st))
        assert np.array_equal(best, ref)
        assert np.all((inst > 0) == np.isfinite(best))
