"""Scoring a trained SAE on its store, end to end: check the inputs, score every feature
(:func:`~frobnolab.analysis.score.score_features`), the dictionary-level scores, then the files:
``features.parquet`` (a row per feature), ``summary.json`` (strict JSON) and ``report.md`` with its pictures.
:func:`score_baseline` fits a baseline dictionary (:mod:`~frobnolab.analysis.baselines`) and scores it along the
same path (:func:`_score_dictionary`), on the same held-out tokens.

Computation never depends on presentation: this module imports the report, the scorer imports neither.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from frobnolab.errors import unknown
from frobnolab.files import write_json

from .baselines import BaselineConfig, components, fit_baseline, parse_baseline, save_baseline, weights_bytes
from .dictionary import dictionary_scores
from .probe import CausalProbe
from .report import write_report
from .sae import load_sae, weights_sha256
from .score import ScoreConfig, read_table, sae_encoder, score_features, write_table
from .scoring.nulls import BANK
from .store import ActivationStore


def sae_hook(sae_folder: Path, store: ActivationStore, hook: str | None) -> str:
    """The hook point an SAE folder was trained on (its training.json), checked against the store."""
    rec_path = sae_folder / "training.json"
    trained = json.loads(rec_path.read_text()) if rec_path.exists() else {}
    if hook is None:
        if "hook" not in trained:
            raise ValueError(f"{sae_folder}: give the hook point (no training.json to read it from)")
        hook = trained["hook"]
    if hook not in store.hooks:
        where = f" (it was trained on {trained['store']})" if trained.get("store") else ""
        raise ValueError(f"{sae_folder}: its hook point {hook!r} is not in the store {store.path} "
                         f"(has: {', '.join(store.hooks)}){where}")
    return hook


def _check_holdout(store: ActivationStore, cfg: ScoreConfig):
    unknown_held = set(cfg.holdout_concepts) - {c["name"] for c in store.concepts}
    if unknown_held:
        raise ValueError(f"held-out concepts {sorted(unknown_held)} are not in the store {store.path} "
                         f"(has: {', '.join(c['name'] for c in store.concepts)})")


def read_null_bank(scores: str | Path, store: ActivationStore, hook: str) -> dict:
    """The null features of an earlier scoring on the same tokens (its ``null_features.parquet``), checked to be of
    this store's ``hook``."""
    scores = Path(scores)
    path, summ = scores / "null_features.parquet", scores / "summary.json"
    if not path.exists() or not summ.exists():
        raise ValueError(f"{scores}: no null_features.parquet and summary.json (score an SAE there first)")
    s = json.loads(summ.read_text())
    if s.get("hook") != hook or s.get("store_hook_sha256") != store[hook].meta["sha256"]:
        raise ValueError(f"{scores}: its nulls are of hook {s.get('hook')!r} of another store or version "
                         f"(store_hook_sha256 differs), not of {hook!r} in {store.path}")
    t = read_table(path)
    return {k: np.asarray(t[k], float) for k in BANK} | {"from": str(scores.resolve())}


def _score_dictionary(store: ActivationStore, hook: str, sae, out: Path, cfg: ScoreConfig, *, model, progress: bool,
                      other, log, identity: dict, write_first=None, null_bank: dict | None = None) -> dict:
    """The one scoring path of an SAE or a baseline (anything with the SAE's encode, decode, W_dec and cfg):
    features, the causal probe, the dictionary scores, then the files. ``identity``: what the summary records of the
    dictionary (``sae``, ``sae_sha256``, and for a baseline ``baseline``); ``write_first(out)``: files written into
    ``out`` before the scores'."""
    tokens = store[hook]
    if model is None:
        model = store.load_model(cfg.device)
    probe = CausalProbe(model, sae, store, hook, n_images=cfg.causal_images, device=cfg.device)
    scores = score_features(tokens, sae_encoder(sae, cfg.device), sae.cfg.d_sae, cfg, probe=probe,
                            progress=progress, concepts=store.concepts, log=log, null_bank=null_bank)
    summary = scores.summary
    summary["dictionary"] = dictionary_scores(scores, store, hook, sae, other)
    summary.update({"store": str(store.path.resolve()), "hook": hook, "sae": identity["sae"],
                    "store_hook_sha256": tokens.meta["sha256"], "sae_sha256": identity["sae_sha256"]})
    summary.update({k: v for k, v in identity.items() if k not in ("sae", "sae_sha256")})
    out.mkdir(parents=True, exist_ok=True)
    if write_first is not None:
        write_first(out)
    write_table(scores.table, out / "features.parquet")
    if scores.nulls is not None:  # what later dictionaries on these tokens (baselines) are tested against
        write_table(scores.nulls, out / "null_features.parquet")
    write_json(out / "summary.json", summary)
    write_report(scores.table, summary, store, hook, sae, out, model=model, device=cfg.device)
    return summary


