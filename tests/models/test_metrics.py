"""Oracles for the image metrics: SSIM against a brute force written from its definition, and hand-checked cases."""

import math

import numpy as np
import pytest
import torch

from frobnolab.models.metrics import psnr, ssim

C1, C2 = 0.01**2, 0.03**2  # (K1 L)^2, (K2 L)^2 with L = 1 (Wang et al. 2004)


def _window():
    """The 11x11 Gaussian window of sigma 1.5, normalised to sum 1."""
    g = np.array([math.exp(-((i - 5) ** 2) / (2 * 1.5**2)) for i in range(11)])
    g /= g.sum()
    return np.outer(g, g)


def _ssim_brute(x, y):
    """Mean SSIM over every full 11x11 window of every channel of every image (no padding), from the definition:
    Gaussian-weighted local means, variances and covariance, then (2 mx my + C1)(2 sxy + C2) /
    ((mx^2 + my^2 + C1)(sx^2 + sy^2 + C2)); pred is clipped to [0, 1] first."""
    x, y = np.clip(np.asarray(x, float), 0, 1), np.asarray(y, float)
    w = _window()
    vals = []
    b, c, h, wd = x.shape
    for n in range(b):
        for ch in range(c):
            for i in range(h - 10):
                for j in range(wd - 10):
                    px, py = x[n, ch, i:i + 11, j:j + 11], y[n, ch, i:i + 11, j:j + 11]
                    mx, my = (w * px).sum(), (w * py).sum()
                    vx, vy = (w * (px - mx) ** 2).sum(), (w * (py - my) ** 2).sum()
                    cxy = (w * (px - mx) * (py - my)).sum()
                    vals.append((2 * mx * my + C1) * (2 * cxy + C2) / ((mx**2 + my**2 + C1) * (vx + vy + C2)))
    return float(np.mean(vals))


@pytest.mark.parametrize("shape", [(1, 1, 11, 11), (2, 3, 14, 13), (1, 2, 16, 12)])
def test_ssim_matches_a_brute_force_from_the_definition(shape):
    rng = np.random.default_rng(sum(shape))
    target = rng.random(shape)
    noisy = target + rng.normal(0, 0.2, shape)  # partly outside [0, 1]: pred is clipped, the target is not touched
    unrelated = rng.random(shape)
    for pred in (noisy, unrelated, 0.5 * target + 0.25):
        got = ssim(torch.from_numpy(pred), torch.from_numpy(target))
        assert got == pytest.approx(_ssim_brute(pred, target), abs=1e-9)


def test_ssim_of_identical_images_is_one():
    x = torch.from_numpy(np.random.default_rng(1).random((2, 3, 16, 16)))
    assert ssim(x, x.clone()) == pytest.approx(1.0, abs=1e-12)
    assert ssim(x.float(), x.float()) == pytest.approx(1.0, abs=1e-5)


def test_ssim_of_a_constant_offset_is_the_luminance_term():
    # flat images a and a + d: no variance, so SSIM = (2 a (a + d) + C1) / (a^2 + (a + d)^2 + C1) at every window
    a, d = 0.25, 0.5
    x = torch.full((1, 1, 13, 13), a, dtype=torch.float64)
    want = (2 * a * (a + d) + C1) / (a**2 + (a + d) ** 2 + C1)
    assert ssim(x + d, x) == pytest.approx(want, rel=1e-9)
    assert ssim(x, x + d) == pytest.approx(want, rel=1e-9)  # symmetric
    # a textured image shifted by d: the structure term is 1, only the (local) luminance term is left
    t = torch.from_numpy(0.2 * np.random.default_rng(2).random((1, 1, 11, 11)))
    w = torch.from_numpy(_window())
    mx = float((w * t[0, 0]).sum())
    assert ssim(t + d, t) == pytest.approx((2 * mx * (mx + d) + C1) / (mx**2 + (mx + d) ** 2 + C1), rel=1e-9)


def test_ssim_of_an_inverted_image_is_near_minus_one():
    # One 11x11 window; x is 0 or 1 off the centre, 0.5 at the centre, and x(p) = 1 - x(mirror of p) so that its
    # Gaussian-weighted mean is exactly 0.5 (the window is point-symmetric). y = 1 - x has the same mean and variance
    # and covariance -var, so SSIM = (C2 - 2 var) / (2 var + C2) with var = 0.25 (1 - w_centre).
    rng = np.random.default_rng(3)
    x = np.zeros((11, 11))
    flat = rng.integers(0, 2, 60).astype(float)
    x.flat[:60] = flat
    x.flat[61:] = 1 - flat[::-1]
    x[5, 5] = 0.5
    var = 0.25 * (1 - _window()[5, 5])
    want = (C2 - 2 * var) / (2 * var + C2)
    xt = torch.from_numpy(x)[None, None]
    assert ssim(1 - xt, xt) == pytest.approx(want, rel=1e-9)
    assert want < -0.99


def test_psnr_by_hand():
    target = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    pred = target.clone()
    pred[0, 0, 0, :] = 0.5  # mse = 4 * 0.25 / 16
    assert psnr(pred, target) == pytest.approx(10 * math.log10(16), abs=1e-5)  # the log is taken in float32
    assert psnr(target, target) == float("inf")
    assert psnr(target - 3, target) == float("inf")  # pred is clipped to [0, 1] first
