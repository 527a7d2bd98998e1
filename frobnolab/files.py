"""Writing outputs so that a reader never sees half of one: every file and folder frobnolab makes goes through here.

- :func:`atomic_write`: bytes or text to a temporary file beside the target, then one rename;
- :func:`write_json`: strict JSON (NaN and infinities become ``null``; numpy scalars and arrays become numbers and
  lists), written atomically; any JSON reader can read it back;
- :func:`save_npy`: one ``.npy`` array, written atomically;
- :func:`atomic_folder`: a context manager yielding a temporary folder beside ``final``; renamed into place when the
  block ends without error, removed when it raises.

Temporary names start with a dot and end in ``.tmp-PID``, so :func:`sweep_temporaries` can remove what a killed
process left behind.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import numpy as np


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def atomic_write(path: str | Path, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` through a temporary file and one rename."""
    path = Path(path)
    tmp = _tmp(path)
    try:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def strict(obj):
    """``obj`` with numpy values made plain and non-finite floats made None, recursively (for strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return strict(obj.tolist())
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} as JSON: {obj!r:.80}")


def dumps(obj, indent: int | None = 1) -> str:
    """Strict JSON text of ``obj`` (see :func:`strict`)."""
    return json.dumps(strict(obj), indent=indent, allow_nan=False)


def write_json(path: str | Path, obj, indent: int | None = 1) -> Path:
    """``obj`` as strict JSON at ``path``, atomically."""
    return atomic_write(path, dumps(obj, indent))


def save_npy(path: str | Path, array: np.ndarray) -> Path:
    """One array as ``.npy`` at ``path``, atomically."""
    path = Path(path)
    tmp = _tmp(path)
    try:
        with open(tmp, "wb") as f:
            np.save(f, array)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


@contextmanager
def atomic_folder(final: str | Path, replace: bool = False):
    """Yield an empty temporary folder beside ``final``; on success it becomes ``final`` (``replace``: an existing
    ``final`` is removed first), on error it is removed."""
    final = Path(final)
    tmp = _tmp(final)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if replace and final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def sweep_temporaries(folder: str | Path) -> int:
    """Remove the temporary files and folders that killed processes left in ``folder``; returns how many."""
    n = 0
    for stray in Path(folder).glob(".*.tmp-*"):
        if stray.is_dir():
            shutil.rmtree(stray, ignore_errors=True)
        else:
            stray.unlink(missing_ok=True)
        n += 1
    return n
