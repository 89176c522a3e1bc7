"""Coalescing: concurrent identical misses make one upstream call (single flight).

The first request for a key becomes the leader (:meth:`Coalescer.begin`); later ones for
the same key await the leader's outcome (:meth:`Coalescer.pending`).  The leader
publishes an admissible answer, or None when it got none (an error, a refusal, a broken
stream); followers that receive None go upstream on their own, so an error is never
multiplied into other requests' answers.

The flight stays registered until the leader's answer is stored (``hold_until``), so a
request that arrives after the answer but before the store commits still shares it
instead of calling upstream again.
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["Coalescer", "Flight"]


class Flight:
    """The leader's handle for one key."""

    def __init__(self, owner: Coalescer, key: bytes, future: asyncio.Future[Any]) -> None:
        self._owner = owner
        self._key = key
        self._future = future
        self.held = False

    def publish(self, answer: Any) -> None:
        """Hand ``answer`` (or None) to every follower; only the first call counts."""
        if not self._future.done():
            self._future.set_result(answer)

    def hold_until(self, task: asyncio.Future[Any]) -> None:
        """Keep the flight registered until ``task`` (the store) is done."""
        self.held = True
        task.add_done_callback(lambda _: self.finish())

    def finish(self) -> None:
        """Unregister the flight (publishing None if nothing was published)."""
        self.publish(None)
        self._owner._release(self._key, self._future)


class Coalescer:
    """Per-key single flight.  Event-loop confined (not thread-safe)."""

    def __init__(self) -> None:
        self._inflight: dict[bytes, asyncio.Future[Any]] = {}

    def __len__(self) -> int:
        return len(self._inflight)

    def pending(self, key: bytes) -> asyncio.Future[Any] | None:
        """The running leader's future for ``key``, if any."""
        return self._inflight.get(key)

    def begin(self, key: bytes) -> Flight:
        """Become the leader for ``key``; call :meth:`Flight.finish` (or ``hold_until``)."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        return Flight(self, key, future)

    def _release(self, key: bytes, future: asyncio.Future[Any]) -> None:
        if self._inflight.get(key) is future:
            del self._inflight[key]
