import json

import numpy as np
import pytest

from frobnolab.cli import main
from frobnolab.errors import UnknownNameError
from frobnolab.scenes import dataset as D
from frobnolab.scenes.dataset import Dataset, RenderConfig, render_dataset
from frobnolab.scenes.render import BUFFERS, Renderer


@pytest.fixture(scope="module")
def ds_path(tmp_path_factory):
    out = tmp_path_factory.mktemp("d") / "ds"
    render_dataset(RenderConfig("clutter", n=10, size=24, seed=3, shard_size=4), out, workers=1, progress=False)
    return out


def test_manifest_describes_every_buffer(ds_path):
    m = json.loads((ds_path / "manifest.json").read_text())
    assert [b["name"] for b in m["buffers"]] == [b.name for b in BUFFERS]
    for b in m["buffers"]:
        assert b["units"] and b["meaning"] and b["shape"][:3] == ["N", 24, 24]
    assert m["n"] == 10 and m["shards"] == ["000000", "000001", "000002"]
    assert set(m["versions"]) >= {"numpy", "trimesh", "pyrender-maintained", "python"}
    assert (ds_path / "family.yaml").read_text().startswith("name: clutter")
    assert not ds_path.with_name("ds.partial").exists()


def test_reader_slices_match_a_direct_render(ds_path):
    ds = Dataset(ds_path)
    assert len(ds) == 10 and ds.size == (24, 24)
    rgb = ds["rgb"]
    assert rgb.shape == (10, 24, 24, 3)
    full = np.asarray(rgb)
    np.testing.assert_array_equal(rgb[3:9], full[3:9])  # crosses shard boundaries
    np.testing.assert_array_equal(rgb[[9, 0, 4]], full[[9, 0, 4]])
    np.testing.assert_array_equal(rgb[-1], full[9])
    np.testing.assert_array_equal(ds["depth"][2:5, 10, 10:12], np.asarray(ds["depth"])[2:5, 10, 10:12])
    scene = ds.scene(6)
    with Renderer(24) as r:
        direct = r.render(scene)
    for name in ("rgb", "instance", "normal_world", "shadow"):
        np.testing.assert_array_equal(ds[name][6], direct[name])
    np.testing.assert_allclose(ds.camera_pose[6], scene.camera.pose)
    assert ds.factors.shape == (10, len(ds.factor_names))
    assert np.isnan(ds.factors).any()  # clutter has a varying object count
    with pytest.raises(UnknownNameError, match="unknown buffer 'nope'.*known: rgb"):
        ds["nope"]


def test_readable_with_numpy_alone(ds_path):
    m = json.loads((ds_path / "manifest.json").read_text())
    parts = [np.load(ds_path / "shards" / s / "depth.npy", mmap_mode="r") for s in m["shards"]]
    assert sum(len(p) for p in parts) == 10
    np.testing.assert_array_equal(np.concatenate(parts), np.asarray(Dataset(ds_path)["depth"]))


def test_same_seed_identical_bytes_across_workers_and_shards(ds_path, tmp_path):
    b = render_dataset(RenderConfig("clutter", n=10, size=24, seed=3, shard_size=4), tmp_path / "b", workers=2,
                       progress=False)
    ma, mb = (json.loads((p / "manifest.json").read_text()) for p in (ds_path, b))
    assert ma["sha256"] == mb["sha256"] and ma["dataset_sha256"] == mb["dataset_sha256"]
    c = render_dataset(RenderConfig("clutter", n=10, size=24, seed=4, shard_size=4), tmp_path / "c", workers=1,
                       progress=False)
    assert json.loads((c / "manifest.json").read_text())["sha256"]["rgb"] != ma["sha256"]["rgb"]


