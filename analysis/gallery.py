"""The feature gallery: the content of a scored run as pictures, for the notebook (``analysis/gallery.ipynb``) and
as a self-contained static HTML site (``frobnolab gallery RUN --out DIR``: no server, nothing fetched).

For each shown feature: top-activating crops with the activation heatmap over them and the matching ground-truth
concept maps beside them; the activation histogram; the concept-match bars (cross-validated eta^2 per concept)
with the random-direction null; the causal ablation (model output before / after ablating the feature / the change
of the error against the optimal output); for coordinate fields, a slice through the 3D activation field next to
the same slice of the scene's signed distance. Where the scores folder has counterfactual responses
(``responses.parquet``, :mod:`frobnolab.analysis.counterfactual`), the index shows their heatmap and one line per
factor, and each feature page the factors it responds to.
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
from .report import feature_figure, feature_maps, save_figure
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
    def spliced_output(self) -> torch.Tensor:
        """The probe's output with the SAE spliced in (the "before" of every ablation panel)."""
        with torch.no_grad():
            return self.probe.output(self.probe.splice())

    @cached_property
    def probe(self):
        """A causal probe on the first held-out image (for the ablation panels)."""
        from .probe import CausalProbe

        return CausalProbe(self.model, self.sae, self.store, self.hook, n_images=1)


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


def ablation_figure(run: Run, feature: int, path: Path) -> Path | None:
    """Model output with the SAE spliced in, with the feature ablated, and the change of the error (image models)."""
    plt = _mpl()
    probe = run.probe
    with torch.no_grad():
        before = run.spliced_output
        after = probe.ablated_output(feature)
    x = probe.target[0].permute(1, 2, 0).numpy()
    b, a = before[0].permute(1, 2, 0).clamp(0, 1).numpy(), after[0].permute(1, 2, 0).clamp(0, 1).numpy()
    diff = ((a - x) ** 2).sum(-1) - ((b - x) ** 2).sum(-1)
    fig, axes = plt.subplots(1, 4, figsize=(8, 2.3), constrained_layout=True)
    lim = max(float(np.abs(diff).max()), 1e-6)
    for ax, img, title in zip(axes, (x, b, a), ("optimal (input)", "with SAE", f"feature {feature} ablated")):
        ax.imshow(img)
        ax.set_title(title, fontsize=8)
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


def feature_figures(run: Run, feature: int, folder: Path, maps=None) -> dict[str, Path]:
    """Every picture of one feature, as PNG files in ``folder``: {kind: path}."""
    if not 0 <= int(feature) < len(run.table["feature"]):
        raise UnknownNameError(f"unknown feature {feature} (the SAE has features 0..{len(run.table['feature']) - 1})")
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    figures = run.store.domain.figures
    if "crops" in figures:
        out["crops"] = feature_figure(run.store, run.hook, run.sae, feature, run.table["top_where"][feature],
                                      str(run.table["named_concept"][feature]), folder / f"f{feature}_crops.png", maps)
    out["histogram"] = histogram_figure(run, feature, folder / f"f{feature}_hist.png")
    out["concepts"] = concept_bars_figure(run, feature, folder / f"f{feature}_concepts.png")
    for kind, fn in (("ablation", ablation_figure), ("slice", field_slice_figure)):
        if kind in figures:
            out[kind] = fn(run, feature, folder / f"f{feature}_{kind}.png")
    return out


# ------------------------------------------------------------------------------------------------------- static site

_CSS = """body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse}
th,td{padding:3px 8px;border-bottom:1px solid #ddd;text-align:right}th{cursor:pointer;background:#f4f4f4}
td.s{text-align:left}tr.cand{background:#fff4e0}.controls{margin:1em 0}.controls label{margin-right:1.5em}
img{max-width:100%;border:1px solid #eee;margin:4px}a{color:#1a5fb4}"""

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


def build_gallery(run_path: str | Path, out: str | Path, n_pages: int = 24, progress: bool = True) -> Path:
    """Write the static gallery of a scored run into ``out`` (index.html + one page per shown feature)."""
    from tqdm.auto import tqdm

    run = load_run(run_path)
    out = Path(out)
    with atomic_folder(out, replace=True) as tmp:
        (tmp / "img").mkdir()
        shown = shown_features(run, n_pages)
        maps = None
        if run.store.domain.crops:
            ims = sorted({int(x[0]) for j in shown for x in run.table["top_where"][j] if x[0] >= 0})
            maps = feature_maps(run.store, run.hook, run.sae, ims)
        pages = {}
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
        for j in tqdm(shown, desc="gallery", disable=not progress):
            figs = feature_figures(run, j, tmp / "img", maps)
            t = {c: _clean(run.table[c][j]) for c in TABLE_COLUMNS}
            facts = "".join(f"<tr><th>{html.escape(k)}</th><td class='s'>{html.escape(str(v))}</td></tr>"
                            for k, v in t.items())
            imgs = "".join(f"<h3>{html.escape(k)}</h3><img alt='{html.escape(k)}' src='img/{p.name}'>"
                           for k, p in figs.items())
            what = (f"<h2>What it computes</h2><p><code>{html.escape(str(t['description']))}</code> "
                    f"(cross-validated R<sup>2</sup> {t['description_r2']})</p>")
            if resp is not None:
                what += responds_block(by_feature.get(j), explained.get(j, ""), bool(t["candidate"]))
            page = (f"<!doctype html><html><head><meta charset='utf-8'><title>feature {j}</title><style>{_CSS}</style>"
                    f"</head><body><p><a href='index.html'>&larr; all features</a></p><h1>Feature {j}</h1>"
                    f"<p>{title}</p>{what}<table>{facts}</table>{imgs}</body></html>")
            (tmp / f"feature_{j}.html").write_text(page)
            pages[j] = f"feature_{j}.html"
        n = len(run.table["feature"])
        rows = [{**{c: _clean(run.table[c][j]) for c in TABLE_COLUMNS}, "page": pages.get(j, "")} for j in range(n)
                if run.table["freq"][j] > 0 or j in pages]
        data = json.dumps(rows).replace("</", "<\\/")  # no "</script>" can close the data block early
        head = "".join(f"<th data-k='{c}'>{html.escape(c)}</th>" for c in TABLE_COLUMNS)
        d = run.summary["dictionary"]
        index = (f"<!doctype html><html><head><meta charset='utf-8'><title>frobnolab gallery</title>"
                 f"<style>{_CSS}</style></head><body><h1>Feature gallery</h1><p>{title}: {run.summary['tokens']} "
                 f"held-out tokens, {run.summary['alive']} of {run.summary['features']} features alive, MCC "
                 f"{d['mcc']:.3f}. Rows in orange are frobnoloid candidates. Click a header to sort.</p>"
                 f"<div class='controls'><label>concept <input id='concept' placeholder='e.g. depth'></label>"
                 f"<label>min frobnoloid score <input id='minfrob' type='number' step='0.01' value='0'></label>"
                 f"<label><input id='cand' type='checkbox'> candidates only</label><span id='count'></span></div>"
                 f"<table id='features'><thead><tr>{head}</tr></thead><tbody></tbody></table>{section}"
                 f"<script id='data' type='application/json'>{data}</script>"
                 f"<script>const COLS={json.dumps(list(TABLE_COLUMNS))};{_JS}</script></body></html>")
        (tmp / "index.html").write_text(index)

    return out
