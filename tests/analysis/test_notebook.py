"""The gallery notebook, executed top to bottom by ``frobnolab notebook`` (nbclient, widget state saved) in a child
process (so that no event loop left by other tests in this process, such as Playwright's, can interfere with the
kernel's messaging), once for the module: it runs, reads as a notebook, and its saved state renders the widgets
without a kernel."""

import json
import os
import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import nbformat
import pytest

import frobnolab.analysis
from frobnolab.analysis.notebook import WIDGET_STATE, WIDGET_VIEW, saved_widgets, widget_views
from frobnolab.cli import main

SOURCE = Path(frobnolab.analysis.__file__).parent / "gallery.ipynb"

# the command on the tiny run, then the function on a notebook whose second cell fails
RUNNER = """
import json, sys
import nbformat
from frobnolab.cli import main
from frobnolab.analysis.notebook import NotebookError, execute_notebook

run, out, bad_src, bad_out, result = sys.argv[1:6]
rc = main(["notebook", run, "--out", out, "--quiet"])
nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# a step"),
                                     nbformat.v4.new_code_cell("x = 1"),
                                     nbformat.v4.new_markdown_cell("## the failing step"),
                                     nbformat.v4.new_code_cell("raise KeyError('no such column')")])
nbformat.write(nb, bad_src)
try:
    execute_notebook(run, bad_out, source=bad_src)
    failure = None
except NotebookError as e:
    failure = str(e)
open(result, "w").write(json.dumps({"rc": rc, "failure": failure}))
"""