def score_sae(store_path: str | Path, sae_folder: str | Path, out: str | Path, cfg: ScoreConfig | None = None,
              *, hook: str | None = None, model=None, progress: bool = True, other_sae: str | Path | None = None,
              log=print) -> dict:
    """Score the SAE in ``sae_folder`` on its store; writes ``features.parquet``, ``summary.json`` and
    ``report.md`` (with pictures) into ``out``. Returns the summary (as in summary.json, but with NaN where the
    file, strict JSON, has null). Every input is checked before any work."""
    cfg = cfg or ScoreConfig()
    store = ActivationStore(store_path)
    sae_folder = Path(sae_folder)
    if not sae_folder.is_dir():
        raise FileNotFoundError(f"{sae_folder}: no such folder (an SAE folder made by frobnolab train-sae)")
    hook = sae_hook(sae_folder, store, hook)
    sae = load_sae(sae_folder, device=cfg.device)
    other = load_sae(other_sae, device=cfg.device) if other_sae else None
    tokens = store[hook]
    if sae.cfg.d_in != tokens.d_in:
        raise ValueError(f"{sae_folder}: SAE d_in {sae.cfg.d_in} does not match hook {hook} ({tokens.d_in} channels)")
    _check_holdout(store, cfg)
    return _score_dictionary(store, hook, sae, Path(out), cfg, model=model, progress=progress, other=other, log=log,
                             identity={"sae": str(sae_folder.resolve()), "sae_sha256": weights_sha256(sae_folder)})


def score_baseline(store_path: str | Path, kind: str, out: str | Path, cfg: ScoreConfig | None = None, *, hook: str,
                   n: int = 0, baseline: BaselineConfig | None = None, model=None, progress: bool = True,
                   log=print, nulls_from: str | Path | None = None) -> dict:
    """Fit a baseline dictionary (:mod:`~frobnolab.analysis.baselines`: ``kind`` with ``n`` components, 0: the
    kind's default; other fit options from ``baseline``) on the store's training tokens of ``hook`` and score it
    exactly as :func:`score_sae` scores an SAE, on the same held-out tokens. ``out`` gets baseline.safetensors and
    baseline.json beside the scores; the summary's ``baseline`` says what was fitted, its ``sae`` is the path of
    baseline.safetensors and ``sae_sha256`` that file's sha256. ``nulls_from``: a scores folder of the same hook
    whose null features the baseline is tested against (none of its own are scored then; the SAE and its baselines
    share one null). Every input is checked before any work."""
    cfg = cfg or ScoreConfig()
    kind, n = parse_baseline(kind)[0], n or parse_baseline(kind)[1]  # "pca" with n, or "pca:N"
    if hook is None:
        raise ValueError(f"--baseline {kind}: give --hook (a baseline has no training record to read it from)")
    store = ActivationStore(store_path)
    if hook not in store.hooks:
        raise unknown("hook point", hook, store.hooks, str(store.path))
    bcfg = replace(baseline or BaselineConfig(), kind=kind, n=n)
    components(bcfg, store[hook].d_in, hook)
    _check_holdout(store, cfg)
    null_bank = read_null_bank(nulls_from, store, hook) if nulls_from is not None else None
    if model is None:
        model = store.load_model(cfg.device)
    fitted = fit_baseline(store[hook], bcfg, log=log)
    m = fitted.meta
    log(f"baseline {m['kind']}:{m['n']}: {m['d_sae']} features, FVU {m['fvu_fit']:.4f} on the fit tokens, "
        f"{m['fvu_test']:.4f} held out ({m['fit_seconds']} s)")
    out = Path(out)
    blob = weights_bytes(fitted.module)
    sae = fitted.module.to(cfg.device)
    identity = {"sae": str((out / "baseline.safetensors").resolve()), "sae_sha256": hashlib.sha256(blob).hexdigest(),
                "baseline": {k: m[k] for k in ("kind", "n", "d_sae", "seed", "fit_tokens", "fvu_fit", "fvu_test",
                                               "fit_seconds")} | {"config": m["config"]}}
    where = {"store": str(store.path.resolve())}
    return _score_dictionary(store, hook, sae, out, cfg, model=model, progress=progress, other=None, log=log,
                             identity=identity, write_first=lambda o: save_baseline(fitted, o, where),
                             null_bank=null_bank)
