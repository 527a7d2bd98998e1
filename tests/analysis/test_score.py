import json

import numpy as np
import pytest
import scipy.sparse as sp

from frobnolab.analysis.scoring.stats import BinnedStats, DetectionStats, RidgeStats


def direct_eta_cv(f, bins, fold, n_bins):
    """Cross-validated correlation ratio by brute force: bin means on one fold, R^2 on the other, averaged."""
    out = []
    for a, b in ((0, 1), (1, 0)):
        fa, ba, fb, bb = f[fold == a], bins[fold == a], f[fold == b], bins[fold == b]
        means = np.array([fa[ba == k].mean() if (ba == k).any() else fa.mean() for k in range(n_bins)])
        pred = means[bb]
        out.append(1 - ((fb - pred) ** 2).sum() / ((fb - fb.mean()) ** 2).sum())
    return np.mean(out)


def test_streamed_eta_matches_brute_force_and_can_be_high_or_null():
    rng = np.random.default_rng(0)
    n, B = 3000, 8
    bins = rng.integers(B, size=(2, n))
    fold = rng.integers(2, size=n)
    signal = np.maximum(bins[0] - 3, 0).astype(float) * (rng.random(n) < 0.7)  # a function of variable 0
    noise = rng.exponential(size=n) * (rng.random(n) < 0.3)  # of nothing
    f = np.stack([signal, noise], 1)
    st = BinnedStats(2, B, 2)
    for s in range(0, n, 1000):  # streamed in chunks, sparse
        st.add(sp.csr_matrix(f[s:s + 1000]), bins[:, s:s + 1000], fold[s:s + 1000])
    r2 = st.r2_cv()
    for v in range(2):
        for j in range(2):
            assert r2[v, j] == pytest.approx(direct_eta_cv(f[:, j], bins[v], fold, B), abs=1e-9)
    assert r2[0, 0] > 0.4 and abs(r2[0, 1]) < 0.02 and abs(r2[1, 0]) < 0.02


def test_detection_auroc_matches_rank_statistic():
    rng = np.random.default_rng(1)
    n = 4000
    label = rng.random(n) < 0.3
    f = np.where(label, rng.exponential(2.0, n), rng.exponential(0.5, n) * (rng.random(n) < 0.5))
    det = DetectionStats(1, 1, np.array([f.max()]), n_bins=256)
    det.add(sp.csr_matrix(f[:, None]), label[None].astype(int))
    auroc, f1 = det.finish()
    pos, neg = f[label], f[~label]
    exact = ((pos[:, None] > neg[None]).mean() + 0.5 * (pos[:, None] == neg[None]).mean())
    assert auroc[0, 0] == pytest.approx(exact, abs=0.01)
    assert 0.5 < f1[0, 0] <= 1


def test_ridge_r2_finds_smooth_functions_and_not_noise():
    rng = np.random.default_rng(2)
    n = 6000
    g = rng.normal(size=(n, 5))
    fold = rng.integers(2, size=n)
    f = np.stack([np.maximum(np.sin(g[:, 0]) + 0.5 * g[:, 1], 0), rng.exponential(size=n)], 1)
    half = rng.integers(2, size=n)
    rs = RidgeStats(g.mean(0), g.std(0), 2, dim=256, bandwidth=0.5)
    rs.add(f, g, fold, half_N=half)
    r2, _ = rs.r2_cv()
    assert r2[0] > 0.7 and abs(r2[1]) < 0.05


def test_ridge_penalty_is_chosen_inside_the_fitting_fold():
    rng = np.random.default_rng(3)
    n = 6000
    g = rng.normal(size=(n, 3))
    fold, half = rng.integers(2, size=n), rng.integers(2, size=n)
    # a sharp function (wants a small penalty) and a weak one in noise (wants a large one)
    f = np.stack([np.sin(3 * g[:, 0]) + 1.5, 0.05 * g[:, 1] + rng.normal(size=n) + 3], 1)

    def chosen(f):
        rs = RidgeStats(g.mean(0), g.std(0), 2, dim=256, bandwidth=0.3)
        rs.add(f, g, fold, half_N=half)
        r2 = rs.r2_cv(lambdas=(1e-6, 1e-3, 1e-1, 10.0))[0]
        return rs.chosen, r2

    c, r2 = chosen(f)
    assert c[0][0] < c[0][1] and c[1][0] < c[1][1]  # each feature its own penalty
    # fold 1 scrambled: what fold 0 chose for its fit does not move (fold 1 only evaluates it), fold 1's own does
    g1 = f.copy()
    g1[fold == 1] = rng.permutation(g1[fold == 1])
    c1, r2_1 = chosen(g1)
    np.testing.assert_array_equal(c1[0], c[0])
    assert r2_1[0] < r2[0] - 0.3


