"""Every stage that takes a torch device, run on CUDA and held against the same stage on the CPU.

These need a CUDA GPU and are skipped without one (CI has none); they run on a lent GPU machine with
``PYOPENGL_PLATFORM=egl .venv/bin/python -m pytest tests/test_cuda.py``. The last test runs everywhere: asking for
CUDA where there is none is refused before anything is written.
"""

import json

import numpy as np
import pytest
import torch

from frobnolab.analysis.pipeline import QUICKSTART_PRESETS, run_quickstart
from frobnolab.analysis.run import score_sae
from frobnolab.analysis.sae import SAETrainConfig, load_sae, train_sae
from frobnolab.analysis.score import ScoreConfig, read_table
from frobnolab.analysis.store import ActivationStore, ExtractConfig, extract
from frobnolab.models.conv_ae import ConvAEConfig
from frobnolab.models.field import FieldConfig
from frobnolab.models.train import TrainAEConfig, TrainFieldConfig, train_autoencoder, train_field

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on CI)")


@pytest.fixture(scope="module")
def stores(tiny_dataset, tmp_path_factory):
    """The same extraction of a random TAESD, on the CPU and on CUDA (full float32 there: cuDNN's convolutions
    default to TF32, whose 10-bit mantissa alone would differ by more than the comparison allows)."""
    root = tmp_path_factory.mktemp("cuda_stores")
    cfg = dict(model="random-taesd:3", dataset=str(tiny_dataset), hooks=("enc2",), batch_size=4)
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        return {dev: extract(ExtractConfig(**cfg, device=dev), root / dev, progress=False)
                for dev in ("cpu", "cuda")}
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32


@cuda
def test_extraction_on_cuda_matches_the_cpu(stores):
    cpu, gpu = (ActivationStore(stores[d])["enc2"] for d in ("cpu", "cuda"))
    assert len(cpu) == len(gpu) and cpu.columns == gpu.columns
    np.testing.assert_array_equal(np.asarray(cpu.gt), np.asarray(gpu.gt))  # ground truth does not depend on it
    a, b = cpu.activations("train"), gpu.activations("train")
    assert np.abs(a - b).max() <= 1e-3 * max(1.0, np.abs(a).max())


@cuda
def test_sae_trains_on_cuda_and_reloads_on_the_cpu(stores, tmp_path):
    cfg = SAETrainConfig(hook="enc2", width=64, k=4, training_tokens=65536, batch_size=256, lr=3e-3, checkpoints=0,
                         device="cuda")
    rec = train_sae(stores["cuda"], tmp_path / "sae", cfg, progress=False)
    mses = [c[1] for c in rec["curve"]]
    assert np.mean(mses[-3:]) < 0.7 * np.mean(mses[:3])
    assert rec["evaluation"]["explained_variance"] > 0.5
    x = torch.from_numpy(ActivationStore(stores["cuda"])["enc2"].activations("test")[:512])
    on_gpu = load_sae(tmp_path / "sae", device="cuda").encode(x.cuda()).cpu()
    on_cpu = load_sae(tmp_path / "sae", device="cpu").encode(x)
    assert torch.allclose(on_gpu, on_cpu, atol=1e-4, rtol=1e-3)


@cuda
def test_scores_on_cuda_match_the_cpu(stores, tmp_path):
    cfg = SAETrainConfig(hook="enc2", width=32, k=4, training_tokens=32768, batch_size=256, lr=3e-3, checkpoints=0)
    train_sae(stores["cpu"], tmp_path / "sae", cfg, progress=False, evaluate=False)
    tables = {}
    for dev in ("cpu", "cuda"):
        score_sae(stores["cpu"], tmp_path / "sae", tmp_path / dev,
                  ScoreConfig(n_null=8, bootstrap=0, causal_top=4, scene_steps=50, device=dev), progress=False,
                  log=lambda *_: None)
        tables[dev] = read_table(tmp_path / dev / "features.parquet")
    for k in ("freq", "named_best", "auroc"):
        a, b = (np.asarray(tables[d][k], float) for d in ("cpu", "cuda"))
        np.testing.assert_allclose(a, b, atol=0.02, equal_nan=True, err_msg=k)


@cuda
def test_autoencoder_and_field_train_on_cuda(tiny_dataset, tiny_single, tmp_path):
    ae = train_autoencoder(tiny_dataset, tmp_path / "ae",
                           TrainAEConfig(model=ConvAEConfig(channels=(8, 16), latent_channels=4), steps=150,
                                         batch_size=8, lr=3e-3, device="cuda"), progress=False)
    curve = json.loads((tmp_path / "ae" / "training.json").read_text())["curve"]
    assert curve[-1][1] < 0.7 * curve[0][1] and ae["evaluation"]["psnr"] > 10
    field = train_field(tiny_single, tmp_path / "field",
                        TrainFieldConfig(model=FieldConfig(hidden=32, layers=2, n_freqs=4), steps=40,
                                         rays_per_batch=128, samples_per_ray=16, points_per_batch=512,
                                         device="cuda"), progress=False)
    curve = json.loads((tmp_path / "field" / "training.json").read_text())["curve"]
    assert np.mean([c[1] for c in curve[-2:]]) < 0.8 * curve[0][1] and np.isfinite(field["evaluation"]["psnr"])


@cuda
def test_the_tiny_main_job_runs_on_cuda(tmp_path, taesd_dir):
    run_quickstart(QUICKSTART_PRESETS["tiny"], tmp_path / "run", taesd=taesd_dir, workers=1, progress=False,
                   log=lambda *_: None, device="cuda")
    stages = json.loads((tmp_path / "run" / "stages.json").read_text())
    assert stages["device"] == "cuda" and stages["config"]["ae"]["device"] == "cuda"
    for name in ("sae", "taesd-sae"):
        ev = json.loads((tmp_path / "run" / name / "training.json").read_text())["evaluation"]
        assert ev["explained_variance"] > 0.5, name
    assert (tmp_path / "run" / "taesd-gallery" / "index.html").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match="CUDA is not available"):
        run_quickstart(QUICKSTART_PRESETS["tiny"], tmp_path / "run", progress=False, log=lambda *_: None,
                       device="cuda")
    assert not (tmp_path / "run").exists()
