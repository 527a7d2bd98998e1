"""The counterfactual responses on planted truth: units that are known functions of real re-renders' ground truth,
each reading a quantity only one swept factor moves (analysis/planted_counterfactual.py). This runs the
development seed; the report seeds' figures are in the README."""

import json

from frobnolab.analysis.planted_counterfactual import DEV_SEEDS, validate_counterfactual
from frobnolab.cli import main


def test_planted_units_are_assigned_to_their_factor_and_noise_stays_at_its_null(tmp_path):
    r = validate_counterfactual(tmp_path / "v", seed=DEV_SEEDS[0], bases=6, size=32, progress=False, workers=1)
    assert r["attributed"] >= 0.95, [u for u in r["units"] if not u["ok"]]
    assert r["noise_at_null"] and r["global_distant"] and r["passed"]
    # a footprint unit does not move where its token's truth did not change; the whole-image unit does
    by = {u["name"]: u for u in r["units"]}
    assert by["shadow"]["distant"]["shadows"] == 0.0
    assert by["image's backdrop warmth"]["distant"]["background.hsv[0]"] > 0
    assert json.loads((tmp_path / "v" / "validation.json").read_text())["passed"]


def test_the_command_reports_each_seed(tmp_path, capsys):
    assert main(["validate-counterfactual", "--out", str(tmp_path / "c"), "--seeds", "0", "--bases", "6",
                 "--size", "32", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "seed 0: factor units attributed 100%" in out and "PASSED" in out, out
