"""Extraction on Ray (a local Ray of 2 CPUs) stores the same tokens, byte for byte, as a local extraction."""

import json
from pathlib import Path

from frobnolab.analysis import store as S
from frobnolab.models.field import CoordinateField, FieldConfig
from frobnolab.models.io import save_model


def _chunks(store: Path) -> dict[str, bytes]:
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted((store / "chunks").rglob("*")) if p.is_file()}


def _same_store(a: Path, b: Path):
    ca, cb = _chunks(a), _chunks(b)
    assert list(ca) == list(cb) and len(ca) > 3
    assert [k for k in ca if ca[k] != cb[k]] == []
    ma, mb = (json.loads((p / "manifest.json").read_text()) for p in (a, b))
    assert ma["key"] == mb["key"] and ma["hooks"] == mb["hooks"]
    assert mb["executor"] == "ray (local)" and ma["executor"] == "this process"


def test_ray_extraction_of_an_image_model_matches_local(ray_local, tiny_dataset, tmp_path):
    cfg = S.ExtractConfig(model="random-taesd:3", dataset=str(tiny_dataset), hooks=("enc2", "dec10"),
                          batch_size=5, tokens_per_image=12, seed=2)
    _same_store(S.extract(cfg, tmp_path / "local", progress=False),
                S.extract(cfg, tmp_path / "ray", progress=False, ray=ray_local))


def test_ray_extraction_of_a_saved_field_matches_local(ray_local, tiny_single, tmp_path):
    field = CoordinateField(FieldConfig(hidden=16, layers=2))
    save_model(field, tmp_path / "field")
    cfg = S.ExtractConfig(model=str(tmp_path / "field"), dataset=str(tiny_single), tokens_per_image=6,
                          samples_per_ray=4, batch_size=3)
    local = S.extract(cfg, tmp_path / "local", progress=False)
    _same_store(local, S.extract(cfg, tmp_path / "ray", progress=False, ray=ray_local))
    # a model handed over in memory travels to the workers pickled
    _same_store(local, S.extract(cfg, tmp_path / "ray2", progress=False, ray=ray_local, model=field))


def test_ray_extraction_survives_a_worker_killed_mid_chunk(ray_local, tiny_single, tmp_path, caplog,
                                                           run_killing_a_shard_worker):
    import logging

    field = CoordinateField(FieldConfig(hidden=16, layers=2))
    save_model(field, tmp_path / "field")
    cfg = S.ExtractConfig(model=str(tmp_path / "field"), dataset=str(tiny_single), tokens_per_image=256,
                          samples_per_ray=16, batch_size=2)
    local = S.extract(cfg, tmp_path / "local", progress=False)
    caplog.set_level(logging.WARNING, logger="frobnolab.cluster")
    out, killed = run_killing_a_shard_worker(lambda: S.extract(cfg, tmp_path / "ray", progress=False, ray=ray_local))
    assert killed, "never saw a worker inside a chunk"
    assert any("worker died" in r.getMessage() for r in caplog.records)
    _same_store(local, out)
    assert not list((out / "chunks").glob(".*"))  # no half-written chunk left behind


def test_gpu_extraction_on_a_cluster_without_gpus_is_refused_before_writing(ray_local, tiny_dataset, tmp_path):
    import pytest
    import ray

    if ray.cluster_resources().get("GPU", 0):
        pytest.skip("this machine has a GPU, so its local Ray has one too")
    cfg = S.ExtractConfig(model="random-taesd", dataset=str(tiny_dataset), device="cuda")
    with pytest.raises(ValueError, match="has no GPU"):
        S.extract(cfg, tmp_path / "st", progress=False, ray=ray_local)
    assert not (tmp_path / "st").exists() and not (tmp_path / "st.partial").exists()


def test_a_custom_concept_travels_to_ray_workers_by_import_path(ray_local, tiny_dataset, tmp_path):
    import numpy as np

    cfg = S.ExtractConfig(model="random-taesd:3", dataset=str(tiny_dataset), hooks=("enc2",), batch_size=5,
                          tokens_per_image=12, concepts=("depth", "tests.analysis.custom_concepts:warmth"))
    local = S.extract(cfg, tmp_path / "local", progress=False)
    ray = S.extract(cfg, tmp_path / "ray", progress=False, ray=ray_local)
    _same_store(local, ray)
    tok = S.ActivationStore(ray)["enc2"]
    assert tok.columns == ["depth", "warmth"] and np.asarray(tok.gt).shape[1] == 2
    assert np.ptp(np.asarray(tok.gt)[:, 1]) > 0  # the warmth column holds values, not a placeholder


def test_a_concept_only_the_driver_knows_fails_once_with_the_real_message(ray_local, tiny_dataset, tmp_path):
    import time

    import pytest

    from frobnolab.analysis import concepts as C

    C.register(C.Concept("drivers_only", "continuous", pixel=lambda b: b["depth"]))
    try:
        cfg = S.ExtractConfig(model="random-taesd:3", dataset=str(tiny_dataset), hooks=("enc2",), batch_size=5,
                              tokens_per_image=12)
        t0 = time.time()
        with pytest.raises(ValueError, match="missing here: .*drivers_only.*import path"):
            S.extract(cfg, tmp_path / "ray", progress=False, ray=ray_local)
        assert time.time() - t0 < 60  # raised once, not retried as a dying worker
        assert not (tmp_path / "ray").exists()
    finally:
        C.REGISTRY.pop("drivers_only")
