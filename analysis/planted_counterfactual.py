"""Validating the counterfactual responses on planted truth: units that are known functions of the ground truth of
real counterfactual renders, where each unit reads a quantity that exactly one of the swept factors moves.

The sweeps (:data:`SWEEPS`, on the ``shapes`` family: one dielectric object on a floor before a backdrop) and the
quantity that only that sweep moves among them:

| factor | what only it moves | planted units |
| --- | --- | --- |
| ``object0.material.color.hsv[0]`` | object 0's albedo | its red - blue albedo, a threshold of it, its albedo hue's cosine |
| ``floor.material.color.hsv[0]`` | the floor's albedo | its red - blue albedo, its albedo hue's sine |
| ``background.hsv[0]`` | the backdrop's colour | its red, its hue's cosine |
| ``ambient.intensity`` | the diffuse shading everywhere | shading, its square |
| ``shadows`` (on / off) | the cast-shadow mask | the shadow fraction, the shadow on the floor |
| ``object0.material.roughness`` | the highlight's sharpness | object 0's specular highlight, a threshold of it |

Besides these, a whole-image unit (the backdrop's red - blue over the whole image, at every token: it must respond
at a distance, where the token's own truth did not change) and nameless noise units, fixed functions of the base
scene and the token's position (pure noise for the model; exactly zero response): they must stay at their null.
No geometric factor is swept: moving or resizing an object moves its albedo's footprint, its shadow and its
highlight too, so no quantity would have one factor alone (the first design, on ``clutter`` with ``object1.size``,
split the shadow units between the switch and the size on one seed of three; a metallic object's highlight took
its hue). Geometric responses are tested on constructed ladders (tests/analysis/test_counterfactual.py).

Pass criteria (:func:`validate_counterfactual`): >= 95% of the factor units assigned to their factor (explained by
it: q <= 0.1 and the largest share of the unit's effect), the whole-image unit assigned to hue with a distant
response above zero, every noise unit explained by nothing and beating no factor's null (p > 0.05). Develop on one
seed, report on others (``--seeds``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from frobnolab.files import write_json

from .counterfactual import Ladder, ResponseConfig, responses

SWEEPS = (
    {"factor": "object0.material.color.hsv[0]", "values": [0.0, 120.0, 240.0], "deltas": None},
    {"factor": "floor.material.color.hsv[0]", "values": [0.0, 120.0, 240.0], "deltas": None},
    {"factor": "background.hsv[0]", "values": [0.0, 120.0, 240.0], "deltas": None},
    {"factor": "ambient.intensity", "values": [0.1, 0.45, 0.8], "deltas": None},
    {"factor": "shadows", "values": [1.0, 0.0], "deltas": None},
    {"factor": "object0.material.roughness", "values": [0.15, 0.5, 0.9], "deltas": None},
)
"""The planted validation's sweeps on ``shapes`` (one dielectric object, so its highlight is white whatever its
hue)."""

N_NOISE = 48
"""Noise units (fixed functions of base scene and position): their variance is what random directions mostly
carry, as in a real layer where most of a direction's variance has nothing to do with one factor."""


def units(gt: np.ndarray, columns: list[str], where: np.ndarray, base_of_image: np.ndarray,
          image_mean_warmth: np.ndarray) -> tuple[np.ndarray, list[dict]]:
    """Planted units ``(N, P)`` of tokens with ground truth ``gt (N, G)`` and what each is: {name, kind, factor}.
    Every unit is one fixed function (no data-dependent scaling), so it is the same "model" on every ladder."""
    c = lambda n: gt[:, columns.index(n)].astype(np.float64)  # noqa: E731
    warm = 1.0 + c("albedo_r") - c("albedo_b")  # units are non-negative, as features are
    obj0 = c("instance=2")  # object 0 (the floor is instance 1)
    out, spec = [], []

    def add(name, kind, factor, v):
        out.append(np.asarray(v, np.float64))
        spec.append({"name": name, "kind": kind, "factor": factor})

    hue, floor_hue, bg_hue, amb, sh, rough = (s["factor"] for s in SWEEPS)
    obj0, floor, bg = c("instance=2"), c("shape_class=floor"), c("instance=background")  # the floor is instance 1
    add("object 0's warmth", "factor", hue, warm * obj0)
    add("object 0 warm", "factor", hue, (warm > 1.1) * obj0)
    add("object 0's albedo hue.cos", "factor", hue, (1.0 + c("albedo_hue.cos")) * obj0)
    add("floor warmth", "factor", floor_hue, warm * floor)
    add("floor albedo hue.sin", "factor", floor_hue, (1.0 + c("albedo_hue.sin")) * floor)
    add("backdrop red", "factor", bg_hue, c("albedo_r") * bg)
    add("backdrop albedo hue.cos", "factor", bg_hue, (1.0 + c("albedo_hue.cos")) * bg)
    add("shading", "factor", amb, c("shading"))
    add("shading^2", "factor", amb, c("shading") ** 2)
    add("shadow", "factor", sh, c("shadow"))
    add("shadow on the floor", "factor", sh, c("shadow") * floor)
    add("object 0's specular", "factor", rough, c("specular") * obj0)
    add("object 0's highlight", "factor", rough, ((c("specular") > 0.02) * obj0).astype(float))
    add("image's backdrop warmth", "global", bg_hue, image_mean_warmth[where[:, 0]])
    key = (base_of_image[where[:, 0]].astype(np.int64) * 1000 + where[:, 1]) * 1000 + where[:, 2]
    for k in range(N_NOISE):
        h = np.random.default_rng(k).permutation(1 << 16)[(key * 2654435761 + k) % (1 << 16)]
        add(f"noise{k}", "noise", "", h / float(1 << 16))
    return np.stack(out, 1), spec


