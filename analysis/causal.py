"""Causal effects of SAE features on the model's error against its known optimal output.

With the SAE spliced in at its hook point, ablating feature j (setting its activation to 0 everywhere) changes the
model's output; its causal effect is the change of the error against the optimal output, normalised by the change
from zero-ablating the whole layer:  effect_j = (L_ablate_j - L_sae) / (L_zero_layer - L_sae).

- exact ablations (for the features the scorer picks), with per-image losses (for bootstrap intervals) and where
  the change lands: the share of the per-pixel error change on each concept's pixels divided by that concept's
  share of the pixels (a lift: 1 is "nowhere in particular");
- a null: random unit directions in activation space carrying a real feature's activation pattern (same tokens,
  same magnitudes, decoder-norm matched), ablated the same way.

A :class:`CausalProbe` does this for a real model; the planted-truth validation supplies its own probe with the same
methods.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from frobnolab.models.hooks import capture
from frobnolab.scenes.dataset import Dataset, split_indices

from .store import ActivationStore


class CausalProbe:
    """Ablations of one SAE's features at one hook point of an image model or a coordinate field."""

    def __init__(self, model, sae, store: ActivationStore, hook: str, n_images: int = 16, device: str = "cpu",
                 rays_per_image: int = 256):
        self.model, self.sae, self.device = model.to(device).eval(), sae, device
        self.path = store[hook].meta["path"]
        self.kind = store.manifest["kind"]
        ds = Dataset(store.manifest["dataset"])
        self.images = split_indices(len(ds), "test")[:n_images]
        self.ds = ds
        rgb = np.asarray(ds["rgb"][self.images])
        if self.kind == "image":
            self.x = torch.from_numpy(rgb).permute(0, 3, 1, 2).contiguous().to(device)
            self.target = self.x
            self.pixel_index = None
        else:
            from frobnolab.models.train import dataset_rays

            o, d = dataset_rays(ds, self.images)
            h, w = ds.size
            rng = np.random.default_rng(0)
            pix = np.stack([rng.choice(h * w, size=min(rays_per_image, h * w), replace=False)
                            for _ in self.images])
            self.pixel_index = pix  # (n_images, R)
            take = lambda a: np.take_along_axis(a.reshape(len(self.images), h * w, -1), pix[..., None], 1)  # noqa
            self.o = torch.as_tensor(take(o).reshape(-1, 3), dtype=torch.float32, device=device)
            self.d = torch.as_tensor(take(d).reshape(-1, 3), dtype=torch.float32, device=device)
            self.target = torch.as_tensor(take(rgb).reshape(-1, 3), device=device)

    # --------------------------------------------------------------------------------------------------- forward

    def _run(self, edit):
        with capture(self.model.hook_root, [], edit={self.path: edit} if edit else None):
            if self.kind == "image":
                return self.model(self.x)
            from frobnolab.models.field import render_rays

            # even samples only, not the importance samples of training and evaluation: those are placed by a first
            # pass that an edit would move, and the splices here replay one fixed set of hooked activations
            return render_rays(self.model, self.o, self.d, 48).rgb

    def _per_pixel_error(self, out) -> torch.Tensor:
        """(n_images, P) squared error per pixel (channels summed)."""
        n = len(self.images)
        if self.kind == "image":
            return ((out - self.target) ** 2).sum(1).reshape(n, -1)
        return ((out - self.target) ** 2).sum(-1).reshape(n, -1)

    def _encode_once(self):
        """The hook's clean activations encoded once: sparse features (CSC, for fast columns) and the SAE's
        reconstruction; every later splice reuses them (the probe's inputs never change)."""
        if getattr(self, "_codes", None) is not None:
            return self._codes
        import scipy.sparse as sp

        with torch.no_grad(), capture(self.model.hook_root, [self.path]) as acts:
            self._run(None)
        t = acts[self.path]
        self._shape = t.shape
        flat = t.permute(0, 2, 3, 1).reshape(-1, t.shape[1]) if t.ndim == 4 else t
        cols, recs = [], []
        with torch.no_grad():
            for s in range(0, len(flat), 8192):
                f = self.sae.encode(flat[s:s + 8192])
                recs.append(self.sae.decode(f))
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)  # torch's "beta" notice for sparse CSR
                    c = f.cpu().to_sparse_csr()
                cols.append(sp.csr_matrix((c.values().numpy(), c.col_indices().numpy(), c.crow_indices().numpy()),
                                          shape=tuple(f.shape)))
        self._codes = (sp.vstack(cols).tocsc(), torch.cat(recs))
        return self._codes

    def _spliced(self, delta=None):
        """Edit: the SAE's reconstruction minus ``delta`` (tokens x d_in), in the hook's layout."""
        _, rec = self._encode_once()
        shape = self._shape

        def edit(t):
            out = rec if delta is None else rec - delta
            if len(shape) == 4:
                b, c, h, w = shape
                return out.reshape(b, h, w, c).permute(0, 3, 1, 2)
            return out

        return edit

    def contribution(self, j: int) -> torch.Tensor:
        """What one unit of feature j adds to the reconstruction, ``(d_in,)`` (SAE decoders are affine)."""
        with torch.no_grad():
            e = torch.zeros(1, self.sae.cfg.d_sae, device=self.device)
            zero = self.sae.decode(e)
            e[0, j] = 1.0
            return (self.sae.decode(e) - zero)[0]

    # ------------------------------------------------------------------------------------------------ estimates

    @torch.no_grad()
    def baseline(self) -> dict:
        """Per-image losses of the clean model, the SAE-spliced model and the zero-ablated layer."""
        clean = self._per_pixel_error(self._run(None)).mean(1)
        self._sae_err = self._per_pixel_error(self._run(self._spliced()))
        zero = self._per_pixel_error(self._run(torch.zeros_like)).mean(1)
        return {"clean": clean.cpu().numpy(), "sae": self._sae_err.mean(1).cpu().numpy(),
                "zero": zero.cpu().numpy()}

    def decoder_norms(self) -> np.ndarray:
        """Norm of each feature's contribution per unit activation, ``(F,)``."""
        W = self.sae.W_dec.detach()
        norms = W.norm(dim=1)
        if getattr(self.sae.cfg, "rescale_acts_by_decoder_norm", False):
            norms = torch.ones_like(norms)  # decode divides activations by the decoder norm
        return norms.cpu().numpy()

    @torch.no_grad()
    def ablate(self, features, direction: dict | None = None):
        """Exact ablations: per-image losses ``(k, n_images)`` and per-pixel error changes ``(k, n_images, P)``.

        direction: {feature: unit vector (d_in,)} replaces the feature's contribution direction (null features;
        same norm, same activation pattern).
        """
        codes, _ = self._encode_once()
        losses, changes = [], []
        base = self._sae_err
        for j in features:
            col = torch.as_tensor(codes[:, j].toarray()[:, 0], dtype=torch.float32, device=self.device)
            vec = self.contribution(j)
            if direction is not None:
                vec = direction[j] * vec.norm()
            err = self._per_pixel_error(self._run(self._spliced(col[:, None] * vec[None])))
            losses.append(err.mean(1).cpu().numpy())
            changes.append((err - base).cpu().numpy())
        return np.array(losses), np.array(changes)

    def concept_masks(self) -> dict[str, np.ndarray]:
        """Binary per-pixel concept masks ``(n_images, P)`` for the landing lifts."""
        from frobnolab.scenes.primitives import SHAPE_CLASSES

        b = {k: np.asarray(self.ds[k][self.images]) for k in ("foreground", "shadow", "edge_silhouette",
                                                                "edge_crease", "edge_albedo", "shape_class",
                                                                "instance")}
        masks = {"foreground": b["foreground"], "shadow": b["shadow"], "silhouette": b["edge_silhouette"],
                 "crease": b["edge_crease"], "albedo_edge": b["edge_albedo"], "background": b["instance"] == 0}
        for k, name in enumerate(SHAPE_CLASSES):
            if k and (b["shape_class"] == k).any():
                masks[f"shape_class={name}"] = b["shape_class"] == k
        n = len(self.images)
        out = {}
        for k, m in masks.items():
            m = m.reshape(n, -1)
            if self.pixel_index is not None:
                m = np.take_along_axis(m, self.pixel_index, 1)
            out[k] = m.astype(np.float64)
        return out


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
