"""The spend ledger: what each namespace and model spent upstream and saved by hits.

Per ``(namespace, model)`` the ledger counts requests, hits, upstream calls and errors,
upstream prompt/completion tokens and their price, tokens and money saved by hits,
feedback verdicts and budget refusals (see :class:`LedgerRow`).  Per ``(namespace, UTC
day)`` it counts upstream tokens and money, which is what daily budgets compare with.

Persistence: counts accumulate in memory on the request path (no LMDB commit per
request).  :meth:`Ledger.flush` adds what was counted since the previous flush to the
``ledger`` sub-database in one transaction; the server calls it from its maintenance
task (every few seconds) and at shutdown, on the store's writer thread.  Rows are only
ever added to, so a crash loses at most the counts since the last flush, and several
processes on one store never overwrite each other (each sees the others' counts after
its next start).

Before the store is attached (the model is still loading) counts are kept in memory and
written at the first flush after :meth:`Ledger.attach`.

Thread safety: every method may be called from any thread (one lock); the web layer
counts on the event loop and flushes on the store executor.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from threading import Lock
from typing import Any, Protocol

import msgpack

from .pricing import PriceTable

__all__ = ["Ledger", "LedgerRow", "utc_day", "seconds_to_utc_midnight"]

_TOTAL = b"t"
_DAY = b"d"


class LedgerStore(Protocol):
    """The two store methods the ledger needs (see :class:`semcache.store.Store`)."""

    def add_to_ledger(self, deltas: dict[bytes, dict[str, float]]) -> None: ...

    def ledger_rows(self, prefix: bytes = b"") -> dict[bytes, dict[str, float]]: ...


@dataclass
class LedgerRow:
    """Totals of one ``(namespace, model)``.  Tokens are counts; money is US dollars.

    ``requests`` counts the cached-endpoint requests attributed to the row (hits,
    upstream calls, refusals); ``estimated_calls``/``estimated_hits`` count those whose
    tokens were estimated from text length because no ``usage`` was available (a stream
    without ``stream_options.include_usage``).
    """

    namespace: str
    model: str
    requests: int = 0
    hits: int = 0
    upstream_calls: int = 0
    upstream_errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    spent_usd: float = 0.0
    saved_prompt_tokens: int = 0
    saved_completion_tokens: int = 0
    saved_usd: float = 0.0
    estimated_calls: int = 0
    estimated_hits: int = 0
    wrong_hits: int = 0
    correct_hits: int = 0
    budget_refusals: int = 0

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_FIELDS = tuple(f.name for f in dataclasses.fields(LedgerRow) if f.name not in ("namespace", "model"))
_FLOAT_FIELDS = frozenset(("spent_usd", "saved_usd"))


def utc_day(now: float) -> str:
    """``YYYY-MM-DD`` of the UTC day containing ``now`` (seconds since the epoch)."""
    return datetime.fromtimestamp(now, timezone.utc).strftime("%Y-%m-%d")


def seconds_to_utc_midnight(now: float) -> float:
    """Seconds from ``now`` until the next 00:00 UTC (budget windows reset then)."""
    return 86400.0 - (now % 86400.0)


def _total_key(namespace: str, model: str) -> bytes:
    return _TOTAL + msgpack.packb([namespace, model], use_bin_type=True)


def _day_key(day: str, namespace: str) -> bytes:
    return _DAY + day.encode("ascii") + namespace.encode("utf-8")


class Ledger:
    """Spend and savings per namespace and model, with day windows for budgets.

    ``prices`` turns tokens into money; ``clock`` gives seconds since the epoch (tests
    move it to cross a UTC midnight).
    """

    def __init__(self, prices: PriceTable | None = None, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.prices = prices or PriceTable()
        self.clock = clock
        self._lock = Lock()
        self._rows: dict[tuple[str, str], LedgerRow] = {}
        self._days: dict[tuple[str, str], list[float]] = {}  # (day, ns) -> [tokens, usd]
        self._pending: dict[bytes, dict[str, float]] = {}
        self._store: LedgerStore | None = None

    # --------------------------------------------------------------- persistence
    def attach(self, store: LedgerStore) -> None:
        """Load the persisted totals and today's day windows from ``store``, keeping what
        was counted before (it is written at the next flush)."""
        persisted = store.ledger_rows(_TOTAL)
        today = utc_day(self.clock())
        days = store.ledger_rows(_DAY + today.encode("ascii"))
        with self._lock:
            for key, fields in persisted.items():
                try:
                    namespace, model = msgpack.unpackb(key[1:], raw=False)
                except (ValueError, TypeError, msgpack.UnpackException):
                    continue
                row = self._row(str(namespace), str(model))
                for name in _FIELDS:
                    if name in fields:
                        setattr(row, name, getattr(row, name) + _num(name, fields[name]))
            for key, fields in days.items():
                namespace = key[1 + len(today):].decode("utf-8", "replace")
                acc = self._days.setdefault((today, namespace), [0.0, 0.0])
                acc[0] += float(fields.get("tokens", 0))
                acc[1] += float(fields.get("usd", 0))
            self._store = store

    def flush(self) -> int:
        """Write the counts gathered since the last flush; returns how many rows changed.

        Blocks for one LMDB commit (call it on the store's executor).  On failure the
        counts are kept for the next flush and the error propagates.
        """
        with self._lock:
            store = self._store
            if store is None or not self._pending:
                return 0
            pending, self._pending = self._pending, {}
            self._forget_old_days()
        try:
            store.add_to_ledger(pending)
        except BaseException:
            with self._lock:
                for key, fields in pending.items():
                    _merge(self._pending.setdefault(key, {}), fields)
            raise
        return len(pending)

    def _forget_old_days(self) -> None:
        today = utc_day(self.clock())
        for key in [k for k in self._days if k[0] < today]:
            del self._days[key]

    # ------------------------------------------------------------------ counting
    def _row(self, namespace: str, model: str) -> LedgerRow:
        row = self._rows.get((namespace, model))
        if row is None:
            row = self._rows[(namespace, model)] = LedgerRow(namespace, model)
        return row

    def _add(self, namespace: str, model: str, **amounts: float) -> None:
        """Add to a row (memory and pending); caller holds the lock."""
        row = self._row(namespace, model)
        for name, amount in amounts.items():
            setattr(row, name, getattr(row, name) + amount)
        _merge(self._pending.setdefault(_total_key(namespace, model), {}), amounts)

    def upstream(self, namespace: str, model: str, prompt_tokens: int, completion_tokens: int,
                 *, estimated: bool = False) -> float:
        """Count one answered upstream call; returns its price in USD."""
        usd = self.prices.cost(model, prompt_tokens, completion_tokens)
        day = utc_day(self.clock())
        with self._lock:
            self._add(namespace, model, requests=1, upstream_calls=1, prompt_tokens=prompt_tokens,
                      completion_tokens=completion_tokens, spent_usd=usd,
                      estimated_calls=1 if estimated else 0)
            acc = self._days.setdefault((day, namespace), [0.0, 0.0])
            acc[0] += prompt_tokens + completion_tokens
            acc[1] += usd
            _merge(self._pending.setdefault(_day_key(day, namespace), {}),
                   {"tokens": prompt_tokens + completion_tokens, "usd": usd})
        return usd

    def upstream_error(self, namespace: str, model: str) -> None:
        """Count one upstream call that failed (error status, no usage)."""
        with self._lock:
            self._add(namespace, model, requests=1, upstream_errors=1)

    def hit(self, namespace: str, model: str, prompt_tokens: int, completion_tokens: int,
            *, estimated: bool = False) -> float:
        """Count one request answered from the cache; returns the USD it saved."""
        usd = self.prices.cost(model, prompt_tokens, completion_tokens)
        with self._lock:
            self._add(namespace, model, requests=1, hits=1, saved_prompt_tokens=prompt_tokens,
                      saved_completion_tokens=completion_tokens, saved_usd=usd,
                      estimated_hits=1 if estimated else 0)
        return usd

    def refused(self, namespace: str, model: str) -> None:
        """Count one request refused by a budget."""
        with self._lock:
            self._add(namespace, model, requests=1, budget_refusals=1)

    def feedback(self, namespace: str, model: str, correct: bool) -> None:
        """Count one verdict on a served hit."""
        with self._lock:
            self._add(namespace, model, **{"correct_hits" if correct else "wrong_hits": 1})

    # ------------------------------------------------------------------- reading
    def day_usage(self, namespace: str, now: float | None = None) -> tuple[float, float]:
        """``(tokens, usd)`` spent upstream by ``namespace`` in the UTC day of ``now``."""
        day = utc_day(self.clock() if now is None else now)
        with self._lock:
            acc = self._days.get((day, namespace))
            return (acc[0], acc[1]) if acc else (0.0, 0.0)

    def rows(self, namespace: str | None = None) -> list[LedgerRow]:
        """Copies of the rows (of one namespace when given), sorted by namespace and model."""
        with self._lock:
            return [dataclasses.replace(row) for key, row in sorted(self._rows.items())
                    if namespace is None or key[0] == namespace]

    def totals(self, namespace: str | None = None) -> dict[str, float]:
        """The rows summed over models (and namespaces when ``namespace`` is None)."""
        out: dict[str, float] = dict.fromkeys(_FIELDS, 0)
        for row in self.rows(namespace):
            for name in _FIELDS:
                out[name] += getattr(row, name)
        return out


def _num(name: str, value: Any) -> float:
    return float(value) if name in _FLOAT_FIELDS else int(value)


def _merge(into: dict[str, float], amounts: Mapping[str, float]) -> None:
    for name, amount in amounts.items():
        if amount:
            into[name] = into.get(name, 0) + amount
