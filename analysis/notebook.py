"""The gallery notebook (``analysis/gallery.ipynb``) executed against a scored run and saved with its outputs and its
widget state, so that it shows without a kernel (``frobnolab notebook RUN``).

:func:`execute_notebook` runs the shipped notebook top to bottom with nbclient on a fresh ``python3`` kernel (the
kernel reads the run from ``$FROBNOLAB_RUN`` and starts in the run folder), keeps every output (tables, figures,
printed numbers) and the state of every widget (``store_widget_state``: ``metadata.widgets``, MIME type
``application/vnd.jupyter.widget-state+json``), and writes the notebook atomically. JupyterLab, VS Code and
nbconvert's HTML export draw the widgets from that saved state: their last values and the outputs they showed
(a changed value redraws nothing without a kernel).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from frobnolab.files import atomic_write

SOURCE = Path(__file__).with_name("gallery.ipynb")
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


class NotebookError(RuntimeError):
    """The kernel failed on a cell (its error, a timeout, or a dead kernel); the message names the cell."""


def _quiet_output_widget():
    """nbclient's stand-in for a frontend's Output widget, without its echo of the captured outputs to the kernel.

    nbclient sends that echo on the shell socket from its IOPub task while it awaits the cell's execute reply on the
    same socket; under load the reply's wakeup was lost until the cell's timeout (a cell stalled for exactly
    ``timeout`` seconds, then went on). nbclient keeps the saved widget state itself, and no cell reads an Output
    widget's outputs back in the kernel, so nothing needs the echo."""
    from nbclient.output_widget import OutputWidget

    class QuietOutputWidget(OutputWidget):
        def sync_state(self) -> None:
            pass

    return QuietOutputWidget


def _heading(nb, index: int) -> str:
    """The first line of the markdown cell nearest above cell ``index`` (what the failing step is)."""
    for cell in reversed(nb.cells[:index]):
        if cell.cell_type == "markdown" and cell.source.strip():
            return cell.source.strip().splitlines()[0].lstrip("# ").strip()
    return ""


def execute_notebook(run: str | Path, out: str | Path | None = None, *, timeout: int = 600,
                     startup_timeout: int = 120, progress: bool = False, source: str | Path = SOURCE) -> Path:
    """Execute the gallery notebook against ``run`` (a run folder with ``scores/``, or a scores folder) and write it,
    with its outputs and saved widget state, to ``out`` (default ``RUN/gallery.ipynb``); returns ``out``.

    Bad input (no scored run at ``run``, no folder for ``out``) raises before a kernel starts; a failing cell
    raises :class:`NotebookError` naming the cell and its error, and nothing is written. ``timeout``: seconds per
    cell; ``progress``: a bar over the code cells."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, DeadKernelError

    from .gallery import load_run

    if timeout <= 0:
        raise ValueError(f"timeout {timeout}: give the seconds a cell may run (> 0)")
    run = Path(run).resolve()
    if not run.is_dir():
        raise FileNotFoundError(f"{run}: no such run folder")
    load_run(run)  # a scored run, or the one line saying why not
    out = Path(out) if out is not None else run / "gallery.ipynb"
    if not out.parent.is_dir():
        raise FileNotFoundError(f"{out}: no folder {out.parent} to write the notebook in")
    if out.is_dir():
        raise ValueError(f"{out} is a folder; give the notebook's file name")

    nb = nbformat.read(source, as_version=4)
    code = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(code), desc="notebook", unit="cell")
    current = {}

    def started(cell, cell_index, **_):
        current["cell"] = cell_index

    def executed(cell, cell_index, **_):
        if bar is not None:
            bar.update(1)

    def where() -> str:
        i = current.get("cell")
        return "before the first cell" if i is None else f"cell {code.index(i) + 1} of {len(code)} ({_heading(nb, i)})"

    client = NotebookClient(nb, timeout=timeout, startup_timeout=startup_timeout, kernel_name="python3",
                            store_widget_state=True, resources={"metadata": {"path": str(run)}},
                            on_cell_start=started, on_cell_executed=executed)
    client.widget_registry["@jupyter-widgets/output"] = {"OutputModel": _quiet_output_widget()}
    env = {**os.environ, "FROBNOLAB_RUN": str(run)}
    t0 = time.perf_counter()
    try:
        client.execute(env=env)
    except CellExecutionError as e:
        raise NotebookError(f"{where()} failed: {e.ename}: {e.evalue}") from None
    except TimeoutError:  # nbclient's CellTimeoutError is one
        raise NotebookError(f"{where()} ran past its timeout of {timeout} s") from None
    except DeadKernelError:
        raise NotebookError(f"the kernel died in {where()}") from None
    except RuntimeError as e:  # e.g. the kernel did not start in startup_timeout
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise NotebookError(f"the kernel failed ({where()}): {why}") from None
    finally:
        if bar is not None:
            bar.close()
    nb.metadata.setdefault("frobnolab", {}).update({"run": str(run), "seconds": round(time.perf_counter() - t0, 1)})
    atomic_write(out, nbformat.writes(nb))
    return out


def saved_widgets(nb) -> dict:
    """``{model_id: state}`` of an executed notebook's saved widget state (empty when it has none)."""
    return dict(nb.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {}))


def widget_views(nb) -> list[str]:
    """The model ids of every widget view among the notebook's outputs (what a reader's frontend draws)."""
    return [o["data"][WIDGET_VIEW]["model_id"] for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if WIDGET_VIEW in o.get("data", {})]
