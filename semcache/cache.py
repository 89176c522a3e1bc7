"""The semantic cache as a library: lookup and store over the real model, FAISS and LMDB.

:class:`SemanticCache` ties the parts together along the one-way flow of DESIGN §1:

    CacheRequest -> exact lookup (LMDB) -> embed -> scoped index search -> re-check -> Hit

A found entry is served only after its stored scope is compared with the request's and
its expiry with the clock, so a stale or foreign index row can never leak an answer.  A
semantic match is a :class:`Candidate` until the policy (:mod:`semcache.policy`: the
near-miss guard and the threshold, or the rule learned from outcomes under an error
bound) says to serve it; the web layer keeps refused candidates to learn from.

Thread safety: every method may be called from any thread.  :meth:`SemanticCache.embed`
runs the forward pass on the calling thread; the web layer instead embeds through
:meth:`SemanticCache.batcher` (forward passes on the batcher's executor thread, shared by
concurrent requests) and passes the vectors in.  LMDB writes run on the store's writer
thread; the in-memory index and eviction tracker are guarded by locks.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import snapshot
from .batching import MicroBatcher
from .embedding import Embedder, backend_of, load_embedder
from .errors import EmbeddingError, InvalidRequestError, SemcacheError, StoreError
from .eviction import EvictionTracker
from .features import Observation, observe
from .guard import conflict
from .index import ScopedIndex
from .keys import CacheRequest, derive_namespace
from .memo import VectorMemo
from .policy import Policy, Verdict
from .settings import Settings
from .store import EntryMeta, EntryRecord, Store

__all__ = ["SemanticCache", "Hit", "Candidate"]

_VECTOR_MEMO = 4096
_EVICT_BATCH = 1024  # at most this many extra victims per eviction (1/64 of the cap)
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Hit:
    """A cached answer chosen for a request.

    ``match`` is ``"exact"`` or ``"semantic"``; ``similarity`` is 1.0 for exact matches;
    ``body`` is the stored response JSON as bytes; ``created`` is the insertion time
    (seconds since the epoch); ``confidence`` the policy's calibrated chance that a
    semantic hit is right (None for exact hits and under the static rule).
    """

    entry_id: int
    match: str
    similarity: float
    body: bytes
    usage: dict[str, Any] | None
    model: str
    created: float
    confidence: float | None = None

    def json(self) -> dict[str, Any]:
        """The stored response as a dict (a fresh copy each call)."""
        result: dict[str, Any] = json.loads(self.body)
        return result

    def age(self, now: float | None = None) -> float:
        return max(0.0, (time.time() if now is None else now) - self.created)


@dataclass(frozen=True, slots=True)
class Candidate:
    """The most similar live entry of a request's scope, and the policy's verdict on it.

    ``guard`` is the near-miss guard's objection (None when it has none or is off);
    ``observation`` is what the policy learns from once the candidate's answer is judged.
    """

    entry_id: int
    similarity: float
    record: EntryRecord
    observation: Observation
    verdict: Verdict
    guard: str | None


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
        self._lock = threading.Lock()  # serialises writers: store, delete, evict, sweep, snapshot
        self._book = threading.Lock()  # tracker and pending hits; never held across I/O
        self._pending_hits: dict[int, tuple[float, int]] = {}
        self.memo = VectorMemo(_VECTOR_MEMO)
        st = self.settings
        self.policy = Policy(
            mode=st.policy, threshold=st.threshold, max_wrong_rate=st.max_wrong_rate,
            guard=st.near_miss_guard, capacity=st.policy_outcomes, dim=self.embedder.dim,
            store=self.store_db, verifier_band=st.verifier_band)
        self.evictions = 0
        self.expirations = 0
        self.guard_rejections = 0
        self.index_source = "empty"  # how the index was built at open: store, snapshot+replay
        self._snapshot_at = self.clock()
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
        """Build the index and the tracker at open: from the snapshot plus the entries
        written after it when the snapshot matches the store, else from the store alone.
        Entries that expired while closed are deleted."""
        now = self.clock()
        table = self.store_db.meta_table()
        due = table.expires <= now
        if due.any():
            expired = table.ids[due].tolist()
            self.store_db.delete(expired)
            self.expirations += len(expired)
        keep = np.flatnonzero(~due)
        id_arr, exp_arr = table.ids[keep], table.expires[keep]
        scopes = [table.scopes[k] for k in keep.tolist()] if due.any() else table.scopes
        loaded = self._load_snapshot(id_arr)
        if loaded is None:
            vecs = self.store_db.vectors(id_arr.tolist())
            with_vec = np.fromiter(vecs.keys(), dtype=np.int64, count=len(vecs))
            pos = np.searchsorted(id_arr, with_vec)
            if len(with_vec):
                self.index.add_many([scopes[p] for p in pos.tolist()], with_vec,
                                    np.stack([vecs[i] for i in with_vec.tolist()]), exp_arr[pos])
            self.index_source = "store"
        else:
            self.index, last = loaded
            self.index.flat_limit = self.settings.flat_limit
            vecs = self.store_db.vectors(id_arr[id_arr > last].tolist())
            fresh = np.fromiter(vecs.keys(), dtype=np.int64, count=len(vecs))
            for entry_id, p in zip(fresh.tolist(), np.searchsorted(id_arr, fresh).tolist(),
                                   strict=True):
                expiry = float(exp_arr[p])
                self.index.add(scopes[p], entry_id, vecs[entry_id],
                               None if expiry == float("inf") else expiry)
            self.index_source = f"snapshot+{len(fresh)}"
        # least recently used first, so the tracker's order survives restarts
        order = np.lexsort((id_arr, table.last_hit[keep]))
        self.tracker.add_many(id_arr[order], table.sizes[keep][order], exp_arr[order],
                              table.hits[keep][order])

    def _stamp(self) -> snapshot.Stamp:
        return snapshot.Stamp(self.embedder.name, self.embedder.dim, self.store_db.salt.hex(),
                              self.store_db.last_id(), len(self.index))

    def _load_snapshot(self, ids: np.ndarray) -> tuple[ScopedIndex, int] | None:
        """The snapshot's index reconciled with the store, and its last id; None when there
        is no usable snapshot (the reason is logged) or it misses entries it should hold."""
        if self.settings.snapshot_interval is None:
            snapshot.remove_stale_temps(self.store_db.snapshot_path)  # left by earlier runs
            return None
        index, stamp, reason = snapshot.load(self.store_db.snapshot_path, self._stamp())
        if index is None or stamp is None:
            if reason != "no snapshot":
                log.warning("index snapshot ignored, rebuilding from the store: %s", reason)
            return None
        held = index.ids()
        # entries stored before the snapshot but not in it must be exact-only (no vector)
        unheld = np.setdiff1d(ids[ids <= stamp.last_id], held, assume_unique=True)
        if self.store_db.vectors(unheld.tolist()):
            log.warning("index snapshot ignored, rebuilding from the store: it lacks entries "
                        "stored before it was taken")
            return None
        for gone in np.setdiff1d(held, ids, assume_unique=True).tolist():
            index.remove(gone)  # deleted or expired since the snapshot
        return index, stamp.last_id

    def write_snapshot(self) -> int:
        """Write the index snapshot now (stores wait; lookups go on); returns its size in
        bytes, 0 when snapshots are off.  Raises :class:`StoreError` when it cannot be
        written.  Call from a worker thread."""
        if self.settings.snapshot_interval is None:
            return 0
        with self._lock:
            size = snapshot.write(self.index, self.store_db.snapshot_path, self._stamp())
            self._snapshot_at = self.clock()
            return size

    def close(self) -> None:
        """Persist pending hit counts, write the index snapshot, close the store.  Idempotent."""
        if self._closed:
            return
        try:
            self.flush_hits()
            try:
                self.policy.flush()
            except Exception:
                log.exception("policy outcomes not saved")
            try:
                self.write_snapshot()
            except Exception:  # derived state: the next start rebuilds instead
                log.exception("index snapshot not written")
        finally:
            self._closed = True
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
        rec = self._live(entry_id, req)
        if rec is None:
            return None
        self._touch(entry_id)
        return Hit(entry_id, "exact", 1.0, rec.body, rec.usage, rec.model, rec.created)

    def lookup_semantic(
        self, req: CacheRequest, *, threshold: float | None = None,
        vector: np.ndarray | None = None, max_wrong_rate: float | None = None,
    ) -> Hit | None:
        """The most similar live entry of ``req``'s scope, when the policy serves it.

        ``threshold`` is an explicit similarity threshold (default: the configured one,
        which the adaptive policy replaces once calibrated); ``max_wrong_rate`` the error
        bound of the adaptive policy (default: the configured one)."""
        cand = self.consider(req, threshold=threshold, vector=vector, max_wrong_rate=max_wrong_rate)
        return self.serve(cand) if cand is not None and cand.verdict.serve else None

    def consider(
        self, req: CacheRequest, *, threshold: float | None = None,
        vector: np.ndarray | None = None, max_wrong_rate: float | None = None,
    ) -> Candidate | None:
        """The best live entry of ``req``'s scope at or above the lower of ``threshold``
        and ``policy_floor``, with the policy's verdict; None when there is none.  Nothing
        is served or counted: pass a served candidate to :meth:`serve`."""
        if not req.semantic_text:
            return None
        if threshold is not None and not 0.0 < threshold <= 1.0:
            raise InvalidRequestError("threshold", threshold, "must be in (0, 1]")
        floor = min(self.settings.policy_floor, self.settings.threshold if threshold is None else threshold)
        vec = self.embed(req.semantic_text) if vector is None else vector
        found = self.index.search(req.scope, vec, floor, self.clock())
        if found.entry_id < 0:
            return None
        rec = self._live(found.entry_id, req)
        if rec is None or not rec.text:
            return None
        entry_vec = self.store_db.get_vector(found.entry_id)
        if entry_vec is None:
            return None
        sim = min(1.0, float(found.score))
        why = conflict(req.semantic_text, rec.text) if self.settings.near_miss_guard else None
        obs = observe(req.semantic_text, rec.text, vec, entry_vec, sim, why is not None)
        verdict = self.policy.decide(obs, entry_id=found.entry_id, threshold=threshold,
                                     max_wrong_rate=max_wrong_rate)
        if why is not None and not verdict.serve and sim >= (
                self.settings.threshold if threshold is None else threshold):
            self.guard_rejections += 1  # refused although similar enough for the threshold
        return Candidate(found.entry_id, sim, rec, obs, verdict, why)

    def serve(self, cand: Candidate) -> Hit:
        """Serve ``cand`` (counts the hit for eviction and the entry's statistics)."""
        self._touch(cand.entry_id)
        rec = cand.record
        return Hit(cand.entry_id, "semantic", cand.similarity, rec.body, rec.usage, rec.model,
                   rec.created, cand.verdict.confidence)

    def _live(self, entry_id: int, req: CacheRequest) -> EntryRecord | None:
        """The stored record of ``entry_id`` if it is live and of ``req``'s scope and
        namespace — the index is derived state; the store decides."""
        rec = self.store_db.get(entry_id)
        if rec is None or rec.scope != req.scope or rec.namespace != req.namespace:
            return None
        if rec.expires is not None and rec.expires <= self.clock():
            return None
        return rec

    def _touch(self, entry_id: int) -> None:
        now = self.clock()
        with self._book:
            self.tracker.touch(entry_id)
            last, count = self._pending_hits.get(entry_id, (now, 0))
            self._pending_hits[entry_id] = (max(last, now), count + 1)

    # --------------------------------------------------------------------- store
    def store(
        self, req: CacheRequest, response: Mapping[str, Any] | bytes, *,
        ttl: float | None = None, vector: np.ndarray | None = None,
    ) -> int:
        """Store ``response`` (the complete JSON answer) for ``req``; returns the entry id.

        ``ttl`` overrides the configured time to live (seconds).  Evicts least valuable
        entries to stay inside the caps; raises :class:`InvalidRequestError` (storing and
        evicting nothing) for an answer larger than ``max_bytes``.  Blocks for the embedding (when the memo does not
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
        size = len(record.pack())  # the size the store will record
        self._check_fits(size)
        with self._lock:  # one store at a time keeps index, tracker and LMDB in step
            self._evict_locked(size)
            entry_id, meta, replaced = self.store_db.put(record, vec)
            self._track_stored(entry_id, record, meta, replaced, vec)
        return entry_id

    def _track_stored(self, entry_id: int, record: EntryRecord, meta: EntryMeta,
                      replaced: list[int], vec: np.ndarray | None) -> None:
        """After a commit: replaced entries leave index and tracker, the new one joins
        both.  Called with ``_lock`` held."""
        for old in replaced:
            self.index.remove(old)
        if vec is not None:
            self.index.add(record.scope, entry_id, vec, record.expires)
        with self._book:
            for old in replaced:
                self.tracker.remove(old)
            self.tracker.add(entry_id, meta.size, record.expires)

    def _check_fits(self, size: int, count: int = 1) -> None:
        """Refuse what no eviction could make room for: an entry larger than
        ``max_bytes``, or more entries at once than ``max_entries``."""
        if size > self.settings.max_bytes:
            raise InvalidRequestError("response", f"{size} bytes",
                                      f"is larger than max_bytes ({self.settings.max_bytes})")
        if count > self.settings.max_entries:
            raise InvalidRequestError("entries", count,
                                      f"are more than max_entries ({self.settings.max_entries}) "
                                      "at once")

    def _evict_locked(self, incoming: int) -> None:
        """Make room for one entry of ``incoming`` bytes.  Once a cap would be exceeded,
        victims are taken in a batch down to 1/64 below the caps (at most
        ``_EVICT_BATCH`` extra entries), so the next stores evict nothing."""
        cap_n, cap_b = self.settings.max_entries, self.settings.max_bytes
        with self._book:
            if len(self.tracker) < cap_n and self.tracker.total_bytes + incoming <= cap_b:
                return
            victims = self.tracker.victims(
                cap_n - 1 - min(_EVICT_BATCH, cap_n // 64), cap_b - cap_b // 64, incoming)
        if victims:
            self._drop_locked(victims)
            self.evictions += len(victims)

    def _drop_locked(self, ids: list[int]) -> list[int]:
        """Remove ``ids`` from the index (first: it never points at a missing entry), the
        store (one transaction), then the tracker.  Called with ``_lock`` held."""
        for entry_id in ids:
            self.index.remove(entry_id)
        gone = self.store_db.delete(ids)
        with self._book:
            for entry_id in ids:  # also ids already gone from LMDB (e.g. another process)
                self.tracker.remove(entry_id)
                self._pending_hits.pop(entry_id, None)
        self.policy.forget_entries(ids)
        return gone

    # ------------------------------------------------------------- maintenance
    def delete(self, entry_id: int) -> bool:
        """Remove one entry from store and index; False when it did not exist."""
        with self._lock:
            return bool(self._drop_locked([entry_id]))

    def delete_many(self, entry_ids: list[int]) -> list[int]:
        """Remove entries from store and index in one transaction; returns those that existed."""
        if not entry_ids:
            return []
        with self._lock:
            return self._drop_locked(list(entry_ids))

    def embed_many(self, texts: list[str]) -> list[np.ndarray]:
        """Unit vectors of ``texts`` in one batch (blocks for the forward pass)."""
        if not texts:
            return []
        return [np.ascontiguousarray(v, dtype=np.float32) for v in self.embedder.embed(texts)]

    def restore_many(self, records: list[EntryRecord],
                     vectors: list[np.ndarray] | None = None) -> list[int]:
        """Store complete records as they are (imports): keys, namespace, times and body
        kept, vectors made by *this* cache's embedder.  ``vectors`` are those of the
        records that have text, in order (:meth:`embed_many`; embedded here when None).
        Returns the new ids, in order.  An entry with the same exact digest is replaced;
        the caps evict as for :meth:`store`.  Raises :class:`InvalidRequestError`, storing
        nothing, for a record larger than ``max_bytes`` or more records than
        ``max_entries``.  Blocks for one LMDB commit."""
        if not records:
            return []
        if vectors is None:
            vectors = self.embed_many([r.text for r in records if r.text])
        pending = iter(vectors)
        items = [(r, next(pending) if r.text else None) for r in records]
        sizes = [len(r.pack()) for r in records]
        self._check_fits(max(sizes), len(records))
        incoming = sum(sizes)
        ids: list[int] = []
        with self._lock:
            with self._book:
                victims = self.tracker.victims(
                    max(0, self.settings.max_entries - len(records)), self.settings.max_bytes,
                    incoming)
            if victims:
                self._drop_locked(victims)
                self.evictions += len(victims)
            for (record, vec), (entry_id, meta, replaced) in zip(
                    items, self.store_db.put_many(items), strict=True):
                self._track_stored(entry_id, record, meta, replaced, vec)
                ids.append(entry_id)
        return ids

    def pending_hits(self, entry_id: int) -> tuple[int, float | None]:
        """``(hits, last hit time)`` of ``entry_id`` counted since the last
        :meth:`flush_hits` (not yet in LMDB)."""
        with self._book:
            last, count = self._pending_hits.get(entry_id, (0.0, 0))
            return count, (last if count else None)

    def sweep(self) -> int:
        """Remove expired entries from store and index in batches of up to 1024 (locks are
        released between batches), then write the index snapshot when
        ``snapshot_interval`` seconds have passed since the last.  Returns how many
        entries expired.  Blocks on LMDB: call from a worker thread."""
        removed = 0
        while True:
            with self._lock:
                with self._book:
                    ids = self.tracker.expired(self.clock())
                if not ids:
                    break
                self._drop_locked(ids)
                removed += len(ids)
        self.expirations += removed
        interval = self.settings.snapshot_interval
        if interval is not None and self.clock() - self._snapshot_at >= interval:
            try:
                self.write_snapshot()
            except StoreError as exc:
                log.warning("%s", exc)
        return removed

    def flush_hits(self) -> None:
        """Persist hit counts and last-hit times gathered since the last flush."""
        with self._book:
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
