"""The command line: defaults come from the config dataclasses; bad input is one line on stderr, exit status 2, and
nothing written."""

import os
import subprocess
import sys

import pytest

from frobnolab.cli import COMMANDS, build_parser, default, main


def _one_line_naming(capsys, *names) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    for name in names:
        assert name in err[0], err[0]
    return err[0]


# ------------------------------------------------------------------------------------------------ defaults and help


def test_cli_defaults_are_the_config_defaults():
    from frobnolab.analysis.score import ScoreConfig
    from frobnolab.models.conv_ae import ConvAEConfig
    from frobnolab.models.field import FieldConfig
    from frobnolab.models.train import TrainAEConfig, TrainFieldConfig
    from frobnolab.scenes.dataset import RenderConfig

    r, rc = build_parser("render").parse_args(["render", "shapes", "--out", "x"]), RenderConfig("shapes")
    assert (r.n, r.size, r.seed, r.shard_size, r.holdout_every) == (rc.n, rc.size, rc.seed, rc.shard_size,
                                                                   rc.holdout_every)
    a = build_parser("train-ae").parse_args(["train-ae", "d", "--out", "x"])
    ae = TrainAEConfig()
    assert (a.channels, a.latent_channels, a.steps, a.batch_size, a.lr, a.seed, a.device) == (
        ConvAEConfig().channels, ConvAEConfig().latent_channels, ae.steps, ae.batch_size, ae.lr, ae.seed, ae.device)
    f = build_parser("train-field").parse_args(["train-field", "d", "--out", "x"])
    tf = TrainFieldConfig()
    assert (f.mode, f.hidden, f.layers, f.freqs, f.steps, f.samples, f.importance, f.max_seconds, f.lr) == (
        tf.mode, FieldConfig().hidden, FieldConfig().layers, FieldConfig().n_freqs, tf.steps, tf.samples_per_ray,
        tf.importance_samples, tf.max_seconds, tf.lr)
    s = build_parser("score").parse_args(["score", "st", "sae", "--out", "x"])
    sc = ScoreConfig()
    assert (s.holdout, s.max_tokens, s.nulls, s.causal_top, s.causal_images, s.bootstrap) == (
        sc.holdout_concepts, sc.max_tokens, sc.n_null, sc.causal_top, sc.causal_images, sc.bootstrap)
    # SAE options stay unset, so that a preset's value applies; their help states the dataclass default
    t = build_parser("train-sae").parse_args(["train-sae", "st", "--out", "x"])
    assert t.tokens is None and t.width is None
    assert default(TrainAEConfig, "model") == ConvAEConfig()  # a default_factory is called


def test_every_command_builds_its_help(capsys):
    build_parser()  # every subcommand's options at once: each documented field has its line
    for name in COMMANDS:
        with pytest.raises(SystemExit) as e:
            main([name, "--help"])
        assert e.value.code == 0, name
        assert "usage: frobnolab " + name in capsys.readouterr().out


def test_families_does_not_import_torch():
    code = "import sys; from frobnolab.cli import main; main(['families']); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "False"


# ---------------------------------------------------------------------------------- unknown names and bad paths


def test_train_sae_unknown_hook_is_one_line(tiny_run, tmp_path, capsys):
    out = tmp_path / "sae"
    assert main(["train-sae", str(tiny_run / "store"), "--preset", "tiny", "--hook", "enc9", "--out", str(out),
                 "--quiet"]) == 2
    _one_line_naming(capsys, "enc9")
    assert not out.exists()


def test_train_sae_unknown_preset_is_one_line(tiny_run, tmp_path, capsys):
    out = tmp_path / "sae"
    assert main(["train-sae", str(tiny_run / "store"), "--preset", "no-such-preset", "--out", str(out)]) == 2
    _one_line_naming(capsys, "no-such-preset")
    assert not out.exists()


def test_extract_unknown_concept_is_one_line(tiny_run, tmp_path, capsys):
    out = tmp_path / "store"
    assert main(["extract", "--model", str(tiny_run / "ae"), "--dataset", str(tiny_run / "render"), "--concepts",
                 "depth,no_such_concept", "--out", str(out), "--quiet"]) == 2
    _one_line_naming(capsys, "no_such_concept")
    assert not out.exists() and not out.with_name("store.partial").exists()


def test_score_unknown_hook_is_one_line(tiny_run, tmp_path, capsys):
    out = tmp_path / "scores"
    assert main(["score", str(tiny_run / "store"), str(tiny_run / "sae"), "--hook", "enc9", "--out", str(out),
                 "--quiet"]) == 2
    _one_line_naming(capsys, "enc9")
    assert not out.exists()


def test_score_with_a_missing_sae_folder_says_so(tiny_run, tmp_path, capsys):
    out, missing = tmp_path / "scores", tmp_path / "nonexistent"
    assert main(["score", str(tiny_run / "store"), str(missing), "--out", str(out), "--quiet"]) == 2
    line = _one_line_naming(capsys, str(missing))
    assert any(w in line.lower() for w in ("no such", "not found", "does not exist", "not an sae")), line
    assert not out.exists()


def test_quickstart_unknown_preset_is_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["quickstart", "--preset", "huge", "--out", str(out)]) == 2
    _one_line_naming(capsys, "huge", "tiny")  # names the bad preset and the known ones
    assert not out.exists()


def test_quickstart_with_missing_taesd_weights_fails_before_any_stage(tmp_path):
    """The weights are checked first: seconds, not the minutes of the autoencoder stages, and no half run."""
    out, missing = tmp_path / "run", tmp_path / "nonexistent"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("FROBNOLAB_TAESD_DIR", None)
    try:
        r = subprocess.run([sys.executable, "-m", "frobnolab.cli", "quickstart", "--out", str(out), "--taesd",
                            str(missing), "--workers", "1", "--quiet"], capture_output=True, text=True, env=env,
                           timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("quickstart --taesd MISSING ran for 60 s instead of failing at once")
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(err) == 1 and str(missing) in err[0], r.stderr[-2000:]
    assert not out.exists() or not any(out.iterdir()), sorted(p.name for p in out.iterdir())
