"""Causal effects of features on the model's error against its known optimal output, through a probe
(``frobnolab.analysis.probe``).

Exact ablations for the features with the most perturbation energy (sum over tokens of |f_j W_dec_j|^2) and, later,
for the leading frobnoloid candidates; a calibrated energy estimate (``causal_est``) for the rest. (A first-order
attribution is useless here: a trained model sits near its optimum, where the loss gradient with respect to its
activations is close to zero.) The null: random decoder directions carrying real features' activation patterns.
"""

from __future__ import annotations

import numpy as np
import torch

from ..probe import landing


class CausalEffects:
    """Columns ``causal``, ``causal_est``, ``lands_on``, ``lift`` (F,), the null's effects and per-image deltas."""

    def __init__(self, probe, n_features: int, n_total: int):
        self.probe, self.n_features, F = probe, n_features, n_total
        self.causal = np.full(F, np.nan)
        self.causal_est = np.full(F, np.nan)
        self.lands, self.lift = np.array([""] * F, dtype=object), np.full(F, np.nan)
        self.null = np.array([])
        self.per_image: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.mx = None
        if probe is not None:
            self.base = probe.baseline()
            self.layer_gap = float(np.mean(self.base["zero"]) - np.mean(self.base["sae"]))
            self.masks = probe.concept_masks()

    def measure(self, features):
        """Exact ablations of ``features`` (those that fire and are not measured yet)."""
        features = [int(j) for j in features if self.mx[j] > 0 and np.isnan(self.causal[j])]
        if not features:
            return
        losses, changes = self.probe.ablate(features)
        land = landing(changes.reshape(len(changes), -1), {k: m.reshape(-1) for k, m in self.masks.items()})
        sae = np.mean(self.base["sae"])
        for k, j in enumerate(features):
            self.causal[j] = (losses[k].mean() - sae) / self.layer_gap
            self.lands[j], self.lift[j] = land[k]
            self.per_image[j] = (np.asarray(self.probe.images), (losses[k] - self.base["sae"]) / self.layer_gap)

    def run(self, f_sq: np.ndarray, mx: np.ndarray, n_tok: int, top: int, d_in: int, n_null: int,
            rng: np.random.Generator):
        """The top-``top`` features by energy exactly, the calibrated estimate for the others, and the null."""
        self.mx = mx
        if self.probe is None:
            return
        n = self.n_features
        energy = f_sq[:n] * self.probe.decoder_norms() ** 2 / max(n_tok, 1)
        self.measure(np.argsort(-energy)[:top])
        done = np.flatnonzero(np.isfinite(self.causal[:n]))
        c = float((self.causal[done] * energy[done]).sum() / max((energy[done] ** 2).sum(), 1e-30)) if len(done) \
            else 0.0
        self.causal_est[:n] = c * energy
        live = np.flatnonzero(mx[:n] > 0)
        donors = rng.choice(live, size=min(n_null, len(live)), replace=False) if len(live) else np.array([], int)
        dirs = {}
        for j in donors:
            u = rng.normal(size=d_in)
            dirs[int(j)] = torch.as_tensor(u / np.linalg.norm(u), dtype=torch.float32, device=self.probe.device)
        if dirs:
            null_losses, _ = self.probe.ablate(list(dirs), direction=dirs)
            self.null = (null_losses.mean(1) - np.mean(self.base["sae"])) / self.layer_gap

    @property
    def effect(self) -> np.ndarray:
        """Exact where measured, the estimate elsewhere."""
        return np.where(np.isnan(self.causal), self.causal_est, self.causal)

    def resampled(self, j: int, images: np.ndarray, wimg: np.ndarray) -> float:
        """Feature j's effect averaged over its probe images with bootstrap multiplicities ``wimg`` of ``images``
        (the point estimate where j was not ablated exactly)."""
        if j not in self.per_image:
            return float(self.effect[j])
        probe_images, d = self.per_image[j]
        pos = np.searchsorted(images, probe_images)
        ok = (pos < len(images)) & (images[np.minimum(pos, len(images) - 1)] == probe_images)
        w = np.where(ok, wimg[np.minimum(pos, len(images) - 1)], 0.0)
        return float(np.average(d, weights=w)) if w.sum() > 0 else float(np.mean(d))
