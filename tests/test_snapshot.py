"""Index snapshots: used when they match the store, replayed forward, never trusted blindly."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from semcache import CacheRequest, SemanticCache, Settings, snapshot
from semcache.index import ScopedIndex
from semcache.snapshot import Stamp, load
from tests.conftest import ROOT, HashEmbedder, answer, chat

CHAT = "/v1/chat/completions"


def req(text: str) -> CacheRequest:
    return CacheRequest.from_body(CHAT, chat(text))


def settings(data: Path, **kw: object) -> Settings:
    return Settings(data_dir=data, sync=False, flat_limit=8, **kw)  # type: ignore[arg-type]


def fill(cache: SemanticCache, start: int, stop: int) -> dict[int, int]:
    return {i: cache.store(req(f"question number {i}"), answer(f"answer {i}")) for i in range(start, stop)}


def all_found(cache: SemanticCache, ids: dict[int, int]) -> bool:
    for i, entry in ids.items():
        hit = cache.lookup_semantic(req(f"question number {i}"))
        if hit is None or hit.entry_id != entry:
            return False
    return True


def test_restart_loads_the_snapshot_and_replays_later_entries(tmp_path: Path) -> None:
    data = tmp_path / "s"
    with SemanticCache(settings(data), HashEmbedder()) as cache:
        ids = fill(cache, 0, 40)
        assert cache.index.kind(req("x").scope) == "ivf"
    with SemanticCache(settings(data, snapshot_interval=None), HashEmbedder()) as cache:
        assert cache.index_source == "store"  # snapshots off: never read
        ids |= fill(cache, 40, 50)  # written after the snapshot, which is not rewritten
        assert cache.delete(ids.pop(3))
    with SemanticCache(settings(data), HashEmbedder()) as cache:
        assert cache.index_source == "snapshot+10"
        assert len(cache.index) == len(ids) == len(cache.tracker) == cache.store_db.count()
        assert all_found(cache, ids)


def test_snapshot_of_another_store_or_damaged_is_rebuilt(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    with SemanticCache(settings(a), HashEmbedder()) as cache:
        ids = fill(cache, 0, 20)
    with SemanticCache(settings(b), HashEmbedder()) as cache:
        fill(cache, 100, 130)
    snap = (b / "index.snapshot").read_bytes()
    (a / "index.snapshot").write_bytes(snap)  # another store's snapshot
    with SemanticCache(settings(a), HashEmbedder()) as cache:
        assert cache.index_source == "store" and all_found(cache, ids)
    raw = bytearray((a / "index.snapshot").read_bytes())
    raw[len(raw) // 3] ^= 0xFF  # one flipped byte
    (a / "index.snapshot").write_bytes(bytes(raw))
    with SemanticCache(settings(a), HashEmbedder()) as cache:
        assert cache.index_source == "store" and all_found(cache, ids)
    (a / "index.snapshot").write_bytes(b"garbage")
    with SemanticCache(settings(a), HashEmbedder()) as cache:
        assert cache.index_source == "store" and all_found(cache, ids)


def test_snapshot_missing_entries_or_from_the_future_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "s"
    with SemanticCache(settings(data), HashEmbedder()) as cache:
        ids = fill(cache, 0, 12)
        stamp = cache._stamp()
    path = data / "index.snapshot"
    future = Stamp(stamp.embedder, stamp.dim, stamp.salt, stamp.last_id - 1)
    index, _, reason = load(path, future)
    assert index is None and "newer than the store" in reason
    other = Stamp("another-model", stamp.dim, stamp.salt, stamp.last_id)
    assert load(path, other)[0] is None
    # a second process wrote entries the snapshot does not know, then the snapshot was
    # restored from an older copy: the ids below its last id it lacks make it untrusted
    old = path.read_bytes()
    with SemanticCache(settings(data), HashEmbedder()) as cache:
        ids |= fill(cache, 12, 20)
        cache.write_snapshot()
    stale = path.read_bytes()
    with SemanticCache(settings(data), HashEmbedder()) as cache:
        fill(cache, 20, 25)
    path.write_bytes(old)
    with SemanticCache(settings(data), HashEmbedder()) as cache:
        assert cache.index_source.startswith("snapshot")  # older but consistent: replayed
    assert stale != old


def test_snapshot_and_later_writes_survive_sigkill(tmp_path: Path) -> None:
    data = tmp_path / "store"
    with SemanticCache(Settings(data_dir=data, flat_limit=8), HashEmbedder()) as cache:
        committed = {f"question number {i}": e for i, e in fill(cache, 1000, 1030).items()}
    assert (data / "index.snapshot").exists()
    proc = subprocess.Popen([sys.executable, "-m", "tests._writer", str(data), "0"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + 120
    while len(committed) < 30 + 25 and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        i, entry = map(int, line.split())
        committed[f"question number {i}"] = entry
    proc.send_signal(signal.SIGKILL)
    rest, err = proc.communicate(timeout=30)
    for line in rest.splitlines():
        i, entry = map(int, line.split())
        committed[f"question number {i}"] = entry
    assert len(committed) >= 55, err[-2000:]
    with SemanticCache(Settings(data_dir=data, flat_limit=8), HashEmbedder()) as cache:
        assert cache.index_source.startswith("snapshot+")
        for text, entry in committed.items():
            hit = cache.lookup_semantic(req(text))
            assert hit is not None and hit.entry_id == entry
        assert len(cache.index) == cache.store_db.count()
        assert np.all(np.isin(list(committed.values()), cache.index.ids()))


def test_sweep_writes_a_snapshot_once_the_interval_has_passed(tmp_path: Path) -> None:
    from tests.conftest import Clock

    clock = Clock()
    data = tmp_path / "s"
    cache = SemanticCache(settings(data, snapshot_interval=60.0, ttl=30.0), HashEmbedder(),
                          clock=clock)
    try:
        fill(cache, 0, 5)
        cache.sweep()
        assert not (data / "index.snapshot").exists()
        clock.now += 61
        assert cache.sweep() == 5  # expired, removed, then the snapshot is taken
        assert (data / "index.snapshot").exists() and len(cache.index) == 0
    finally:
        cache.close()


def test_a_snapshot_with_a_float32_arena_is_rebuilt_not_misread(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A format-1 file (written before the arena held float16: float32 rows, no dtype in
    its metadata) is refused by its format; a file that claims format 2 but carries float32
    rows is refused by the index.  Either way the index comes from the store."""
    data = tmp_path / "s"
    real = ScopedIndex.export_state

    def old_layout(self: ScopedIndex) -> Any:
        meta, arrays, ivfs = real(self)
        meta = {k: v for k, v in meta.items() if k != "arena_dtype"}
        return meta, {**arrays, "arena.vecs": arrays["arena.vecs"].astype(np.float32)}, ivfs

    monkeypatch.setattr(ScopedIndex, "export_state", old_layout)
    for fmt, why in ((1, "snapshot format 1 is not 2"), (2, "not float16")):
        monkeypatch.setattr(snapshot, "_FORMAT", fmt)
        with SemanticCache(settings(data), HashEmbedder()) as cache:  # small scopes only
            ids = {i: cache.store(CacheRequest.from_body(CHAT, chat(f"q {i}", system=f"conversation {i}")),
                                  answer(f"a {i}")) for i in range(20)}
            stamp = cache._stamp()
        monkeypatch.setattr(snapshot, "_FORMAT", 2)
        index, _, reason = load(data / "index.snapshot", stamp)
        assert index is None and why in reason
        with SemanticCache(settings(data), HashEmbedder()) as cache:
            assert cache.index_source == "store"
            for i, entry in ids.items():
                hit = cache.lookup_semantic(CacheRequest.from_body(CHAT, chat(f"q {i}", system=f"conversation {i}")))
                assert hit is not None and hit.entry_id == entry and hit.similarity >= 0.999
        shutil.rmtree(data)


