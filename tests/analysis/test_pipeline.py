import json
import shutil

import numpy as np
import pytest

from frobnolab.cli import main


def test_quickstart_tiny_runs_every_stage_and_resumes(tiny_run, tmp_path, capsys, taesd_dir, monkeypatch):
    # the session's tiny run (made by the same function) has the autoencoder's stages; TAESD's are added here
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    made = json.loads((run / "stages.json").read_text())["seconds"]
    assert main(["quickstart", "--preset", "tiny", "--out", str(run), "--quiet", "--workers", "1",
                 "--taesd", str(taesd_dir)]) == 0
    out = capsys.readouterr().out
    assert "run folder" in out and "preview.png" in out and "TAESD feature gallery" in out
    # the understood share of each model, with its null and its named-only counterpart, printed and reported
    assert "autoencoder understood share: descriptions" in out and "TAESD understood share:" in out, out
    for folder in ("scores", "taesd-scores"):
        u = json.loads((run / folder / "summary.json").read_text())["understood"]
        assert u["measured"] and {"descriptions", "named", "scene"} <= set(u["understood"]), u
        assert np.isfinite(u["null95"]) and u["losses"]["sae"] < u["losses"]["zero"], u
        assert "## Understood share" in (run / folder / "report.md").read_text()
    done = json.loads((run / "stages.json").read_text())
    stages = done["seconds"]
    # the autoencoder's stages were up to date in the copy, except the extraction: a store's key holds the dataset's
    # absolute path, which the copy changed
    assert set(made) - set(done["skipped"]) == {"extract"}
    assert set(stages) == {"render", "train-ae", "extract", "train-sae", "score", "null-model", "baselines",
                           "counterfactual", "gallery", "extract-taesd",
                           "train-sae-taesd", "score-taesd", "counterfactual-taesd", "gallery-taesd", "verdicts",
                           "compare", "null-model-taesd", "baselines-taesd"}
    for f in ("render/manifest.json", "ae/model.safetensors", "store/manifest.json", "sae/sae/cfg.json",
              "taesd-sae/sae/sae_weights.safetensors", "scores/features.parquet", "scores/report.md",
              "taesd-scores/summary.json", "gallery/index.html", "taesd-gallery/index.html",
              "scores/random_model_null.json", "scores/baselines.json", "scores/null_features.parquet"):
        assert (run / f).exists(), f
    # the SAE beside its baselines, through the same scorer against the same nulls, with the layer's ceiling
    cmp = json.loads((run / "scores" / "baselines.json").read_text())
    assert [r["dictionary"] for r in cmp["dictionaries"]] == ["sae", "units"]
    assert cmp["dictionaries"][1]["nulls_from"] == "scores"  # relative to the run folder, so copies agree
    assert set(cmp["ceiling"]) >= {"depth", "albedo", "luminance"} and "depth" in cmp["concepts"]
    report = (run / "scores" / "report.md").read_text()
    assert report.count("## Baselines") == 1 and "| units | 16 (" in report, report[-2000:]
    # the features' responses to each factor of the family's sweeps, moved alone, beside their null
    resp = json.loads((run / "scores" / "responses.json").read_text())
    from frobnolab.scenes.family import load_family

    assert [f["factor"] for f in resp["factors"]] == [s["factor"] for s in load_family("shapes").sweeps]
    assert all(f["pairs"] > 0 and 0 < f["changed_share"] <= 1 for f in resp["factors"]), resp["factors"]
    assert report.count("## Counterfactual responses") == 1 and (run / "scores" / "figures" / "responses.png").exists()
    for folder in ("scores", "taesd-scores"):  # every candidate's verdict, and the report's section
        v = json.loads((run / folder / "verdicts.json").read_text())
        assert {"candidates", "frobnoloids", "bars"} <= set(v) and "## Frobnoloid verdicts" in (
            run / folder / "report.md").read_text()
    for folder in ("scores", "taesd-scores"):  # both models' candidates face a random model and baselines
        bars = json.loads((run / folder / "verdicts.json").read_text())["bars"]
        assert bars["baseline units gap"] is not None and bars["random model gap"] is not None, (folder, bars)
    assert json.loads((run / "taesd-scores" / "random_model_null.json").read_text())["model"] == "random-taesd:1"
    pair = json.loads((run / "compare" / "compare.json").read_text())  # the two models' features, same pixels
    assert pair["a"]["hook"] == "enc0" and pair["b"]["hook"] == "enc7" and pair["cells"] >= 16
    assert "shared features (same pixels" in out
    taesd_resp = json.loads((run / "taesd-scores" / "responses.json").read_text())
    assert taesd_resp["hook"] == "enc7" and len(taesd_resp["factors"]) == len(resp["factors"])
    null = json.loads((run / "scores" / "random_model_null.json").read_text())
    assert set(null) >= {"named_best", "scene_r2", "frob"} and 0 <= null["scene_r2"]["share_of_real_features_above"] <= 1
    ev = json.loads((run / "sae" / "training.json").read_text())["evaluation"]
    assert ev["l0"] > 0 and ev["explained_variance"] <= 1 and ev["fidelity_zero"] == ev["fidelity_zero"]
    # a second run finds every stage up to date; it finds TAESD itself (here through $FROBNOLAB_TAESD_DIR)
    monkeypatch.setenv("FROBNOLAB_TAESD_DIR", str(taesd_dir))
    assert main(["quickstart", "--preset", "tiny", "--out", str(run), "--quiet", "--workers", "1"]) == 0
    assert f"TAESD: {taesd_dir}" in capsys.readouterr().out
    again = json.loads((run / "stages.json").read_text())
    assert sorted(again["skipped"]) == sorted(stages)  # every stage found up to date ...
    assert again["seconds"] == stages  # ... keeps the seconds of the run that made it
    assert sum(again["this_run"].values()) < 0.5 * sum(stages.values()) + 1.0


def test_quickstart_without_taesd_weights_says_how_to_get_them(tiny_run, tmp_path, capsys, monkeypatch):
    import huggingface_hub.constants as hf

    import frobnolab.models.pretrained as pre

    monkeypatch.delenv(pre.TAESD_ENV, raising=False)
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(pre, "SHARED_TAESD", tmp_path / "no-shared")
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    assert main(["quickstart", "--preset", "tiny", "--out", str(run), "--quiet", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    hint = [line for line in out.splitlines() if line.startswith("TAESD weights not found")]
    assert len(hint) == 1 and "hf download madebyollin/taesd" in hint[0], out
    assert not (run / "taesd-store").exists() and "TAESD feature gallery" not in out
    assert main(["quickstart", "--preset", "tiny", "--out", str(run), "--quiet", "--workers", "1",
                 "--no-taesd"]) == 0
    assert "TAESD" not in capsys.readouterr().out


def test_quickstart_config_checks_its_hooks():
    from frobnolab.analysis.pipeline import QuickstartConfig
    from frobnolab.analysis.sae import SAETrainConfig

    with pytest.raises(ValueError, match="taesd_sae.hook is 'enc3'"):
        QuickstartConfig(taesd_sae=SAETrainConfig(hook="enc3"))
