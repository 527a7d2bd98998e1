"""Hook points by module path, and a capture context manager that always removes its hooks.

Every model documents a table of :class:`HookPoint` (name -> module path, meaning). Activations are taken by module
path (``encoder.layers.3``), so the same code serves diffusers' AutoencoderTiny and AutoencoderKL and the lab's own
models. ``edit`` hooks replace a module's output (splicing an SAE in, ablating a layer).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import nn

from frobnolab.errors import unknown


@dataclass(frozen=True)
class HookPoint:
    """A named place to read activations: ``path`` is the module path inside the model's root module."""

    name: str
    path: str
    meaning: str


def _tensor(out):
    """The activation tensor of a module output (diffusers blocks may return tuples or output classes)."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    sample = getattr(out, "sample", None)
    if isinstance(sample, torch.Tensor):
        return sample
    raise TypeError(f"module output of type {type(out).__name__} holds no tensor to capture")


def submodule(root: nn.Module, path: str) -> nn.Module:
    try:
        return root.get_submodule(path)
    except AttributeError:
        raise unknown("module path", path, [n for n, _ in root.named_modules() if n], type(root).__name__) from None


class _Captured(Exception):
    """Raised by a hook of ``capture(stop=True)`` once every path is recorded; ``capture`` swallows it."""


@contextmanager
def capture(root: nn.Module, paths: list[str] | tuple[str, ...] = (), *,
            edit: dict[str, Callable[[torch.Tensor], torch.Tensor]] | None = None,
            detach: bool = True, stop: bool = False) -> Iterator[dict[str, torch.Tensor]]:
    """Record the outputs of the modules at ``paths`` (the dict fills during a forward) and apply ``edit``.

    ``edit[path](output) -> new output`` replaces that module's output; it runs before the output is recorded, so a
    captured activation is what the rest of the model saw. ``stop``: end the forward as soon as every path is
    recorded (the body's forward call is cut short there and the ``with`` block ends; extraction needs nothing
    after its deepest hook). Hooks are removed on exit, even when the body raises.
    """
    acts: dict[str, torch.Tensor] = {}
    edit = edit or {}
    handles = []
    try:
        for path in dict.fromkeys(list(paths) + list(edit)):
            mod = submodule(root, path)

            def hook(_mod, _inp, out, path=path):
                t = _tensor(out)
                if path in edit:
                    t = edit[path](t)
                    out = t if isinstance(out, torch.Tensor) else _replace(out, t)
                if path in paths:
                    acts[path] = t.detach() if detach else t
                    if stop and len(acts) == len(set(paths)):
                        raise _Captured
                return out

            handles.append(mod.register_forward_hook(hook))
        try:
            yield acts
        except _Captured:
            pass
    finally:
        for h in handles:
            h.remove()


def _replace(out, t):
    if isinstance(out, tuple):
        return (t,) + tuple(out[1:])
    if isinstance(out, list):
        return [t] + out[1:]
    out.sample = t
    return out


def hook_count(root: nn.Module) -> int:
    """Forward hooks registered anywhere in ``root`` (the tests check none are left behind)."""
    return sum(len(m._forward_hooks) for m in root.modules())
