"""Micro-benchmarks, native vs twin side by side (pytest-benchmark).

Run: ``.venv/bin/python -m pytest bench/bench_micro.py -q -p no:randomly
--benchmark-columns=median,ops --benchmark-group-by=group``

Each group holds the same operation on the native module and on its pure-Python twin
(``impl=native`` / ``impl=twin``); the ratio of their medians is the speed-up.  Chain scans
run over a float16 arena, as the index keeps it, and also on the native module's portable
float16 kernel (``impl=native-portable``, the one used on CPUs without F16C).  The
``scope-3-of-1M``-style group compares the design alternatives for a tiny scope inside a
big index (chain scan vs one global IVF searched with an ID selector).
"""

from __future__ import annotations

import importlib
from typing import Any

import faiss
import numpy as np
import pytest

from semcache import _pyevict, _pyselect

native_select = importlib.import_module("semcache._cselect")
native_evict = importlib.import_module("semcache._cevict")
SELECT = {"native": native_select, "twin": _pyselect}
EVICT = {"native": native_evict, "twin": _pyevict}
D = 384


def _unit(n: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, D)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture()
def portable_kernel(request: pytest.FixtureRequest) -> Any:
    """Switch the native float16 kernel to the portable one for ``native-portable``."""
    saved = native_select.half_kernel()
    if request.node.callspec.params.get("impl") == "native-portable":
        native_select.half_kernel("portable")
    yield
    native_select.half_kernel(saved)


@pytest.mark.parametrize("impl", ["native", "native-portable", "twin"])
@pytest.mark.parametrize("rows", [3, 256, 4096])
def test_chain_scan(benchmark: Any, impl: str, rows: int, portable_kernel: Any) -> None:
    benchmark.group = (f"select: exact scan of a {rows}-row scope chained in a float16 arena "
                       f"of 65536")
    cap = 65536
    vecs = _unit(cap).astype(np.float16)
    rng = np.random.default_rng(1)
    members = rng.choice(cap, size=rows, replace=False).astype(np.int32)
    nxt = np.full(cap, -1, dtype=np.int32)
    nxt[members[:-1]] = members[1:]
    expires = np.full(cap, np.inf)
    live = np.ones(cap, dtype=np.uint8)
    q = vecs[members[-1]].astype(np.float32)
    fn = SELECT[impl.split("-")[0]].best_in_chain
    row, _ = benchmark(fn, vecs, int(members[0]), nxt, q, expires, live, 0.0, 0.9)
    assert row == members[-1]


@pytest.mark.parametrize("impl", ["native", "twin"])
def test_best_of_candidates(benchmark: Any, impl: str) -> None:
    benchmark.group = "select: best of 64 IVF candidates"
    rng = np.random.default_rng(2)
    cap = 1 << 20
    rows = rng.integers(0, cap, 64).astype(np.int64)
    scores = np.sort(rng.uniform(0, 1, 64).astype(np.float32))[::-1].copy()
    expires = np.full(cap, np.inf)
    live = np.ones(cap, dtype=np.uint8)
    live[rows[:8]] = 0
    benchmark(SELECT[impl].best_of_candidates, scores, rows, expires, live, 0.0, 0.5)


def _tracker(impl: str, policy: str, n: int) -> Any:
    t = EVICT[impl].EvictionTracker(policy)
    for i in range(n):
        t.add(i, 200, float(i), i % 3 if policy == "lfu" else 0)
    return t


@pytest.mark.parametrize("impl", ["native", "twin"])
@pytest.mark.parametrize("policy", ["lru", "lfu"])
def test_touch(benchmark: Any, impl: str, policy: str) -> None:
    benchmark.group = f"evict: 1000 touches ({policy}, 100k entries)"
    t = _tracker(impl, policy, 100_000)
    ids = np.random.default_rng(3).integers(0, 100_000, 1000).tolist()

    def run() -> None:
        for i in ids:
            t.touch(i)

    benchmark(run)


@pytest.mark.parametrize("impl", ["native", "twin"])
@pytest.mark.parametrize("policy", ["lru", "lfu"])
def test_add_remove(benchmark: Any, impl: str, policy: str) -> None:
    benchmark.group = f"evict: 1000 add + remove ({policy}, 100k entries)"
    t = _tracker(impl, policy, 100_000)
    ids = list(range(200_000, 201_000))

    def run() -> None:
        for i in ids:
            t.add(i, 100, 1e12)
        for i in ids:
            t.remove(i)

    benchmark(run)


@pytest.mark.parametrize("impl", ["native", "twin"])
@pytest.mark.parametrize("policy", ["lru", "lfu"])
def test_victims(benchmark: Any, impl: str, policy: str) -> None:
    benchmark.group = f"evict: choose a batch of 1024 victims ({policy}, 100k entries)"
    t = _tracker(impl, policy, 100_000)
    out = benchmark(t.victims, 100_000 - 1024, 1 << 40)
    assert len(out) == 1024


@pytest.mark.parametrize("impl", ["native", "twin"])
def test_expired(benchmark: Any, impl: str) -> None:
    benchmark.group = "evict: report 1024 expired of 100k (then re-add them)"
    t = _tracker(impl, "lru", 100_000)

    def run() -> None:
        due = t.expired(1023.0)
        for i in due:
            t.add(i, 200, float(i))

    benchmark(run)


@pytest.fixture(scope="module")
def big_global() -> tuple[Any, np.ndarray]:
    """One global IVF over 200k vectors, where a 3-entry scope is mixed in."""
    x = _unit(200_000, seed=5)
    from semcache.index import _build_ivf

    ivf = _build_ivf(D, np.arange(len(x), dtype=np.int64), x)
    return ivf, x


@pytest.mark.parametrize("how", ["global-ivf-with-id-selector", "own-chain-scan"])
def test_tiny_scope_in_a_big_index(benchmark: Any, how: str, big_global: tuple[Any, np.ndarray]) -> None:
    benchmark.group = "design: search a 3-entry scope among 200k entries"
    ivf, x = big_global
    members = np.array([10, 50_000, 150_000], dtype=np.int64)
    rng = np.random.default_rng(6)
    q = x[150_000] + 0.5 / np.sqrt(D) * rng.standard_normal(D).astype(np.float32)
    q = (q / np.linalg.norm(q)).astype(np.float32)
    if how == "own-chain-scan":
        vecs = x[members].astype(np.float16)
        nxt = np.array([1, 2, -1], dtype=np.int32)
        res = benchmark(native_select.best_in_chain, vecs, 0, nxt, q, np.full(3, np.inf),
                        np.ones(3, np.uint8), 0.0, 0.8)
        assert res[0] == 2
        return
    sel = faiss.IDSelectorBatch(members)
    params = faiss.SearchParametersIVF(sel=sel, nprobe=64)
    _, ids = benchmark(ivf.search, q.reshape(1, -1), 1, params=params)
    # found only when the entry's list happens to be probed
    benchmark.extra_info["found"] = int(ids[0, 0] == 150_000)
