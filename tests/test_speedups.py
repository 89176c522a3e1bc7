"""The native/twin switch, and native and twin agreeing on randomized inputs."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from semcache import _pyselect, _speedups


def test_switch_matches_the_environment() -> None:
    if os.environ.get("SEMCACHE_NO_EXTENSIONS") == "1":
        assert not _speedups.NATIVE and _speedups.select is _pyselect
    elif os.environ.get("SEMCACHE_REQUIRE_EXTENSIONS") == "1":
        assert _speedups.NATIVE and _speedups.select.__name__ == "semcache._cselect"


def test_required_but_missing_native_module_is_an_error() -> None:
    code = "import sys; sys.modules['semcache._cselect'] = None; import semcache._speedups"
    env = {**os.environ, "SEMCACHE_REQUIRE_EXTENSIONS": "1", "SEMCACHE_NO_EXTENSIONS": "0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode != 0 and "SEMCACHE_REQUIRE_EXTENSIONS=1" in out.stderr


def _native():  # type: ignore[no-untyped-def]
    import importlib

    try:
        return importlib.import_module("semcache._cselect")
    except ImportError:
        if os.environ.get("SEMCACHE_NO_EXTENSIONS") == "1":
            return None
        raise


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 30), st.floats(-1.0, 1.0))
def test_native_and_twin_agree_on_candidates(seed: int, k: int, threshold: float) -> None:
    native = _native()
    if native is None:
        pytest.skip("semcache._cselect is not built; nothing native to compare")
    rng = np.random.default_rng(seed)
    cap = 40
    rows = rng.integers(-1, cap, size=k).astype(np.int64)
    scores = np.sort(rng.uniform(-1, 1, size=k).astype(np.float32))[::-1].copy()
    expires = rng.choice([0.5, np.inf], size=cap)
    live = rng.integers(0, 2, size=cap).astype(np.uint8)
    a = native.best_of_candidates(scores, rows, expires, live, 1.0, threshold)
    b = _pyselect.best_of_candidates(scores, rows, expires, live, 1.0, threshold)
    assert a == b


def _half_kernels(native) -> list[str]:  # type: ignore[no-untyped-def]
    """The native module's float16 kernels this CPU can run (F16C and the portable one)."""
    current = native.half_kernel()
    return sorted({current, "portable"})


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 30), st.integers(1, 40),
       st.floats(-1.0, 1.0), st.floats(0.0, 2.0), st.sampled_from([np.float16, np.float32]))
def test_native_and_twin_agree_on_chain_scans(
    seed: int, members: int, d: int, threshold: float, now: float, dtype: type
) -> None:
    """Both scan float16 (the arena) and float32 rows; d up to 40 runs the F16C kernel's
    wide loop, its 8-wide loop and its scalar tail."""
    native = _native()
    if native is None:
        pytest.skip("semcache._cselect is not built; nothing native to compare")
    rng = np.random.default_rng(seed)
    cap = members + int(rng.integers(0, 6))
    vecs = rng.standard_normal((cap, d)).astype(dtype)
    chain = rng.permutation(cap)[:members].astype(np.int32)
    nxt = np.full(cap, -1, dtype=np.int32)
    if members:
        nxt[chain[:-1]] = chain[1:]
    head = int(chain[0]) if members else -1
    q = rng.standard_normal(d).astype(np.float32)
    expires = rng.choice([0.5, 1.5, np.inf], size=cap)
    live = rng.integers(0, 2, size=cap).astype(np.uint8)
    exact = vecs.astype(np.float64) @ q.astype(np.float64)  # the rows' exact values
    b = _pyselect.best_in_chain(vecs, head, nxt, q, expires, live, now, threshold)
    kernels = _half_kernels(native) if dtype is np.float16 else [native.half_kernel()]
    saved = native.half_kernel()
    try:
        for kernel in kernels:
            native.half_kernel(kernel)
            a = native.best_in_chain(vecs, head, nxt, q, expires, live, now, threshold)
            assert (a[0] >= 0) == (b[0] >= 0) or abs(a[1] - threshold) < 1e-4
            assert a[1] == b[1] or abs(a[1] - b[1]) < 1e-4
            if a[0] >= 0 and b[0] >= 0 and a[0] != b[0]:  # only a float tie may pick another row
                assert abs(exact[a[0]] - exact[b[0]]) < 1e-4
            if a[0] >= 0:  # float32 arithmetic from the row's exact widened value
                assert abs(a[1] - exact[a[0]]) < 1e-4
    finally:
        native.half_kernel(saved)
    if members:
        nxt[chain[-1]] = chain[0]  # a cycle is refused, not looped over
        with pytest.raises(ValueError, match="cycle"):
            native.best_in_chain(vecs, head, nxt, q, expires, live, now, threshold)
        with pytest.raises(ValueError, match="cycle"):
            _pyselect.best_in_chain(vecs, head, nxt, q, expires, live, now, threshold)


