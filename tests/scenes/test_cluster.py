"""Shards on Ray (a local Ray of 2 CPUs): same bytes as the local pool, and a worker killed mid-shard survived."""

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from frobnolab.scenes.cluster import RayConfig, run_shards
from frobnolab.scenes.dataset import RenderConfig, render_dataset


def _files(folder: Path) -> dict[str, bytes]:
    # provenance.json says when, where and by what: the one file that may differ between identical runs
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != "provenance.json"}


def test_ray_render_matches_local_byte_for_byte(ray_local, tmp_path):
    cfg = RenderConfig("clutter", n=20, size=32, seed=3, shard_size=6)
    local = render_dataset(cfg, tmp_path / "local", workers=2, progress=False)
    on_ray = render_dataset(cfg, tmp_path / "ray", progress=False, ray=ray_local)
    a, b = _files(local), _files(on_ray)
    assert list(a) == list(b) and len(a) > 20
    assert [k for k in a if a[k] != b[k]] == []
    assert json.loads((on_ray / "provenance.json").read_text())["executor"] == "ray (local)"


def test_worker_killed_mid_shard_is_survived(ray_local, tmp_path, caplog, run_killing_a_shard_worker):
    cfg = RenderConfig("shapes", n=48, size=48, seed=1, shard_size=8)
    local = render_dataset(cfg, tmp_path / "local", workers=1, progress=False)
    caplog.set_level(logging.WARNING, logger="frobnolab.cluster")
    out, killed = run_killing_a_shard_worker(lambda: render_dataset(cfg, tmp_path / "ray", progress=False,
                                                                     ray=ray_local))
    assert killed, "never saw a worker inside a shard"
    assert any("worker died" in r.getMessage() for r in caplog.records), "the kill did not interrupt a shard"
    assert _files(out) == _files(local)  # retried shard complete, no leftovers, same bytes
    assert not (tmp_path / "ray.partial").exists()


def test_shard_errors_are_raised_once_not_retried(ray_local):
    assert sorted(run_shards(ray_local, int, ["3", "1", "2"], init=print)) == [1, 2, 3]
    with pytest.raises(ValueError, match="invalid literal"):
        list(run_shards(ray_local, int, ["1", "x"], init=print))


def test_a_worker_set_up_error_is_raised_once_with_its_message(ray_local, caplog):
    import time

    def bad_init():  # defined here, so that Ray carries it by value
        raise ValueError("bad concept xyz")

    caplog.set_level(logging.WARNING, logger="frobnolab.cluster")
    t0 = time.monotonic()
    with pytest.raises(ValueError) as e:
        list(run_shards(ray_local, int, [str(i) for i in range(8)], init=bad_init))
    assert type(e.value) is ValueError and str(e.value) == "bad concept xyz"  # the original, not a Ray wrapper
    assert any("set-up of a Ray worker" in note for note in e.value.__notes__)
    assert not [r for r in caplog.records if "worker died" in r.getMessage()]  # not retried as a dead worker
    assert time.monotonic() - t0 < 60


def test_a_render_worker_set_up_error_is_raised_with_its_message(ray_local, tmp_path, vanishing_family):
    from frobnolab.scenes import FamilyError

    fam = vanishing_family
    with pytest.raises(FamilyError, match=f"{fam}.*cannot read"):
        render_dataset(RenderConfig(str(fam), n=4, size=16, shard_size=2), tmp_path / "d", progress=False,
                       ray=ray_local)


def test_bad_ray_options_are_refused():
    with pytest.raises(ValueError, match="workers"):
        RayConfig(workers=-1).check()
    with pytest.raises(ValueError, match="address"):
        RayConfig(address="").check()


def test_cli_runs_render_on_ray_and_refuses_workers_without_it(ray_local, tiny_dataset, tmp_path, capsys):
    from frobnolab.cli import main

    assert main(["render", "shapes", "--n", "6", "--size", "16", "--shard-size", "3", "--out", str(tmp_path / "d"),
                 "--ray", "--workers", "2", "--quiet"]) == 0
    assert json.loads((tmp_path / "d" / "provenance.json").read_text())["executor"] == "ray (local)"
    assert main(["extract", "--model", "random-taesd", "--dataset", str(tiny_dataset), "--out", str(tmp_path / "s"),
                 "--workers", "2", "--quiet"]) == 2
    assert "only with --ray" in capsys.readouterr().err and not (tmp_path / "s").exists()


def test_core_install_does_not_need_ray():
    code = ("import sys; sys.modules['ray'] = None\n"  # as if Ray were not installed
            "import frobnolab.cli, frobnolab.scenes.dataset, frobnolab.analysis.store\n"
            "from frobnolab.scenes.cluster import RayConfig, run_shards\n"
            "try:\n    list(run_shards(RayConfig(), int, ['1'], init=print))\n"
            "except ImportError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "pip install 'frobnolab[ray]'" in out
