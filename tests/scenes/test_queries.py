import numpy as np
import pytest
import trimesh

from frobnolab.scenes import load_family
from frobnolab.scenes.queries import SceneQuery


@pytest.fixture(scope="module", params=["single", "clutter"])
def scene(request):
    return load_family(request.param).sample(2, seed=3, size=32)


def test_point_queries_agree_with_ray_hits(scene):
    q = SceneQuery(scene)
    rays = q.pixel_rays()
    hit = rays["hit"]
    pos = rays["position"][hit]
    near = q.nearest(pos)
    assert np.abs(q.sdf(pos)).max() < 3e-3  # hits lie on the exact surfaces
    assert np.mean(near["instance"] == rays["instance"][hit]) > 0.995
    same = near["instance"] == rays["instance"][hit]
    cos = np.einsum("ij,ij->i", near["normal"][same], rays["normal"][hit][same])
    assert np.mean(cos > 0.99) > 0.97
    np.testing.assert_allclose(near["albedo"][same].mean(0), rays["albedo"][hit][same].mean(0), atol=0.02)


def test_occupancy_matches_trimesh_containment(scene):
    mesh, _ = scene.combined_mesh()
    rng = np.random.default_rng(0)
    lo, hi = np.array([-2.0, -0.2, -2.0]), np.array([2.0, 1.5, 2.0])
    pts = rng.uniform(lo, hi, size=(3000, 3))
    q = SceneQuery(scene)
    sdf = q.sdf(pts)
    clear = np.abs(sdf) > 5e-3  # away from the tessellation band
    # trimesh as the oracle, per object (the scene mesh is a union of closed meshes)
    inside = np.zeros(len(pts), bool)
    for obj in scene.objects:
        inside |= obj.world_mesh().contains(pts)
    assert np.array_equal(q.occupancy(pts)[clear], inside[clear])
    assert q.occupancy(pts).any() and not q.occupancy(pts).all()


def test_nearest_surface_point_is_on_the_surface_and_sdf_sign(scene):
    q = SceneQuery(scene)
    rng = np.random.default_rng(1)
    pts = rng.uniform([-1.5, 0.0, -1.5], [1.5, 1.2, 1.5], size=(500, 3))
    near = q.nearest(pts)
    obj_sdf = np.array([scene.objects[k - 1].sdf(p[None])[0] for k, p in zip(near["instance"], near["point"])])
    assert np.abs(obj_sdf).max() < 1e-6
    np.testing.assert_allclose(np.linalg.norm(pts - near["point"], axis=1), np.abs(near["distance"]), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(near["normal"], axis=1), 1.0, atol=1e-6)


def test_ray_misses_and_bad_rays():
    scene = load_family("single").sample(0, size=16)
    q = SceneQuery(scene)
    res = q.ray(np.array([[0.0, 5.0, 0.0]]), np.array([[0.0, 1.0, 0.0]]))  # straight up: nothing there
    assert not res["hit"][0] and np.isinf(res["distance"][0]) and res["instance"][0] == 0
    down = q.ray(np.array([[1.2, 5.0, 1.2]]), np.array([[0.0, -1.0, 0.0]]))  # onto the floor
    assert down["hit"][0] and down["instance"][0] == 1 and abs(down["distance"][0] - 5.0) < 1e-5
    with pytest.raises(ValueError, match="non-zero"):
        q.ray(np.zeros((1, 3)), np.zeros((1, 3)))


def test_embree_and_trimesh_ray_oracle_agree():
    scene = load_family("clutter").sample(1, seed=0, size=24)
    o, d = scene.camera.pixel_rays()
    o, d = o.reshape(-1, 3)[::7], d.reshape(-1, 3)[::7]
    ours = SceneQuery(scene).ray(o, d)
    mesh, face_inst = scene.combined_mesh()
    tri, ray_i = trimesh.ray.ray_triangle.RayMeshIntersector(mesh).intersects_id(o, d, multiple_hits=False)
    ref = np.zeros(len(o), np.int64)
    ref[ray_i] = face_inst[tri]
    assert np.mean(ref == ours["instance"]) > 0.99