def test_interrupted_render_resumes_and_never_leaves_a_half_dataset(ds_path, tmp_path, monkeypatch):
    out = tmp_path / "r"
    real = D._render_shard
    calls = []

    def flaky(job):
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated interruption")
        calls.append(job[2])
        return real(job)

    monkeypatch.setattr(D, "_render_shard", flaky)
    cfg = RenderConfig("clutter", n=10, size=24, seed=3, shard_size=4)
    with pytest.raises(KeyboardInterrupt):
        render_dataset(cfg, out, workers=1, progress=False)
    assert not out.exists()
    assert sorted(p.name for p in (tmp_path / "r.partial" / "shards").iterdir()) == ["000000", "000001"]
    calls.clear()
    monkeypatch.setattr(D, "_render_shard", lambda job: calls.append(job[2]) or real(job))
    render_dataset(cfg, out, workers=1, progress=False)
    assert calls == [2]  # only the missing shard was rendered
    assert json.loads((out / "manifest.json").read_text())["sha256"] == \
        json.loads((ds_path / "manifest.json").read_text())["sha256"]
    # up to date: a second call renders nothing
    calls.clear()
    render_dataset(cfg, out, workers=1, progress=False)
    assert calls == []


def test_existing_different_dataset_needs_force(ds_path, tmp_path, capsys):
    out = tmp_path / "x"
    assert main(["render", "shapes", "--n", "2", "--size", "16", "--out", str(out), "--workers", "1", "--quiet"]) == 0
    assert main(["render", "shapes", "--n", "3", "--size", "16", "--out", str(out), "--workers", "1", "--quiet"]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["render", "shapes", "--n", "3", "--size", "16", "--out", str(out), "--workers", "1", "--quiet",
                 "--force"]) == 0
    assert len(Dataset(out)) == 3


def test_a_killed_render_worker_stops_the_run_with_an_error_and_it_resumes(ds_path, tmp_path):
    import os
    import signal
    import threading
    import time
    from pathlib import Path

    cfg = RenderConfig("shapes", n=48, size=48, seed=1, shard_size=4)
    errors, killed = [], []

    def render():
        try:
            render_dataset(cfg, tmp_path / "d", workers=2, progress=False)
        except RuntimeError as e:
            errors.append(str(e))

    thread = threading.Thread(target=render)
    thread.start()
    deadline = time.time() + 60
    while thread.is_alive() and not killed and time.time() < deadline:
        for stat in Path("/proc").glob("[0-9]*/stat"):  # our spawned render workers, once they are rendering
            try:
                pid, ppid = int(stat.parent.name), int(stat.read_text().rsplit(")", 1)[1].split()[1])
                busy = ppid == os.getpid() and b"spawn_main" in (stat.parent / "cmdline").read_bytes()
            except (OSError, ValueError, IndexError):
                continue
            if busy and any((tmp_path / "d.partial" / "shards").glob("0*")):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                break
        time.sleep(0.005)
    thread.join(timeout=120)
    assert killed and not thread.is_alive()
    assert errors and "worker process died" in errors[0] and "resume" in errors[0]
    assert not (tmp_path / "d").exists()
    out = render_dataset(cfg, tmp_path / "d", workers=2, progress=False)  # resumes from the finished shards
    ref = render_dataset(cfg, tmp_path / "ref", workers=1, progress=False)
    assert json.loads((out / "manifest.json").read_text())["dataset_sha256"] == \
        json.loads((ref / "manifest.json").read_text())["dataset_sha256"]


def test_a_render_worker_set_up_error_is_raised_with_its_message(tmp_path, vanishing_family):
    from frobnolab.scenes import FamilyError

    fam = vanishing_family
    with pytest.raises(FamilyError, match=f"{fam}.*cannot read"):  # not "a render worker process died"
        render_dataset(RenderConfig(str(fam), n=4, size=16, shard_size=2), tmp_path / "d", workers=2, progress=False)