@pytest.fixture(scope="module")
def clutter(tmp_path_factory):
    from frobnolab.scenes.dataset import RenderConfig, render_dataset

    return render_dataset(RenderConfig("clutter", n=160, size=64, seed=0), tmp_path_factory.mktemp("c") / "clutter",
                          progress=False)


@pytest.fixture(scope="module")
def planted(clutter, tmp_path_factory):
    """The planted-truth validation on its default config, once for this module."""
    from frobnolab.analysis.planted import validate_scorer

    out = tmp_path_factory.mktemp("v") / "v"
    return validate_scorer(clutter, out, progress=False), out


def test_scorer_recovers_planted_truth(planted):
    r, out = planted
    assert r["attribution_rate"] >= 0.95, [(u["name"], u["named"], u["pair"]) for u in r["units"] if u["ok"] is False]
    assert r["nameless_rank"] == 1
    assert r["noise_at_null"]
    nameless = next(u for u in r["units"] if u["kind"] == "nameless")
    assert nameless["pair_r2"] < 0.1 and nameless["scene_r2"] > 0.3  # unnamed, yet a function of the scene
    assert r["passed"] and (out / "validation.json").exists()
    assert json.loads((out / "validation.json").read_text())["passed"] is True  # strict JSON, read back


def test_understood_share_of_planted_units_is_high_and_beats_shuffled_descriptions(planted):
    """The planted units are mostly single concepts and products, which their descriptions capture: splicing the
    descriptions in place of the units recovers nearly all of the output (seed 0: 0.94; named match 0.93); dealt
    to the wrong units they recover far less (null 95th percentile 0.67: many planted concepts overlap, such as
    foreground, silhouette and the shape classes). The losses are the planted model's exact ones."""
    r, _ = planted
    u = r["understood"]
    assert u["measured"] and u["losses"]["sae"] == 0 and u["losses"]["mean"] > 0, u
    sh = u["understood"]
    assert sh["descriptions"] > 0.9 and sh["named"] > 0.85, sh
    assert sh["descriptions"] > u["null95"] + 0.1 and u["beats_null"], u
    assert len(u["null"]["shares"]) == 20 and max(u["null"]["shares"]) < sh["descriptions"], u["null"]
    assert u["recovered"]["mean"] < u["recovered"]["descriptions"] <= 1, u["recovered"]


def test_named_predictor_has_the_cross_validated_eta_of_the_named_match(clutter, tmp_path):
    """What the understood share's "named" predictor splices is the named match itself: fitted on one fold and
    evaluated on the other's tokens it has exactly the cross-validated eta^2 (single or pair) the table reports."""
    from frobnolab.analysis.planted import PoolProbe, planted_units
    from frobnolab.analysis.score import ScoreConfig, _predictors
    from frobnolab.analysis.scoring import engine
    from frobnolab.analysis.scoring.named import NamedMatch
    from frobnolab.analysis.store import ActivationStore, ExtractConfig, extract
    from frobnolab.analysis.variables import build_variables

    store = ActivationStore(extract(ExtractConfig(model="pool-probe", dataset=str(clutter)), tmp_path / "t",
                                    model=PoolProbe(2), progress=False))
    tok = store["cells"]
    gt, where = np.asarray(tok.gt, np.float64), np.asarray(tok.where)
    held = tok.held_out(where[:, 0])
    gt, where = gt[held], where[held]
    units, _ = planted_units(gt, store.columns, np.random.default_rng(0))
    fold = engine.folds(where[:, 0])[where[:, 0]]
    variables = build_variables(store.concepts, store.columns, gt[:20000])
    F = units.shape[1]
    named = NamedMatch(variables, [], F, units.max(0), 10**9, 6)
    f = sp.csr_matrix(units)
    bins = np.stack([v.bins(gt) for v in variables])
    named.add(engine.Chunk(f, units, gt, where, fold, bins))
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.nan_to_num(np.corrcoef(np.column_stack([units, gt]).T)[:F, F:])
    nm = named.finish(corr, lambda: [], progress=False)
    r2 = []
    for b in (0, 1):
        pred = nm.predict(gt[fold == b], variables, 1 - b)
        y = units[fold == b]
        r2.append(1 - ((y - pred) ** 2).sum(0) / ((y - y.mean(0)) ** 2).sum(0))
    np.testing.assert_allclose(np.mean(r2, 0), nm.named_best, atol=1e-4)  # predictions in float32
    assert ScoreConfig().understood_shuffles > 0 and callable(_predictors)


