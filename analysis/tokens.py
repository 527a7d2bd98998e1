"""Reading tokens: the tokens of one hook point, chunk by chunk, split by the dataset's held-out rule.

:class:`Tokens` is what every consumer reads (SAE training, scoring, reports, the gallery); :class:`HookTokens`
reads a store's chunk files (each checked against the manifest's shapes), :class:`ArrayTokens` holds arrays in
memory (the planted-truth validation). An :class:`~frobnolab.analysis.store.ActivationStore` hands out HookTokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from frobnolab.errors import unknown
from frobnolab.scenes.dataset import ChunkedArray, OpenMaps, is_held_out

SPLITS = ("train", "test", "all")


@dataclass
class TokenChunk:
    """Some tokens of one hook point: ``acts (n, C)``, ``gt (n, G)``, ``where (n, 3 | 4)``; fields also
    ``points (n, 6)`` (point and view direction)."""

    acts: np.ndarray
    gt: np.ndarray
    where: np.ndarray
    points: np.ndarray | None = None

    def __len__(self):
        return len(self.where)

    @property
    def images(self) -> np.ndarray:
        return self.where[:, 0]


class Tokens:
    """The tokens of one hook point, read chunk by chunk; subclasses say where the chunks come from
    (:class:`HookTokens`: a store's files; :class:`ArrayTokens`: arrays in memory)."""

    name: str
    d_in: int
    columns: list[str]
    holdout_every: int = 8

    @property
    def n_chunks(self) -> int:
        raise NotImplementedError

    def _read(self, k: int, part: str, rows=None) -> np.ndarray:
        raise NotImplementedError

    def held_out(self, images: np.ndarray) -> np.ndarray:
        """Which of ``images`` are held out (the dataset's rule)."""
        return is_held_out(images, self.holdout_every)

    def chunk(self, k: int, split: str = "all", parts: tuple[str, ...] = ("acts", "gt", "where")) -> TokenChunk:
        """Stored chunk ``k``, only the tokens of ``split`` (train, test or all) and only ``parts`` (others
        empty); ``acts`` as float32."""
        if split not in SPLITS:
            raise unknown("split", split, SPLITS)
        where = self._read(k, "where")
        rows = None if split == "all" else np.flatnonzero(self.held_out(where[:, 0]) == (split == "test"))
        empty = np.zeros((0, 0), np.float32)
        got = {p: (np.asarray(self._read(k, p, rows), np.float32) if p == "acts" else self._read(k, p, rows))
               if p in parts else empty for p in ("acts", "gt", "points")}
        return TokenChunk(got["acts"], got["gt"], where if rows is None else where[rows], got["points"])

    def chunks(self, split: str = "all", size: int = 0, max_tokens: int = 0,
               parts: tuple[str, ...] = ("acts", "gt", "where")):
        """The tokens of ``split`` in order, re-cut into chunks of ``size`` tokens (0: as stored), at most
        ``max_tokens`` in all (0: all)."""
        buf, n, total = [], 0, 0
        for k in range(self.n_chunks):
            c = self.chunk(k, split, parts)
            if not len(c.where):
                continue
            if not size:
                if max_tokens:
                    c = _rows(c, slice(0, max_tokens - total))
                total += len(c.where)
                yield c
                if max_tokens and total >= max_tokens:
                    return
                continue
            buf.append(c)
            n += len(c.where)
            while n >= size:
                c = _concat(buf)
                take = size if not max_tokens else min(size, max_tokens - total)
                yield _rows(c, slice(0, take))
                total += take
                if max_tokens and total >= max_tokens:
                    return
                buf, n = [_rows(c, slice(take, None))], len(c.where) - take
        if n:
            c = _concat(buf)
            if max_tokens:
                c = _rows(c, slice(0, max_tokens - total))
            if len(c.where):
                yield c

    def images(self, split: str = "all") -> np.ndarray:
        """The distinct images that have tokens in ``split``, sorted."""
        ims = np.unique(np.concatenate([self._read(k, "where")[:, 0] for k in range(self.n_chunks)]
                                       or [np.zeros(0, np.int64)]))
        return ims if split == "all" else ims[self.held_out(ims) == (split == "test")]

    def activations(self, split: str = "test", max_tokens: int = 0) -> np.ndarray:
        """Activations ``(N, d_in)`` of ``split``'s tokens, float32 (streamed chunk by chunk)."""
        parts = [c.acts for c in self.chunks(split, parts=("acts", "where"), max_tokens=max_tokens)]
        if not parts:
            raise ValueError(f"hook {self.name} has no tokens of the {split} images; extract with --split all "
                             f"or {split}")
        return np.concatenate(parts)


def _rows(c: TokenChunk, sel) -> TokenChunk:
    pick = lambda a: a[sel] if a is not None and len(a) == len(c.where) else a  # noqa: E731
    return TokenChunk(pick(c.acts), pick(c.gt), c.where[sel], pick(c.points))


def _concat(cs: list[TokenChunk]) -> TokenChunk:
    if len(cs) == 1:
        return cs[0]
    cat = lambda xs: np.concatenate(xs) if all(x is not None for x in xs) else None  # noqa: E731
    return TokenChunk(cat([c.acts for c in cs]), cat([c.gt for c in cs]), cat([c.where for c in cs]),
                      cat([c.points for c in cs]))


class HookTokens(Tokens):
    """The tokens of one hook point of a store: ``acts`` (N, C), ``where`` (N, 3 or 4), ``gt`` (N, G) as lazily
    memory-mapped arrays, and chunk by chunk (:meth:`chunk`, :meth:`chunks`), each chunk checked against the
    manifest's shapes."""

    def __init__(self, store, name: str):
        meta = store.manifest["hooks"][name]
        m = store.manifest
        self.store, self.name, self.meta, self.columns = store, name, meta, m["columns"]
        self.d_in, self.stride = meta["d_in"], meta["stride"]
        self.holdout_every = m.get("holdout_every", 8)
        self._counts = meta["chunk_tokens"]
        dirs = [store.path / "chunks" / c for c in m["chunks"]]
        widths = {"acts": meta["d_in"], "where": len(m["where_columns"]), "gt": len(self.columns), "points": 6}
        self._widths = widths
        self._paths = {p: [d / f"{name}.{p}.npy" for d in dirs] for p in widths}
        self._maps = OpenMaps(keep=8)  # a chunk's acts, where and gt (and points), and the chunk before
        arr = lambda p, dt: ChunkedArray(self._paths[p], self._counts, dt, (widths[p],))  # noqa: E731
        self.acts, self.where, self.gt = arr("acts", "float32"), arr("where", "int32"), arr("gt", "float32")
        self.points = arr("points", "float32") if m["kind"] == "field" else None

    @property
    def n_chunks(self) -> int:
        return len(self._counts)

    def _read(self, k: int, part: str, rows=None) -> np.ndarray:
        if part == "points" and self.points is None:
            return np.zeros((0, 6), np.float32)
        path, want = self._paths[part][k], (self._counts[k], self._widths[part])

        def check(a):
            if a.shape != want:
                raise ValueError(f"{path}: shape {a.shape}, but the store's manifest says {want} "
                                 f"(a chunk from another extraction?)")

        a = self._maps.get((k, part), path, check)
        return np.asarray(a if rows is None else a[rows])

    def __len__(self):
        return self.meta["n_tokens"]

    def column(self, name: str) -> int:
        if name not in self.columns:
            raise unknown("ground-truth column", name, self.columns)
        return self.columns.index(name)


class ArrayTokens(Tokens):
    """Tokens held in memory, cut into chunks like a store's (the planted-truth validation makes these)."""

    def __init__(self, name: str, acts: list[np.ndarray], gt: list[np.ndarray], where: list[np.ndarray],
                 columns: list[str], holdout_every: int = 8):
        self.name, self.columns, self.holdout_every = name, list(columns), holdout_every
        self._parts = {"acts": acts, "gt": gt, "where": where}
        self.d_in = acts[0].shape[1] if acts else 0

    @property
    def n_chunks(self) -> int:
        return len(self._parts["acts"])

    def _read(self, k: int, part: str, rows=None) -> np.ndarray:
        if part == "points":
            return np.zeros((0, 6), np.float32)
        a = self._parts[part][k]
        return a if rows is None else a[rows]
