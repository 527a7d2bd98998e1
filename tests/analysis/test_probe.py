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


def test_image_probe_token_ground_truth_is_the_stores_and_its_own_codes_splice_back(tiny_dataset, tmp_path):
    """What the understood share splices (analysis/scoring/understood.py): the probe's per-token ground truth is
    exactly what extraction stored for those images, in the order of the probe's tokens; splicing the SAE's own
    codes gives the SAE's loss, and other codes another one."""
    from frobnolab.models.conv_ae import ConvAEConfig, ConvAutoencoder

    torch.manual_seed(0)
    ae = ConvAutoencoder(ConvAEConfig(channels=(8, 16), latent_channels=4)).eval()
    store = ActivationStore(extract(ExtractConfig(model="conv_ae", dataset=str(tiny_dataset), hooks=("enc1",)),
                                    tmp_path / "st", model=ae, progress=False))
    probe = CausalProbe(ae, IdentitySAE(16), store, "enc1", n_images=2)
    g, im = probe.token_ground_truth(), probe.token_images()
    tok = store["enc1"]
    stored = {tuple(w): row for c in tok.chunks("test") for w, row in zip(c.where, c.gt)}
    side = int(np.sqrt(len(g) // 2))
    assert len(g) == 2 * side * side == len(im) and side > 1
    for n, (i, r, c) in enumerate((i, r, c) for i in probe.images for r in range(side) for c in range(side)):
        assert im[n] == i
        np.testing.assert_array_equal(g[n], stored[(i, r, c)])
    codes, _ = probe.codes()
    own = probe.splice_losses(codes.toarray())
    np.testing.assert_allclose(own, probe.baseline()["sae"], rtol=1e-6)
    zero = probe.splice_losses(np.zeros(codes.shape))  # this SAE decodes 0 to 0: the zero layer
    np.testing.assert_allclose(zero, probe.baseline()["zero"], rtol=1e-6)
    assert np.all(np.abs(zero - own) > 1e-6 * np.abs(own))
