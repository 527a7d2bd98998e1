import json

import numpy as np
import pytest
import torch
from torch import nn

from frobnolab.analysis import concepts as C
from frobnolab.analysis import store as S
from frobnolab.models.hooks import HookPoint
from frobnolab.scenes.dataset import Dataset


class Probe(nn.Module):
    """A "model" whose hooked activation is a known function of position: each stride-4 cell's mean RGB, and
    the cell's row and column index."""

    def __init__(self, poison: bool = False):
        super().__init__()
        self.pool = nn.Sequential(nn.AvgPool2d(4), DivideByZero()) if poison else nn.AvgPool2d(4)

    @property
    def hook_root(self):
        return self

    @property
    def hook_points(self):
        return [HookPoint("cells", "pool", "mean RGB per 4x4 cell")]

    def forward(self, x):
        return self.pool(x)


class DivideByZero(nn.Module):
    def forward(self, x):
        return x / 0.0


def test_tokens_map_to_their_pixel_footprints(tiny_dataset, tmp_path):
    cfg = S.ExtractConfig(model="probe", dataset=str(tiny_dataset), batch_size=5)
    store = S.ActivationStore(S.extract(cfg, tmp_path / "st", model=Probe(), progress=False))
    tok = store["cells"]
    ds = Dataset(tiny_dataset)
    assert len(tok) == 16 * 8 * 8 and tok.d_in == 3 and tok.stride == 4
    acts, where, gt = np.asarray(tok.acts), np.asarray(tok.where), np.asarray(tok.gt)
    rgb, pos, inst = np.asarray(ds["rgb"]), np.asarray(ds["position"]), np.asarray(ds["instance"])
    for k in np.random.default_rng(0).choice(len(tok), 50, replace=False):
        i, r, c = where[k]
        cell = (i, slice(4 * r, 4 * r + 4), slice(4 * c, 4 * c + 4))
        np.testing.assert_allclose(acts[k], rgb[cell].reshape(-1, 3).mean(0), atol=1e-6)
        np.testing.assert_allclose(gt[k, tok.column("position_y")], pos[cell][..., 1].mean(), atol=1e-5)
        fr = [(inst[cell] == j).mean() for j in range(3)]
        np.testing.assert_allclose(gt[k, [tok.column(f"instance={n}") for n in ("background", "1", "2")]], fr)
        assert gt[k, tok.column("instance.purity")] == pytest.approx(max(fr))
    m = json.loads((store.path / "manifest.json").read_text())
    assert m["key"]["dataset_sha256"] == ds.manifest["dataset_sha256"] and m["key"]["model_sha256"]


def test_non_finite_activations_are_refused_naming_hook_and_batch(tiny_dataset, tmp_path):
    cfg = S.ExtractConfig(model="probe", dataset=str(tiny_dataset), batch_size=8)
    with pytest.raises(ValueError, match=r"hook point cells: .* batch 0 \(images 0\.\.7\)"):
        S.extract(cfg, tmp_path / "st", model=Probe(poison=True), progress=False)
    assert not (tmp_path / "st").exists()


