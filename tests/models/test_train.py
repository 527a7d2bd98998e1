import json

import numpy as np
import pytest
import torch

from frobnolab.models import train as T
from frobnolab.models.conv_ae import ConvAEConfig, ConvAutoencoder
from frobnolab.models.field import CoordinateField, FieldConfig, render_rays
from frobnolab.models.io import load_model, model_hash, save_model
from frobnolab.scenes.dataset import Dataset


def ae_cfg(**kw):
    return T.TrainAEConfig(model=ConvAEConfig(channels=(8, 16), latent_channels=4), batch_size=8, lr=3e-3, **kw)


def test_autoencoder_loss_falls_and_save_load_is_lossless(tiny_dataset, tmp_path):
    rec = T.train_autoencoder(tiny_dataset, tmp_path / "ae", ae_cfg(steps=150), progress=False)
    curve = json.loads((tmp_path / "ae" / "training.json").read_text())["curve"]
    assert curve[-1][1] < 0.7 * curve[0][1]
    m = load_model(tmp_path / "ae")
    assert model_hash(m) == rec["model_sha256"]
    x = torch.rand(2, 3, 32, 32)
    save_model(m, tmp_path / "copy")
    assert torch.equal(load_model(tmp_path / "copy")(x), m(x))
    assert rec["evaluation"]["psnr"] > 10 and not (tmp_path / "ae" / "checkpoint.pt").exists()


def test_autoencoder_resumes_to_the_same_weights(tiny_dataset, tmp_path, monkeypatch):
    full = T.train_autoencoder(tiny_dataset, tmp_path / "full", ae_cfg(steps=20, checkpoint_every=10), progress=False)
    real_step, calls = torch.optim.Adam.step, []

    def flaky(self, *a, **k):
        calls.append(1)
        if len(calls) == 15:
            raise KeyboardInterrupt("simulated")
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.Adam, "step", flaky)
    with pytest.raises(KeyboardInterrupt):
        T.train_autoencoder(tiny_dataset, tmp_path / "resumed", ae_cfg(steps=20, checkpoint_every=10), progress=False)
    assert (tmp_path / "resumed" / "checkpoint.pt").exists()
    monkeypatch.setattr(torch.optim.Adam, "step", real_step)
    resumed = T.train_autoencoder(tiny_dataset, tmp_path / "resumed", ae_cfg(steps=20, checkpoint_every=10),
                                  progress=False)
    assert resumed["model_sha256"] == full["model_sha256"]


@pytest.mark.parametrize("mode", ["volume", "direct"])
def test_field_loss_falls_in_both_modes(tiny_single, tmp_path, mode):
    cfg = T.TrainFieldConfig(model=FieldConfig(hidden=32, layers=2, n_freqs=4), mode=mode, steps=40,
                             rays_per_batch=128, samples_per_ray=16, points_per_batch=512)
    rec = T.train_field(tiny_single, tmp_path / mode, cfg, progress=False)
    curve = json.loads((tmp_path / mode / "training.json").read_text())["curve"]
    assert np.mean([c[1] for c in curve[-2:]]) < 0.8 * curve[0][1]
    ev = rec["evaluation"]
    for k in ("psnr", "ssim", "depth_mae_fg", "mask_iou", "occupancy_iou", "sdf_sign_accuracy"):
        assert np.isfinite(ev[k]), k
    assert 0 <= ev["occupancy_iou"] <= 1 and 0 <= ev["sdf_sign_accuracy"] <= 1
    f = load_model(tmp_path / mode)
    assert model_hash(f) == rec["model_sha256"]


def test_field_direct_training_beats_chance_on_occupancy(tiny_single, tmp_path):
    cfg = T.TrainFieldConfig(model=FieldConfig(hidden=64, layers=3, n_freqs=6), mode="direct", steps=200,
                             points_per_batch=2048)
    ev = T.train_field(tiny_single, tmp_path / "f", cfg, progress=False)["evaluation"]
    assert ev["sdf_sign_accuracy"] > 0.8 and ev["occupancy_iou"] > 0.4, ev


def test_empty_field_renders_the_background():
    f = CoordinateField(FieldConfig(hidden=8, layers=1, background=(0.2, 0.4, 0.6)))
    with torch.no_grad():
        f.density.bias.fill_(-50.0)  # no density anywhere
        r = render_rays(f, torch.tensor([[0.0, 0.5, 5.0]]), torch.tensor([[0.0, 0.0, -1.0]]))
    assert torch.allclose(r.rgb, torch.tensor([[0.2, 0.4, 0.6]]), atol=1e-4) and r.acc.item() < 1e-4


