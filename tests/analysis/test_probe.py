"""The causal probe on a coordinate field: splices replay the hooked activations exactly, ablations move the output."""

from types import SimpleNamespace

import numpy as np
import torch

from frobnolab.analysis.probe import CausalProbe
from frobnolab.analysis.store import ActivationStore, ExtractConfig, extract
from frobnolab.models.field import CoordinateField, FieldConfig


class IdentitySAE(torch.nn.Module):
    """An SAE whose features are the layer's units: encode and decode are the identity."""

    def __init__(self, d: int):
        super().__init__()
        self.cfg = SimpleNamespace(d_sae=d)
        self.W_dec = torch.nn.Parameter(torch.eye(d))

    def encode(self, x):
        return x

    def decode(self, f):
        return f @ self.W_dec


def test_field_probe_replays_exactly_and_ablations_change_the_render(tiny_single, tmp_path):
    torch.manual_seed(0)
    field = CoordinateField(FieldConfig(hidden=16, layers=2))
    store = ActivationStore(extract(ExtractConfig(model="field", dataset=str(tiny_single), hooks=("trunk1",),
                                                  tokens_per_image=4, samples_per_ray=4),
                                    tmp_path / "st", model=field, progress=False))
    probe = CausalProbe(field, IdentitySAE(16), store, "trunk1", n_images=2, rays_per_image=32)
    base = probe.baseline()
    np.testing.assert_array_equal(base["sae"], base["clean"])  # the identity splice changes nothing
    assert np.all(base["zero"] != base["clean"])
    codes, _ = probe.codes()
    live = int(np.argmax(np.asarray(abs(codes).sum(0)).ravel()))
    dead = [j for j in range(16) if codes[:, j].nnz == 0]
    losses, changes = probe.ablate([live] + dead[:1])
    assert losses.shape[:2] == (1 + len(dead[:1]), 2) and changes.shape[2] == 32
    assert np.abs(changes[0]).max() > 0  # the busiest unit matters to the render
    if dead:
        np.testing.assert_array_equal(changes[1], 0)  # a unit that never fires changes nothing


def test_image_probe_resumes_at_the_hook_with_the_same_losses(tiny_dataset, tmp_path):
    """Splices, the zero layer and ablations run only the layers after the hook, bit-identical to full forwards."""
    from frobnolab.models.conv_ae import ConvAEConfig, ConvAutoencoder

    torch.manual_seed(0)
    ae = ConvAutoencoder(ConvAEConfig(channels=(8, 16), latent_channels=4)).eval()
    store = ActivationStore(extract(ExtractConfig(model="conv_ae", dataset=str(tiny_dataset), hooks=("enc0",)),
                                    tmp_path / "st", model=ae, progress=False))
    sae = IdentitySAE(8)
    resumed = CausalProbe(ae, sae, store, "enc0", n_images=2)
    full = CausalProbe(ae, sae, store, "enc0", n_images=2)
    full.model = torch.nn.Module()  # a model without forward_from: the probe falls back to the hooked forward
    full.model.forward, full.model.hook_root = ae.forward, ae
    assert "encoder.0" in resumed.model.resume_points and not hasattr(full.model, "resume_points")
    for k, v in resumed.baseline().items():
        np.testing.assert_array_equal(v, full.baseline()[k])
    a, b = resumed.ablate([0, 3]), full.ablate([0, 3])
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert np.abs(a[1]).max() > 0
