"""Context pooling (analysis/context.py): concepts averaged over the k x k tokens around each token."""

import numpy as np
import pytest
import torch

from frobnolab.analysis.context import box_mean, check_scales
from frobnolab.analysis.store import ActivationStore, ExtractConfig, extract


def test_box_mean_averages_the_window_cells_inside_the_grid():
    g = np.zeros((1, 3, 4, 1))
    g[0, 1, 1, 0] = 1.0
    m = box_mean(g, 3)[0, ..., 0]
    # a 3x3 window centred on each cell, clipped to the grid: the one 1 counts in the windows that reach it
    want = np.array([[1 / 4, 1 / 6, 1 / 6, 0], [1 / 6, 1 / 9, 1 / 9, 0], [1 / 4, 1 / 6, 1 / 6, 0]])
    np.testing.assert_allclose(m, want)
    assert np.allclose(box_mean(np.ones((2, 5, 5, 3)), 5), 1)


def test_context_scales_are_odd_windows():
    check_scales((3, 5))
    for bad in ((2,), (1,), (3, 4)):
        with pytest.raises(ValueError, match="odd window sizes"):
            check_scales(bad)


def test_a_store_with_context_holds_each_concept_around_each_token(tiny_dataset, tmp_path):
    from frobnolab.analysis.probe import CausalProbe

    from .test_probe import IdentitySAE
    from frobnolab.models.conv_ae import ConvAEConfig, ConvAutoencoder

    torch.manual_seed(0)
    ae = ConvAutoencoder(ConvAEConfig(channels=(8, 16), latent_channels=4)).eval()
    store = ActivationStore(extract(ExtractConfig(model="conv_ae", dataset=str(tiny_dataset), hooks=("enc1",),
                                                  context=(3,)), tmp_path / "st", model=ae, progress=False))
    cols = store.columns
    names = [c["name"] for c in store.concepts]
    assert "depth@3" in names and "instance@3" in names and "hue@3" in names and cols.count("depth@3") == 1
    assert {"depth@3", "instance@3=background", "instance@3.purity", "hue@3.cos"} <= set(cols)
    tok = store["enc1"]
    c = next(tok.chunks("all"))
    im = c.where[:, 0] == c.where[0, 0]
    g, w = np.asarray(c.gt)[im], c.where[im]
    side = int(w[:, 1].max()) + 1
    grid = np.full((side, side, len(cols)), np.nan)
    grid[w[:, 1], w[:, 2]] = g
    d, d3 = cols.index("depth"), cols.index("depth@3")
    for r, q in ((0, 0), (side // 2, side // 2), (side - 1, 1)):  # a corner, the middle, an edge: by hand
        win = grid[max(r - 1, 0):r + 2, max(q - 1, 0):q + 2, d]
        assert grid[r, q, d3] == pytest.approx(win.mean(), rel=1e-5)
    classes = [k for k, n in enumerate(cols) if n.startswith("instance@3=")]
    np.testing.assert_allclose(g[:, cols.index("instance@3.purity")], g[:, classes].max(1), rtol=1e-6)
    # the probe's tokens carry the same context as the store's (what the understood share splices from)
    probe = CausalProbe(ae, IdentitySAE(16), store, "enc1", n_images=1)
    stored = {tuple(x): row for ch in tok.chunks("test") for x, row in zip(ch.where, ch.gt)}
    mine = probe.token_ground_truth()
    assert mine.shape[1] == len(cols)
    np.testing.assert_array_equal(mine[0], stored[(int(probe.images[0]), 0, 0)])


def test_fields_refuse_context(tiny_single, tmp_path):
    from frobnolab.models.field import CoordinateField, FieldConfig

    with pytest.raises(ValueError, match="context pooling is for image models"):
        extract(ExtractConfig(model="field", dataset=str(tiny_single), hooks=("trunk1",), tokens_per_image=4,
                              samples_per_ray=4, context=(3,)), tmp_path / "f",
                model=CoordinateField(FieldConfig(hidden=16, layers=2)), progress=False)
