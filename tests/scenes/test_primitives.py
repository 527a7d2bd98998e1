import numpy as np
import pytest
import trimesh

from frobnolab.scenes.primitives import ANALYTIC_SHAPES, Primitive

SHAPES = [Primitive(s, aspect=0.8, minor=0.3) for s in ANALYTIC_SHAPES] + [Primitive("floor", extent=2.0)]


@pytest.mark.parametrize("prim", SHAPES, ids=lambda p: p.shape)
def test_mesh_lies_on_the_exact_surface(prim):
    m = prim.mesh()
    assert np.abs(prim.sdf(m.vertices)).max() < 1e-9  # vertices are on the analytic surface
    # Face centres are inside or on: the tessellation error stays under 1e-3 of the radius.
    centres = m.triangles_center
    assert np.abs(prim.sdf(centres)).max() < 1.5e-3
    lo, hi = m.bounds
    assert np.isclose(hi[1], prim.half_height) and np.isclose(lo[1], -prim.half_height)


@pytest.mark.parametrize("prim", SHAPES, ids=lambda p: p.shape)
def test_sdf_agrees_with_trimesh_oracle(prim):
    rng = np.random.default_rng(1)
    m = prim.mesh()
    lo, hi = m.bounds
    pts = rng.uniform(lo - 0.3, hi + 0.3, size=(400, 3))
    ours = prim.sdf(pts)
    # trimesh: positive inside, distance to the tessellated surface
    theirs = -trimesh.proximity.signed_distance(m, pts)
    far = np.abs(ours) > 5e-3
    assert np.mean(np.sign(ours[far]) == np.sign(theirs[far])) == 1.0
    np.testing.assert_allclose(ours, theirs, atol=3e-3)


@pytest.mark.parametrize("prim", SHAPES, ids=lambda p: p.shape)
def test_normals_are_unit_and_outward(prim):
    m = prim.mesh()
    idx = np.random.default_rng(2).choice(len(m.faces), 300)
    n = prim.normal(m.triangles_center[idx])
    np.testing.assert_allclose(np.linalg.norm(n, axis=1), 1.0, atol=1e-9)
    assert np.mean(np.einsum("ij,ij->i", n, m.face_normals[idx]) > 0.9) > 0.97


def test_mean_curvature_of_known_shapes():
    sphere, cyl = Primitive("sphere"), Primitive("cylinder", aspect=2.0)
    p = np.array([[0.0, 1.0, 0.0], [0.6, 0.0, 0.8]])
    np.testing.assert_allclose(sphere.mean_curvature(p), 1.0, rtol=1e-3)
    np.testing.assert_allclose(cyl.mean_curvature(np.array([[1.0, 0.2, 0.0]])), 0.5, rtol=1e-3)
    assert abs(Primitive("box").mean_curvature(np.array([[0.2, 1.0, 0.3]]))[0]) < 1e-6


def test_row_norms_and_stencil_give_numpys_floats():
    from frobnolab.scenes.primitives import row_norms

    rng = np.random.default_rng(1)
    v = rng.normal(size=(1000, 3)) * 10.0 ** rng.integers(-8, 8, (1000, 1))
    assert np.array_equal(row_norms(v), np.linalg.norm(v, axis=1))
    # The 7-point stencil offsets one coordinate at a time; the same as sdf(p +- h e_k) on full points.
    p, h = rng.uniform(-1.5, 1.5, (500, 3)), 1e-4
    for prim in SHAPES:
        n, c = prim.normal_and_curvature(p, h)
        g, lap = np.empty_like(p), -6.0 * prim.sdf(p)
        for k in range(3):
            e = np.zeros(3)
            e[k] = h
            g[:, k] = prim.sdf(p + e) - prim.sdf(p - e)
            lap += prim.sdf(p + e) + prim.sdf(p - e)
        assert np.array_equal(n, g / np.where(np.linalg.norm(g, axis=1, keepdims=True) > 0,
                                              np.linalg.norm(g, axis=1, keepdims=True), 1.0)), prim.shape
        assert np.array_equal(c, np.clip(0.5 * lap / h**2, -20.0, 20.0)), prim.shape
