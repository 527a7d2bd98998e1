"""The painter's vocabulary (analysis/concepts.py), each concept against a small hand-computed case; circular pooling
and binning; the bins that keep ties, rare highlights and thin edges apart (analysis/variables.py)."""

import numpy as np
import pytest

from frobnolab.analysis import concepts as C
from frobnolab.analysis import variables as V

PAINTER = ("hue", "saturation", "value", "albedo_hue", "albedo_saturation", "albedo_value", "image_gradient",
           "gradient_orientation", "edge_orientation", "local_contrast", "texture_energy", "spatial_frequency", "row",
           "column", "border_distance", "silhouette_distance", "object_size", "n_dot_l", "n_dot_l1", "n_dot_v")


def px(name, **bufs):
    return np.asarray(C.REGISTRY[name].pixel(bufs), np.float64)


def grey(lum):
    """An sRGB image (B, H, W, 3) whose luma is ``lum`` (luma weights sum to 1)."""
    lum = np.asarray(lum, np.float64)
    return np.repeat(lum[..., None], 3, -1)


def test_every_concept_is_registered_documented_and_in_the_table():
    for name in PAINTER:
        c = C.REGISTRY[name]
        assert c.pixel is not None and c.description, name
        assert f"``{name}``" in C.__doc__, f"{name} is missing from the module's table"
    assert C.REGISTRY["hue"].columns == ["hue.cos", "hue.sin"]
    with pytest.raises(ValueError, match="unknown inputs"):
        C.Concept("x", "continuous", pixel=lambda b: b["depth"], inputs=("nonsense",))


def test_hsv_of_the_image_and_of_the_albedo():
    rgb = np.array([[[[1, 0, 0], [1, 0, 1], [0.5, 0.25, 0], [0.4, 0.4, 0.4], [0, 0, 0], [0, 0.5, 1]]]], np.float64)
    hue = px("hue", rgb=rgb)[0, 0]
    np.testing.assert_allclose(np.degrees(hue[[0, 1, 2, 5]]), [0, 300, 30, 210], atol=1e-9)
    assert np.isnan(hue[3]) and np.isnan(hue[4])  # grey and black: no hue
    np.testing.assert_allclose(px("saturation", rgb=rgb)[0, 0], [1, 1, 1, 0, 0, 1])
    np.testing.assert_allclose(px("value", rgb=rgb)[0, 0], [1, 1, 0.5, 0.4, 0, 1])
    # the albedo is linear: sRGB-encoded first (0.5 linear is 1.055 * 0.5 ** (1 / 2.4) - 0.055 = 0.735357 sRGB)
    alb = np.array([[[[0.5, 0.5, 0.5], [1, 0, 0], [0.5, 0.5, 0]]]])
    np.testing.assert_allclose(px("albedo_value", albedo=alb)[0, 0], [0.735357, 1, 0.735357], atol=1e-6)
    np.testing.assert_allclose(px("albedo_saturation", albedo=alb)[0, 0], [0, 1, 1])
    np.testing.assert_allclose(np.degrees(px("albedo_hue", albedo=alb)[0, 0, 1:]), [0, 60], atol=1e-9)


def test_circular_pooling_is_a_mean_unit_vector_and_binning_partitions_the_circle():
    con = C.Concept("angle", "circular", pixel=lambda b: b)
    a = np.radians([[[350, 10, 170, 190], [350, 10, 0, 180]]])  # two 2x2 footprints: around 0 deg; no direction
    a[0, 1, 2:] = [np.nan, np.nan]
    a[0, 0, 2:] = np.radians([0, 180])
    out = C.pool(a, con, 2)
    np.testing.assert_allclose(out[0], [np.cos(np.radians(10)), 0], atol=1e-6)  # not the linear mean, 180 deg
    np.testing.assert_allclose(out[1], [0, 0], atol=1e-7)
    np.testing.assert_allclose(C.point_values(np.radians([90.0, np.nan]), con), [[0, 1], [0, 0]], atol=1e-7)
    # named match bins the angle of the mean vector: 359 deg and 1 deg share a bin (the wrap is not an edge)
    rng = np.random.default_rng(0)
    ang = rng.uniform(-np.pi, np.pi, 4000)
    gt = np.stack([np.cos(ang), np.sin(ang)], 1)
    (v,) = V.build_variables([{"name": "angle", "kind": "circular", "columns": ["angle.cos", "angle.sin"]}],
                             ["angle.cos", "angle.sin"], gt)
    probe = np.radians([[359.0], [1.0], [180.0]])
    g = np.concatenate([np.cos(probe), np.sin(probe)], 1)
    b = v.bins(np.concatenate([g, [[0.01, 0.0]]]))
    assert b[3] == 0 and b[:3].min() >= 1 and b.max() < v.n_bins  # a short vector has no direction: bin 0
    assert b[2] != b[0]
    assert abs(int(b[0]) - int(b[1])) in (0, v.n_bins - 2)  # neighbours on the circle: same bin or the two ends


