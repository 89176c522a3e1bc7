"""The vector index: nearest live entry *inside one scope*.

Entries are partitioned by scope digest before any search, so a lookup can never return
an entry of another tenant, model, parameter set or conversation, and a small scope is
never crowded out of an approximate search by a large one.

Vectors are stored as float16 in both representations and scored in float32 arithmetic
against the float32 query.  For unit vectors this moves a score by at most about 2^-11
(~5e-4): each component is rounded to 11 significant bits, so
``|q . (v' - v)| <= 2^-11 |q| |v|`` (plus < 1e-6 from components below 2^-14 and float32
summation).  An exact repeat therefore scores >= 0.999, and a score may slightly exceed 1.
Nothing compares a score with the stored float32 vector's exactly.

Two representations, chosen per scope by its size (``flat_limit``, default 4096):

* **Small scope: exact scan.**  Its rows live in one shared arena (float16 vectors, 768 B
  a row at 384-d; ids, expiry, live flag, scope number) and are chained by ``next``/``prev``
  row links; the scope table keeps only the head row.  A lookup walks the chain in native
  code (``best_in_chain``): ``rows x dim`` multiply-adds, no FAISS call, no per-scope
  arrays, O(1) insert and removal (a freed row is reused).  Why not one global index with
  an ID selector or over-fetch: for a 3-entry scope in a 200k-entry IVF the selector
  search costs about as much as a full search and misses the scope's entries whenever
  they sit outside the probed lists, while the chain scan takes about a microsecond and
  is exact (``bench/bench_micro.py``, group ``design:``; numbers in the README's Scale
  section).  The default bound of 4096 keeps the worst exact scan, rows scattered in the
  arena, well inside the lookup budget (group ``select:``), and spares the many mid-size
  scopes an IVF with its training and retraining.
* **Large scope: IVF over fp16 vectors.**  A FAISS ``IndexIVFScalarQuantizer`` (fp16,
  not by residual, inner product) whose labels are rows of the scope's own id / expiry /
  live arrays.  ``nlist`` follows size (about ``4 * sqrt(n)``, a power of two, at most
  4096) and the index is retrained in a background thread each time the scope grows 4x
  past the size it was trained for.  IVF rather than HNSW because FAISS's HNSW cannot
  remove entries and builds far slower; the IVF's recall and latency at 1M entries are
  in the README's Scale table (``bench/bench_index.py``, and ``--hnsw`` there for the
  comparison).
  Removal marks the row dead at once (searches skip it) and removes dead rows from the
  IVF in batches (at least 64, or 1/64 of the scope), so each removal costs O(1)
  amortised; a large scope that shrinks below ``flat_limit / 2`` moves back to the arena.

This is derived state: it is rebuilt from the LMDB store, or loaded from a snapshot
(:mod:`semcache.snapshot`).

Thread safety: all methods may be called from any thread.  Mutations (add, remove,
background retrain swaps) hold the mutation lock and the search lock; searches hold only
the search lock (microseconds for small scopes, about the IVF lookup time of the README
table for a large one); a snapshot holds only the mutation lock, so lookups go on while
it is written.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import faiss
import numpy as np

from ._speedups import select
from .errors import SemcacheError

__all__ = ["ScopedIndex", "VectorError", "IndexHit", "NPROBE", "ARENA_DTYPE", "nlist_for"]

ARENA_DTYPE = np.dtype(np.float16)  # small scopes' vectors (snapshots record it)
_HALF_MAX = float(np.finfo(np.float16).max)

_FOREVER = float("inf")
_TOPK = 16
NPROBE = 64
_MAX_NLIST = 4096
_MIN_NLIST = 64
_GROW = 4  # retrain when a large scope reaches this many times its trained size
_TRAIN_PER_LIST = 24
_ADD_CHUNK = 65536


def nlist_for(n: int) -> int:
    """Inverted lists for an IVF over ``n`` vectors: ~4*sqrt(n), a power of two in [64, 4096]."""
    target = 4.0 * math.sqrt(max(n, 1))
    return int(min(_MAX_NLIST, max(_MIN_NLIST, 2 ** round(math.log2(target)))))


class VectorError(SemcacheError, ValueError):
    """A vector of the wrong dtype, shape or value was given to the index."""


@dataclass(frozen=True, slots=True)
class IndexHit:
    """Result of a scope search: ``entry_id`` is -1 when nothing reached the threshold;
    ``score`` is then the best candidate's similarity (or -inf for an empty scope)."""

    entry_id: int
    score: float


