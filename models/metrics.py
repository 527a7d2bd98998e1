"""Image metrics against the optimal output: PSNR and SSIM (Wang et al. 2004, Gaussian window 11, sigma 1.5)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def psnr(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB of images in [0, 1] (pred is clipped first)."""
    mse = F.mse_loss(pred.clamp(0, 1), target).item()
    return float("inf") if mse == 0 else 10 * torch.log10(torch.tensor(1.0 / mse)).item()


def ssim(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Mean SSIM of image batches (B, C, H, W) in [0, 1]."""
    c = pred.shape[1]
    x = torch.arange(11, dtype=pred.dtype, device=pred.device) - 5
    g = torch.exp(-(x**2) / (2 * 1.5**2))
    g = g / g.sum()
    win = (g[:, None] * g[None, :]).expand(c, 1, 11, 11).contiguous()

    def blur(t):
        return F.conv2d(t, win, groups=c)

    p = pred.clamp(0, 1)
    mu_x, mu_y = blur(p), blur(target)
    sxx, syy, sxy = blur(p * p) - mu_x**2, blur(target * target) - mu_y**2, blur(p * target) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return s.mean().item()
