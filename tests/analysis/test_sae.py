import json

import numpy as np
import pytest
import torch

from frobnolab.analysis import sae as A
from frobnolab.analysis.sae_eval import model_losses, reconstruction_metrics, splice
from frobnolab.analysis.store import ActivationStore, ExtractConfig, extract
from frobnolab.models.conv_ae import ConvAEConfig, ConvAutoencoder


@pytest.fixture(scope="module")
def ae(tiny_dataset, tmp_path_factory):
    """A briefly trained tiny autoencoder: its clean output must beat a zeroed layer (a random one's need not)."""
    from frobnolab.models.io import load_model
    from frobnolab.models.train import TrainAEConfig, train_autoencoder

    out = tmp_path_factory.mktemp("ae") / "ae"
    train_autoencoder(tiny_dataset, out, TrainAEConfig(model=ConvAEConfig(channels=(8, 16), latent_channels=4),
                                                       steps=60, batch_size=8, lr=3e-3), progress=False)
    return load_model(out).eval()


@pytest.fixture(scope="module")
def store(ae, tiny_dataset, tmp_path_factory):
    cfg = ExtractConfig(model="tiny-ae", dataset=str(tiny_dataset), hooks=("enc0",), batch_size=4)
    return extract(cfg, tmp_path_factory.mktemp("st") / "store", model=ae, progress=False)


def cfg(**kw):
    base = dict(hook="enc0", width=32, k=4, training_tokens=65536, batch_size=256, lr=3e-3, checkpoints=2)
    base.update(kw)
    return A.SAETrainConfig(**base)


def test_loss_falls_and_sae_lens_reloads_identically(store, ae, tmp_path):
    rec, trained = A.train_sae(store, tmp_path / "s", cfg(), model=ae, progress=False, return_sae=True)
    mses = [c[1] for c in rec["curve"]]
    assert np.mean(mses[-3:]) < 0.7 * np.mean(mses[:3])
    from sae_lens import SAE

    loaded = SAE.load_from_disk(str(tmp_path / "s" / "sae"))
    x = torch.from_numpy(np.asarray(ActivationStore(store)["enc0"].acts[:500]))
    with torch.no_grad():
        trained.eval()
        assert torch.allclose(loaded.decode(loaded.encode(x)), trained.decode(trained.encode(x)), atol=1e-5)
    ev = rec["evaluation"]
    assert 0 < ev["explained_variance"] <= 1 and ev["l0"] == pytest.approx(4.0, abs=1e-6)
    assert ev["loss"]["clean"] <= ev["loss"]["zero"] and np.isfinite(ev["fidelity_zero"])
    assert rec["normalization"]["mode"] == "expected_average_only_in" and rec["normalization"]["scaling_factor"] > 0
    saved = json.loads((tmp_path / "s" / "training.json").read_text())
    assert saved["key"]["store_hook_sha256"] == ActivationStore(store).manifest["hooks"]["enc0"]["sha256"]
    assert not (tmp_path / "s" / "checkpoints").exists()


@pytest.mark.parametrize("arch", A.ARCHITECTURES)
def test_every_architecture_trains_and_saves_in_sae_lens_format(store, ae, tmp_path, arch):
    rec = A.train_sae(store, tmp_path / arch, cfg(architecture=arch, training_tokens=2048, checkpoints=0,
                                                    sparsity=1e-3), model=ae, progress=False)
    sae = A.load_sae(tmp_path / arch)
    assert sae.cfg.d_in == 8 and sae.cfg.d_sae == 32
    assert np.isfinite(rec["evaluation"]["mse"])


def test_interrupted_training_resumes_to_the_same_weights(store, ae, tmp_path, monkeypatch):
    from sae_lens.training.sae_trainer import SAETrainer

    A.train_sae(store, tmp_path / "full", cfg(training_tokens=4096, checkpoints=1), model=ae, progress=False,
                evaluate=False)
    real, calls = SAETrainer.step, []

    def flaky(self, batch):
        calls.append(1)
        if len(calls) == 12:
            raise KeyboardInterrupt
        return real(self, batch)

    monkeypatch.setattr(SAETrainer, "step", flaky)
    with pytest.raises(KeyboardInterrupt):
        A.train_sae(store, tmp_path / "res", cfg(training_tokens=4096, checkpoints=1), model=ae, progress=False,
                    evaluate=False)
    assert list((tmp_path / "res" / "checkpoints").iterdir())
    monkeypatch.setattr(SAETrainer, "step", real)
    A.train_sae(store, tmp_path / "res", cfg(training_tokens=4096, checkpoints=1), model=ae, progress=False,
                evaluate=False)
    a, b = A.load_sae(tmp_path / "full"), A.load_sae(tmp_path / "res")
    for (k, va), (_, vb) in zip(sorted(a.state_dict().items()), sorted(b.state_dict().items())):
        assert torch.allclose(va, vb, atol=1e-5), k


