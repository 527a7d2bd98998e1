"""The understood share streamed over token blocks (analysis/scoring/understood.py) against the same shares computed
from whole (tokens x F) matrices, as the stage did before it streamed."""

import numpy as np
import torch

from frobnolab.analysis.planted import PlantedProbe
from frobnolab.analysis.scoring import understood as U


def _whole(probe, predictors, fold_of, mean_act, live, rng, n_shuffle):
    """The shares from whole matrices: every prediction of every token at once, the shuffles' mean and spread
    from the whole description matrix."""
    g, images = probe.token_ground_truth(), probe.token_images()
    fold, F = fold_of[images], len(mean_act)
    loss = lambda f: float(np.mean(probe.splice_losses(np.maximum(f, 0))))  # noqa: E731
    losses = {"mean": loss(np.broadcast_to(mean_act, (len(g), F)))}
    for name, predict in predictors.items():
        losses[name] = loss(U._cross_fitted(predict, g, fold, F))
    desc = U._cross_fitted(predictors["descriptions"], g, fold, F).astype(np.float64)
    mu, sd = desc.mean(0), desc.std(0)
    idx, null = np.flatnonzero(live), []
    for _ in range(n_shuffle):
        perm = np.arange(F)
        perm[idx] = idx[rng.permutation(len(idx))]
        a = np.where(sd[perm] > 0, sd / np.where(sd[perm] > 0, sd[perm], 1), 0)
        null.append(loss(desc[:, perm] * a + (mu - mu[perm] * a)))
    return losses, null


def test_streamed_shares_equal_the_whole_matrix_ones(monkeypatch):
    rng = np.random.default_rng(0)
    n, F, G = 203, 12, 3
    g = rng.normal(size=(n, G))
    images = np.sort(rng.integers(0, 10, size=n))
    w = rng.normal(size=F)
    units = np.maximum(g @ rng.normal(size=(G, F)), 0)
    probe = PlantedProbe(units, w, images, gt=g)
    fold_of = np.arange(10) % 2
    coef = {0: rng.normal(size=(G, F)), 1: rng.normal(size=(G, F))}
    predictors = {"descriptions": lambda x, fit: (x @ coef[fit]).astype(np.float32),
                  "named": lambda x, fit: (np.abs(x) @ coef[fit]).astype(np.float32)}
    mean_act, live = units.mean(0).astype(np.float32), np.arange(F) < F - 1
    monkeypatch.setattr(U, "BLOCK", 16)  # 13 blocks, each cut by the folds
    got = U.understood_share(probe, predictors, fold_of, mean_act, live, np.random.default_rng(1), n_shuffle=5)
    losses, null = _whole(probe, predictors, fold_of, mean_act, live, np.random.default_rng(1), 5)
    for k, v in losses.items():
        np.testing.assert_allclose(got["losses"][k], v, rtol=1e-5, err_msg=k)
    np.testing.assert_allclose(got["null"]["shuffled_losses"], null, rtol=1e-4)
    assert len(set(np.round(null, 6))) == 5  # five different shuffles, so their order was checked too


def test_a_causal_probe_reconstructs_blocks_as_it_decodes_the_whole():
    from frobnolab.analysis.probe import CausalProbe

    class Probe:  # the two methods on a bare SAE-like decoder, without a model
        device = "cpu"
        sae = torch.nn.Linear(5, 3)
        sae.decode = sae.forward

    f = np.random.default_rng(0).random((20000, 5)).astype(np.float32)
    whole = CausalProbe.reconstruct(Probe(), f)
    parts = torch.cat([CausalProbe.reconstruct(Probe(), f[s:s + 8192]) for s in range(0, len(f), 8192)])
    assert torch.equal(whole, parts)
