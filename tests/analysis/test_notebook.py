"""The gallery notebook, executed top to bottom by nbclient in a child process (so that no event loop left by
other tests in this process, such as Playwright's, can interfere with the kernel's messaging)."""

import os
import subprocess
import sys
from pathlib import Path

import nbformat

import frobnolab.analysis

RUNNER = """
import sys, nbformat, nbclient
nb = nbformat.read(sys.argv[1], as_version=4)
nbclient.NotebookClient(nb, timeout=300, startup_timeout=120, kernel_name="python3").execute()
nbformat.write(nb, sys.argv[2])
"""


def test_notebook_runs_top_to_bottom(tiny_run, tmp_path):
    src = Path(frobnolab.analysis.__file__).parent / "gallery.ipynb"
    done = tmp_path / "executed.ipynb"
    env = {**os.environ, "FROBNOLAB_RUN": str(tiny_run)}
    proc = subprocess.run([sys.executable, "-c", RUNNER, str(src), str(done)], env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    nb = nbformat.read(done, as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    mimes = [k for o in outputs for k in o.get("data", {})]
    assert mimes.count("image/png") >= 3  # crops, histogram, concept bars at least
    assert "application/vnd.jupyter.widget-view+json" in mimes
    html = "".join(o["data"].get("text/html", "") for o in outputs if "data" in o)
    assert "named_concept" in html and "frob" in html
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "held-out tokens" in text and "histogram" in text
    assert "locality" in text and "as far from the training activations" in text  # the painting cell
    assert "strongest features here:" in text  # "try your own scene"
