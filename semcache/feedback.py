"""Feedback on served hits: which hits were wrong (or right), kept for later consumers.

The web layer remembers the last hits it served (:meth:`FeedbackLog.served`: entry id ->
namespace, model, match kind, similarity), so a verdict posted to
``/semcache/feedback`` is attributed even after the entry is gone, and records every
verdict as a :class:`FeedbackEvent` in a bounded log.  The persisted per-namespace/model
counts of verdicts live in the spend ledger (``wrong_hits`` / ``correct_hits``).

Consumers (adaptive thresholds) read :meth:`FeedbackLog.events` or
``GET /semcache/feedback``: each event has the similarity the hit was served at, which is
what a threshold is tuned on.  Event-loop confined (not thread-safe).
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any

from .features import Observation

__all__ = ["FeedbackLog", "FeedbackEvent", "ServedHit"]


@dataclass(frozen=True, slots=True)
class ServedHit:
    """What was served for an entry the last time it answered a request."""

    namespace: str
    model: str
    match: str  # "exact", "semantic" or "coalesced"
    similarity: float
    at: float  # seconds since the epoch
    observation: Observation | None = None  # a semantic hit's, for the adaptive policy


@dataclass(frozen=True, slots=True)
class FeedbackEvent:
    """One verdict: ``correct`` False means the served answer was wrong for the request.

    ``similarity``/``match`` are what the hit was served at (from the client, else from
    the sidecar's memory of recent hits; None when neither knows); ``deleted`` tells
    whether the verdict removed the entry.
    """

    at: float
    entry_id: int
    namespace: str
    model: str
    correct: bool
    similarity: float | None
    match: str | None
    deleted: bool

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class FeedbackLog:
    """Recently served hits (bounded) and recent verdicts (bounded)."""

    def __init__(self, served_limit: int = 10_000, events_limit: int = 10_000) -> None:
        self._served: OrderedDict[int, ServedHit] = OrderedDict()
        self._served_limit = served_limit
        self._events: deque[FeedbackEvent] = deque(maxlen=events_limit)

    def remember(self, entry_id: int, hit: ServedHit) -> None:
        self._served[entry_id] = hit
        self._served.move_to_end(entry_id)
        if len(self._served) > self._served_limit:
            self._served.popitem(last=False)

    def served(self, entry_id: int) -> ServedHit | None:
        return self._served.get(entry_id)

    def record(self, event: FeedbackEvent) -> None:
        self._events.append(event)

    def events(self, limit: int | None = None, namespace: str | None = None) -> list[FeedbackEvent]:
        """The most recent verdicts, oldest first (of one namespace when given)."""
        chosen = [e for e in self._events if namespace is None or e.namespace == namespace]
        return chosen[-limit:] if limit else chosen
