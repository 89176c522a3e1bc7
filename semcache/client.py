"""Python clients for a running sidecar: the operator API, and openai clients through it.

::

    from semcache import Client, openai_client

    ops = Client("http://127.0.0.1:8080", admin_token="...")
    print(ops.stats().totals["saved_usd"])
    for entry in ops.iter_entries(namespace="team-a"):
        ...
    ops.feedback(entry_id, correct=False)          # that hit was wrong: drop it

    llm = openai_client("http://127.0.0.1:8080", api_key="sk-...", namespace="team-a")
    llm.chat.completions.create(model="gpt-4o-mini", messages=[...])

:class:`Client` is synchronous (the standard library's ``urllib``, no extra dependency);
:class:`AsyncClient` has the same methods as coroutines (``aiohttp``).  Results are
typed dataclasses; a refused call raises the :class:`SemcacheError` subclass matching the
answer (401 :class:`AuthError`, 404 :class:`NotFoundError`, 400
:class:`InvalidRequestError`, 503 :class:`NotReadyError`...) with the server's message;
an unreachable server raises :class:`ConnectionError` (a builtin ``OSError``).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import InvalidRequestError, SemcacheError, error_from_response
from .feedback import FeedbackEvent
from .keys import NAMESPACE_HEADER
from .ledger import LedgerRow
from .transfer import ExportHeader, parse_line

__all__ = [
    "Client", "AsyncClient", "openai_client", "async_openai_client", "Entry", "EntryPage",
    "Stats", "BudgetState", "Invalidation", "InvalidatedEntry", "ImportResult", "FeedbackEvent",
    "LedgerRow", "check_export",
]

IMPORT_BATCH = 500


# ------------------------------------------------------------------------- results
@dataclass(frozen=True)
class Entry:
    """One cache entry.  Times are seconds since the epoch; ``response`` (the stored
    answer) only from :meth:`Client.entry`."""

    id: int
    namespace: str
    endpoint: str
    model: str
    text: str | None
    created: float
    expires: float | None
    usage: dict[str, Any] | None
    size: int | None
    hits: int
    last_hit: float | None
    response: dict[str, Any] | None = None

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Entry:
        return cls(id=d["id"], namespace=d["namespace"], endpoint=d["endpoint"], model=d["model"],
                   text=d.get("text"), created=d["created"], expires=d.get("expires"),
                   usage=d.get("usage"), size=d.get("size"), hits=d.get("hits", 0),
                   last_hit=d.get("last_hit"), response=d.get("response"))


@dataclass(frozen=True)
class EntryPage:
    """A page of entries; pass ``next_after`` as ``after`` for the next (None: last page)."""

    entries: list[Entry]
    next_after: int | None


@dataclass(frozen=True)
class BudgetState:
    """Today's use of one daily budget (``kind``: ``tokens`` or ``usd``)."""

    namespace: str
    kind: str
    limit: float
    used: float
    remaining: float
    exceeded: bool
    default: bool


@dataclass(frozen=True)
class Stats:
    """``GET /semcache/stats``: ``cache`` (entries, bytes, scopes, evictions...; None while
    loading), the sidecar's ``counters``, the ledger ``totals`` and per-(namespace, model)
    ``rows``, ``budgets``, feedback counts, and the public settings."""

    version: str
    ready: bool
    namespace: str | None
    cache: dict[str, Any] | None
    counters: dict[str, int]
    totals: dict[str, float]
    rows: list[LedgerRow]
    budgets: list[BudgetState]
    feedback_wrong: int
    feedback_correct: int
    settings: dict[str, Any]
    load_error: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Stats:
        ledger = d.get("ledger") or {}
        fb = d.get("feedback") or {}
        return cls(version=d["version"], ready=d["ready"], namespace=d.get("namespace"),
                   cache=d.get("cache"), counters=d.get("counters") or {},
                   totals=ledger.get("totals") or {},
                   rows=[LedgerRow(**r) for r in ledger.get("rows") or []],
                   budgets=[BudgetState(**b) for b in d.get("budgets") or []],
                   feedback_wrong=fb.get("wrong", 0), feedback_correct=fb.get("correct", 0),
                   settings=d.get("settings") or {}, load_error=d.get("load_error"), raw=d)


@dataclass(frozen=True)
class InvalidatedEntry:
    id: int
    namespace: str
    model: str
    text: str | None
    similarity: float | None


