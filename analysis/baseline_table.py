"""The comparison of an SAE with its baselines (:mod:`~frobnolab.analysis.baselines`) on the same tokens, through
the same scorer, against the same null features and beside the layer's supervised ceiling
(``scoring/ceiling.py``): ``scores/baselines.json`` and the report's "Baselines" section.

Per dictionary: features, live ones, MCC, mean coverage (over named concepts, the best live feature's
cross-validated eta^2), named matches and gaps that survive Benjamini-Hochberg (``q_named`` / ``q_value`` at the
scorer's level), frobnoloid candidates, and the descriptions' understood share. Per concept: the ceiling, each
dictionary's coverage and how many of its features are named by that concept beyond chance.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .score import read_table


def _rel(path: Path, root: Path | None) -> str:
    """``path`` relative to ``root`` when inside it (so a copied run folder's table does not change)."""
    try:
        return str(path.resolve().relative_to(Path(root).resolve())) if root is not None else str(path)
    except ValueError:
        return str(path)


def _row(name: str, scores: Path, root: Path | None) -> tuple[dict, dict]:
    s = json.loads((scores / "summary.json").read_text())
    t = read_table(scores / "features.parquet")
    alive = np.asarray(t["freq"], float) > 0
    level = s["config"]["candidate_q"]
    named_ok = alive & (np.nan_to_num(np.asarray(t["q_named"], float), nan=1.0) <= level)
    named_vars = {v["name"] for v in s["variables"] if v["named"]}
    cov = {k: v["r2"] for k, v in s["dictionary"]["coverage"].items() if k in named_vars}
    per_concept = {}
    for c in np.asarray(t["named_concept"], object)[named_ok]:
        per_concept[str(c)] = per_concept.get(str(c), 0) + 1
    u = s.get("understood") or {}
    row = {"dictionary": name, "scores": _rel(scores, root), "features": int(s["features"]), "alive": int(alive.sum()),
           "mcc": float(s["dictionary"]["mcc"]), "coverage_mean": float(np.mean(list(cov.values()))) if cov
           else float("nan"),
           "named_discoveries": int(named_ok.sum()), "named_share": float(named_ok.sum() / max(alive.sum(), 1)),
           "gap_discoveries": int(s["fdr"]["discoveries_gap"]), "candidates": int(s["candidates"]),
           "understood_descriptions": float(u.get("understood", {}).get("descriptions", float("nan")))
           if u.get("measured") else float("nan"),
           "fvu_test": _fvu(s),
           # the scores folder whose null bank it was tested against, by name (a copied run's table stays the same)
           "nulls_from": s.get("nulls_from", "this run") if s.get("nulls_from", "this run") in ("this run", "given")
           else Path(s["nulls_from"]).name, "q_level": level}
    return row, {"coverage": cov, "above_null": per_concept}


def _fvu(summary: dict) -> float:
    """Held-out fraction of variance unexplained: a baseline's own record, an SAE's from its training evaluation."""
    if "baseline" in summary:
        return float(summary["baseline"]["fvu_test"])
    rec = Path(summary["sae"]) / "training.json"
    ev = json.loads(rec.read_text()).get("evaluation", {}) if rec.exists() else {}
    return 1 - float(ev["explained_variance"]) if "explained_variance" in ev else float("nan")


def comparison(dictionaries: dict[str, Path], ceiling: dict[str, float], root: Path | None = None) -> dict:
    """``dictionaries``: {name: scores folder} (the SAE first); ``ceiling``: ``probe_ceiling``'s result; ``root``:
    the run folder the table's paths are written relative to."""
    rows, concepts = [], {}
    for name, folder in dictionaries.items():
        row, per = _row(name, Path(folder), root)
        rows.append(row)
        for c, r2 in per["coverage"].items():
            e = concepts.setdefault(c, {"ceiling": ceiling.get(c, float("nan")), "coverage": {}, "above_null": {}})
            e["coverage"][name] = r2
            e["above_null"][name] = per["above_null"].get(c, 0)
    return {"dictionaries": rows, "concepts": concepts}
