"""The vector index: nearest live entry *inside one scope*.

Entries are partitioned by scope digest before any search, so a lookup can never return
an entry of another tenant, model, parameter set or conversation, and a small scope is
never crowded out of an approximate search by a large one.

Each scope owns a block of rows (ids, vectors, expiry, live flag).  A scope of at most
``flat_limit`` rows is searched by an exact scan in native code; this costs about
``rows x dim`` multiply-adds and no call into FAISS, which wins for the many small scopes
that conversations create.  A larger scope also gets a FAISS ``IndexFlatIP`` over its rows,
searched for the top few and filtered by the native candidate picker.  Removal marks a row
dead; a block whose dead rows outnumber its live ones is compacted.

This is derived state: it is rebuilt from the LMDB store.  All methods are thread-safe
(one lock; searches hold it for microseconds to a few milliseconds).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import faiss
import numpy as np

from ._speedups import select
from .errors import SemcacheError

__all__ = ["ScopedIndex", "VectorError", "IndexHit"]

_FOREVER = float("inf")
_MIN_CAP = 4
_TOPK = 16


class VectorError(SemcacheError, ValueError):
    """A vector of the wrong dtype, shape or value was given to the index."""


@dataclass(frozen=True, slots=True)
class IndexHit:
    """Result of a scope search: ``entry_id`` is -1 when nothing reached the threshold;
    ``score`` is then the best candidate's similarity (or -inf for an empty scope)."""

    entry_id: int
    score: float


@dataclass(slots=True)
class _Block:
    dim: int
    ids: np.ndarray = field(init=False)
    vecs: np.ndarray = field(init=False)
    expires: np.ndarray = field(init=False)
    live: np.ndarray = field(init=False)
    n: int = 0
    dead: int = 0
    ann: faiss.Index | None = None

    def __post_init__(self) -> None:
        self._alloc(_MIN_CAP)

    def _alloc(self, cap: int) -> None:
        self.ids = np.full(cap, -1, dtype=np.int64)
        self.vecs = np.zeros((cap, self.dim), dtype=np.float32)
        self.expires = np.zeros(cap, dtype=np.float64)
        self.live = np.zeros(cap, dtype=np.uint8)

    def grow(self) -> None:
        old = (self.ids, self.vecs, self.expires, self.live)
        self._alloc(max(_MIN_CAP, 2 * len(self.ids)))
        n = self.n
        self.ids[:n], self.vecs[:n], self.expires[:n], self.live[:n] = (a[:n] for a in old)


class ScopedIndex:
    """Scope-partitioned inner-product index over unit vectors of dimension ``dim``."""

    def __init__(self, dim: int, *, flat_limit: int = 4096) -> None:
        if dim < 1:
            raise VectorError(f"dim: must be positive (got {dim})")
        self.dim = dim
        self.flat_limit = flat_limit
        self._blocks: dict[bytes, _Block] = {}
        self._where: dict[int, tuple[bytes, int]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, entry_id: int) -> bool:
        return entry_id in self._where

    @property
    def scopes(self) -> int:
        return len(self._blocks)

    def _check(self, vec: np.ndarray, name: str) -> np.ndarray:
        if not isinstance(vec, np.ndarray) or vec.dtype != np.float32:
            got = getattr(vec, "dtype", type(vec).__name__)
            raise VectorError(f"{name}: must be a float32 numpy array (got {got})")
        if vec.shape != (self.dim,):
            raise VectorError(f"{name}: must have shape ({self.dim},) (got {vec.shape})")
        if not np.isfinite(vec).all():
            raise VectorError(f"{name}: contains NaN or infinity")
        return np.ascontiguousarray(vec)

    def add(self, scope: bytes, entry_id: int, vec: np.ndarray, expires: float | None) -> None:
        """Insert ``entry_id`` into ``scope``; an id already present is replaced."""
        vec = self._check(vec, "vector")
        with self._lock:
            if entry_id in self._where:
                self._remove_locked(entry_id)
            block = self._blocks.get(scope)
            if block is None:
                block = self._blocks[scope] = _Block(self.dim)
            if block.n == len(block.ids):
                block.grow()
            row = block.n
            block.ids[row] = entry_id
            block.vecs[row] = vec
            block.expires[row] = _FOREVER if expires is None else expires
            block.live[row] = 1
            block.n += 1
            self._where[entry_id] = (scope, row)
            if block.ann is not None:
                block.ann.add(vec.reshape(1, -1))
            elif block.n - block.dead > self.flat_limit:
                self._build_ann(block)

    def remove(self, entry_id: int) -> bool:
        """Drop ``entry_id``; returns False when it was not indexed."""
        with self._lock:
            return self._remove_locked(entry_id)

    def _remove_locked(self, entry_id: int) -> bool:
        loc = self._where.pop(entry_id, None)
        if loc is None:
            return False
        scope, row = loc
        block = self._blocks[scope]
        block.live[row] = 0
        block.dead += 1
        live = block.n - block.dead
        if live == 0:
            del self._blocks[scope]
        elif block.dead > live and block.n >= 2 * _MIN_CAP:
            self._compact(scope, block)
        return True

    def _compact(self, scope: bytes, block: _Block) -> None:
        keep = np.flatnonzero(block.live[: block.n])
        fresh = _Block(self.dim)
        while len(fresh.ids) < len(keep):
            fresh.grow()
        m = len(keep)
        fresh.ids[:m] = block.ids[keep]
        fresh.vecs[:m] = block.vecs[keep]
        fresh.expires[:m] = block.expires[keep]
        fresh.live[:m] = 1
        fresh.n = m
        for row, entry_id in enumerate(fresh.ids[:m].tolist()):
            self._where[entry_id] = (scope, row)
        if block.ann is not None and m > self.flat_limit // 2:
            self._build_ann(fresh)
        self._blocks[scope] = fresh

    def _build_ann(self, block: _Block) -> None:
        ann = faiss.IndexFlatIP(self.dim)
        ann.add(block.vecs[: block.n])
        block.ann = ann

    def search(
        self, scope: bytes, query: np.ndarray, threshold: float, now: float
    ) -> IndexHit:
        """Best live, unexpired entry of ``scope`` whose similarity is ``>= threshold``."""
        query = self._check(query, "query")
        with self._lock:
            block = self._blocks.get(scope)
            if block is None:
                return IndexHit(-1, float("-inf"))
            if block.ann is None:
                row, score = select.best_in_block(
                    block.vecs, block.n, query, block.expires, block.live, now, threshold)
            else:
                row, score = self._search_ann(block, query, threshold, now)
            return IndexHit(int(block.ids[row]) if row >= 0 else -1, score)

    def _search_ann(
        self, block: _Block, query: np.ndarray, threshold: float, now: float
    ) -> tuple[int, float]:
        assert block.ann is not None
        k = min(block.n, _TOPK + block.dead)
        q = query.reshape(1, -1)
        while True:
            scores, rows = block.ann.search(q, k)
            row, score = select.best_of_candidates(
                scores[0], rows[0], block.expires, block.live, now, threshold)
            # A candidate exists, or every row was examined, or the k-th score is already
            # below the threshold (so no unseen row can reach it): the answer is final.
            if row >= 0 or k >= block.n or float(scores[0, -1]) < threshold:
                return row, score
            k = min(block.n, k * 4)

    def expires_of(self, entry_id: int) -> float | None:
        """The expiry recorded for ``entry_id`` (None: never, or not indexed)."""
        with self._lock:
            loc = self._where.get(entry_id)
            if loc is None:
                return None
            value = float(self._blocks[loc[0]].expires[loc[1]])
            return None if value == _FOREVER else value
