"""Eviction bookkeeping: LRU and LFU order, byte caps, expiry."""

from __future__ import annotations

from semcache.eviction import EvictionTracker


def test_lru_order_follows_touches() -> None:
    t = EvictionTracker("lru")
    for i in range(1, 5):
        t.add(i, 10, None)
    t.touch(1)
    assert t.victims(2, 10**9) == [2, 3]
    t.remove(2)
    assert t.victims(2, 10**9) == [3]


def test_lfu_evicts_fewest_hits_then_oldest() -> None:
    t = EvictionTracker("lfu")
    for i in range(1, 5):
        t.add(i, 10, None)
    t.touch(1)
    t.touch(1)
    t.touch(3)
    assert t.victims(1, 10**9) == [2, 4, 3]
    t.remove(2)
    t.remove(4)
    assert t.victims(1, 10**9) == [3]


def test_byte_cap_counts_incoming_bytes() -> None:
    t = EvictionTracker()
    for i in range(1, 5):
        t.add(i, 100, None)
    assert t.total_bytes == 400
    assert t.victims(100, 400) == []
    assert t.victims(100, 400, incoming_bytes=150) == [1, 2]


def test_expired_returns_due_ids_once() -> None:
    t = EvictionTracker()
    t.add(1, 1, 10.0)
    t.add(2, 1, 20.0)
    t.add(3, 1, None)
    t.add(1, 1, 30.0)  # re-added with a later expiry: the old heap item is stale
    assert t.expired(25.0) == [2]
    assert t.expired(25.0) == []
    assert t.expired(35.0) == [1]
