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
