"""Baseline dictionaries (analysis/baselines.py): non-negative features of the right width for every kind, exact
reconstruction for a full basis, and scoring through the same path as an SAE (`frobnolab score --baseline`)."""

import hashlib
import json

import numpy as np
import pytest
import torch

from frobnolab.analysis.baselines import KINDS, BaselineConfig, fit_baseline, load_baseline, save_baseline
from frobnolab.analysis.score import sae_encoder
from frobnolab.analysis.store import ActivationStore, ExtractConfig, extract
from frobnolab.cli import main
from tests.test_cli import _one_line_naming

SMALL = ["--nulls", "4", "--bootstrap", "0", "--causal-top", "4", "--causal-images", "2", "--scene-steps", "50",
         "--quiet"]


@pytest.fixture(scope="module")
def store(tiny_dataset, tmp_path_factory):
    """A random tiny ConvAutoencoder (saved, so that the scorer can load it) and its store at enc0 (8 channels)."""
    from frobnolab.models.conv_ae import ConvAEConfig, ConvAutoencoder
    from frobnolab.models.io import save_model

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("baselines")
    model = save_model(ConvAutoencoder(ConvAEConfig(channels=(8, 16), latent_channels=4)), root / "ae")
    return extract(ExtractConfig(model=str(model), dataset=str(tiny_dataset), hooks=("enc0",)), root / "store",
                   progress=False)


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_has_non_negative_features_of_its_width(store, kind):
    tok = ActivationStore(store)["enc0"]
    d = tok.d_in
    n = 16 if kind in ("nmf", "kmeans") else d
    fit = fit_baseline(tok, BaselineConfig(kind=kind, n=n, fit_tokens=2000, max_iter=100, seed=0))
    sae, width = fit.module, (2 * n if kind in ("pca", "ica", "units", "random") else n)
    assert sae.cfg.d_sae == width == sae.W_dec.shape[0] and sae.cfg.d_in == d == sae.W_dec.shape[1]
    assert not sae.cfg.rescale_acts_by_decoder_norm and fit.meta["fit_tokens"] == 2000
    x = tok.activations("test", max_tokens=3000)
    f = sae.encode(torch.from_numpy(x))
    assert f.shape == (len(x), width) and f.min() >= 0 and (f > 0).any()
    enc = sae_encoder(sae)  # the scorer's encoder: dense, and its sparse form holds the same values
    np.testing.assert_array_equal(enc.sparse(x).toarray(), enc(x).numpy())
    rec = sae.decode(f).numpy()
    err = ((rec - x) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    np.testing.assert_allclose(err, fit.meta["fvu_test"], rtol=1e-3)  # its record: held-out FVU
    if kind in ("units", "random", "pca"):  # a full basis reconstructs exactly
        np.testing.assert_allclose(rec, x, atol=1e-4 * np.abs(x).max())
    elif kind == "ica":
        assert err < 1e-3, err
    else:  # nmf, kmeans: better than the mean
        assert err < 1 and fit.meta["fvu_fit"] < 1, (err, fit.meta)
    if kind == "kmeans":
        assert ((f > 0).sum(1) <= 1).all()  # one feature per token: its centroid


def test_a_baseline_saves_and_loads_back_the_same(store, tmp_path):
    tok = ActivationStore(store)["enc0"]
    fit = fit_baseline(tok, BaselineConfig(kind="nmf", n=12, fit_tokens=1500, max_iter=100, seed=1))
    save_baseline(fit, tmp_path)
    back = load_baseline(tmp_path)
    x = torch.from_numpy(tok.activations("test", max_tokens=500))
    torch.testing.assert_close(back.encode(x), fit.module.encode(x), rtol=0, atol=0)
    meta = json.loads((tmp_path / "baseline.json").read_text())
    assert (meta["kind"], meta["n"], meta["seed"], meta["fit_tokens"]) == ("nmf", 12, 1, 1500)
    assert meta["store_hook_sha256"] == tok.meta["sha256"]


@pytest.mark.parametrize("spec", ["pca", "kmeans:16"])
def test_a_baseline_scores_end_to_end_through_the_cli(store, tmp_path, spec):
    out = tmp_path / "scores"
    assert main(["score", str(store), "--baseline", spec, "--hook", "enc0", "--out", str(out)] + SMALL) == 0
    s = json.loads((out / "summary.json").read_text())
    assert (out / "features.parquet").is_file() and (out / "report.md").is_file()
    kind = spec.partition(":")[0]
    assert s["baseline"]["kind"] == kind and s["hook"] == "enc0"
    assert s["features"] == s["baseline"]["d_sae"] == 16  # pca: 8 channels, signed; kmeans: 16 centroids
    assert s["sae_sha256"] == hashlib.sha256((out / "baseline.safetensors").read_bytes()).hexdigest()
    assert json.loads((out / "baseline.json").read_text())["kind"] == kind
    if kind == "pca":  # a full basis splices in exactly: its loss is the clean model's
        u = s["understood"]
        assert u["measured"], u
        assert u["losses"]["sae"] == pytest.approx(u["losses"]["clean"], rel=1e-4, abs=1e-7), u["losses"]
        # the gallery opens baseline scores too (it loads the baseline where an SAE would be)
        assert main(["gallery", str(out), "--out", str(tmp_path / "gallery"), "--pages", "2", "--quiet"]) == 0
        assert (tmp_path / "gallery" / "index.html").is_file()


@pytest.mark.parametrize("argv, names", [
    (["--baseline", "pca"], ["--hook"]),
    (["--baseline", "pcx", "--hook", "enc0"], ["pcx", "pca"]),
    (["--baseline", "pca:0", "--hook", "enc0"], ["pca:0"]),
    (["--baseline", "pca:99", "--hook", "enc0"], ["pca:99", "8"]),
    (["--baseline", "pca", "--hook", "enc9"], ["enc9"]),
    (["SAE_FOLDER", "--baseline", "pca", "--hook", "enc0"], ["SAE_FOLDER", "--baseline"]),
    ([], ["--baseline"]),
])
def test_bad_baseline_input_is_one_line(store, tmp_path, capsys, argv, names):
    out = tmp_path / "scores"
    assert main(["score", str(store)] + argv + ["--out", str(out), "--quiet"]) == 2
    _one_line_naming(capsys, *names)
    assert not out.exists()


def test_a_baseline_is_tested_against_the_nulls_of_an_earlier_scoring(store, tmp_path, tiny_run):
    from frobnolab.analysis.run import score_baseline
    from frobnolab.analysis.score import ScoreConfig, read_table

    cfg = ScoreConfig(n_null=24, bootstrap=0, causal_top=4, causal_images=2, scene_steps=50)
    first = tmp_path / "units"
    score_baseline(store, "units", first, cfg, hook="enc0", progress=False, log=lambda *_: None)
    bank = read_table(first / "null_features.parquet")
    assert len(bank["rate"]) == 24 and np.isfinite(bank["gap"]).all()
    s = score_baseline(store, "pca", tmp_path / "pca", cfg, hook="enc0", progress=False, log=lambda *_: None,
                       nulls_from=first)
    # none of its own nulls: the percentiles and p-values are the bank's
    assert s["nulls_from"] == str(first.resolve()) and s["n_null"] == 24
    assert not (tmp_path / "pca" / "null_features.parquet").exists()
    assert s["nulls95"]["gap"] == pytest.approx(np.quantile(bank["gap"], 0.95))
    t = read_table(tmp_path / "pca" / "features.parquet")
    alive = np.asarray(t["freq"]) > 0
    p = np.asarray(t["p_gap"], float)
    assert np.isfinite(p[alive]).all() and (p[alive] >= 1 / 25).all() and np.isnan(p[~alive]).all()
    # nulls of another store's hook are refused, naming the folder
    with pytest.raises(ValueError, match="units"):
        score_baseline(tiny_run / "store", "pca", tmp_path / "x", cfg, hook="enc0", progress=False,
                       log=lambda *_: None, nulls_from=first)