class Identity(torch.nn.Module):
    """An exact identity with the SAE interface."""

    def encode(self, x):
        return x

    def decode(self, f):
        return f


def test_splicing_an_identity_reproduces_the_clean_output(store, ae):
    st = ActivationStore(store)
    losses = model_losses(ae, st, "enc0", {"clean": None, "identity": splice(Identity()), "zero": torch.zeros_like})
    assert losses["identity"] == losses["clean"]
    assert losses["zero"] != losses["clean"]


def test_metrics_agree_with_numpy():
    from sae_lens.saes.standard_sae import StandardSAE, StandardSAEConfig

    torch.manual_seed(0)
    sae = StandardSAE(StandardSAEConfig(d_in=5, d_sae=7))
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    x = torch.randn(300, 5) + 1.0
    m = reconstruction_metrics(sae, x, batch=64)
    with torch.no_grad():
        f = sae.encode(x).numpy()
        xh = sae.decode(sae.encode(x)).numpy()
    xn = x.numpy()
    ev = 1 - ((xn - xh) ** 2).sum(1).mean() / ((xn**2).sum(1).mean() - (xn.mean(0) ** 2).sum())
    assert m["explained_variance"] == pytest.approx(ev, rel=1e-5)
    assert m["mse"] == pytest.approx(((xn - xh) ** 2).mean(), rel=1e-5)
    cos = (xn * xh).sum(1) / (np.linalg.norm(xn, axis=1) * np.linalg.norm(xh, axis=1))
    assert m["cosine"] == pytest.approx(cos.mean(), rel=1e-5)
    assert m["shrinkage"] == pytest.approx((np.linalg.norm(xh, axis=1) / np.linalg.norm(xn, axis=1)).mean(), rel=1e-5)
    assert m["l0"] == pytest.approx((f > 0).sum(1).mean())
    freq = (f > 0).mean(0)
    assert m["dead_fraction"] == pytest.approx((freq == 0).mean())
    assert m["dense_fraction"] == pytest.approx((freq > 0.25).mean())


def test_batches_are_shuffled_deterministic_and_skip_held_out_images(store):
    tok = ActivationStore(store)["enc0"]
    a = [next(iter_) for iter_ in [A.StoreBatches(tok, 100, seed=1)] * 5]
    b = [next(iter_) for iter_ in [A.StoreBatches(tok, 100, seed=1)] * 5]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    train_rows = {tuple(r) for r in np.asarray(tok.acts)[~tok.held_out(np.asarray(tok.where)[:, 0])].round(6)}
    assert all(tuple(r) in train_rows for r in a[0].numpy().round(6))


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="architecture"):
        A.SAETrainConfig(hook="h", architecture="magic")
    with pytest.raises(ValueError, match="cannot exceed"):
        A.SAETrainConfig(hook="h", width=8, k=16)


def test_sweep_writes_frontier_and_cli_trains(store, ae, tmp_path, capsys):
    from frobnolab.analysis.sweep import run_sweep, sweep_configs

    base = cfg(training_tokens=2048, checkpoints=0)
    runs = sweep_configs(base, ["topk", "standard"], [16, 32], [2, 64], [0.5])
    assert [n for n, _ in runs] == ["topk-w16-k2", "topk-w32-k2", "standard-w16-s0.5", "standard-w32-s0.5"]
    rows = run_sweep(store, tmp_path / "sw", runs[:1] + runs[2:3], model=ae, progress=False)
    assert len(rows) == 2 and (tmp_path / "sw" / "frontier.png").stat().st_size > 10_000
    assert json.loads((tmp_path / "sw" / "frontier.json").read_text())[0]["l0"] == pytest.approx(2.0)


def test_cli_train_sae_with_a_saved_model(tiny_dataset, tmp_path, capsys):
    from frobnolab.cli import main
    from frobnolab.models.io import save_model

    torch.manual_seed(0)
    save_model(ConvAutoencoder(ConvAEConfig(channels=(8, 16), latent_channels=4)), tmp_path / "ae")
    assert main(["extract", "--model", str(tmp_path / "ae"), "--dataset", str(tiny_dataset), "--hooks", "latent",
                 "--out", str(tmp_path / "st"), "--quiet"]) == 0
    assert main(["train-sae", str(tmp_path / "st"), "--preset", "tiny", "--hook", "latent", "--out",
                 str(tmp_path / "sae"), "--quiet"]) == 0
    assert "explained variance" in capsys.readouterr().out
    assert main(["train-sae", str(tmp_path / "st"), "--preset", "tiny", "--out", str(tmp_path / "x")]) == 2
    assert "--hook" in capsys.readouterr().err
