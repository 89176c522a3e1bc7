"""The LMDB store: the source of truth for entries (DESIGN §4).

One LMDB environment with named sub-databases:

* ``entries``: id -> msgpack of the full record (keys, text, response body, usage...)
* ``meta_by_id``: id -> msgpack ``[scope, expires, size, created, last_hit, hits]``, the
  small part needed to rebuild the index and the eviction order without reading bodies
* ``vectors``: id -> float32 bytes
* ``exact``: exact digest -> id
* ``meta``: format version, embedding model name and dimension, namespace salt, next id
* ``ledger``: counter rows, key -> msgpack ``{field: number}``, only ever added to (the
  spend ledger's totals and day windows; see :mod:`semcache.ledger`)
* ``policy``: the adaptive policy's outcomes and fitted model, opaque bytes by key (see
  :mod:`semcache.policy`)

Ids are 8-byte big-endian, so iteration follows insertion order.  Every entry is written
and deleted in one transaction across all sub-databases, so a crash at any point leaves
either the whole entry or none of it.

Thread affinity: all write transactions run on one dedicated writer thread owned by the
store; the public write methods hand their work to it and block until it commits.  Reads
may run on any thread.  Several processes may open the same store; each rebuilds its own
index from it.
"""

from __future__ import annotations

import errno
import os
import secrets
import threading
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import lmdb
import msgpack
import numpy as np

from .errors import EmbedderMismatchError, StoreError, StoreFullError

__all__ = ["Store", "EntryRecord", "EntryMeta", "MetaTable", "FORMAT_VERSION"]

FORMAT_VERSION = b"1"
T = TypeVar("T")


def _key(entry_id: int) -> bytes:
    return entry_id.to_bytes(8, "big")


def _id(key: bytes | memoryview) -> int:
    return int.from_bytes(key, "big")


def _get(txn: lmdb.Transaction, key: bytes, db: lmdb._Database | None = None) -> bytes | None:
    """``txn.get`` as plain bytes (the store opens no buffer transactions)."""
    raw = txn.get(key, db=db) if db is not None else txn.get(key)
    return None if raw is None else bytes(raw)


@dataclass(frozen=True, slots=True)
class EntryRecord:
    """One stored answer.  ``body`` is the response JSON as UTF-8 bytes."""

    scope: bytes
    exact: bytes
    namespace: str
    endpoint: str
    model: str
    text: str | None
    body: bytes
    usage: dict[str, Any] | None
    created: float
    expires: float | None

    def pack(self) -> bytes:
        return msgpack.packb(
            {"s": self.scope, "x": self.exact, "ns": self.namespace, "ep": self.endpoint,
             "m": self.model, "t": self.text, "b": self.body, "u": self.usage,
             "c": self.created, "e": self.expires},
            use_bin_type=True,
        )

    @classmethod
    def unpack(cls, data: bytes) -> EntryRecord:
        d = msgpack.unpackb(data, raw=False)
        return cls(scope=d["s"], exact=d["x"], namespace=d["ns"], endpoint=d["ep"],
                   model=d["m"], text=d["t"], body=d["b"], usage=d["u"], created=d["c"],
                   expires=d["e"])


@dataclass(frozen=True, slots=True)
class EntryMeta:
    """The small per-entry facts kept apart from the body (index and eviction input)."""

    scope: bytes
    expires: float | None
    size: int
    created: float
    last_hit: float
    hits: int

    def pack(self) -> bytes:
        return msgpack.packb(
            [self.scope, self.expires, self.size, self.created, self.last_hit, self.hits],
            use_bin_type=True)

    @classmethod
    def unpack(cls, data: bytes) -> EntryMeta:
        s, e, size, c, lh, h = msgpack.unpackb(data, raw=False)
        return cls(s, e, size, c, lh, h)


@dataclass(frozen=True, slots=True)
class MetaTable:
    """All entries' meta as columns (row ``i`` is entry ``ids[i]``, ids ascending);
    ``expires`` holds ``inf`` for entries that never expire."""

    ids: np.ndarray
    scopes: list[bytes]
    expires: np.ndarray
    sizes: np.ndarray
    hits: np.ndarray
    last_hit: np.ndarray


