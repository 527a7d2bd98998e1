"""Exact counterfactual responses: what every feature does when exactly one scene factor moves.

A counterfactual dataset (``frobnolab counterfactual``, :mod:`frobnolab.scenes.counterfactual`) holds ladders:
image ``b * R + r`` is rung r of base scene b, and only the named factor differs between the rungs of one base. A
store extracted on it therefore holds, for every token position of a base, the activation at each rung, and the
exact ground truth of both sides. For each feature and factor (one :class:`Ladder` per factor):

- ``effect``: mean |delta activation| between rung r and rung 0 at the same token, over every rung and token, in
  units of the feature's standard deviation over the ladders (so the factors, whose units differ, are compared by
  what their sweep does to the feature, and features by the same yardstick);
- ``per_unit``: mean |delta activation| / |delta factor|, in the feature's own units per unit of the factor (the
  exact response of the issue; the factor's units: degrees of hue, world units of size, ...);
- ``local`` and ``distant``: the effect at tokens whose ground truth changed between the two rungs (any stored
  column moved by more than ``ResponseConfig.changed_tol``) and at tokens whose ground truth did not (a response at a
  distance: through the receptive field, or a feature of the whole image);
- ``sign``: the sign of the summed delta activation times the sign of delta factor (+1: the feature rises with the
  factor);
- ``selectivity``: this factor's effect over the sum of the effects of all the factors swept;
- ``p`` and ``q``: the effect against random directions thresholded to a matching firing rate
  (:func:`frobnolab.analysis.scoring.nulls.directions`, the same null the scorer uses), Benjamini-Hochberg over every
  (feature, factor) test.

A feature is **explained by** a factor when that factor carries at least ``selective`` of the feature's summed
effect and its effect there beats the matched nulls (``p <= explain_p``, uncorrected: being explained is the
sceptical verdict, it takes a frobnoloid candidate away). The features **responding** to a factor (the report's
counts) are those with ``q <= q_level`` after Benjamini-Hochberg. A frobnoloid candidate explained by one factor is not a frobnoloid (:func:`verdicts`): it answers to a
single named cause of the scene, however the correlational vocabulary missed it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from frobnolab.files import write_json

from .scoring import nulls as N


@dataclass(frozen=True)
class ResponseConfig:
    """How counterfactual responses are measured."""

    n_null: int = 1024
    """Random directions thresholded to the features' firing rates; their responses are the null."""
    changed_tol: float = 1e-6
    """A token's ground truth changed between two rungs when any stored column moved by more than this."""
    selective: float = 0.6
    """A feature is explained by a factor when that factor carries at least this share of the feature's summed
    effect (and its response beats the null). Random directions can be selective too (a sparse mixture that fires
    on one object's colour answers to that colour), so their largest share is reported, not used as a bar."""
    q_level: float = 0.1
    """False-discovery level of the responses (Benjamini-Hochberg over every feature and factor): the features
    counted as responding to a factor."""
    explain_p: float = 0.05
    """A feature's response to the factor that explains it must beat its matched nulls at this level (uncorrected:
    being explained is the sceptical direction, it takes a frobnoloid candidate away, so it is not made harder by
    the number of tests)."""
    null_window: float = 2.0
    """Nulls within this factor of a feature's firing rate are its matched nulls (at least ``null_min_matched``)."""
    null_min_matched: int = 50
    """The fewest matched nulls a feature is tested against."""
    seed: int = 0
    """Seed of the null directions."""


