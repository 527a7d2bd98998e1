"""Pretrained image autoencoders through diffusers: TAESD / TAESDXL (AutoencoderTiny) and SD's VAE (AutoencoderKL).

Both wrappers take and return images in [0, 1] (diffusers' convention is [-1, 1]) and go through the latents
without quantising them; their optimal output is their input. Hook paths are relative to ``.net``, the diffusers
model, so they read like diffusers' own module names.

TAESD hook points (AutoencoderTiny, default config; 64 channels everywhere but the latent):

| name | path | stride | meaning |
| --- | --- | --- | --- |
| enc{k} | ``encoder.layers.{k}`` | 1, 1, 2, 2, 2, 2, 4, 4, 4, 4, 8, 8, 8, 8, 8 for k = 0..14 | encoder layer k (14: 4-channel latent) |
| dec{k} | ``decoder.layers.{k}`` | 8 (k <= 4), 4 (5..9), 2 (10..14), 1 (15..18) | decoder layer k (18: RGB) |

SD VAE hook points (AutoencoderKL): ``encoder.down_blocks.{i}``, ``encoder.mid_block``, ``decoder.mid_block``,
``decoder.up_blocks.{i}`` for every block of the config.

Where weights come from (nothing is downloaded unless the hub is reachable and asked for):
- TAESD: a folder with ``taesd_encoder.safetensors`` / ``taesd_decoder.safetensors`` (the layout of
  ``../shared/weights/taesd``: bare nn.Sequential keys), a diffusers folder, or a hub id (``madebyollin/taesd``).
  ``$FROBNOLAB_TAESD_DIR`` names the default folder.
- SD VAE: a hub id (``stabilityai/sd-vae-ft-mse``), a diffusers folder (``config.json`` + weights), or a single
  ``.safetensors`` file (with SD's standard VAE config unless a config folder is given). ``$FROBNOLAB_SD_VAE``
  names the default.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
from torch import nn

from frobnolab.errors import unknown

from .hooks import HookPoint

TAESD_ENV = "FROBNOLAB_TAESD_DIR"
SD_VAE_ENV = "FROBNOLAB_SD_VAE"
TAESD_HUB = {"taesd": "madebyollin/taesd", "taesdxl": "madebyollin/taesdxl"}
SD_VAE_HUB = "stabilityai/sd-vae-ft-mse"

# The VAE config shared by SD 1.x / 2.x checkpoints (sd-vae-ft-mse), for single files that come without one.
SD_VAE_CONFIG = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32,
    "act_fn": "silu", "block_out_channels": [128, 256, 512, 512], "sample_size": 256, "scaling_factor": 0.18215,
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
}


class WeightsNotFound(FileNotFoundError):
    """Pretrained weights could not be found locally and the hub is not reachable."""


def _hub_reachable(timeout: float = 2.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


def _from_hub(cls, repo: str, tried: list[str], how: str, **kw):
    """``cls.from_pretrained(repo)`` from the local cache first, then the hub if reachable; fails fast otherwise."""
    from huggingface_hub.constants import HF_HUB_CACHE

    tried.append(f"hub cache {HF_HUB_CACHE} (models--{repo.replace('/', '--')})")
    try:
        return cls.from_pretrained(repo, local_files_only=True, **kw)
    except (OSError, ValueError):
        pass
    if not _hub_reachable():
        tried.append(f"hub {repo} (unreachable: offline)")
        raise WeightsNotFound("weights not found; looked in: " + "; ".join(tried) + f". {how}")
    return cls.from_pretrained(repo, **kw)


# --------------------------------------------------------------------------------------------------------------- TAESD


class TAESD(nn.Module):
    """diffusers' AutoencoderTiny with images in [0, 1]: (B, 3, H, W) -> (B, 3, H, W), H and W divisible by 8."""

    def __init__(self, net, variant: str = "taesd", source: str = ""):
        super().__init__()
        self.net, self.variant, self.source = net, variant, source

    @property
    def hook_root(self) -> nn.Module:
        return self.net

    @property
    def hook_points(self) -> list[HookPoint]:
        pts = [HookPoint(f"enc{k}", f"encoder.layers.{k}", f"encoder layer {k} ({type(m).__name__})")
               for k, m in enumerate(self.net.encoder.layers)]
        pts += [HookPoint(f"dec{k}", f"decoder.layers.{k}", f"decoder layer {k} ({type(m).__name__})")
                for k, m in enumerate(self.net.decoder.layers)]
        return pts

    def encode(self, x01: torch.Tensor) -> torch.Tensor:
        return self.net.encode(x01 * 2 - 1).latents

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return (self.net.decode(z).sample + 1) / 2

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        if x01.ndim != 4 or x01.shape[-1] % 8 or x01.shape[-2] % 8:
            raise ValueError(f"TAESD: expected (B, 3, H, W) with H, W divisible by 8, got {tuple(x01.shape)}")
        return self.decode(self.encode(x01))

    @property
    def resume_points(self) -> set[str]:
        """Hook paths :meth:`forward_from` can resume at: every encoder and decoder layer (none when diffusers
        slices or tiles, which splits the forward differently)."""
        if self.net.use_slicing or self.net.use_tiling:
            return set()
        return {h.path for h in self.hook_points}

    def forward_from(self, path: str, h: torch.Tensor) -> torch.Tensor:
        """The output when the layer at ``path`` outputs ``h``: only the layers after it run. Mirrors diffusers'
        EncoderTiny / DecoderTiny forwards op for op (tests compare it bit for bit with the hooked full forward)."""
        if path not in self.resume_points:
            raise ValueError(f"TAESD.forward_from: cannot resume at {path!r}")
        part, _, k = path.rpartition(".")
        k = int(k)
        if part == "encoder.layers":
            return self.decode(self.net.encoder.layers[k + 1:](h))
        x = self.net.decoder.layers[k + 1:](h)
        return (x.mul(2).sub(1) + 1) / 2


