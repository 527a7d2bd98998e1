"""A sweep of SAEs on one store (widths x sparsities x architectures) and its sparsity-fidelity frontier.

Each run lands in ``OUT/<architecture>-w<width>-<k or sparsity>/`` (resumable like any SAE run); ``OUT/frontier.json``
collects their held-out metrics and ``OUT/frontier.png`` plots L0 against explained variance and against output
fidelity (zero-ablation baseline), one line per architecture and width.
"""

from __future__ import annotations

import dataclasses
import json
import os
from itertools import product
from pathlib import Path

from .sae import SAETrainConfig, train_sae

TOPK_FAMILY = ("topk", "batchtopk", "matryoshka_batchtopk")


def sweep_configs(base: SAETrainConfig, architectures, widths, ks, sparsities) -> list[tuple[str, SAETrainConfig]]:
    """(run name, config) for the grid: the TopK family sweeps k, the others sweep the sparsity coefficient."""
    runs = []
    for arch, width in product(architectures, widths):
        levels = ks if arch in TOPK_FAMILY else sparsities
        for level in levels:
            if arch in TOPK_FAMILY:
                if level > width:
                    continue
                cfg = dataclasses.replace(base, architecture=arch, width=width, k=int(level))
                runs.append((f"{arch}-w{width}-k{int(level)}", cfg))
            else:
                cfg = dataclasses.replace(base, architecture=arch, width=width, sparsity=float(level))
                runs.append((f"{arch}-w{width}-s{level:g}", cfg))
    return runs


def run_sweep(store: str | Path, out: str | Path, runs: list[tuple[str, SAETrainConfig]], *, model=None,
              progress: bool = True) -> list[dict]:
    from tqdm.auto import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, cfg in tqdm(runs, desc="sweep", disable=not progress):
        rec = train_sae(store, out / name, cfg, model=model, progress=False)
        ev = rec["evaluation"]
        rows.append({"run": name, "architecture": cfg.architecture, "width": cfg.width, "k": cfg.k,
                     "sparsity": cfg.sparsity, "l0": ev["l0"], "explained_variance": ev["explained_variance"],
                     "fidelity_zero": ev["fidelity_zero"], "fidelity_mean": ev["fidelity_mean"],
                     "dead_fraction": ev["dead_fraction"], "mse": ev["mse"]})
    tmp = out / f".frontier.json.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(rows, indent=1))
    os.replace(tmp, out / "frontier.json")
    plot_frontier(rows, out / "frontier.png")
    return rows


def plot_frontier(rows: list[dict], path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["architecture"], r["width"]), []).append(r)
    for (arch, width), rs in sorted(groups.items()):
        rs = sorted(rs, key=lambda r: r["l0"])
        for ax, key in zip(axes, ("explained_variance", "fidelity_zero")):
            ax.plot([r["l0"] for r in rs], [r[key] for r in rs], "o-", label=f"{arch}, width {width}")
    for ax, title in zip(axes, ("explained variance (held-out tokens)", "output fidelity vs zero ablation")):
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("L0 (active latents per token)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path