def test_the_dataset_owns_its_split(ds_path, tmp_path):
    ds = Dataset(ds_path)
    assert ds.holdout_every == 8 and json.loads((ds_path / "manifest.json").read_text())["holdout_every"] == 8
    assert ds.split("test").tolist() == [7] and ds.split("train").tolist() == [0, 1, 2, 3, 4, 5, 6, 8, 9]
    assert ds.split("all").tolist() == list(range(10))
    assert ds.is_held_out(np.arange(17)).tolist() == [i % 8 == 7 for i in range(17)]
    assert D.split_indices(10, "test").tolist() == [7] and D.is_held_out([3, 15], 4).tolist() == [True, True]
    with pytest.raises(ValueError, match="split must be"):
        ds.split("val")
    # a dataset written before the split was recorded: the default rule
    old = tmp_path / "old"
    old.mkdir()
    for p in ds_path.iterdir():
        (old / p.name).symlink_to(p)
    (old / "manifest.json").unlink()
    m = json.loads((ds_path / "manifest.json").read_text())
    del m["holdout_every"]
    (old / "manifest.json").write_text(json.dumps(m))
    assert Dataset(old).holdout_every == 8 and Dataset(old).split("test").tolist() == [7]


def test_holdout_every_is_a_config_parameter(ds_path, tmp_path):
    cfg = RenderConfig("clutter", n=10, size=24, seed=3, shard_size=4, holdout_every=3)
    out = render_dataset(cfg, tmp_path / "h3", workers=1, progress=False)
    ds = Dataset(out)
    assert ds.holdout_every == 3 and ds.split("test").tolist() == [2, 5, 8]
    a, b = (json.loads((p / "manifest.json").read_text()) for p in (ds_path, out))
    assert a["dataset_sha256"] == b["dataset_sha256"]  # the same arrays
    assert {k: v for k, v in a.items() if k != "holdout_every"} == {k: v for k, v in b.items() if k != "holdout_every"}
    with pytest.raises(FileExistsError, match="different dataset"):  # another split is another dataset
        render_dataset(RenderConfig("clutter", n=10, size=24, seed=3, shard_size=4), out, workers=1, progress=False)
    for bad in (1, 0, 2.5):
        with pytest.raises(ValueError, match="holdout_every must be an integer >= 2"):
            RenderConfig("clutter", holdout_every=bad).check()


def test_rays_are_the_scene_cameras_rays(ds_path):
    ds = Dataset(ds_path)
    o, d = ds.rays([6, 2])
    assert o.shape == d.shape == (2, 24, 24, 3) and o.dtype == d.dtype == np.float64
    for k, i in enumerate([6, 2]):
        oc, dc = ds.scene(i).camera.pixel_rays()
        assert o[k].tobytes() == oc.tobytes() and d[k].tobytes() == dc.tobytes()
    np.testing.assert_allclose(np.linalg.norm(d, axis=-1), 1.0)
    all_o, all_d = ds.rays(np.arange(len(ds)))
    assert all_d[[6, 2]].tobytes() == d.tobytes()  # a ray does not depend on which other images are asked for


def test_single_scene(ds_path, tiny_single):
    assert not Dataset(ds_path).single_scene() and "object_count" in Dataset(ds_path).varying_factors()
    assert Dataset(tiny_single).single_scene() and Dataset(tiny_single).varying_factors() == []


def test_open_maps_keep_a_few_files_mapped_and_check_each_on_opening(tmp_path):
    paths = []
    for k in range(6):
        paths.append(tmp_path / f"{k}.npy")
        np.save(paths[-1], np.full((3, 2), k, np.float32))
    opened = []
    maps = D.OpenMaps(keep=2)
    for k in (0, 1, 0, 2, 3):  # 0 is used again before 2 and 3 arrive, so 1 is the one closed first
        assert maps.get(k, paths[k], check=lambda a, k=k: opened.append(k))[0, 0] == k
    assert len(maps) == 2 and opened == [0, 1, 2, 3]
    maps.get(0, paths[0], check=lambda a: opened.append("again"))
    assert opened[-1] == "again"  # closed by then, so opened (and checked) anew
    with pytest.raises(ValueError, match="wrong"):
        maps.get(5, paths[5], check=lambda a: (_ for _ in ()).throw(ValueError("wrong")))
    assert len(maps) == 2  # a refused file is not kept
    arr = D.ChunkedArray(paths, [3] * 6, "float32", (2,))
    assert np.asarray(arr)[:, 0].tolist() == [k for k in range(6) for _ in range(3)]
    assert len(arr._maps) <= arr._maps.keep  # a whole pass over the shards leaves a few mapped, not six
