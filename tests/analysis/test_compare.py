"""Matching features across models and widths on the same pixels, against the rotated-image null."""

import numpy as np
import pytest

from frobnolab.analysis.compare import _cells, compare, match
from frobnolab.cli import main


def _grid(n_images: int, side: int):
    im, r, c = np.meshgrid(np.arange(n_images), np.arange(side), np.arange(side), indexing="ij")
    return np.stack([im.ravel(), r.ravel(), c.ravel()], 1)


def test_a_shared_feature_is_matched_across_strides_and_a_positional_one_is_not_shared():
    rng = np.random.default_rng(0)
    where = _grid(24, 8)  # side A: stride 1 on an 8 x 8 grid
    content = rng.random((24, 8, 8)).ravel()  # a quantity of each scene
    other = rng.random((24, 8, 8)).ravel()  # another one, only A has it
    position = (where[:, 1] / 7.0)  # the row: the same in every image
    z_a = np.stack([content, other, position, rng.random(len(where))], 1)
    ka, za = _cells(z_a, where, 2)  # onto B's stride-2 grid: 4 x 4 cells
    assert ka.shape == (24 * 16, 3) and np.allclose(za[0, 0], content.reshape(24, 8, 8)[0, :2, :2].mean())
    # side B sees the content (noisily) and the position, at stride 2
    kb = ka.copy()
    zb = np.stack([za[:, 0] + 0.02 * rng.normal(size=len(ka)), za[:, 2], rng.random(len(ka))], 1)
    m = match(ka, za, kb, zb)
    a = m["a"]
    assert a["best"][0] == 0 and a["corr"][0] > 0.99 and a["shared"][0] and a["p"][0] == 0.05  # shared
    assert not a["shared"][1]  # A's own quantity: specific to A
    # the row matches perfectly, but just as well between different images: not evidence of shared content
    assert a["corr"][2] > 0.99 and not a["shared"][2] and a["p"][2] == 1.0
    assert m["rotations"] == 19 and m["b"]["shared"][0] and not m["b"]["shared"][2]


def test_too_few_common_cells_is_refused():
    k = _grid(2, 4)
    with pytest.raises(ValueError, match="cells of 0 image.s. in common"):
        match(k, np.random.rand(len(k), 2), k + [10, 0, 0], np.random.rand(len(k), 2))


def test_an_sae_matches_itself_feature_for_feature(tiny_run, tmp_path, capsys):
    res = compare(tiny_run / "scores", tiny_run / "scores", tmp_path / "cmp")
    rows = res["features_a"]
    assert rows and all(r["match"] == r["feature"] and r["corr"] > 0.999 for r in rows)
    assert res["same_store"] and "splits" not in res  # one width: nothing to split
    # two held-out images give one rotation: a p-value of 1/2 at best, so nothing is called shared on so little
    assert res["rotations"] == 1 and res["a"]["shared"] == 0 and all(r["p"] >= 0.5 for r in rows)
    assert (tmp_path / "cmp" / "compare.md").read_text().startswith("## Shared and model-specific features")
    assert main(["compare", str(tiny_run / "scores"), str(tiny_run / "render"), "--out", str(tmp_path / "x")]) == 2
    assert "no summary.json" in capsys.readouterr().err


def test_two_unrelated_dictionaries_stay_at_the_null():
    """Features of two unrelated dictionaries (independent per-image quantities, spatially smooth like real feature
    maps): about the test's level of them are called shared, as the null promises, not more."""
    rng = np.random.default_rng(3)
    where = _grid(24, 8)

    def smooth_features(n):  # (cells, n): per-image random fields, blurred over 3 x 3 neighbours
        z = rng.random((n, 24, 10, 10))
        z = sum(z[:, :, i:i + 8, j:j + 8] for i in range(3) for j in range(3)) / 9
        return z.reshape(n, -1).T

    m = match(where, smooth_features(40), where.copy(), smooth_features(40))
    shared = int(np.sum(m["a"]["shared"]))
    assert m["rotations"] == 19
    assert shared <= 7, shared  # 40 tests at level 0.05: 2 expected, P(> 7) < 0.001
