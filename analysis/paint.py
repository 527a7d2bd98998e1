"""Feature painting: set, add to or scale SAE features inside a mask, decode, and measure what changed against the
exact ground truth.

With the SAE spliced in at its hook (the model runs on the SAE's reconstruction, as the causal probe does), the
features of the tokens inside a mask are edited (``set`` to a value, ``add`` a value, ``scale`` by a factor; a
value is in units of the feature's largest activation on the store's held-out tokens, so 1 is "as strongly as it
ever fires") and decoded; the model runs on from the hook. The result (:func:`paint`):

- the output before (the SAE spliced in, unedited) and after, and their difference;
- measurements of both inside and outside the mask, from the output image: mean luma (Rec. 709 of the sRGB
  output), mean hue (the circular mean of HSV hue, degrees) and edge energy (mean luma gradient magnitude); and
  **locality**, the share of the absolute change that falls inside the mask;
- whether the edited activations stay where the model's activations live: each edited token's distance to its
  nearest training activation (a sample of the store's training tokens) over the same distance of the clean
  token (1: as typical as before; much more: off the distribution, where edits make artefacts).

Masks come from the image's exact ground truth (``foreground``, ``shadow``, ``instance=K``, any boolean buffer such
as ``edge_silhouette``), a box of pixels ``box:R0,C0,R1,C1`` or ``all``; a token is inside when at least half its
pixel footprint is. Image models only (the conv autoencoder, TAESD's encoder and decoder hooks, the SD VAE).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from frobnolab.errors import unknown
from frobnolab.files import write_json

OPS = ("set", "add", "scale")


def pixel_mask(ds, image: int, spec: str) -> np.ndarray:
    """The mask ``(H, W)`` bool of ``spec`` on one image of a dataset (see the module docstring)."""
    H, W = ds.size
    if spec == "all":
        return np.ones((H, W), bool)
    if spec.startswith("box:"):
        try:
            r0, c0, r1, c1 = (int(v) for v in spec[4:].split(","))
        except ValueError:
            raise ValueError(f"mask {spec!r}: a box is box:ROW0,COL0,ROW1,COL1 in pixels") from None
        if not (0 <= r0 < r1 <= H and 0 <= c0 < c1 <= W):
            raise ValueError(f"mask {spec!r}: the box must lie inside the {H}x{W} image with ROW0 < ROW1, COL0 < COL1")
        m = np.zeros((H, W), bool)
        m[r0:r1, c0:c1] = True
        return m
    if spec.startswith("instance="):
        k = spec.split("=", 1)[1]
        if not k.isdigit():
            raise ValueError(f"mask {spec!r}: instance=K takes an instance id (0 background, 1 the first object)")
        return np.asarray(ds["instance"][image]) == int(k)
    boolean = [b["name"] for b in ds.manifest["buffers"] if b["dtype"] == "bool"]
    if spec not in boolean:
        raise unknown("mask", spec, ["all", "box:R0,C0,R1,C1", "instance=K"] + boolean)
    return np.asarray(ds[spec][image], bool)


def _luma(rgb_3HW: np.ndarray) -> np.ndarray:
    return 0.2126 * rgb_3HW[0] + 0.7152 * rgb_3HW[1] + 0.0722 * rgb_3HW[2]


def _hue_deg(rgb_3HW: np.ndarray, m: np.ndarray) -> float:
    """Circular mean of HSV hue (degrees) over ``m``; NaN where no pixel has a hue."""
    import colorsys

    px = np.clip(rgb_3HW[:, m].T, 0, 1)
    hs = np.array([colorsys.rgb_to_hsv(*p) for p in px]) if len(px) else np.zeros((0, 3))
    keep = hs[:, 1] > 1e-3 if len(hs) else np.zeros(0, bool)
    if not keep.any():
        return float("nan")
    a = 2 * np.pi * hs[keep, 0]
    return float(np.degrees(np.arctan2(np.sin(a).mean(), np.cos(a).mean())) % 360)


def measures(rgb_3HW: np.ndarray, mask_HW: np.ndarray) -> dict:
    """Luma, hue and edge energy of an output image inside and outside a mask."""
    luma = _luma(rgb_3HW)
    gy, gx = np.gradient(luma)
    edge = np.hypot(gx, gy)
    out = {}
    for where, m in (("inside", mask_HW), ("outside", ~mask_HW)):
        out[where] = {"luma": float(luma[m].mean()) if m.any() else float("nan"),
                      "hue": _hue_deg(rgb_3HW, m), "edge_energy": float(edge[m].mean()) if m.any() else float("nan")}
    return out


def _nearest(x_Nd: torch.Tensor, ref_Md: torch.Tensor) -> torch.Tensor:
    return torch.cdist(x_Nd, ref_Md).min(1).values


class Painter:
    """One image of a scored SAE's dataset, loaded once for any number of edits (:meth:`edit`); ``mask`` as in
    :func:`pixel_mask`. Every input is checked here, before any work."""

    def __init__(self, scores: str | Path, image: int, mask: str = "all", reference_tokens: int = 20_000, sae=None,
                 model=None):
        from .probe import CausalProbe
        from .sae import load_sae
        from .score import read_table
        from .store import ActivationStore

        scores = Path(scores)
        summ = scores / "summary.json"
        if not summ.exists():
            raise FileNotFoundError(f"{scores}: no summary.json (a scores folder made by frobnolab score)")
        s = json.loads(summ.read_text())
        store = ActivationStore(s["store"])
        if store.domain.name != "image":
            raise ValueError(f"{scores}: painting is for image models (this store's domain is {store.domain.name!r})")
        ds = store.dataset
        if not 0 <= int(image) < len(ds):
            raise ValueError(f"image {image}: the dataset {ds.path} has images 0..{len(ds) - 1}")
        self.scores, self.image, self.mask, self.store, self.hook = scores, int(image), mask, store, s["hook"]
        self.sae = sae if sae is not None else load_sae(s["sae"])  # a baseline's dictionary is given loaded
        self.m_px = pixel_mask(ds, int(image), mask)
        if not self.m_px.any():
            raise ValueError(f"mask {mask!r} is empty on image {image}")
        self.fmax = np.asarray(read_table(scores / "features.parquet")["max_act"], float)  # (F,) held out
        self._ref_tokens = reference_tokens
        model = store.load_model() if model is None else model  # a gallery passes the one it has loaded
        self.probe = CausalProbe(model, self.sae, store, self.hook, images=[int(image)])
        codes, self.rec = self.probe.codes()
        t = self.probe.clean_activation()
        _, c, h, w = t.shape
        stride = ds.size[0] // h
        self.inside_tok = self.m_px.reshape(h, stride, w, stride).mean((1, 3)).ravel() >= 0.5  # (h * w,)
        if not self.inside_tok.any():
            raise ValueError(f"mask {mask!r} covers no token's footprint by half on image {image} (tokens are "
                             f"{stride}x{stride} pixels)")
        self.rows = torch.as_tensor(np.flatnonzero(self.inside_tok))
        self.f = torch.as_tensor(codes.toarray(), dtype=torch.float32)  # (tokens, F)
        self.clean_tok = t.permute(0, 2, 3, 1).reshape(-1, c)[self.rows]
        with torch.no_grad():
            self.before = self.probe.output(self.probe.splice()).clamp(0, 1)[0].cpu().numpy()  # (3, H, W)
        self._ref = None

    @property
    def reference(self) -> torch.Tensor:
        if self._ref is None:
            self._ref = torch.as_tensor(self.store[self.hook].activations("train", max_tokens=self._ref_tokens))
        return self._ref

    def edit(self, features, op: str = "add", value: float = 1.0) -> dict:
        """The measurements of one edit (see the module docstring); ``after (3, H, W)`` included as an array."""
        if op not in OPS:
            raise unknown("paint operation", op, OPS)
        features = [int(j) for j in np.atleast_1d(features)]
        bad = [j for j in features if not 0 <= j < self.sae.cfg.d_sae]
        if not features or bad:
            raise ValueError(f"features {bad or features}: the SAE has features 0..{self.sae.cfg.d_sae - 1}")
        if not np.isfinite(value):
            raise ValueError(f"value {value!r}: must be finite")
        f2, rows = self.f.clone(), self.rows
        for j in features:
            unit = float(self.fmax[j]) if np.isfinite(self.fmax[j]) and self.fmax[j] > 0 else 1.0
            col = f2[rows, j]
            f2[rows, j] = (torch.full_like(col, value * unit) if op == "set" else col + value * unit if op == "add"
                           else col * value)
        with torch.no_grad():
            rec2 = torch.cat([self.sae.decode(f2[k:k + 8192]) for k in range(0, len(f2), 8192)])
            after = self.probe.output(self.probe.splice(rec=rec2)).clamp(0, 1)[0].cpu().numpy()
            ref = self.reference
            d_clean = _nearest(self.rec[rows], ref)
            d_edit = _nearest(rec2[rows], ref)
            d_data = _nearest(self.clean_tok, ref)
        before, m_px = self.before, self.m_px
        change = np.abs(after - before).sum(0)  # (H, W)
        total = float(change.sum())
        return {"scores": str(self.scores), "image": self.image, "features": features, "op": op,
                "value": float(value), "mask": self.mask, "mask_pixels": int(m_px.sum()),
                "tokens_edited": int(self.inside_tok.sum()),
                "before": measures(before, m_px), "after": measures(after, m_px),
                "locality": float(change[m_px].sum() / total) if total > 0 else float("nan"),
                "mask_share": float(m_px.mean()),
                "mean_abs_change": {"inside": float(change[m_px].mean()),
                                    "outside": float(change[~m_px].mean()) if (~m_px).any() else float("nan")},
                "distribution": {"edited_over_clean_nn_distance":
                                 float((d_edit / d_clean.clamp_min(1e-8)).median()),
                                 "clean_reconstruction_nn_distance": float(d_clean.median()),
                                 "model_activation_nn_distance": float(d_data.median()),
                                 "reference_tokens": int(len(ref))},
                "after_image": after}


def paint(scores: str | Path, image: int, features, *, op: str = "add", value: float = 1.0, mask: str = "all",
          out: str | Path | None = None, reference_tokens: int = 20_000) -> dict:
    """Edit ``features`` of the SAE scored in ``scores`` on ``image`` of its store's dataset inside ``mask``;
    returns (and with ``out`` writes, as paint.json and paint.png) the measurements. Every input is checked before
    any work."""
    if op not in OPS:
        raise unknown("paint operation", op, OPS)
    p = Painter(scores, image, mask, reference_tokens)
    res = p.edit(features, op, value)
    after = res.pop("after_image")
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "paint.json", res)
        _figure(p.before, after, p.m_px, res, out / "paint.png")
    return res


def _figure(before, after, mask, res, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 4, figsize=(10, 2.8))
    ax[0].imshow(before.transpose(1, 2, 0))
    ax[0].set_title("before (SAE spliced)", fontsize=8)
    ax[1].imshow(after.transpose(1, 2, 0))
    ax[1].set_title(f"after: {res['op']} {res['value']:g} x max on {res['features']}", fontsize=8)
    ax[2].imshow(np.abs(after - before).sum(0), cmap="magma")
    ax[2].set_title(f"|change| (locality {res['locality']:.2f})", fontsize=8)
    ax[3].imshow(mask, cmap="gray")
    ax[3].set_title(f"mask: {res['mask']}", fontsize=8)
    for a in ax:
        a.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