@dataclass
class Ladder:
    """The tokens of one counterfactual dataset at one hook point.

    acts ``(N, d)`` the model's activations; gt ``(N, G)`` their ground truth; where ``(N, 3)`` (image, row, col);
    per image: base ``(I,)``, rung ``(I,)`` and value ``(I,)`` of the factor (indexed by image number)."""

    factor: str
    acts: np.ndarray
    gt: np.ndarray
    where: np.ndarray
    base: np.ndarray
    rung: np.ndarray
    value: np.ndarray

    @classmethod
    def from_store(cls, store, hook: str) -> "Ladder":
        """The ladder of a store extracted on a counterfactual dataset (every split: the ladder is the unit)."""
        ds = store.dataset
        cf = getattr(ds, "counterfactual", None)
        if not cf:
            raise ValueError(f"{store.path}: its dataset {ds.path} is not a counterfactual dataset (make one with "
                             "frobnolab counterfactual)")
        if store.domain.name != "image":
            raise ValueError(f"{store.path}: counterfactual responses are for image models (domain "
                             f"{store.domain.name!r})")
        factor = cf["factor"]
        if factor not in ds.factor_names:
            raise ValueError(f"{ds.path}: manifest's counterfactual factor {factor!r} has no column in factors.npy")
        images = np.arange(len(ds))
        tok = store[hook]
        chunks = list(tok.chunks("all"))
        if not chunks:
            raise ValueError(f"{store.path}: hook {hook} has no tokens")
        cat = lambda part: np.concatenate([getattr(c, part) for c in chunks])  # noqa: E731
        R = int(cf["rungs"])
        return cls(factor, cat("acts"), cat("gt"), cat("where"), images // R, images % R,
                   ds.factors[:, ds.factor_names.index(factor)].astype(np.float64))

    def pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """Token indices ``(ref (P,), alt (P,))``: each token of a rung r > 0 and the same position of its base's
        rung 0 (positions missing from either side are skipped)."""
        img = self.where[:, 0].astype(np.int64)
        key = np.stack([self.base[img], self.where[:, 1], self.where[:, 2]]).astype(np.int64)
        key = np.ravel_multi_index(key, key.max(1) + 1)
        is_ref = self.rung[img] == 0
        ref_idx = np.flatnonzero(is_ref)
        order = np.argsort(key[ref_idx], kind="stable")
        ref_sorted, ref_idx = key[ref_idx][order], ref_idx[order]
        alt = np.flatnonzero(~is_ref)
        pos = np.minimum(np.searchsorted(ref_sorted, key[alt]), max(len(ref_sorted) - 1, 0))
        ok = (ref_sorted[pos] == key[alt]) if len(ref_sorted) else np.zeros(len(alt), bool)
        return ref_idx[pos[ok]], alt[ok]


def _ladder_stats(z_NF: np.ndarray, scale_F: np.ndarray, ladder: Ladder, ref, alt, changed_P) -> dict:
    """Per-column response statistics of one ladder (see the module's docstring), each ``(F,)``."""
    img = ladder.where[:, 0].astype(np.int64)
    dv = ladder.value[img[alt]] - ladder.value[img[ref]]  # (P,)
    moved = np.isfinite(dv) & (dv != 0)
    ref, alt, dv, changed = ref[moved], alt[moved], dv[moved], changed_P[moved]
    F = z_NF.shape[1]
    if not len(ref):
        nan = np.full(F, np.nan)
        return {"effect": nan, "per_unit": nan, "local": nan, "distant": nan, "sign": nan}
    dz = z_NF[alt] - z_NF[ref]  # (P, F)
    adz = np.abs(dz)
    safe = np.where(scale_F > 0, scale_F, np.nan)
    mean = lambda rows: adz[rows].mean(0) / safe if rows.any() else np.full(F, np.nan)  # noqa: E731
    return {"effect": adz.mean(0) / safe,
            "per_unit": (adz / np.abs(dv)[:, None]).mean(0),
            "local": mean(changed), "distant": mean(~changed),
            "sign": np.sign(dz.T @ np.sign(dv))}


