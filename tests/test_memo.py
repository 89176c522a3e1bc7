"""VectorMemo: identical text embedded once, least recently used dropped, read-only rows."""

from __future__ import annotations

import numpy as np

from semcache.memo import VectorMemo


def test_lru_order_capacity_and_counts() -> None:
    memo = VectorMemo(2)
    a = memo.put("a", np.ones(4, dtype=np.float32))
    memo.put("b", np.zeros(4, dtype=np.float32))
    assert memo.get("a") is a  # a is now the most recent
    memo.put("c", np.zeros(4, dtype=np.float32))
    assert memo.get("b") is None and memo.get("a") is a and memo.get("c") is not None
    assert len(memo) == 2 and (memo.hits, memo.misses) == (3, 1)


def test_stored_vectors_are_read_only_copies() -> None:
    memo = VectorMemo(4)
    batch = np.arange(8, dtype=np.float32).reshape(2, 4)
    kept = memo.put("row", batch[1])
    batch[1] = -1  # the caller's later writes cannot reach the memo
    assert not kept.flags.writeable and kept.base is None
    assert np.array_equal(memo.get("row"), [4, 5, 6, 7])


def test_zero_capacity_remembers_nothing() -> None:
    memo = VectorMemo(0)
    memo.put("a", np.ones(2, dtype=np.float32))
    assert memo.get("a") is None and len(memo) == 0