@dataclass(frozen=True)
class Invalidation:
    """What an invalidation matched and deleted (``ids``: deleted, or matched on a dry run)."""

    dry_run: bool
    matched: int
    deleted: int
    ids: list[int]
    entries: list[InvalidatedEntry]

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Invalidation:
        return cls(dry_run=d["dry_run"], matched=d["matched"], deleted=d["deleted"], ids=d["ids"],
                   entries=[InvalidatedEntry(**e) for e in d.get("entries") or []])


@dataclass(frozen=True)
class ImportResult:
    """Counts of an import (summed over batches)."""

    imported: int = 0
    expired: int = 0
    skipped_foreign_keys: int = 0
    salt_adopted: bool = False
    entries: int = 0

    def __add__(self, other: ImportResult) -> ImportResult:
        return ImportResult(self.imported + other.imported, self.expired + other.expired,
                            self.skipped_foreign_keys + other.skipped_foreign_keys,
                            self.salt_adopted or other.salt_adopted, self.entries + other.entries)


# ------------------------------------------------------------------ request shapes
def _query(**params: Any) -> str:
    clean = {k: str(v) for k, v in params.items() if v is not None}
    return ("?" + urllib.parse.urlencode(clean)) if clean else ""


def _invalidate_body(namespace: str | None, entry_id: int | None, entry_ids: Iterable[int] | None,
                     query: str | None, threshold: float | None, model: str | None,
                     endpoint: str | None, all: bool, dry_run: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"namespace": namespace, "entry_id": entry_id,
                            "entry_ids": list(entry_ids) if entry_ids is not None else None,
                            "query": query, "threshold": threshold, "model": model,
                            "endpoint": endpoint}
    body = {k: v for k, v in body.items() if v is not None}
    if all:
        body["all"] = True
    if dry_run:
        body["dry_run"] = True
    return body


def _feedback_body(entry_id: int, correct: bool, similarity: float | None) -> dict[str, Any]:
    body: dict[str, Any] = {"entry_id": entry_id, "correct": correct}
    if similarity is not None:
        body["similarity"] = similarity
    return body


def _policy_body(refit: bool | None, learning: bool | None) -> dict[str, Any]:
    return {k: v for k, v in (("refit", refit), ("learning", learning)) if v is not None}


def check_export(lines: Iterable[str]) -> tuple[ExportHeader | None, list[tuple[int, str]]]:
    """Validate a whole export before sending any of it: ``(header, [(line no, line)])``
    of the entry lines.  Raises :class:`InvalidRequestError` naming the first bad line."""
    header: ExportHeader | None = None
    entries: list[tuple[int, str]] = []
    for number, line in enumerate(lines, start=1):
        item = parse_line(line, number)
        if isinstance(item, ExportHeader):
            if header is not None or entries:
                raise InvalidRequestError(f"line {number}", line[:40],
                                          "an export header may only be the first line")
            header = item
        elif item is not None:
            entries.append((number, line.rstrip("\n")))
    return header, entries


def _batches(header_text: str | None, entries: list[tuple[int, str]], size: int
             ) -> Iterator[tuple[int, str]]:
    """``(first_line, body)`` per batch; the header leads every batch (the server needs
    its salt) and is numbered one before the batch's first entry line."""
    for start in range(0, len(entries), size):
        chunk = entries[start:start + size]
        first = chunk[0][0]
        lines = [line for _, line in chunk]
        if header_text is not None:
            lines.insert(0, header_text)
            first -= 1
        yield first, "\n".join(lines) + "\n"


def _raise_for(status: int, raw: bytes) -> None:
    if status < 400:
        return
    try:
        payload: Any = json.loads(raw)
    except ValueError:
        payload = raw.decode("utf-8", "replace")[:200]
    raise error_from_response(status, payload)


