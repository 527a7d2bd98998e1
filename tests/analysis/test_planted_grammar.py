"""Issue 15: the planted grammar (analysis/planted_grammar.py): deterministic draws, honest labels, each unit the
function its spec says, and a small benchmark run that writes benchmark.json. On a tiny clutter render (24 images
at 32 px); the figures themselves are measured on clutter480 (benchmarks/README.md), not asserted here."""

import json

import numpy as np
import pytest


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny render and its stride-2 tokens' ground truth ``(N, G)`` with the store's columns."""
    from frobnolab.analysis.planted import PoolProbe
    from frobnolab.analysis.store import ActivationStore, ExtractConfig, extract
    from frobnolab.scenes.dataset import RenderConfig, render_dataset

    root = tmp_path_factory.mktemp("grammar")
    data = render_dataset(RenderConfig("clutter", n=24, size=32, seed=0), root / "clutter", progress=False,
                          workers=1)
    store = ActivationStore(extract(ExtractConfig(model="pool-probe", dataset=str(data)), root / "tokens",
                                    model=PoolProbe(2), progress=False))
    tok = store["cells"]
    return data, np.asarray(tok.gt, np.float64), store.columns, store.concepts


@pytest.fixture(scope="module")
def drawn(tiny):
    from frobnolab.analysis.planted_grammar import grammar_units

    _, gt, columns, concepts = tiny
    return grammar_units(gt, columns, np.random.default_rng(3), n_units=16, concepts=concepts)


def test_store_concepts_are_the_manifests(tiny):
    from frobnolab.analysis.planted_grammar import store_concepts

    _, _, columns, concepts = tiny
    assert [c["name"] for c in store_concepts(columns)] == [c["name"] for c in concepts]


def test_draws_are_deterministic_for_a_seed_and_differ_across_seeds(tiny, drawn):
    from frobnolab.analysis.planted_grammar import grammar_units

    _, gt, columns, concepts = tiny
    units, spec = drawn
    again, spec2 = grammar_units(gt, columns, np.random.default_rng(3), n_units=16, concepts=concepts)
    assert np.array_equal(units, again) and spec == spec2
    other, spec3 = grammar_units(gt, columns, np.random.default_rng(4), n_units=16, concepts=concepts)
    assert [s["concepts"] for s in spec3] != [s["concepts"] for s in spec]
    assert units.shape == (len(gt), 16) and units.dtype == np.float32


def test_every_rule_and_label_is_drawn_with_its_weight(drawn):
    from frobnolab.analysis.planted_grammar import RULES

    units, spec = drawn
    assert {s["rule"] for s in spec} == set(RULES)
    assert {s["label"] for s in spec} == {"named", "nameless", "noise"}
    drawn_sets = [(s["rule"], frozenset(s["concepts"])) for s in spec if s["concepts"]]
    assert len(drawn_sets) == len(set(drawn_sets))  # no unit twice
    for s, u in zip(spec, units.T):
        assert s["label"] == RULES[s["rule"]][0] and len(s["concepts"]) == RULES[s["rule"]][1], s
        assert s["weight"] == (0.0 if s["rule"] == "noise" else 1.0), s
        assert u.min() >= 0 and abs(u.max() - 1) < 1e-6 and u.std() > 0, s["name"]


def _rank(x):
    from scipy.stats import rankdata

    return (rankdata(x) - 0.5) / len(x)  # mid-ranks, as the grammar's


def test_each_unit_is_the_function_it_claims(tiny, drawn):
    _, gt, columns, _ = tiny
    units, spec = drawn
    col = lambda n: gt[:, columns.index(n)]  # noqa: E731
    checked = set()
    for s, u in zip(spec, units.T.astype(np.float64)):
        x = [col(n) for n in s["concepts"]]
        r = [_rank(v) for v in x]
        p = s["params"]
        want = None
        if s["rule"] == "threshold":
            assert set(np.unique(u)) == {0.0, 1.0}, s
            want = (r[0] > p["quantile"]) if p["above"] else (r[0] < p["quantile"])
        elif s["rule"] in ("xor2", "xor3"):
            want = np.logical_xor.reduce([v > np.median(v) for v in x])
        elif s["rule"] == "product2":
            want = r[0] * r[1]
        elif s["rule"] == "product3":
            want = r[0] * r[1] * r[2]
        elif s["rule"] == "sum2":
            want = p["w"] * r[0] + (1 - p["w"]) * r[1]
        elif s["rule"] == "periodic3":
            want = 1 + np.sin(2 * np.pi * sum(r) + p["phase"])
        elif s["rule"] == "monotone":  # a monotone function of its concept: ordered like it (or against it)
            order = np.argsort(x[0], kind="stable")
            steps = np.diff(u[order])
            assert (steps <= 1e-6).all() if p["decreasing"] else (steps >= -1e-6).all(), s
            checked.add(s["rule"])
        elif s["rule"] == "sparse":  # zero on the bulk, the concept's excess over its quantile on the top
            v = x[0]
            assert np.allclose(u > 0, v > np.quantile(v, p["quantile"])), s
            assert (u == 0).mean() >= p["quantile"] - 0.01, s
            checked.add(s["rule"])
        if want is not None:
            want = np.asarray(want, float)
            assert np.allclose(u, want / want.max(), atol=1e-5), s
            checked.add(s["rule"])
    assert {"threshold", "xor2", "xor3", "product2", "product3", "sum2", "periodic3", "monotone",
            "sparse"} <= checked


def test_nameless_units_are_nameless_by_their_own_concepts_and_named_units_are_named(tiny, drawn):
    """Independently of the grammar's oracle: a nameless unit's eta^2 with each of its concepts' deciles (and each
    pair's joint deciles) stays low; a single-concept unit's with its concept's 32 quantile bins is high."""
    _, gt, columns, _ = tiny
    units, spec = drawn

    def eta(u, bins):
        cnt = np.bincount(bins)
        s1 = np.bincount(bins, u)
        return ((s1[cnt > 0] ** 2 / cnt[cnt > 0]).sum() - u.sum() ** 2 / len(u)) / ((u - u.mean()) ** 2).sum()

    def bins(n, k):
        return np.minimum((_rank(gt[:, columns.index(n)]) * k).astype(int), k - 1)

    for s, u in zip(spec, units.T.astype(np.float64)):
        c = s["concepts"]
        if s["label"] == "nameless":
            for i, a in enumerate(c):
                assert eta(u, bins(a, 10)) < 0.3, s
                for b in c[i + 1:]:
                    assert eta(u, bins(a, 10) * 10 + bins(b, 10)) < 0.35, s
            assert s["oracle"]["pair_r2"] <= 0.25 and s["oracle"]["single_r2"] <= 0.25, s
        elif s["label"] == "named" and len(c) == 1:
            assert eta(u, bins(c[0], 32)) > 0.75, s


