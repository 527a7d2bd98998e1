"""Feature painting with the SAE spliced in: the edit lands where it was asked, and nothing moves without one."""

import json

import numpy as np
import pytest

from frobnolab.analysis.paint import paint, pixel_mask
from frobnolab.analysis.score import read_table
from frobnolab.cli import main
from frobnolab.scenes.dataset import Dataset


def _busiest(run):
    t = read_table(run / "scores" / "features.parquet")
    return int(np.argmax(np.asarray(t["freq"], float)))


def test_an_edit_inside_a_box_changes_the_output_mostly_inside_it(tiny_run, tmp_path):
    ds = Dataset(tiny_run / "render")
    image = int(ds.split("test")[0])
    j = _busiest(tiny_run)
    r = paint(tiny_run / "scores", image, [j], op="add", value=3.0, mask="box:0,0,16,16", out=tmp_path / "p")
    assert r["mean_abs_change"]["inside"] > 0
    assert r["locality"] > 2 * r["mask_share"], r  # a quarter of the image takes far more than a quarter
    assert r["tokens_edited"] > 0 and r["distribution"]["edited_over_clean_nn_distance"] > 1.0
    assert json.loads((tmp_path / "p" / "paint.json").read_text())["features"] == [j]
    assert (tmp_path / "p" / "paint.png").stat().st_size > 0


def test_an_identity_edit_changes_nothing(tiny_run):
    image = int(Dataset(tiny_run / "render").split("test")[0])
    r = paint(tiny_run / "scores", image, [_busiest(tiny_run)], op="scale", value=1.0, mask="foreground")
    assert r["mean_abs_change"]["inside"] == 0 and r["mean_abs_change"]["outside"] == 0
    assert r["before"] == r["after"]
    assert abs(r["distribution"]["edited_over_clean_nn_distance"] - 1.0) < 1e-6


def test_masks_and_bad_input(tiny_run, tmp_path, capsys):
    ds = Dataset(tiny_run / "render")
    assert pixel_mask(ds, 0, "all").all() and pixel_mask(ds, 0, "box:0,0,2,3").sum() == 6
    assert (pixel_mask(ds, 0, "instance=0") == (np.asarray(ds["instance"][0]) == 0)).all()
    with pytest.raises(ValueError, match="box"):
        pixel_mask(ds, 0, "box:0,0,99,99")
    with pytest.raises(ValueError, match="unknown mask"):
        pixel_mask(ds, 0, "shadows")
    args = ["paint", str(tiny_run / "scores"), "--image", "0", "--features", "0", "--out", str(tmp_path / "q")]
    assert main(args + ["--add", "1", "--set", "1"]) == 2
    assert "exactly one of --set, --add or --scale" in capsys.readouterr().err
    assert main(args[:5] + ["99999", "--out", str(tmp_path / "q"), "--add", "1"]) == 2
    assert "the SAE has features" in capsys.readouterr().err
    assert not (tmp_path / "q").exists()
