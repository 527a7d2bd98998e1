"""Scoring a trained SAE on its store, end to end: check the inputs, score every feature
(:func:`~frobnolab.analysis.score.score_features`), the dictionary-level scores, then the files:
``features.parquet`` (a row per feature), ``summary.json`` (strict JSON) and ``report.md`` with its pictures.

Computation never depends on presentation: this module imports the report, the scorer imports neither.
"""

from __future__ import annotations

import json
from pathlib import Path

from frobnolab.files import write_json

from .dictionary import dictionary_scores
from .probe import CausalProbe
from .report import write_report
from .sae import load_sae, weights_sha256
from .score import ScoreConfig, sae_encoder, score_features, write_table
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
    unknown_held = set(cfg.holdout_concepts) - {c["name"] for c in store.concepts}
    if unknown_held:
        raise ValueError(f"held-out concepts {sorted(unknown_held)} are not in the store {store.path} "
                         f"(has: {', '.join(c['name'] for c in store.concepts)})")
    if model is None:
        model = store.load_model(cfg.device)
    probe = CausalProbe(model, sae, store, hook, n_images=cfg.causal_images, device=cfg.device)
    scores = score_features(tokens, sae_encoder(sae, cfg.device), sae.cfg.d_sae, cfg, probe=probe,
                            progress=progress, concepts=store.concepts, log=log)
    summary = scores.summary
    summary["dictionary"] = dictionary_scores(scores, store, hook, sae, other)
    summary.update({"store": str(store.path.resolve()), "hook": hook, "sae": str(sae_folder.resolve()),
                    "store_hook_sha256": tokens.meta["sha256"], "sae_sha256": weights_sha256(sae_folder)})
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_table(scores.table, out / "features.parquet")
    write_json(out / "summary.json", summary)
    write_report(scores.table, summary, store, hook, sae, out)
    return summary
