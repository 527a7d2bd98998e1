"""The hash-grid encoding of the coordinate field and the dense voxel-grid baseline."""

import json

import numpy as np
import pytest
import torch

from frobnolab.models import train as T
from frobnolab.models.field import CoordinateField, FieldConfig, render_rays
from frobnolab.models.hashgrid import HashGrid, HashGridConfig
from frobnolab.models.hooks import capture
from frobnolab.models.io import load_model, model_hash
from frobnolab.models.voxel_grid import VoxelGrid, VoxelGridConfig

TINY_GRID = HashGridConfig(levels=4, features=2, log2_table=12, min_res=4, max_res=32)


def test_hash_grid_levels_interpolate_trilinearly():
    """A dense level holding a linear function of its corner indices returns that function exactly (trilinear
    interpolation is exact on linear functions); hashed levels are continuous across their cells."""
    g = HashGrid(HashGridConfig(levels=3, features=1, log2_table=10, min_res=4, max_res=16))
    assert len(g.dense) == 2 and g.res.tolist() == [16.0]  # 5^3, 9^3 <= 1024 corners: direct; 17^3: hashed
    with torch.no_grad():
        for d in g.dense:
            i = torch.arange(d.shape[-1], dtype=torch.float32)
            d[0, 0] = i[None, None, :] + 10 * i[None, :, None] + 100 * i[:, None, None]  # (z, y, x) layout
    x = torch.rand(64, 3, generator=torch.Generator().manual_seed(0))
    y = g(x)
    assert y.shape == (64, 3)
    lin = x @ torch.tensor([1.0, 10.0, 100.0])
    torch.testing.assert_close(y[:, 0], 4 * lin, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(y[:, 1], 8 * lin, rtol=1e-5, atol=1e-4)
    torch.nn.init.normal_(g.table)
    a = torch.full((1, 3), 5 / 16)  # on a corner of the finest level: both neighbouring cells agree there
    assert torch.allclose(g(a - 1e-6)[:, 2], g(a + 1e-6)[:, 2], atol=1e-4)
    y.sum().backward()
    assert all(d.grad is not None and d.grad.abs().sum() > 0 for d in g.dense)
    with pytest.raises(ValueError, match="levels"):
        HashGridConfig(levels=0)
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        g(torch.rand(4, 2))


def test_hashed_level_matches_instant_ngp_hash_by_hand():
    """A hashed level's value at a point is the trilinear mix of its cell's 8 corners, each read from table row
    (x * 1 ^ y * 2654435761 ^ z * 805459861) mod T, computed here with Python integers."""
    g = HashGrid(HashGridConfig(levels=1, features=2, log2_table=6, min_res=8, max_res=8))
    assert len(g.dense) == 0 and g.res.tolist() == [8.0]
    torch.nn.init.normal_(g.table, generator=torch.Generator().manual_seed(1))
    x = torch.rand(32, 3, generator=torch.Generator().manual_seed(0))
    y = g(x)
    table = g.table.detach().double()
    for p, got in zip(x.double(), y):
        c = [min(int(v * 8), 7) for v in p]
        f = [float(v * 8 - ci) for v, ci in zip(p, c)]
        want = torch.zeros(2, dtype=torch.float64)
        for dz in (0, 1):
            for dy in (0, 1):
                for dx in (0, 1):
                    row = ((c[0] + dx) ^ ((c[1] + dy) * 2654435761) ^ ((c[2] + dz) * 805459861)) % 64
                    w = (f[0] if dx else 1 - f[0]) * (f[1] if dy else 1 - f[1]) * (f[2] if dz else 1 - f[2])
                    want += w * table[row]
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("features", [2, 3])
def test_hash_grid_gather_is_index_select_bit_for_bit(features):
    """The table gather (8-byte words where a row is two floats) gives index_select's values and gradient exactly:
    the same additions in the same order, repeated rows included."""
    from frobnolab.models.hashgrid import _GatherRows

    gen = torch.Generator().manual_seed(0)
    table = torch.randn(500, features, generator=gen, requires_grad=True)
    idx = torch.randint(0, 500, (5000,), generator=gen)  # many repeats
    grad = torch.randn(5000, features, generator=gen)
    ours = _GatherRows.apply(table, idx)
    (g_ours,) = torch.autograd.grad(ours, table, grad)
    ref = table.index_select(0, idx)
    (g_ref,) = torch.autograd.grad(ref, table, grad)
    assert torch.equal(ours, ref) and torch.equal(g_ours, g_ref)


def test_hash_field_hook_points_and_save_load(tmp_path):
    from frobnolab.models.io import save_model

    torch.manual_seed(0)
    f = CoordinateField(FieldConfig(encoding="hash", hidden=16, layers=3, n_freqs=0, grid=TINY_GRID))
    pts, dirs = torch.rand(10, 3), torch.nn.functional.normalize(torch.randn(10, 3), dim=-1)
    assert [h.name for h in f.hook_points] == ["encoding", "trunk0", "trunk1", "trunk2", "color_hidden"]
    with capture(f, [h.path for h in f.hook_points]) as acts:
        sigma, rgb = f(pts, dirs)
    assert [tuple(acts[h.path].shape) for h in f.hook_points] == [(10, 8)] + [(10, 16)] * 3 + [(10, 8)]
    # an edit at the encoding changes the output: the hook sits on the path to it
    with capture(f, [], edit={"encoder": lambda t: t + 1.0}):
        sigma2, _ = f(pts, dirs)
    assert not torch.allclose(sigma, sigma2)
    save_model(f, tmp_path / "m")
    g = load_model(tmp_path / "m")
    assert g.config == f.config and model_hash(g) == model_hash(f)
    assert torch.equal(g(pts, dirs)[1], rgb)
    with pytest.raises(ValueError, match="encoding"):
        FieldConfig(encoding="triplane")


def test_fourier_field_is_unchanged_by_the_new_options():
    """The default FieldConfig still builds the Fourier field, with the same parameters from the same seed as
    before the hash encoding existed (no encoder, and the same initialisation order)."""
    torch.manual_seed(0)
    f = CoordinateField(FieldConfig(hidden=16, layers=2))
    assert not hasattr(f, "encoder") and [h.name for h in f.hook_points] == ["trunk0", "trunk1", "color_hidden"]
    torch.manual_seed(0)
    w = torch.nn.Linear(3 * (1 + 2 * 8), 16).weight  # the first module built, from the same seed
    assert torch.equal(f.trunk[0][0].weight, w)
    opt = T._field_optimizer(f, T.TrainFieldConfig(model=f.config, grid_lr=0.1))
    assert len(opt.param_groups) == 1 and opt.defaults["eps"] == 1e-8  # the grid options do not apply


def test_voxel_grid_renders_what_its_voxels_hold():
    """A slab of opaque red voxels renders red where rays hit it and the background elsewhere; the occupancy
    threshold is the field's."""
    v = VoxelGrid(VoxelGridConfig(res=8, sh_degree=1, aabb=((-1, -1, -1), (1, 1, 1)), background=(0, 0, 1)))
    with torch.no_grad():
        v.grid[0, 0] = -50.0 / v.config.density_scale
        v.grid[0, 0, :, :, 4:] = 50.0 / v.config.density_scale  # x >= 1/7 (index 4 of 0..7 spans [-1, 1]): dense
        v.grid[0, 1:].zero_()
        v.grid[0, 1], v.grid[0, 5], v.grid[0, 9] = 50.0, -50.0, -50.0  # degree-0 coefficients of red, green, blue
    o = torch.tensor([[0.6, 0.0, 5.0], [-0.6, 0.0, 5.0]])
    r = render_rays(v, o, torch.tensor([[0.0, 0.0, -1.0]] * 2), 32, n_importance=16)
    torch.testing.assert_close(r.rgb, torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]), atol=1e-3, rtol=0)
    occ = v.occupancy(torch.tensor([[0.8, 0.0, 0.0], [-0.8, 0.0, 0.0], [0.8, 0.0, 3.0]]))
    assert occ[0] > 0.5 > occ[1] and occ[2] == 0  # the last point is outside the box
    with capture(v, ["interp"]) as acts:
        v(torch.zeros(5, 3), torch.nn.functional.normalize(torch.ones(5, 3), dim=-1))
    assert acts["interp"].shape == (5, VoxelGridConfig(sh_degree=1).channels) == (5, 13)
    with pytest.raises(ValueError, match="sh_degree"):
        VoxelGridConfig(sh_degree=3)


