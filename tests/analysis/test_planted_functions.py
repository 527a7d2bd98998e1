"""Issue 14: planted functions of the scene (analysis/planted.py:function_units), scored once on a small clutter
render. "Real": scene_r2 above the scene floor (0.1) and the random-direction null's 95th percentile; "nameless":
gap = scene_r2 - named_best above max(0.2, the gap null's 95th percentile), as for a frobnoloid candidate.

Developed on the render of seed 0 (the one tested here) and checked on seed 1, where every assertion held too."""

import pytest


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    from frobnolab.analysis.planted import function_units, validate_scorer
    from frobnolab.analysis.score import ScoreConfig
    from frobnolab.scenes.dataset import RenderConfig, render_dataset

    root = tmp_path_factory.mktemp("functions")
    data = render_dataset(RenderConfig("clutter", n=160, size=64, seed=0), root / "clutter", progress=False)
    r = validate_scorer(data, root / "v", progress=False, units=function_units, seed=0,
                        cfg=ScoreConfig(n_null=16, bootstrap=0, seed=0))
    units = {u["name"]: {**u, "named_best": max(u["named_r2"], u["pair_r2"])} for u in r["units"]}
    for u in units.values():
        u["gap"] = u["scene_r2"] - u["named_best"]
    return units, r["nulls95"], r["understood"]


def real(u, nulls) -> bool:
    return u["scene_r2"] > 0.1 and u["scene_r2"] > nulls["scene_r2"]


def nameless(u, nulls) -> bool:
    return u["gap"] > max(0.2, nulls["gap"])


def test_xor_of_three_concepts_is_real_and_nameless(scored):
    """Parity of row, column and luminance, each cut at its median (seed 0: scene 0.53, best single 0.01, best
    pair 0.05; seed 1: 0.51, 0.01, 0.10; the scene null 0.36 on seed 1)."""
    units, nulls, _ = scored
    x = units["xor3"]
    assert real(x, nulls), (x, nulls)
    assert nameless(x, nulls), (x, nulls)
    assert x["named_r2"] < 0.2 and x["named_best"] < x["scene_r2"] - 0.3, x  # no single name carries any of it


def test_periodic_function_of_world_x_is_real_and_named_position_x(scored):
    """1 + sin of position_x, 3 periods: its 32 fine bins carry it, so it is named, not nameless (seed 0: named
    0.91, scene 0.79; seed 1: 0.90, 0.73)."""
    units, nulls, _ = scored
    x = units["periodic_x"]
    assert real(x, nulls), (x, nulls)
    assert x["named"] == "position_x" and x["named_r2"] > 0.8, x
    assert not nameless(x, nulls), (x, nulls)


def test_periodic_function_of_the_diagonal_is_real_and_named_by_its_two_coordinates(scored):
    """1 + sin of position_x + position_z, 3 periods: no single concept is that coordinate (best single 0.39), and
    until the pair search also tried the concepts the feature's scene MLP reads, its best pair was n_dot_l1 with one
    of the two (0.39: "real and nameless", gap 0.40). Now the pair is position_x + position_z, whose 10 x 10 joint
    bins hold 0.72 of it (seed 0; scene 0.81): a function of two named coordinates is named by them, not a
    frobnoloid."""
    units, nulls, _ = scored
    x = units["periodic_diag"]
    assert real(x, nulls), (x, nulls)
    assert sorted(x["pair"].split("+")) == ["position_x", "position_z"], x
    assert x["pair_r2"] > 0.6 and x["named_r2"] < 0.5, x
    assert not nameless(x, nulls), (x, nulls)


def test_periodic_function_of_the_image_column_is_named_column(scored):
    units, nulls, _ = scored
    x = units["periodic_column"]
    assert x["named"] == "column" and x["named_r2"] > 0.95, x


def test_periodic_function_of_the_image_column_is_real(scored):
    """Was a strict xfail (issue 14): at 1,000 steps and learning rate 0.02 the scene MLP did not learn 1 + sin of
    the column at 4 periods (scene_r2 0.07 and 0.13 against the null's 0.48 / 0.50); at 2,000 steps and 0.04 (issue
    15, chosen on the planted grammar's dev seeds, not on this unit) it does."""
    units, nulls, _ = scored
    x = units["periodic_column"]
    assert real(x, nulls), (x, nulls)


def test_noise_units_are_not_real(scored):
    units, nulls, _ = scored
    noise = [u for u in units.values() if u["kind"] == "noise"]
    assert len(noise) == 3
    for x in noise:
        assert x["scene_r2"] < 0.1 and not real(x, nulls) and x["gap"] < 0.1, (x, nulls)


def test_descriptions_understand_less_of_nameless_functions_than_the_scene_does(scored):
    """The understood share (analysis/scoring/understood.py) on units that are mostly nameless functions: splicing
    the descriptions in recovers less than splicing each unit's scene MLP, though still more than the shuffled
    null (seed 0: descriptions 0.34, named 0.52, scene 0.59, null 0.24; seed 1: 0.35, 0.55, 0.59, 0.26)."""
    _, _, u = scored
    assert u["measured"], u
    sh = u["understood"]
    assert sh["descriptions"] < sh["scene"] - 0.2, sh
    assert sh["descriptions"] > u["null95"] and u["beats_null"], u