def _grown(a: np.ndarray, cap: int, fill: Any = 0) -> np.ndarray:
    """``a`` copied into a new array of ``cap`` rows (untouched pages stay unallocated)."""
    out = np.zeros((cap, *a.shape[1:]), dtype=a.dtype) if fill == 0 else np.full(
        (cap, *a.shape[1:]), fill, dtype=a.dtype)
    out[: len(a)] = a
    return out


class _Arena:
    """Rows of all small scopes: vectors (float16) and facts by row, chains by scope, a
    free stack."""

    def __init__(self, dim: int, cap: int = 1024) -> None:
        self.dim = dim
        self.vecs = np.zeros((cap, dim), dtype=ARENA_DTYPE)
        self.ids = np.full(cap, -1, dtype=np.int64)
        self.expires = np.zeros(cap, dtype=np.float64)
        self.live = np.zeros(cap, dtype=np.uint8)
        self.nxt = np.full(cap, -1, dtype=np.int32)
        self.prv = np.full(cap, -1, dtype=np.int32)
        self.sno = np.full(cap, -1, dtype=np.int32)  # scope number of each row
        self.top = 0  # rows [0, top) have been used at least once
        self.free = np.zeros(0, dtype=np.int32)  # stack of freed rows
        self.nfree = 0

    def alloc(self) -> int:
        if self.nfree:
            self.nfree -= 1
            return int(self.free[self.nfree])
        if self.top == len(self.ids):
            cap = 2 * len(self.ids)
            self.vecs = _grown(self.vecs, cap)
            self.ids = _grown(self.ids, cap, -1)
            self.expires = _grown(self.expires, cap)
            self.live = _grown(self.live, cap)
            self.nxt = _grown(self.nxt, cap, -1)
            self.prv = _grown(self.prv, cap, -1)
            self.sno = _grown(self.sno, cap, -1)
        self.top += 1
        return self.top - 1

    def release(self, row: int) -> None:
        self.live[row] = 0
        self.ids[row] = -1
        self.nxt[row] = self.prv[row] = self.sno[row] = -1
        if self.nfree == len(self.free):
            self.free = _grown(self.free, max(64, 2 * len(self.free)))
        self.free[self.nfree] = row
        self.nfree += 1

    def chain(self, head: int) -> Iterator[int]:
        row = head
        while row >= 0:
            yield row
            row = int(self.nxt[row])