@pytest.mark.parametrize("model", [FieldConfig(encoding="hash", hidden=16, layers=2, n_freqs=0, grid=TINY_GRID),
                                   VoxelGridConfig(res=24)], ids=["hash", "voxel"])
def test_grid_models_train_save_and_load(tiny_single, tmp_path, model):
    cfg = T.TrainFieldConfig(model=model, steps=40, rays_per_batch=128, samples_per_ray=12, importance_samples=8,
                             points_per_batch=512, grid_lr=2e-2)
    rec = T.train_field(tiny_single, tmp_path / "m", cfg, progress=False)
    curve = json.loads((tmp_path / "m" / "training.json").read_text())["curve"]
    assert np.mean([c[1] for c in curve[-2:]]) < 0.8 * curve[0][1]
    ev = rec["evaluation"]
    assert ev["psnr"] > 10 and ev["mask_iou"] > 0.3, ev
    m = load_model(tmp_path / "m")
    assert type(m).__name__ == ("VoxelGrid" if isinstance(model, VoxelGridConfig) else "CoordinateField")
    assert model_hash(m) == rec["model_sha256"]
    again = T.train_field(tiny_single, tmp_path / "again", cfg, progress=False)
    assert again["model_sha256"] == rec["model_sha256"]  # seeded: the same run twice gives the same weights


def test_training_configs_default_and_hash_field():
    assert T.TrainFieldConfig().model.encoding == "fourier"  # the default stays until the hash field is shown better
    cfg = T.TrainFieldConfig(model=T.hash_field())
    assert cfg.model.encoding == "hash" and cfg.grid_lr > cfg.lr
    with pytest.raises(ValueError, match="grid_lr"):
        T.TrainFieldConfig(grid_lr=-1.0)
