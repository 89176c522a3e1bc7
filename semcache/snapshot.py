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

The temp file is ``.index.snapshot.<pid>.<n>.tmp`` beside the snapshot (``n`` counts this
process's writes).  A writer killed mid-write leaves it behind; :func:`load` (the cache
calls it at open when snapshots are on) and :func:`write` remove such leftovers
(:func:`remove_stale_temps`): only files of that exact name pattern, and only when the
writing process is gone (or is this process, which is not writing it).

:func:`load` never raises for a bad file: it returns ``(None, reason)`` and the caller
rebuilds from the store.  :func:`write` raises :class:`~semcache.errors.StoreError` when
the file cannot be written; the caller decides whether that matters (the cache logs it).
Thread affinity: :func:`write` holds the index's mutation lock while it copies the index
(searches go on); call it from a worker thread, never the event loop.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import struct
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, cast

import faiss
import numpy as np

from .errors import StoreError
from .index import ScopedIndex

__all__ = ["Stamp", "write", "load", "remove_stale_temps", "FILENAME"]

FILENAME = "index.snapshot"
MAGIC = b"SEMCACHE-IDX-v1\n"
_FORMAT = 2  # 1: float32 arena; 2: float16 arena
_STALE_AGE = 86400.0  # s: a temp file of a live pid this old is a leftover (pid reused)
_writing: set[Path] = set()  # temp files this process is writing now
_writing_lock = threading.Lock()  # guards _writing; held while a temp file is judged stale
_writes = itertools.count()


def _temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{next(_writes)}.tmp")


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    except OverflowError:
        return False  # not a pid
    return True


def remove_stale_temps(path: Path) -> list[Path]:
    """Delete the temp files that writers of the snapshot ``path`` killed mid-write left
    beside it; returns them.  Only names ``.{path.name}.<pid>[.<n>].tmp`` are considered
    (earlier versions wrote the form without ``.<n>``).  One is stale when that process
    is gone, when it is this process and no write of ours uses it (a restart that got the
    same pid, as in a container), or when it is older than a day (the pid was reused).
    Never raises (a file that cannot be removed stays)."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(\d+)(?:\.\d+)?\.tmp")
    removed: list[Path] = []
    try:
        names = os.listdir(path.parent)
    except OSError:
        return removed
    now = time.time()
    for name in names:
        m = pattern.fullmatch(name)
        if m is None:
            continue
        tmp = path.with_name(name)
        pid = int(m.group(1))
        with _writing_lock:  # so a write of ours cannot start on it meanwhile
            if tmp in _writing:
                continue
            try:
                if (pid != os.getpid() and _pid_alive(pid)
                        and now - tmp.stat().st_mtime < _STALE_AGE):
                    continue
                tmp.unlink()
            except OSError:
                continue
        removed.append(tmp)
    return removed


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
    in bytes.  The caller keeps the store's writers out (so ``stamp.last_id`` is exact).
    Stale temp files of killed writers are removed first; this write's temp file is
    removed whatever goes wrong."""
    remove_stale_temps(path)
    tmp = _temp_path(path)
    with _writing_lock:
        _writing.add(tmp)
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
        raise StoreError(f"cannot write index snapshot {path}: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)  # gone already after the rename
        with _writing_lock:
            _writing.discard(tmp)


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
    missing, foreign, stale or corrupt file.  Removes the temp files of writers killed
    mid-write first (:func:`remove_stale_temps`)."""
    remove_stale_temps(path)
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
