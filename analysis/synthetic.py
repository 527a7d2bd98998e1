"""sae-lens's synthetic data as a check of frobnolab's SAE pipeline: known features, known recovery.

sae-lens generates activations as sparse combinations of a known feature dictionary (``sae_lens.synthetic``).
frobnolab writes them into an activation store and trains on it with its own pipeline (store streaming, the same
sae-lens trainer); sae-lens's own ``train_toy_sae`` trains the same architecture on the same generator as the
reference. Both are scored by sae-lens's MCC (Hungarian-matched |cosine| of decoder rows to the true features).
The pipeline passes when its MCC is within ``tolerance`` of the reference's.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from .sae import SAETrainConfig, load_sae, train_sae, training_sae
from .store import FORMAT


def write_synthetic_store(acts: np.ndarray, out: Path, chunk: int = 8192, tokens_per_image: int = 64) -> Path:
    """A minimal activation store of synthetic activations (no ground truth columns): hook ``synthetic``."""
    out = Path(out)
    shutil.rmtree(out, ignore_errors=True)
    (out / "chunks").mkdir(parents=True)
    names, counts = [], []
    for k, s in enumerate(range(0, len(acts), chunk)):
        d = out / "chunks" / f"{k:06d}"
        d.mkdir()
        a = acts[s:s + chunk].astype(np.float32)
        idx = np.arange(s, s + len(a))
        np.save(d / "synthetic.acts.npy", a)
        np.save(d / "synthetic.where.npy", np.stack([idx // tokens_per_image, idx % tokens_per_image,
                                                     np.zeros_like(idx)], 1).astype(np.int32))
        np.save(d / "synthetic.gt.npy", np.zeros((len(a), 0), np.float32))
        names.append(d.name)
        counts.append(len(a))
    manifest = {"format": FORMAT, "kind": "synthetic", "model": "sae_lens.synthetic", "dataset": "",
                "where_columns": ["image", "row", "col"], "columns": [], "concepts": [], "chunks": names,
                "hooks": {"synthetic": {"path": "", "meaning": "synthetic activations", "d_in": acts.shape[1],
                                        "n_tokens": len(acts), "chunk_tokens": counts, "stride": 0,
                                        "sha256": str(hash(acts.tobytes()))}}}
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def synthetic_check(out: str | Path, *, num_features: int = 48, hidden_dim: int = 24, firing_probability: float = 0.05,
                    width: int = 48, k: int = 4, tokens: int = 300_000, batch_size: int = 512, lr: float = 3e-3,
                    seed: int = 0, tolerance: float = 0.05) -> dict:
    """Train a TopK SAE with frobnolab's pipeline and with sae-lens's ``train_toy_sae`` on the same synthetic
    generator; returns both MCCs (also written to ``OUT/synthetic.json``)."""
    from sae_lens.synthetic import ActivationGenerator, FeatureDictionary
    from sae_lens.synthetic.evals import mean_correlation_coefficient
    from sae_lens.synthetic.training import train_toy_sae

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    fd = FeatureDictionary(num_features, hidden_dim, seed=seed)
    gen = ActivationGenerator(num_features, firing_probabilities=firing_probability, std_firing_magnitudes=0.1)
    with torch.no_grad():
        acts = fd(gen.sample(tokens)).numpy()
    store = write_synthetic_store(acts, out / "store")
    cfg = SAETrainConfig(hook="synthetic", architecture="topk", width=width, k=k, training_tokens=tokens,
                         batch_size=batch_size, lr=lr, normalize="none", checkpoints=0, seed=seed)
    train_sae(store, out / "frobnolab", cfg, progress=False, evaluate=False)
    ours = mean_correlation_coefficient(load_sae(out / "frobnolab").W_dec.detach(), fd.feature_vectors.detach())
    ref = training_sae(cfg, hidden_dim)
    import sae_lens.training.sae_trainer as tm
    from functools import partial

    saved, tm.tqdm = tm.tqdm, partial(tm.tqdm, disable=True)
    try:
        train_toy_sae(ref, fd, gen, training_samples=tokens, batch_size=batch_size, lr=lr)
    finally:
        tm.tqdm = saved
    theirs = mean_correlation_coefficient(ref.W_dec.detach(), fd.feature_vectors.detach())
    res = {"mcc_frobnolab": float(ours), "mcc_sae_lens_train_toy_sae": float(theirs),
           "passed": bool(ours >= theirs - tolerance), "tolerance": tolerance,
           "config": {"num_features": num_features, "hidden_dim": hidden_dim,
                      "firing_probability": firing_probability, "width": width, "k": k, "tokens": tokens,
                      "batch_size": batch_size, "lr": lr, "seed": seed}}
    tmp = out / f".synthetic.json.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(res, indent=1))
    os.replace(tmp, out / "synthetic.json")
    return res