def test_field_training_rejects_multi_scene_datasets(tiny_dataset, tmp_path):
    with pytest.raises(ValueError, match="not a single-scene dataset"):
        T.train_field(tiny_dataset, tmp_path / "x", T.TrainFieldConfig(steps=1), progress=False)


class _Slab(torch.nn.Module):
    """A field whose answer is known: opaque (sigma 1e4) red for z in [0, 0.5], empty elsewhere in its box."""

    def __init__(self):
        super().__init__()
        self.lo, self.hi = torch.tensor([-1.0, -1.0, -1.0]), torch.tensor([1.0, 1.0, 1.0])
        self.config = FieldConfig(background=(1.0, 1.0, 1.0))

    def forward(self, x, d):
        inside = (x[:, 2] >= 0) & (x[:, 2] <= 0.5)
        return inside.float() * 1e4, torch.tensor([1.0, 0.0, 0.0]).expand(len(x), 3)


def test_importance_samples_find_the_surface():
    from frobnolab.models.field import sample_pdf

    edges = torch.linspace(0, 1, 9).expand(2, 9)
    w = torch.zeros(2, 8)
    w[0, 5], w[1, 2] = 1.0, 1.0
    t = sample_pdf(edges, w, 16)
    assert ((t[0] >= 5 / 8) & (t[0] <= 6 / 8)).float().mean() > 0.99
    assert ((t[1] >= 2 / 8) & (t[1] <= 3 / 8)).float().mean() > 0.99
    # rays straight down onto the slab (surface at distance 2.5 from z = 3): 8 even samples miss the surface's place
    # by up to a cell (0.25); 8 more where the first 8 found weight land within a fraction of it
    o, d = torch.tensor([[0.1, 0.2, 3.0], [-0.3, 0.0, 3.0]]), torch.tensor([[0.0, 0.0, -1.0]] * 2)
    slab = _Slab()
    coarse = render_rays(slab, o, d, 8)
    fine = render_rays(slab, o, d, 8, n_importance=8)
    for r in (coarse, fine):
        assert torch.allclose(r.rgb, torch.tensor([1.0, 0.0, 0.0]).expand(2, 3), atol=1e-3)
    err_coarse, err_fine = (coarse.depth - 2.5).abs().max().item(), (fine.depth - 2.5).abs().max().item()
    assert err_fine < 0.03 < err_coarse, (err_fine, err_coarse)


def test_autoencoder_crops_and_channels_last(tiny_dataset, tmp_path):
    """Crops train the convolutional model on parts of each image; it is evaluated on whole images. Channels-last
    changes the memory layout only: the same seed gives the same loss curve to float precision."""
    a = T.train_autoencoder(tiny_dataset, tmp_path / "a", ae_cfg(steps=30, crop=16), progress=False)
    b = T.train_autoencoder(tiny_dataset, tmp_path / "b", ae_cfg(steps=30, crop=16, channels_last=True),
                            progress=False)
    assert a["evaluation"]["images"] == b["evaluation"]["images"] == len(Dataset(tiny_dataset).split("test"))
    ca = json.loads((tmp_path / "a" / "training.json").read_text())["curve"]
    cb = json.loads((tmp_path / "b" / "training.json").read_text())["curve"]
    assert np.allclose([c[1] for c in ca], [c[1] for c in cb], rtol=1e-3)
    whole = T.train_autoencoder(tiny_dataset, tmp_path / "w", ae_cfg(steps=30), progress=False)
    assert whole["model_sha256"] != a["model_sha256"]  # the crops did change what it saw
    with pytest.raises(ValueError, match="crop 10: must be a multiple of 4"):
        T.train_autoencoder(tiny_dataset, tmp_path / "bad", ae_cfg(steps=1, crop=10), progress=False)
    assert not (tmp_path / "bad" / "model.json").exists()


def test_kaiming_init_keeps_the_signal_through_the_stack():
    """Why it is the default: at PyTorch's default init the output barely depends on the input (training starts on
    the predict-the-mean plateau); He-normal init keeps the input's variation to the last layer."""
    from frobnolab.models.hooks import capture

    x = torch.rand(8, 3, 64, 64)
    spread = {}
    for init in ("kaiming", "torch"):
        torch.manual_seed(0)
        m = ConvAutoencoder(ConvAEConfig(init=init))
        with torch.no_grad(), capture(m, ["head"]) as acts:
            m(x)
        spread[init] = acts["head"].std(0).mean().item() / x.std(0).mean().item()  # across inputs, per pixel
    assert spread["kaiming"] > 0.1 and spread["torch"] < 1e-3, spread
    with pytest.raises(ValueError, match="init"):
        ConvAEConfig(init="xavier")