def test_image_gradient_orientation_and_edge_orientation_of_ramps():
    cols = np.tile(0.1 * np.arange(6.0), (5, 1))[None]  # luma 0.1 x column: brighter to the right
    rgb = grey(cols)
    np.testing.assert_allclose(px("image_gradient", rgb=rgb), 0.1, atol=1e-12)
    np.testing.assert_allclose(px("gradient_orientation", rgb=rgb), 0, atol=1e-12)
    down = grey(np.tile(0.1 * np.arange(5.0)[:, None], (1, 6))[None])  # brighter downwards: the gradient points down
    np.testing.assert_allclose(np.degrees(px("gradient_orientation", rgb=down)), 270, atol=1e-9)
    np.testing.assert_allclose(np.degrees(px("edge_orientation", rgb=down)), 180, atol=1e-9)  # 2 x 270 mod 360
    up = grey(np.tile(0.1 * np.arange(5.0)[::-1, None], (1, 6))[None])  # the same edge, other polarity: same axis
    np.testing.assert_allclose(np.degrees(px("edge_orientation", rgb=up)), 180, atol=1e-9)
    assert np.isnan(px("gradient_orientation", rgb=grey(np.full((1, 4, 4), 0.3)))).all()  # flat: no direction


def test_local_contrast_texture_energy_and_spatial_frequency():
    checker = (np.indices((9, 9)).sum(0) % 2).astype(float)[None]  # 0/1 checkerboard
    rgb = grey(checker)
    # a 5x5 window holds 13 of one colour and 12 of the other: std = sqrt(13 * 12) / 25
    assert px("local_contrast", rgb=rgb)[0, 4, 4] == pytest.approx(np.sqrt(13 * 12) / 25)
    assert px("texture_energy", rgb=rgb)[0, 4, 4] == pytest.approx(4.0)  # |4-neighbour Laplacian| = 4 everywhere
    flat = grey(np.full((1, 9, 9), 0.3))
    for name in ("local_contrast", "texture_energy", "spatial_frequency", "image_gradient"):
        np.testing.assert_allclose(px(name, rgb=flat), 0, atol=1e-7)
    # a sinusoid of period 7 along columns: over a whole period the 7x7 window's mean of sin^2 and cos^2 are 1/2,
    # and central differences give A sin(2 pi / 7) cos(.), so the estimate is sin(2 pi / 7) / (2 pi)
    x = np.arange(21.0)
    wave = grey(np.tile(0.5 + 0.25 * np.sin(2 * np.pi * x / 7), (9, 1))[None])
    f = px("spatial_frequency", rgb=wave)[0]
    np.testing.assert_allclose(f[:, 4:17], np.sin(2 * np.pi / 7) / (2 * np.pi), rtol=1e-9)


def test_position_border_silhouette_and_object_size():
    depth = np.zeros((1, 4, 2))
    np.testing.assert_allclose(px("row", depth=depth)[0, :, 0], [0.125, 0.375, 0.625, 0.875])
    np.testing.assert_allclose(px("column", depth=depth)[0, 0], [0.25, 0.75])
    bd = px("border_distance", depth=np.zeros((1, 4, 4)))[0]
    np.testing.assert_allclose(bd[0], [0.125] * 4)
    np.testing.assert_allclose(bd[1, 1:3], [0.375, 0.375])
    edge = np.zeros((2, 3, 3), bool)
    edge[0, 0, 0] = True
    sd = px("silhouette_distance", edge_silhouette=edge)
    assert sd[0, 0, 0] == 0 and sd[0, 2, 2] == pytest.approx(np.sqrt(8) / 3) and sd[0, 0, 2] == pytest.approx(2 / 3)
    np.testing.assert_allclose(sd[1], np.sqrt(18) / 3)  # no silhouette: the diagonal
    inst = np.array([[[0, 1], [1, 2]], [[3, 3], [3, 3]]])
    np.testing.assert_allclose(px("object_size", instance=inst), [[[0, 0.5], [0.5, 0.25]], [[1, 1], [1, 1]]])


def test_n_dot_l_per_light_and_n_dot_v_by_hand():
    n = np.zeros((1, 1, 3, 3))
    n[..., 1] = 1  # normals up
    pos = np.zeros((1, 1, 3, 3))
    inst = np.array([[[1, 1, 0]]])
    # light 0: directional from straight above (direction (0, -1, 0): stored as (-direction, 0)); light 1: a point
    # light at (1, 1, 0) seen from the origin
    lights = np.array([[[0, 1, 0, 0], [1, 1, 0, 1]]], float)
    b = dict(normal_world=n, position=pos, instance=inst, lights=lights)
    np.testing.assert_allclose(px("n_dot_l", **b)[0, 0], [1, 1, 0])  # 0 on background
    np.testing.assert_allclose(px("n_dot_l1", **b)[0, 0], [2 ** -0.5, 2 ** -0.5, 0])
    b["lights"] = np.zeros((1, 2, 4))
    np.testing.assert_allclose(px("n_dot_l1", **b), 0)  # no such light
    cam = np.array([[2.0, 2.0, 0.0]])
    np.testing.assert_allclose(px("n_dot_v", normal_world=n, position=pos, instance=inst, camera_center=cam)[0, 0],
                               [2 ** -0.5, 2 ** -0.5, 0])