def test_extraction_resumes_and_subsamples_deterministically(tiny_dataset, tmp_path, monkeypatch):
    cfg = S.ExtractConfig(model="probe", dataset=str(tiny_dataset), batch_size=4, tokens_per_image=10, split="train")
    ref = S.ActivationStore(S.extract(cfg, tmp_path / "a", model=Probe(), progress=False))
    from frobnolab.analysis.domain import ImageDomain

    real, calls = ImageDomain.extract, []

    def flaky(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(ImageDomain, "extract", flaky)
    with pytest.raises(KeyboardInterrupt):
        S.extract(cfg, tmp_path / "b", model=Probe(), progress=False)
    assert not (tmp_path / "b").exists() and len(list((tmp_path / "b.partial" / "chunks").iterdir())) == 2
    calls.clear()
    monkeypatch.setattr(ImageDomain, "extract", lambda *a, **k: calls.append(1) or real(*a, **k))
    res = S.ActivationStore(S.extract(cfg, tmp_path / "b", model=Probe(), progress=False))
    assert len(calls) == 2  # 14 training images in chunks of 4: two were left
    assert res.manifest["hooks"]["cells"]["sha256"] == ref.manifest["hooks"]["cells"]["sha256"]
    assert len(res["cells"]) == 14 * 10
    assert set(np.asarray(res["cells"].where)[:, 0]) == set(Dataset(res.manifest["dataset"]).split("train").tolist())
    calls.clear()
    S.extract(cfg, tmp_path / "b", model=Probe(), progress=False)  # up to date: nothing recomputed
    assert calls == []


def test_field_tokens_carry_exact_point_queries(tiny_single, tmp_path):
    from frobnolab.models.field import CoordinateField, FieldConfig
    from frobnolab.scenes.queries import SceneQuery

    f = CoordinateField(FieldConfig(hidden=16, layers=2))
    cfg = S.ExtractConfig(model="field", dataset=str(tiny_single), hooks=("trunk1",), tokens_per_image=8,
                          samples_per_ray=5, split="test")
    store = S.ActivationStore(S.extract(cfg, tmp_path / "f", model=f, progress=False))
    tok = store["trunk1"]
    assert len(tok) == 2 * 8 * 5 and tok.d_in == 16
    pts = np.asarray(tok.points)
    q = SceneQuery(Dataset(tiny_single).scene(0))
    np.testing.assert_allclose(np.asarray(tok.gt)[:, tok.column("sdf")], q.sdf(pts[:, :3]), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(pts[:, 3:], axis=1), 1, atol=1e-5)
    from frobnolab.models.field import fourier

    with torch.no_grad():  # trunk1 recomputed by hand at the stored points
        x = (torch.as_tensor(pts[:, :3]) - f.lo) / (f.hi - f.lo) * 2 - 1
        h = f.trunk[1](f.trunk[0](fourier(x, f.config.n_freqs)))
    np.testing.assert_allclose(np.asarray(tok.acts), h.numpy(), atol=1e-5)


def test_registered_concepts_become_columns():
    name = "test_warmth"
    C.register(C.Concept(name, "continuous", pixel=lambda b: b["albedo"][..., 0] - b["albedo"][..., 2]), replace=True)
    try:
        assert name in [c.name for c in C.get(domain="pixel")]
        with pytest.raises(ValueError, match="already registered"):
            C.register(C.Concept(name, "continuous", pixel=lambda b: b["depth"]))
        with pytest.raises(ValueError, match="kind must be"):
            C.Concept("x", "fuzzy", pixel=lambda b: b["depth"])
    finally:
        C.REGISTRY.pop(name)


def test_categorical_pooling_fractions_and_purity():
    codes = np.array([[[0, 0, 1, 1], [0, 2, 1, 1]]])  # (1, 2, 4): two 2x2 cells
    con = C.Concept("t", "categorical", pixel=lambda b: b, classes=("a", "b", "c"))
    out = C.pool(codes, con, 2)
    np.testing.assert_allclose(out, [[0.75, 0, 0.25, 0.75], [0, 1, 0, 1]])


def test_a_pass_over_a_store_keeps_a_few_chunks_mapped_and_still_checks_their_shapes(tiny_dataset, tmp_path):
    cfg = S.ExtractConfig(model="random-taesd:3", dataset=str(tiny_dataset), hooks=("enc2",), batch_size=1)
    tok = S.ActivationStore(S.extract(cfg, tmp_path / "st", progress=False))["enc2"]
    assert tok.n_chunks > 8
    n = sum(len(c.acts) for c in tok.chunks("all", size=64))
    assert n == len(tok) and len(tok._maps) <= 8  # the maps of every chunk read would grow with the store
    first = tok._paths["acts"][0]
    np.save(first, np.zeros((1, tok.d_in), np.float32))
    tok._maps = type(tok._maps)(keep=8)  # closed, so the next read opens the changed file
    with pytest.raises(ValueError, match="manifest says"):
        tok.activations("all")