_KILLED_WRITER = """
import os, signal, sys
from semcache import SemanticCache, Settings, snapshot
from tests.conftest import HashEmbedder

real = snapshot._write_array
def dying(f, name, arr):
    out = real(f, name, arr)
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)  # mid-write: sections out, no footer, no rename
    return out
snapshot._write_array = dying
cache = SemanticCache(Settings(data_dir=sys.argv[1], sync=False, flat_limit=8), HashEmbedder())
cache.write_snapshot()
"""


def test_temp_files_of_writers_killed_mid_write_are_removed_at_open(tmp_path: Path) -> None:
    data = tmp_path / "s"
    with SemanticCache(settings(data), HashEmbedder()) as cache:
        ids = fill(cache, 0, 30)
    good = (data / "index.snapshot").read_bytes()
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(data)], cwd=ROOT,
                            stderr=subprocess.PIPE, text=True)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, err[-2000:]
    left = sorted(p.name for p in data.glob(".index.snapshot.*.tmp"))
    assert left == [f".index.snapshot.{proc.pid}.0.tmp"]
    assert (data / left[0]).stat().st_size > 0 and (data / "index.snapshot").read_bytes() == good
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        keep = [f".index.snapshot.{sleeper.pid}.0.tmp",  # a live writer's: not ours to take
                ".index.snapshot.tmp", ".index.snapshot.x.tmp", "index.snapshot.1.tmp",
                ".other.snapshot.1.tmp"]  # not the pattern
        stale = [f".index.snapshot.{os.getpid()}.7.tmp",  # this process's pid, not writing it
                 f".index.snapshot.{proc.pid}.tmp"]  # the older name form, a dead pid
        for name in keep + stale:
            (data / name).write_bytes(b"partial")
        with SemanticCache(settings(data), HashEmbedder()) as cache:
            assert cache.index_source == "snapshot+0" and all_found(cache, ids)
            names = {p.name for p in data.iterdir()}
            assert not names & {*left, *stale} and set(keep) <= names
        assert {p.name for p in data.iterdir()} >= set(keep)  # writing at close removed none
        old = data / keep[0]
        os.utime(old, (time.time() - 2 * 86400, time.time() - 2 * 86400))
        assert snapshot.remove_stale_temps(data / "index.snapshot") == [old]  # pid reused
    finally:
        sleeper.kill()
        sleeper.wait()


def test_stale_temp_files_are_removed_at_open_with_snapshots_off(tmp_path: Path) -> None:
    data = tmp_path / "s"
    with SemanticCache(settings(data), HashEmbedder()) as cache:
        fill(cache, 0, 3)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = data / f".index.snapshot.{dead.pid}.0.tmp"
    stale.write_bytes(b"partial")
    with SemanticCache(settings(data).replace(snapshot_interval=None), HashEmbedder()) as cache:
        assert cache.index_source == "store" and not stale.exists()