def test_frobnoloid_intervals_contain_their_point_estimates(planted):
    r, _ = planted
    assert r["frob_intervals"], "no feature got an interval"
    for j, (frob, lo, hi) in r["frob_intervals"].items():
        assert lo <= frob + 1e-9 and frob <= hi + 1e-9, (j, frob, lo, hi)
    # one formula: at unit weights the bootstrap's statistic reproduces the point estimate
    check = r["bootstrap_check"]
    assert check["sample_holds_every_token"] and check["max_abs_diff_at_unit_weights"] < 1e-4, check


def test_held_out_concept_widens_the_gap_and_is_reported(clutter, planted, tmp_path):
    from frobnolab.analysis.planted import validate_scorer
    from frobnolab.analysis.score import ScoreConfig

    base = planted[0]
    held = validate_scorer(clutter, tmp_path / "b", progress=False,
                           cfg=ScoreConfig(n_null=32, bootstrap=0, holdout_concepts=("shadow",)))
    unit = lambda r: next(u for u in r["units"] if u["name"] == "shadow")  # noqa: E731
    assert unit(base)["named"] == "shadow" and unit(held)["named"] != "shadow"
    assert unit(held)["named_r2"] < unit(base)["named_r2"] - 0.1


@pytest.fixture(scope="module")
def vocabulary(clutter, tmp_path_factory):
    """Issue 14's planted units (analysis/planted.py:vocabulary_units) on the module's dataset, scored once."""
    from frobnolab.analysis.planted import validate_scorer, vocabulary_units
    from frobnolab.analysis.score import ScoreConfig

    r = validate_scorer(clutter, tmp_path_factory.mktemp("voc") / "voc", progress=False, units=vocabulary_units,
                        cfg=ScoreConfig(n_null=16, bootstrap=0, seed=0, scene_steps=300))
    return {x["name"]: x for x in r["units"]}


def test_magenta_is_named_hue_and_a_specular_copy_specular(vocabulary):
    """A magenta detector (a function of hue) is named by hue, not by an albedo channel; a plain copy of the sparse,
    heavy-tailed specular highlight by specular (it scored 0.15, best match luminance, with 16 equal-count bins)."""
    u = vocabulary
    assert u["magenta"]["named"] == "hue" and u["magenta"]["named_r2"] > 0.9, u["magenta"]
    assert u["specular_copy"]["named"] == "specular" and u["specular_copy"]["named_r2"] > 0.8, u["specular_copy"]
    for x in u.values():  # pairs are of two distinct concepts
        p, q = x["pair"].split("+")
        assert p != q, x


def test_depth_times_foreground_is_named_by_that_pair(vocabulary):
    """depth ranks low by eta^2 and by correlation (foreground-like gates lead), so it is not among the top
    singles; what is left of the unit inside the foreground bin is depth (named.residual_corr), which puts the pair
    among the candidates (seed 0: foreground+depth 0.99; it was foreground+material 0.95 before)."""
    x = vocabulary["depth*foreground"]
    assert sorted(x["pair"].split("+")) == ["depth", "foreground"], x


def test_a_function_of_the_albedo_colour_is_named_by_the_colour_vector(vocabulary):
    """A bump around one object's albedo in RGB: no channel, hue or value alone carries it, the albedo vector
    (scored whole, analysis/variables.py:VECTORS) does (seed 0: albedo 0.97, best pair 0.68; seed 1: 0.88, 0.69)."""
    x = vocabulary["albedo_colour"]
    assert x["named"] == "albedo" and x["named_r2"] > 0.8 and x["named_r2"] > x["pair_r2"] + 0.1, x


