import pytest
import torch

from frobnolab.errors import UnknownNameError
from frobnolab.models.conv_ae import ConvAEConfig, ConvAutoencoder
from frobnolab.models.field import CoordinateField, FieldConfig
from frobnolab.models.hooks import capture, hook_count
from frobnolab.models.pretrained import SDVAE, random_taesd


def tiny_kl():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return SDVAE(AutoencoderKL(block_out_channels=[8, 16], down_block_types=["DownEncoderBlock2D"] * 2,
                               up_block_types=["UpDecoderBlock2D"] * 2, latent_channels=4, layers_per_block=1,
                               norm_num_groups=4, sample_size=32))


def test_conv_ae_hook_shapes_match_the_table():
    m = ConvAutoencoder(ConvAEConfig(channels=(8, 16), latent_channels=4))
    x = torch.rand(2, 3, 32, 32)
    with capture(m.hook_root, [h.path for h in m.hook_points]) as acts:
        m(x)
    shapes = {h.name: tuple(acts[h.path].shape) for h in m.hook_points}
    assert shapes == {"enc0": (2, 8, 16, 16), "enc1": (2, 16, 8, 8), "latent": (2, 4, 8, 8),
                      "dec0": (2, 16, 16, 16), "dec1": (2, 8, 32, 32)}


@pytest.mark.parametrize("make", [lambda: random_taesd(0), tiny_kl], ids=["taesd", "sd-vae"])
def test_pretrained_hook_points_all_capture_feature_maps(make):
    m = make()
    x = torch.rand(1, 3, 32, 32)
    paths = [h.path for h in m.hook_points]
    with torch.no_grad(), capture(m.hook_root, paths) as acts:
        m(x)
    assert set(acts) == set(paths)
    for p in paths:
        assert acts[p].ndim == 4 and acts[p].shape[-1] in (32, 16, 8, 4), (p, acts[p].shape)


def test_taesd_strides_follow_the_documented_table():
    m = random_taesd(0)
    with torch.no_grad(), capture(m.hook_root, [h.path for h in m.hook_points]) as acts:
        m(torch.rand(1, 3, 64, 64))
    enc = [64 // acts[f"encoder.layers.{k}"].shape[-1] for k in range(15)]
    dec = [64 // acts[f"decoder.layers.{k}"].shape[-1] for k in range(19)]
    assert enc == [1, 1, 2, 2, 2, 2, 4, 4, 4, 4, 8, 8, 8, 8, 8]
    assert dec == [8] * 5 + [4] * 5 + [2] * 5 + [1] * 4


def test_hooks_are_removed_even_when_the_forward_raises():
    m = ConvAutoencoder(ConvAEConfig(channels=(8, 16)))
    with pytest.raises(ValueError, match="divisible"):
        with capture(m, ["encoder.0", "bottleneck"]):
            assert hook_count(m) == 2
            m(torch.rand(1, 3, 30, 30))
    assert hook_count(m) == 0
    with pytest.raises(RuntimeError):
        with capture(m, ["encoder.0"]):
            raise RuntimeError("boom")
    assert hook_count(m) == 0
    with pytest.raises(UnknownNameError, match=r"unknown module path 'nope.3' in ConvAutoencoder \(known: .*encoder"):
        with capture(m, ["encoder.0", "nope.3"]):
            pass
    assert hook_count(m) == 0


def test_edit_hooks_splice_and_ablate():
    torch.manual_seed(0)
    m = ConvAutoencoder(ConvAEConfig(channels=(8, 16)))
    x = torch.rand(2, 3, 32, 32)
    clean = m(x)
    with capture(m, ["bottleneck"], edit={"bottleneck": lambda t: t.clone()}) as acts:
        same = m(x)
    assert torch.equal(same, clean) and acts["bottleneck"].shape == (2, 8, 8, 8)
    with capture(m, [], edit={"bottleneck": torch.zeros_like}):
        ablated = m(x)
    assert not torch.allclose(ablated, clean)
    assert hook_count(m) == 0


def test_field_hook_points():
    f = CoordinateField(FieldConfig(hidden=16, layers=3))
    pts, dirs = torch.rand(10, 3), torch.nn.functional.normalize(torch.randn(10, 3), dim=-1)
    with capture(f, [h.path for h in f.hook_points]) as acts:
        f(pts, dirs)
    assert [tuple(acts[h.path].shape) for h in f.hook_points] == [(10, 16)] * 3 + [(10, 8)]
    assert all((acts[h.path] >= 0).all() for h in f.hook_points)  # after ReLU


def test_capture_stop_ends_the_forward_at_the_deepest_hook_with_the_same_activations():
    torch.manual_seed(0)
    m = ConvAutoencoder(ConvAEConfig(channels=(8, 16), latent_channels=4))
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad(), capture(m, ["encoder.1", "encoder.0"]) as full:
        m(x)
    ran = []
    m.head.register_forward_hook(lambda *_: ran.append("head"))
    with torch.no_grad(), capture(m, ["encoder.1", "encoder.0"], stop=True) as early:
        m(x)
        ran.append("after the forward")  # not reached: the forward stops at encoder.1
    assert ran == [] and set(early) == {"encoder.0", "encoder.1"}
    assert all(torch.equal(full[p], early[p]) for p in full)
    assert hook_count(m) == 1  # only the test's own hook is left
    with pytest.raises(RuntimeError, match="inside"):  # other errors still propagate
        with capture(m, ["encoder.0"], stop=True):
            raise RuntimeError("inside")


@pytest.mark.parametrize("make", [lambda: ConvAutoencoder(ConvAEConfig(channels=(8, 16), latent_channels=4)),
                                  lambda: random_taesd(0)], ids=["conv-ae", "taesd"])
def test_forward_from_equals_the_hooked_full_forward_bit_for_bit(make):
    torch.manual_seed(0)
    m = make().eval()
    x = torch.rand(2, 3, 32, 32)
    assert m.resume_points == {h.path for h in m.hook_points} | ({"head"} if hasattr(m, "head") else set())
    with torch.no_grad():
        clean = m(x)
        for path in sorted(m.resume_points):
            with capture(m.hook_root, [path]) as acts:
                m(x)
            h = acts[path] * 0.5 + 0.1  # an edit that changes the output
            with capture(m.hook_root, [], edit={path: lambda t, h=h: h}):
                full = m(x)
            resumed = m.forward_from(path, h)
            assert torch.equal(resumed, full), path
            assert not torch.equal(resumed, clean), path
    with pytest.raises(ValueError, match="cannot resume"):
        m.forward_from("no.such.layer", x)
