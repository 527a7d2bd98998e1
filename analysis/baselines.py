"""Baseline dictionaries: what an SAE's features are compared against, scored by the same scorer on the same tokens.

:func:`fit_baseline` fits one kind on a seeded subsample of a hook's TRAINING tokens (scikit-learn for the fitted
kinds) and returns a :class:`BaselineDictionary`: a small ``nn.Module`` that looks to the scorer, the causal probe,
the dictionary scores and the report like an sae-lens SAE: ``encode(x (n, d_in)) -> (n, d_sae)`` non-negative
features, ``decode(f) -> (n, d_in)`` affine (``f @ W_dec + b_dec``), ``W_dec (d_sae, d_in)`` and ``cfg`` with
``d_in``, ``d_sae``, ``rescale_acts_by_decoder_norm=False``.

The kinds (N: components; :func:`default_n` gives the default):

- ``units``: the layer's own channels (the N of highest variance on the fit tokens, in channel order);
- ``random``: a seeded random orthonormal basis of the channel space (Haar: QR of a Gaussian matrix), N columns;
- ``pca``: principal directions of the fit tokens, centred at their mean;
- ``ica``: FastICA (unit-variance sources), centred at the mean; decoder rows are the mixing matrix's columns;
- ``nmf``: NMF of the shifted activations ``x - lo`` (``lo``: each channel's minimum over the fit tokens where it
  is negative, else 0, so a post-ReLU hook is not shifted; tokens below ``lo`` are clipped to it). Encoding solves
  the non-negative least squares ``min_f>=0 |x - lo - f H|^2`` for the fitted atoms ``H`` by ``nmf_steps`` FISTA
  (accelerated projected-gradient) steps from ``relu((x - lo) H^+)``; decode ``f H + lo``;
- ``kmeans``: MiniBatchKMeans centroids ``c_j``; a token has one feature, its nearest centroid (Euclidean), valued
  by its projection on that centroid ``t = relu(<x, c_j> / |c_j|^2)``; decode ``t c_j`` (the centroid, scaled;
  never farther from ``x`` than the centroid itself).

The signed kinds (units, random, pca, ica) give each direction two features, ``relu(z)`` and ``relu(-z)``, with
decoder rows ``+w`` and ``-w``: ``d_sae = 2 N``, and ``decode(encode(x)) == x`` for a full basis (units, random and
pca with N = channels; ica with N = channels up to its unmixing's conditioning). nmf and kmeans have ``d_sae = N``.
Each fit records its fraction of variance unexplained (FVU, ``|x - decode(encode(x))|^2 / |x - mean|^2``) on the fit
tokens and on held-out tokens.

:func:`save_baseline` writes ``baseline.safetensors`` (the module's tensors) and ``baseline.json`` (kind, N, seed,
the fit's tokens and the store's hook sha256, FVU, ...); :func:`load_baseline` reads them back.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from frobnolab.errors import unknown
from frobnolab.files import atomic_write, write_json

KINDS = ("pca", "ica", "nmf", "kmeans", "units", "random")
"""The baseline kinds."""
SIGNED = ("pca", "ica", "units", "random")
"""The kinds whose directions are signed: two features each, relu(z) and relu(-z)."""
WIDE_CAP = 1024
"""The most components nmf and kmeans get by default (4 x the channels, at most this)."""


@dataclass
class BaselineConfig:
    kind: str = "pca"
    """Baseline kind: pca, ica, nmf, kmeans, units or random."""
    n: int = 0
    """Components (directions, atoms, centroids); 0: the kind's default (the hook's channels for units, random, pca
    and ica; 4 x the channels, at most 1024 or the channels if more, for nmf and kmeans). A signed kind (units,
    random, pca, ica) has 2 N features."""
    fit_tokens: int = 200_000
    """Training-split tokens the fit sees at most (a seeded uniform subsample; 0: all)."""
    max_iter: int = 200
    """Iterations of the iterative fits (FastICA, NMF, MiniBatchKMeans)."""
    nmf_steps: int = 100
    """FISTA steps of the nmf encoder's non-negative least squares (each costs tokens x N x N: 8192 tokens at N = 256
    take about 3 s per 100 steps on one CPU core)."""
    seed: int = 0
    """Seed of the token subsample, the random basis and the scikit-learn fits."""


def parse_baseline(spec: str) -> tuple[str, int]:
    """``"pca"`` -> ``("pca", 0)`` (0: the kind's default), ``"nmf:64"`` -> ``("nmf", 64)``."""
    kind, sep, n = str(spec).partition(":")
    kind = kind.strip().lower()
    if kind not in KINDS:
        raise unknown("baseline kind", kind, KINDS)
    if not sep:
        return kind, 0
    if not n.strip().isdigit() or int(n) < 1:
        raise ValueError(f"--baseline {spec!r}: N (after the colon) must be a positive integer")
    return kind, int(n)


def default_n(kind: str, d_in: int) -> int:
    """Components of ``kind`` on a hook of ``d_in`` channels when none are given."""
    return min(4 * d_in, max(WIDE_CAP, d_in)) if kind in ("nmf", "kmeans") else d_in


@dataclass
class BaselineSAEConfig:
    """What the scorer and the probe read of an sae-lens SAE's ``cfg``."""

    d_in: int
    d_sae: int
    kind: str
    n: int
    rescale_acts_by_decoder_norm: bool = False
    nmf_steps: int = 0


class BaselineDictionary(nn.Module):
    """A fitted baseline as an SAE look-alike (see the module docstring for each kind's encode and decode).

    Tensors: ``W_enc (d_in, d_sae)`` (linear kinds: the signed encoder; nmf: ``H^+``; kmeans: the centroids'
    transpose), ``b_pre (d_in,)`` subtracted before encoding, ``W_dec (d_sae, d_in)``, ``b_dec (d_in,)``; nmf also
    ``gram (N, N) = H H^T`` and ``step`` (1 / its largest eigenvalue)."""

    def __init__(self, kind: str, n: int, W_enc, b_pre, W_dec, b_dec, nmf_steps: int = 0, gram=None, step=None):
        super().__init__()
        t = lambda a: torch.as_tensor(np.asarray(a, np.float32))  # noqa: E731
        self.W_enc = nn.Parameter(t(W_enc), requires_grad=False)
        self.W_dec = nn.Parameter(t(W_dec), requires_grad=False)
        self.register_buffer("b_pre", t(b_pre))
        self.register_buffer("b_dec", t(b_dec))
        if kind == "nmf":
            self.register_buffer("gram", t(gram))
            self.register_buffer("step", t(step).reshape(()))
        self.kind = kind
        self.cfg = BaselineSAEConfig(d_in=self.W_dec.shape[1], d_sae=self.W_dec.shape[0], kind=kind, n=n,
                                     nmf_steps=nmf_steps)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Non-negative features ``(n, d_sae)`` of activations ``(n, d_in)`` (on the input's device)."""
        dev = x.device
        x = x.to(self.W_dec.device, torch.float32) - self.b_pre
        if self.kind == "kmeans":
            cc = (self.W_dec * self.W_dec).sum(1)  # |c_j|^2
            xc = x @ self.W_enc  # <x, c_j>
            j = (cc[None] - 2 * xc).argmin(1, keepdim=True)  # the nearest centroid
            t = xc.gather(1, j) / cc[j].clamp_min(1e-12)
            f = torch.zeros(len(x), self.cfg.d_sae, device=x.device).scatter_(1, j, t.relu())
        elif self.kind == "nmf":
            f = self._nnls(x.clamp_min(0))
        else:
            f = (x @ self.W_enc).relu()
        return f.to(dev)

    def _nnls(self, x: torch.Tensor) -> torch.Tensor:
        """FISTA on ``min_f>=0 0.5 |x - f H|^2`` (``H = W_dec``), from ``relu(x H^+)``."""
        H, G, s = self.W_dec, self.gram, self.step
        xh = x @ H.T
        f = (x @ self.W_enc).relu()
        y, tk = f, 1.0
        for _ in range(self.cfg.nmf_steps):
            f_new = (y - s * (y @ G - xh)).relu()
            t_new = (1 + (1 + 4 * tk * tk) ** 0.5) / 2
            y = f_new + ((tk - 1) / t_new) * (f_new - f)
            f, tk = f_new, t_new
        return f

    @torch.no_grad()
    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """``f @ W_dec + b_dec`` ``(n, d_in)`` (on the input's device)."""
        dev = f.device
        return (f.to(self.W_dec.device, torch.float32) @ self.W_dec + self.b_dec).to(dev)

    def forward(self, x):
        return self.decode(self.encode(x))


# ---------------------------------------------------------------------------------------------------- the fit


def fit_sample(tokens, n: int, seed: int) -> np.ndarray:
    """Up to ``n`` training-split activations of ``tokens`` (all when ``n`` is 0 or there are fewer), a seeded
    uniform subsample without replacement, in store order."""
    counts = [len(c) for c in tokens.chunks("train", parts=("where",))]
    total = int(sum(counts))
    if not total:
        raise ValueError(f"hook {tokens.name}: no tokens of the training images to fit a baseline on (extract with "
                         f"--split all or train)")
    if not n or n >= total:
        return tokens.activations("train")
    pick = np.sort(np.random.default_rng(seed).choice(total, n, replace=False))
    out, start = [], 0
    for c in tokens.chunks("train", parts=("acts", "where")):
        lo, hi = np.searchsorted(pick, [start, start + len(c)])
        out.append(c.acts[pick[lo:hi] - start])
        start += len(c)
    return np.concatenate(out)


def _signed(P_dN: np.ndarray, D_Nd: np.ndarray):
    """Encoder ``[P, -P]`` and decoder ``[D; -D]``: two features per direction."""
    return np.concatenate([P_dN, -P_dN], 1), np.concatenate([D_Nd, -D_Nd], 0)


def _fvu(module: BaselineDictionary, x: np.ndarray) -> float:
    if not len(x):
        return float("nan")
    xt = torch.from_numpy(np.ascontiguousarray(x, np.float32))
    err = sum(float(((module.decode(module.encode(xt[s:s + 8192])) - xt[s:s + 8192]) ** 2).sum())
              for s in range(0, len(xt), 8192))
    return err / max(float(((x - x.mean(0)) ** 2).sum()), 1e-30)


@dataclass
class FittedBaseline:
    """A fitted baseline and its provenance (``meta``: what baseline.json records)."""

    module: BaselineDictionary
    meta: dict = field(default_factory=dict)


def components(cfg: BaselineConfig, d_in: int, hook: str = "") -> int:
    """The components ``cfg`` fits on a hook of ``d_in`` channels (checked: a signed kind has at most d_in)."""
    if cfg.kind not in KINDS:
        raise unknown("baseline kind", cfg.kind, KINDS)
    if cfg.n < 0:
        raise ValueError(f"--baseline {cfg.kind}:{cfg.n}: N must be a positive integer")
    n = cfg.n or default_n(cfg.kind, d_in)
    if cfg.kind in SIGNED and n > d_in:
        raise ValueError(f"--baseline {cfg.kind}:{n}: {cfg.kind} has at most the hook's {d_in} channels as "
                         f"components (hook {hook})")
    return n


def fit_baseline(tokens, cfg: BaselineConfig, *, log=lambda *_: None) -> FittedBaseline:
    """Fit ``cfg.kind`` on a subsample of the training tokens of ``tokens`` (a store's hook)."""
    d = tokens.d_in
    n = components(cfg, d, tokens.name)
    t0 = time.time()
    x = fit_sample(tokens, cfg.fit_tokens, cfg.seed).astype(np.float32)
    if cfg.kind in ("nmf", "kmeans") and n > len(x):
        raise ValueError(f"--baseline {cfg.kind}:{n}: more components than the {len(x)} fit tokens of hook "
                         f"{tokens.name}")
    log(f"baseline {cfg.kind}:{n}: fitting on {len(x)} training tokens of {tokens.name} ({d} channels)")
    x64 = x.astype(np.float64)
    zero = np.zeros(d)
    extra, info = {}, {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if cfg.kind == "units":
            keep = np.sort(np.argsort(-x64.var(0), kind="stable")[:n])
            E = np.eye(d)[:, keep]
            W_enc, W_dec = _signed(E, E.T)
            b = zero
            info["channels"] = keep.tolist()
        elif cfg.kind == "random":
            q, r = np.linalg.qr(np.random.default_rng(cfg.seed).standard_normal((d, d)))
            Q = (q * np.sign(np.diag(r)))[:, :n]
            W_enc, W_dec = _signed(Q, Q.T)
            b = zero
        elif cfg.kind == "pca":
            from sklearn.decomposition import PCA

            p = PCA(n_components=n, svd_solver="full", random_state=cfg.seed).fit(x64)
            W_enc, W_dec = _signed(p.components_.T, p.components_)
            b = p.mean_
            info["explained_variance_ratio"] = float(p.explained_variance_ratio_.sum())
        elif cfg.kind == "ica":
            from sklearn.decomposition import FastICA

            ica = FastICA(n_components=n, whiten="unit-variance", max_iter=cfg.max_iter, random_state=cfg.seed)
            ica.fit(x64)
            W_enc, W_dec = _signed(ica.components_.T, ica.mixing_.T)
            b = ica.mean_
            info["iterations"] = int(ica.n_iter_)
        elif cfg.kind == "nmf":
            from sklearn.decomposition import NMF

            lo = np.minimum(x64.min(0), 0)
            nmf = NMF(n_components=n, max_iter=cfg.max_iter, random_state=cfg.seed).fit(np.maximum(x64 - lo, 0))
            H = nmf.components_
            G = H @ H.T
            W_enc, W_dec, b = np.linalg.pinv(H), H, lo
            extra = {"gram": G, "step": 1.0 / max(float(np.linalg.eigvalsh(G)[-1]), 1e-12)}
            info.update(iterations=int(nmf.n_iter_), shift=lo.tolist())
        else:  # kmeans
            from sklearn.cluster import MiniBatchKMeans

            km = MiniBatchKMeans(n_clusters=n, max_iter=cfg.max_iter, random_state=cfg.seed, n_init=3,
                                 batch_size=4096).fit(x64)
            C = km.cluster_centers_
            W_enc, W_dec, b = C.T, C, zero
            info["iterations"] = int(km.n_iter_)
    steps = cfg.nmf_steps if cfg.kind == "nmf" else 0
    module = BaselineDictionary(cfg.kind, n, W_enc, b, W_dec, b, nmf_steps=steps, **extra)
    fit_s = time.time() - t0
    held = tokens.activations("test", max_tokens=50_000) if len(tokens.images("test")) else np.zeros((0, d))
    meta = {"kind": cfg.kind, "n": n, "d_in": d, "d_sae": module.cfg.d_sae, "seed": cfg.seed,
            "fit_tokens": len(x), "config": asdict(cfg), "hook": tokens.name,
            "store_hook_sha256": tokens.meta.get("sha256") if hasattr(tokens, "meta") else None,
            "fvu_fit": _fvu(module, x[:50_000]), "fvu_test": _fvu(module, held), "test_tokens": len(held),
            "fit_seconds": round(fit_s, 2), "warnings": sorted({str(w.message).splitlines()[0] for w in caught}),
            **info}
    try:
        import sklearn

        meta["sklearn"] = sklearn.__version__
    except ImportError:  # pragma: no cover - scikit-learn is a dependency
        pass
    return FittedBaseline(module, meta)


# --------------------------------------------------------------------------------------------------- the files


def weights_bytes(module: BaselineDictionary) -> bytes:
    """The module's tensors as safetensors bytes (what baseline.safetensors holds; its sha256 is the summary's
    ``sae_sha256``)."""
    from safetensors.torch import save

    return save({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()})


def save_baseline(fitted: FittedBaseline, folder: str | Path, extra: dict | None = None) -> Path:
    """``baseline.safetensors`` and ``baseline.json`` (the fit's meta, the weights' sha256 and ``extra``) in
    ``folder``; returns the weights' path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    blob = weights_bytes(fitted.module)
    path = atomic_write(folder / "baseline.safetensors", blob)
    write_json(folder / "baseline.json", {**fitted.meta, **(extra or {}),
                                          "sha256": hashlib.sha256(blob).hexdigest()})
    return path


def load_baseline(folder: str | Path, device: str = "cpu") -> BaselineDictionary:
    """The baseline saved in ``folder`` by :func:`save_baseline`."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / "baseline.json").is_file():
        raise FileNotFoundError(f"{folder}: no baseline here (no baseline.json)")
    meta = json.loads((folder / "baseline.json").read_text())
    t = load_file(str(folder / "baseline.safetensors"))
    steps = meta["config"]["nmf_steps"] if meta["kind"] == "nmf" else 0
    module = BaselineDictionary(meta["kind"], meta["n"], t["W_enc"], t["b_pre"], t["W_dec"], t["b_dec"],
                                nmf_steps=steps, gram=t.get("gram"), step=t.get("step"))
    return module.to(device)
