"""Oracle for the landing score: lifts of |error change| worked out by hand on a 2-image, 8-pixel layout."""

import math

import numpy as np
import pytest

from frobnolab.analysis.probe import landing

N, P = 2, 8  # 16 pixels in all


def _masks():
    sky = np.zeros((N, P))
    sky[0, :4] = 1  # 4 of 16 pixels: share 1/4
    half = np.zeros((N, P))
    half[1] = 1  # 8 of 16 pixels: share 1/2
    return {"sky": sky, "half": half, "absent": np.zeros((N, P))}


def test_landing_by_hand():
    ch = np.zeros((3, N, P))
    ch[0, 0, :4] = [0.5, -1.0, 2.0, 0.5]  # all of the change on the sky, signs mixed: lift (1) / (1/4) = 4
    # ch[1] stays zero: nothing changed, nothing lands
    ch[2, 1] = -1.0  # 8 units on `half` ...
    ch[2, 0, 0] = 1.0  # ... and 1 on the sky: half (8/9) / (1/2) = 16/9 beats sky (1/9) / (1/4) = 4/9
    out = landing(ch, _masks())
    assert [name for name, _ in out] == ["sky", "", "half"]
    assert out[0][1] == pytest.approx(4.0)
    assert math.isnan(out[1][1])
    assert out[2][1] == pytest.approx(16 / 9)


def test_a_mask_never_present_is_skipped():
    ch = np.ones((1, N, P))
    # with only the absent concept there is nothing to land on (not ("absent", 0.0))
    (name, lift), = landing(ch, {"absent": np.zeros((N, P))})
    assert name == "" and math.isnan(lift)
    # next to present ones it is ignored: a uniform change has lift 1 on every present concept
    (name, lift), = landing(ch, {"absent": np.zeros((N, P)), "half": _masks()["half"]})
    assert name == "half" and lift == pytest.approx(1.0)


def test_landing_matches_the_definition_on_random_changes():
    rng = np.random.default_rng(0)
    ch = rng.normal(size=(5, N, P)) * (rng.random((5, N, P)) < 0.5)
    masks = {k: (rng.random((N, P)) < q).astype(float) for k, q in [("a", 0.2), ("b", 0.5), ("c", 0.8)]}
    for row, (name, lift) in zip(ch, landing(ch, masks)):
        a = np.abs(row)
        lifts = {}
        for k, m in masks.items():
            inside = sum(a[i, j] for i in range(N) for j in range(P) if m[i, j])
            lifts[k] = (inside / a.sum()) / (m.sum() / m.size)
        best = max(lifts, key=lifts.get)
        assert name == best and lift == pytest.approx(lifts[best])
