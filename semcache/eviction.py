"""Eviction bookkeeping: which entries to drop when a cap is exceeded, which have expired.

The tracker knows, per entry id, its payload size, expiry, and recency/frequency.  It
decides; the cache deletes (store and index together) and then calls :meth:`remove`.

* ``lru``: victims are the least recently used (stored or hit) entries.
* ``lfu``: victims have the fewest hits; ties go to the least recently used.

Touch, add and remove are O(1) for LRU and O(1) amortised for LFU (frequency buckets).
Expiry uses a lazy min-heap.  Not thread-safe: the cache serialises calls with its lock.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict

from .errors import ConfigError

__all__ = ["EvictionTracker"]


class EvictionTracker:
    """Recency/frequency order, sizes and expiry of the entries of one cache."""

    def __init__(self, policy: str = "lru") -> None:
        if policy not in ("lru", "lfu"):
            raise ConfigError("eviction", policy, "must be 'lru' or 'lfu'")
        self.policy = policy
        self._size: dict[int, int] = {}
        self._hits: dict[int, int] = {}
        self._order: OrderedDict[int, None] = OrderedDict()  # lru: oldest first
        self._buckets: dict[int, OrderedDict[int, None]] = {}  # lfu: hits -> ids, oldest first
        self._min_hits = 0
        self._expiry: list[tuple[float, int]] = []
        self._expires: dict[int, float] = {}
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
            if len(self._size) == 1 or hits < self._min_hits:
                self._min_hits = hits
        if expires is not None:
            self._expires[entry_id] = expires
            heapq.heappush(self._expiry, (expires, entry_id))

    def touch(self, entry_id: int) -> None:
        """Record a hit: most recently used, one more use."""
        if entry_id not in self._size:
            return
        hits = self._hits[entry_id]
        self._hits[entry_id] = hits + 1
        if self.policy == "lru":
            self._order.move_to_end(entry_id)
            return
        bucket = self._buckets[hits]
        del bucket[entry_id]
        if not bucket:
            del self._buckets[hits]
            if self._min_hits == hits:
                self._min_hits = hits + 1
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
                if self._min_hits == hits and self._buckets:
                    self._min_hits = min(self._buckets)

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

    def _eviction_order(self):  # type: ignore[no-untyped-def]
        if self.policy == "lru":
            yield from self._order
        else:
            for hits in sorted(self._buckets):
                yield from self._buckets[hits]

    def expired(self, now: float, limit: int = 1024) -> list[int]:
        """Up to ``limit`` tracked ids whose expiry is ``<= now``, soonest first."""
        out: list[int] = []
        heap = self._expiry
        while heap and heap[0][0] <= now and len(out) < limit:
            expires, entry_id = heapq.heappop(heap)
            if self._expires.get(entry_id) == expires:
                out.append(entry_id)
        return out
