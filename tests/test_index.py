"""The scoped index on its own: partitioning, removal, compaction, checks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st

from semcache.index import ScopedIndex, VectorError


def unit(rng: np.random.Generator, d: int = 8) -> np.ndarray:
    v = rng.standard_normal(d).astype(np.float32)
    return v / np.linalg.norm(v)


@pytest.mark.parametrize("flat_limit", [1000, 2])
def test_search_never_leaves_its_scope(flat_limit: int) -> None:
    rng = np.random.default_rng(0)
    idx = ScopedIndex(8, flat_limit=flat_limit)
    v = unit(rng)
    idx.add(b"A", 1, v, None)
    for i in range(2, 20):
        idx.add(b"B", i, unit(rng), None)
    assert idx.search(b"A", v, 0.99, 0.0).entry_id == 1
    assert idx.search(b"B", v, 0.99, 0.0).entry_id == -1
    assert idx.search(b"C", v, 0.0, 0.0).entry_id == -1


@pytest.mark.parametrize("flat_limit", [1000, 4])
def test_removed_and_expired_rows_are_skipped_and_scopes_shrink(flat_limit: int) -> None:
    rng = np.random.default_rng(1)
    idx = ScopedIndex(8, flat_limit=flat_limit, background=False)
    vecs = {i: unit(rng) for i in range(1, 41)}
    for i, v in vecs.items():
        idx.add(b"S", i, v, 100.0 if i % 2 else None)
    assert idx.kind(b"S") == ("flat" if flat_limit > 40 else "ivf")
    assert idx.search(b"S", vecs[3], 0.99, 50.0).entry_id == 3
    assert idx.search(b"S", vecs[3], 0.99, 150.0).entry_id == -1  # expired
    for i in range(1, 31):
        assert idx.remove(i)
    assert not idx.remove(1)
    assert len(idx) == 10 and idx.scope_size(b"S") == 10
    for i in range(31, 41):
        assert idx.search(b"S", vecs[i], 0.99, 0.0).entry_id == i
    for i in range(31, 39):
        idx.remove(i)
    assert idx.kind(b"S") == "flat"  # a large scope that shrank moved back to the exact scan
    assert idx.search(b"S", vecs[39], 0.99, 0.0).entry_id == 39
    for i in range(39, 41):
        idx.remove(i)
    assert idx.scopes == 0 and idx.kind(b"S") is None


def test_ivf_scope_keeps_searching_past_dead_top_candidates() -> None:
    rng = np.random.default_rng(2)
    idx = ScopedIndex(8, flat_limit=2, background=False)
    q = unit(rng)
    for i in range(1, 200):  # near-copies of q, most to be removed
        idx.add(b"S", i, q, None)
    target = (q + 0.05 * unit(rng)).astype(np.float32)
    target /= np.linalg.norm(target)
    idx.add(b"S", 1000, target, None)
    for i in range(1, 150):  # fewer than a batch: dead rows stay inside the IVF for now
        idx.remove(i)
    for i in range(150, 200):
        idx.add(b"S", i, q, 1.0)  # re-added, already expired at now=5
    assert idx.kind(b"S") == "ivf"
    hit = idx.search(b"S", q, 0.9, 5.0)
    assert hit.entry_id == 1000


def test_vectors_are_checked() -> None:
    idx = ScopedIndex(8)
    with pytest.raises(VectorError, match="float32"):
        idx.add(b"S", 1, np.ones(8), None)
    with pytest.raises(VectorError, match=r"\(8,\)"):
        idx.add(b"S", 1, np.ones(4, np.float32), None)
    with pytest.raises(VectorError, match="NaN"):
        idx.search(b"S", np.full(8, np.nan, np.float32), 0.5, 0.0)


def test_readding_an_id_replaces_it() -> None:
    rng = np.random.default_rng(3)
    idx = ScopedIndex(8)
    a, b = unit(rng), unit(rng)
    idx.add(b"S", 1, a, None)
    idx.add(b"T", 1, b, None)
    assert len(idx) == 1
    assert idx.search(b"S", a, 0.5, 0.0).entry_id == -1
    assert idx.search(b"T", b, 0.99, 0.0).entry_id == 1


index_op = st.one_of(
    st.tuples(st.just("add"), st.integers(0, 2), st.integers(1, 80),
              st.one_of(st.none(), st.just(5.0))),
    st.tuples(st.just("remove"), st.integers(1, 80)),
    st.tuples(st.just("search"), st.integers(0, 3), st.integers(1, 80)),
)


@hyp_settings(max_examples=40, deadline=None)
@given(st.lists(index_op, max_size=150), st.integers(0, 2**32 - 1))
def test_index_matches_a_brute_force_model(ops: list[tuple], seed: int) -> None:  # type: ignore[type-arg]
    """Random adds/removes/searches across scopes (flat_limit=6 so scopes move between the
    exact scan and the IVF, retrain and batch their removals) against a dict model."""
    rng = np.random.default_rng(seed)
    vec_of = {i: unit(rng) for i in range(1, 81)}
    idx = ScopedIndex(8, flat_limit=6, background=False)
    model: dict[int, tuple[bytes, float | None]] = {}
    for name, *args in ops:
        if name == "add":
            s, i, exp = args
            idx.add(bytes([s]), i, vec_of[i], exp)
            model[i] = (bytes([s]), exp)
        elif name == "remove":
            (i,) = args
            assert idx.remove(i) == (i in model)
            model.pop(i, None)
        else:
            s, i = args
            hit = idx.search(bytes([s]), vec_of[i], 0.999, 10.0)
            want = i if model.get(i, (b"", None)) == (bytes([s]), None) else -1
            assert hit.entry_id == want
        assert len(idx) == len(model)
        assert sorted(idx.ids().tolist()) == sorted(model)
        for s in range(4):
            assert idx.scope_size(bytes([s])) == sum(v[0] == bytes([s]) for v in model.values())
    state = idx.export_state()
    again = ScopedIndex.from_state(*state, background=False)
    for i, (s, exp) in model.items():
        assert again.expires_of(i) == exp
        assert again.search(s, vec_of[i], 0.999, 0.0).entry_id == i


def test_bulk_load_builds_one_ivf_and_finds_everything() -> None:
    rng = np.random.default_rng(4)
    n = 3000
    vecs = np.stack([unit(rng) for _ in range(n)])
    scopes = [b"big" if i % 10 else bytes([i % 7]) for i in range(n)]
    idx = ScopedIndex(8, flat_limit=100)
    idx.add_many(scopes, np.arange(1, n + 1), vecs, np.full(n, np.inf))
    assert idx.kind(b"big") == "ivf" and idx.kind(bytes([0])) == "flat" and len(idx) == n
    found = sum(idx.search(scopes[i], vecs[i], 0.999, 0.0).entry_id == i + 1 for i in range(n))
    assert found >= 0.99 * n


def test_growing_scope_retrains_in_the_background_without_losing_entries() -> None:
    rng = np.random.default_rng(5)
    idx = ScopedIndex(8, flat_limit=50, background=True)
    vecs = {i: unit(rng) for i in range(1, 1201)}
    for i, v in vecs.items():
        idx.add(b"S", i, v, None)
        if i % 7 == 0:
            idx.remove(i - 3)
    idx.wait_background()
    live = [i for i in vecs if i in idx]
    assert len(live) == len(idx) == 1200 - 1200 // 7
    found = sum(idx.search(b"S", vecs[i], 0.999, 0.0).entry_id == i for i in live)
    assert found >= 0.99 * len(live)


@pytest.mark.parametrize("flat_limit", [1000, 4])
def test_vectors_are_stored_as_float16_and_a_repeat_still_scores_above_0999(flat_limit: int) -> None:
    """Both representations hold float16 vectors: an exact repeat scores within 2^-11 of
    1 (so >= 0.999), any query within 2^-11 of its float32 inner product."""
    rng = np.random.default_rng(6)
    d = 384
    idx = ScopedIndex(d, flat_limit=flat_limit, background=False)
    vecs = {i: unit(rng, d) for i in range(1, 41)}
    for i, v in vecs.items():
        idx.add(b"S", i, v, None)
    assert idx.kind(b"S") == ("flat" if flat_limit > 40 else "ivf")
    if flat_limit > 40:
        assert idx._arena.vecs.dtype == np.float16 and idx._arena.vecs.itemsize * d == 768
    for i, v in vecs.items():
        hit = idx.search(b"S", v, 0.999, 0.0)
        assert hit.entry_id == i and abs(hit.score - 1.0) <= 2**-11 + 1e-6
        near = (v + 0.3 * unit(rng, d)).astype(np.float32)
        near /= np.linalg.norm(near)
        got = idx.search(b"S", near, -1.0, 0.0)
        best = max(float(near @ w) for w in vecs.values())
        assert abs(got.score - best) <= 2**-11 + 1e-6


def test_vectors_beyond_float16_range_are_refused() -> None:
    idx = ScopedIndex(8)
    big = np.zeros(8, np.float32)
    big[0] = 1e5
    with pytest.raises(VectorError, match="float16 range"):
        idx.add(b"S", 1, big, None)
    with pytest.raises(VectorError, match="float16 range"):
        idx.add_many([b"S"], np.array([1]), big.reshape(1, -1), np.full(1, np.inf))
    nan = np.full((1, 8), np.nan, np.float32)
    with pytest.raises(VectorError, match="NaN"):
        idx.add_many([b"S"], np.array([1]), nan, np.full(1, np.inf))
    assert len(idx) == 0
    idx.search(b"S", big, 0.5, 0.0)  # a query stays float32: any finite value is fine


def test_state_with_a_float32_arena_is_refused() -> None:
    rng = np.random.default_rng(7)
    idx = ScopedIndex(8)
    idx.add(b"S", 1, unit(rng), None)
    meta, arrays, ivfs = idx.export_state()
    assert meta["arena_dtype"] == "float16" and arrays["arena.vecs"].dtype == np.float16
    ScopedIndex.from_state(meta, arrays, ivfs)
    old = {**arrays, "arena.vecs": arrays["arena.vecs"].astype(np.float32)}
    with pytest.raises(ValueError, match="not float16"):
        ScopedIndex.from_state({**meta, "arena_dtype": "float32"}, old, ivfs)
    with pytest.raises(ValueError, match="not float16"):
        ScopedIndex.from_state(meta, old, ivfs)  # the metadata says float16, the rows do not
    with pytest.raises(ValueError, match="not float16"):
        ScopedIndex.from_state({k: v for k, v in meta.items() if k != "arena_dtype"}, arrays, ivfs)