@pytest.fixture(scope="module")
def executed(tiny_run, tmp_path_factory):
    """(the executed notebook, the command's stdout, the failing notebook's error, the folder) from one child."""
    tmp = tmp_path_factory.mktemp("notebook")
    out, result = tmp / "executed.ipynb", tmp / "result.json"
    proc = subprocess.run([sys.executable, "-c", RUNNER, str(tiny_run), str(out), str(tmp / "bad.ipynb"),
                           str(tmp / "bad-executed.ipynb"), str(result)], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=900,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(result.read_text())
    assert res["rc"] == 0, proc.stderr[-3000:]
    return nbformat.read(out, as_version=4), proc.stdout, res["failure"], tmp


def test_notebook_runs_top_to_bottom(executed):
    nb, stdout, _, tmp = executed
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    mimes = [k for o in outputs for k in o.get("data", {})]
    assert mimes.count("image/png") >= 3  # crops, histogram, concept bars at least
    assert WIDGET_VIEW in mimes
    html = "".join(o["data"].get("text/html", "") for o in outputs if "data" in o)
    assert "named_concept" in html and "frob" in html and "q_value" in html
    assert "<h2>Feature map</h2>" in html and html.count("<circle") >= 2  # the map of every alive feature
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "held-out tokens" in text and "histogram" in text
    assert "locality" in text and "as far from the training activations" in text  # the painting cell
    assert "strongest features here:" in text  # "try your own scene"
    assert "candidates by their scores:" in text and "frobnoloids:" in text  # the verdicts (tiny_run has them)
    # "try your own scene" shows its figure (the gallery's figure code switches matplotlib to Agg: plt.show() drew
    # nothing there)
    own = [c for c in nb.cells if c.cell_type == "code" and "strongest features here" in c.source][0]
    assert any("image/png" in o.get("data", {}) for o in own.outputs)
    # each cell started as soon as the one before had replied (nbclient's Output-widget echo once lost the reply's
    # wakeup until the cell's timeout: analysis/notebook.py)
    times = [c.metadata.execution for c in nb.cells if c.cell_type == "code"]
    for before, after in zip(times, times[1:]):
        start, replied = (datetime.fromisoformat(t) for t in (after["iopub.execute_input"],
                                                                 before["shell.execute_reply"]))
        assert (start - replied).total_seconds() < 60, (before, after)
    # the command's one line: where it is and that it opens without a kernel
    lines = stdout.strip().splitlines()
    assert len(lines) == 1 and str(tmp / "executed.ipynb") in lines[0] and "jupyter lab" in lines[0], stdout
    assert "without a kernel" in lines[0]
    assert not list(tmp.glob(".*.tmp-*"))  # written through a temporary file, renamed


def test_notebook_reads_as_a_notebook():
    """Every code cell follows a markdown cell that says what the step does."""
    nb = nbformat.read(SOURCE, as_version=4)
    nbformat.validate(nb)  # cell ids and all
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert i > 0 and nb.cells[i - 1].cell_type == "markdown" and nb.cells[i - 1].source.strip(), i
            assert not cell.outputs  # the shipped notebook is clean
    prose = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    for word in ("named_r2", "scene_r2", "gap", "frob", "q_value", "verdict", "locality", "frobnolab notebook"):
        assert word in prose, word


def test_saved_state_renders_the_widgets(executed, tiny_run):
    from frobnolab.analysis.gallery import load_run, shown_features

    nb = executed[0]
    state = saved_widgets(nb)
    assert nb.metadata.widgets[WIDGET_STATE]["version_major"] == 2
    views = widget_views(nb)
    assert len(views) >= 6  # table controls and table, feature picker and pictures, painting controls and output
    assert set(views) <= set(state), set(views) - set(state)  # every view's model is saved
    for model_id in views:  # and so is every model a view's model refers to (children, layouts, styles)
        todo = [model_id]
        while todo:
            m = state[todo.pop()]["state"]
            refs = [v for v in m.values() if isinstance(v, str) and v.startswith("IPY_MODEL_")]
            refs += [x for v in m.values() if isinstance(v, list) for x in v
                     if isinstance(x, str) and x.startswith("IPY_MODEL_")]
            for r in refs:
                assert r[len("IPY_MODEL_"):] in state, r
                todo.append(r[len("IPY_MODEL_"):])

    by_description = {}
    for m in state.values():
        by_description.setdefault(m["state"].get("description"), []).append(m)
    features = [str(j) for j in shown_features(load_run(tiny_run))]
    pickers = by_description["feature"]  # the one-feature picker and the painting panel's
    assert len(pickers) == 2
    for p in pickers:
        assert p["model_name"] == "DropdownModel" and p["state"]["_options_labels"] == features
        assert p["state"]["index"] == 0
    (strength,) = by_description["x its max"]
    assert strength["model_name"] == "FloatSliderModel" and strength["state"]["value"] == 2.0
    (sort,) = by_description["sort by"]
    assert sort["state"]["_options_labels"][sort["state"]["index"]] == "frob"
    (mask,) = by_description["mask"]
    assert mask["state"]["_options_labels"][mask["state"]["index"]] == "foreground"
    # the Output widgets keep what they showed: the table, the feature's pictures, the painting and its numbers
    shown = [m["state"]["outputs"] for m in state.values() if m["model_name"] == "OutputModel"]
    assert len(shown) == 3
    mimes = [[k for o in outs for k in o.get("data", {})] for outs in shown]
    assert any("text/html" in m for m in mimes)  # the table
    assert any(m.count("image/png") >= 3 for m in mimes)  # the feature's pictures
    painted = [outs for outs in shown if any("locality" in o.get("text", "") for o in outs)]
    assert painted and any("image/png" in o.get("data", {}) for o in painted[0])  # before / after / change


def test_html_export_carries_the_widget_state(executed):
    """nbconvert's HTML export (no kernel; nothing fetched here) embeds the saved state and one view per widget."""
    from nbconvert import HTMLExporter

    nb = executed[0]
    html, _ = HTMLExporter().from_notebook_node(nb)
    blocks = re.findall(r'<script type="application/vnd\.jupyter\.widget-state\+json">(.*?)</script>', html, re.S)
    assert len(blocks) == 1
    state = json.loads(blocks[0])["state"]
    assert state.keys() == saved_widgets(nb).keys()
    views = [json.loads(v)["model_id"] for v in
             re.findall(r'<script type="application/vnd\.jupyter\.widget-view\+json">(.*?)</script>', html, re.S)]
    assert sorted(views) == sorted(widget_views(nb)) and set(views) <= set(state)


def test_a_failing_cell_is_named(executed):
    failure, tmp = executed[2], executed[3]
    assert failure is not None
    assert "cell 2 of 2" in failure and "the failing step" in failure and "KeyError" in failure, failure
    assert len(failure.splitlines()) == 1, failure
    assert not (tmp / "bad-executed.ipynb").exists()


def test_notebook_bad_input_is_one_line(tiny_run, tmp_path, capsys):
    missing = tmp_path / "no-run"
    assert main(["notebook", str(missing)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no-run" in err[0] and err[0].startswith("frobnolab notebook: error:"), err
    (tmp_path / "empty").mkdir()
    assert main(["notebook", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no scored run" in err[0], err
    assert main(["notebook", str(tiny_run), "--out", str(tmp_path / "nowhere" / "g.ipynb")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nowhere" in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]  # nothing written
    assert not list((tmp_path / "empty").iterdir()) and not (tiny_run / "gallery.ipynb").exists()
