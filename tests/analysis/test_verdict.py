"""The frobnoloid verdict: a candidate is a frobnoloid only when every check was run and passed."""

import json

import numpy as np

from frobnolab.analysis.score import write_table
from frobnolab.analysis.verdict import report_lines, verdicts


def _scores(folder, gap, frob, candidate, responses=None):
    folder.mkdir(parents=True)
    n = len(gap)
    write_table({"feature": np.arange(n), "freq": np.full(n, 0.1), "gap": np.asarray(gap, float),
                 "frob": np.asarray(frob, float), "q_value": np.full(n, 0.01),
                 "candidate": np.asarray(candidate, bool)}, folder / "features.parquet")
    if responses is not None:
        (folder / "responses.json").write_text(json.dumps({"candidates": responses}))
    return folder


def test_each_check_can_refute_a_candidate(tmp_path):
    # candidates 0-4; 5 is not a candidate and gets no verdict
    scores = _scores(tmp_path / "sae", gap=[0.6, 0.6, 0.3, 0.6, 0.6, 0.9], frob=[0.5, 0.05, 0.5, 0.5, 0.5, 0.9],
                     candidate=[1, 1, 1, 1, 1, 0],
                     responses={"0": "frobnoloid", "1": "frobnoloid", "2": "frobnoloid",
                                "3": "explained by object0.material.color.hsv[0]", "4": "not measured"})
    rnd = tmp_path / "random_model_null.json"
    rnd.write_text(json.dumps({"gap": {"null95": 0.25}, "frob": {"null95": 0.1}}))
    units = _scores(tmp_path / "units", gap=np.linspace(0, 0.4, 40), frob=np.zeros(40), candidate=np.zeros(40))
    v = verdicts(scores, random_null=rnd, baselines={"units": units})
    by = {r["feature"]: r["verdict"] for r in v["candidates"]}
    assert set(by) == {0, 1, 2, 3, 4}
    assert by[0] == "frobnoloid"
    assert by[1] == "refuted by random model"  # its frobnoloid score is below the untrained model's
    assert by[2] == "refuted by baseline units"  # gap 0.3 is below the units' 95th percentile (0.38)
    assert by[3] == "explained by object0.material.color.hsv[0]"
    assert by[4] == "unchecked: no counterfactuals"
    assert v["frobnoloids"] == [0]
    assert abs(v["bars"]["baseline units gap"] - 0.38) < 1e-9
    text = "\n".join(report_lines(v))
    assert "| 0 | 0.600 |" in text and "Frobnoloids: 0." in text


def test_without_the_other_evidence_nothing_is_claimed(tmp_path):
    scores = _scores(tmp_path / "taesd", gap=[0.6], frob=[0.5], candidate=[1])
    v = verdicts(scores)
    assert v["candidates"][0]["verdict"] == "unchecked: no random model, baselines, counterfactuals"
    assert v["frobnoloids"] == []
    empty = verdicts(_scores(tmp_path / "none", gap=[0.1], frob=[0.0], candidate=[0]))
    assert empty["candidates"] == [] and "No candidates." in report_lines(empty)
