"""The semantic cache as a library: lookup and store over the real model, FAISS and LMDB.

:class:`SemanticCache` ties the parts together along the one-way flow of DESIGN §1:

    CacheRequest -> exact lookup (LMDB) -> embed -> scoped index search -> re-check -> Hit

A found entry is served only after its stored scope is compared with the request's and
its expiry with the clock, so a stale or foreign index row can never leak an answer; a
semantic match must also pass the near-miss guard (:mod:`semcache.guard`).

Thread safety: every method may be called from any thread.  :meth:`SemanticCache.embed`
runs the forward pass on the calling thread; the web layer instead embeds through
:meth:`SemanticCache.batcher` (forward passes on the batcher's executor thread, shared by
concurrent requests) and passes the vectors in.  LMDB writes run on the store's writer
thread; the in-memory index and eviction tracker are guarded by locks.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .batching import MicroBatcher
from .embedding import Embedder, backend_of, load_embedder
from .errors import EmbeddingError, InvalidRequestError, SemcacheError
from .eviction import EvictionTracker
from .guard import conflict
from .index import ScopedIndex
from .keys import CacheRequest, derive_namespace
from .memo import VectorMemo
from .settings import Settings
from .store import EntryRecord, Store

__all__ = ["SemanticCache", "Hit"]

_VECTOR_MEMO = 4096


@dataclass(frozen=True, slots=True)
class Hit:
    """A cached answer chosen for a request.

    ``match`` is ``"exact"`` or ``"semantic"``; ``similarity`` is 1.0 for exact matches;
    ``body`` is the stored response JSON as bytes; ``created`` is the insertion time
    (seconds since the epoch).
    """

    entry_id: int
    match: str
    similarity: float
    body: bytes
    usage: dict[str, Any] | None
    model: str
    created: float

    def json(self) -> dict[str, Any]:
        """The stored response as a dict (a fresh copy each call)."""
        result: dict[str, Any] = json.loads(self.body)
        return result

    def age(self, now: float | None = None) -> float:
        return max(0.0, (time.time() if now is None else now) - self.created)


class SemanticCache:
    """A semantic cache over the store in ``settings.data_dir``.

    ``embedder`` defaults to the configured model and backend (:func:`load_embedder`;
    with ``embedding_backend=auto`` an existing store keeps the backend it was built
    with, and a new one gets the fastest).  ``clock`` gives seconds since the epoch (tests
    pass their own to move time).  Opening rebuilds the index from the store and drops
    entries that expired while it was closed.
    """

    def __init__(
        self, settings: Settings | None = None, embedder: Embedder | None = None, *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings or Settings()
        self.embedder = embedder or load_embedder(
            self.settings.embedding_model, backend=self._backend(),
            device=self.settings.embedding_device, threads=self.settings.embedding_threads,
            cache_dir=self.settings.model_dir)
        self.clock = clock
        self.store_db = Store(
            self.settings.data_dir, embedder=self.embedder.name, dim=self.embedder.dim,
            map_size=self.settings.map_size, sync=self.settings.sync)
        self.index = ScopedIndex(self.embedder.dim, flat_limit=self.settings.flat_limit)
        self.tracker = EvictionTracker(self.settings.eviction)
        # _write_lock serialises mutations (store, delete, evict, sweep) and may be held
        # across an LMDB commit; _lock guards the tracker and hit counts for microseconds
        # only, because the event loop takes it on every hit.
        self._write_lock = threading.Lock()
        self._lock = threading.Lock()
        self._pending_hits: dict[int, tuple[float, int]] = {}
        self.memo = VectorMemo(_VECTOR_MEMO)
        self.evictions = 0
        self.expirations = 0
        self.guard_rejections = 0
        self._closed = False
        self._rebuild()

    # ----------------------------------------------------------------- lifecycle
    def _backend(self) -> str:
        """The configured backend; for ``auto``, the one the existing store was built
        with (so an upgrade that changes the default does not orphan a store)."""
        configured = self.settings.embedding_backend
        if configured != "auto":
            return configured
        recorded = Store.recorded_embedder(self.settings.data_dir)
        return (backend_of(recorded) if recorded else None) or configured

    def _rebuild(self) -> None:
        now = self.clock()
        expired: list[int] = []
        for entry_id, meta, vec in self.store_db.iter_index():
            if meta.expires is not None and meta.expires <= now:
                expired.append(entry_id)
                continue
            if vec is not None:
                self.index.add(meta.scope, entry_id, vec, meta.expires)
            self.tracker.add(entry_id, meta.size, meta.expires, meta.hits)
        if expired:
            self.store_db.delete(expired)
            self.expirations += len(expired)

    def close(self) -> None:
        """Persist pending hit counts and close the store.  Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self.flush_hits()
        finally:
            self.store_db.close()

    def __enter__(self) -> SemanticCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def salt(self) -> bytes:
        return self.store_db.salt

    def __len__(self) -> int:
        return len(self.tracker)

    # ------------------------------------------------------------------ requests
    def namespace(self, explicit: str | None = None, authorization: str | None = None) -> str:
        """The namespace for a request's headers (see :func:`keys.derive_namespace`)."""
        return derive_namespace(explicit, authorization, self.salt,
                                from_key=self.settings.namespace_from_key)

    def request(self, endpoint: str, body: Any, *, namespace: str = "anonymous") -> CacheRequest:
        """Parse ``body`` for ``endpoint`` into a :class:`CacheRequest` (validates)."""
        return CacheRequest.from_body(endpoint, body, namespace=namespace)

    def embed(self, text: str) -> np.ndarray:
        """The unit vector of ``text`` (read-only); texts embedded recently, here or by
        :meth:`batcher`, come from the memo.  Blocks for a forward pass otherwise.

        Raises :class:`EmbeddingError` when the backend fails (callers fail open)."""
        vec = self.memo.get(text)
        if vec is not None:
            return vec
        try:
            out = self.embedder.embed([text])
        except SemcacheError:
            raise
        except Exception as exc:
            raise EmbeddingError(
                f"{self.embedder.name}: embedding failed: {type(exc).__name__}: {exc}") from exc
        return self.memo.put(text, out[0])

    def batcher(self, *, executor: Any = None) -> MicroBatcher:
        """A new :class:`MicroBatcher` over this cache's embedder and memo, sized by the
        settings (``embedding_batch_max``, ``embedding_batch_wait_ms``).  Use one per
        event loop and close it when done; ``executor`` as in :class:`MicroBatcher`."""
        return MicroBatcher(
            self.embedder.embed, max_batch=self.settings.embedding_batch_max,
            max_wait=self.settings.embedding_batch_wait_ms / 1000.0, executor=executor,
            memo=self.memo)

    # -------------------------------------------------------------------- lookup
    def lookup(self, req: CacheRequest, *, threshold: float | None = None) -> Hit | None:
        """The cached answer for ``req``: exact match first, then the most similar entry
        of the same scope at or above ``threshold`` (default: the configured one)."""
        return self.lookup_exact(req) or self.lookup_semantic(req, threshold=threshold)

    def lookup_exact(self, req: CacheRequest) -> Hit | None:
        """Exact repeat of ``req`` (same scope, same last turn); no embedding."""
        entry_id = self.store_db.id_for_exact(req.exact)
        if entry_id is None:
            return None
        return self._serve(entry_id, req, "exact", 1.0)

    def lookup_semantic(
        self, req: CacheRequest, *, threshold: float | None = None,
        vector: np.ndarray | None = None,
    ) -> Hit | None:
        """Most similar live entry of ``req``'s scope at or above ``threshold``."""
        if not req.semantic_text:
            return None
        limit = self.settings.threshold if threshold is None else threshold
        if not 0.0 < limit <= 1.0:
            raise InvalidRequestError("threshold", limit, "must be in (0, 1]")
        vec = self.embed(req.semantic_text) if vector is None else vector
        found = self.index.search(req.scope, vec, limit, self.clock())
        if found.entry_id < 0:
            return None
        return self._serve(found.entry_id, req, "semantic", min(1.0, found.score))

    def _serve(self, entry_id: int, req: CacheRequest, match: str, sim: float) -> Hit | None:
        rec = self.store_db.get(entry_id)
        if (match == "semantic" and rec is not None and self.settings.near_miss_guard
                and req.semantic_text and rec.text
                and conflict(req.semantic_text, rec.text) is not None):
            self.guard_rejections += 1
            return None
        now = self.clock()
        # re-check: the index is derived state; the store decides.
        if rec is None or rec.scope != req.scope or rec.namespace != req.namespace:
            return None
        if rec.expires is not None and rec.expires <= now:
            return None
        with self._lock:
            self.tracker.touch(entry_id)
            last, count = self._pending_hits.get(entry_id, (now, 0))
            self._pending_hits[entry_id] = (max(last, now), count + 1)
        return Hit(entry_id, match, sim, rec.body, rec.usage, rec.model, rec.created)

    # --------------------------------------------------------------------- store
    def store(
        self, req: CacheRequest, response: Mapping[str, Any] | bytes, *,
        ttl: float | None = None, vector: np.ndarray | None = None,
    ) -> int:
        """Store ``response`` (the complete JSON answer) for ``req``; returns the entry id.

        ``ttl`` overrides the configured time to live (seconds).  Evicts least valuable
        entries to stay inside the caps.  Blocks for the embedding (when the memo does not
        have it) and the LMDB commit; the web layer calls it off the response path.
        """
        body = response if isinstance(response, bytes) else json.dumps(
            response, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        usage = None
        if not isinstance(response, bytes):
            raw_usage = response.get("usage")
            usage = dict(raw_usage) if isinstance(raw_usage, Mapping) else None
        if ttl is not None and ttl <= 0:
            raise InvalidRequestError("ttl", ttl, "must be positive")
        life = ttl if ttl is not None else self.settings.ttl
        now = self.clock()
        vec = None
        if req.semantic_text:
            vec = self.embed(req.semantic_text) if vector is None else vector
        record = EntryRecord(
            scope=req.scope, exact=req.exact, namespace=req.namespace, endpoint=req.endpoint,
            model=req.model, text=req.semantic_text, body=body, usage=usage, created=now,
            expires=now + life if life is not None else None)
        with self._write_lock:  # one mutation at a time keeps index, tracker and LMDB in step
            with self._lock:
                victims = self.tracker.victims(
                    self.settings.max_entries - 1, self.settings.max_bytes, len(body))
            if victims:
                self._drop(victims)
                self.evictions += len(victims)
            entry_id, meta, replaced = self.store_db.put(record, vec)
            for old in replaced:
                self.index.remove(old)
            if vec is not None:
                self.index.add(req.scope, entry_id, vec, record.expires)
            with self._lock:
                for old in replaced:
                    self.tracker.remove(old)
                self.tracker.add(entry_id, meta.size, record.expires)
        return entry_id

    def _drop(self, ids: list[int]) -> list[int]:
        """Delete ``ids`` from LMDB, then index and tracker.  Caller holds _write_lock."""
        gone = self.store_db.delete(ids)
        for entry_id in ids:  # also ids already gone from LMDB (e.g. another process)
            self.index.remove(entry_id)
        with self._lock:
            for entry_id in ids:
                self.tracker.remove(entry_id)
                self._pending_hits.pop(entry_id, None)
        return gone

    # ------------------------------------------------------------- maintenance
    def delete(self, entry_id: int) -> bool:
        """Remove one entry from store and index; False when it did not exist."""
        with self._write_lock:
            return bool(self._drop([entry_id]))

    def sweep(self) -> int:
        """Remove expired entries from store and index; returns how many."""
        removed = 0
        with self._write_lock:
            while True:
                with self._lock:
                    ids = self.tracker.expired(self.clock())
                if not ids:
                    break
                self._drop(ids)
                removed += len(ids)
        self.expirations += removed
        return removed

    def flush_hits(self) -> None:
        """Persist hit counts and last-hit times gathered since the last flush."""
        with self._lock:
            pending, self._pending_hits = self._pending_hits, {}
        self.store_db.record_hits(pending)

    def stats(self) -> dict[str, Any]:
        """Counts for the operator: entries, bytes, scopes, evictions, expirations."""
        return {
            "entries": len(self.tracker), "indexed": len(self.index),
            "scopes": self.index.scopes, "payload_bytes": self.tracker.total_bytes,
            "evictions": self.evictions, "expirations": self.expirations,
            "guard_rejections": self.guard_rejections,
            "embedder": self.embedder.name, "dim": self.embedder.dim,
            "embedding_memo": {"entries": len(self.memo), "hits": self.memo.hits,
                               "misses": self.memo.misses},
        }