def responses(ladders: list[Ladder], encode, n_features: int, cfg: ResponseConfig | None = None) -> tuple[dict, dict]:
    """Every feature's response to every ladder's factor, beside the null; ``(table, summary)``.

    encode: activations ``(n, d)`` -> features ``(n, F)`` (numpy or torch). The table is long: one row per (feature,
    factor) for the features that fire on the ladders at all, columns ``feature, factor, effect, per_unit, local,
    distant, sign, selectivity, null95, p, q, explained_by``."""
    import torch

    cfg = cfg or ResponseConfig()
    if not ladders:
        raise ValueError("no counterfactual ladders to measure")
    factors = [lad.factor for lad in ladders]
    if len(set(factors)) != len(factors):
        raise ValueError(f"one ladder per factor, got {factors}")
    d = {lad.acts.shape[1] for lad in ladders}
    if len(d) != 1:
        raise ValueError(f"the ladders' activations differ in width: {sorted(d)}")

    def enc(a):
        z = encode(a)
        return (z.double().numpy() if torch.is_tensor(z) else np.asarray(z, np.float64))

    z_all = [enc(lad.acts) for lad in ladders]  # (N_k, F) each
    z_cat = np.concatenate(z_all)
    acts_cat = np.concatenate([lad.acts for lad in ladders]).astype(np.float64)
    rate_F = (z_cat > 0).mean(0)
    alive = np.flatnonzero(rate_F > 0)
    rng = np.random.default_rng(cfg.seed)
    U, tau, proj = N.directions(acts_cat, rate_F, cfg.n_null, rng)
    null_rate = (proj > tau).mean(0)
    scale = np.concatenate([z_cat.std(0), np.maximum(proj - tau, 0).std(0)])
    del z_cat, proj

    stats = []  # per factor: dict of (F + R,) arrays
    for lad, z in zip(ladders, z_all):
        ref, alt = lad.pairs()
        g = np.nan_to_num(lad.gt.astype(np.float64))
        changed = (np.abs(g[alt] - g[ref]) > cfg.changed_tol).any(1)
        zn = np.maximum(lad.acts.astype(np.float64) @ U - tau, 0)
        stats.append(_ladder_stats(np.concatenate([z, zn], 1), scale, lad, ref, alt, changed)
                     | {"changed_share": float(changed.mean()) if len(changed) else float("nan"),
                        "pairs": int(len(ref))})
    K, F = len(ladders), n_features
    effect = np.stack([s["effect"] for s in stats], 1)  # (F + R, K)
    total = np.nansum(effect, 1, keepdims=True)
    select = np.where(total > 0, effect / np.where(total > 0, total, 1), np.nan)
    real, null = slice(0, F), slice(F, None)
    null95 = np.array([N.q95(effect[null, k]) for k in range(K)])
    p = np.full((F, K), np.nan)
    for k in range(K):
        p[:, k] = N.matched_p_values(effect[real, k], rate_F, effect[null, k], null_rate, cfg.null_window,
                                     cfg.null_min_matched)[0]
    p[rate_F == 0] = np.nan
    q = N.benjamini_hochberg(p.ravel()).reshape(F, K)
    with np.errstate(all="ignore"):  # dead nulls have no selectivity
        null_select95 = N.q95(np.nanmax(np.where(np.isnan(select[null]), -1, select[null]), 1)) if K > 1 else 1.0
    bar = cfg.selective
    top = np.argmax(np.nan_to_num(select[real], nan=-1), 1)
    top_sel = select[real][np.arange(F), top]
    explained = (np.nan_to_num(top_sel) >= bar) & (np.nan_to_num(p[np.arange(F), top], nan=1) <= cfg.explain_p)
    explained_by = np.where(explained, np.asarray(factors, object)[top], "")

    rows = {k: [] for k in ("feature", "factor", "effect", "per_unit", "local", "distant", "sign", "selectivity",
                            "null95", "p", "q", "explained_by")}
    for j in alive:
        for k, name in enumerate(factors):
            s = stats[k]
            for col, val in (("feature", int(j)), ("factor", name), ("effect", effect[j, k]),
                             ("per_unit", s["per_unit"][j]), ("local", s["local"][j]),
                             ("distant", s["distant"][j]), ("sign", s["sign"][j]), ("selectivity", select[j, k]),
                             ("null95", null95[k]), ("p", p[j, k]), ("q", q[j, k]),
                             ("explained_by", explained_by[j])):
                rows[col].append(val)
    table = {k: np.asarray(v, object if k in ("factor", "explained_by") else None) for k, v in rows.items()}
    responding = (q <= cfg.q_level)
    summary = {
        "factors": [{"factor": name, "pairs": stats[k]["pairs"], "changed_share": stats[k]["changed_share"],
                     "null95_effect": float(null95[k]),
                     "responding": int(np.sum(responding[alive, k])),
                     "explained": int(np.sum(explained_by[alive] == name))} for k, name in enumerate(factors)],
        "alive": int(len(alive)), "n_features": int(F), "n_null": int(cfg.n_null),
        "null_selectivity95": float(null_select95), "selective_bar": float(bar),
        "explained": int(explained[alive].sum()),
        "null_responding": [float(np.mean(effect[null, k] > null95[k])) for k in range(K)],
        # how many (feature, factor) tests beat their matched nulls at 5% at all, beside the 5% chance gives
        "p05": {"tests": int(np.isfinite(p[alive]).sum()), "observed": int(np.sum(p[alive] <= 0.05)),
                "expected_by_chance": float(0.05 * np.isfinite(p[alive]).sum())},
        "config": asdict(cfg),
    }
    return table, summary


