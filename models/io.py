"""Saving and loading models: safetensors weights plus a JSON config naming the class (its "target").

A saved model folder holds ``model.safetensors`` and ``model.json``::

    {"target": "frobnolab.models.conv_ae.ConvAutoencoder", "config": {...}, "record": {...}}

``load_model(spec)`` also takes the pretrained models by name: ``taesd``, ``taesd:PATH``, ``taesdxl:PATH``,
``random-taesd[:SEED]`` (random weights: a null model), ``sd-vae``, ``sd-vae:SOURCE``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
from pathlib import Path

import torch
from torch import nn

from frobnolab.errors import UnknownNameError, unknown
from frobnolab.files import atomic_write, write_json

TARGETS = {
    "frobnolab.models.conv_ae.ConvAutoencoder": "frobnolab.models.conv_ae.ConvAEConfig",
    "frobnolab.models.field.CoordinateField": "frobnolab.models.field.FieldConfig",
    "frobnolab.models.voxel_grid.VoxelGrid": "frobnolab.models.voxel_grid.VoxelGridConfig",
}


def _import(dotted: str):
    mod, name = dotted.rsplit(".", 1)
    return getattr(importlib.import_module(mod), name)


def target_of(model: nn.Module) -> str:
    t = f"{type(model).__module__}.{type(model).__name__}"
    if t not in TARGETS:
        raise ValueError(f"cannot save a {t}: savable models are {sorted(TARGETS)}")
    return t


def save_model(model: nn.Module, folder: str | Path, record: dict | None = None) -> Path:
    """Write ``model.safetensors`` and ``model.json`` into ``folder`` (each atomically)."""
    from safetensors.torch import save

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"target": target_of(model), "config": dataclasses.asdict(model.config), "record": record or {}}
    atomic_write(folder / "model.safetensors",
                 save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}))
    write_json(folder / "model.json", meta)
    return folder


def build_model(target: str, config: dict) -> nn.Module:
    if target not in TARGETS:
        raise unknown("model target", target, sorted(TARGETS))
    cfg_cls = _import(TARGETS[target])
    names = [f.name for f in dataclasses.fields(cfg_cls)]
    extra = set(config) - set(names)
    if extra:
        raise UnknownNameError(f"{target}: unknown config fields {sorted(extra)} (known: {', '.join(names)})")
    return _import(target)(cfg_cls(**config))


def load_model(spec: str | Path, device: str = "cpu") -> nn.Module:
    """A model from a saved folder or a pretrained name (see the module docstring), in eval mode on ``device``."""
    from .pretrained import load_sd_vae, load_taesd, random_taesd

    spec = str(spec)
    name, _, arg = spec.partition(":")
    if Path(spec).is_dir() and (Path(spec) / "model.json").is_file():
        meta = json.loads((Path(spec) / "model.json").read_text())
        if not isinstance(meta, dict) or not {"target", "config"} <= set(meta):
            raise ValueError(f"{Path(spec) / 'model.json'}: not a frobnolab model file (needs target and config)")
        model = build_model(meta["target"], meta["config"])
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(Path(spec) / "model.safetensors")))
    elif name in ("taesd", "taesdxl"):
        model = load_taesd(arg or None, variant=name)
    elif name == "random-taesd":
        if not (arg or "0").isdigit():
            raise ValueError(f"model {spec!r}: random-taesd:SEED takes a non-negative integer seed")
        model = random_taesd(int(arg or 0))
    elif name == "sd-vae":
        model = load_sd_vae(arg or None)
    elif Path(spec).exists():
        raise ValueError(f"{spec}: not a saved frobnolab model (no model.json)")
    else:
        raise UnknownNameError(f"unknown model {spec!r}: give a saved model folder, taesd[:PATH], taesdxl[:PATH], "
                               "random-taesd[:SEED] or sd-vae[:SOURCE]")
    return model.to(device).eval()


def model_hash(model: nn.Module) -> str:
    """sha256 over the model's parameters and buffers (names, shapes, bytes), in name order."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        t = v.detach().cpu().contiguous()
        h.update(str(tuple(t.shape)).encode())
        # flattened first: a channels-last 1x1 conv weight counts as contiguous yet has a last stride above 1
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
