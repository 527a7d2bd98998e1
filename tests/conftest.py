import os

import numpy as np
import pytest

os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")


@pytest.fixture(autouse=True)
def _seed():
    np.random.seed(0)
    try:
        import torch

        torch.manual_seed(0)
    except ImportError:
        pass


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """16 renders of the `shapes` family at 32x32 (every test that needs images shares it)."""
    from frobnolab.scenes.dataset import RenderConfig, render_dataset

    return render_dataset(RenderConfig("shapes", n=16, size=32, seed=0, shard_size=8),
                          tmp_path_factory.mktemp("data") / "shapes32", workers=1, progress=False)


@pytest.fixture(scope="session")
def tiny_single(tmp_path_factory):
    """16 views of the `single` scene at 32x32."""
    from frobnolab.scenes.dataset import RenderConfig, render_dataset

    return render_dataset(RenderConfig("single", n=16, size=32, seed=0, shard_size=8),
                          tmp_path_factory.mktemp("data") / "single32", workers=1, progress=False)


@pytest.fixture(scope="session")
def taesd_dir():
    """The real pretrained TAESD weights beside the repository (never copied into it)."""
    from pathlib import Path

    path = Path(os.environ.get("FROBNOLAB_TAESD_DIR", Path(__file__).resolve().parents[2] / "shared/weights/taesd"))
    assert (path / "taesd_encoder.safetensors").is_file(), f"TAESD weights not found at {path}"
    return path


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """The main job on its tiny preset (render, autoencoder, store, SAE, scores), once per session."""
    from frobnolab.analysis.pipeline import QUICKSTART_PRESETS, run_quickstart

    run = tmp_path_factory.mktemp("run") / "tiny"
    run_quickstart(QUICKSTART_PRESETS["tiny"], run, workers=1, progress=False, log=lambda *_: None)
    return run


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray of 2 CPUs for one test module (stopped after it, so that it idles under no other test)."""
    from frobnolab.scenes.cluster import RayConfig, connect

    ray = connect(RayConfig(workers=2))
    yield RayConfig(workers=2)
    ray.shutdown()


def _run_killing_a_shard_worker(fn, timeout: float = 120):
    """Run ``fn()`` (which runs shards on Ray) in a thread, SIGKILL the first actor seen inside a shard (Ray titles a
    busy actor's process ray::CLASS.METHOD), and return ``(fn's result, PIDs killed)``; fn's error is raised here."""
    import signal
    import threading
    import time
    from pathlib import Path

    out: dict = {}

    def run():
        try:
            out["result"] = fn()
        except BaseException as e:  # noqa: BLE001 (handed to the test's thread)
            out["error"] = e

    thread = threading.Thread(target=run)
    thread.start()
    killed, deadline = [], time.time() + timeout
    while thread.is_alive() and not killed and time.time() < deadline:
        for cmd in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                busy = cmd.read_bytes().split(b"\0")[0] == b"ray::_ShardWorker.run"
            except OSError:
                continue
            if busy:
                os.kill(int(cmd.parent.name), signal.SIGKILL)
                killed.append(int(cmd.parent.name))
                break
        time.sleep(0.005)
    thread.join(timeout=180)
    if "error" in out:
        raise out["error"]
    return out.get("result"), killed


@pytest.fixture
def run_killing_a_shard_worker():
    return _run_killing_a_shard_worker


@pytest.fixture
def vanishing_family(tmp_path, monkeypatch):
    """A family file that the driver can load and that is gone by the time a worker sets up (its set-up fails)."""
    from frobnolab.scenes import family as F

    fam = tmp_path / "fam.yaml"
    fam.write_text("name: t\nobjects: [{shape: sphere}]\n")
    real = F.load_family

    def load_then_remove(path):
        out = real(path)
        fam.unlink(missing_ok=True)
        return out

    monkeypatch.setattr(F, "load_family", load_then_remove)
    return fam
