"""The description of a feature (analysis/scoring/describe.py) on planted units of small synthetic arrays: a step on
one column, a product of two, a gated value (depth where foreground, else 0), a hue bump, and noise."""

import numpy as np
import pytest
import scipy.sparse as sp

from frobnolab.analysis.scoring.describe import describe_features
from frobnolab.analysis.scoring.scene import FoldSample
from frobnolab.analysis.variables import build_variables

CONTINUOUS = ("depth", "normal_x", "albedo_r", "specular")


def world(n=16000, seed=0):
    rng = np.random.default_rng(seed)
    th, has_hue = rng.uniform(-np.pi, np.pi, n), (rng.random(n) < 0.8).astype(float)
    shape = np.eye(3)[rng.integers(0, 3, n)]
    g = np.column_stack([rng.gamma(3, 1, n), rng.uniform(-1, 1, n), rng.random(n),
                         rng.exponential(1, n) * (rng.random(n) < 0.2), (rng.random(n) < 0.6).astype(float),
                         has_hue * np.cos(th), has_hue * np.sin(th), shape, np.ones(n)])
    classes = ["shape_class=sphere", "shape_class=box", "shape_class=torus", "shape_class.purity"]
    columns = [*CONTINUOUS, "foreground", "hue.cos", "hue.sin", *classes]
    concepts = ([{"name": c, "kind": "continuous", "columns": [c]} for c in CONTINUOUS]
                + [{"name": "foreground", "kind": "binary", "columns": ["foreground"]},
                   {"name": "hue", "kind": "circular", "columns": ["hue.cos", "hue.sin"]},
                   {"name": "shape_class", "kind": "categorical", "columns": classes}])
    return g, columns, concepts, rng


def planted(g, columns, rng):
    c = lambda name: g[:, columns.index(name)]  # noqa: E731
    rank = lambda x: np.argsort(np.argsort(x)) / (len(x) - 1)  # noqa: E731
    theta = np.arctan2(c("hue.sin"), c("hue.cos"))
    return {
        "step": 2.0 * (c("depth") > 3.5),
        "product": rank(c("normal_x")) * rank(c("albedo_r")),
        "gated": c("depth") * c("foreground"),
        "magenta": np.where(np.hypot(c("hue.cos"), c("hue.sin")) > 0.05, np.exp(4 * (np.cos(theta + np.pi / 4) - 1)),
                            0),
        "noise": rng.exponential(1, len(g)) * (rng.random(len(g)) < 0.3),
    }


def describe(units: dict, g, columns, concepts, full: bool = False):
    """Descriptions of the units, with named-match evidence (eta^2 per variable, the top two as the pair,
    correlations) computed here directly; image folds of 50 tokens alternate."""
    f = np.column_stack(list(units.values()))
    variables = build_variables(concepts, columns, g)
    r2 = np.zeros((len(variables), f.shape[1]))
    for k, v in enumerate(variables):
        b = v.bins(g)
        cnt = np.maximum(np.bincount(b), 1)
        for j in range(f.shape[1]):
            r2[k, j] = (np.bincount(b, f[:, j]) / cnt)[b].var() / f[:, j].var()
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.nan_to_num(np.corrcoef(np.column_stack([f, g]).T)[: f.shape[1], f.shape[1]:])
    sample = FoldSample(30_000)
    image = np.arange(len(g)) // 50
    sample.add(sp.csr_matrix(f), g, image % 2, image)
    d = describe_features(sample, variables, r2, np.argsort(-r2, 0)[:2].T, corr)
    if full:
        return d, f, image % 2
    return {name: (str(t), float(r)) for name, t, r in zip(units, d.text, d.r2)}


@pytest.fixture(scope="module")
def described():
    g, columns, concepts, rng = world()
    units = planted(g, columns, rng)
    return describe(units, g, columns, concepts), (g, columns, concepts, units)


def test_planted_units_are_described_by_their_concepts(described):
    d, _ = described
    text, r2 = d["step"]
    assert "depth" in text and r2 > 0.95, d["step"]
    text, r2 = d["product"]
    assert "normal_x" in text and "albedo_r" in text and r2 > 0.9, d["product"]
    text, r2 = d["gated"]
    assert "depth" in text and "foreground" in text and r2 > 0.95, d["gated"]
    text, r2 = d["magenta"]
    assert "hue" in text and r2 > 0.8, d["magenta"]


def test_noise_is_described_by_nothing(described):
    d, _ = described
    assert abs(d["noise"][1]) < 0.02, d["noise"]


def test_a_description_does_not_depend_on_the_units_beside_it(described):
    d, (g, columns, concepts, units) = described
    for name in ("gated", "magenta"):
        alone = describe({name: units[name]}, g, columns, concepts)[name]
        assert alone[0] == d[name][0] and abs(alone[1] - d[name][1]) < 1e-9, (name, alone, d[name])


def test_a_description_predicts_what_it_scored(described):
    """Evaluated on the tokens, each formula's cross-fitted prediction (values fitted on one image fold, predicting
    the other) has exactly the cross-validated R^2 the description reports; fitted on both folds it is about as
    good."""
    _, (g, columns, concepts, units) = described
    d, f, fold = describe(units, g, columns, concepts, full=True)
    gs = np.nan_to_num(g)
    for j, name in enumerate(units):
        fm = d.formulas[j]
        y = f[:, j]
        r2s = []
        for b in (0, 1):
            pred = fm.predict(gs[fold == b], fit=1 - b)
            yb = y[fold == b]
            r2s.append(1 - ((yb - pred) ** 2).sum() / ((yb - yb.mean()) ** 2).sum())
        assert abs(np.mean(r2s) - d.r2[j]) < 1e-6, (name, fm.kind, r2s, d.r2[j])
        pooled = fm.predict(gs)
        assert 1 - ((y - pooled) ** 2).sum() / ((y - y.mean()) ** 2).sum() >= np.mean(r2s) - 0.01, name
    both = d.predict(gs)
    assert both.shape == (len(g), len(units)) and np.allclose(both[:, 0], d.formulas[0].predict(gs), atol=1e-5)