def per_feature(table: dict) -> dict[int, list[dict]]:
    """{feature: its factors, strongest first, each {factor, effect, selectivity, q, local, distant, sign, null95}}."""
    out: dict[int, list[dict]] = {}
    for i in range(len(table["feature"])):
        out.setdefault(int(table["feature"][i]), []).append(
            {k: (table[k][i] if k == "factor" else float(table[k][i]))
             for k in ("factor", "effect", "selectivity", "q", "local", "distant", "sign", "null95", "per_unit")})
    for v in out.values():
        v.sort(key=lambda r: -np.nan_to_num(r["effect"], nan=-1))
    return out


def explained_by(table: dict) -> dict[int, str]:
    """{feature: the one factor that explains it} for the features one factor explains."""
    return {int(f): str(e) for f, e in zip(table["feature"], table["explained_by"]) if e}


def verdicts(candidates: list[int], table: dict) -> dict[int, str]:
    """The counterfactual verdict on each frobnoloid candidate: ``"frobnoloid"`` when no single factor explains
    it, else ``"explained by FACTOR"``; ``"not measured"`` when it does not fire on the ladders."""
    exp = explained_by(table)
    seen = {int(f) for f in table["feature"]}
    return {int(j): (f"explained by {exp[j]}" if j in exp else "frobnoloid" if j in seen else "not measured")
            for j in candidates}


def heatmap(table: dict, summary: dict, path: Path, max_features: int = 64) -> Path | None:
    """Feature x factor heatmap of effect over the factor's null 95th percentile (the features that respond most,
    at most ``max_features``), a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    factors = [f["factor"] for f in summary["factors"]]
    feats = sorted({int(f) for f in table["feature"]})
    if not feats:
        return None
    idx = {f: i for i, f in enumerate(feats)}
    M = np.full((len(feats), len(factors)), np.nan)
    for f, fac, e, n95 in zip(table["feature"], table["factor"], table["effect"], table["null95"]):
        M[idx[int(f)], factors.index(fac)] = e / n95 if n95 > 0 else np.nan
    keep = np.argsort(-np.nan_to_num(np.nanmax(M, 1), nan=-1))[:max_features]
    keep = keep[np.argsort(np.nanargmax(np.nan_to_num(M[keep], nan=-1), 1), kind="stable")]  # grouped by factor
    fig, ax = plt.subplots(figsize=(1.2 + 0.45 * len(factors), 1.5 + 0.16 * len(keep)))
    im = ax.imshow(np.log2(np.maximum(M[keep], 1e-3)), aspect="auto", cmap="magma", vmin=-3, vmax=3)
    ax.set_xticks(range(len(factors)), factors, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(keep)), [str(feats[i]) for i in keep], fontsize=6)
    ax.set_ylabel("feature")
    cb = fig.colorbar(im, ax=ax, shrink=0.6)
    cb.set_label("log2(effect / null 95th pct)", fontsize=7)
    ax.set_title("counterfactual responses", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_responses(table: dict, summary: dict, out: Path) -> Path:
    """responses.parquet, responses.json and figures/responses.png into ``out``."""
    from .score import write_table

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_table(table, out / "responses.parquet")
    write_json(out / "responses.json", summary)
    heatmap(table, summary, out / "figures" / "responses.png")
    return out


def read_responses(folder: str | Path) -> tuple[dict, dict] | None:
    """(table, summary) written by :func:`write_responses`, or None where there are none."""
    from .score import read_table

    folder = Path(folder)
    if not (folder / "responses.parquet").exists():
        return None
    return read_table(folder / "responses.parquet"), json.loads((folder / "responses.json").read_text())


def report_lines(table: dict, summary: dict, candidates: list[int], figure: str | None = None) -> list[str]:
    """The report's "Counterfactual responses" section."""
    lines = ["## Counterfactual responses", "",
             "Each factor below was moved alone and the scene re-rendered (exact counterfactuals: every other buffer "
             "is byte-identical). Effect: mean |delta activation| between a rung and its base, in units of the "
             "feature's standard deviation; local / distant: at tokens whose ground truth changed / did not. "
             f"Against {summary['n_null']} random directions thresholded to matching firing rates; a feature is "
             f"responding at q <= {summary['config']['q_level']} (Benjamini-Hochberg); explained by a factor when "
             f"that factor carries >= {summary['selective_bar']:.2f} of its summed effect and beats its nulls at "
             f"p <= {summary['config']['explain_p']}.", "",
             "| factor | pairs | tokens whose truth changed | null 95th pct effect | features responding | "
             "explained by it |", "| --- | --- | --- | --- | --- | --- |"]
    for f in summary["factors"]:
        lines.append(f"| `{f['factor']}` | {f['pairs']} | {f['changed_share']:.0%} | {f['null95_effect']:.3f} | "
                     f"{f['responding']} of {summary['alive']} | {f['explained']} |")
    if "p05" in summary:
        c = summary["p05"]
        lines += ["", f"Of {c['tests']} (feature, factor) tests, {c['observed']} beat their matched nulls at p <= 0.05; "
                  f"chance alone gives {c['expected_by_chance']:.0f}."]
    if figure:
        lines += ["", f"![feature x factor responses]({figure})"]
    if candidates:
        v = verdicts(candidates, table)
        lines += ["", "Frobnoloid candidates under the counterfactuals: " + ", ".join(
            f"{j}: {v[j]}" for j in candidates) + "."]
    return lines


