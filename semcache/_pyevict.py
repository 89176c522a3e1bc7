"""Pure-Python twin of ``ext/_cevict.pyx``: eviction bookkeeping of one cache.

Same class, signatures and results as the native module; see :mod:`semcache.eviction`
for the contract.  Used when ``SEMCACHE_NO_EXTENSIONS=1`` or the extension is not built.

Structures: LRU is an ``OrderedDict`` (oldest first); LFU keeps one ``OrderedDict`` per hit
count (oldest first inside a count); expiry is a lazy min-heap of ``(expires, id)`` whose
stale items are skipped, and which is rebuilt when stale items outnumber live ones.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

from .errors import ConfigError

__all__ = ["EvictionTracker"]

_HEAP_SLACK = 1024


class EvictionTracker:
    """Recency/frequency order, sizes and expiry of the entries of one cache.

    Not thread-safe: the owner serialises calls (the cache holds its bookkeeping lock).
    """

    def __init__(self, policy: str = "lru") -> None:
        if policy not in ("lru", "lfu"):
            raise ConfigError("eviction", policy, "must be 'lru' or 'lfu'")
        self.policy = policy
        self._size: dict[int, int] = {}
        self._hits: dict[int, int] = {}
        self._order: OrderedDict[int, None] = OrderedDict()  # lru: oldest first
        self._buckets: dict[int, OrderedDict[int, None]] = {}  # lfu: hits -> ids, oldest first
        self._expiry: list[tuple[float, int]] = []
        self._expires: dict[int, float] = {}  # due times not yet reported by expired()
        self.total_bytes = 0

    def __len__(self) -> int:
        return len(self._size)

    def __contains__(self, entry_id: int) -> bool:
        return entry_id in self._size

    def add(self, entry_id: int, size: int, expires: float | None, hits: int = 0) -> None:
        """Track a new entry as the most recently used (re-adding replaces it)."""
        if entry_id in self._size:
            self.remove(entry_id)
        self._size[entry_id] = size
        self.total_bytes += size
        self._hits[entry_id] = hits
        if self.policy == "lru":
            self._order[entry_id] = None
        else:
            self._buckets.setdefault(hits, OrderedDict())[entry_id] = None
        if expires is not None:
            self._expires[entry_id] = expires
            heapq.heappush(self._expiry, (expires, entry_id))
            if len(self._expiry) > 2 * len(self._expires) + _HEAP_SLACK:
                self._expiry = [(e, i) for i, e in self._expires.items()]
                heapq.heapify(self._expiry)

    def add_many(self, ids: Any, sizes: Any, expires: Any, hits: Any) -> None:
        """``add`` for each row of the four equally long int64/int64/float64/int64 arrays, in
        order; an ``expires`` of ``inf`` means never."""
        inf = float("inf")
        for i, s, e, h in zip(ids.tolist(), sizes.tolist(), expires.tolist(), hits.tolist(),
                              strict=True):
            self.add(i, s, None if e == inf else e, h)

    def touch(self, entry_id: int) -> None:
        """Record a hit: most recently used, one more use.  Unknown ids are ignored."""
        hits = self._hits.get(entry_id)
        if hits is None:
            return
        self._hits[entry_id] = hits + 1
        if self.policy == "lru":
            self._order.move_to_end(entry_id)
            return
        bucket = self._buckets[hits]
        del bucket[entry_id]
        if not bucket:
            del self._buckets[hits]
        self._buckets.setdefault(hits + 1, OrderedDict())[entry_id] = None

    def remove(self, entry_id: int) -> None:
        """Forget an entry (deleted for any reason).  Unknown ids are ignored."""
        size = self._size.pop(entry_id, None)
        if size is None:
            return
        self.total_bytes -= size
        hits = self._hits.pop(entry_id)
        self._expires.pop(entry_id, None)
        if self.policy == "lru":
            del self._order[entry_id]
        else:
            bucket = self._buckets[hits]
            del bucket[entry_id]
            if not bucket:
                del self._buckets[hits]

    def victims(self, max_entries: int, max_bytes: int, incoming_bytes: int = 0) -> list[int]:
        """Ids to evict, in eviction order, so that after removing them and adding
        ``incoming_bytes`` the entry count stays ``<= max_entries`` and the byte total
        ``<= max_bytes``.  Does not remove them."""
        excess_n = len(self._size) - max_entries
        excess_b = self.total_bytes + incoming_bytes - max_bytes
        out: list[int] = []
        if excess_n <= 0 and excess_b <= 0:
            return out
        for entry_id in self._eviction_order():
            if excess_n <= 0 and excess_b <= 0:
                break
            out.append(entry_id)
            excess_n -= 1
            excess_b -= self._size[entry_id]
        return out

    def _eviction_order(self) -> Iterator[int]:
        if self.policy == "lru":
            yield from self._order
        else:
            for hits in sorted(self._buckets):
                yield from self._buckets[hits]

    def expired(self, now: float, limit: int = 1024) -> list[int]:
        """Up to ``limit`` tracked ids whose expiry is ``<= now``, soonest first (ties:
        lowest id).  Each due id is reported once; it stays tracked until removed."""
        out: list[int] = []
        heap = self._expiry
        while heap and heap[0][0] <= now and len(out) < limit:
            expires, entry_id = heapq.heappop(heap)
            if self._expires.get(entry_id) == expires:
                del self._expires[entry_id]
                out.append(entry_id)
        return out
