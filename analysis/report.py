"""The scoring report: Markdown with pictures (top-activating crops, the activation heatmap over them and the
matching ground-truth concept map beside them) for the top frobnoloids and the best feature of each concept."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from frobnolab.files import atomic_write

from . import concepts as C


def save_figure(fig, path: Path) -> Path:
    """A matplotlib figure as PNG at ``path`` (atomically), then closed."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, dpi=80, format="png")
    plt.close(fig)
    return atomic_write(path, buf.getvalue())


def model_feature_maps(store, hook: str, sae, images: list[int], features, model=None, batch: int = 8,
                       device: str | None = None) -> dict:
    """Full activation maps {image: {feature: (h, w)}} of ``features``: the model runs on each image and every
    token is encoded: the store keeps only a sample of each image's tokens (TAESD at 64 px: 64 of 256 positions), so
    maps drawn from it are mostly blank. Image models only."""
    from .probe import CausalProbe

    model = store.load_model(device or "cpu") if model is None else model
    device = device or str(next(model.parameters()).device)  # never moves a caller's model
    want = sorted(set(int(i) for i in images))
    cols = sorted(set(int(j) for j in features))
    out = {}
    for k in range(0, len(want), batch):
        ims = want[k:k + batch]
        t = CausalProbe(model, sae, store, hook, images=ims, device=device).clean_activation()  # (b, C, h, w)
        b, c, h, w = t.shape
        flat = t.permute(0, 2, 3, 1).reshape(-1, c).float()
        with torch.no_grad():
            f = torch.cat([sae.encode(flat[s:s + 8192])[:, cols] for s in range(0, len(flat), 8192)])
        f_bhwk = f.reshape(b, h, w, len(cols)).cpu().numpy()
        for i, im in enumerate(ims):
            out[im] = {j: f_bhwk[i, :, :, q] for q, j in enumerate(cols)}
    return out


def first_images(top_where, n: int = 4) -> list[tuple]:
    """The strongest token of each of the first ``n`` distinct images among a feature's top activations."""
    ex, seen = [], set()
    for x in top_where:
        if x[0] >= 0 and x[0] not in seen:
            seen.add(x[0])
            ex.append(tuple(x))
    return ex[:n]


def concept_map(ds, image: int, concept: str) -> np.ndarray:
    """A concept's per-pixel map for one image (categorical: class codes; a vector concept of
    ``variables.VECTORS``: an RGB image ``(H, W, 3)``: the image's colour as HSV, other vectors' components each
    scaled to [0, 1])."""
    from .variables import VECTORS

    name = concept.split("+")[0]
    if name in VECTORS:
        parts = [concept_map(ds, image, p) for p in VECTORS[name]]
        if name == "colour":  # hue is an angle in radians
            import matplotlib.colors as mcolors

            hsv = np.stack([np.mod(np.nan_to_num(parts[0]) / (2 * np.pi), 1), *parts[1:]], -1)
            return mcolors.hsv_to_rgb(np.clip(hsv, 0, 1)).astype(np.float32)
        x = np.nan_to_num(np.stack(parts, -1))
        return ((x - x.min()) / max(float(np.ptp(x)), 1e-12)).astype(np.float32)
    con = C.REGISTRY.get(name)
    if con is None or con.pixel is None:
        return np.zeros(ds.size)
    return np.asarray(con.pixel(C.pixel_inputs(ds, [image], [con])))[0].astype(np.float32)