def test_native_widens_every_float16_exactly() -> None:
    """The portable kernel's bit-level conversion gives numpy's float32 for all 65,536
    half values (zeros, subnormals, normals, infinities, NaN payloads), and a scan's score
    of a one-hot query is the row's component, on every kernel."""
    native = _native()
    if native is None:
        pytest.skip("semcache._cselect is not built; nothing native to compare")
    bits = np.arange(1 << 16, dtype=np.uint16)
    out = np.empty(len(bits), dtype=np.float32)
    native.half_to_float(bits, out)
    assert np.array_equal(out.view(np.uint32), bits.view(np.float16).astype(np.float32).view(np.uint32))
    finite = bits[np.isfinite(bits.view(np.float16))]
    rows = finite.view(np.float16).reshape(-1, 1)
    nxt = np.full(len(rows), -1, dtype=np.int32)
    expires, live = np.full(len(rows), np.inf), np.ones(len(rows), np.uint8)
    saved = native.half_kernel()
    try:
        for kernel in _half_kernels(native):
            native.half_kernel(kernel)
            # +0, subnormals, the smallest normal, 1.0, the largest, -0, -subnormal, -largest
            for i in (0, 1, 1023, 1024, 15360, 31743, 31744, 31745, len(rows) - 1):
                row, score = native.best_in_chain(rows, i, nxt, np.ones(1, np.float32),
                                                  expires, live, 0.0, -np.inf)
                assert row == i and score == float(rows[i, 0])
    finally:
        native.half_kernel(saved)
    with pytest.raises(ValueError, match="portable"):
        native.half_kernel("avx9000")


@pytest.mark.parametrize("bad", [np.zeros((4, 8)), np.zeros((4, 16), np.float32)[:, ::2],
                                 np.zeros(8, np.float32), [[0.0] * 8] * 4,
                                 np.zeros((4, 8), ">f2")])
def test_chain_scans_refuse_rows_of_another_dtype_or_layout(bad: object) -> None:
    args = (0, np.full(4, -1, np.int32), np.zeros(8, np.float32), np.full(4, np.inf),
            np.ones(4, np.uint8), 0.0, 0.0)
    impls = [_pyselect] + ([native] if (native := _native()) is not None else [])
    for impl in impls:
        with pytest.raises(ValueError, match="float16 or float32"):
            impl.best_in_chain(bad, *args)


op = st.one_of(
    st.tuples(st.just("add"), st.integers(1, 30), st.integers(0, 500),
              st.one_of(st.none(), st.integers(0, 60).map(float)), st.sampled_from([0, 0, 1, 4])),
    st.tuples(st.just("touch"), st.integers(1, 30)),
    st.tuples(st.just("remove"), st.integers(1, 30)),
    st.tuples(st.just("victims"), st.integers(0, 30), st.integers(0, 8000), st.integers(0, 600)),
    st.tuples(st.just("expired"), st.integers(0, 70).map(float), st.integers(1, 6)),
)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["lru", "lfu"]), st.lists(op, max_size=120))
def test_native_and_twin_trackers_agree(policy: str, ops: list[tuple]) -> None:  # type: ignore[type-arg]
    try:
        from semcache import _cevict as native
    except ImportError:
        if os.environ.get("SEMCACHE_NO_EXTENSIONS") == "1":
            pytest.skip("semcache._cevict is not built; nothing native to compare")
        raise
    from semcache import _pyevict

    a, b = native.EvictionTracker(policy), _pyevict.EvictionTracker(policy)
    for name, *args in ops:
        ra, rb = getattr(a, name)(*args), getattr(b, name)(*args)
        assert ra == rb, (name, args)
        assert len(a) == len(b) and a.total_bytes == b.total_bytes
    assert [i in a for i in range(32)] == [i in b for i in range(32)]
    assert a.victims(0, 0) == b.victims(0, 0)  # the whole eviction order
    rows = [(i, 10 * i, float("inf") if i % 3 else float(i), i % 4) for i in range(1, 40, 3)]
    cols = [np.array(c, dtype=t) for c, t in zip(zip(*rows, strict=True),
                                                 (np.int64, np.int64, np.float64, np.int64),
                                                 strict=True)]
    a.add_many(*cols)
    b.add_many(*cols)
    assert a.victims(0, 0) == b.victims(0, 0) and a.expired(100.0) == b.expired(100.0)


def _native_evict():  # type: ignore[no-untyped-def]
    try:
        from semcache import _cevict
    except ImportError:
        if os.environ.get("SEMCACHE_NO_EXTENSIONS") == "1":
            pytest.skip("semcache._cevict is not built; nothing native to compare")
        raise
    return _cevict


_M64 = (1 << 64) - 1
_PHI_INV = pow(0x9E3779B97F4A7C15, -1, 1 << 64)


def _signed(x: int) -> int:
    x &= _M64
    return x - (1 << 64) if x >> 63 else x


def _same_home(k: int, top: bool) -> int:
    """An id whose native hash is ``k`` (``top``: ``2**64 - 1 - k``): for ``k`` below
    ``2**40`` all such ids share the first (last) bucket of every table up to 2**24
    buckets, so their probe runs are long and wrap around the table's end."""
    z = ((_M64 - k if top else k) * _PHI_INV) & _M64
    return _signed(z ^ (z >> 32))


