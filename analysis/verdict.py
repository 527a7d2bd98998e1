"""The frobnoloid verdict: every kind of evidence a candidate must survive, in one table.

A feature is a frobnoloid *candidate* when its scores say so (``scoring/frobnoloid.py``: real, important, its gap
beyond the rate-matched null at ``q <= candidate_q``). A sceptical reader asks more, and the verdict asks it:

1. **the random-initialised model**: the same recipe (store, SAE, scores) on an untrained copy of the model
   (``scores/random_model_null.json``): the candidate's gap and frobnoloid score must exceed that model's 95th
   percentiles, or an untrained network makes such features too;
2. **the baselines**: each baseline dictionary scored on the same tokens against the same null (units, PCA, random
   directions, ...; ``baselines/``): the candidate's gap must exceed the 95th percentile of each baseline's live
   features' gaps, or a raw unit or a principal direction is as unnamed as the SAE's feature;
3. **the counterfactuals** (``responses.json``, ``analysis/counterfactual.py``): a candidate that one swept factor
   explains answers to a named cause of the scene and is not a frobnoloid.

A candidate is a **frobnoloid** only when every check was run and passed. A check that was not run (no baselines
for this model, a candidate that does not fire on the ladders) leaves it ``unchecked``: not refuted, not claimed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .score import read_table
from .scoring.nulls import q95


def verdicts(scores: str | Path, *, random_null: str | Path | None = None,
             baselines: dict[str, str | Path] | None = None) -> dict:
    """The verdict on each frobnoloid candidate of the scores folder ``scores``: ``random_null`` is a
    ``random_model_null.json``, ``baselines`` {name: scores folder of a baseline on the same tokens}; the
    counterfactual responses are read from ``scores`` when there."""
    scores = Path(scores)
    t = read_table(scores / "features.parquet")
    cand = np.flatnonzero(np.asarray(t["candidate"], bool))
    gap, frob = np.asarray(t["gap"], float), np.asarray(t["frob"], float)
    rnd = json.loads(Path(random_null).read_text()) if random_null and Path(random_null).exists() else None
    bars = {}
    for name, folder in (baselines or {}).items():
        b = read_table(Path(folder) / "features.parquet")
        alive = np.asarray(b["freq"], float) > 0
        bars[name] = q95(np.asarray(b["gap"], float)[alive])
    cf = None
    if (scores / "responses.json").exists():
        cf = json.loads((scores / "responses.json").read_text()).get("candidates", {})
    rows = []
    for j in cand:
        checks = {}
        if rnd is not None:
            checks["random model"] = bool(gap[j] > rnd["gap"]["null95"] and frob[j] > rnd["frob"]["null95"])
        for name, bar in bars.items():
            checks[f"baseline {name}"] = bool(gap[j] > bar) if np.isfinite(bar) else True
        counter = None if cf is None else cf.get(str(int(j)), "not measured")
        if counter is not None and counter != "not measured":
            checks["counterfactuals"] = counter == "frobnoloid"
        failed = [k for k, ok in checks.items() if not ok]
        missing = [k for k, ran in (("random model", rnd is not None), ("baselines", bool(bars)),
                                    ("counterfactuals", counter not in (None, "not measured"))) if not ran]
        others = [k for k in failed if k != "counterfactuals"]
        if "counterfactuals" in failed:  # the counterfactual verdict names its factor
            verdict = counter + (f"; refuted by {', '.join(others)}" if others else "")
        elif failed:
            verdict = "refuted by " + ", ".join(failed)
        elif missing:
            verdict = "unchecked: no " + ", ".join(missing)
        else:
            verdict = "frobnoloid"
        rows.append({"feature": int(j), "gap": float(gap[j]), "q_value": float(np.asarray(t["q_value"], float)[j]),
                     "frob": float(frob[j]), "checks": checks, "counterfactual": counter, "verdict": verdict})
    return {"candidates": rows, "frobnoloids": [r["feature"] for r in rows if r["verdict"] == "frobnoloid"],
            "bars": {"random model gap": None if rnd is None else rnd["gap"]["null95"],
                     "random model frob": None if rnd is None else rnd["frob"]["null95"],
                     **{f"baseline {k} gap": v for k, v in bars.items()}}}


def report_lines(v: dict) -> list[str]:
    """The report's "Frobnoloid verdicts" section."""
    lines = ["## Frobnoloid verdicts", "",
             "Each candidate (real, important, gap beyond the rate-matched null at the q level) against every other "
             "kind of evidence: the random-initialised model's 95th percentiles of gap and frobnoloid score, each "
             "baseline's 95th percentile of gap, and the counterfactuals (one factor explains it: not a frobnoloid). "
             "A frobnoloid is a candidate that passes every check that was run, with every check run."]
    bars = {k: b for k, b in v["bars"].items() if b is not None}
    if bars:
        lines += ["", "Bars: " + ", ".join(f"{k} {b:.3f}" for k, b in bars.items()) + "."]
    if not v["candidates"]:
        return lines + ["", "No candidates."]
    lines += ["", "| feature | gap | q | frob | checks | verdict |", "| --- | --- | --- | --- | --- | --- |"]
    for r in v["candidates"]:
        checks = ", ".join(f"{k} {'ok' if ok else 'FAIL'}" for k, ok in r["checks"].items()) or "-"
        lines.append(f"| {r['feature']} | {r['gap']:.3f} | {r['q_value']:.3f} | {r['frob']:.3f} | {checks} | "
                     f"{r['verdict']} |")
    lines += ["", f"Frobnoloids: {', '.join(map(str, v['frobnoloids'])) or 'none'}."]
    return lines