def feature_figure(store, hook, sae, feature: int, top_where, concept: str, path: Path, maps=None) -> Path:
    """Top-activating crops of one feature: image, activation heatmap over it, concept map beside it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ds = store.dataset
    s = max(store[hook].stride, 1)
    h, w = ds.size
    ex = first_images(top_where)
    maps = maps or model_feature_maps(store, hook, sae, sorted({e[0] for e in ex}), [feature])
    fig, axes = plt.subplots(3, max(len(ex), 1), figsize=(2.1 * max(len(ex), 1), 6.3), squeeze=False)
    half = max(4 * s, 12)
    for col, (im, r, c) in enumerate(ex):
        rgb = np.asarray(ds["rgb"][im])
        heat = np.kron(maps[im][feature], np.ones((s, s)))
        cm = concept_map(ds, im, concept)
        cy, cx = r * s + s // 2, c * s + s // 2
        y0, x0 = int(np.clip(cy - half, 0, max(h - 2 * half, 0))), int(np.clip(cx - half, 0, max(w - 2 * half, 0)))
        win = (slice(y0, y0 + 2 * half), slice(x0, x0 + 2 * half))
        axes[0, col].imshow(rgb[win])
        axes[0, col].set_title(f"img {im}", fontsize=8)
        axes[1, col].imshow(rgb[win])
        axes[1, col].imshow(heat[win], cmap="inferno", alpha=0.6, vmin=0, vmax=max(float(heat.max()), 1e-6))
        axes[2, col].imshow(cm[win], cmap="viridis")
        for row in range(3):
            axes[row, col].axis("off")
    axes[1, 0].set_title("activation", fontsize=8, loc="left")
    axes[2, 0].set_title(f"best name: {concept}", fontsize=8, loc="left")
    fig.suptitle(f"feature {feature}", fontsize=9)
    return save_figure(fig, path)


def understood_lines(u: dict | None) -> list[str]:
    """The report's "understood share" section (``scoring/understood.py``)."""
    if not u:
        return []
    lines = ["## Understood share", ""]
    if not u.get("measured"):
        return lines + [f"Not measured: {u.get('why', '')}.", ""]
    sh, rec, loss = u["understood"], u["recovered"], u["losses"]
    lines += [f"Every feature replaced, at each of {u['tokens']} tokens of {u['images']} held-out images, by what a "
              "predictor of it says from the exact ground truth; the share of what the features contribute beyond "
              "their means that survives: (L_mean - L) / (L_mean - L_sae). Null: the descriptions dealt to the "
              f"wrong features ({len(u['null']['shares'])} shuffles), 95th percentile {u['null95']:.3f}.", "",
              "| features replaced by | understood share | loss recovered vs zero layer | loss |",
              "| --- | --- | --- | --- |",
              f"| (the SAE's own) | 1 | 1 | {loss['sae']:.5f} |"]
    label = {"descriptions": "their descriptions", "named": "their best named concept or pair",
             "scene": "an MLP of all the ground truth"}
    for k in sh:
        lines.append(f"| {label.get(k, k)} | {sh[k]:.3f} | {rec[k]:.3f} | {loss[k]:.5f} |")
    lines += [f"| shuffled descriptions (null 95%) | {u['null95']:.3f} | | |",
              f"| their means | 0 | {rec['mean']:.3f} | {loss['mean']:.5f} |",
              f"| zero (layer ablated) | | 0 | {loss['zero']:.5f} |", "",
              f"The descriptions {'beat' if u['beats_null'] else 'do not beat'} the null."]
    if "scene" in sh:
        lines.append(f"What the ground truth explains and no name does, as a share of the output: scene - named = "
                     f"{sh['scene'] - sh['named']:.3f}.")
    lines.append("")
    return lines


def fdr_lines(fdr: dict | None, table: dict) -> list[str]:
    """The false-discovery paragraph: how many live features were tested against nulls of their own firing rate and
    how many survive Benjamini-Hochberg, for the gap, the named match and the scene R^2."""
    if not fdr:
        return []
    cand = int(np.sum(np.asarray(table["candidate"], bool)))
    return ["## False discoveries", "",
            f"Each of the {fdr['tested']} live features is tested against the random directions of its own firing "
            f"rate (median {fdr['null_matched_median']:.0f} nulls each); q-values by Benjamini-Hochberg over all "
            f"of them. At q <= {fdr['q_level']}: {fdr['discoveries_gap']} gaps (unnamed and real beyond chance), "
            f"{fdr['discoveries_named']} named matches, {fdr['discoveries_scene']} scene R2s. "
            f"Frobnoloid candidates (gap > {fdr.get('candidate_gap', 0.2)}, q <= {fdr['q_level']}, causal above its "
            f"null): {cand}.", ""] + _tail_lines(fdr)