def inputs_of(scores_summary: dict, stores: list, hook: str) -> dict:
    """What a set of responses was measured from, by content: the SAE's weights and each store's tokens."""
    return {"sae_sha256": scores_summary.get("sae_sha256"), "stores": [st[hook].meta["sha256"] for st in stores]}


def respond(scores: str | Path, stores: list[str | Path], cfg: ResponseConfig | None = None, *,
            progress: bool = True) -> dict:
    """Measure the responses of the SAE scored in ``scores`` (its summary names the SAE, the hook and the store)
    on the counterfactual ``stores`` (each extracted from the same model at that hook on a counterfactual dataset),
    and write them into ``scores``: responses.parquet, responses.json (with each frobnoloid candidate's verdict)
    and figures/responses.png, plus the report's "Counterfactual responses" section. Returns the summary. Every
    input is checked before any work."""
    from .report import replace_section
    from .score import read_table
    from .scoring.engine import sae_encoder
    from .sae import load_sae
    from .store import ActivationStore

    cfg = cfg or ResponseConfig()
    scores = Path(scores)
    summ = scores / "summary.json"
    if not summ.exists():
        raise FileNotFoundError(f"{scores}: no summary.json (a scores folder made by frobnolab score)")
    s = json.loads(summ.read_text())
    if s.get("baseline"):
        raise ValueError(f"{scores}: scores of a baseline ({s['baseline'].get('kind')}); measure an SAE's scores")
    hook, sae_path, model_of = s["hook"], Path(s["sae"]), ActivationStore(s["store"]).manifest.get("model")
    if not stores:
        raise ValueError("give at least one counterfactual store")
    opened = []
    for path in stores:
        st = ActivationStore(path)
        if hook not in st.hooks:
            raise ValueError(f"{path}: no hook {hook!r} (the scored SAE's); it has {', '.join(st.hooks)}")
        if st.manifest.get("model") != model_of:
            raise ValueError(f"{path}: extracted from model {st.manifest.get('model')!r}, but the SAE's store is of "
                             f"{model_of!r}")
        if not getattr(st.dataset, "counterfactual", None):
            raise ValueError(f"{path}: its dataset {st.dataset.path} is not a counterfactual dataset")
        opened.append(st)
    sae = load_sae(sae_path)
    ladders = [Ladder.from_store(st, hook) for st in opened]
    table, summary = responses(ladders, sae_encoder(sae), sae.cfg.d_sae, cfg)
    feats = read_table(scores / "features.parquet")
    cands = [int(j) for j in np.flatnonzero(np.asarray(feats["candidate"], bool))]
    summary.update({"hook": hook, "sae": str(sae_path), "stores": [str(Path(p).resolve()) for p in stores],
                    "inputs": inputs_of(s, opened, hook),
                    "candidates": {str(j): v for j, v in verdicts(cands, table).items()}})
    write_responses(table, summary, scores)
    if (scores / "report.md").exists():
        replace_section(scores / "report.md", report_lines(table, summary, cands, "figures/responses.png"))
    return summary