# ids the tracker's hash table must tell apart: int64 extremes, negatives, ids equal in
# their low (or high) bits, and ids built to share a home bucket
_TRACKER_IDS = sorted({
    -(2**63), -(2**63) + 1, 2**63 - 1, 2**63 - 2, -1, 0, 1,
    *range(2, 40), *(-k for k in range(2, 20)),
    *(k << 32 for k in range(1, 40)), *(_signed(k << 56) for k in range(1, 40)),
    *(k * ((1 << 32) + 1) for k in range(1, 20)),
    *(_same_home(k, top) for k in range(40) for top in (False, True)),
})

tracker_op = st.one_of(
    st.tuples(st.just("add"), st.sampled_from(_TRACKER_IDS), st.integers(0, 500),
              st.one_of(st.none(), st.integers(0, 60).map(float)), st.sampled_from([0, 0, 1, 4])),
    st.tuples(st.just("touch"), st.sampled_from(_TRACKER_IDS)),
    st.tuples(st.just("remove"), st.sampled_from(_TRACKER_IDS)),
    # many adds or removes in a row: the table grows across resizes, then empties
    st.tuples(st.just("add_run"), st.integers(0, len(_TRACKER_IDS) - 1), st.integers(1, 200)),
    st.tuples(st.just("remove_run"), st.integers(0, len(_TRACKER_IDS) - 1), st.integers(1, 200)),
    st.tuples(st.just("victims"), st.integers(0, 300), st.integers(0, 40000), st.integers(0, 600)),
    st.tuples(st.just("expired"), st.integers(0, 70).map(float), st.integers(1, 50)),
)


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(["lru", "lfu"]), st.lists(tracker_op, max_size=150))
def test_native_and_twin_trackers_agree_on_hard_ids(policy: str, ops: list[tuple]) -> None:  # type: ignore[type-arg]
    """The native id -> slot hash table: any int64 id, colliding ids, removes amid probe
    runs, re-adds, growth and churn; checked against the twin after every call."""
    native = _native_evict()
    from semcache import _pyevict

    a, b = native.EvictionTracker(policy), _pyevict.EvictionTracker(policy)
    for name, *args in ops:
        if name in ("add_run", "remove_run"):
            start, n = args
            run = (_TRACKER_IDS * 2)[start:start + n]
            for i, entry_id in enumerate(run):
                if name == "add_run":
                    a.add(entry_id, i, float(i % 50) if i % 3 else None)
                    b.add(entry_id, i, float(i % 50) if i % 3 else None)
                else:
                    a.remove(entry_id)
                    b.remove(entry_id)
        else:
            ra, rb = getattr(a, name)(*args), getattr(b, name)(*args)
            assert ra == rb, (name, args)
        assert len(a) == len(b) and a.total_bytes == b.total_bytes
    assert [i in a for i in _TRACKER_IDS] == [i in b for i in _TRACKER_IDS]
    assert a.victims(0, 0) == b.victims(0, 0)
    assert a.expired(float("inf"), 10**6) == b.expired(float("inf"), 10**6)


@pytest.mark.parametrize("policy", ["lru", "lfu"])
@pytest.mark.parametrize("pattern", ["sequential", "low-bits-equal", "random-int64"])
def test_native_and_twin_trackers_agree_under_churn(policy: str, pattern: str) -> None:
    """Thousands of adds across many resizes, most removed in random order, some re-added,
    touched, and unknown ids touched and removed: the same state as the twin's."""
    native = _native_evict()
    from semcache import _pyevict

    rng = np.random.default_rng(7)
    n = 6000
    ids = {"sequential": list(range(n)),
           "low-bits-equal": [_signed((k << 40) | 12345) for k in range(n)],
           "random-int64": [int(x) for x in rng.integers(-(2**63), 2**63 - 1, n, dtype=np.int64)]}[pattern]
    a, b = native.EvictionTracker(policy), _pyevict.EvictionTracker(policy)
    for i, entry_id in enumerate(ids):
        for t in (a, b):
            t.add(entry_id, i % 97, float(i % 300) if i % 4 else None, i % 3)
    order = rng.permutation(n)
    for j in order[: n * 9 // 10]:
        for t in (a, b):
            t.remove(ids[j])
            t.remove(ids[j])  # already gone: ignored
    for j in order[: n // 3]:
        for t in (a, b):
            t.add(ids[j], 7, None if j % 2 else 1000.0)
            t.add(ids[j], 5, float(j % 200))  # re-adding replaces
    for j in rng.integers(0, n, 4000):
        for t in (a, b):
            t.touch(ids[j])
            t.touch(ids[j] ^ (1 << 62))  # unknown: ignored
    assert len(a) == len(b) and a.total_bytes == b.total_bytes
    assert [i in a for i in ids] == [i in b for i in ids]
    assert a.victims(0, 0) == b.victims(0, 0)
    assert a.expired(150.0, 500) == b.expired(150.0, 500)
    assert a.expired(1e9, 10**6) == b.expired(1e9, 10**6)
