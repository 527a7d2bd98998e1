"""The streaming engine: held-out tokens of one hook point, chunk by chunk, with their features.

``FeatureSource`` reads the held-out tokens of a :class:`~frobnolab.analysis.store.Tokens` (a store's or planted
arrays), encodes them (the SAE's encoder, or any ``acts -> features``) and appends the random-direction null
features. Every score is cross-validated by image: :func:`folds` puts alternate held-out images in fold 0 and 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from ..probe import to_csr


def _topk_exact(sae) -> bool:
    """Whether ``sae.encode`` is sae-lens's plain TopK encode (no hooks, dense output), which
    :func:`sae_encoder` can compute sparse."""
    try:
        from sae_lens.saes.topk_sae import TopK, TopKSAE
    except ImportError:  # pragma: no cover - sae-lens is a dependency
        return False
    hooks = [getattr(sae, h, None) for h in ("hook_sae_acts_pre", "hook_sae_acts_post")]
    return (isinstance(sae, TopKSAE) and type(sae).encode is TopKSAE.encode
            and isinstance(getattr(sae, "activation_fn", None), TopK) and not sae.activation_fn.use_sparse_activations
            and all(h is not None and not h._forward_hooks and not h._backward_hooks for h in hooks))


def sae_encoder(sae, device: str = "cpu", batch: int = 8192):
    """acts (n, d_in) numpy -> features (n, F) torch float32 on the CPU.

    The returned function has ``.sparse(acts) -> scipy CSR float32``: the same features without the dense matrix.
    For a TopK SAE it is computed from the top-k pre-activations directly (the same operations as ``sae.encode``,
    so the same values; the dense scatter and its conversion are skipped), otherwise from the dense encode.
    """

    def encode(acts):
        out = []
        with torch.no_grad():
            for s in range(0, len(acts), batch):
                out.append(sae.encode(torch.from_numpy(np.ascontiguousarray(acts[s:s + batch])).to(device)).cpu())
        return torch.cat(out) if out else torch.zeros((0, sae.cfg.d_sae))

    topk = _topk_exact(sae)

    def sparse(acts) -> sp.csr_matrix:
        if not topk:
            return to_csr(encode(acts))
        parts = []
        with torch.no_grad():
            for s in range(0, len(acts), batch):
                x = torch.from_numpy(np.ascontiguousarray(acts[s:s + batch])).to(device)
                # TopKSAE.encode, step by step: pre-activations, top k (unsorted), ReLU on the values
                h = sae.process_sae_in(x) @ sae.W_enc
                h += sae.b_enc
                if sae.cfg.rescale_acts_by_decoder_norm:
                    h = h * sae.W_dec.norm(dim=-1)
                vals, idx = torch.topk(h, k=sae.activation_fn.k, dim=-1, sorted=False)
                del h
                vals = vals.relu()
                idx, order = torch.sort(idx, dim=1)  # CSR order: columns ascending in each row
                vals = torch.gather(vals, 1, order).cpu().numpy()
                idx = idx.cpu().numpy()
                keep = vals != 0  # what a dense matrix's conversion drops
                indptr = np.concatenate([[0], np.cumsum(keep.sum(1))])
                parts.append(sp.csr_matrix((vals[keep], idx[keep], indptr), shape=(len(x), sae.cfg.d_sae)))
        if not parts:
            return sp.csr_matrix((0, sae.cfg.d_sae), dtype=np.float32)
        return parts[0] if len(parts) == 1 else sp.vstack(parts, format="csr")

    encode.sparse = sparse
    return encode


def folds(images: np.ndarray) -> np.ndarray:
    """Fold of each held-out image, indexed by image: alternate by rank, so both folds span the dataset."""
    uniq = np.unique(images)
    fold = np.zeros(int(uniq.max()) + 1 if len(uniq) else 1, np.int64)
    fold[uniq[1::2]] = 1
    return fold


def halves(images: np.ndarray) -> np.ndarray:
    """Half of its fold of each held-out image, indexed by image (inner validation inside a fold: every second
    image of each fold by rank)."""
    uniq = np.unique(images)
    half = np.zeros(int(uniq.max()) + 1 if len(uniq) else 1, np.int64)
    half[uniq[(np.arange(len(uniq)) // 2) % 2 == 1]] = 1
    return half


@dataclass
class Chunk:
    """One chunk of held-out tokens: features ``f (n, F)`` (sparse; nulls last), activations, ground truth
    (float64), where, each token's fold and its bin of every variable ``(V, n)``."""

    f: sp.csr_matrix
    acts: np.ndarray
    gt: np.ndarray
    where: np.ndarray
    fold: np.ndarray
    bins: np.ndarray


class FeatureSource:
    """Held-out tokens in chunks of ``chunk`` tokens (at most ``max_tokens``) and their features."""

    def __init__(self, tokens, encode, chunk: int, max_tokens: int = 0):
        self.tokens, self.encode_fn, self.chunk, self.max_tokens = tokens, encode, chunk, max_tokens
        self.U = None

    def set_nulls(self, U_dR: np.ndarray, tau_R: np.ndarray):
        """Null features: ``max(0, acts @ U - tau)``, appended after the real ones."""
        self.U, self.tau = U_dR, tau_R

    def raw_chunks(self):
        """(acts float32, gt float64, where) per chunk."""
        for c in self.tokens.chunks("test", size=self.chunk, max_tokens=self.max_tokens):
            yield c.acts, np.asarray(c.gt, np.float64), c.where

    def features(self, acts: np.ndarray) -> sp.csr_matrix:
        sparse = getattr(self.encode_fn, "sparse", None)
        if sparse is None:
            f = self.encode_fn(acts)
            f = f.float() if torch.is_tensor(f) else torch.as_tensor(np.asarray(f, dtype=np.float32))
            f = to_csr(f)
        else:
            f = sparse(acts)
        if self.U is not None:  # the nulls: their own CSR, set beside the features' (columns stay ascending)
            null = sp.csr_matrix(np.maximum(acts @ self.U - self.tau, 0).astype(np.float32))
            f = sp.hstack([f, null], format="csr")
        return f

    def chunks(self, fold_of: np.ndarray, variables):
        for a, g, w in self.raw_chunks():
            yield Chunk(self.features(a), a, g, w, fold_of[w[:, 0]], np.stack([v.bins(g) for v in variables]))

    def sample(self, n: int = 20_000):
        """The first ``n`` or more held-out tokens: (acts, gt), for bin edges, scales and null thresholds."""
        got = []
        for a, g, w in self.raw_chunks():
            got.append((a, g))
            if sum(len(x[0]) for x in got) >= n:
                break
        if not got:
            raise ValueError(f"hook {self.tokens.name}: no tokens from held-out images to score (every "
                             f"{self.tokens.holdout_every}th image is held out)")
        return np.concatenate([x[0] for x in got]), np.concatenate([x[1] for x in got])
