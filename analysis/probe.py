"""Probes: a model with an SAE spliced in at one hook point, whose features can be ablated and whose output error
against the known optimal output is measured.

With the SAE spliced in, ablating feature j (setting its activation to 0 everywhere) changes the model's output; its
causal effect is the change of the error against the optimal output, normalised by the change from zero-ablating the
whole layer:  effect_j = (L_ablate_j - L_sae) / (L_zero_layer - L_sae).

The :class:`Probe` protocol is what the scorer needs; :class:`CausalProbe` implements it for a real model (image
model or coordinate field, through its domain adapter), ``frobnolab.analysis.planted.PlantedProbe`` for the
planted-truth validation. Beyond the protocol a CausalProbe exposes the splice itself (:meth:`CausalProbe.output`,
:meth:`CausalProbe.splice`, :meth:`CausalProbe.codes`, :meth:`CausalProbe.contribution`), which the gallery draws.

:func:`landing`: where a feature's ablation lands: the share of the per-pixel error change on each concept's
pixels divided by that concept's share of the pixels (a lift: 1 is "nowhere in particular").
"""

from __future__ import annotations

import warnings
from typing import Protocol

import numpy as np
import scipy.sparse as sp
import torch

from frobnolab.models.hooks import capture

from . import concepts as C
from .store import ActivationStore, store_columns


