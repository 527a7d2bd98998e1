"""How much a feature's scene R^2 depends on its MLP's random start, by learning rate: the scene MLPs
(``analysis/scoring/scene.py``) fitted on one fold of a real scoring sample and evaluated on the other, once per
initial seed; a stable estimator gives each feature about the same held-out R^2 whatever the seed.

    .venv/bin/python benchmarks/scene_mlp_stability.py RUN [--prefix taesd-] [--lrs 0.04,0.02,0.01,0.005]

RUN is a main-job folder (``frobnolab quickstart``'s ``--out``); the sample is the one its scoring draws (pass 1 of
``score_sae`` with the main job's config, the SAE's own features only, not the nulls). Prints one line per learning
rate: the held-out R^2 (mean and median over the features that fire on the fitting fold, for each seed), the
training-fold R^2, and the seed-to-seed differences (median, 90th percentile, maximum, how many exceed 0.1).
Not timed: its figures do not depend on the machine's load.
"""

import argparse
import tempfile
from pathlib import Path

import numpy as np

from frobnolab.analysis.pipeline import QUICKSTART_PRESETS
from frobnolab.analysis.run import score_sae
from frobnolab.analysis.scoring import scene as S


class _Stop(Exception):
    pass


def scoring_sample(run: Path, prefix: str):
    """The two folds' (ground truth, features, images) of the scoring's scene sample, and the SAE's width."""
    grabbed = {}

    def finish(self, *_, **__):
        grabbed["folds"] = {k: self.sample.arrays(k) for k in (0, 1)}
        raise _Stop

    keep, S.SceneExplained.finish = S.SceneExplained.finish, finish
    try:
        score_sae(run / f"{prefix}store", run / f"{prefix}sae", Path(tempfile.mkdtemp()),
                  QUICKSTART_PRESETS["quickstart"].score, progress=False, log=lambda *_: None)
    except _Stop:
        pass
    finally:
        S.SceneExplained.finish = keep
    return grabbed["folds"], _width(run / f"{prefix}sae")


def _width(sae: Path) -> int:
    import json

    return int(json.loads((sae / "training.json").read_text())["config"]["width"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path)
    ap.add_argument("--prefix", default="taesd-", help="'' for the autoencoder, 'taesd-' for TAESD")
    ap.add_argument("--lrs", default="0.04,0.02,0.01,0.005")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--steps", type=int, default=2000)
    args = ap.parse_args()
    folds, width = scoring_sample(args.run, args.prefix)
    (ga, fa, _), (gb, fb, _) = folds[0], folds[1]
    fa, fb = fa[:, :width], fb[:, :width]
    fit = fa.getnnz(0) > 0
    ya, yb = fa.toarray(), fb.toarray()
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"{args.run}, {args.prefix or 'autoencoder '}SAE: {fit.sum()} of {width} features fire on the fitting "
          f"fold; {len(ga)} / {len(gb)} tokens; {args.steps} steps")
    for lr in (float(v) for v in args.lrs.split(",")):
        train, held = [], []
        for s in seeds:
            p = S._fit(ga, fa, args.steps, 32, s, "cpu", fit, batch=128, lr=lr)
            train.append(S.r2(ya, p(ga))[fit])
            held.append(S.r2(yb, p(gb))[fit])
        d = np.abs(held[0] - held[1]) if len(held) > 1 else np.zeros(1)
        print(f"lr {lr}: held-out R^2 mean {' / '.join(f'{np.nanmean(h):.3f}' for h in held)}, median "
              f"{' / '.join(f'{np.nanmedian(h):.3f}' for h in held)}; training {np.nanmean(train[0]):.3f}; seed "
              f"{seeds[0]} vs {seeds[-1]}: |difference| median {np.nanmedian(d):.3f}, 90th percentile "
              f"{np.nanquantile(d, 0.9):.3f}, max {np.nanmax(d):.3f}, {int((d > 0.1).sum())} above 0.1",
              flush=True)


if __name__ == "__main__":
    main()