def _tail_lines(fdr: dict) -> list[str]:
    """How the p-values past the matched nulls' resolution were made, and their calibration on the nulls."""
    if not fdr.get("tail"):
        return ["p-values are empirical only: none is below 1/(1 + its matched nulls).", ""]
    cal = fdr.get("null_calibration_gap", {})
    return [f"Where fewer than 10 matched nulls reach a feature's gap, its p-value comes from a generalised Pareto "
            f"tail fitted to the largest matched nulls (exponential where the fit is bounded; at most a decade "
            f"below the empirical resolution). Empirical p-values alone give {fdr.get('discoveries_gap_empirical')} "
            f"gap discoveries. Calibration (each null tested against the others in the same way): "
            f"{100 * cal.get('p_le_0.01', float('nan')):.1f}% of {cal.get('nulls', 0)} nulls reach p <= 0.01, "
            f"{100 * cal.get('p_le_0.05', float('nan')):.1f}% reach p <= 0.05.", ""]


def baseline_lines(cmp: dict, n_concepts: int = 12) -> list[str]:
    """The report's "Baselines" section from ``baseline_table.comparison``: a row per dictionary, then the concepts
    the layer holds most (by its supervised ceiling) with each dictionary's coverage and its features named by the
    concept beyond chance."""
    rows = cmp["dictionaries"]
    if not rows:
        return []
    q = rows[0]["q_level"]
    lines = ["## Baselines (the same scorer, tokens and nulls)", "",
             f"Every dictionary is scored like the SAE on the same held-out tokens and tested against the same null "
             f"features. Named / gaps beyond chance: features whose q-value (Benjamini-Hochberg, nulls of their own "
             f"firing rate) is at most {q}.", "",
             "| dictionary | features (alive) | FVU held out | MCC | mean coverage | named beyond chance | gaps beyond "
             "chance | candidates | understood (descriptions) |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['dictionary']} | {r['features']} ({r['alive']}) | {r['fvu_test']:.3f} | {r['mcc']:.3f} | "
                     f"{r['coverage_mean']:.3f} | {r['named_discoveries']} ({100 * r['named_share']:.0f}%) | "
                     f"{r['gap_discoveries']} | {r['candidates']} | {r['understood_descriptions']:.3f} |")
    names = [r["dictionary"] for r in rows]
    top = sorted(cmp["concepts"].items(), key=lambda kv: -np.nan_to_num(kv[1]["ceiling"], nan=-1))[:n_concepts]
    lines += ["", "Coverage (best feature's eta^2) and features named by the concept beyond chance, for the concepts "
              "the layer holds most (ceiling: a kernel ridge probe from the whole layer, cross-validated):", "",
              "| concept | ceiling | " + " | ".join(names) + " |", "| --- | --- | " + " | ".join("---" for _ in names) + " |"]
    for c, e in top:
        cells = [f"{e['coverage'].get(n, float('nan')):.2f} ({e['above_null'].get(n, 0)})" for n in names]
        lines.append(f"| {c} | {e['ceiling']:.2f} | " + " | ".join(cells) + " |")
    return lines + [""]


def replace_section(report: Path, lines: list[str]) -> Path:
    """Put a section (``lines``, starting with its ``## `` title) into a written report: in place of the section of
    that title, else at the end."""
    text = Path(report).read_text().rstrip("\n").split("\n")
    title = lines[0]
    if title in text:
        i = text.index(title)
        j = next((k for k in range(i + 1, len(text)) if text[k].startswith("## ")), len(text))
        text = text[:i] + lines + text[j:]
    else:
        text = text + [""] + lines
    return atomic_write(report, "\n".join(text).rstrip("\n") + "\n")