def test_vector_concepts_bin_by_their_nearest_centre_and_follow_their_components():
    from frobnolab.analysis.variables import build_variables

    rng = np.random.default_rng(0)
    names = ["albedo_r", "albedo_g", "albedo_b", "depth"]
    palette = rng.random((5, 3))  # five colours, each a cluster: five centres, each its own bin
    g = np.column_stack([palette[rng.integers(0, 5, 4000)] + rng.normal(0, 0.01, (4000, 3)), rng.random(4000)])
    concepts = [{"name": n, "kind": "continuous", "columns": [n]} for n in names]
    v = {x.name: x for x in build_variables(concepts, names, g)}
    albedo = v["albedo"]
    assert albedo.kind == "vector" and albedo.named and albedo.cols == [0, 1, 2] and albedo.n_bins <= 32
    b = albedo.bins(g)
    for k in range(5):  # every token of one colour in bins of that colour only, and no two colours share a bin
        ours = set(b[np.all(np.abs(g[:, :3] - palette[k]) < 0.1, 1)])
        others = set(b[~np.all(np.abs(g[:, :3] - palette[k]) < 0.1, 1)])
        assert ours and not ours & others, k
    assert albedo.bins(g, coarse=True).max() < albedo.n_coarse <= 10
    held = {x.name: x for x in build_variables(concepts, names, g, holdout=("albedo_g",))}
    assert not held["albedo"].named and held["albedo_r"].named  # a vector is named when all its parts are
    assert "normal" not in v  # a vector whose components the store lacks is not made


def test_sae_pipeline_matches_sae_lens_on_synthetic_data(tmp_path):
    from frobnolab.analysis.synthetic import synthetic_check

    r = synthetic_check(tmp_path, tokens=150_000)
    assert r["mcc_sae_lens_train_toy_sae"] > 0.7
    assert r["mcc_frobnolab"] >= r["mcc_sae_lens_train_toy_sae"] - 0.05


def test_score_cli_writes_table_summary_and_report(tiny_run, tmp_path, capsys):
    from frobnolab.analysis.score import read_table
    from frobnolab.cli import main

    run = tiny_run
    assert main(["score", str(run / "store"), str(run / "sae"), "--out", str(tmp_path / "s"), "--quiet",
                 "--bootstrap", "5", "--nulls", "8", "--holdout", "depth"]) == 0
    out = capsys.readouterr().out
    assert "held-out depth" in out
    t = read_table(tmp_path / "s" / "features.parquet")
    assert len(t["feature"]) == 32
    for col in ("named_r2", "pair_r2", "scene_r2", "auroc", "causal", "frob", "gap", "heldout_r2:depth"):
        assert col in t
    s = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert set(s["nulls95"]) >= {"named_r2", "scene_r2", "causal", "gap"}
    assert "depth" in s["heldout_recovery"] and "mcc" in s["dictionary"]
    assert (tmp_path / "s" / "report.md").read_text().startswith("# Feature scores")
    assert main(["score", str(run / "store"), str(run / "sae"), "--out", str(tmp_path / "x"), "--quiet",
                 "--holdout", "nonsense"]) == 2
    assert "nonsense" in capsys.readouterr().err


def test_stability_of_an_sae_with_itself_is_one_and_with_another_seed_is_lower(tiny_run, tmp_path):
    from frobnolab.analysis.pipeline import QUICKSTART_PRESETS
    from frobnolab.analysis.sae import train_sae
    from frobnolab.analysis.run import score_sae
    from frobnolab.analysis.score import ScoreConfig

    cfg = ScoreConfig(n_null=8, bootstrap=0, causal_top=4, scene_steps=50)
    same = score_sae(tiny_run / "store", tiny_run / "sae", tmp_path / "a", cfg, other_sae=tiny_run / "sae",
                     progress=False, log=lambda *_: None)
    assert same["dictionary"]["stability"] == pytest.approx(1.0, abs=1e-6)
    import dataclasses

    other_cfg = dataclasses.replace(QUICKSTART_PRESETS["tiny"].sae, seed=1)
    train_sae(tiny_run / "store", tmp_path / "sae1", other_cfg, progress=False, evaluate=False)
    other = score_sae(tiny_run / "store", tiny_run / "sae", tmp_path / "b", cfg, other_sae=tmp_path / "sae1",
                      progress=False, log=lambda *_: None)
    assert 0 < other["dictionary"]["stability"] < 1


