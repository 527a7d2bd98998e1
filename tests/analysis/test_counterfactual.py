"""Counterfactual responses on ladders whose answer is known by construction (no renders: see
tests/scenes/test_counterfactual.py for the renders and test_counterfactual_planted.py for planted units on them)."""

import numpy as np
import pytest

from frobnolab.analysis.counterfactual import Ladder, ResponseConfig, responses, verdicts

B, R, HW = 6, 4, 8  # bases, rungs, token grid side


def _ladder(factor: str, k: int, rng, d: int = 32) -> Ladder:
    """Activations of d channels on a B x R ladder of HW x HW tokens: channel k follows the factor's value inside
    a patch (where the ground truth changes), channel 3 reads a whole-image quantity of the factor (it moves
    everywhere), the other channels are fixed functions of (base, position)."""
    images = np.arange(B * R)
    base, rung = images // R, images % R
    value = rng.uniform(0, 1, B)[base] + 0.5 * rung  # per image
    rows, cols = np.meshgrid(np.arange(HW), np.arange(HW), indexing="ij")
    where = np.stack([np.repeat(images, HW * HW), np.tile(rows.ravel(), B * R), np.tile(cols.ravel(), B * R)], 1)
    img = where[:, 0]
    static = 2.0 * rng.normal(size=(B, HW * HW, d))  # fixed per base and position
    acts = static[base[img], np.tile(np.arange(HW * HW), B * R)]
    patch = (where[:, 1] < HW // 2) & (where[:, 2] < HW // 2)
    acts[:, k] = np.where(patch, 1.0 + 2.0 * value[img], acts[:, k])
    if k == 0:
        acts[:, 3] = 0.5 + 0.3 * value[img]  # moves at every token, the truth changes only in the patch
    gt = np.zeros((len(where), 2))
    gt[:, 0] = np.where(patch, value[img], 0.0)
    perm = rng.permutation(len(where))  # the store's order must not matter
    return Ladder(factor, acts[perm], gt[perm], where[perm], base, rung, value)


def test_pairs_join_each_rung_to_its_base_at_the_same_position():
    lad = _ladder("f", 0, np.random.default_rng(0))
    ref, alt = lad.pairs()
    assert len(ref) == B * (R - 1) * HW * HW
    img_r, img_a = lad.where[ref, 0], lad.where[alt, 0]
    assert (lad.rung[img_r] == 0).all() and (lad.rung[img_a] > 0).all()
    assert (lad.base[img_r] == lad.base[img_a]).all()
    assert (lad.where[ref, 1:] == lad.where[alt, 1:]).all()


def test_each_channel_is_assigned_to_the_factor_that_moves_it():
    rng = np.random.default_rng(1)
    ladders = [_ladder(f"factor{k}", k, rng) for k in range(3)]
    table, summary = responses(ladders, lambda a: a, 32, ResponseConfig(n_null=1000))
    by = {}
    for f, fac, sel, q, loc, dist in zip(table["feature"], table["factor"], table["selectivity"], table["q"],
                                         table["local"], table["distant"]):
        by[(int(f), fac)] = (sel, q, loc, dist)
    exp = dict(zip(table["feature"], table["explained_by"]))
    for k in range(3):
        assert exp[k] == f"factor{k}", (k, exp[k])
        sel, q, loc, dist = by[(k, f"factor{k}")]
        assert sel > 0.99 and q < 0.1
        assert loc > 0 and dist == 0  # a footprint feature: nothing where its truth did not change
    # the whole-image channel responds at a distance as well
    _, q3, loc3, dist3 = by[(3, "factor0")]
    assert dist3 > 0 and q3 < 0.1
    for j in range(4, 32):  # fixed functions of the scene's position: no response at all
        assert exp[j] == ""
        for k in range(3):
            assert by[(j, f"factor{k}")][1] >= 0.5
    assert summary["explained"] == 4
    assert verdicts([0, 5], table) == {0: "explained by factor0", 5: "frobnoloid"}


def test_a_feature_moved_by_two_factors_is_explained_by_neither():
    rng = np.random.default_rng(2)
    a, b = _ladder("a", 0, rng), _ladder("b", 1, rng)
    b.acts[:, 0] = b.acts[:, 1]  # channel 0 now follows factor b exactly as much as factor a
    table, _ = responses([a, b], lambda x: x, 32, ResponseConfig(n_null=1000))
    exp = dict(zip(table["feature"], table["explained_by"]))
    sel = {(int(f), k): v for f, k, v in zip(table["feature"], table["factor"], table["selectivity"])}
    assert exp[0] == "" and abs(sel[(0, "a")] - 0.5) < 0.05
    assert sel[(1, "b")] > 0.99


def test_bad_ladders_are_refused():
    rng = np.random.default_rng(3)
    with pytest.raises(ValueError, match="one ladder per factor"):
        responses([_ladder("a", 0, rng), _ladder("a", 1, rng)], lambda x: x, 8)
    with pytest.raises(ValueError, match="no counterfactual ladders"):
        responses([], lambda x: x, 8)