def write_report(table: dict, summary: dict, store, hook: str, sae, out: Path, n_top: int = 8, model=None,
                 device: str | None = None) -> Path:
    out = Path(out)
    fig_dir = out / "figures"
    fig_dir.mkdir(exist_ok=True)
    frob = np.asarray(table["frob"], float)
    top = [int(j) for j in np.argsort(-frob)[:n_top] if frob[j] > 0]
    per_concept = summary["dictionary"]["coverage"]
    named = sorted({v["feature"] for v in per_concept.values() if v["r2"] > 0.1})
    pictures = store.domain.crops
    wanted = sorted(set(top) | set(named))
    if pictures and wanted:
        ims = sorted({int(x[0]) for j in wanted for x in first_images(table["top_where"][j])})
        maps = model_feature_maps(store, hook, sae, ims, wanted, model=model, device=device)
        for j in wanted:
            feature_figure(store, hook, sae, j, table["top_where"][j], str(table["named_concept"][j]),
                           fig_dir / f"feature_{j}.png", maps)
    d = summary["dictionary"]
    n = summary["nulls95"]
    lines = [f"# Feature scores: {summary['sae']} on {hook}", "",
             f"{summary['tokens']} held-out tokens, {summary['features']} features ({summary['alive']} alive), "
             f"{summary['n_null']} random-direction null features.", "",
             "| dictionary | value |", "| --- | --- |",
             f"| MCC (features vs ground-truth columns) | {d['mcc']:.3f} |",
             f"| MIG vs scene factors | {d.get('mig', float('nan')):.3f} |"]
    for k, v in d.get("dci", {}).items():
        lines.append(f"| DCI {k} | {v:.3f} |")
    if "stability" in d:
        lines.append(f"| stability across seeds | {d['stability']:.3f} |")
    lines += ["", "Null 95th percentiles: " + ", ".join(f"{k} {v:.3f}" for k, v in n.items()), ""]
    lines += fdr_lines(summary.get("fdr"), table)
    lines += understood_lines(summary.get("understood"))
    lines += [
              "## Top frobnoloids (real, important, unnamed)", "",
              "| feature | frob [90% CI] | gap (q) | scene R2 | best named (R2) | best pair (R2) | causal | lands on |"
              " candidate |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for j in top:
        ci = f"[{table['frob_lo'][j]:.2f}, {table['frob_hi'][j]:.2f}]" if np.isfinite(table["frob_lo"][j]) else ""
        causal = table["causal"][j] if np.isfinite(table["causal"][j]) else table["causal_est"][j]
        q = table["q_value"][j] if "q_value" in table else float("nan")
        lines.append(f"| {j} | {frob[j]:.3f} {ci} | {table['gap'][j]:.3f} ({q:.3f}) | {table['scene_r2'][j]:.3f} | "
                     f"{table['named_concept'][j]} ({table['named_r2'][j]:.3f}) | {table['pair'][j]} "
                     f"({table['pair_r2'][j]:.3f}) | {causal:.3f} | {table['lands_on'][j]} | "
                     f"{'yes' if table['candidate'][j] else 'no'} |")
    if not top:
        lines.append("| (none beat the nulls) | | | | | | | | |")
    widths = [table["frob_hi"][j] - table["frob_lo"][j] for j in top if np.isfinite(table["frob_lo"][j])]
    if widths:
        lines += ["", f"90% intervals: {summary['config']['bootstrap']} bootstrap resamples of the held-out images "
                  f"(the predictors are not refitted, so the intervals leave their own variance out); widths "
                  f"{min(widths):.3f} to {max(widths):.3f}, median {float(np.median(widths)):.3f}."]
    if top:
        lines += ["", "What they compute (the best short formula of the named ground truth, cross-validated R2):", ""]
        lines += [f"- feature {j}: `{table['description'][j]}` (R2 {table['description_r2'][j]:.3f})" for j in top]
    if pictures:
        lines += [""] + [f"![feature {j}](figures/feature_{j}.png)" for j in top]
    lines += ["", "## Best feature per concept", "", "| concept | feature | eta^2 (cv) | what it computes (R2) |",
              "| --- | --- | --- | --- |"]
    for name, v in sorted(per_concept.items(), key=lambda kv: -kv[1]["r2"]):
        f = v["feature"]
        lines.append(f"| {name} | {f} | {v['r2']:.3f} | `{table['description'][f]}` "
                     f"({table['description_r2'][f]:.3f}) |")
    if pictures:
        lines += [""] + [f"![feature {j}](figures/feature_{j}.png)" for j in named]
    return atomic_write(out / "report.md", "\n".join(lines) + "\n")