def random_taesd(seed: int = 0, **config) -> TAESD:
    """An AutoencoderTiny with random weights (the null model), default config unless overridden."""
    from diffusers import AutoencoderTiny

    torch.manual_seed(seed)
    return TAESD(AutoencoderTiny(**config), source=f"random(seed={seed})")


def load_taesd(source: str | Path | None = None, variant: str = "taesd") -> TAESD:
    """TAESD (``variant="taesd"``) or TAESDXL from a folder of safetensors, a diffusers folder or a hub id.

    ``source=None`` reads ``$FROBNOLAB_TAESD_DIR``, else the hub id of the variant (local cache first).
    """
    from diffusers import AutoencoderTiny

    if variant not in TAESD_HUB:
        raise unknown("TAESD variant", variant, sorted(TAESD_HUB))
    how = (f"Give the folder holding {variant}_encoder.safetensors and {variant}_decoder.safetensors with "
           f"--taesd PATH or ${TAESD_ENV}, or a diffusers folder, or connect to the hub.")
    tried: list[str] = []
    if source is None and os.environ.get(TAESD_ENV):
        source = os.environ[TAESD_ENV]
        tried.append(f"${TAESD_ENV}")
    if source is None:
        net = _from_hub(AutoencoderTiny, TAESD_HUB[variant], tried, how)
        return TAESD(net.float().eval(), variant, TAESD_HUB[variant])
    path = Path(source)
    enc, dec = path / f"{variant}_encoder.safetensors", path / f"{variant}_decoder.safetensors"
    if enc.is_file() and dec.is_file():
        return TAESD(_taesd_from_files(enc, dec), variant, str(path.resolve()))
    if (path / "config.json").is_file():
        return TAESD(AutoencoderTiny.from_pretrained(path).float().eval(), variant, str(path.resolve()))
    tried.append(f"{enc} + {dec}")
    tried.append(f"{path / 'config.json'} (diffusers folder)")
    if not path.exists() and "/" in str(source) and not str(source).startswith((".", "/")):
        net = _from_hub(AutoencoderTiny, str(source), tried, how)  # a hub id
        return TAESD(net.float().eval(), variant, str(source))
    raise WeightsNotFound("TAESD weights not found; looked in: " + "; ".join(tried) + f". {how}")


# the shared weights folder of this project's machines, beside the repository (never copied into it)
SHARED_TAESD = Path(__file__).resolve().parents[2] / "shared" / "weights" / "taesd"


def find_taesd(given: str | Path | None = None, variant: str = "taesd") -> tuple[str | None, list[str]]:
    """Where TAESD weights can be read without the network: ``(source, tried)``, ``source`` None when nowhere.

    The search list, in order: ``given`` (``--taesd``; it must hold the weights), ``$FROBNOLAB_TAESD_DIR``, the
    Hugging Face cache where diffusers keeps a downloaded ``madebyollin/taesd``, and the shared weights folder next
    to the repository (``../shared/weights/taesd``). ``source`` is a folder :func:`load_taesd` reads.
    """
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    def holds(path: Path) -> bool:
        return ((path / f"{variant}_encoder.safetensors").is_file() and
                (path / f"{variant}_decoder.safetensors").is_file()) or (path / "config.json").is_file()

    if given is not None:
        if not holds(Path(given)):
            raise WeightsNotFound(f"--taesd {given}: no {variant}_encoder.safetensors + "
                                  f"{variant}_decoder.safetensors and no config.json there")
        return str(given), [str(given)]
    tried = []
    if os.environ.get(TAESD_ENV):
        tried.append(f"${TAESD_ENV}={os.environ[TAESD_ENV]}")
        if holds(Path(os.environ[TAESD_ENV])):
            return os.environ[TAESD_ENV], tried
    tried.append(f"the Hugging Face cache {constants.HF_HUB_CACHE} ({TAESD_HUB[variant]})")
    try:
        snap = Path(snapshot_download(TAESD_HUB[variant], local_files_only=True, cache_dir=constants.HF_HUB_CACHE))
        if holds(snap):
            return str(snap), tried
    except (LocalEntryNotFoundError, OSError, ValueError):
        pass
    tried.append(str(SHARED_TAESD))
    if holds(SHARED_TAESD):
        return str(SHARED_TAESD), tried
    return None, tried


