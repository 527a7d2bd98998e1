"""A small validating schema for scene family files, with per-field distributions.

A field is either a constant or one distribution, written as a one-key mapping::

    size: 0.5                       # constant
    size: {uniform: [0.3, 0.7]}     # low, high
    size: {normal: [0.5, 0.1]}      # mean, std (clipped to the field's bounds)
    count: {randint: [2, 5]}        # low, high, both included
    shape: {choice: [sphere, box]}  # uniform over the listed constants

Validation turns the parsed file into a tree whose leaves are :class:`Const` or :class:`Dist`; sampling that tree with
a :class:`Sampler` gives plain values and records every drawn value under its field path (the scene factors).
Errors are :class:`FamilyError`: the file, the field path and the reason.

Counterfactuals: a :class:`Sampler` may carry overrides, ``{field path: Override("set", v) | Override("add", d)}``.
:func:`resolve` always draws first (the generator is consumed exactly as without overrides, so every other factor
is the same); :func:`override` then replaces the drawn values of the overridden numeric leaves (constants included:
an overridden constant becomes a factor), checked against the field's bounds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from frobnolab.errors import UnknownNameError

DIST_KINDS = ("uniform", "normal", "randint", "choice")


class FamilyError(ValueError):
    """A scene family file is malformed: names the file, the field path and the reason."""

    def __init__(self, file: str, path: str, reason: str):
        self.file, self.path, self.reason = str(file), path or "<top>", reason
        super().__init__(f"{self.file}: {self.path}: {reason}")

    def __reduce__(self):  # picklable, so that a worker process can hand it to the driver
        return type(self), (self.file, self.path, self.reason)


class UnknownFamilyError(FamilyError, UnknownNameError):
    """A family name that is neither a shipped family nor a file."""


@dataclass(frozen=True)
class Const:
    value: Any
    # The field's bounds, for overrides of the constant; not part of equality (Const("mesh") == Const("mesh")).
    lo: float = field(default=-math.inf, compare=False)
    hi: float = field(default=math.inf, compare=False)
    integer: bool = field(default=False, compare=False)
    open_lo: bool = field(default=False, compare=False)


@dataclass(frozen=True)
class Dist:
    kind: str
    params: tuple
    lo: float = -math.inf
    hi: float = math.inf
    integer: bool = False
    open_lo: bool = False


OPS = ("set", "add")


@dataclass(frozen=True)
class Override:
    """One counterfactual change of a numeric field: ``op`` "set" (the field becomes ``value``) or "add" (the drawn
    value plus ``value``)."""

    op: str
    value: float

    def __post_init__(self):
        if self.op not in OPS:
            raise ValueError(f"override op must be 'set' or 'add', got {self.op!r}")
        if isinstance(self.value, bool) or not isinstance(self.value, (int, float)) or not math.isfinite(self.value):
            raise ValueError(f"override value must be a finite number, got {self.value!r}")

    @classmethod
    def of(cls, x) -> "Override":
        """An Override from itself or a pair ``("set", v)`` / ``("add", d)``."""
        if isinstance(x, Override):
            return x
        if not isinstance(x, (tuple, list)) or len(x) != 2:
            raise ValueError(f"an override is ('set', value) or ('add', delta), got {x!r}")
        return cls(x[0], x[1])


def overridable(leaf) -> bool:
    """Whether a leaf is a numeric field an override may change: a number (constant, uniform, normal or randint).
    Choices are not: their factor is the index of the choice, not a value."""
    if isinstance(leaf, Const):
        return isinstance(leaf.value, (int, float)) and not isinstance(leaf.value, bool)
    return isinstance(leaf, Dist) and leaf.kind != "choice"


def _bounds(leaf) -> str:
    return f"{'(' if leaf.open_lo else '['}{leaf.lo:g}, {leaf.hi:g}]"


class Sampler:
    """Draws values from a validated tree and records each draw as a named scene factor.

    overrides: ``{field path: Override}`` that :func:`override` applies; ``known`` collects the numeric field paths
    it visited (those an override may name), ``applied`` the overrides it used."""

    def __init__(self, rng: np.random.Generator, overrides: dict | None = None):
        self.rng = rng
        self.factors: dict[str, float] = {}
        self.overrides = {k: Override.of(v) for k, v in (overrides or {}).items()}
        self.known: set[str] = set()
        self.applied: set[str] = set()

    def replace(self, leaf: Const | Dist, path: str, value):
        """``value`` (drawn from ``leaf`` at ``path``) as overridden, recorded as the factor ``path``."""
        if not overridable(leaf):
            return value
        self.known.add(path)
        ov = self.overrides.get(path)
        if ov is None:
            return value
        new = ov.value if ov.op == "set" else value + ov.value
        how = f"{new!r}" if ov.op == "set" else f"{new!r} ({value!r} + {ov.value!r})"
        if not (leaf.lo <= new <= leaf.hi) or (leaf.open_lo and new == leaf.lo):
            raise ValueError(f"{path}: {how} is outside the field's bounds {_bounds(leaf)}")
        if leaf.integer:
            if float(new) != int(new):
                raise ValueError(f"{path}: {how} is not a whole number")
            new = int(new)
        else:
            new = float(new)
        self.applied.add(path)
        self.factors[path] = float(new)
        return new

    def draw(self, leaf: Const | Dist, path: str):
        if isinstance(leaf, Const):
            return leaf.value
        rng, (a, b) = self.rng, (leaf.params + (None,))[:2]
        if leaf.kind == "choice":
            i = int(rng.integers(len(leaf.params)))
            value, factor = leaf.params[i], float(i)
        elif leaf.kind == "randint":
            value = int(rng.integers(a, b + 1))
            factor = float(value)
        elif leaf.kind == "uniform":
            value = float(rng.uniform(a, b))
        else:
            value = _truncated_normal(rng, a, b, leaf)
        if leaf.kind in ("uniform", "normal"):
            if leaf.integer:
                value = int(round(value))
            factor = float(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            factor = float(value)
        self.factors[path] = factor
        return value


def _truncated_normal(rng, mu, sd, leaf: Dist) -> float:
    """A normal draw restricted to the field's bounds (by rejection; clipped if the bounds are far in a tail)."""
    for _ in range(1000):
        v = float(rng.normal(mu, sd))
        if leaf.lo <= v <= leaf.hi and not (leaf.open_lo and v == leaf.lo):
            return v
    v = float(np.clip(v, leaf.lo, leaf.hi))
    return float(np.nextafter(v, math.inf)) if leaf.open_lo and v == leaf.lo else v


