"""The operator API (DESIGN §2): ``/semcache/*`` and ``/metrics``.

=========================================  ==============================================
``GET    /semcache/stats[?namespace=]``     cache size, counters, spend ledger, budgets
``GET    /semcache/entries``                entries by id, paged (``limit``, ``after``),
                                            filtered (``namespace``, ``model``)
``GET    /semcache/entries/{id}``           one entry with its stored response
``DELETE /semcache/entries/{id}``           drop one entry (404 if there is none)
``POST   /semcache/invalidate``             drop by namespace, ids, or query text +
                                            threshold (``dry_run`` to only list)
``POST   /semcache/feedback``               a served hit was wrong (dropped) or right
``GET    /semcache/feedback``               recent verdicts (for threshold tuning)
``GET    /semcache/policy``                 the adaptive policy: outcomes, scorer, cut
``POST   /semcache/policy``                 ``{"refit": true}``, ``{"learning": false}``
``GET    /semcache/shadow[?namespace=]``    shadow mode: would-be hit / wrong-hit rates
``POST   /semcache/shadow``                 ``{"namespaces": [...]}``: which to shadow
``GET    /semcache/export[?namespace=]``    JSONL export (:mod:`semcache.transfer`)
``POST   /semcache/import[?first_line=]``   JSONL import (re-embeds; refuses bad lines)
``GET    /metrics``                         Prometheus text format
=========================================  ==============================================

Authentication: when ``admin_token`` is set, every route here needs
``Authorization: Bearer <token>`` (compared in constant time; 401 otherwise).  Without a
token the API is open, which is allowed only on a loopback address:
:func:`check_exposure` makes the server refuse to start on any other address without
one.  ``/healthz`` and ``/readyz`` stay open for probes.

Namespaces may be given as the ``X-Semcache-Namespace`` value (``team-a``) or in the
internal form (``ns:team-a``, ``key:<hmac>``, ``anonymous``); answers use the internal
form.  Blocking work leaves the event loop: LMDB scans on the default executor, embedding
on the lookup executor, deletes and imports on the store executor.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import ipaddress
import time
from collections.abc import Callable, Generator
from typing import Any, TypeVar

import numpy as np
from aiohttp import web

from . import __version__ as _version
from .budgets import budget_status
from .cache import SemanticCache
from .errors import AuthError, ConfigError, InvalidRequestError, NotFoundError, NotReadyError
from .feedback import FeedbackEvent
from .keys import internal_namespace
from .metrics import State
from .policy import Outcome
from .settings import Settings
from .store import EntryMeta, EntryRecord
from .transfer import ExportHeader, ImportedEntry, entry_line, header_line, parse_line
from .web_proxy import parse_json, read_body
from .web_runtime import RUNTIME, Runtime

__all__ = ["add_routes", "check_exposure", "is_loopback"]

PAGE_MAX = 1000
EXPORT_PAGE = 256
IMPORT_BATCH = 64
IMPORT_MAX_BYTES = 256 << 20
T = TypeVar("T")


# ------------------------------------------------------------------ exposure and auth
def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(settings: Settings) -> None:
    """Refuse (:class:`ConfigError`) to serve the operator API on a non-loopback address
    without an admin token: anyone who can reach the port could read and wipe the cache."""
    if settings.admin_token is None and not is_loopback(settings.host):
        raise ConfigError(
            "host", settings.host,
            "listening on a non-loopback address needs an admin token for the operator API "
            "(set SEMCACHE_ADMIN_TOKEN or --admin-token), or listen on 127.0.0.1")


def require_admin(request: web.Request) -> None:
    """Raise :class:`AuthError` (401) unless the request carries the admin token."""
    token = request.app[RUNTIME].settings.admin_token
    if token is None:
        return
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise AuthError("the operator API needs 'Authorization: Bearer <admin token>'")
    if not hmac.compare_digest(given.strip().encode("utf-8"), token.encode("utf-8")):
        raise AuthError("the admin token is not valid")


def _cache(rt: Runtime) -> SemanticCache:
    if rt.cache is None:
        reason = f"the cache failed to open: {rt.load_error}" if rt.load_error else \
            "the cache is still loading the embedding model and index"
        raise NotReadyError(reason)
    return rt.cache


async def _run(pool: Any, fn: Callable[..., T], *args: Any) -> T:
    return await asyncio.get_running_loop().run_in_executor(pool, functools.partial(fn, *args))


# --------------------------------------------------------------------- parameters
def _namespace_param(value: Any, field: str = "namespace") -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InvalidRequestError(field, value, "must be a string")
    try:
        return internal_namespace(value)
    except InvalidRequestError:
        raise InvalidRequestError(field, value, "is not a namespace a request could carry") from None


def _int_param(value: Any, field: str, *, default: int | None, lo: int, hi: int | None = None) -> int | None:
    if value is None or value == "":
        return default
    try:
        number = int(value)
        if isinstance(value, (bool, float)):
            raise ValueError
    except (TypeError, ValueError):
        raise InvalidRequestError(field, value, "must be an integer") from None
    if number < lo or (hi is not None and number > hi):
        raise InvalidRequestError(field, value, f"must be between {lo} and {hi}" if hi
                                  else f"must be at least {lo}")
    return number


def _entry_id(request: web.Request) -> int:
    value = _int_param(request.match_info["id"], "id", default=None, lo=1)
    assert value is not None
    return value


async def _json_body(request: web.Request) -> dict[str, Any]:
    body = parse_json(await read_body(request, request.app[RUNTIME].settings.max_body_bytes))
    if not isinstance(body, dict):
        raise InvalidRequestError("body", type(body).__name__, "must be a JSON object")
    return body


def _entry_view(entry_id: int, record: EntryRecord, meta: EntryMeta | None,
                pending: tuple[int, float | None], *, response: bool) -> dict[str, Any]:
    stored_hits = meta.hits if meta else 0
    last_hits = [t for t in (meta.last_hit if meta and stored_hits else None, pending[1])
                 if t is not None]
    view: dict[str, Any] = {
        "id": entry_id, "namespace": record.namespace, "endpoint": record.endpoint,
        "model": record.model, "text": record.text, "created": record.created,
        "expires": record.expires, "usage": record.usage, "size": meta.size if meta else None,
        "hits": stored_hits + pending[0], "last_hit": max(last_hits) if last_hits else None,
    }
    if response:
        import json

        view["response"] = json.loads(record.body)
    return view


# -------------------------------------------------------------------------- stats
def _state(rt: Runtime) -> State:
    import dataclasses

    cache = rt.cache
    cache_stats = store_stats = None
    if cache is not None:
        cache_stats = cache.stats()
        try:
            store_stats = cache.store_db.stat()
        except Exception:  # a closing store: report what is known
            store_stats = None
    rows = rt.ledger.rows()
    return State(ready=cache is not None, embedder=cache.embedder.name if cache else "",
                 cache=cache_stats, store=store_stats, counters=dataclasses.asdict(rt.counters),
                 ledger=rows, budgets=budget_status(rt.settings.budgets, rt.ledger,
                                                    {r.namespace for r in rows}))


async def metrics(request: web.Request) -> web.Response:
    """GET /metrics: Prometheus exposition (text format, or OpenMetrics when asked)."""
    require_admin(request)
    rt = request.app[RUNTIME]
    body, content_type = rt.metrics.render(request.headers.get("Accept"))
    return web.Response(body=body, headers={"Content-Type": content_type})


async def stats(request: web.Request) -> web.Response:
    """GET /semcache/stats: everything an operator wants on one page."""
    require_admin(request)
    rt = request.app[RUNTIME]
    namespace = _namespace_param(request.query.get("namespace"))
    state = _state(rt)
    cache: dict[str, Any] | None = None
    if state.cache is not None:
        cache = {**state.cache, **{k: v for k, v in (state.store or {}).items() if k != "entries"}}
    rows = [r for r in state.ledger if namespace is None or r.namespace == namespace]
    events = rt.feedback.events(namespace=namespace)
    return web.json_response({
        "version": _version, "ready": state.ready, "load_error": rt.load_error,
        "namespace": namespace, "cache": cache, "counters": state.counters,
        "ledger": {"totals": rt.ledger.totals(namespace), "rows": [r.as_dict() for r in rows]},
        "budgets": [b for b in state.budgets if namespace is None or b["namespace"] == namespace],
        "feedback": {"wrong": sum(r.wrong_hits for r in rows),
                     "correct": sum(r.correct_hits for r in rows), "recent_events": len(events)},
        "policy": _policy_view(rt, rt.cache) if rt.cache is not None else None,
        "shadow": rt.shadow.report(namespace) if rt.shadow else None,
        "settings": rt.settings.public(),
    })


# ------------------------------------------------------------------------ entries
def _page(cache: SemanticCache, after: int, limit: int, namespace: str | None,
          model: str | None) -> tuple[list[dict[str, Any]], int | None]:
    """Up to ``limit`` entries with id > ``after`` (default executor: an LMDB scan)."""
    out: list[dict[str, Any]] = []
    last: int | None = None
    with contextlib.closing(cache.store_db.iter_records(after + 1)) as records:
        for entry_id, record in records:
            if (namespace is not None and record.namespace != namespace) or \
                    (model is not None and record.model != model):
                continue
            if len(out) == limit:
                return out, last
            out.append(_entry_view(entry_id, record, cache.store_db.get_meta(entry_id),
                                   cache.pending_hits(entry_id), response=False))
            last = entry_id
    return out, None


async def list_entries(request: web.Request) -> web.Response:
    """GET /semcache/entries?namespace=&model=&limit=100&after=<id>: a page of entries in id
    order; ``next_after`` is the cursor for the next page (null on the last one)."""
    require_admin(request)
    rt = request.app[RUNTIME]
    cache = _cache(rt)
    q = request.query
    namespace = _namespace_param(q.get("namespace"))
    limit = _int_param(q.get("limit"), "limit", default=100, lo=1, hi=PAGE_MAX)
    after = _int_param(q.get("after"), "after", default=0, lo=0)
    assert limit is not None and after is not None
    model = q.get("model") or None
    entries, next_after = await _run(None, _page, cache, after, limit, namespace, model)
    return web.json_response({"entries": entries, "next_after": next_after})


async def get_entry(request: web.Request) -> web.Response:
    """GET /semcache/entries/{id}: one entry with its stored response."""
    require_admin(request)
    cache = _cache(request.app[RUNTIME])
    entry_id = _entry_id(request)
    record = cache.store_db.get(entry_id)
    if record is None:
        raise NotFoundError(f"entry {entry_id} not found (never stored, or evicted, expired "
                            "or deleted)")
    return web.json_response(_entry_view(entry_id, record, cache.store_db.get_meta(entry_id),
                                         cache.pending_hits(entry_id), response=True))


async def delete_entry(request: web.Request) -> web.Response:
    """DELETE /semcache/entries/{id}: drop it from store and index."""
    require_admin(request)
    rt = request.app[RUNTIME]
    cache = _cache(rt)
    entry_id = _entry_id(request)
    if not await _run(rt.store_pool, cache.delete, entry_id):
        raise NotFoundError(f"entry {entry_id} not found (never stored, or evicted, expired "
                            "or deleted)")
    return web.json_response({"deleted": True, "id": entry_id})


# --------------------------------------------------------------------- invalidate
def _select(cache: SemanticCache, ids: list[int] | None, namespace: str | None,
            model: str | None, endpoint: str | None, vector: np.ndarray | None,
            threshold: float) -> list[dict[str, Any]]:
    """Entries matching every given filter (default executor: an LMDB scan)."""
    rows: Generator[tuple[int, EntryRecord, np.ndarray | None], None, None]
    if ids is not None:
        def by_id() -> Generator[tuple[int, EntryRecord, np.ndarray | None], None, None]:
            for entry_id in ids:
                record = cache.store_db.get(entry_id)
                if record is not None:
                    yield entry_id, record, (cache.store_db.get_vector(entry_id)
                                             if vector is not None else None)
        rows = by_id()
    elif vector is not None:
        rows = cache.store_db.iter_records_with_vectors()
    else:
        rows = ((i, r, None) for i, r in cache.store_db.iter_records())
    chosen: list[dict[str, Any]] = []
    with contextlib.closing(rows):
        for entry_id, record, vec in rows:
            if ((namespace is not None and record.namespace != namespace)
                    or (model is not None and record.model != model)
                    or (endpoint is not None and record.endpoint != endpoint)):
                continue
            similarity = None
            if vector is not None:
                if vec is None:
                    continue  # exact-only entries have no meaning to compare
                similarity = float(np.dot(vec, vector))
                if similarity < threshold:
                    continue
            chosen.append({"id": entry_id, "namespace": record.namespace, "model": record.model,
                           "text": record.text, "similarity": similarity})
    return chosen


async def invalidate(request: web.Request) -> web.Response:
    """POST /semcache/invalidate: drop the entries matching every given selector.

    Body: ``namespace``, ``entry_id``/``entry_ids``, ``query`` (+ ``threshold``, default
    the server's), ``model``, ``endpoint``, ``all`` (true: every entry), ``dry_run``.
    ``query`` compares with every entry of every scope (any endpoint, model, parameters,
    conversation) in the selected namespace(s); without ``namespace`` it reaches all
    namespaces.  At least one selector is required.
    """
    require_admin(request)
    rt = request.app[RUNTIME]
    cache = _cache(rt)
    body = await _json_body(request)
    known = {"namespace", "entry_id", "entry_ids", "query", "threshold", "model", "endpoint",
             "all", "dry_run"}
    unknown = sorted(set(body) - known)
    if unknown:
        raise InvalidRequestError(unknown[0], body[unknown[0]],
                                  f"is not an invalidate field (known: {', '.join(sorted(known))})")
    namespace = _namespace_param(body.get("namespace"))
    ids: list[int] | None = None
    if body.get("entry_id") is not None:
        ids = [_int_param(body["entry_id"], "entry_id", default=None, lo=1) or 0]
    if body.get("entry_ids") is not None:
        raw = body["entry_ids"]
        if not isinstance(raw, list):
            raise InvalidRequestError("entry_ids", raw, "must be an array of entry ids")
        ids = (ids or []) + [_int_param(v, "entry_ids", default=None, lo=1) or 0 for v in raw]
    query = body.get("query")
    if query is not None and (not isinstance(query, str) or not query.strip()):
        raise InvalidRequestError("query", query, "must be non-empty text")
    threshold = body.get("threshold", rt.settings.threshold if query is not None else None)
    if threshold is not None:
        if query is None:
            raise InvalidRequestError("threshold", threshold, "only applies with a query")
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) \
                or not 0.0 < threshold <= 1.0:
            raise InvalidRequestError("threshold", threshold, "must be a number in (0, 1]")
    model, endpoint = body.get("model"), body.get("endpoint")
    for name, value in (("model", model), ("endpoint", endpoint)):
        if value is not None and (not isinstance(value, str) or not value):
            raise InvalidRequestError(name, value, "must be a non-empty string")
    everything = body.get("all") is True
    if ids is None and namespace is None and query is None and model is None \
            and endpoint is None and not everything:
        raise InvalidRequestError(
            "body", body, "name what to invalidate: namespace, entry_id(s), query (+ threshold), "
            "model, endpoint, or all: true")
    vector = None
    if query is not None:
        vector = await _run(rt.lookup_pool, cache.embed, query.strip())
    chosen = await _run(None, _select, cache, ids, namespace, model, endpoint, vector,
                        float(threshold or 0.0))
    dry_run = body.get("dry_run") is True
    deleted: list[int] = []
    if not dry_run and chosen:
        deleted = await _run(rt.store_pool, cache.delete_many, [c["id"] for c in chosen])
    return web.json_response({"dry_run": dry_run, "matched": len(chosen), "deleted": len(deleted),
                              "ids": deleted if not dry_run else [c["id"] for c in chosen],
                              "entries": chosen})


# ----------------------------------------------------------------------- feedback
async def feedback(request: web.Request) -> web.Response:
    """POST /semcache/feedback ``{"entry_id": N, "correct": false, "similarity": 0.93}``.

    ``correct: false`` drops the entry (it will not be served again) and counts a wrong
    hit; ``correct: true`` counts a right one.  ``similarity`` is optional (the client saw
    it in ``X-Semcache-Similarity``); otherwise the sidecar's memory of the hit is used.
    404 when the entry is unknown both to the store and to that memory.
    """
    require_admin(request)
    rt = request.app[RUNTIME]
    cache = _cache(rt)
    body = await _json_body(request)
    entry_id = _int_param(body.get("entry_id"), "entry_id", default=None, lo=1)
    if entry_id is None:
        raise InvalidRequestError("entry_id", None, "is required (the X-Semcache-Entry of the hit)")
    correct = body.get("correct")
    if not isinstance(correct, bool):
        raise InvalidRequestError("correct", correct, "must be true or false")
    similarity = body.get("similarity")
    if similarity is not None and (isinstance(similarity, bool) or not isinstance(similarity, (int, float))
                                   or not -1.0 <= similarity <= 1.0):
        raise InvalidRequestError("similarity", similarity, "must be a number in [-1, 1]")
    record = cache.store_db.get(entry_id)
    served = rt.feedback.served(entry_id)
    if record is None and served is None:
        raise NotFoundError(f"entry {entry_id} not found (never stored, or evicted, expired or "
                            "deleted, and not served recently)")
    namespace = record.namespace if record is not None else served.namespace  # type: ignore[union-attr]
    model = record.model if record is not None else served.model  # type: ignore[union-attr]
    deleted = False
    if not correct and record is not None:
        deleted = await _run(rt.store_pool, cache.delete, entry_id)
    if similarity is None and served is not None:
        similarity = served.similarity
    rt.ledger.feedback(namespace, model, correct)
    if served is not None and served.observation is not None:
        # the policy trains on it (never calibrates: reported hits are not a fair sample)
        cache.policy.record(Outcome(served.observation, correct, 1.0, "feedback", entry_id))
        rt.metrics.outcomes.labels("feedback", "right" if correct else "wrong").inc()
    event = FeedbackEvent(at=time.time(), entry_id=entry_id, namespace=namespace, model=model,
                          correct=correct, similarity=float(similarity) if similarity is not None else None,
                          match=served.match if served is not None else None, deleted=deleted)
    rt.feedback.record(event)
    return web.json_response(event.as_dict())


async def feedback_events(request: web.Request) -> web.Response:
    """GET /semcache/feedback?namespace=&limit=100: the most recent verdicts, oldest first."""
    require_admin(request)
    rt = request.app[RUNTIME]
    namespace = _namespace_param(request.query.get("namespace"))
    limit = _int_param(request.query.get("limit"), "limit", default=100, lo=1, hi=10_000)
    return web.json_response({"events": [e.as_dict() for e in rt.feedback.events(limit, namespace)]})


# ------------------------------------------------------------------ answer quality
def _policy_view(rt: Runtime, cache: SemanticCache) -> dict[str, Any]:
    return {**cache.policy.state(), "explore_rate": rt.settings.explore_rate,
            "explored": rt.counters.explored,
            "verifier": rt.verifier.stats() if rt.verifier is not None else None}


async def policy(request: web.Request) -> web.Response:
    """GET /semcache/policy: the adaptive policy's state — outcomes by source, the fitted
    scorer, whether its calibration is active, the similarity it serves from."""
    require_admin(request)
    rt = request.app[RUNTIME]
    return web.json_response(_policy_view(rt, _cache(rt)))


async def update_policy(request: web.Request) -> web.Response:
    """POST /semcache/policy ``{"refit": true, "learning": false}``: refit now (waits for
    it), and/or stop or resume learning (exploration and outcome recording)."""
    require_admin(request)
    rt = request.app[RUNTIME]
    cache = _cache(rt)
    body = await _json_body(request)
    unknown = sorted(set(body) - {"refit", "learning"})
    if unknown:
        raise InvalidRequestError(unknown[0], body[unknown[0]],
                                  "is not a policy field (known: learning, refit)")
    for name in ("refit", "learning"):
        if name in body and not isinstance(body[name], bool):
            raise InvalidRequestError(name, body[name], "must be true or false")
    if body.get("learning") is not None:
        if body["learning"] and cache.policy.mode != "adaptive":
            raise InvalidRequestError("learning", True, "needs policy=adaptive (it is static)")
        cache.policy.learning = body["learning"]
    if body.get("refit"):
        if cache.policy.mode != "adaptive":
            raise InvalidRequestError("refit", True, "needs policy=adaptive (it is static)")
        await _run(rt.store_pool, cache.policy.flush)
        await _run(rt.learn_pool, cache.policy.refit)
        rt.last_refit = time.time()
    return web.json_response(_policy_view(rt, cache))


async def shadow_report(request: web.Request) -> web.Response:
    """GET /semcache/shadow?namespace=: would-be hit and wrong-hit rates of the shadowed
    namespaces since the sidecar started."""
    require_admin(request)
    rt = request.app[RUNTIME]
    return web.json_response(rt.shadow.report(_namespace_param(request.query.get("namespace"))))


async def set_shadow(request: web.Request) -> web.Response:
    """POST /semcache/shadow ``{"namespaces": ["team-a"]}``: shadow exactly these from now
    on (``["*"]``: all, ``[]``: none; until restart, when the ``shadow`` setting applies
    again).  Answers the report."""
    require_admin(request)
    rt = request.app[RUNTIME]
    body = await _json_body(request)
    unknown = sorted(set(body) - {"namespaces"})
    if unknown:
        raise InvalidRequestError(unknown[0], body[unknown[0]],
                                  "is not a shadow field (known: namespaces)")
    names = body.get("namespaces")
    if not isinstance(names, list) or not all(isinstance(n, str) and n.strip() for n in names):
        raise InvalidRequestError("namespaces", names, "must be an array of namespace names")
    rt.shadow.set(names)
    return web.json_response(rt.shadow.report())


# ------------------------------------------------------------------ export/import
def _export_page(cache: SemanticCache, after: int, namespace: str | None,
                 now: float) -> tuple[list[str], int | None]:
    lines: list[str] = []
    last: int | None = None
    with contextlib.closing(cache.store_db.iter_records(after + 1)) as records:
        for entry_id, record in records:
            last = entry_id
            if namespace is not None and record.namespace != namespace:
                continue
            if record.expires is not None and record.expires <= now:
                continue
            lines.append(entry_line(entry_id, record, cache.store_db.get_meta(entry_id)))
            if len(lines) >= EXPORT_PAGE:
                return lines, last
    return lines, None


async def export(request: web.Request) -> web.StreamResponse:
    """GET /semcache/export?namespace=: the live entries as JSONL, streamed page by page."""
    require_admin(request)
    rt = request.app[RUNTIME]
    cache = _cache(rt)
    namespace = _namespace_param(request.query.get("namespace"))
    now = time.time()
    resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson; charset=utf-8"})
    await resp.prepare(request)
    await resp.write(header_line(embedder=cache.embedder.name, dim=cache.embedder.dim,
                                 salt=cache.salt, exported_at=now,
                                 count=len(cache) if namespace is None else None,
                                 namespace=namespace).encode("utf-8"))
    after: int | None = 0
    while after is not None:
        lines, after = await _run(None, _export_page, cache, after, namespace, now)
        if lines:
            await resp.write("".join(lines).encode("utf-8"))
    await resp.write_eof()
    return resp


def parse_export(text: str, first_line: int = 1) -> tuple[ExportHeader | None, list[ImportedEntry]]:
    """Parse a whole JSONL export (or part of one starting at line ``first_line``).

    Raises :class:`InvalidRequestError` naming the first bad line; nothing is imported then.
    """
    header: ExportHeader | None = None
    entries: list[ImportedEntry] = []
    for offset, line in enumerate(text.splitlines()):
        item = parse_line(line, first_line + offset)
        if isinstance(item, ExportHeader):
            header = item
        elif item is not None:
            entries.append(item)
    return header, entries


async def import_(request: web.Request) -> web.Response:
    """POST /semcache/import?first_line=1: JSONL lines of an export (the header line may
    lead).  Every line is checked before anything is stored; a bad one answers 400 naming
    its line number (counted from ``first_line``).  Entries are re-embedded with this
    sidecar's model and keep their keys, namespace, times and answer; expired ones are
    skipped.  A header whose salt differs from this store's is adopted when the store is
    empty; otherwise entries of key-derived namespaces are skipped (their digests could
    never match a request here)."""
    require_admin(request)
    rt = request.app[RUNTIME]
    cache = _cache(rt)
    first_line = _int_param(request.query.get("first_line"), "first_line", default=1, lo=1)
    assert first_line is not None
    raw = await read_body(request, IMPORT_MAX_BYTES)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequestError("body", raw[:40], f"is not UTF-8 ({exc})") from None
    header, entries = parse_export(text, first_line)
    adopted = False
    if header is not None and header.salt is not None and header.salt != cache.salt:
        adopted = await _run(rt.store_pool, cache.store_db.adopt_salt, header.salt)
    foreign_keys = header is not None and header.salt is not None and header.salt != cache.salt
    now = time.time()
    live: list[EntryRecord] = []
    expired = skipped = 0
    for item in entries:
        rec = item.record
        if rec.expires is not None and rec.expires <= now:
            expired += 1
        elif foreign_keys and rec.namespace.startswith("key:"):
            skipped += 1
        else:
            live.append(rec)
    imported = 0
    for start in range(0, len(live), IMPORT_BATCH):
        batch = live[start:start + IMPORT_BATCH]
        vectors = await _run(rt.lookup_pool, cache.embed_many, [r.text for r in batch if r.text])
        imported += len(await _run(rt.store_pool, cache.restore_many, batch, vectors))
    return web.json_response({"imported": imported, "expired": expired,
                              "skipped_foreign_keys": skipped, "salt_adopted": adopted,
                              "entries": len(entries)})


def add_routes(app: web.Application) -> None:
    """Register the operator API and ``/metrics`` (and bind the metrics to the state)."""
    rt = app[RUNTIME]
    rt.metrics.bind(lambda: _state(rt))
    r = app.router
    r.add_get("/metrics", metrics)
    r.add_get("/semcache/stats", stats)
    r.add_get("/semcache/entries", list_entries)
    r.add_get("/semcache/entries/{id}", get_entry)
    r.add_delete("/semcache/entries/{id}", delete_entry)
    r.add_post("/semcache/invalidate", invalidate)
    r.add_post("/semcache/feedback", feedback)
    r.add_get("/semcache/feedback", feedback_events)
    r.add_get("/semcache/policy", policy)
    r.add_post("/semcache/policy", update_policy)
    r.add_get("/semcache/shadow", shadow_report)
    r.add_post("/semcache/shadow", set_shadow)
    r.add_get("/semcache/export", export)
    r.add_post("/semcache/import", import_)
