import time

import numpy as np
import pytest
import torch

from frobnolab.models.io import load_model
from frobnolab.models.metrics import psnr
from frobnolab.models.pretrained import WeightsNotFound, load_sd_vae, load_taesd, random_taesd
from frobnolab.scenes.dataset import Dataset

from .test_hooks import tiny_kl


def images(path, n=8):
    return torch.from_numpy(np.asarray(Dataset(path)["rgb"][:n])).permute(0, 3, 1, 2).contiguous()


@torch.no_grad()
def test_taesd_reconstructs_renders_far_better_than_random_weights(tiny_dataset, taesd_dir):
    x = images(tiny_dataset)
    real = psnr(load_taesd(taesd_dir)(x), x)
    xl = psnr(load_taesd(taesd_dir, "taesdxl")(x), x)
    rand = psnr(random_taesd(0)(x), x)
    assert real > 18.0, real  # 32x32 renders; about 27 dB at 64x64
    assert xl > 18.0, xl
    assert rand < 10.0, rand
    via_spec = load_model(f"taesd:{taesd_dir}")
    assert torch.equal(via_spec(x), load_taesd(taesd_dir)(x))


def test_taesd_env_variable_and_missing_folder(tmp_path, monkeypatch, taesd_dir):
    monkeypatch.setenv("FROBNOLAB_TAESD_DIR", str(taesd_dir))
    assert load_taesd().source == str(taesd_dir.resolve())
    with pytest.raises(WeightsNotFound) as e:
        load_taesd(tmp_path / "nothing-here")
    assert "taesd_encoder.safetensors" in str(e.value) and str(tmp_path) in str(e.value)


@torch.no_grad()
def test_sd_vae_loads_from_folder_and_single_file(tmp_path):
    ref = tiny_kl()
    ref.net.save_pretrained(tmp_path / "vae")
    x = torch.rand(2, 3, 32, 32)
    expected = ref(x)
    folder = load_sd_vae(tmp_path / "vae")
    assert torch.allclose(folder(x), expected, atol=1e-6)
    single = load_sd_vae(tmp_path / "vae" / "diffusion_pytorch_model.safetensors", config=tmp_path / "vae")
    assert torch.allclose(single(x), expected, atol=1e-6)
    assert torch.allclose(load_model(f"sd-vae:{tmp_path / 'vae'}")(x), expected, atol=1e-6)
    # a pipeline folder with the VAE in vae/
    ref.net.save_pretrained(tmp_path / "pipe" / "vae")
    assert torch.allclose(load_sd_vae(tmp_path / "pipe")(x), expected, atol=1e-6)


def test_missing_sd_vae_fails_fast_and_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("FROBNOLAB_SD_VAE", raising=False)
    t = time.time()
    with pytest.raises(WeightsNotFound) as e:
        load_sd_vae("stabilityai/sd-vae-ft-mse")
    assert time.time() - t < 10
    msg = str(e.value)
    assert "models--stabilityai--sd-vae-ft-mse" in msg and "unreachable" in msg and "--sd-vae" in msg
    with pytest.raises(WeightsNotFound, match="no such file"):
        load_sd_vae(tmp_path / "missing.safetensors")


def test_unknown_model_spec_is_a_clear_error(tmp_path):
    from frobnolab.errors import UnknownNameError
    from frobnolab.models.io import build_model

    with pytest.raises(UnknownNameError, match="unknown model"):
        load_model("resnet50")
    with pytest.raises(ValueError, match="no model.json"):
        load_model(tmp_path)
    with pytest.raises(UnknownNameError, match="known: frobnolab.models"):
        build_model("torchvision.ResNet", {})
    with pytest.raises(UnknownNameError, match="unknown config fields .'depth'.*known: channels"):
        build_model("frobnolab.models.conv_ae.ConvAutoencoder", {"depth": 3})
    with pytest.raises(UnknownNameError, match="known: taesd, taesdxl"):
        load_taesd(tmp_path, variant="taesd3")
    with pytest.raises(ValueError, match="integer seed"):
        load_model("random-taesd:abc")


def _tiny_diffusers_taesd(folder):
    from diffusers import AutoencoderTiny

    torch.manual_seed(0)
    AutoencoderTiny(encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
                    num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1)).save_pretrained(folder)


def test_find_taesd_search_list_in_order(tmp_path, monkeypatch, taesd_dir):
    """--taesd, then $FROBNOLAB_TAESD_DIR, then the Hugging Face cache, then the shared folder; else None and a hint."""
    import huggingface_hub.constants as hf

    import frobnolab.models.pretrained as pre

    cache = tmp_path / "hub"
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(pre, "SHARED_TAESD", tmp_path / "no-shared")
    monkeypatch.delenv(pre.TAESD_ENV, raising=False)
    source, tried = pre.find_taesd()
    assert source is None and len(tried) == 2 and str(cache) in tried[0] and "no-shared" in tried[1]
    hint = pre.taesd_hint(tried)
    assert "\n" not in hint and "hf download madebyollin/taesd" in hint and "--taesd" in hint
    # the shared folder, last in the list
    monkeypatch.setattr(pre, "SHARED_TAESD", taesd_dir)
    assert pre.find_taesd()[0] == str(taesd_dir)
    # the Hugging Face cache as `hf download` / from_pretrained leave it, before the shared folder
    snap = cache / "models--madebyollin--taesd" / "snapshots" / ("a" * 40)
    _tiny_diffusers_taesd(snap)
    (cache / "models--madebyollin--taesd" / "refs").mkdir()
    (cache / "models--madebyollin--taesd" / "refs" / "main").write_text("a" * 40)
    found, _ = pre.find_taesd()
    assert found == str(snap)
    assert load_taesd(found)(torch.rand(1, 3, 16, 16)).shape == (1, 3, 16, 16)  # a folder load_taesd reads
    # the variable before the cache; an explicit folder before everything, and it must hold weights
    monkeypatch.setenv(pre.TAESD_ENV, str(taesd_dir))
    assert pre.find_taesd()[0] == str(taesd_dir)
    assert pre.find_taesd(str(snap))[0] == str(snap)
    with pytest.raises(WeightsNotFound, match="empty"):
        (tmp_path / "empty").mkdir()
        pre.find_taesd(str(tmp_path / "empty"))