def test_scene_r2_of_a_feature_does_not_depend_on_the_features_beside_it():
    """Per-feature scene MLPs: a three-way product of scene columns is learned, noise is not, and a feature's
    cross-validated R^2 is the same whether it is fitted alone or beside others, up to float rounding (the GEMM's
    blocking depends on how many features share it; 400 steps at learning rate 0.04 grow its 1e-7 to 2e-4, at 0.02
    to 3e-6), far below any difference a verdict reads."""
    import scipy.sparse as sp

    from frobnolab.analysis.scoring.scene import FoldSample, scene_r2_mlp

    rng = np.random.default_rng(0)
    n = 8000
    g = rng.normal(size=(n, 12)).astype(np.float32)
    s = np.tanh(2 * g[:, :3])
    product = 1 + s[:, 0] * s[:, 1] * s[:, 2]
    f = np.stack([product, np.maximum(g[:, 5], 0), rng.exponential(size=n)], 1)
    fold = rng.integers(2, size=n)

    def r2_of(cols):
        smp = FoldSample(n)
        smp.add(sp.csr_matrix(f[:, cols]), g, fold, np.arange(n))
        return scene_r2_mlp(smp, steps=400, seed=0)[0]

    both, alone = r2_of([0, 1, 2]), r2_of([0])
    assert both[0] > 0.5 and both[1] > 0.9 and both[2] < 0.05, both  # noise: no better than its mean
    assert abs(both[0] - alone[0]) < 1e-3, (both[0], alone[0])


def test_a_vector_concept_has_a_colour_map_in_the_report(tiny_dataset):
    """A feature named by a vector concept (analysis/variables.py:VECTORS) gets an RGB concept map beside its crops,
    not a blank one: albedo and normal as scaled components, the image's colour through HSV."""
    from frobnolab.analysis.report import concept_map
    from frobnolab.scenes.dataset import Dataset

    ds = Dataset(tiny_dataset)
    for name in ("albedo", "normal", "colour"):
        m = concept_map(ds, 0, name)
        assert m.shape == (*ds.size, 3) and m.min() >= 0 and m.max() <= 1 and m.std() > 0.01, name
    assert concept_map(ds, 0, "depth").shape == ds.size


def xor2_units(gt, columns, rng):
    """Two XORs of two median cuts (no marginal signal in either concept) and a noise unit."""
    c = lambda n: gt[:, columns.index(n)].astype(np.float64)  # noqa: E731
    units, spec = [], []
    for a, b in (("row", "luminance"), ("column", "depth")):
        units.append(((c(a) > np.median(c(a))) ^ (c(b) > np.median(c(b)))).astype(float))
        spec.append({"name": f"{a}^{b}", "kind": "product", "concepts": [a, b], "weight": 1.0})
    units.append(rng.exponential(1.0, size=len(gt)) * (rng.random(len(gt)) < 0.3))
    spec.append({"name": "noise", "kind": "noise", "concepts": [], "weight": 0.0})
    return np.stack(units, 1).astype(np.float32), spec


def test_an_xor_of_two_concepts_is_named_by_that_pair(clutter, tmp_path):
    """Neither concept of an XOR carries any of it alone, so only the concepts the scene MLP reads propose the pair
    (the grammar benchmark's xor2 units were left unnamed and flagged as candidates before)."""
    from frobnolab.analysis.planted import validate_scorer
    from frobnolab.analysis.score import ScoreConfig

    r = validate_scorer(clutter, tmp_path / "v", progress=False, units=xor2_units, seed=0,
                        cfg=ScoreConfig(n_null=16, bootstrap=0, seed=0))
    for u in r["units"][:2]:
        assert u["ok"], u
        assert u["pair_r2"] > 0.7 and u["named_r2"] < 0.2, u
