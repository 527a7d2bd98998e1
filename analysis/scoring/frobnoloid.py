"""The frobnoloid score, written once: the point estimate, the nulls and the bootstrap all call :func:`frobnoloid`.

    gap        = clip(scene_r2 - named_best, 0, 1)   (what the scene explains and no name, pair or description does;
                                                      a feature with no named score has named_best 0)
    importance = clip(effect / causal_null95, 0, 1)  (the signed causal effect over the null's 95th percentile;
                                                      without a causal null: 1 where an effect was measured)
    real       = scene_r2 > scene_floor
    frob       = gap * importance * real

A frobnoloid *candidate* is real, has gap > candidate_gap, a q-value of its gap at most candidate_q (Benjamini-
Hochberg over every live feature, each feature's p-value against the random directions of its own firing rate:
``nulls.matched_p_values``), and (with a causal null) an effect above the causal null's 95th percentile.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Frobnoloid:
    frob: np.ndarray
    gap: np.ndarray
    importance: np.ndarray
    real: np.ndarray


def gap(scene_r2, named_best) -> np.ndarray:
    named = np.asarray(named_best, float)
    return np.clip(np.asarray(scene_r2, float) - np.where(np.isfinite(named), named, 0), 0, 1)


def has_causal_null(causal_null95) -> bool:
    return bool(np.isfinite(causal_null95) and causal_null95 > 0)


def importance(effect, causal_null95) -> np.ndarray:
    effect = np.asarray(effect, float)
    if has_causal_null(causal_null95):
        return np.nan_to_num(np.clip(effect / causal_null95, 0, 1))
    return np.isfinite(effect) * 1.0


def frobnoloid(scene_r2, named_best, effect, causal_null95, scene_floor: float) -> Frobnoloid:
    g = gap(scene_r2, named_best)
    imp = importance(effect, causal_null95)
    real = np.asarray(scene_r2, float) > scene_floor
    return Frobnoloid(g * imp * real, g, imp, real)


def candidates(fr: Frobnoloid, effect, q_value, causal_null95: float, candidate_gap: float,
               candidate_q: float) -> np.ndarray:
    """The candidate rule of the module docstring (a NaN q-value, an untested feature, is never a candidate)."""
    beats = (np.asarray(effect, float) > causal_null95) if has_causal_null(causal_null95) else True
    return fr.real & (fr.gap > candidate_gap) & (np.nan_to_num(np.asarray(q_value, float), nan=1.0) <= candidate_q) \
        & beats
