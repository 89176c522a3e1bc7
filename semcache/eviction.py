"""Eviction bookkeeping: which entries to drop when a cap is exceeded, which have expired.

The tracker knows, per entry id, its payload size, expiry, and recency/frequency.  It
decides; the cache deletes (store and index together) and then calls ``remove``.

* ``lru``: victims are the least recently used (stored or hit) entries.
* ``lfu``: victims have the fewest hits; ties go to the least recently used.

Contract of :class:`EvictionTracker` (native ``ext/_cevict.pyx``, twin
``semcache/_pyevict.py``; both give identical results):

* ``EvictionTracker(policy="lru")`` — raises :class:`~semcache.errors.ConfigError` for a
  policy other than ``lru``/``lfu``.
* ``add(entry_id, size, expires, hits=0)`` — track as the most recently used; ``size`` in
  bytes, ``expires`` in seconds since the epoch or None; re-adding replaces.
* ``touch(entry_id)`` — a hit: O(1) for both policies; unknown ids are ignored.
* ``remove(entry_id)`` — forget; unknown ids are ignored.
* ``victims(max_entries, max_bytes, incoming_bytes=0)`` — ids to evict, in order, so that
  both caps hold once ``incoming_bytes`` are added; removes nothing.
* ``expired(now, limit=1024)`` — up to ``limit`` due ids (``expires <= now``), soonest
  first, ties by lowest id; each reported once, still tracked until removed.
* ``total_bytes``, ``len()``, ``in``.

Not thread-safe: the cache serialises calls with its bookkeeping lock.  Every call is
in-memory and short (``victims`` is O(victims)), so holding that lock never waits on I/O.
"""

from __future__ import annotations

from ._speedups import evict

__all__ = ["EvictionTracker"]

EvictionTracker = evict.EvictionTracker
