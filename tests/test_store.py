"""The LMDB store: crash safety, full store, vectors, formats."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from semcache import CacheRequest, SemanticCache, Settings, StoreError, StoreFullError
from semcache.store import EntryRecord, Store
from tests.conftest import ROOT, HashEmbedder, answer, chat


def record(i: int, size: int = 10) -> EntryRecord:
    return EntryRecord(scope=b"s" * 32, exact=i.to_bytes(32, "big"), namespace="anonymous",
                       endpoint="/v1/chat/completions", model="m", text=f"q{i}",
                       body=b"x" * size, usage=None, created=1.0, expires=None)


def test_sigkill_mid_write_loses_no_committed_entry(tmp_path: Path) -> None:
    data = tmp_path / "store"
    committed: dict[int, int] = {}  # question number -> entry id
    rng = random.Random(7)
    start = 0
    for _round in range(5):
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests._writer", str(data), str(start)], cwd=ROOT,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        want = rng.randint(5, 60)
        deadline = time.monotonic() + 120
        got = 0
        while got < want and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            i, entry = map(int, line.split())
            committed[i] = entry
            got += 1
        time.sleep(rng.uniform(0, 0.02))  # land the kill at a random point of a write
        proc.send_signal(signal.SIGKILL)
        rest, err = proc.communicate(timeout=30)
        for line in rest.splitlines():
            i, entry = map(int, line.split())
            committed[i] = entry
        assert got == want, err[-2000:]
        start = max(committed) + 1
    assert len(committed) >= 25
    with SemanticCache(Settings(data_dir=data), HashEmbedder()) as cache:
        for i, entry in committed.items():
            q = CacheRequest.from_body("/v1/chat/completions", chat(f"question number {i}"))
            exact = cache.lookup_exact(q)
            assert exact is not None and exact.entry_id == entry
            assert exact.json()["choices"][0]["message"]["content"].startswith(f"answer {i}")
            semantic = cache.lookup_semantic(q)
            assert semantic is not None and semantic.entry_id == entry
        # ids are never reused, every indexed entry has a record
        assert len(cache.index) == cache.store_db.count() >= len(committed)


def test_full_store_raises_and_keeps_what_was_committed(tmp_path: Path) -> None:
    store = Store(tmp_path / "s", embedder="e", dim=4, map_size=256 << 10, sync=False)
    ids = []
    with pytest.raises(StoreFullError) as info:
        for i in range(10_000):
            ids.append(store.put(record(i, 4096), np.ones(4, np.float32) / 2)[0])
    assert "map size" in str(info.value) and isinstance(info.value, StoreError)
    assert len(ids) > 5
    assert all(store.get(i) is not None for i in ids)
    store.delete(ids[:10])  # freeing space makes writes possible again
    store.put(record(99_999, 100), None)
    store.close()


def test_vector_dtype_and_shape_are_checked(tmp_path: Path) -> None:
    with Store(tmp_path / "s", embedder="e", dim=4) as store:
        with pytest.raises(StoreError, match="float32"):
            store.put(record(1), np.ones(4, np.float64))
        with pytest.raises(StoreError, match=r"\(4,\)"):
            store.put(record(1), np.ones(3, np.float32))


def test_closed_store_refuses_writes(tmp_path: Path) -> None:
    store = Store(tmp_path / "s", embedder="e", dim=4)
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.put(record(1), None)


def test_unreadable_path_is_a_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError, match=str(blocker)):
        Store(blocker / "sub", embedder="e", dim=4)


def test_hit_counts_persist(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "s", sync=False)
    with SemanticCache(settings, HashEmbedder()) as cache:
        q = CacheRequest.from_body("/v1/chat/completions", chat("hello"))
        entry = cache.store(q, answer("hi"))
        for _ in range(3):
            assert cache.lookup(q) is not None
    with Store(tmp_path / "s", embedder=HashEmbedder.name, dim=16) as store:
        meta = {i: m for i, m, _ in store.iter_index()}
        assert meta[entry].hits == 3


def test_data_dir_holds_only_the_store_and_the_index_snapshot(tmp_path: Path) -> None:
    with SemanticCache(Settings(data_dir=tmp_path / "s"), HashEmbedder()) as cache:
        cache.store(CacheRequest.from_body("/v1/chat/completions", chat("hello")), answer("hi"))
    assert sorted(os.listdir(tmp_path / "s")) == ["data.mdb", "index.snapshot", "lock.mdb"]
    off = Settings(data_dir=tmp_path / "t", snapshot_interval=None)
    with SemanticCache(off, HashEmbedder()) as cache:
        cache.store(CacheRequest.from_body("/v1/chat/completions", chat("hello")), answer("hi"))
    assert sorted(os.listdir(tmp_path / "t")) == ["data.mdb", "lock.mdb"]


def test_the_recorded_embedder_is_read_without_creating_anything(tmp_path: Path) -> None:
    assert Store.recorded_embedder(tmp_path / "nowhere") is None
    assert not (tmp_path / "nowhere").exists()
    with Store(tmp_path / "s", embedder="some-model@onnx-int8", dim=4):
        pass
    assert Store.recorded_embedder(tmp_path / "s") == "some-model@onnx-int8"
    with Store(tmp_path / "s", embedder="some-model@onnx-int8", dim=4):  # still opens
        pass
