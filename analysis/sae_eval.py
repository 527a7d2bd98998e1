"""Evaluation of a trained SAE on held-out tokens, and its output fidelity against the model's optimal output.

Reconstruction (held-out images' tokens x, reconstructions x^, latents f):
- explained variance  1 - E||x - x^||^2 / (E||x||^2 - ||E x||^2)   (against the mean, not zero)
- mse (per element), cosine(x, x^), shrinkage E[||x^|| / ||x||], l0 E[#(f > 0)]
- dead fraction: latents that never fire on the held-out tokens; dense fraction: latents firing on > 25% of them

Output fidelity: the SAE spliced into the model at its hook point, error of the model's output against the KNOWN
optimal output (the input image for autoencoders; the exact render for coordinate fields) on held-out images:
L_clean, L_sae, L_zero (layer zeroed), L_mean (layer replaced by its held-out mean), and
fidelity = (L_ablate - L_sae) / (L_ablate - L_clean) for each ablation (1: as good as clean; 0: no better than
ablating the layer).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .store import ActivationStore

DENSE = 0.25


def held_out_acts(store: ActivationStore, hook: str, max_tokens: int = 200_000) -> np.ndarray:
    """Activations ``(N, d_in)`` of the hook's tokens from held-out images (streamed chunk by chunk)."""
    return store[hook].activations("test", max_tokens)


@torch.no_grad()
def reconstruction_metrics(sae, x: torch.Tensor, batch: int = 8192) -> dict:
    """The reconstruction metrics of the module docstring for activations ``x (N, d_in)``."""
    se, sq, sum_x, cos, shrink, l0 = 0.0, 0.0, torch.zeros(x.shape[1], dtype=torch.float64), 0.0, 0.0, 0.0
    fires = torch.zeros(sae.cfg.d_sae, dtype=torch.float64)
    for s in range(0, len(x), batch):
        xb = x[s:s + batch].to(sae.device)
        f = sae.encode(xb)
        xh = sae.decode(f)
        se += ((xb - xh) ** 2).sum().item()
        sq += (xb**2).sum().item()
        sum_x += xb.sum(0).double().cpu()
        nx, nh = xb.norm(dim=1), xh.norm(dim=1)
        cos += ((xb * xh).sum(1) / (nx * nh).clamp(min=1e-12)).sum().item()
        shrink += (nh / nx.clamp(min=1e-12)).sum().item()
        active = f > 0
        l0 += active.sum().item()
        fires += active.sum(0).double().cpu()
    n = len(x)
    total_var = sq / n - (sum_x / n).pow(2).sum().item()
    freq = fires / n
    return {"tokens": n, "explained_variance": 1 - (se / n) / total_var, "mse": se / (n * x.shape[1]),
            "cosine": cos / n, "shrinkage": shrink / n, "l0": l0 / n,
            "dead_fraction": (freq == 0).double().mean().item(), "dense_fraction": (freq > DENSE).double().mean().item()}


def splice(sae) -> callable:
    """An edit hook replacing a layer's output by the SAE's reconstruction (feature maps or token rows)."""

    def edit(t: torch.Tensor) -> torch.Tensor:
        if t.ndim == 4:
            b, c, h, w = t.shape
            flat = t.permute(0, 2, 3, 1).reshape(-1, c)
            return sae.decode(sae.encode(flat)).reshape(b, h, w, c).permute(0, 3, 1, 2)
        return sae.decode(sae.encode(t))

    return edit


@torch.no_grad()
def model_losses(model, store: ActivationStore, hook: str, edits: dict, device: str = "cpu",
                 max_images: int = 32, rays_per_image: int = 512) -> dict:
    """Error of the model's output against its optimal output on held-out images, for each edit of the hook
    (None: clean). Returns {name: loss}."""
    path = store[hook].meta["path"]
    domain = store.domain
    batch = domain.batch(store.dataset, store.dataset.split("test")[:max_images], device, rays_per_image)
    return {name: torch.mean((domain.forward(model, batch, {path: fn} if fn is not None else None)
                              - batch.target) ** 2).item() for name, fn in edits.items()}


def evaluate_sae(sae, store: ActivationStore | str | Path, hook: str, model=None, device: str = "cpu") -> dict:
    """Reconstruction metrics on held-out tokens and output fidelity (module docstring)."""
    store = store if isinstance(store, ActivationStore) else ActivationStore(store)
    x = torch.from_numpy(held_out_acts(store, hook))
    res = reconstruction_metrics(sae, x)
    if model is None:
        model = store.load_model(device)
    mean = x.mean(0).to(device)

    def mean_ablate(t):
        shape = (1, -1, 1, 1) if t.ndim == 4 else (1, -1)
        return torch.zeros_like(t) + mean.view(shape)

    losses = model_losses(model, store, hook, {"clean": None, "sae": splice(sae), "zero": torch.zeros_like,
                                               "mean": mean_ablate}, device=device)
    res["loss"] = losses
    for ab in ("zero", "mean"):
        gap = losses[ab] - losses["clean"]
        res[f"fidelity_{ab}"] = (losses[ab] - losses["sae"]) / gap if abs(gap) > 1e-12 else float("nan")
    return res
