"""The feature gallery: the content of a scored run as pictures, for the notebook (``analysis/gallery.ipynb``) and
as a self-contained static HTML site (``frobnolab gallery RUN --out DIR``: no server, nothing fetched).

The index holds the sortable table of every alive feature and the feature map (``analysis/feature_map.py``: a
2-D embedding of the decoder directions coloured by best concept or frobnoloid score, every point a link). Every
alive feature gets a page: its scores, description, "What the verdict is about" (scene R^2, best name and their gap
against every bar the gap must clear), activation histogram, concept bars, "Responds to", verdict, best match on
the other model and its nearby features (the 5 closest decoder directions, ``W_dec``). The shown features
(:func:`shown_features`, ``n_pages``) also get the costly pictures, the others draw histogram and bars as inline
SVG. For each shown feature: crops at the top, middle (median) and low (10th percentile of the nonzero)
activations with the activation heatmap over them (full maps: the model is run on each image shown, not only the
store's sample of its tokens) and the map of the best named concept beside them; the activation histogram; the
concept-match bars (cross-validated eta^2 per concept) with the random-direction null; the causal ablation and the
painting panel on the image of the feature's own strongest example (model output before / after ablating the
feature / the change of the error against the optimal output); for coordinate fields, a slice through the 3D
activation field next to the same slice of the scene's signed distance. Where the scores folder has counterfactual responses
(``responses.parquet``, :mod:`frobnolab.analysis.counterfactual`), the index shows their heatmap and one line per
factor, and each feature page the factors it responds to. Where it has ``verdicts.json``
(:mod:`frobnolab.analysis.verdict`), the index shows the "Frobnoloid verdicts" table and each candidate's page its
verdict and checks; where its run folder has ``compare/compare.json`` (:mod:`frobnolab.analysis.compare`) naming it
as one side, the index links a page of shared and model-specific features and each page shows its best match.
"""

from __future__ import annotations

import html
import json
import shutil
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from frobnolab.errors import UnknownNameError
from frobnolab.files import atomic_folder

from .counterfactual import explained_by, per_feature, read_responses
from .feature_map import map_section
from .report import feature_figure, model_feature_maps, save_figure
from .score import read_table
from .store import ActivationStore

TABLE_COLUMNS = ("feature", "freq", "named_concept", "named_r2", "pair", "pair_r2", "description",
                 "description_r2", "scene_r2", "auroc", "causal", "causal_est", "gap", "frob", "candidate", "lands_on")


class Run:
    """A scored run: the scores folder, its table and summary; its store, SAE, model, dataset, held-out activations
    and probe are loaded once, when first asked for."""

    def __init__(self, scores: Path, table: dict, summary: dict):
        self.scores, self.table, self.summary = scores, table, summary

    @cached_property
    def store(self) -> ActivationStore:
        return ActivationStore(self.summary["store"])

    @property
    def hook(self) -> str:
        return self.summary["hook"]

    @cached_property
    def sae(self):
        """The scored SAE, or the baseline dictionary (``frobnolab score --baseline``) that stands in for one."""
        if self.summary.get("baseline"):
            from .baselines import load_baseline

            return load_baseline(Path(self.summary["sae"]).parent)
        from .sae import load_sae

        return load_sae(self.summary["sae"])

    @cached_property
    def model(self):
        return self.store.load_model()

    @property
    def dataset(self):
        return self.store.dataset

    @cached_property
    def held_out_acts(self) -> np.ndarray:
        """Up to 50,000 held-out activations of the hook (for histograms)."""
        return self.store[self.hook].activations("test", max_tokens=50_000)

    @cached_property
    def held_out_codes(self):
        """The SAE's features on :attr:`held_out_acts`, encoded once (sparse columns: CSC)."""
        from .probe import to_csr

        with torch.no_grad():
            return to_csr(self.sae.encode(torch.from_numpy(self.held_out_acts))).tocsc()

    @cached_property
    def held_out_where(self) -> np.ndarray:
        """Where each of :attr:`held_out_acts` is (image, row, col, ...), in the same order."""
        return np.concatenate([c.where for c in self.store[self.hook].chunks("test", parts=("acts", "where"),
                                                                              max_tokens=50_000)])

    @cached_property
    def decoder_cosine(self) -> np.ndarray:
        """Cosine similarity ``(F, F)`` between the features' decoder directions (the rows of ``W_dec``)."""
        w = self.sae.W_dec.detach().float().cpu().numpy()
        w = w / np.maximum(np.linalg.norm(w, axis=1, keepdims=True), 1e-12)
        return w @ w.T


def load_run(path: str | Path, which: str = "scores") -> Run:
    """A run folder (``runs/NAME`` with ``scores/``) or a scores folder itself."""
    path = Path(path)
    scores = path if (path / "features.parquet").exists() else path / which
    if not (scores / "features.parquet").exists():
        raise FileNotFoundError(f"{path}: no scored run here (no features.parquet in {scores})")
    table = read_table(scores / "features.parquet")
    n = len(table["feature"])
    # tables scored before the descriptions existed still show (with the description empty)
    table.setdefault("description", np.array([""] * n, dtype=object))
    table.setdefault("description_r2", np.full(n, np.nan))
    return Run(scores, table, json.loads((scores / "summary.json").read_text()))


