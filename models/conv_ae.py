"""A small convolutional autoencoder for rendered images. Its optimal output is its input.

Hook points (module paths inside the model; strides relative to the input image):

| name | path | output shape | meaning |
| --- | --- | --- | --- |
| enc{i} | ``encoder.{i}`` | (B, channels[i], H/2^(i+1), W/2^(i+1)) | encoder block i (conv stride 2, conv, ReLU) |
| latent | ``bottleneck`` | (B, latent_channels, H/2^n, W/2^n) | the code (1x1 conv, no nonlinearity) |
| dec{i} | ``decoder.{i}`` | (B, channels[n-1-i], H/2^(n-1-i), W/2^(n-1-i)) | decoder block i (upsample, conv, ReLU) |

with n = len(channels). ``hook_points`` lists them for a given config.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .hooks import HookPoint


@dataclass
class ConvAEConfig:
    channels: tuple[int, ...] = (16, 32, 64)
    """Output channels of each encoder block (each halves the resolution); the decoder mirrors them."""
    latent_channels: int = 8
    """Channels of the bottleneck code."""
    in_channels: int = 3
    """Image channels."""
    init: str = "kaiming"
    """Weight initialisation: "kaiming" (He-normal, zero biases: the signal keeps its scale through the stack, so
    training leaves the predict-the-mean plateau within a hundred steps) or "torch" (PyTorch's default, which
    shrinks the signal at every layer; measured: stuck near 15 dB for 300-900 steps, longer at higher lr)."""

    def __post_init__(self):
        self.channels = tuple(int(c) for c in self.channels)
        if not self.channels or min(self.channels) < 1 or self.latent_channels < 1:
            raise ValueError(f"ConvAEConfig: channels and latent_channels must be positive, got {self}")
        if self.init not in ("kaiming", "torch"):
            raise ValueError(f"ConvAEConfig.init must be 'kaiming' or 'torch', got {self.init!r}")


def _block(cin: int, cout: int, down: bool) -> nn.Sequential:
    first = nn.Conv2d(cin, cout, 4, stride=2, padding=1) if down else nn.Sequential(
        nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(cin, cout, 3, padding=1))
    return nn.Sequential(first, nn.ReLU(), nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU())


class ConvAutoencoder(nn.Module):
    """Images in [0, 1], shape (B, 3, H, W) with H, W divisible by 2^len(channels) -> reconstructions (B, 3, H, W)."""

    def __init__(self, config: ConvAEConfig | None = None):
        super().__init__()
        self.config = cfg = config or ConvAEConfig()
        ch = cfg.channels
        self.encoder = nn.Sequential(*[_block(cin, cout, True) for cin, cout in zip((cfg.in_channels,) + ch, ch)])
        self.bottleneck = nn.Conv2d(ch[-1], cfg.latent_channels, 1)
        up = (cfg.latent_channels,) + ch[::-1]
        self.decoder = nn.Sequential(*[_block(cin, cout, False) for cin, cout in zip(up[:-1], up[1:])])
        self.head = nn.Conv2d(ch[0], cfg.in_channels, 3, padding=1)
        if cfg.init == "kaiming":
            for m in self.modules():
                if isinstance(m, nn.Conv2d):  # every conv but the two linear ones feeds a ReLU
                    linear = m is self.bottleneck or m is self.head
                    nn.init.kaiming_normal_(m.weight, nonlinearity="linear" if linear else "relu")
                    nn.init.zeros_(m.bias)

    @property
    def hook_root(self) -> nn.Module:
        return self

    @property
    def hook_points(self) -> list[HookPoint]:
        n = len(self.config.channels)
        pts = [HookPoint(f"enc{i}", f"encoder.{i}", f"encoder block {i}: stride {2 ** (i + 1)}") for i in range(n)]
        pts.append(HookPoint("latent", "bottleneck", f"the {self.config.latent_channels}-channel code: stride {2 ** n}"))
        pts += [HookPoint(f"dec{i}", f"decoder.{i}", f"decoder block {i}: stride {2 ** (n - 1 - i)}") for i in range(n)]
        return pts

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, 3, H, W)
        m = 2 ** len(self.config.channels)
        if x.ndim != 4 or x.shape[-1] % m or x.shape[-2] % m:
            raise ValueError(f"ConvAutoencoder: expected (B, C, H, W) with H, W divisible by {m}, got {tuple(x.shape)}")
        return torch.sigmoid(self.head(self.decoder(self.bottleneck(self.encoder(x)))))

    def _stages(self) -> list[tuple[str, nn.Module]]:
        """The forward as a chain of (hook path, module), in order."""
        return ([(f"encoder.{i}", m) for i, m in enumerate(self.encoder)] + [("bottleneck", self.bottleneck)]
                + [(f"decoder.{i}", m) for i, m in enumerate(self.decoder)] + [("head", self.head)])

    @property
    def resume_points(self) -> set[str]:
        """Hook paths :meth:`forward_from` can resume at (every hook point)."""
        return {p for p, _ in self._stages()}

    def forward_from(self, path: str, h: torch.Tensor) -> torch.Tensor:
        """The output when the module at ``path`` outputs ``h``: only the layers after it run (a splice at a
        hook replaces its output whatever came before). The same operations as :meth:`forward` with that output
        replaced, so the result is bit-identical."""
        stages = self._stages()
        names = [p for p, _ in stages]
        if path not in names:
            raise ValueError(f"ConvAutoencoder.forward_from: cannot resume at {path!r} (one of {names})")
        for _, m in stages[names.index(path) + 1:]:
            h = m(h)
        return torch.sigmoid(h)
