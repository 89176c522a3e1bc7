"""Index snapshots: the scoped index on disk, so a restart does not rebuild from scratch.

The snapshot is derived state (DESIGN §4): LMDB stays the source of truth.  A snapshot is
one file, ``data_dir/index.snapshot``, written atomically (temp file, fsync, rename) and
stamped with the store it was taken from:

* ``embedder`` / ``dim`` — the embedding model that made its vectors;
* ``salt`` — the store's random salt, unique per store, so another store's file is refused;
* ``last_id`` — the store's last entry id when the snapshot was taken: every vector entry
  with an id at or below it must be in the snapshot (ids are never reused), entries after
  it are replayed from the store, entries deleted since are removed on load;
* ``count`` and a CRC-32 of every section — a torn or corrupted file is refused.

Layout: ``MAGIC``, raw sections (numpy arrays and FAISS indexes), a JSON footer describing
them, the footer's length (8 bytes little-endian) and ``MAGIC`` again.  The footer's
``format`` names the index layout: 2 since the small-scope arena holds float16 vectors
(:data:`~semcache.index.ARENA_DTYPE`, also recorded in the index metadata); a file of
another format (1: float32 arena) is refused, so the index is rebuilt from the store.

:func:`load` never raises for a bad file: it returns ``(None, reason)`` and the caller
rebuilds from the store.  :func:`write` raises :class:`~semcache.errors.StoreError` when
the file cannot be written; the caller decides whether that matters (the cache logs it).
Thread affinity: :func:`write` holds the index's mutation lock while it copies the index
(searches go on); call it from a worker thread, never the event loop.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, cast

import faiss
import numpy as np

from .errors import StoreError
from .index import ScopedIndex

__all__ = ["Stamp", "write", "load", "FILENAME"]

FILENAME = "index.snapshot"
MAGIC = b"SEMCACHE-IDX-v1\n"
_FORMAT = 2  # 1: float32 arena; 2: float16 arena


@dataclass(frozen=True, slots=True)
class Stamp:
    """What a snapshot must match: the store's identity and its last entry id."""

    embedder: str
    dim: int
    salt: str
    last_id: int
    count: int = 0

    def same_store(self, other: Stamp) -> str | None:
        """None when ``other`` (the open store) may use this snapshot, else the reason."""
        if (self.embedder, self.dim) != (other.embedder, other.dim):
            return f"made by {self.embedder} (dim {self.dim}), store uses {other.embedder}"
        if self.salt != other.salt:
            return "made for another store"
        if self.last_id > other.last_id:
            return f"newer than the store (last id {self.last_id} > {other.last_id})"
        return None


def _write_array(f: BinaryIO, name: str, arr: np.ndarray) -> dict[str, Any]:
    data = np.ascontiguousarray(arr)
    offset = f.tell()
    view = data.reshape(-1).view(np.uint8).data
    f.write(view)
    return {"name": name, "kind": "array", "dtype": data.dtype.str, "shape": list(data.shape),
            "offset": offset, "nbytes": data.nbytes, "crc": zlib.crc32(view)}


def _write_faiss(f: BinaryIO, name: str, ivf: Any) -> dict[str, Any]:
    offset = f.tell()
    state = {"crc": 0, "n": 0}

    def sink(chunk: bytes) -> None:
        f.write(chunk)
        state["crc"] = zlib.crc32(chunk, state["crc"])
        state["n"] += len(chunk)

    writer = faiss.PyCallbackIOWriter(sink)  # type: ignore[attr-defined]
    faiss.write_index(ivf, writer)
    del writer  # flushes the last chunk
    return {"name": name, "kind": "faiss", "offset": offset, "nbytes": state["n"],
            "crc": state["crc"]}


