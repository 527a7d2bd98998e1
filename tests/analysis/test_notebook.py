"""The gallery notebook, executed top to bottom. (In its own module: Playwright's sync API keeps an event loop
running while the browser fixture of test_gallery lives, and nbclient must not share it.)"""

import os
from pathlib import Path


def test_notebook_runs_top_to_bottom(tiny_run):
    import nbclient
    import nbformat

    import frobnolab.analysis

    nb = nbformat.read(Path(frobnolab.analysis.__file__).parent / "gallery.ipynb", as_version=4)
    os.environ["FROBNOLAB_RUN"] = str(tiny_run)
    try:
        nbclient.NotebookClient(nb, timeout=600, kernel_name="python3").execute()
    finally:
        os.environ.pop("FROBNOLAB_RUN")
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    mimes = [k for o in outputs for k in o.get("data", {})]
    assert mimes.count("image/png") >= 3  # crops, histogram, concept bars at least
    assert "application/vnd.jupyter.widget-view+json" in mimes
    html = "".join(o["data"].get("text/html", "") for o in outputs if "data" in o)
    assert "named_concept" in html and "frob" in html
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "held-out tokens" in text and "histogram" in text