@pytest.fixture(scope="module")
def clutter_tiny(tmp_path_factory):
    from frobnolab.scenes.dataset import Dataset, RenderConfig, render_dataset

    return Dataset(render_dataset(RenderConfig("clutter", n=3, size=32, seed=0, shard_size=3),
                                  tmp_path_factory.mktemp("cl") / "clutter", progress=False))


def test_light_and_view_concepts_agree_with_the_renderer(clutter_tiny, tiny_dataset):
    from frobnolab.scenes.dataset import Dataset

    # shapes: one white directional light, so unshadowed shading = ambient + intensity * max(n.l, 0) exactly
    ds = Dataset(tiny_dataset)
    idx = np.arange(len(ds))
    b = C.pixel_inputs(ds, idx, [C.REGISTRY["n_dot_l"], C.REGISTRY["n_dot_v"]])
    assert b["lights"].shape == (len(ds), C.MAX_LIGHTS, 4) and b["camera_center"].shape == (len(ds), 3)
    ndl = px("n_dot_l", **b)
    fg = (b["instance"] > 0) & ~b["shadow"]
    sc = ds.scene(0)
    expect = sc.ambient[0] + sc.lights[0].intensity * np.maximum(ndl, 0)
    np.testing.assert_allclose(b["shading"][..., 0][fg], expect[fg], atol=1e-4)
    np.testing.assert_allclose(px("n_dot_l1", **b), 0)
    # n.v is the cosine with the reversed camera ray through the pixel
    _, d = ds.rays(idx)
    fg = b["instance"] > 0
    np.testing.assert_allclose(px("n_dot_v", **b)[fg], -(b["normal_world"] * d).sum(-1)[fg], atol=1e-4)
    # clutter: a key light and a point light, each image's own
    cb = C.pixel_inputs(clutter_tiny, np.arange(3))
    for i in range(3):
        lights = clutter_tiny.scene(i).lights
        np.testing.assert_allclose(cb["lights"][i, 0], np.append(-lights[0].direction, 0))
        np.testing.assert_allclose(cb["lights"][i, 1], np.append(lights[1].position, 1))
    n1 = px("n_dot_l1", **cb)
    assert np.abs(n1).max() <= 1 + 1e-6 and (n1[cb["instance"] > 0] != 0).mean() > 0.9


def test_every_concept_runs_on_a_real_batch_and_pools(tiny_dataset):
    from frobnolab.scenes.dataset import Dataset

    ds = Dataset(tiny_dataset)
    b = C.pixel_inputs(ds, np.arange(2))
    for name in PAINTER:
        c = C.REGISTRY[name]
        v = np.asarray(c.pixel(b))
        assert v.shape == (2,) + ds.size, name
        pooled = C.pool(v, c, 4)
        assert pooled.shape == (2 * 8 * 8, len(c.columns)) and np.isfinite(pooled).all(), name


def test_bin_edges_keep_ties_distinct_values_and_heavy_tails_apart():
    rng = np.random.default_rng(0)
    # a binary fraction at stride 2 takes five values: each its own bin
    frac = rng.choice([0, 0.25, 0.5, 0.75, 1.0], p=[0.85, 0.06, 0.04, 0.03, 0.02], size=5000)
    e = V.bin_edges(frac, V.FINE)
    assert len(np.unique(np.searchsorted(e, frac, side="right"))) == 5
    # sparse and heavy-tailed (a highlight): the zeros are one bin, the tail is split finely
    x = np.where(rng.random(20000) < 0.7, 0.0, rng.lognormal(0, 1.5, 20000))
    e = V.bin_edges(x, V.FINE)
    b = np.searchsorted(e, x, side="right")
    assert (b[x == 0] == b[x == 0][0]).all() and not (b[x > 0] == b[x == 0][0]).any()
    assert len(e) + 1 <= V.FINE + 2
    top = b == b.max()
    assert V.MIN_COUNT <= top.sum() < 0.002 * len(x)  # the extreme bin is a sliver, not the top 1/16
    # the share of x's own variance that its bins explain (its eta^2): about 0.3 with the old 16 equal-count bins
    explained = lambda b: 1 - sum(((x[b == k] - x[b == k].mean()) ** 2).sum() for k in np.unique(b)) / (  # noqa: E731
        (x - x.mean()) ** 2).sum()
    old = np.searchsorted(np.unique(np.quantile(x, np.linspace(0, 1, 17)[1:-1])), x, side="right")
    assert explained(old) < 0.45 and explained(b) > 0.85
    # an ordinary concept keeps (about) equal-count bins
    g = rng.normal(size=20000)
    cnt = np.bincount(np.searchsorted(V.bin_edges(g, V.FINE), g, side="right"))
    assert len(cnt) == V.FINE and cnt.min() > 0.5 * len(g) / V.FINE