def write(index: ScopedIndex, path: Path, stamp: Stamp) -> int:
    """Write ``index`` to ``path`` atomically, stamped with ``stamp``; returns its size
    in bytes.  The caller keeps the store's writers out (so ``stamp.last_id`` is exact)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(MAGIC)
            while True:
                index.wait_background()  # a retrain swaps under the mutation lock
                with index.mutation_lock:
                    if index.retraining:
                        continue
                    meta, arrays, ivfs = index.export_state()
                    sections = [_write_array(f, name, arr) for name, arr in arrays.items()]
                    sections += [_write_faiss(f, f"ivf{sno}", ivf) for sno, ivf in ivfs.items()]
                    count = len(index)
                    break
            footer = json.dumps({
                "format": _FORMAT, "index": meta, "sections": sections,
                "stamp": {"embedder": stamp.embedder, "dim": stamp.dim, "salt": stamp.salt,
                          "last_id": stamp.last_id, "count": count},
            }).encode()
            f.write(footer)
            f.write(struct.pack("<Q", len(footer)))
            f.write(MAGIC)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return path.stat().st_size
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise StoreError(f"cannot write index snapshot {path}: {exc}") from exc


def _read_section(f: BinaryIO, sec: dict[str, Any]) -> np.ndarray:
    f.seek(int(sec["offset"]))
    buf = np.empty(int(sec["nbytes"]), dtype=np.uint8)
    if cast(Any, f).readinto(buf.data) != buf.nbytes:
        raise ValueError(f"section {sec['name']} is truncated")
    if zlib.crc32(buf.data) != sec["crc"]:
        raise ValueError(f"section {sec['name']} fails its checksum")
    return buf


def _read_faiss(f: BinaryIO, sec: dict[str, Any]) -> Any:
    """Stream a FAISS index section into FAISS (no whole-section copy), after checking
    its checksum in a first pass, so FAISS never parses damaged bytes."""
    start, size = int(sec["offset"]), int(sec["nbytes"])
    f.seek(start)
    crc, left = 0, size
    while left:
        chunk = f.read(min(left, 1 << 22))
        if not chunk:
            raise ValueError(f"section {sec['name']} is truncated")
        crc = zlib.crc32(chunk, crc)
        left -= len(chunk)
    if crc != sec["crc"]:
        raise ValueError(f"section {sec['name']} fails its checksum")
    f.seek(start)
    remaining = [size]

    def source(n: int) -> bytes:
        chunk = f.read(min(n, remaining[0]))
        remaining[0] -= len(chunk)
        return chunk

    reader = faiss.PyCallbackIOReader(source)  # type: ignore[attr-defined]
    ivf = faiss.read_index(reader)
    del reader
    return ivf


def load(
    path: Path, expected: Stamp, *, background: bool = True
) -> tuple[ScopedIndex | None, Stamp | None, str]:
    """``(index, stamp, "")`` from the snapshot at ``path`` when it is intact and belongs to
    the store described by ``expected``; else ``(None, None, reason)``.  Never raises for a
    missing, foreign, stale or corrupt file."""
    if not path.exists():
        return None, None, "no snapshot"
    try:
        with open(path, "rb") as f:
            if f.read(len(MAGIC)) != MAGIC:
                return None, None, "not a semcache index snapshot"
            f.seek(-(8 + len(MAGIC)), os.SEEK_END)
            end = f.tell()
            (flen,) = struct.unpack("<Q", f.read(8))
            if f.read(len(MAGIC)) != MAGIC or flen > end:
                return None, None, "snapshot is truncated"
            f.seek(end - flen)
            doc = json.loads(f.read(flen))
            if doc.get("format") != _FORMAT:
                return None, None, f"snapshot format {doc.get('format')} is not {_FORMAT}"
            stamp = Stamp(**doc["stamp"])
            reason = stamp.same_store(expected)
            if reason:
                return None, None, f"snapshot {reason}"
            arrays: dict[str, np.ndarray] = {}
            ivfs: dict[int, Any] = {}
            for sec in doc["sections"]:
                if sec["kind"] == "array":
                    buf = _read_section(f, sec)
                    arrays[sec["name"]] = buf.view(np.dtype(sec["dtype"])).reshape(sec["shape"])
                else:
                    ivfs[int(sec["name"][3:])] = _read_faiss(f, sec)
        index = ScopedIndex.from_state(doc["index"], arrays, ivfs, background=background)
        if len(index) != stamp.count or index.dim != expected.dim:
            return None, None, "snapshot entry count does not match its stamp"
        return index, stamp, ""
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, struct.error) as exc:
        return None, None, f"snapshot unreadable: {exc}"