Check = Callable[[Any, str], Any]  # (raw value, field path) -> validated tree; raises _Bad


class _Bad(Exception):
    def __init__(self, path: str, reason: str):
        self.path, self.reason = path, reason


def fail(path: str, reason: str):
    raise _Bad(path, reason)


def run_check(check: Check, raw: Any, file: str):
    try:
        return check(raw, "")
    except _Bad as e:
        raise FamilyError(file, e.path, e.reason) from None


def join(path: str, key) -> str:
    return f"{path}[{key}]" if isinstance(key, int) else (f"{path}.{key}" if path else str(key))


def _is_dist(raw) -> bool:
    return isinstance(raw, dict) and len(raw) == 1 and next(iter(raw)) in DIST_KINDS


def number(lo: float = -math.inf, hi: float = math.inf, *, integer: bool = False, open_lo: bool = False,
           dist: bool = True) -> Check:
    """A number in [lo, hi] (or (lo, hi] with open_lo), constant or distributed (normal draws are truncated)."""

    def const(v, path):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            fail(path, f"expected a {'whole ' if integer else ''}number, got {type(v).__name__} {v!r}")
        if not math.isfinite(v):
            fail(path, f"must be finite, got {v!r}")
        if integer and float(v) != int(v):
            fail(path, f"expected a whole number, got {v!r}")
        if v < lo or v > hi or (open_lo and v == lo):
            fail(path, f"must be {'>' if open_lo else '>='} {lo} and <= {hi}, got {v!r}")
        return int(v) if integer else float(v)

    def check(raw, path):
        if not _is_dist(raw):
            if isinstance(raw, dict):
                fail(path, f"expected a number or one of {{{', '.join(DIST_KINDS)}}}, got keys {sorted(raw)}")
            return Const(const(raw, path), lo, hi, integer, open_lo)
        if not dist:
            fail(path, "must be a constant here, not a distribution")
        kind, params = next(iter(raw.items()))
        p = join(path, kind)
        if kind == "choice":
            return _choice(params, p, const)
        if not isinstance(params, list) or len(params) != 2:
            fail(p, f"expected a list [a, b], got {params!r}")
        if kind == "normal":
            mu = number(lo, hi, dist=False)(params[0], join(p, 0)).value
            sd = number(0, open_lo=True, dist=False)(params[1], join(p, 1)).value
            return Dist("normal", (mu, sd), lo, hi, integer, open_lo)
        if kind == "randint" and not integer:
            fail(p, "randint is for whole-number fields")
        a, b = const(params[0], join(p, 0)), const(params[1], join(p, 1))
        if a > b:
            fail(p, f"low {a} is above high {b}")
        return Dist(kind, (a, b), lo, hi, integer, open_lo)

    return check


def _choice(params, path, const) -> Dist:
    if not isinstance(params, list) or not params:
        fail(path, f"expected a non-empty list, got {params!r}")
    return Dist("choice", tuple(const(v, join(path, i)) for i, v in enumerate(params)))


