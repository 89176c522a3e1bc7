"""Embedding reuse: a small LRU of text -> unit vector, keyed by a digest of the text.

Identical semantic text is embedded once while it stays in the memo: the same question
asked under another scope, the store that follows a miss, a retried request.  Keys are
16-byte BLAKE2b digests, so the memo holds no prompt text.  Stored vectors are
read-only; callers share them and must not write to them.

Thread safety: every method may be called from any thread (one lock, held for a dict
operation only -- cheap enough for the event loop).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

import numpy as np

__all__ = ["VectorMemo", "text_digest"]


def text_digest(text: str) -> bytes:
    """The memo key of ``text``: 16-byte BLAKE2b of its UTF-8 bytes."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


class VectorMemo:
    """At most ``capacity`` vectors, least recently used dropped first (0 disables)."""

    def __init__(self, capacity: int = 4096) -> None:
        self.capacity = capacity
        self._items: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    def get(self, text: str) -> np.ndarray | None:
        """The remembered vector of ``text`` (read-only), or None; counts a hit or miss."""
        key = text_digest(text)
        with self._lock:
            vec = self._items.get(key)
            if vec is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return vec

    def put(self, text: str, vector: np.ndarray) -> np.ndarray:
        """Remember ``vector`` for ``text``; returns the stored read-only vector (a copy
        when ``vector`` was writable or a view, so later writes by the caller cannot reach
        the memo)."""
        if vector.flags.writeable or vector.base is not None:
            vector = np.array(vector, dtype=np.float32, copy=True)
            vector.setflags(write=False)
        if self.capacity <= 0:
            return vector
        key = text_digest(text)
        with self._lock:
            self._items[key] = vector
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return vector

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