def test_attribution_and_tally_read_the_rows():
    from frobnolab.analysis.planted_grammar import attributed, mentions, tally

    assert mentions("0.9 * depth * [foreground > 0.5]", "depth") and not mentions("depth_edge > 0.5", "depth")
    row = dict(label="named", rule="product2", concepts=["a", "b"], named="a", pair="b+a", description="",
               candidate=False, scene_r2=0.9, gap=0.0, q_value=None, beats_causal_null=True)
    assert attributed(row) and not attributed({**row, "pair": "a+c"})
    assert attributed({**row, "pair": "a+c", "description": "rank(a) * rank(b)"})
    # a single's best name may be a formula of it alone (the scorer's named_best), never one reading another concept
    single = dict(label="named", rule="monotone", concepts=["depth"], named="shading", named_r2=0.4, pair_r2=0.5,
                  description="if depth > 0.78: (0.8 if depth > 0.88 else 0.4) else 0", description_r2=0.9)
    assert attributed(single) and attributed({**single, "named": "depth", "description_r2": 0.1})
    assert not attributed({**single, "description": "if depth > 0.78: rank(shading) else 0"})
    assert not attributed({**single, "description": "if material=background < 0.5: depth else 0"})
    assert not attributed({**single, "description_r2": 0.45})
    nameless = {**row, "label": "nameless", "rule": "xor3", "concepts": ["a", "b", "c"]}
    t = tally([row, {**row, "candidate": True}, {**nameless, "candidate": True}, nameless,
               {**row, "label": "noise", "rule": "noise", "concepts": []}])
    assert t["attribution"] == 1.0 and t["nameless_recall"] == 0.5 and t["precision"] == 0.5
    assert t["noise_flagged"] == 0 and t["named_flagged"] == 1 and t["by_rule"]["xor3"]["nameless_recall"] == 0.5


