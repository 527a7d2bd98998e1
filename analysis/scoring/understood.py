"""Understanding, measured: splice into the model, in place of every feature's activation, the value a
description of it predicts from the exact ground truth, and see how much of the model's performance survives.

On the probe's held-out images (:class:`~frobnolab.analysis.probe.CausalProbe`, or the planted probe) every feature
is set, at every token, to what a predictor of it says from that token's ground truth; the SAE decodes the result
and the model runs on from the hook. The loss against the known optimal output is compared with two ends:

- ``sae``: the SAE spliced in with its own features (everything the features carry);
- ``mean``: every feature at its mean activation (knowing nothing token by token);

    understood(x) = (L_mean - L_x) / (L_mean - L_sae)

is the share of what the features contribute, beyond their averages, that predictor ``x`` reproduces from the
ground truth (1: the descriptions are as good as the features; 0: no better than constants; it can be negative).
``recovered(x) = (L_zero - L_x) / (L_zero - L_sae)`` is the same against zero-ablating the layer. Predictors:

- ``descriptions``: each feature's short formula (:mod:`.describe`);
- ``named``: each feature's best named concept, or pair, through its per-bin mean activation (the named match);
- ``scene``: each feature's MLP of all the ground truth (:mod:`.scene`): how much the scene explains at all;
- ``shuffled`` (the null): the descriptions dealt to the wrong features (a random permutation among the live ones,
  each rescaled to the mean and spread of the description it replaces), repeated; ``null95`` is the 95th
  percentile of their shares. The descriptions are understood only where they beat it.

Every prediction is cross-fitted: a token of an image in fold b is predicted with values fitted on fold 1 - b
(the structure of a description is chosen on both folds of the scoring sample, as its ``description_r2`` is).
Predicted activations are clipped at 0 (the features are ReLU outputs).
"""

from __future__ import annotations

import numpy as np


BLOCK = 8192
"""Tokens predicted at a time: a block's ``(BLOCK, F)`` predictions are decoded and dropped, so the stage holds
reconstructions ``(tokens, d_in)``, never a ``(tokens, F)`` matrix (4.3 GB each at 262,144 probe tokens and 4,096
features; three of them set the scorer's peak before)."""


def _cross_fitted(predict, g: np.ndarray, fold: np.ndarray, n_features: int) -> np.ndarray:
    """``predict(g_part, fit) -> (n, F)`` applied to each image fold's tokens with the other fold's values."""
    out = np.zeros((len(g), n_features), np.float32)
    for b in (0, 1):
        m = fold == b
        if m.any():
            out[m] = predict(g[m], 1 - b)
    return out


def _blocks(predict, g: np.ndarray, fold: np.ndarray, n_features: int):
    """The cross-fitted predictions ``(n, F)`` float32 torch tensors, :data:`BLOCK` consecutive tokens at a time."""
    import torch

    for s in range(0, len(g), BLOCK):
        yield torch.from_numpy(_cross_fitted(predict, g[s:s + BLOCK], fold[s:s + BLOCK], n_features))


def understood_share(probe, predictors: dict, fold_of: np.ndarray, mean_act: np.ndarray, live: np.ndarray,
                     rng: np.random.Generator, n_shuffle: int = 20) -> dict:
    """The shares of the module docstring. ``predictors``: {name: predict(g (n, G), fit fold) -> (n, F)}, with
    "descriptions" among them (the null shuffles it); ``fold_of``: image -> fold; ``mean_act (F,)``; ``live (F,)``
    bool: the features the null permutes. Predictions are made, clipped and decoded a block of tokens at a time
    (``probe.reconstruct``), so memory does not grow with features times tokens."""
    import torch

    g = probe.token_ground_truth() if hasattr(probe, "token_ground_truth") else None
    if g is None:
        return {"measured": False, "why": "the probe has no per-token ground truth (fields: its ray samples are not "
                                          "the store's tokens)"}
    images = probe.token_images()
    fold = fold_of[images]
    F = len(mean_act)
    base = probe.baseline()
    losses = {"clean": float(np.mean(base["clean"])), "sae": float(np.mean(base["sae"])),
              "zero": float(np.mean(base["zero"]))}

    def splice(blocks) -> float:  # blocks of (n, F) float32, clipped at 0 in place, decoded one by one
        return float(np.mean(probe.reconstruction_losses([probe.reconstruct(f.clamp_(min=0).numpy())
                                                          for f in blocks])))

    mean_F = torch.from_numpy(np.asarray(mean_act, np.float32))
    losses["mean"] = splice(mean_F.expand(min(BLOCK, len(g) - s), F).clone() for s in range(0, len(g), BLOCK))
    # the descriptions' mean and spread over every token (float64 sums, taken from each block before it is
    # clipped), for the null below: gathered while their own share is measured, not in a pass of their own
    s1, s2 = torch.zeros(F, dtype=torch.float64), torch.zeros(F, dtype=torch.float64)

    def summed(blocks):
        for d in blocks:
            s1.add_(d.sum(0, dtype=torch.float64))
            s2.add_((d.double() ** 2).sum(0))
            yield d

    names = list(predictors)
    for name in names:
        blocks = _blocks(predictors[name], g, fold, F)
        losses[name] = splice(summed(blocks) if name == "descriptions" else blocks)
    idx = np.flatnonzero(live)
    null_losses = []
    if "descriptions" in predictors and len(idx) > 1:
        # one more pass deals each block's descriptions to the wrong features for a group of shuffles at once
        mu = (s1 / len(g)).float()
        sd = (s2 / len(g) - (s1 / len(g)) ** 2).clamp_(min=0).sqrt_().float()
        shuffles = []
        for _ in range(n_shuffle):
            # feature j gets the description of perm(j), rescaled to the mean and spread of its own
            perm = np.arange(F)
            perm[idx] = idx[rng.permutation(len(idx))]
            p = torch.from_numpy(perm)
            a = torch.where(sd[p] > 0, sd / torch.where(sd[p] > 0, sd[p], 1), torch.zeros_like(sd))
            shuffles.append((p, a, mu - mu[p] * a))
        # as many shuffles a pass as keep their reconstructions within about 1 GB (14 of the 20 for TAESD's
        # 64 channels on 262,144 probe tokens)
        per_token = probe.reconstruct(np.zeros((1, F), np.float32)).nbytes
        group = max(1, int(1e9 // max(1, per_token * len(g))))
        for lo in range(0, len(shuffles), group):
            parts = [[] for _ in shuffles[lo:lo + group]]
            for d in _blocks(predictors["descriptions"], g, fold, F):
                for (p, a, b), out in zip(shuffles[lo:lo + group], parts):
                    out.append(probe.reconstruct(d.index_select(1, p).mul_(a).add_(b).clamp_(min=0).numpy()))
            null_losses += [float(np.mean(probe.reconstruction_losses(out))) for out in parts]

    def share(loss, lo):
        gap = losses[lo] - losses["sae"]
        return float((losses[lo] - loss) / gap) if abs(gap) > 1e-12 else float("nan")

    out = {"measured": True, "tokens": int(len(g)), "images": int(len(np.unique(images))), "losses": losses,
           "understood": {k: share(losses[k], "mean") for k in names},
           "recovered": {k: share(losses[k], "zero") for k in ("mean", *names)},
           "null": {"shuffled_losses": null_losses,
                    "shares": [share(x, "mean") for x in null_losses]}}
    shares = out["null"]["shares"]
    out["null95"] = float(np.percentile(shares, 95)) if shares else float("nan")
    out["beats_null"] = bool(shares and out["understood"]["descriptions"] > out["null95"])
    return out