@dataclass(slots=True)
class _Big:
    """A large scope: an IVF whose labels are rows of ``ids``/``expires``/``live``."""

    dim: int
    ivf: Any
    trained_for: int
    ids: np.ndarray = field(default_factory=lambda: np.full(64, -1, dtype=np.int64))
    expires: np.ndarray = field(default_factory=lambda: np.zeros(64, dtype=np.float64))
    live: np.ndarray = field(default_factory=lambda: np.zeros(64, dtype=np.uint8))
    top: int = 0
    count: int = 0
    free: list[int] = field(default_factory=list)
    pending: list[int] = field(default_factory=list)  # dead rows still inside the IVF
    log: list[tuple[int, np.ndarray]] | None = None  # adds while a retrain runs
    thread: threading.Thread | None = None

    def alloc(self) -> int:
        if self.free and self.log is None:
            return self.free.pop()
        if self.top == len(self.ids):
            cap = 2 * len(self.ids)
            self.ids = _grown(self.ids, cap, -1)
            self.expires = _grown(self.expires, cap)
            self.live = _grown(self.live, cap)
        self.top += 1
        return self.top - 1

    def vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, fp16 vectors)`` of the live rows held by the IVF (copies)."""
        inv = self.ivf.invlists
        rows, codes = [], []
        for list_no in range(inv.nlist):
            size = inv.list_size(list_no)
            if not size:
                continue
            ids = faiss.rev_swig_ptr(inv.get_ids(list_no), size)
            raw = faiss.rev_swig_ptr(inv.get_codes(list_no), size * 2 * self.dim)
            rows.append(np.array(ids, dtype=np.int64))
            codes.append(np.frombuffer(raw, dtype=np.float16).reshape(size, self.dim).copy())
        if not rows:
            return np.zeros(0, np.int64), np.zeros((0, self.dim), np.float16)
        r, v = np.concatenate(rows), np.concatenate(codes)
        keep = self.live[r] != 0
        return r[keep], v[keep]


def _new_ivf(dim: int, sample: np.ndarray, nlist: int) -> Any:
    """An empty fp16 IVF trained on ``sample`` (float32 rows)."""
    quantizer = faiss.IndexFlatIP(dim)
    ivf = faiss.IndexIVFScalarQuantizer(
        quantizer, dim, nlist, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
    ivf.by_residual = False
    ivf.cp.niter = 10
    ivf.cp.min_points_per_centroid = 1
    ivf.cp.max_points_per_centroid = _TRAIN_PER_LIST
    ivf.train(np.ascontiguousarray(sample, dtype=np.float32))
    ivf.nprobe = min(NPROBE, nlist)
    return ivf  # the faiss wrapper keeps ``quantizer`` alive with it


def _build_ivf(dim: int, rows: np.ndarray, vecs: np.ndarray, seed: int = 0) -> Any:
    """An IVF over ``vecs`` (float16 or float32) labelled by ``rows``, sized for them."""
    n = len(rows)
    nlist = min(nlist_for(n), max(1, n))
    rng = np.random.default_rng(seed)
    pick = rng.choice(n, size=min(n, nlist * _TRAIN_PER_LIST), replace=False)
    ivf = _new_ivf(dim, vecs[np.sort(pick)].astype(np.float32), nlist)
    for start in range(0, n, _ADD_CHUNK):
        chunk = np.ascontiguousarray(vecs[start:start + _ADD_CHUNK], dtype=np.float32)
        ivf.add_with_ids(chunk, np.ascontiguousarray(rows[start:start + _ADD_CHUNK]))
    return ivf


class ScopedIndex:
    """Scope-partitioned inner-product index over unit vectors of dimension ``dim``.

    ``flat_limit``: scopes with at most this many entries are scanned exactly; larger ones
    get an IVF.  ``background``: retrain growing IVFs in a thread (False: inline, for tests).
    """

    def __init__(self, dim: int, *, flat_limit: int = 4096, background: bool = True) -> None:
        if dim < 1:
            raise VectorError(f"dim: must be positive (got {dim})")
        self.dim = dim
        self.flat_limit = flat_limit
        self.background = background
        self._arena = _Arena(dim)
        self._sno: dict[bytes, int] = {}          # scope -> scope number
        self._skey: list[bytes | None] = []        # scope number -> scope
        self._shead = np.zeros(0, dtype=np.int32)  # small scope: head row (-1: large)
        self._scount = np.zeros(0, dtype=np.int32)  # live entries of the scope
        self._sfree: list[int] = []
        self._big: dict[int, _Big] = {}
        # entry id -> arena row (>= 0) or -(1 + (scope number << 32 | big row))
        self._where: dict[int, int] = {}
        self._lock = threading.Lock()       # searches and mutations
        self._mut = threading.RLock()       # mutations, snapshots, retrain swaps

    # -------------------------------------------------------------- inspection
    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, entry_id: int) -> bool:
        return entry_id in self._where

    @property
    def scopes(self) -> int:
        return len(self._sno)

    def kind(self, scope: bytes) -> str | None:
        """``"flat"`` (exact scan), ``"ivf"``, or None when the scope has no entries."""
        sno = self._sno.get(scope)
        if sno is None:
            return None
        return "ivf" if sno in self._big else "flat"

    def scope_size(self, scope: bytes) -> int:
        """Live entries of ``scope``."""
        sno = self._sno.get(scope)
        return 0 if sno is None else int(self._scount[sno])

    def ids(self) -> np.ndarray:
        """Every indexed entry id (int64, unordered)."""
        return np.fromiter(self._where.keys(), dtype=np.int64, count=len(self._where))

    def _check(self, vec: np.ndarray, name: str) -> np.ndarray:
        if not isinstance(vec, np.ndarray) or vec.dtype != np.float32:
            got = getattr(vec, "dtype", type(vec).__name__)
            raise VectorError(f"{name}: must be a float32 numpy array (got {got})")
        if vec.shape != (self.dim,):
            raise VectorError(f"{name}: must have shape ({self.dim},) (got {vec.shape})")
        if not np.isfinite(vec).all():
            raise VectorError(f"{name}: contains NaN or infinity")
        return np.ascontiguousarray(vec)

    @staticmethod
    def _check_storable(vecs: np.ndarray, name: str) -> None:
        """Stored vectors become float16: NaN, infinity or a component beyond float16's
        range (which would turn into infinity; unit vectors are far inside it) is refused.
        No temporary copy (this runs over a million rows at a rebuild)."""
        if vecs.size and not (-_HALF_MAX <= float(vecs.min()) and float(vecs.max()) <= _HALF_MAX):
            raise VectorError(f"{name}: contains NaN, infinity or a component beyond the "
                              f"float16 range (|x| > {_HALF_MAX:g}); the index holds unit vectors")

    # ----------------------------------------------------------------- scopes
    def _scope_no(self, scope: bytes) -> int:
        sno = self._sno.get(scope)
        if sno is not None:
            return sno
        if self._sfree:
            sno = self._sfree.pop()
            self._skey[sno] = scope
        else:
            sno = len(self._skey)
            self._skey.append(scope)
            if sno == len(self._shead):
                cap = max(64, 2 * len(self._shead))
                self._shead = _grown(self._shead, cap, -1)
                self._scount = _grown(self._scount, cap)
        self._shead[sno] = -1
        self._scount[sno] = 0
        self._sno[scope] = sno
        return sno

    def _drop_scope(self, sno: int) -> None:
        scope = self._skey[sno]
        assert scope is not None
        del self._sno[scope]
        self._skey[sno] = None
        self._big.pop(sno, None)
        self._sfree.append(sno)

    # -------------------------------------------------------------- mutation
    def add(self, scope: bytes, entry_id: int, vec: np.ndarray, expires: float | None) -> None:
        """Insert ``entry_id`` into ``scope``; an id already present is replaced."""
        vec = self._check(vec, "vector")
        self._check_storable(vec, "vector")
        exp = _FOREVER if expires is None else float(expires)
        with self._mut, self._lock:
            self._add_locked(scope, entry_id, vec, exp)

    def _add_locked(self, scope: bytes, entry_id: int, vec: np.ndarray, exp: float) -> None:
        if entry_id in self._where:
            self._remove_locked(entry_id)
        sno = self._scope_no(scope)
        big = self._big.get(sno)
        if big is not None:
            self._big_add(sno, big, entry_id, vec, exp)
            return
        a = self._arena
        row = a.alloc()
        a.vecs[row] = vec
        a.ids[row] = entry_id
        a.expires[row] = exp
        a.live[row] = 1
        a.sno[row] = sno
        head = int(self._shead[sno])
        a.nxt[row], a.prv[row] = head, -1
        if head >= 0:
            a.prv[head] = row
        self._shead[sno] = row
        self._scount[sno] += 1
        self._where[entry_id] = row
        if self._scount[sno] > self.flat_limit:
            self._promote(sno)

    def _big_add(self, sno: int, big: _Big, entry_id: int, vec: np.ndarray, exp: float) -> None:
        row = big.alloc()
        big.ids[row], big.expires[row], big.live[row] = entry_id, exp, 1
        big.ivf.add_with_ids(np.ascontiguousarray(vec, dtype=np.float32).reshape(1, -1),
                             np.array([row], dtype=np.int64))
        if big.log is not None:
            big.log.append((row, vec.astype(np.float16)))
        big.count += 1
        self._scount[sno] += 1
        self._where[entry_id] = -(1 + (sno << 32 | row))
        if (big.log is None and big.count >= _GROW * big.trained_for
                and nlist_for(big.count) > big.ivf.nlist):
            self._start_retrain(sno, big)

    def _promote(self, sno: int) -> None:
        """Move a small scope that outgrew ``flat_limit`` from the arena into an IVF."""
        a = self._arena
        arows = np.fromiter(a.chain(int(self._shead[sno])), dtype=np.int64)[::-1]  # oldest first
        n = len(arows)
        big = _Big(self.dim, None, n)
        cap = 1 << max(6, int(n - 1).bit_length())
        big.ids, big.expires = _grown(a.ids[arows], cap, -1), _grown(a.expires[arows], cap)
        big.live = _grown(a.live[arows], cap)
        big.top = big.count = n
        rows = np.arange(n, dtype=np.int64)
        big.ivf = _build_ivf(self.dim, rows, a.vecs[arows])
        for row, entry_id in enumerate(big.ids[:n].tolist()):
            self._where[entry_id] = -(1 + (sno << 32 | row))
        for arow in arows.tolist():
            a.release(arow)
        self._shead[sno] = -1
        self._big[sno] = big

    def _demote(self, sno: int, big: _Big) -> None:
        """Move a large scope that shrank below ``flat_limit / 2`` back into the arena."""
        rows, vecs = big.vectors()
        a = self._arena
        head = -1
        for row, vec in zip(rows.tolist(), vecs, strict=True):
            arow = a.alloc()
            a.vecs[arow] = vec
            a.ids[arow], a.expires[arow], a.live[arow] = big.ids[row], big.expires[row], 1
            a.sno[arow] = sno
            a.nxt[arow], a.prv[arow] = head, -1
            if head >= 0:
                a.prv[head] = arow
            head = arow
            self._where[int(big.ids[row])] = arow
        self._shead[sno] = head
        del self._big[sno]

    def _start_retrain(self, sno: int, big: _Big) -> None:
        """Rebuild ``big``'s IVF for its new size; heavy work off the locks."""
        rows, vecs = big.vectors()
        big.log = []
        if not self.background:  # the caller holds the locks
            self._swap_retrained(big, rows, _build_ivf(self.dim, rows, vecs, seed=len(rows)))
            return
        big.thread = threading.Thread(
            target=self._finish_retrain, args=(sno, big, rows, vecs),
            name="semcache-ivf-retrain", daemon=True)
        big.thread.start()

    def _finish_retrain(self, sno: int, big: _Big, rows: np.ndarray, vecs: np.ndarray) -> None:
        ivf = _build_ivf(self.dim, rows, vecs, seed=len(rows))
        with self._mut, self._lock:
            self._swap_retrained(big, rows, ivf)

    def _swap_retrained(self, big: _Big, rows: np.ndarray, ivf: Any) -> None:
        """Replay the adds and removals made since ``rows`` were copied, then swap (locked)."""
        log = big.log or []
        if log:
            ivf.add_with_ids(np.stack([v for _, v in log]).astype(np.float32),
                             np.array([r for r, _ in log], dtype=np.int64))
        held = np.concatenate([rows, np.array([r for r, _ in log], dtype=np.int64)])
        dead = held[big.live[held] == 0]
        if len(dead):
            ivf.remove_ids(faiss.IDSelectorBatch(dead))
        big.ivf = ivf
        big.trained_for = len(rows) + len(log)
        # every dead row is out of the new IVF: all may be reused now
        big.free = np.flatnonzero(big.live[: big.top] == 0).tolist()
        big.pending = []
        big.log = None
        big.thread = None

    def add_many(
        self, scopes: list[bytes], ids: np.ndarray, vecs: np.ndarray, expires: np.ndarray
    ) -> None:
        """Bulk insert (``expires``: float64, ``inf`` for never) into an index that holds
        none of ``ids``: a scope that ends up larger than ``flat_limit`` gets one IVF built
        for its final size instead of a promotion and retrains on the way.  Used to rebuild
        from the store."""
        if len(ids) != len(scopes) or vecs.shape != (len(ids), self.dim):
            raise VectorError(f"add_many: {len(scopes)} scopes, {len(ids)} ids, vectors {vecs.shape}")
        if vecs.dtype not in (np.float16, np.float32):
            raise VectorError(f"add_many: vectors must be float32 or float16 (got {vecs.dtype})")
        self._check_storable(vecs, "add_many")
        groups: dict[bytes, list[int]] = {}
        for i, scope in enumerate(scopes):
            groups.setdefault(scope, []).append(i)
        with self._mut, self._lock:
            for scope, members in groups.items():
                idx = np.asarray(members, dtype=np.int64)
                if len(idx) <= self.flat_limit or scope in self._sno:
                    for i in idx.tolist():
                        self._add_locked(scope, int(ids[i]), vecs[i], float(expires[i]))
                    continue
                sno = self._scope_no(scope)
                n = len(idx)
                cap = 1 << max(6, int(n - 1).bit_length())
                big = _Big(self.dim, None, n)
                big.ids = _grown(ids[idx].astype(np.int64), cap, -1)
                big.expires = _grown(expires[idx].astype(np.float64), cap)
                big.live = _grown(np.ones(n, np.uint8), cap)
                big.top = big.count = n
                big.ivf = _build_ivf(self.dim, np.arange(n, dtype=np.int64), vecs[idx])
                self._big[sno] = big
                self._scount[sno] = n
                for row, entry_id in enumerate(big.ids[:n].tolist()):
                    self._where[entry_id] = -(1 + (sno << 32 | row))

    # --------------------------------------------------------------- snapshot
    def export_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[int, Any]]:
        """``(meta, arrays, ivfs)`` describing the whole index, for :mod:`semcache.snapshot`.

        The caller must hold :attr:`mutation_lock` while it uses the result (the arrays are
        views), with no retrain running (see :attr:`retraining`; RuntimeError otherwise).
        Searches may go on meanwhile.
        """
        if self.retraining:
            raise RuntimeError("export_state during a background retrain")
        a = self._arena
        top = a.top
        keys = [k if k is not None else b"" for k in self._skey]
        bigs = sorted(self._big)
        meta: dict[str, Any] = {
            "dim": self.dim, "flat_limit": self.flat_limit, "arena_top": top,
            "arena_dtype": ARENA_DTYPE.name,
            "nfree": a.nfree, "scopes": len(keys), "sfree": list(self._sfree),
            "big": [{"sno": sno, "top": self._big[sno].top, "count": self._big[sno].count,
                     "trained_for": self._big[sno].trained_for} for sno in bigs],
        }
        arrays: dict[str, np.ndarray] = {
            "arena.vecs": a.vecs[:top], "arena.ids": a.ids[:top], "arena.expires": a.expires[:top],
            "arena.live": a.live[:top], "arena.nxt": a.nxt[:top], "arena.prv": a.prv[:top],
            "arena.sno": a.sno[:top], "arena.free": a.free[: a.nfree],
            "scope.keylen": np.array([len(k) for k in keys], dtype=np.int32),
            "scope.keys": np.frombuffer(b"".join(keys), dtype=np.uint8),
            "scope.head": self._shead[: len(keys)], "scope.count": self._scount[: len(keys)],
        }
        for sno in bigs:
            big = self._big[sno]
            arrays[f"big{sno}.ids"] = big.ids[: big.top]
            arrays[f"big{sno}.expires"] = big.expires[: big.top]
            arrays[f"big{sno}.live"] = big.live[: big.top]
            arrays[f"big{sno}.free"] = np.array(big.free, dtype=np.int64)
            arrays[f"big{sno}.pending"] = np.array(big.pending, dtype=np.int64)
        return meta, arrays, {sno: self._big[sno].ivf for sno in bigs}

    @property
    def retraining(self) -> bool:
        """True while a large scope's IVF is being rebuilt in the background."""
        return any(b.log is not None for b in list(self._big.values()))

    @property
    def mutation_lock(self) -> Any:
        """Held by every mutation; hold it to read :meth:`export_state` consistently."""
        return self._mut

    @classmethod
    def from_state(
        cls, meta: dict[str, Any], arrays: dict[str, np.ndarray], ivfs: dict[int, Any],
        *, background: bool = True,
    ) -> ScopedIndex:
        """Rebuild an index from :meth:`export_state` output.  Raises KeyError/ValueError
        when pieces are missing or inconsistent, or the arena's vectors are not
        :data:`ARENA_DTYPE` (an older layout: the snapshot is then not used)."""
        idx = cls(int(meta["dim"]), flat_limit=int(meta["flat_limit"]), background=background)
        top = int(meta["arena_top"])
        vecs = arrays["arena.vecs"]
        if meta.get("arena_dtype") != ARENA_DTYPE.name or vecs.dtype != ARENA_DTYPE:
            raise ValueError(f"arena vectors are {meta.get('arena_dtype', vecs.dtype)}, "
                             f"not {ARENA_DTYPE.name}")
        a = idx._arena
        cap = max(1024, 1 << max(0, int(top - 1).bit_length()))
        a.vecs = _grown(vecs.reshape(top, idx.dim), cap)
        a.ids = _grown(arrays["arena.ids"], cap, -1)
        a.expires = _grown(arrays["arena.expires"], cap)
        a.live = _grown(arrays["arena.live"], cap)
        a.nxt = _grown(arrays["arena.nxt"], cap, -1)
        a.prv = _grown(arrays["arena.prv"], cap, -1)
        a.sno = _grown(arrays["arena.sno"], cap, -1)
        a.top = top
        a.free = arrays["arena.free"].astype(np.int32).copy()
        a.nfree = int(meta["nfree"])
        if len(a.free) != a.nfree:
            raise ValueError("arena free list does not match its length")
        nscopes = int(meta["scopes"])
        lens = arrays["scope.keylen"].astype(np.int64)
        blob = arrays["scope.keys"].tobytes()
        if len(lens) != nscopes or int(lens.sum()) != len(blob):
            raise ValueError("scope table is inconsistent")
        offs = np.concatenate([[0], np.cumsum(lens)]).tolist()
        sfree = set(int(x) for x in meta["sfree"])
        idx._skey = [None if i in sfree else blob[offs[i]:offs[i + 1]] for i in range(nscopes)]
        idx._sfree = sorted(sfree)
        cap = max(64, 1 << max(0, int(nscopes - 1).bit_length()))
        idx._shead = _grown(arrays["scope.head"].astype(np.int32), cap, -1)
        idx._scount = _grown(arrays["scope.count"].astype(np.int32), cap)
        idx._sno = {k: i for i, k in enumerate(idx._skey) if k is not None}
        live_rows = np.flatnonzero(a.live[:top])
        idx._where = dict(zip(a.ids[live_rows].tolist(), live_rows.tolist(), strict=True))
        for b in meta["big"]:
            sno, btop = int(b["sno"]), int(b["top"])
            big = _Big(idx.dim, ivfs[sno], int(b["trained_for"]))
            bcap = 1 << max(6, int(btop - 1).bit_length())
            big.ids = _grown(arrays[f"big{sno}.ids"], bcap, -1)
            big.expires = _grown(arrays[f"big{sno}.expires"], bcap)
            big.live = _grown(arrays[f"big{sno}.live"], bcap)
            big.top, big.count = btop, int(b["count"])
            big.free = arrays[f"big{sno}.free"].tolist()
            big.pending = arrays[f"big{sno}.pending"].tolist()
            big.ivf.nprobe = min(NPROBE, big.ivf.nlist)
            rows = np.flatnonzero(big.live[:btop])
            if len(rows) != big.count or big.ivf.ntotal != big.count + len(big.pending):
                raise ValueError(f"large scope {sno} is inconsistent with its IVF")
            codes = (-(1 + ((sno << 32) | rows))).tolist()
            idx._where.update(zip(big.ids[rows].tolist(), codes, strict=True))
            idx._big[sno] = big
        if int(idx._scount[:nscopes].sum()) != len(idx._where):
            raise ValueError("scope counts do not add up to the indexed entries")
        return idx

    def wait_background(self) -> None:
        """Block until running background retrains have been swapped in."""
        while True:
            threads = [b.thread for b in list(self._big.values()) if b.thread is not None]
            if not threads:
                return
            for t in threads:
                t.join()

    def remove(self, entry_id: int) -> bool:
        """Drop ``entry_id``; returns False when it was not indexed."""
        with self._mut, self._lock:
            return self._remove_locked(entry_id)

    def _remove_locked(self, entry_id: int) -> bool:
        code = self._where.pop(entry_id, None)
        if code is None:
            return False
        if code >= 0:
            a = self._arena
            nxt, prv, sno = int(a.nxt[code]), int(a.prv[code]), int(a.sno[code])
            if prv >= 0:
                a.nxt[prv] = nxt
            else:
                self._shead[sno] = nxt
            if nxt >= 0:
                a.prv[nxt] = prv
            a.release(code)
            self._scount[sno] -= 1
            if self._scount[sno] == 0:
                self._drop_scope(sno)
            return True
        packed = -code - 1
        sno, row = packed >> 32, packed & 0xFFFFFFFF
        big = self._big[sno]
        big.live[row] = 0
        big.ids[row] = -1
        big.count -= 1
        self._scount[sno] -= 1
        big.pending.append(row)
        if big.log is None:
            if big.count <= self.flat_limit // 2:
                self._demote(sno, big)
                if self._scount[sno] == 0:
                    self._drop_scope(sno)
            elif len(big.pending) >= max(64, big.count // 64):
                big.ivf.remove_ids(faiss.IDSelectorBatch(np.array(big.pending, dtype=np.int64)))
                big.free.extend(big.pending)
                big.pending = []
        return True

    # ---------------------------------------------------------------- search
    def search(
        self, scope: bytes, query: np.ndarray, threshold: float, now: float
    ) -> IndexHit:
        """Best live, unexpired entry of ``scope`` whose similarity is ``>= threshold``."""
        query = self._check(query, "query")
        with self._lock:
            sno = self._sno.get(scope)
            if sno is None:
                return IndexHit(-1, float("-inf"))
            big = self._big.get(sno)
            if big is None:
                a = self._arena
                row, score = select.best_in_chain(
                    a.vecs, int(self._shead[sno]), a.nxt, query, a.expires, a.live, now, threshold)
                return IndexHit(int(a.ids[row]) if row >= 0 else -1, score)
            row, score = self._search_ivf(big, query, threshold, now)
            return IndexHit(int(big.ids[row]) if row >= 0 else -1, score)

    def _search_ivf(
        self, big: _Big, query: np.ndarray, threshold: float, now: float
    ) -> tuple[int, float]:
        k = min(big.top, _TOPK)
        q = query.reshape(1, -1)
        while True:
            scores, rows = big.ivf.search(q, k)
            row, score = select.best_of_candidates(
                scores[0], rows[0], big.expires, big.live, now, threshold)
            # A candidate exists, or the probed lists are exhausted (padding), or the k-th
            # score is already below the threshold (no unseen row can reach it): final.
            if row >= 0 or rows[0, -1] < 0 or k >= big.top or float(scores[0, -1]) < threshold:
                return row, score
            k = min(big.top, k * 4)

    def expires_of(self, entry_id: int) -> float | None:
        """The expiry recorded for ``entry_id`` (None: never, or not indexed)."""
        with self._lock:
            code = self._where.get(entry_id)
            if code is None:
                return None
            if code >= 0:
                value = float(self._arena.expires[code])
            else:
                packed = -code - 1
                value = float(self._big[packed >> 32].expires[packed & 0xFFFFFFFF])
            return None if value == _FOREVER else value