class Store:
    """An open LMDB store at ``path`` for vectors of ``embedder`` (name) and ``dim``.

    Raises :class:`EmbedderMismatchError` when the store was built with another embedder
    or dimension, :class:`StoreError` when it cannot be opened.  Close with :meth:`close`
    (or use as a context manager); closing waits for queued writes.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, embedder: str, dim: int,
        map_size: int = 8 << 30, sync: bool = True,
    ) -> None:
        self.path = Path(path)
        self.dim = dim
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._env = lmdb.open(
                str(self.path), map_size=map_size, max_dbs=16, subdir=True, sync=sync,
                metasync=sync, readahead=False, max_readers=256,
            )
        except (OSError, lmdb.Error) as exc:
            raise StoreError(f"cannot open store at {self.path}: {exc}") from exc
        self._entries = self._env.open_db(b"entries")
        self._meta_by_id = self._env.open_db(b"meta_by_id")
        self._vectors = self._env.open_db(b"vectors")
        self._exact = self._env.open_db(b"exact")
        self._meta = self._env.open_db(b"meta")
        self._ledger = self._env.open_db(b"ledger")
        self._policy = self._env.open_db(b"policy")
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="semcache-lmdb-writer")
        self._writer_ident: int | None = None
        self._closed = False
        try:
            self.salt = self._write(lambda txn: self._init_meta(txn, embedder, dim))
        except BaseException:
            self._writer.shutdown()
            self._env.close()
            raise

    @staticmethod
    def recorded_embedder(path: str | os.PathLike[str]) -> str | None:
        """The embedder name recorded in the store at ``path``, or None when there is no
        store there (or it cannot be read).  Opens read-only and creates nothing; do not
        call while this process has the store open."""
        where = Path(path)
        if not (where / "data.mdb").is_file():
            return None
        try:
            env = lmdb.open(str(where), readonly=True, max_dbs=8, subdir=True, lock=True)
        except lmdb.Error:
            return None
        try:
            with env.begin() as txn:
                meta = env.open_db(b"meta", txn=txn, create=False)
                raw = _get(txn, b"embedder", meta)
        except lmdb.Error:
            return None
        finally:
            env.close()
        return raw.decode() if raw else None

    # ----------------------------------------------------------------- lifecycle
    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Finish queued writes, then close the environment.  Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._writer.shutdown(wait=True)
        self._env.close()

    def _init_meta(self, txn: lmdb.Transaction, embedder: str, dim: int) -> bytes:
        fmt = _get(txn, b"format", self._meta)
        if fmt is None:
            txn.put(b"format", FORMAT_VERSION, db=self._meta)
            txn.put(b"embedder", embedder.encode(), db=self._meta)
            txn.put(b"dim", str(dim).encode(), db=self._meta)
            txn.put(b"salt", secrets.token_bytes(16), db=self._meta)
            txn.put(b"next_id", _key(1), db=self._meta)
        elif fmt != FORMAT_VERSION:
            raise StoreError(
                f"store at {self.path} has format {fmt.decode()!r}; this semcache reads "
                f"format {FORMAT_VERSION.decode()!r}")
        stored = (_get(txn, b"embedder", self._meta) or b"").decode()
        stored_dim = int(_get(txn, b"dim", self._meta) or b"0")
        if stored != embedder or stored_dim != dim:
            raise EmbedderMismatchError(
                f"{stored} (dim {stored_dim})", f"{embedder} (dim {dim})", str(self.path))
        return _get(txn, b"salt", self._meta) or b""

    # ------------------------------------------------------------------- writing
    def _write(self, fn: Callable[[lmdb.Transaction], T]) -> T:
        """Run ``fn`` in one write transaction on the writer thread; block for the result."""
        if self._closed:
            raise StoreError(f"store at {self.path} is closed")

        def run() -> T:
            self._writer_ident = threading.get_ident()
            try:
                with self._env.begin(write=True) as txn:
                    return fn(txn)
            except lmdb.MapFullError as exc:
                raise StoreFullError(
                    f"store at {self.path} reached its map size ({self._env.info()['map_size']}"
                    " bytes; setting map_size); the write was rolled back") from exc
            except lmdb.Error as exc:
                if isinstance(exc, lmdb.DiskError) or "No space" in str(exc):
                    raise StoreFullError(
                        f"disk full under {self.path}; the write was rolled back") from exc
                raise StoreError(f"write to store at {self.path} failed: {exc}") from exc
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    raise StoreFullError(
                        f"disk full under {self.path}; the write was rolled back") from exc
                raise

        if threading.get_ident() == self._writer_ident:
            return run()
        return self._writer.submit(run).result()

    def put(
        self, record: EntryRecord, vector: np.ndarray | None, *, last_hit: float | None = None,
        hits: int = 0,
    ) -> tuple[int, EntryMeta, list[int]]:
        """Store a new entry; returns ``(id, meta, replaced ids)``.

        An entry with the same exact digest is replaced (its id is returned in the list),
        so an exact key never points at two answers.
        """
        item = self._prepare(record, vector)
        return self._write(lambda txn: self._put_in(txn, *item, last_hit, hits))

    def put_many(
        self, items: Iterable[tuple[EntryRecord, np.ndarray | None]],
    ) -> list[tuple[int, EntryMeta, list[int]]]:
        """Store several new entries in one transaction (imports); results as :meth:`put`."""
        prepared = [self._prepare(record, vector) for record, vector in items]
        if not prepared:
            return []
        return self._write(lambda txn: [self._put_in(txn, *item, None, 0) for item in prepared])

    def _prepare(self, record: EntryRecord, vector: np.ndarray | None
                 ) -> tuple[EntryRecord, bytes, bytes | None]:
        vec_bytes = None
        if vector is not None:
            if vector.dtype != np.float32 or vector.shape != (self.dim,):
                raise StoreError(
                    f"vector: must be float32 of shape ({self.dim},) "
                    f"(got {vector.dtype} {vector.shape})")
            vec_bytes = vector.tobytes()
        return record, record.pack(), vec_bytes

    def _put_in(self, txn: lmdb.Transaction, record: EntryRecord, payload: bytes,
                vec_bytes: bytes | None, last_hit: float | None, hits: int,
                ) -> tuple[int, EntryMeta, list[int]]:
        replaced: list[int] = []
        old = _get(txn, record.exact, self._exact)
        if old is not None:
            replaced.append(_id(old))
            self._delete_in(txn, _id(old))
        entry_id = _id(_get(txn, b"next_id", self._meta) or _key(1))
        txn.put(b"next_id", _key(entry_id + 1), db=self._meta)
        key = _key(entry_id)
        meta = EntryMeta(record.scope, record.expires, len(payload), record.created,
                         last_hit if last_hit is not None else record.created, hits)
        txn.put(key, payload, db=self._entries)
        txn.put(key, meta.pack(), db=self._meta_by_id)
        if vec_bytes is not None:
            txn.put(key, vec_bytes, db=self._vectors)
        txn.put(record.exact, key, db=self._exact)
        return entry_id, meta, replaced

    def _delete_in(self, txn: lmdb.Transaction, entry_id: int) -> bool:
        key = _key(entry_id)
        data = _get(txn, key, self._entries)
        if data is None:
            return False
        exact = EntryRecord.unpack(data).exact
        if txn.get(exact, db=self._exact) == key:
            txn.delete(exact, db=self._exact)
        txn.delete(key, db=self._entries)
        txn.delete(key, db=self._meta_by_id)
        txn.delete(key, db=self._vectors)
        return True

    def delete(self, ids: Iterable[int]) -> list[int]:
        """Delete entries in one transaction; returns the ids that existed."""
        wanted = list(ids)
        if not wanted:
            return []
        return self._write(lambda txn: [i for i in wanted if self._delete_in(txn, i)])

    def record_hits(self, hits: dict[int, tuple[float, int]]) -> None:
        """Persist access facts ``{id: (last_hit, added hits)}`` of entries still present."""
        if not hits:
            return

        def txn_fn(txn: lmdb.Transaction) -> None:
            for entry_id, (last_hit, added) in hits.items():
                key = _key(entry_id)
                raw = _get(txn, key, self._meta_by_id)
                if raw is None:
                    continue
                m = EntryMeta.unpack(raw)
                txn.put(key, EntryMeta(m.scope, m.expires, m.size, m.created,
                                       max(m.last_hit, last_hit), m.hits + added).pack(),
                        db=self._meta_by_id)

        self._write(txn_fn)

    def add_to_ledger(self, deltas: dict[bytes, dict[str, float]]) -> None:
        """Add ``{key: {field: amount}}`` to the ledger rows in one transaction.

        Rows are only ever added to, so several processes sharing the store never lose
        each other's counts.  Missing rows and fields start at zero.
        """
        if not deltas:
            return

        def txn_fn(txn: lmdb.Transaction) -> None:
            for key, fields in deltas.items():
                raw = _get(txn, key, self._ledger)
                row: dict[str, float] = msgpack.unpackb(raw, raw=False) if raw is not None else {}
                for name, amount in fields.items():
                    row[name] = row.get(name, 0) + amount
                txn.put(key, msgpack.packb(row, use_bin_type=True), db=self._ledger)

        self._write(txn_fn)

    def ledger_rows(self, prefix: bytes = b"") -> dict[bytes, dict[str, float]]:
        """Every ledger row whose key starts with ``prefix``."""
        out: dict[bytes, dict[str, float]] = {}
        with self._env.begin(db=self._ledger) as txn:
            cur = txn.cursor()
            if not cur.set_range(prefix):
                return out
            for key, raw in cur:
                key = bytes(key)
                if not key.startswith(prefix):
                    break
                out[key] = msgpack.unpackb(bytes(raw), raw=False)
        return out

    def policy_write(self, items: dict[bytes, bytes], delete: Iterable[bytes] = ()) -> None:
        """Put ``items`` and delete the ``delete`` keys of the policy sub-database in one
        transaction."""
        gone = list(delete)
        if not items and not gone:
            return

        def txn_fn(txn: lmdb.Transaction) -> None:
            for key in gone:
                txn.delete(key, db=self._policy)
            for key, value in items.items():
                txn.put(key, value, db=self._policy)

        self._write(txn_fn)

    def policy_items(self, prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        """The policy sub-database's ``(key, value)`` pairs whose key starts with
        ``prefix``, in key order (read in one transaction, then yielded)."""
        out: list[tuple[bytes, bytes]] = []
        with self._env.begin(db=self._policy) as txn:
            cur = txn.cursor()
            if cur.set_range(prefix):
                for key, raw in cur:
                    if not bytes(key).startswith(prefix):
                        break
                    out.append((bytes(key), bytes(raw)))
        return iter(out)

    def adopt_salt(self, salt: bytes) -> bool:
        """Take ``salt`` as the namespace salt if the store holds no entry yet (an import
        into a new sidecar keeps key-derived namespaces).  Returns whether it did."""
        if len(salt) < 8:
            raise StoreError(f"salt: must be at least 8 bytes (got {len(salt)})")

        def txn_fn(txn: lmdb.Transaction) -> bool:
            if txn.stat(self._entries)["entries"]:
                return False
            txn.put(b"salt", salt, db=self._meta)
            return True

        adopted = self._write(txn_fn)
        if adopted:
            self.salt = salt
        return adopted

    # ------------------------------------------------------------------- reading
    def get(self, entry_id: int) -> EntryRecord | None:
        """The record of ``entry_id``, or None when it is not stored."""
        with self._env.begin(db=self._entries) as txn:
            data = _get(txn, _key(entry_id))
        return None if data is None else EntryRecord.unpack(data)

    def get_meta(self, entry_id: int) -> EntryMeta | None:
        """The small per-entry facts of ``entry_id`` (hits as of the last flush)."""
        with self._env.begin(db=self._meta_by_id) as txn:
            data = _get(txn, _key(entry_id))
        return None if data is None else EntryMeta.unpack(data)

    def get_vector(self, entry_id: int) -> np.ndarray | None:
        """A copy of the stored vector of ``entry_id`` (None for exact-only entries)."""
        with self._env.begin(db=self._vectors) as txn:
            data = _get(txn, _key(entry_id))
        return None if data is None else np.frombuffer(data, dtype=np.float32).copy()

    def id_for_exact(self, exact: bytes) -> int | None:
        """The id stored under exact digest ``exact``, if any."""
        with self._env.begin(db=self._exact) as txn:
            raw = _get(txn, exact)
        return None if raw is None else _id(raw)

    def iter_index(self) -> Iterator[tuple[int, EntryMeta, np.ndarray | None]]:
        """Every entry's id, meta and vector (None for exact-only entries), by id.

        Reads one consistent snapshot; the vectors are copies.
        """
        for entry_id, raw, vec in self._with_vectors(self._meta_by_id):
            yield entry_id, EntryMeta.unpack(raw), vec

    def iter_records(self, start: int = 0) -> Generator[tuple[int, EntryRecord], None, None]:
        """Every full record with id ``>= start``, by id."""
        with self._env.begin(db=self._entries) as txn:
            cur = txn.cursor()
            if not cur.set_range(_key(start)):
                return
            for key, raw in cur:
                yield _id(key), EntryRecord.unpack(bytes(raw))

    def iter_records_with_vectors(
        self,
    ) -> Generator[tuple[int, EntryRecord, np.ndarray | None], None, None]:
        """Every full record with its vector (a copy; None for exact-only entries), by id,
        from one consistent snapshot."""
        for entry_id, raw, vec in self._with_vectors(self._entries):
            yield entry_id, EntryRecord.unpack(raw), vec

    def _with_vectors(self, db: Any) -> Iterator[tuple[int, bytes, np.ndarray | None]]:
        """``(id, raw value, vector copy or None)`` of every key of ``db``, by id, from one
        read snapshot."""
        with self._env.begin() as txn:
            vec_cursor = txn.cursor(db=self._vectors)
            for key, raw in txn.cursor(db=db):
                vec_raw = vec_cursor.get(key)
                vec = (np.frombuffer(vec_raw, dtype=np.float32).copy()
                       if vec_raw is not None else None)
                yield _id(key), bytes(raw), vec

    def iter_meta(self) -> Iterator[tuple[int, EntryMeta]]:
        """Every entry's id and meta, by id, without vectors or bodies (one read snapshot)."""
        with self._env.begin(db=self._meta_by_id) as txn:
            for key, raw in txn.cursor():
                yield _id(key), EntryMeta.unpack(bytes(raw))

    def meta_table(self) -> MetaTable:
        """Every entry's meta as columns, by id (one read snapshot); the fast path of
        :meth:`iter_meta` for rebuilding the index and the tracker at open."""
        with self._env.begin(db=self._meta_by_id) as txn:
            keys: list[bytes] = []
            rows: list[list[Any]] = []
            unpack = msgpack.unpackb
            for key, raw in txn.cursor().iternext():
                keys.append(key)
                rows.append(unpack(raw, raw=False))
        ids = np.frombuffer(b"".join(keys), dtype=">i8").astype(np.int64)
        if not rows:
            empty = np.zeros(0)
            return MetaTable(ids, [], empty, empty.astype(np.int64), empty.astype(np.int64), empty)
        scopes, exp, size, _created, last_hit, hits = zip(*rows, strict=True)
        inf = float("inf")
        return MetaTable(
            ids, list(scopes),
            np.fromiter((inf if e is None else e for e in exp), dtype=np.float64, count=len(exp)),
            np.asarray(size, dtype=np.int64), np.asarray(hits, dtype=np.int64),
            np.asarray(last_hit, dtype=np.float64))

    def vector_ids(self) -> np.ndarray:
        """Ids of the entries that have a vector (int64, ascending)."""
        with self._env.begin(db=self._vectors) as txn:
            keys = b"".join(txn.cursor().iternext(keys=True, values=False))
        return np.frombuffer(keys, dtype=">i8").astype(np.int64)

    def vectors(self, ids: Iterable[int]) -> dict[int, np.ndarray]:
        """The stored vectors of ``ids`` (copies); ids without one are left out."""
        out: dict[int, np.ndarray] = {}
        with self._env.begin(db=self._vectors) as txn:
            for entry_id in ids:
                raw = txn.get(_key(entry_id))
                if raw is not None:
                    out[entry_id] = np.frombuffer(raw, dtype=np.float32).copy()
        return out

    def last_id(self) -> int:
        """The highest id ever given out (0 when none); ids are never reused."""
        with self._env.begin(db=self._meta) as txn:
            return _id(_get(txn, b"next_id") or _key(1)) - 1

    @property
    def snapshot_path(self) -> Path:
        """Where the index snapshot of this store lives (next to, not inside, LMDB)."""
        return self.path / "index.snapshot"

    def count(self) -> int:
        with self._env.begin() as txn:
            return int(txn.stat(self._entries)["entries"])

    def stat(self) -> dict[str, Any]:
        """Entry count, file size and map size, for the operator."""
        info = self._env.info()
        file = self.path / "data.mdb"
        return {"entries": self.count(), "map_size": info["map_size"],
                "file_bytes": file.stat().st_size if file.exists() else 0}