def shown_features(run: Run, n: int = 24) -> list[int]:
    """The features worth a page: top frobnoloids, the best feature of each concept, the most frequent."""
    t = run.table
    freq, frob = np.asarray(t["freq"], float), np.asarray(t["frob"], float)
    picks = [int(j) for j in np.argsort(-frob)[: n // 3] if frob[j] > 0]
    picks += [v["feature"] for v in run.summary["dictionary"]["coverage"].values() if v["r2"] > 0]
    picks += [int(j) for j in np.argsort(-freq)[: n // 3] if freq[j] > 0]
    return list(dict.fromkeys(picks))[:n]


def _mpl():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def histogram_figure(run: Run, feature: int, path: Path) -> Path:
    plt = _mpl()
    f = run.held_out_codes[:, feature].toarray()[:, 0]
    fig, ax = plt.subplots(figsize=(4, 2.6), constrained_layout=True)
    nz = f[f > 0]
    ax.hist(nz if len(nz) else [0], bins=40, color="#4c72b0")
    ax.set_yscale("log")
    ax.set_title(f"activation when firing ({len(nz) / max(len(f), 1):.1%} of held-out tokens)", fontsize=8)
    ax.set_xlabel("activation", fontsize=8)
    return save_figure(fig, path)


def concept_bars_figure(run: Run, feature: int, path: Path) -> Path:
    plt = _mpl()
    single = run.summary["single_r2"]
    names = sorted(single, key=lambda k: -np.nan_to_num(single[k][feature], nan=-1))[:12]
    vals = [np.nan_to_num(single[k][feature], nan=0) for k in names]
    fig, ax = plt.subplots(figsize=(4, 3), constrained_layout=True)
    ax.barh(names[::-1], vals[::-1], color="#55a868")
    null = run.summary["nulls95"]["named_r2"]
    ax.axvline(null, color="k", ls="--", lw=1, label=f"null 95% ({null:.2f})")
    scene = run.table["scene_r2"][feature]
    ax.axvline(scene, color="#c44e52", lw=1.5, label=f"scene R2 ({scene:.2f})")
    ax.set_xlim(min(0, min(vals)), 1)
    ax.set_title("concept match (cross-validated eta^2)", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7, loc="lower right")
    return save_figure(fig, path)


def ablation_figure(run: Run, feature: int, path: Path, painter) -> Path:
    """Model output with the SAE spliced in, with the feature ablated, and the change of the error against the
    optimal output, on the image of ``painter`` (a :class:`~frobnolab.analysis.paint.Painter`, on the feature's
    strongest held-out example: :func:`example_painter`)."""
    plt = _mpl()
    probe, image = painter.probe, painter.image
    with torch.no_grad():
        before, after = torch.from_numpy(painter.before)[None], probe.ablated_output(feature)
    x = probe.target[0].permute(1, 2, 0).numpy()
    b, a = before[0].permute(1, 2, 0).clamp(0, 1).numpy(), after[0].permute(1, 2, 0).clamp(0, 1).numpy()
    diff = ((a - x) ** 2).sum(-1) - ((b - x) ** 2).sum(-1)
    fig, axes = plt.subplots(1, 4, figsize=(8, 2.3), constrained_layout=True)
    lim = max(float(np.abs(diff).max()), 1e-6)
    for ax, img, title in zip(axes, (x, b, a), (f"optimal: image {image}", "with SAE",
                                                f"feature {feature} ablated")):
        ax.imshow(img)
        ax.set_title(title, fontsize=7)
        ax.axis("off")
    im = axes[3].imshow(diff, cmap="RdBu_r", vmin=-lim, vmax=lim)
    axes[3].set_title("change of squared error", fontsize=8)
    axes[3].axis("off")
    fig.colorbar(im, ax=axes[3], fraction=0.046)
    return save_figure(fig, path)


def field_slice_figure(run: Run, feature: int, path: Path, res: int = 64) -> Path | None:
    """For coordinate fields: the feature over a horizontal slice through the scene, beside the SDF there."""
    from frobnolab.models.hooks import capture
    from frobnolab.scenes.queries import SceneQuery

    plt = _mpl()
    model, sae = run.model, run.sae
    lo, hi = np.array(model.config.aabb[0]), np.array(model.config.aabb[1])
    y = 0.25
    xs, zs = np.linspace(lo[0], hi[0], res), np.linspace(lo[2], hi[2], res)
    X, Z = np.meshgrid(xs, zs)
    pts = np.stack([X.ravel(), np.full(X.size, y), Z.ravel()], 1)
    path_mod = run.store[run.hook].meta["path"]
    with torch.no_grad(), capture(model.hook_root, [path_mod]) as acts:
        p = torch.as_tensor(pts, dtype=torch.float32)
        model(p, torch.nn.functional.normalize(torch.ones_like(p), dim=-1))
        f = sae.encode(acts[path_mod])[:, feature].numpy().reshape(res, res)
    sdf = SceneQuery(run.dataset.scene(0)).sdf(pts).reshape(res, res)
    fig, axes = plt.subplots(1, 2, figsize=(6, 2.8), constrained_layout=True)
    ext = (lo[0], hi[0], hi[2], lo[2])
    axes[0].imshow(f, extent=ext, cmap="inferno")
    axes[0].set_title(f"feature {feature} at y = {y}", fontsize=8)
    axes[1].imshow(sdf, extent=ext, cmap="RdBu", vmin=-0.5, vmax=0.5)
    axes[1].contour(X, Z, sdf, levels=[0], colors="k", linewidths=0.8)
    axes[1].set_title("signed distance (same slice)", fontsize=8)
    return save_figure(fig, path)


QUANTILES = (("top", None), ("middle", 0.5), ("low", 0.1))  # (band, quantile of the nonzero activations)


def quantile_examples(run: Run, feature: int, q: float) -> tuple[np.ndarray, float]:
    """Held-out tokens where ``feature`` fires near the ``q`` quantile of its nonzero activations, nearest first
    (rows of :attr:`Run.held_out_where`), and that quantile's activation."""
    col = run.held_out_codes[:, feature]
    rows, vals = col.indices, col.data
    keep = vals > 0
    rows, vals = rows[keep], vals[keep]
    if not len(vals):
        return np.zeros((0, 3), np.int64), float("nan")
    at = float(np.quantile(vals, q))
    order = np.argsort(np.abs(vals - at), kind="stable")
    return run.held_out_where[rows[order]], at


PAINT_STRENGTHS = (("set", 0.0), ("add", 1.0), ("add", 3.0))
"""The painting panel's edits (op, value in units of the feature's largest held-out activation), over the whole
image of the feature's strongest example."""


def example_painter(run: Run, feature: int):
    """A :class:`~frobnolab.analysis.paint.Painter` on the image of the feature's strongest held-out example (image
    models; None when the feature never fires held out)."""
    from .paint import Painter
    from .report import first_images

    ex = first_images(run.table["top_where"][feature], 1)
    if not ex or run.store.domain.name != "image":
        return None
    return Painter(run.scores, int(ex[0][0]), "all", reference_tokens=5000, sae=run.sae, model=run.model)


def painting_figure(run: Run, feature: int, path: Path, painter=None) -> Path | None:
    """The feature painted on the image of its strongest held-out example (``analysis/paint.py``, the SAE spliced
    in): the output before and after each of :data:`PAINT_STRENGTHS`, with locality's neighbour, the change of mean
    luma, and how far the edited tokens lie from the training activations."""
    p = painter if painter is not None else example_painter(run, feature)
    if p is None:
        return None
    plt = _mpl()
    fig, axes = plt.subplots(1, 1 + len(PAINT_STRENGTHS), figsize=(2.1 * (1 + len(PAINT_STRENGTHS)), 2.4),
                             constrained_layout=True)
    axes[0].imshow(p.before.transpose(1, 2, 0))
    axes[0].set_title(f"image {p.image}, SAE spliced", fontsize=7)
    for ax, (op, v) in zip(axes[1:], PAINT_STRENGTHS):
        r = p.edit([feature], op, v)
        ax.imshow(r.pop("after_image").transpose(1, 2, 0))
        dl = r["after"]["inside"]["luma"] - r["before"]["inside"]["luma"]
        ax.set_title(f"{op} {v:g} x max: luma {dl:+.3f}\n|change| {r['mean_abs_change']['inside']:.3f}, off-dist "
                     f"{r['distribution']['edited_over_clean_nn_distance']:.1f}x", fontsize=7)
    for ax in axes:
        ax.axis("off")
    return save_figure(fig, path)


def feature_figures(run: Run, feature: int, folder: Path, maps=None, quantiles: bool = False) -> dict[str, Path]:
    """Every picture of one feature, as PNG files in ``folder``: {kind: path}; with ``quantiles``, crops of the
    middle and low (nonzero) activations too, beside the top ones."""
    if not 0 <= int(feature) < len(run.table["feature"]):
        raise UnknownNameError(f"unknown feature {feature} (the SAE has features 0..{len(run.table['feature']) - 1})")
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    figures = run.store.domain.figures
    if "crops" in figures and maps is None:  # every band's crops from one pass of the model
        maps = model_feature_maps(run.store, run.hook, run.sae, sorted(example_images(run, feature, quantiles) - {-1}),
                                  [feature], model=run.model)
    if "crops" in figures:
        concept = str(run.table["named_concept"][feature])
        for band, q in QUANTILES if quantiles else QUANTILES[:1]:
            if q is None:
                where, kind = run.table["top_where"][feature], "crops"
            else:
                where, at = quantile_examples(run, feature, q)
                kind = f"crops, {band} activations ({q:.0%} quantile of the nonzero, {_num(at, '.3g')})"
                if not len(where):
                    continue
            name = "crops" if q is None else f"crops_{band}"
            out["crops, top activations" if quantiles and q is None else kind] = feature_figure(
                run.store, run.hook, run.sae, feature, where, concept, folder / f"f{feature}_{name}.png", maps)
    out["histogram"] = histogram_figure(run, feature, folder / f"f{feature}_hist.png")
    out["concepts"] = concept_bars_figure(run, feature, folder / f"f{feature}_concepts.png")
    painter = example_painter(run, feature) if "crops" in figures else None  # image models: ablate and paint
    if "ablation" in figures and painter is not None:
        out["ablation"] = ablation_figure(run, feature, folder / f"f{feature}_ablation.png", painter)
    if "slice" in figures:
        out["slice"] = field_slice_figure(run, feature, folder / f"f{feature}_slice.png")
    if painter is not None:
        out["painting (set to 0, add 1 and 3 times its largest activation, everywhere)"] = painting_figure(
            run, feature, folder / f"f{feature}_paint.png", painter)
    return out


def example_images(run: Run, feature: int, quantiles: bool = True, n: int = 4) -> set[int]:
    """The images the crops of ``feature`` show (top, and with ``quantiles`` middle and low)."""
    from .report import first_images

    ims = {int(x[0]) for x in first_images(run.table["top_where"][feature], n)}
    for _, q in QUANTILES[1:] if quantiles else ():
        ims |= {int(x[0]) for x in first_images(quantile_examples(run, feature, q)[0], n)}
    return ims


def histogram_svg(run: Run, feature: int, bins: int = 40) -> str:
    """The activation histogram as inline SVG (no matplotlib: for the pages without the costly figures)."""
    col = run.held_out_codes[:, feature]
    nz = col.data[col.data > 0]
    share = len(nz) / max(run.held_out_codes.shape[0], 1)
    W, H, pad = 400, 150, 22
    counts, edges = np.histogram(nz if len(nz) else [0.0], bins=bins)
    top = np.log10(max(int(counts.max()), 1) + 1)
    bw = (W - 2 * pad) / bins
    bars = "".join(
        f"<rect x='{pad + i * bw:.1f}' y='{H - pad - h:.1f}' width='{bw - 1:.1f}' height='{h:.1f}' fill='#4c72b0'>"
        f"<title>{edges[i]:.3g} to {edges[i + 1]:.3g}: {int(c)}</title></rect>"
        for i, c in enumerate(counts) for h in [(H - 2 * pad) * np.log10(c + 1) / top])
    return (f"<svg class='hist' width='{W}' height='{H}' role='img'><title>histogram</title>"
            f"<text x='{pad}' y='14' font-size='11'>activation when firing ({share:.1%} of held-out tokens; "
            f"log count)</text>{bars}<text x='{pad}' y='{H - 6}' font-size='10'>{edges[0]:.3g}</text>"
            f"<text x='{W - pad}' y='{H - 6}' font-size='10' text-anchor='end'>{edges[-1]:.3g}</text></svg>")


def concept_bars_svg(run: Run, feature: int, n: int = 12) -> str:
    """The concept-match bars (cross-validated eta^2, the null's 95th percentile, the scene R^2) as inline SVG."""
    single = run.summary["single_r2"]
    names = sorted(single, key=lambda k: -np.nan_to_num(single[k][feature], nan=-1))[:n]
    vals = [float(np.nan_to_num(single[k][feature], nan=0)) for k in names]
    W, left, row = 400, 130, 16
    H = 44 + row * len(names)
    x = lambda v: left + (W - left - 10) * min(max(v, 0.0), 1.0)  # noqa: E731
    bars = "".join(
        f"<text x='{left - 4}' y='{38 + i * row + 11}' font-size='10' text-anchor='end'>{html.escape(k)}</text>"
        f"<rect x='{left}' y='{38 + i * row}' width='{x(v) - left:.1f}' height='{row - 3}' fill='#55a868'>"
        f"<title>{html.escape(k)}: {v:.3f}</title></rect>" for i, (k, v) in enumerate(zip(names, vals)))
    null, scene = float(run.summary["nulls95"]["named_r2"]), _clean(run.table["scene_r2"][feature])
    lines = f"<line x1='{x(null):.1f}' x2='{x(null):.1f}' y1='34' y2='{H}' stroke='#000' stroke-dasharray='4 3'/>"
    if scene is not None:
        lines += f"<line x1='{x(scene):.1f}' x2='{x(scene):.1f}' y1='34' y2='{H}' stroke='#c44e52' stroke-width='1.5'/>"
    return (f"<svg class='concepts' width='{W}' height='{H}' role='img'><title>concept match</title>"
            f"<text x='4' y='14' font-size='11'>concept match (cross-validated eta^2)</text><text x='4' y='28' "
            f"font-size='10'>dashed: null 95% ({null:.2f}); red: scene R2 ({_num(scene, '.2f')})</text>{bars}{lines}"
            "</svg>")


# ------------------------------------------------------------------------------------------------------- static site

_CSS = """body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse}
th,td{padding:3px 8px;border-bottom:1px solid #ddd;text-align:right}th{cursor:pointer;background:#f4f4f4}
td.s{text-align:left}tr.cand{background:#fff4e0}.controls{margin:1em 0}.controls label{margin-right:1.5em}
img{max-width:100%;border:1px solid #eee;margin:4px}a{color:#1a5fb4}.legend{margin:4px 0 1em}
.key{margin-right:1em;font-size:12px;white-space:nowrap}.key i{display:inline-block;width:10px;height:10px;
margin-right:4px;border-radius:50%}"""

_JS = """const rows=JSON.parse(document.getElementById('data').textContent);
let key='frob',desc=true;
function esc(s){return String(s).replace(/[&<>"']/g,c=>({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;',"'":'&#39;'}[c]))}
function fmt(v){return typeof v==='number'?(Number.isInteger(v)?v:v.toFixed(3)):esc(v)}
function render(){const q=document.getElementById('concept').value.toLowerCase();
const mf=parseFloat(document.getElementById('minfrob').value)||0;const oc=document.getElementById('cand').checked;
const r=rows.filter(x=>(!q||[x.named_concept,x.pair,x.description].some(s=>String(s).toLowerCase().includes(q)))
&&(x.frob>=mf)&&(!oc||x.candidate));
r.sort((a,b)=>{const u=a[key],v=b[key];const c=(u>v)-(u<v);return desc?-c:c});
const cols=COLS;const tb=document.querySelector('#features tbody');
tb.innerHTML=r.map(x=>'<tr class="'+(x.candidate?'cand':'')+'">'+cols.map(c=>{
const v=c==='feature'&&x.page?'<a href="'+esc(x.page)+'">'+x.feature+'</a>':fmt(x[c]);
return '<td class="'+(typeof x[c]==='string'?'s':'')+'">'+v+'</td>'}).join('')+'</tr>').join('');
document.getElementById('count').textContent=r.length+' of '+rows.length+' features'}
document.querySelectorAll('#features th').forEach(th=>th.onclick=()=>{const k=th.dataset.k;
desc=(key===k)?!desc:true;key=k;render()});
['concept','minfrob','cand'].forEach(i=>document.getElementById(i).oninput=render);render();"""


def _clean(v):
    if isinstance(v, (float, np.floating)):
        return None if not np.isfinite(v) else round(float(v), 4)
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.bool_,)):
        return bool(v)
    return v


def _num(v, fmt: str = ".3f") -> str:
    return format(float(v), fmt) if v is not None and np.isfinite(float(v)) else "n/a"


def responses_section(summary: dict, figure: str | None) -> str:
    """The index page's "Counterfactual responses" section (HTML): the heatmap and one line per factor."""
    cfg = summary.get("config", {})
    lines = "".join(
        f"<li><code>{html.escape(str(f['factor']))}</code>: {int(f['responding'])} of {int(summary['alive'])} "
        f"features responding, {int(f['explained'])} explained by it (null 95th pct effect "
        f"{_num(f['null95_effect'])}; {int(f['pairs'])} token pairs, truth changed at "
        f"{_num(100 * float(f['changed_share']), '.0f')}%)</li>" for f in summary["factors"])
    img = (f"<img alt='feature x factor counterfactual responses' src='img/{html.escape(figure)}'>"
           if figure else "")
    return (f"<h2>Counterfactual responses</h2><p>Each factor was moved alone and the scene re-rendered. Effect: "
            f"mean |delta activation| between a rung and its base, in units of the feature's standard deviation, "
            f"against {int(summary['n_null'])} random directions at matching firing rates; responding at "
            f"q &le; {html.escape(str(cfg.get('q_level', 'n/a')))}; explained by a factor when it carries "
            f"&ge; {_num(summary['selective_bar'], '.2f')} of the feature's summed effect and beats its nulls.</p>"
            f"{img}<ul>{lines}</ul>")


def responds_block(rows: list[dict] | None, explained: str, candidate: bool, top: int = 5) -> str:
    """A feature page's "Responds to" block (HTML): its strongest factors (at most ``top``) and the verdict."""
    if rows is None:
        return "<h2>Responds to</h2><p>Does not fire on the counterfactual ladders (not measured).</p>"
    sign = lambda v: ("n/a" if not np.isfinite(v) else "rises" if v > 0 else "falls" if v < 0  # noqa: E731
                      else "no net direction")
    head = "".join(f"<th>{h}</th>" for h in ("factor", "effect", "null 95th pct", "local", "distant",
                                             "with the factor", "selectivity", "q"))
    body = "".join(
        f"<tr><td class='s'><code>{html.escape(str(r['factor']))}</code></td><td>{_num(r['effect'])}</td>"
        f"<td>{_num(r['null95'])}</td><td>{_num(r['local'])}</td><td>{_num(r['distant'])}</td>"
        f"<td class='s'>{sign(r['sign'])}</td><td>{_num(r['selectivity'], '.2f')}</td>"
        f"<td>{_num(r['q'], '.3g')}</td></tr>" for r in rows[:top])
    verdict = (f"<p class='verdict'>explained by <code>{html.escape(explained)}</code></p>" if explained else
               "<p class='verdict'>no single factor explains it</p>" if candidate else "")
    return f"<h2>Responds to</h2><table class='responds'><tr>{head}</tr>{body}</table>{verdict}"


def gap_block(run: Run, feature: int, bars: dict | None = None) -> str:
    """A feature page's "What the verdict is about": the feature's scene R^2 (what its exact ground truth
    explains), its best name (single concept, pair or description) and their difference, the gap, with the gap's
    bars: the candidate rule's threshold, the pooled random directions' 95th percentile (for reference: the rule
    tests the gap against random directions of the feature's own firing rate, by q-value) and, from
    ``verdicts.json``, the random model's and each baseline's 95th percentile, which a frobnoloid must clear."""
    t, s = run.table, run.summary
    scene, named, gap = (_clean(t[c][feature]) for c in ("scene_r2", "named_best" if "named_best" in t else
                                                         "named_r2", "gap"))
    fdr = s.get("fdr", {})
    marks = {"candidate threshold": fdr.get("candidate_gap"),
             "random directions (pooled) 95%": _clean(s["nulls95"].get("gap"))}
    marks.update({f"{k.replace(' gap', '')} 95%": v for k, v in (bars or {}).items()
                  if k.endswith("gap") and v is not None})
    marks = {k: float(v) for k, v in marks.items() if v is not None and np.isfinite(float(v))}
    W, left, row = 520, 150, 22
    rows = (("scene R2 (real)", scene, "#c44e52"), ("best name", named, "#55a868"), ("gap", gap, "#8172b3"))
    H = 30 + row * len(rows) + 14 * len(marks)
    x = lambda v: left + (W - left - 170) * min(max(float(v), 0.0), 1.0)  # noqa: E731
    body = "".join(
        f"<text x='{left - 6}' y='{26 + i * row + 12}' font-size='11' text-anchor='end'>{html.escape(name)}</text>"
        + (f"<rect x='{left}' y='{26 + i * row}' width='{x(v) - left:.1f}' height='{row - 6}' fill='{col}'/>"
           f"<text x='{x(v) + 4:.1f}' y='{26 + i * row + 12}' font-size='10'>{v:.3f}</text>" if v is not None else
           f"<text x='{left}' y='{26 + i * row + 12}' font-size='10'>n/a</text>")
        for i, (name, v, col) in enumerate(rows))
    y_gap = 26 + 2 * row
    ticks = "".join(
        f"<line x1='{x(v):.1f}' x2='{x(v):.1f}' y1='{y_gap - 3}' y2='{y_gap + row - 3 + 14 * (k + 1)}' "
        f"stroke='#000' stroke-dasharray='3 2'/><text x='{x(v) + 3:.1f}' y='{y_gap + row + 14 * (k + 1) - 4}' "
        f"font-size='9'>{html.escape(name)}: {v:.3f}</text>" for k, (name, v) in enumerate(marks.items()))
    p = _clean(t["p_gap"][feature]) if "p_gap" in t else None
    q = _clean(t["q_value"][feature]) if "q_value" in t else None
    frob_bar = (bars or {}).get("random model frob")
    frob_line = f" (and its frobnoloid score the random model's, {_num(frob_bar)})" if frob_bar is not None else ""
    status = ("It is a frobnoloid candidate" if bool(t["candidate"][feature]) else "It is not a candidate")
    return (f"<h2>What the verdict is about</h2><p>The gap is what the scene's exact ground truth explains of this "
            f"feature (scene R<sup>2</sup>) and no name, pair of names or short formula of names does (best name). "
            f"A candidate is real (scene R<sup>2</sup> above its floor), has a gap above the candidate threshold "
            f"({_num(fdr.get('candidate_gap'), '.2f')}) with a q-value at most {_num(fdr.get('q_level'), '.2f')} "
            f"against random directions of its own firing rate, and a causal effect beyond the causal null; a "
            f"frobnoloid's gap must also clear the random model's and every baseline's 95th percentile"
            f"{frob_line}"
            f". This feature's gap: p {_num(p, '.3g')}, q {_num(q, '.3g')}. {status}.</p>"
            f"<svg class='gap' width='{W}' height='{H}'><title>gap</title>{body}{ticks}</svg>")


def nearby_block(run: Run, feature: int, pages: dict, n: int = 5) -> str:
    """A feature page's "Nearby features": the ``n`` features whose decoder directions are closest (cosine)."""
    cos = run.decoder_cosine[feature].copy()
    cos[feature] = -np.inf
    near = [int(k) for k in np.argsort(-cos, kind="stable")[:n]]
    rows = "".join(
        f"<tr><td>{_link(k, pages)}</td><td>{cos[k]:.3f}</td>"
        f"<td class='s'>{html.escape(str(run.table['named_concept'][k]))}</td><td>{_num(run.table['named_r2'][k])}</td>"
        f"<td>{_num(run.table['freq'][k], '.4f')}</td></tr>" for k in near)
    return ("<h2>Nearby features</h2><p>The features with the most similar decoder directions (cosine of "
            "<code>W_dec</code> rows).</p><table class='nearby'><tr><th>feature</th><th>decoder cosine</th>"
            f"<th>named concept</th><th>named R<sup>2</sup></th><th>freq</th></tr>{rows}</table>")


def _link(feature: int, pages: dict) -> str:
    return f"<a href='{pages[feature]}'>{int(feature)}</a>" if feature in pages else str(int(feature))


def _checks(checks: dict) -> str:
    return ", ".join(f"{html.escape(str(k))} {'ok' if ok else 'FAIL'}" for k, ok in checks.items()) or "none run"


def verdicts_section(v: dict, pages: dict) -> str:
    """The index page's "Frobnoloid verdicts" table (``verdicts.json``, :mod:`frobnolab.analysis.verdict`)."""
    rows = "".join(
        f"<tr class='cand'><td>{_link(r['feature'], pages)}</td><td>{_num(r['gap'])}</td><td>{_num(r['q_value'])}"
        f"</td><td>{_num(r['frob'])}</td><td class='s'>{_checks(r['checks'])}</td>"
        f"<td class='s'>{html.escape(str(r['verdict']))}</td></tr>" for r in v.get("candidates", []))
    bars = ", ".join(f"{html.escape(str(k))} {_num(b)}" for k, b in v.get("bars", {}).items() if b is not None)
    found = ", ".join(_link(j, pages) for j in v.get("frobnoloids", [])) or "none"
    table = (f"<table id='verdicts'><tr><th>feature</th><th>gap</th><th>q</th><th>frob</th><th>checks</th>"
             f"<th>verdict</th></tr>{rows}</table>" if rows else "<p>No candidates.</p>")
    return (f"<h2>Frobnoloid verdicts</h2><p>Each candidate against the random-initialised model, each baseline and "
            f"the counterfactuals; a frobnoloid passes every check, with every check run."
            f"{' Bars: ' + bars + '.' if bars else ''}</p>{table}<p>Frobnoloids: {found}.</p>")


def verdict_block(r: dict) -> str:
    """A candidate's page: its verdict and each check."""
    checks = "".join(f"<li>{html.escape(str(k))}: {'ok' if ok else 'FAIL'}</li>" for k, ok in r["checks"].items())
    cf = r.get("counterfactual")
    return (f"<h2>Verdict</h2><p class='verdict'>{html.escape(str(r['verdict']))}</p><p>gap {_num(r['gap'])}, "
            f"q {_num(r['q_value'])}, frobnoloid score {_num(r['frob'])}"
            f"{'; counterfactuals: ' + html.escape(str(cf)) if cf is not None else ''}</p>"
            f"<ul class='checks'>{checks or '<li>no check was run</li>'}</ul>")


def read_compare(scores: Path) -> tuple[dict, str] | None:
    """``compare/compare.json`` of the scores folder's run folder and which side (a or b) this folder is."""
    f = scores.parent / "compare" / "compare.json"
    if not f.exists():
        return None
    c = json.loads(f.read_text())
    for side in "ab":
        if Path(str(c.get(side, {}).get("scores", ""))).name == scores.name:
            return c, side
    return None


def _side(c: dict, side: str) -> str:
    s = c[side]
    return html.escape(f"{s.get('scores', side)} ({s.get('hook', '?')})")


def compare_page(c: dict, side: str, pages: dict, title: str) -> str:
    """The "shared and model-specific features" page: every matched feature of both sides."""
    other = "b" if side == "a" else "a"
    parts = []
    for s in (side, other):
        o = "b" if s == "a" else "a"
        rows = sorted(c.get(f"features_{s}", []), key=lambda r: (not r.get("shared"), -float(r.get("corr") or 0)))
        body = "".join(
            f"<tr><td>{_link(r['feature'], pages) if s == side else int(r['feature'])}</td>"
            f"<td class='s'>{html.escape(str(r.get('concept', '')))}</td><td>{int(r['match'])}</td>"
            f"<td class='s'>{html.escape(str(r.get('match_concept', '')))}</td><td>{_num(r.get('corr'))}</td>"
            f"<td>{_num(r.get('p'), '.3g')}</td><td class='s'>{'shared' if r.get('shared') else 'specific'}</td></tr>"
            for r in rows)
        n_sh = sum(bool(r.get("shared")) for r in rows)
        parts.append(f"<h2>{'This model' if s == side else 'The other model'}: {_side(c, s)}</h2>"
                     f"<p>{n_sh} of {len(rows)} features shared (best match on {_side(c, o)} beyond the rotated-image "
                     f"null), {len(rows) - n_sh} model-specific.</p><table><tr><th>feature</th><th>concept</th>"
                     f"<th>best match</th><th>its concept</th><th>r</th><th>p</th><th></th></tr>{body}</table>")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>shared and model-specific features</title>"
            f"<style>{_CSS}</style></head><body><p><a href='index.html'>&larr; all features</a></p>"
            f"<h1>Shared and model-specific features</h1><p>{title}</p>{''.join(parts)}</body></html>")


def match_block(r: dict, c: dict, side: str) -> str:
    """A feature page's best match on the other model of ``compare.json``."""
    other = "b" if side == "a" else "a"
    kind = "shared" if r.get("shared") else "model-specific"
    return (f"<h2>On the other model</h2><p class='match'>best match on {_side(c, other)}: feature "
            f"{int(r['match'])} (<code>{html.escape(str(r.get('match_concept', '')))}</code>), r = "
            f"{_num(r.get('corr'))}, p {_num(r.get('p'), '.3g')}: <b>{kind}</b>. "
            f"<a href='compare.html'>all shared and model-specific features</a></p>")


def feature_map_html(run: Run, pages: dict | None = None) -> str:
    """The feature map of every alive feature (``analysis/feature_map.py``) as HTML, its points linking to
    ``pages`` ({feature: page}; the notebook shows it without links)."""
    alive = np.flatnonzero(np.asarray(run.table["freq"], float) > 0)
    t = run.table
    return map_section(alive, run.sae.W_dec.detach().float().cpu().numpy()[alive],
                       [str(t["named_concept"][j]) for j in alive], np.asarray(t["named_r2"], float)[alive],
                       np.asarray(t["frob"], float)[alive], np.asarray(t["candidate"], bool)[alive], pages or {})


def build_gallery(run_path: str | Path, out: str | Path, n_pages: int = 24, progress: bool = True,
                  every_alive: bool = True) -> Path:
    """Write the static gallery of a scored run into ``out``: index.html and one page per alive feature (with
    ``every_alive``; else only the shown ones). The ``n_pages`` shown features (:func:`shown_features`) get the
    costly figures (crops at the top, middle and low activations, ablation, slice) as PNG; every other page draws
    its histogram and concept bars as inline SVG."""
    from tqdm.auto import tqdm

    run = load_run(run_path)
    out = Path(out)
    n = len(run.table["feature"])
    freq = np.asarray(run.table["freq"], float)
    with atomic_folder(out, replace=True) as tmp:
        (tmp / "img").mkdir()
        shown = shown_features(run, n_pages)
        paged = list(dict.fromkeys(shown + ([j for j in range(n) if freq[j] > 0] if every_alive else [])))
        pages = {j: f"feature_{j}.html" for j in paged}
        maps = None
        if run.store.domain.crops:
            ims = sorted(set().union(*[example_images(run, j) for j in shown]) - {-1})
            maps = model_feature_maps(run.store, run.hook, run.sae, ims, shown, model=run.model)
        title = html.escape(f"{run.summary['sae']} on {run.hook}")
        resp = read_responses(run.scores)
        section = ""
        if resp is not None:
            rtable, rsummary = resp
            by_feature = per_feature(rtable)
            explained = explained_by(rtable)
            heat = run.scores / "figures" / "responses.png"
            if heat.exists():
                shutil.copyfile(heat, tmp / "img" / "responses.png")
            section = responses_section(rsummary, "responses.png" if heat.exists() else None)
        vfile = run.scores / "verdicts.json"
        verdicts = json.loads(vfile.read_text()) if vfile.exists() else None
        verdict_of = {int(r["feature"]): r for r in verdicts["candidates"]} if verdicts else {}
        compare = read_compare(run.scores)
        match_of = {}
        links = ""
        if compare is not None:
            c, side = compare
            match_of = {int(r["feature"]): r for r in c.get(f"features_{side}", [])}
            (tmp / "compare.html").write_text(compare_page(c, side, pages, title))
            links = ("<p><a href='compare.html'>shared and model-specific features</a> (matched against "
                     f"{_side(c, 'b' if side == 'a' else 'a')})</p>")
        full = set(shown)
        for j in tqdm(paged, desc="gallery", disable=not progress):
            t = {c: _clean(run.table[c][j]) for c in TABLE_COLUMNS}
            facts = "".join(f"<tr><th>{html.escape(k)}</th><td class='s'>{html.escape(str(v))}</td></tr>"
                            for k, v in t.items())
            if j in full:
                figs = feature_figures(run, j, tmp / "img", maps, quantiles=True)
                imgs = "".join(f"<h3>{html.escape(k)}</h3><img alt='{html.escape(k)}' src='img/{p.name}'>"
                               for k, p in figs.items())
            else:
                imgs = (f"<h3>histogram</h3>{histogram_svg(run, j)}<h3>concepts</h3>{concept_bars_svg(run, j)}"
                        "<p>(crops and ablation are drawn for the shown features only: "
                        "<code>frobnolab gallery --pages N</code>)</p>")
            what = (f"<h2>What it computes</h2><p><code>{html.escape(str(t['description']))}</code> "
                    f"(cross-validated R<sup>2</sup> {t['description_r2']})</p>")
            if j in verdict_of:
                what = verdict_block(verdict_of[j]) + what
            if resp is not None:
                what += responds_block(by_feature.get(j), explained.get(j, ""), bool(t["candidate"]))
            if j in match_of:
                what += match_block(match_of[j], *compare)
            what += gap_block(run, j, verdicts.get("bars") if verdicts else None)
            what += nearby_block(run, j, pages)
            page = (f"<!doctype html><html><head><meta charset='utf-8'><title>feature {j}</title><style>{_CSS}</style>"
                    f"</head><body><p><a href='index.html'>&larr; all features</a></p><h1>Feature {j}</h1>"
                    f"<p>{title}</p>{what}<table>{facts}</table>{imgs}</body></html>")
            (tmp / pages[j]).write_text(page)
        rows = [{**{c: _clean(run.table[c][j]) for c in TABLE_COLUMNS}, "page": pages.get(j, "")} for j in range(n)
                if freq[j] > 0 or j in pages]
        data = json.dumps(rows).replace("</", "<\\/")  # no "</script>" can close the data block early
        head = "".join(f"<th data-k='{c}'>{html.escape(c)}</th>" for c in TABLE_COLUMNS)
        d = run.summary["dictionary"]
        vsec = verdicts_section(verdicts, pages) if verdicts is not None else ""
        fmap = feature_map_html(run, pages)
        index = (f"<!doctype html><html><head><meta charset='utf-8'><title>frobnolab gallery</title>"
                 f"<style>{_CSS}</style></head><body><h1>Feature gallery</h1><p>{title}: {run.summary['tokens']} "
                 f"held-out tokens, {run.summary['alive']} of {run.summary['features']} features alive, MCC "
                 f"{d['mcc']:.3f}. Rows in orange are frobnoloid candidates. Click a header to sort.</p>{links}"
                 f"<div class='controls'><label>concept <input id='concept' placeholder='e.g. depth'></label>"
                 f"<label>min frobnoloid score <input id='minfrob' type='number' step='0.01' value='0'></label>"
                 f"<label><input id='cand' type='checkbox'> candidates only</label><span id='count'></span></div>"
                 f"<table id='features'><thead><tr>{head}</tr></thead><tbody></tbody></table>{fmap}{vsec}{section}"
                 f"<script id='data' type='application/json'>{data}</script>"
                 f"<script>const COLS={json.dumps(list(TABLE_COLUMNS))};{_JS}</script></body></html>")
        (tmp / "index.html").write_text(index)

    return out
