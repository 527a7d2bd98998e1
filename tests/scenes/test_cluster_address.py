"""Joining an existing Ray cluster by address: a head started with `ray start`, as a user would on a cluster."""

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from frobnolab.scenes.dataset import RenderConfig, render_dataset

RAY = str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """A one-node Ray cluster of 2 CPUs in its own process group; `--block` ties its processes to ours."""
    port = _free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.Popen([RAY, "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
                             "--disable-usage-stats", "--block"], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:  # up when its port answers
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None, "ray start --head exited"
                time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # Ray's own shutdown can take half a minute; the test is over
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        # what `ray stop` would do: forget this cluster, so that no later ray.init() on this machine tries to join it
        last = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
        if last.exists() and last.read_text().strip().endswith(f":{port}"):
            last.unlink()


def test_render_on_an_existing_cluster_matches_local(head, tmp_path):
    cfg = RenderConfig("shapes", n=12, size=24, seed=5, shard_size=4)
    local = render_dataset(cfg, tmp_path / "local", workers=1, progress=False)
    # a separate driver process, as a user's would be; `ray start` clusters use token authentication
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    run = subprocess.run([sys.executable, "-m", "frobnolab.cli", "render", "shapes", "--n", "12", "--size", "24",
                          "--seed", "5", "--shard-size", "4", "--out", str(tmp_path / "ray"), "--ray", head, "--quiet"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    prov = json.loads((tmp_path / "ray" / "provenance.json").read_text())
    assert prov["executor"] == f"ray ({head})"
    for f in sorted(local.rglob("*.npy")):
        assert (tmp_path / "ray" / f.relative_to(local)).read_bytes() == f.read_bytes(), f.name


def test_an_unreachable_cluster_is_a_short_error(tmp_path):
    port = _free_port()  # nothing listens there
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    run = subprocess.run([sys.executable, "-m", "frobnolab.cli", "render", "shapes", "--n", "4", "--out",
                          str(tmp_path / "d"), "--ray", f"127.0.0.1:{port}", "--quiet"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and "cannot reach the Ray cluster" in run.stderr, run.stderr[-2000:]
    assert not (tmp_path / "d").exists() and not (tmp_path / "d.partial").exists()


def test_a_local_ray_is_started_even_where_a_dead_cluster_was_last_known(tmp_path):
    # Ray's ray.init() without an address joins the cluster this machine last knew of (its temp dir remembers it);
    # --ray alone must start a local Ray instead, even when that cluster is gone
    last = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
    saved = last.read_bytes() if last.exists() else None
    last.parent.mkdir(parents=True, exist_ok=True)
    last.write_text(f"127.0.0.1:{_free_port()}")
    try:
        run = subprocess.run([sys.executable, "-m", "frobnolab.cli", "render", "shapes", "--n", "4", "--size", "16",
                              "--out", str(tmp_path / "d"), "--ray", "--quiet"], capture_output=True, text=True,
                             timeout=300)
    finally:
        last.unlink(missing_ok=True)
        if saved is not None:
            last.write_bytes(saved)
    assert run.returncode == 0, run.stderr[-2000:]
    assert json.loads((tmp_path / "d" / "provenance.json").read_text())["executor"] == "ray (local)"