class Probe(Protocol):
    """What the scorer's causal part calls."""

    images: np.ndarray
    """The held-out images the losses are measured on."""
    device: str

    def baseline(self) -> dict:
        """Per-image losses {"clean", "sae", "zero"} (each ``(n_images,)``)."""

    def decoder_norms(self) -> np.ndarray:
        """Norm of each feature's contribution per unit activation ``(F,)``."""

    def ablate(self, features, direction: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Per-image losses ``(k, n_images)`` and per-pixel error changes ``(k, n_images, P)``."""

    def concept_masks(self) -> dict[str, np.ndarray]:
        """Binary per-pixel concept masks ``(n_images, P)`` for :func:`landing`."""

    # the understood share (scoring/understood.py) also calls, where the probe has them: token_ground_truth(),
    # token_images(), reconstruct(f_nF) and reconstruction_losses(parts)


def to_csr(f: torch.Tensor) -> sp.csr_matrix:
    """A dense feature tensor as a scipy CSR matrix (through torch's CSR, much faster than scipy's on wide maps)."""
    with warnings.catch_warnings():  # torch calls its sparse CSR support "beta"; conversion is all we use
        warnings.simplefilter("ignore", UserWarning)
        c = f.detach().cpu().to_sparse_csr()
    return sp.csr_matrix((c.values().numpy(), c.col_indices().numpy(), c.crow_indices().numpy()), shape=tuple(f.shape))


class CausalProbe:
    """Ablations of one SAE's features at one hook point of a store's model, on ``n_images`` held-out images
    (the first ones, or those given)."""

    def __init__(self, model, sae, store: ActivationStore, hook: str, n_images: int = 16, device: str = "cpu",
                 rays_per_image: int = 256, images=None):
        self.model, self.sae, self.device = model.to(device).eval(), sae, device
        self.path = store[hook].meta["path"]
        self.domain = store.domain
        self.columns = list(store.columns)
        self._concepts = list(store.manifest["key"]["config"].get("concepts") or [])
        self._context = tuple(store.manifest["key"]["config"].get("context") or ())
        self.ds = store.dataset
        self.images = np.asarray(self.ds.split("test")[:n_images] if images is None else images)
        self.batch = self.domain.batch(self.ds, self.images, device, rays_per_image)
        self._codes = None
        self._clean = None
        self._clean_out = None
        self._sae_err = None

    @property
    def target(self) -> torch.Tensor:
        """The optimal output on the probe's images (images: the input, (n, 3, H, W); fields: (n * R, 3))."""
        return self.batch.target

    def output(self, edit=None) -> torch.Tensor:
        """The model's output on the probe's images; ``edit``: a function applied to the hook's output.

        A model that can resume at the hook (``resume_points``, ``forward_from``: the image models) runs only the
        layers after it on ``edit(clean activation)``: nothing before the hook is edited, so its output is the
        clean one every time, and the result is bit-identical to the hooked full forward (tested) at a fraction of
        its cost (TAESD at ``enc7``: about half)."""
        if edit is not None and self.path in getattr(self.model, "resume_points", ()):
            return self.model.forward_from(self.path, edit(self.clean_activation()))
        return self.domain.forward(self.model, self.batch, {self.path: edit} if edit else None)

    def clean_activation(self) -> torch.Tensor:
        """The hook's output on the probe's images, unedited (computed once, with the clean output)."""
        if self._clean is None:
            with torch.no_grad(), capture(self.model.hook_root, [self.path]) as acts:
                self._clean_out = self.domain.forward(self.model, self.batch)
            self._clean = acts[self.path]
        return self._clean

    def pixel_error(self, out) -> torch.Tensor:
        """(n_images, P) squared error per pixel (channels summed)."""
        return self.domain.pixel_error(out, self.batch)

    def codes(self):
        """The hook's clean activations encoded once: sparse features (CSC, for fast columns) and the SAE's
        reconstruction; every later splice reuses them (the probe's inputs never change)."""
        if self._codes is not None:
            return self._codes
        t = self.clean_activation()
        self._shape = t.shape
        flat = t.permute(0, 2, 3, 1).reshape(-1, t.shape[1]) if t.ndim == 4 else t
        cols, recs = [], []
        with torch.no_grad():
            for s in range(0, len(flat), 8192):
                f = self.sae.encode(flat[s:s + 8192])
                recs.append(self.sae.decode(f))
                cols.append(to_csr(f))
        self._codes = (sp.vstack(cols).tocsc(), torch.cat(recs))
        return self._codes

    def splice(self, delta=None, rec=None):
        """An edit: the SAE's reconstruction (or ``rec``, tokens x d_in) minus ``delta``, in the hook's layout."""
        own = self.codes()[1]
        rec = own if rec is None else rec
        shape = self._shape

        def edit(t):
            out = rec if delta is None else rec - delta
            if len(shape) == 4:
                b, c, h, w = shape
                return out.reshape(b, h, w, c).permute(0, 3, 1, 2)
            return out

        return edit

    def token_ground_truth(self) -> np.ndarray | None:
        """The ground truth ``(tokens, G)`` of every token the splice edits, in the codes' order (image, row,
        column), pooled as extraction pools it (the store's columns); None where the domain has none for the
        probe's tokens (fields)."""
        if getattr(self.domain, "ground_truth", None) is None:
            return None
        concepts = C.get(self._concepts or None, self.domain.concept_domain)
        if store_columns(concepts, self._context) != self.columns:
            raise ValueError(f"hook {self.path}: the concepts registered here give other ground-truth columns than "
                             f"the store's")
        t = self.clean_activation()
        return self.domain.ground_truth(self.ds, self.images, self.ds.size[0] // t.shape[2], concepts,
                                        self._context)

    def token_images(self) -> np.ndarray:
        """The image of every token the splice edits ``(tokens,)``."""
        t = self.clean_activation()
        return np.repeat(self.images, int(np.prod(t.shape[2:])) if t.ndim == 4 else len(t) // len(self.images))

    @torch.no_grad()
    def splice_losses(self, f_NF: np.ndarray) -> np.ndarray:
        """Per-image losses ``(n_images,)`` with the SAE spliced in and its features set to ``f_NF (tokens, F)``
        (decoded by the SAE) in place of the encoded ones."""
        return self.reconstruction_losses([self.reconstruct(f_NF)])

    @torch.no_grad()
    def reconstruct(self, f_nF) -> torch.Tensor:
        """The SAE's decoding ``(n, d_in)`` of features ``f_nF (n, F)`` of consecutive tokens: features set block by
        block need only their reconstructions kept, ``d_in`` wide, never the ``(tokens, F)`` matrix (blocks of
        8,192 tokens decode exactly as the whole matrix does)."""
        f = torch.as_tensor(np.asarray(f_nF, np.float32), device=self.device)
        return torch.cat([self.sae.decode(f[s:s + 8192]) for s in range(0, len(f), 8192)])

    @torch.no_grad()
    def reconstruction_losses(self, parts: list) -> np.ndarray:
        """Per-image losses ``(n_images,)`` with the SAE's reconstruction replaced by ``parts``
        (:meth:`reconstruct`'s blocks, in the codes' order, covering every token)."""
        rec = torch.cat(parts) if len(parts) > 1 else parts[0]
        return self.pixel_error(self.output(self.splice(rec=rec))).mean(1).cpu().numpy()

    def contribution(self, j: int) -> torch.Tensor:
        """What one unit of feature j adds to the reconstruction, ``(d_in,)`` (SAE decoders are affine)."""
        with torch.no_grad():
            e = torch.zeros(1, self.sae.cfg.d_sae, device=self.device)
            zero = self.sae.decode(e)
            e[0, j] = 1.0
            return (self.sae.decode(e) - zero)[0]

    def ablation_delta(self, j: int, direction: torch.Tensor | None = None) -> torch.Tensor:
        """What feature j contributes at every token ``(tokens, d_in)`` (along ``direction`` with the same norm)."""
        codes, _ = self.codes()
        col = torch.as_tensor(codes[:, j].toarray()[:, 0], dtype=torch.float32, device=self.device)
        vec = self.contribution(j)
        if direction is not None:
            vec = direction * vec.norm()
        return col[:, None] * vec[None]

    @torch.no_grad()
    def ablated_output(self, j: int) -> torch.Tensor:
        """The spliced model's output with feature j ablated."""
        return self.output(self.splice(self.ablation_delta(j)))

    # ------------------------------------------------------------------------------------------------ the protocol

    @torch.no_grad()
    def baseline(self) -> dict:
        self.clean_activation()  # the clean output comes with it: one forward, not two
        clean = self.pixel_error(self._clean_out).mean(1)
        self._sae_err = self.pixel_error(self.output(self.splice()))
        zero = self.pixel_error(self.output(torch.zeros_like)).mean(1)
        return {"clean": clean.cpu().numpy(), "sae": self._sae_err.mean(1).cpu().numpy(),
                "zero": zero.cpu().numpy()}

    def decoder_norms(self) -> np.ndarray:
        W = self.sae.W_dec.detach()
        norms = W.norm(dim=1)
        if getattr(self.sae.cfg, "rescale_acts_by_decoder_norm", False):
            norms = torch.ones_like(norms)  # decode divides activations by the decoder norm
        return norms.cpu().numpy()

    @torch.no_grad()
    def ablate(self, features, direction: dict | None = None):
        """direction: {feature: unit vector (d_in,)} replaces the feature's contribution direction (null features;
        same norm, same activation pattern)."""
        if self._sae_err is None:
            self.baseline()
        losses, changes = [], []
        for j in features:
            err = self.pixel_error(self.output(self.splice(
                self.ablation_delta(j, None if direction is None else direction[j]))))
            losses.append(err.mean(1).cpu().numpy())
            changes.append((err - self._sae_err).cpu().numpy())
        return np.array(losses), np.array(changes)

    def concept_masks(self) -> dict[str, np.ndarray]:
        """Every binary and categorical pixel concept of the registry (custom ones included), as masks."""
        bufs = {k: np.asarray(self.ds[k][self.images]) for k in self.ds.buffers}
        values = {c.name: np.asarray(c.pixel(bufs)) for c in C.REGISTRY.values()
                  if c.pixel is not None and c.kind in ("binary", "categorical")}
        return {k: self.domain.pixels(m, self.batch).astype(np.float64) for k, m in C.binary_masks(values).items()}


def landing(changes_kNP: np.ndarray, masks: dict[str, np.ndarray]) -> list[tuple[str, float]]:
    """For each ablated feature, the concept with the largest lift of |error change| and that lift."""
    out = []
    for ch in np.abs(changes_kNP):
        total = ch.sum()
        best = ("", float("nan"))
        if total > 0:
            lifts = {k: (ch * m).sum() / total / max(m.mean(), 1e-12) for k, m in masks.items() if m.mean() > 0}
            if lifts:
                name = max(lifts, key=lifts.get)
                best = (name, float(lifts[name]))
        out.append(best)
    return out