def taesd_hint(tried: list[str]) -> str:
    """One line: where TAESD was looked for and how to get it."""
    return (f"TAESD weights not found (looked in: {'; '.join(tried)}); to study TAESD too, download them once "
            f"with `hf download madebyollin/taesd` (into the Hugging Face cache, where diffusers looks) or give --taesd DIR")


def _taesd_from_files(enc_file: Path, dec_file: Path):
    """AutoencoderTiny from TAESD's bare nn.Sequential safetensors (key mapping of the weights' README)."""
    from diffusers import AutoencoderTiny
    from safetensors.torch import load_file

    net = AutoencoderTiny()
    state = {f"encoder.layers.{k}": v for k, v in load_file(enc_file).items()}
    for k, v in load_file(dec_file).items():
        i, rest = k.split(".", 1)  # the decoder file starts at index 1 (index 0 is a parameter-free clamp)
        state[f"decoder.layers.{int(i) - 1}.{rest}"] = v
    net.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return net.eval()


# ------------------------------------------------------------------------------------------------------------- SD VAE


class SDVAE(nn.Module):
    """diffusers' AutoencoderKL with images in [0, 1]; encodes to the latent mean (deterministic)."""

    def __init__(self, net, source: str = ""):
        super().__init__()
        self.net, self.source = net, source

    @property
    def hook_root(self) -> nn.Module:
        return self.net

    @property
    def hook_points(self) -> list[HookPoint]:
        n = len(self.net.config.block_out_channels)
        pts = [HookPoint(f"enc_down{i}", f"encoder.down_blocks.{i}", f"encoder down block {i}") for i in range(n)]
        pts.append(HookPoint("enc_mid", "encoder.mid_block", "encoder mid block"))
        pts.append(HookPoint("dec_mid", "decoder.mid_block", "decoder mid block"))
        pts += [HookPoint(f"dec_up{i}", f"decoder.up_blocks.{i}", f"decoder up block {i}") for i in range(n)]
        return pts

    def encode(self, x01: torch.Tensor) -> torch.Tensor:
        return self.net.encode(x01 * 2 - 1).latent_dist.mode()

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return (self.net.decode(z).sample + 1) / 2

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        m = 2 ** (len(self.net.config.block_out_channels) - 1)
        if x01.ndim != 4 or x01.shape[-1] % m or x01.shape[-2] % m:
            raise ValueError(f"SD VAE: expected (B, 3, H, W) with H, W divisible by {m}, got {tuple(x01.shape)}")
        return self.decode(self.encode(x01))


def load_sd_vae(source: str | Path | None = None, config: str | Path | None = None) -> SDVAE:
    """SD's VAE from a hub id, a diffusers folder or a single ``.safetensors`` file.

    ``source=None`` reads ``$FROBNOLAB_SD_VAE``, else ``stabilityai/sd-vae-ft-mse`` (local cache first).
    ``config``: a diffusers config folder for a single file (default: SD 1.x / 2.x's VAE config).
    Without weights and without the hub, raises :class:`WeightsNotFound` within seconds, naming where it looked.
    """
    from diffusers import AutoencoderKL

    how = (f"Give a diffusers folder or a .safetensors file with --sd-vae PATH or ${SD_VAE_ENV}, "
           "or connect to the hub.")
    tried: list[str] = []
    if source is None and os.environ.get(SD_VAE_ENV):
        source = os.environ[SD_VAE_ENV]
        tried.append(f"${SD_VAE_ENV}")
    source = SD_VAE_HUB if source is None else str(source)
    path = Path(source)
    if path.is_file() and path.suffix == ".safetensors":
        return SDVAE(_sd_vae_single_file(path, config).eval(), str(path.resolve()))
    if path.is_dir():
        if (path / "config.json").is_file():
            return SDVAE(AutoencoderKL.from_pretrained(path).float().eval(), str(path.resolve()))
        if (path / "vae" / "config.json").is_file():  # a whole SD pipeline folder
            return SDVAE(AutoencoderKL.from_pretrained(path, subfolder="vae").float().eval(), str(path.resolve()))
    tried.append(str(path.resolve()) + (" (a folder without config.json)" if path.is_dir() else " (no such file)"))
    if path.exists() or source.startswith((".", "/")) or source.endswith(".safetensors"):
        raise WeightsNotFound("SD VAE weights not found; looked in: " + "; ".join(tried) + f". {how}")
    return SDVAE(_from_hub(AutoencoderKL, source, tried, how).float().eval(), source)


def _sd_vae_single_file(path: Path, config: str | Path | None):
    import json
    import tempfile

    from diffusers import AutoencoderKL

    if config is not None:
        return AutoencoderKL.from_single_file(str(path), config=str(config), local_files_only=True).float()
    with tempfile.TemporaryDirectory() as d:  # diffusers wants a config folder; ours keeps it offline
        (Path(d) / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL", **SD_VAE_CONFIG}))
        return AutoencoderKL.from_single_file(str(path), config=d, local_files_only=True).float()