def _image_warmth(ds) -> np.ndarray:
    """Red - blue albedo summed over each image's backdrop (instance 0) as a share of the image, ``(I,)``."""
    out = []
    for i in range(len(ds)):
        a, bg = ds["albedo"][i], ds["instance"][i] == 0
        out.append(float(((a[..., 0] - a[..., 2]) * bg).mean()) + 1.0)
    return np.array(out)


def validate_counterfactual(out: str | Path, *, family: str = "shapes", bases: int = 6, size: int = 32,
                            stride: int = 2, seed: int = 0, cfg: ResponseConfig | None = None,
                            progress: bool = True, workers: int = 0) -> dict:
    """Render :data:`SWEEPS` on ``bases`` base scenes, plant :func:`units` on their tokens, measure their responses
    and check the pass criteria; writes and returns ``OUT/validation.json`` (``passed`` inside)."""
    from frobnolab.scenes.counterfactual import render_counterfactual, slug

    from .planted import PoolProbe
    from .store import ActivationStore, ExtractConfig, extract

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ladders, spec = [], None
    for s in SWEEPS:
        data = render_counterfactual(family, s["factor"], values=s["values"], deltas=s["deltas"], n=bases, seed=seed,
                                     size=size, out=out / "data" / slug(s["factor"]), workers=workers,
                                     progress=progress)
        store = ActivationStore(extract(ExtractConfig(model="pool-probe", dataset=str(data), seed=seed),
                                        out / "tokens" / slug(s["factor"]), model=PoolProbe(stride),
                                        progress=progress, force=True))
        lad = Ladder.from_store(store, "cells")
        acts, spec = units(lad.gt, store.columns, lad.where, lad.base, _image_warmth(store.dataset))
        lad.acts = acts
        ladders.append(lad)
    cfg = cfg or ResponseConfig(seed=seed)
    P = len(spec)
    table, summary = responses(ladders, lambda a: a, P, cfg)
    exp = {int(f): str(e) for f, e in zip(table["feature"], table["explained_by"])}
    q_of, p_of, sel_of, dist = {}, {}, {}, {}
    for f, fac, q, p, sel, d in zip(table["feature"], table["factor"], table["q"], table["p"], table["selectivity"],
                                    table["distant"]):
        q_of.setdefault(int(f), {})[fac] = float(q)
        p_of.setdefault(int(f), {})[fac] = float(p)
        sel_of.setdefault(int(f), {})[fac] = float(sel)
        dist[(int(f), fac)] = float(d)
    rows = []
    for j, s in enumerate(spec):
        got = exp.get(j, "")
        if s["kind"] == "noise":
            ok = got == "" and all(not p <= cfg.explain_p for p in p_of.get(j, {}).values())
        elif s["kind"] == "global":
            ok = got == s["factor"] and dist.get((j, s["factor"]), 0.0) > 0
        else:
            ok = got == s["factor"]
        rows.append({**s, "assigned": got, "ok": bool(ok),
                     "p": p_of.get(j, {}), "q": q_of.get(j, {}), "selectivity": sel_of.get(j, {}),
                     "distant": {k: v for (f, k), v in dist.items() if f == j}})
    fac = [r for r in rows if r["kind"] == "factor"]
    attributed = sum(r["ok"] for r in fac) / len(fac)
    noise_ok = all(r["ok"] for r in rows if r["kind"] == "noise")
    global_ok = all(r["ok"] for r in rows if r["kind"] == "global")
    res = {"family": family, "bases": bases, "size": size, "stride": stride, "seed": seed,
           "sweeps": [dict(s) for s in SWEEPS], "attributed": attributed, "noise_at_null": noise_ok,
           "global_distant": global_ok, "passed": bool(attributed >= 0.95 and noise_ok and global_ok),
           "units": rows, "summary": summary}
    write_json(out / "validation.json", res)
    return res


DEV_SEEDS = (0, 1, 2, 3)
"""The seeds the planted design was developed on (base scenes and noise units). Seeds 1-3 were the first report
seeds: on them the highlight unit's threshold (pooled specular > 0.05) was never crossed differently within the
roughness ladder (a unit with no response, a fault of the design), so it was lowered to 0.02 and the report moved
to fresh seeds."""
REPORT_SEEDS = (4, 5, 6)
"""The seeds its figures are reported on (not looked at while the design was changed)."""


def over_seeds(out: str | Path, seeds=REPORT_SEEDS, **kw) -> dict:
    """:func:`validate_counterfactual` at each seed (into ``OUT/seedS``) and the pooled share of factor units
    attributed; writes and returns ``OUT/seeds.json``."""
    out = Path(out)
    runs = {int(s): validate_counterfactual(out / f"seed{s}", seed=int(s), **kw) for s in seeds}
    fac = [u for r in runs.values() for u in r["units"] if u["kind"] == "factor"]
    res = {"seeds": [int(s) for s in seeds],
           "attributed": sum(u["ok"] for u in fac) / max(len(fac), 1),
           "per_seed": {s: {k: r[k] for k in ("attributed", "noise_at_null", "global_distant", "passed")}
                        for s, r in runs.items()},
           "missed": [{"seed": s, "unit": u["name"], "factor": u["factor"], "assigned": u["assigned"],
                       "p": u["p"].get(u["factor"]), "selectivity": u["selectivity"].get(u["factor"])}
                      for s, r in runs.items() for u in r["units"] if not u["ok"]],
           "passed": all(r["passed"] for r in runs.values())}
    write_json(out / "seeds.json", res)
    return res
