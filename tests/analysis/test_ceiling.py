"""The supervised ceiling (analysis/scoring/ceiling.py): a layer that carries a concept has a ceiling near 1 for it,
and one that does not, near 0."""

import numpy as np

from frobnolab.analysis.scoring.ceiling import probe_ceiling
from frobnolab.analysis.store import ActivationStore
from frobnolab.analysis.tokens import ArrayTokens


def test_the_ceiling_is_high_for_what_the_layer_carries_and_low_for_what_it_does_not(tiny_run):
    store = ActivationStore(tiny_run / "store")
    tok = store["enc0"]
    cols = store.columns
    parts = [tok.chunk(k, "all") for k in range(tok.n_chunks)]
    gt = [np.asarray(c.gt, np.float32) for c in parts]
    where = [np.asarray(c.where) for c in parts]
    rng = np.random.default_rng(0)
    # a "layer" of three channels: depth, a smooth function of luminance, and noise
    acts = [np.stack([g[:, cols.index("depth")], np.tanh(2 * g[:, cols.index("luminance")]),
                      rng.normal(size=len(g))], 1).astype(np.float32) for g in gt]
    c = probe_ceiling(ArrayTokens("made", acts, gt, where, cols, tok.holdout_every), store.concepts)
    assert c["depth"] > 0.9 and c["luminance"] > 0.8, c
    # the image column is a function of neither
    assert c["column"] < 0.3, c
    noise = [rng.normal(size=(len(g), 3)).astype(np.float32) for g in gt]
    c0 = probe_ceiling(ArrayTokens("noise", noise, gt, where, cols, tok.holdout_every), store.concepts)
    assert max(np.nan_to_num(v, nan=-1) for v in c0.values()) < 0.2, c0