def test_benchmark_writes_benchmark_json(tiny, tmp_path):
    from frobnolab.analysis.planted_grammar import RULES, benchmark
    from frobnolab.analysis.score import ScoreConfig

    data = tiny[0]
    cfg = ScoreConfig(n_null=64, bootstrap=0, scene_steps=60, understood_shuffles=0, causal_images=3)
    r = benchmark(data, tmp_path / "b", seeds=(5,), cfg=cfg, progress=False, n_units=16)
    on_disk = json.loads((tmp_path / "b" / "benchmark.json").read_text())
    assert on_disk["seeds"] == [5] and len(on_disk["units"]) == 16 and on_disk["meets_bar"] == r["meets_bar"]
    p = on_disk["pooled"]
    for k in ("attribution", "nameless_recall", "precision", "noise_flagged", "by_rule", "missed_because"):
        assert k in p, k
    assert set(p["by_rule"]) == set(RULES)
    units = on_disk["units"]
    assert p["candidates"] == sum(u["candidate"] for u in units)
    assert p["nameless"] == sum(u["label"] == "nameless" for u in units) and p["nameless"] > 0
    assert on_disk["per_seed"]["5"]["units"] == 16 and on_disk["seconds_per_seed"]["5"] > 0


def test_the_cli_takes_benchmark_and_seeds():
    from frobnolab.analysis.planted_grammar import REPORT_SEEDS
    from frobnolab.cli import build_parser

    args = build_parser("validate-scorer").parse_args(["validate-scorer", "--out", "x", "--benchmark"])
    assert args.benchmark and tuple(args.seeds) == REPORT_SEEDS
    args = build_parser("validate-scorer").parse_args(["validate-scorer", "--out", "x", "--seeds", "3,4"])
    assert not args.benchmark and tuple(args.seeds) == (3, 4)


def test_the_cli_benchmark_prints_every_rule_and_exits_0(tiny, tmp_path, monkeypatch, capsys):
    """``frobnolab validate-scorer --benchmark`` (with the tiny config: the default one is for clutter480)."""
    import frobnolab.analysis.planted_grammar as grammar
    from frobnolab.analysis.score import ScoreConfig
    from frobnolab.cli import main

    real = grammar.benchmark
    cfg = ScoreConfig(n_null=64, bootstrap=0, scene_steps=60, understood_shuffles=0, causal_images=3)
    monkeypatch.setattr(grammar, "benchmark", lambda data, out, seeds, progress: real(
        data, out, seeds, cfg=cfg, progress=progress, n_units=16))
    rc = main(["validate-scorer", "--out", str(tmp_path / "cli"), "--dataset", str(tiny[0]), "--benchmark",
               "--seeds", "6", "--quiet"])
    lines = capsys.readouterr().out.splitlines()
    assert rc == 0 and (tmp_path / "cli" / "benchmark.json").exists()
    assert {line.split()[0] for line in lines[:-1]} == set(grammar.RULES), lines
    assert lines[-1].startswith("seeds 6: named attribution") and "the bar" in lines[-1], lines[-1]


def test_a_unit_on_one_held_out_image_of_a_fold_is_not_testable():
    from frobnolab.analysis.planted_grammar import testable

    image = np.repeat(np.arange(12), 10)  # 12 images of 10 tokens: 0-3 training, 4-11 held out
    fold = np.where(image < 4, -1, image % 2)
    spread = (np.arange(120) % 10 == 0).astype(float)  # fires on every image
    assert testable(spread, image, fold)
    one = spread * (image == 5)  # one held-out image of fold 1
    assert not testable(one, image, fold) and not testable(spread * (image < 4), image, fold)
    assert testable(spread * (image != 5), image, fold) and not testable(spread * (image != 5), image, fold, 4)
    assert testable(spread, image, fold, 5)  # folds of 4 images: every one of them is enough
