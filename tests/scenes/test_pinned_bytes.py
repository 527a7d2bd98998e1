"""A fixed config's bytes do not change across commits unless a change means them to (issue 17).

Two fresh clones of the main job gave different studies (2026-12-02 vs 2026-12-03) because a change to how scene
values are drawn changed every render, and nothing said so. This pins the SHA-256 of every buffer and of the scene
factors of a tiny render of each shipped family. When a change is meant to alter renders, re-pin with
``FROBNOLAB_REPIN=1 pytest tests/scenes/test_pinned_bytes.py`` and say so in the commit message.
"""

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from frobnolab.scenes.dataset import Dataset, RenderConfig, render_dataset

PINS = Path(__file__).with_name("pinned_render.json")
FAMILIES = ("shapes", "clutter", "single", "textures")


def _digests(tmp_path, family: str) -> dict:
    out = render_dataset(RenderConfig(family, n=4, size=24, seed=0, shard_size=2), tmp_path / family, workers=1,
                         progress=False)
    m = json.loads((Path(out) / "manifest.json").read_text())
    factors = np.ascontiguousarray(Dataset(out).factors, np.float64)
    return {"buffers": m["sha256"], "factors": hashlib.sha256(factors.tobytes()).hexdigest()}


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_render_bytes_are_pinned(tmp_path, family):
    got = _digests(tmp_path, family)
    pins = json.loads(PINS.read_text()) if PINS.exists() else {}
    if os.environ.get("FROBNOLAB_REPIN") == "1":
        pins[family] = got
        PINS.write_text(json.dumps(pins, indent=1, sort_keys=True) + "\n")
    assert family in pins, f"no pin for {family}: run with FROBNOLAB_REPIN=1 once"
    want = pins[family]
    changed = sorted(k for k in set(want["buffers"]) | set(got["buffers"])
                     if want["buffers"].get(k) != got["buffers"].get(k))
    assert not changed, f"{family}: buffers changed bytes: {changed} (meant? re-pin, see the module docstring)"
    assert got["factors"] == want["factors"], f"{family}: the scene factors changed"