# -------------------------------------------------------------------- sync client
class Client:
    """The operator API of the sidecar at ``base_url`` (``http://127.0.0.1:8080``).

    ``admin_token`` is sent as ``Authorization: Bearer``; ``timeout`` is seconds per call.
    Thread-safe (one connection per call).
    """

    def __init__(self, base_url: str, admin_token: str | None = None, *, timeout: float = 60.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.admin_token = admin_token
        self.timeout = timeout

    def _headers(self, content_type: str | None = None) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self.admin_token:
            headers["Authorization"] = f"Bearer {self.admin_token}"
        if content_type:
            headers["Content-Type"] = content_type
        return headers

    def _open(self, method: str, path: str, data: bytes | None = None,
              content_type: str | None = None) -> Any:
        req = urllib.request.Request(self.base_url + path, data=data, method=method,
                                     headers=self._headers(content_type))
        try:
            return urllib.request.urlopen(req, timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            with exc:
                _raise_for(exc.code, exc.read())
            raise  # pragma: no cover - _raise_for always raises for >= 400
        except urllib.error.URLError as exc:
            raise ConnectionError(f"semcache at {self.base_url} unreachable: {exc.reason}") from exc

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode("utf-8") if body is not None else None
        with self._open(method, path, data, "application/json" if data is not None else None) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else None

    # --- the API
    def healthz(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/healthz")
        return result

    def readyz(self) -> dict[str, Any]:
        """The readiness document; raises :class:`NotReadyError` (503) while loading."""
        result: dict[str, Any] = self._call("GET", "/readyz")
        return result

    def metrics(self) -> str:
        """The Prometheus exposition text."""
        with self._open("GET", "/metrics") as resp:
            return str(resp.read().decode("utf-8"))

    def stats(self, namespace: str | None = None) -> Stats:
        return Stats.from_json(self._call("GET", "/semcache/stats" + _query(namespace=namespace)))

    def entries(self, namespace: str | None = None, *, model: str | None = None, limit: int = 100,
                after: int | None = None) -> EntryPage:
        d = self._call("GET", "/semcache/entries" + _query(namespace=namespace, model=model,
                                                           limit=limit, after=after))
        return EntryPage([Entry.from_json(e) for e in d["entries"]], d["next_after"])

    def iter_entries(self, namespace: str | None = None, *, model: str | None = None,
                     page_size: int = 500) -> Iterator[Entry]:
        """Every entry (of a namespace/model), page by page."""
        after: int | None = None
        while True:
            page = self.entries(namespace, model=model, limit=page_size, after=after)
            yield from page.entries
            if page.next_after is None:
                return
            after = page.next_after

    def entry(self, entry_id: int) -> Entry:
        """One entry with its stored ``response``; :class:`NotFoundError` if there is none."""
        return Entry.from_json(self._call("GET", f"/semcache/entries/{int(entry_id)}"))

    def delete_entry(self, entry_id: int) -> None:
        """Drop one entry; :class:`NotFoundError` if there is none."""
        self._call("DELETE", f"/semcache/entries/{int(entry_id)}")

    def invalidate(self, *, namespace: str | None = None, entry_id: int | None = None,
                   entry_ids: Iterable[int] | None = None, query: str | None = None,
                   threshold: float | None = None, model: str | None = None,
                   endpoint: str | None = None, all: bool = False, dry_run: bool = False,
                   ) -> Invalidation:
        """Drop the entries matching every given selector (see ``POST /semcache/invalidate``)."""
        return Invalidation.from_json(self._call("POST", "/semcache/invalidate", _invalidate_body(
            namespace, entry_id, entry_ids, query, threshold, model, endpoint, all, dry_run)))

    def feedback(self, entry_id: int, correct: bool, *, similarity: float | None = None
                 ) -> FeedbackEvent:
        """Report a served hit (``X-Semcache-Entry``) as wrong (dropped) or right."""
        return FeedbackEvent(**self._call("POST", "/semcache/feedback",
                                          _feedback_body(entry_id, correct, similarity)))

    def feedback_events(self, namespace: str | None = None, limit: int = 100) -> list[FeedbackEvent]:
        d = self._call("GET", "/semcache/feedback" + _query(namespace=namespace, limit=limit))
        return [FeedbackEvent(**e) for e in d["events"]]

    def policy(self) -> dict[str, Any]:
        """The adaptive policy's state (``GET /semcache/policy``)."""
        result: dict[str, Any] = self._call("GET", "/semcache/policy")
        return result

    def update_policy(self, *, refit: bool | None = None, learning: bool | None = None
                      ) -> dict[str, Any]:
        """Refit now (waits for it) and/or stop or resume learning; the new state."""
        result: dict[str, Any] = self._call("POST", "/semcache/policy",
                                            _policy_body(refit, learning))
        return result

    def shadow(self, namespace: str | None = None) -> dict[str, Any]:
        """Shadow mode's report: would-be hit and wrong-hit rates per namespace."""
        result: dict[str, Any] = self._call("GET", "/semcache/shadow" + _query(namespace=namespace))
        return result

    def set_shadow(self, namespaces: Iterable[str]) -> dict[str, Any]:
        """Shadow exactly ``namespaces`` (``["*"]``: all; ``[]``: none) until restart."""
        result: dict[str, Any] = self._call("POST", "/semcache/shadow",
                                            {"namespaces": list(namespaces)})
        return result

    def export_lines(self, namespace: str | None = None) -> Iterator[str]:
        """The JSONL export, line by line (header first), streamed."""
        with self._open("GET", "/semcache/export" + _query(namespace=namespace)) as resp:
            for raw in resp:
                yield raw.decode("utf-8")

    def import_lines(self, text: str, *, first_line: int = 1) -> ImportResult:
        """Send one block of JSONL lines (numbered from ``first_line`` in errors)."""
        d = self._call_raw("POST", "/semcache/import" + _query(first_line=first_line),
                           text.encode("utf-8"))
        return ImportResult(**d)

    def _call_raw(self, method: str, path: str, data: bytes) -> Any:
        with self._open(method, path, data, "application/x-ndjson") as resp:
            return json.loads(resp.read())

    def import_file(self, path: str | Path, *, batch_size: int = IMPORT_BATCH,
                    on_batch: Callable[[int], None] | None = None) -> ImportResult:
        """Import an export file: every line is checked first (nothing is sent if one is
        bad), then sent in batches; ``on_batch(entries)`` after each (progress bars)."""
        with open(path, encoding="utf-8") as f:
            header, entries = check_export(f)
        header_text = _header_text(path) if header is not None else None
        total = ImportResult()
        for first, text in _batches(header_text, entries, batch_size):
            total = total + self.import_lines(text, first_line=first)
            if on_batch is not None:
                on_batch(text.count("\n") - (header_text is not None))
        return total


def _header_text(path: str | Path) -> str:
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                return line.rstrip("\n")
    return ""  # pragma: no cover - check_export found a header


# ------------------------------------------------------------------- async client
class AsyncClient:
    """:class:`Client` as coroutines over one ``aiohttp`` session; use ``async with`` or
    :meth:`close`.  Event-loop confined."""

    def __init__(self, base_url: str, admin_token: str | None = None, *, timeout: float = 60.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.admin_token = admin_token
        self.timeout = timeout
        self._session: Any = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _sess(self) -> Any:
        import aiohttp

        if self._session is None:
            headers = {"Accept": "application/json"}
            if self.admin_token:
                headers["Authorization"] = f"Bearer {self.admin_token}"
            self._session = aiohttp.ClientSession(
                headers=headers, timeout=aiohttp.ClientTimeout(total=self.timeout))
        return self._session

    async def _request(self, method: str, path: str, *, json_body: Any = None,
                       data: bytes | None = None, content_type: str | None = None) -> bytes:
        import aiohttp

        headers = {"Content-Type": content_type} if content_type else None
        try:
            async with self._sess().request(method, self.base_url + path, json=json_body,
                                            data=data, headers=headers) as resp:
                raw = await resp.read()
                _raise_for(resp.status, raw)
                return bytes(raw)
        except aiohttp.ClientConnectionError as exc:
            raise ConnectionError(f"semcache at {self.base_url} unreachable: {exc}") from exc

    async def _call(self, method: str, path: str, body: Any = None) -> Any:
        raw = await self._request(method, path, json_body=body)
        return json.loads(raw) if raw else None

    async def healthz(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("GET", "/healthz")
        return result

    async def readyz(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("GET", "/readyz")
        return result

    async def metrics(self) -> str:
        return (await self._request("GET", "/metrics")).decode("utf-8")

    async def stats(self, namespace: str | None = None) -> Stats:
        return Stats.from_json(await self._call("GET", "/semcache/stats" + _query(namespace=namespace)))

    async def entries(self, namespace: str | None = None, *, model: str | None = None,
                      limit: int = 100, after: int | None = None) -> EntryPage:
        d = await self._call("GET", "/semcache/entries" + _query(
            namespace=namespace, model=model, limit=limit, after=after))
        return EntryPage([Entry.from_json(e) for e in d["entries"]], d["next_after"])

    async def iter_entries(self, namespace: str | None = None, *, model: str | None = None,
                           page_size: int = 500) -> AsyncIterator[Entry]:
        after: int | None = None
        while True:
            page = await self.entries(namespace, model=model, limit=page_size, after=after)
            for entry in page.entries:
                yield entry
            if page.next_after is None:
                return
            after = page.next_after

    async def entry(self, entry_id: int) -> Entry:
        return Entry.from_json(await self._call("GET", f"/semcache/entries/{int(entry_id)}"))

    async def delete_entry(self, entry_id: int) -> None:
        await self._call("DELETE", f"/semcache/entries/{int(entry_id)}")

    async def invalidate(self, *, namespace: str | None = None, entry_id: int | None = None,
                         entry_ids: Iterable[int] | None = None, query: str | None = None,
                         threshold: float | None = None, model: str | None = None,
                         endpoint: str | None = None, all: bool = False, dry_run: bool = False,
                         ) -> Invalidation:
        return Invalidation.from_json(await self._call("POST", "/semcache/invalidate", _invalidate_body(
            namespace, entry_id, entry_ids, query, threshold, model, endpoint, all, dry_run)))

    async def feedback(self, entry_id: int, correct: bool, *, similarity: float | None = None
                       ) -> FeedbackEvent:
        return FeedbackEvent(**await self._call("POST", "/semcache/feedback",
                                                _feedback_body(entry_id, correct, similarity)))

    async def feedback_events(self, namespace: str | None = None, limit: int = 100
                              ) -> list[FeedbackEvent]:
        d = await self._call("GET", "/semcache/feedback" + _query(namespace=namespace, limit=limit))
        return [FeedbackEvent(**e) for e in d["events"]]

    async def policy(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("GET", "/semcache/policy")
        return result

    async def update_policy(self, *, refit: bool | None = None, learning: bool | None = None
                            ) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("POST", "/semcache/policy",
                                                  _policy_body(refit, learning))
        return result

    async def shadow(self, namespace: str | None = None) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("GET", "/semcache/shadow"
                                                  + _query(namespace=namespace))
        return result

    async def set_shadow(self, namespaces: Iterable[str]) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("POST", "/semcache/shadow",
                                                  {"namespaces": list(namespaces)})
        return result

    async def export_lines(self, namespace: str | None = None) -> AsyncIterator[str]:
        """The JSONL export, line by line (header first), streamed (lines of any length)."""
        import aiohttp

        try:
            async with self._sess().get(self.base_url + "/semcache/export" +
                                        _query(namespace=namespace)) as resp:
                if resp.status >= 400:
                    _raise_for(resp.status, await resp.read())
                buf = b""
                async for chunk in resp.content.iter_any():
                    buf += chunk
                    *lines, buf = buf.split(b"\n")
                    for line in lines:
                        yield line.decode("utf-8") + "\n"
                if buf:
                    yield buf.decode("utf-8")
        except aiohttp.ClientConnectionError as exc:
            raise ConnectionError(f"semcache at {self.base_url} unreachable: {exc}") from exc

    async def import_lines(self, text: str, *, first_line: int = 1) -> ImportResult:
        raw = await self._request("POST", "/semcache/import" + _query(first_line=first_line),
                                  data=text.encode("utf-8"), content_type="application/x-ndjson")
        return ImportResult(**json.loads(raw))

    async def import_file(self, path: str | Path, *, batch_size: int = IMPORT_BATCH,
                          on_batch: Callable[[int], None] | None = None) -> ImportResult:
        with open(path, encoding="utf-8") as f:
            header, entries = check_export(f)
        header_text = _header_text(path) if header is not None else None
        total = ImportResult()
        for first, text in _batches(header_text, entries, batch_size):
            total = total + await self.import_lines(text, first_line=first)
            if on_batch is not None:
                on_batch(text.count("\n") - (header_text is not None))
        return total


# ------------------------------------------------------------------ openai helpers
def _openai_args(base_url: str, api_key: str, namespace: str | None,
                 kwargs: dict[str, Any]) -> dict[str, Any]:
    url = base_url.rstrip("/")
    if not url.endswith("/v1"):
        url += "/v1"
    headers = dict(kwargs.pop("default_headers", None) or {})
    if namespace is not None:
        headers[NAMESPACE_HEADER] = namespace
    return {"base_url": url, "api_key": api_key, "default_headers": headers or None, **kwargs}


def openai_client(base_url: str, api_key: str, namespace: str | None = None, **kwargs: Any) -> Any:
    """An ``openai.OpenAI`` client that talks to the sidecar at ``base_url`` (``/v1`` is
    appended when missing), sending ``X-Semcache-Namespace: namespace`` with every request.
    Other keyword arguments go to ``openai.OpenAI``.  Needs the ``openai`` package."""
    try:
        import openai
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise SemcacheError("openai_client needs the openai package: pip install openai") from exc
    return openai.OpenAI(**_openai_args(base_url, api_key, namespace, kwargs))


def async_openai_client(base_url: str, api_key: str, namespace: str | None = None,
                        **kwargs: Any) -> Any:
    """:func:`openai_client` for ``openai.AsyncOpenAI``."""
    try:
        import openai
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise SemcacheError("async_openai_client needs the openai package: pip install openai") from exc
    return openai.AsyncOpenAI(**_openai_args(base_url, api_key, namespace, kwargs))