def enum(*choices: str, dist: bool = True) -> Check:
    def const(v, path):
        if v not in choices:
            fail(path, f"expected one of {list(choices)}, got {v!r}")
        return v

    def check(raw, path):
        if _is_dist(raw):
            kind, params = next(iter(raw.items()))
            if kind != "choice" or not dist:
                fail(join(path, kind), "only {choice: [...]} is allowed here" if dist else "must be a constant")
            return _choice(params, join(path, kind), const)
        return Const(const(raw, path))

    return check


def string(check_value: Callable[[str, str], None] | None = None) -> Check:
    def check(raw, path):
        if not isinstance(raw, str) or not raw:
            fail(path, f"expected a non-empty string, got {raw!r}")
        if check_value:
            check_value(raw, path)
        return Const(raw)

    return check


def vector(n: int, item: Check) -> Check:
    def check(raw, path):
        if not isinstance(raw, list) or len(raw) != n:
            fail(path, f"expected a list of {n} values, got {raw!r}")
        return [item(v, join(path, i)) for i, v in enumerate(raw)]

    return check


def color() -> Check:
    """An sRGB colour: [r, g, b] in [0, 1], or {hsv: [h (degrees), s, v]}; each entry may be distributed."""
    unit = number(0.0, 1.0)
    rgb = vector(3, unit)
    hsv = record({"hsv": (lambda raw, path: _hsv(raw, path), ...)})

    def check(raw, path):
        if isinstance(raw, dict) and "hsv" in raw:
            return hsv(raw, path)
        return {"rgb": rgb(raw, path)}

    return check


def _hsv(raw, path):
    if not isinstance(raw, list) or len(raw) != 3:
        fail(path, f"expected [hue (degrees), saturation, value], got {raw!r}")
    return [number(0.0, 360.0)(raw[0], join(path, 0)), number(0.0, 1.0)(raw[1], join(path, 1)),
            number(0.0, 1.0)(raw[2], join(path, 2))]


REQUIRED = ...


def record(fields: dict[str, tuple[Check, Any]]) -> Check:
    """A mapping with known keys; each field is (check, default), default REQUIRED (...) or a raw value."""

    def check(raw, path):
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            fail(path, f"expected a mapping, got {type(raw).__name__} {raw!r}")
        for k in raw:
            if k not in fields:
                fail(join(path, k), f"unknown field (known: {', '.join(sorted(fields))})")
        out = {}
        for name, (sub, default) in fields.items():
            if name in raw:
                out[name] = sub(raw[name], join(path, name))
            elif default is REQUIRED:
                fail(join(path, name), "required field is missing")
            elif default is None:
                out[name] = None
            else:
                out[name] = sub(default, join(path, name))
        return out

    return check


def tagged(tag: str, variants: dict[str, Check]) -> Check:
    """A record whose ``tag`` key picks one of several schemas."""

    def check(raw, path):
        if not isinstance(raw, dict):
            fail(path, f"expected a mapping, got {type(raw).__name__} {raw!r}")
        kind = raw.get(tag)
        if not isinstance(kind, str) or kind not in variants:
            fail(join(path, tag), f"expected one of {sorted(variants)}, got {kind!r}")
        body = {k: v for k, v in raw.items() if k != tag}
        out = variants[kind](body, path)
        out[tag] = kind
        return out

    return check


def list_of(item: Check, min_len: int = 0) -> Check:
    def check(raw, path):
        if raw is None:
            raw = []
        if not isinstance(raw, list):
            fail(path, f"expected a list, got {type(raw).__name__}")
        if len(raw) < min_len:
            fail(path, f"expected at least {min_len} entries, got {len(raw)}")
        return [item(v, join(path, i)) for i, v in enumerate(raw)]

    return check


def optional(sub: Check) -> Check:
    def check(raw, path):
        return None if raw is None else sub(raw, path)

    return check


def resolve(tree, sampler: Sampler, path: str = ""):
    """Sample every leaf of a validated tree: plain values, factors recorded in ``sampler``."""
    if isinstance(tree, (Const, Dist)):
        return sampler.draw(tree, path)
    if isinstance(tree, dict):
        return {k: resolve(v, sampler, join(path, k)) for k, v in tree.items()}
    if isinstance(tree, list):
        return [resolve(v, sampler, join(path, i)) for i, v in enumerate(tree)]
    return tree


def override(tree, value, sampler: Sampler, path: str = ""):
    """``value`` (:func:`resolve` of ``tree``) with the sampler's overrides applied to its numeric leaves."""
    if isinstance(tree, (Const, Dist)):
        return sampler.replace(tree, path, value)
    if isinstance(tree, dict):
        return {k: override(tree[k], v, sampler, join(path, k)) if k in tree else v for k, v in value.items()}
    if isinstance(tree, list):
        return [override(t, v, sampler, join(path, i)) for i, (t, v) in enumerate(zip(tree, value))]
    return value
