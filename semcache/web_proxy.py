"""The proxy handlers: cached endpoints and verbatim passthrough (DESIGN §2-3).

Cached endpoints (``/v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings``):

    read body (limit) -> parse -> controls -> keys -> exact lookup -> semantic candidate
    (time budget, fail open) -> policy, shadow, exploration, verifier (web_quality) ->
    hit: replay | miss: coalesce -> upstream -> relay (streamed as it arrives) ->
    admission -> store, and judge a candidate that was not served, in the background

Every other ``/v1/*`` path is forwarded verbatim, streaming both ways, never cached.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import numpy as np
from aiohttp import web

from . import admission
from . import web_accounting as accounting
from . import web_quality as quality
from .cache import Candidate, Hit
from .coalesce import Flight
from .errors import InvalidRequestError, PayloadTooLargeError, UpstreamError, UpstreamTimeoutError
from .keys import CHAT, EMBEDDINGS, NAMESPACE_HEADER, CacheRequest
from .settings import Settings
from .sse import StreamAssembler, replay_events
from .upstream import response_headers
from .web_runtime import RUNTIME, Runtime

__all__ = ["cached_endpoint", "passthrough", "Controls"]

log = logging.getLogger("semcache.web")

STATUS = "X-Semcache-Status"


@dataclass(frozen=True)
class Controls:
    """The request's cache controls, parsed from its headers (DESIGN §2)."""

    no_cache: bool = False
    no_store: bool = False
    threshold: float | None = None
    namespace: str | None = None
    ttl: float | None = None
    max_wrong_rate: float | None = None

    @property
    def own_rule(self) -> bool:
        """The request chose its own serving rule (threshold or error bound)."""
        return self.threshold is not None or self.max_wrong_rate is not None

    @classmethod
    def from_headers(cls, headers: Mapping[str, str], settings: Settings) -> Controls:
        """Raises :class:`InvalidRequestError` naming the header for a bad value."""
        tokens = {t.strip().lower() for t in headers.get("Cache-Control", "").split(",")}
        threshold = _float_header(headers, "X-Semcache-Threshold")
        if threshold is not None:
            if not 0.0 < threshold <= 1.0:
                raise InvalidRequestError("X-Semcache-Threshold", threshold, "must be in (0, 1]")
            threshold = max(threshold, settings.threshold_floor)
        ttl = _float_header(headers, "X-Semcache-TTL")
        if ttl is not None and ttl <= 0:
            raise InvalidRequestError("X-Semcache-TTL", ttl, "must be a positive number of seconds")
        bound = _float_header(headers, "X-Semcache-Max-Wrong-Rate")
        if bound is not None:
            if not 0.0 <= bound <= 1.0:
                raise InvalidRequestError("X-Semcache-Max-Wrong-Rate", bound, "must be in [0, 1]")
            bound = min(bound, settings.wrong_rate_ceiling)  # requests may only be stricter
        return cls(no_cache="no-cache" in tokens, no_store="no-store" in tokens,
                   threshold=threshold, namespace=headers.get(NAMESPACE_HEADER), ttl=ttl,
                   max_wrong_rate=bound)


def _float_header(headers: Mapping[str, str], name: str) -> float | None:
    raw = headers.get(name)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise InvalidRequestError(name, raw, "must be a number") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise InvalidRequestError(name, raw, "must be a finite number")
    return value


async def read_body(request: web.Request, limit: int) -> bytes:
    """The whole request body, refusing more than ``limit`` bytes (413) early."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise PayloadTooLargeError(declared, limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(size, limit)
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json(raw: bytes) -> Any:
    if not raw.strip():
        raise InvalidRequestError("body", "", "is empty; expected a JSON object")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        snippet = raw[:40].decode("utf-8", "replace")
        raise InvalidRequestError("body", snippet, f"is not valid JSON ({exc})",
                                  code="invalid_json") from None


# ------------------------------------------------------------------------ lookup
def _search_before(deadline: float, rt: Runtime, creq: CacheRequest, controls: Controls,
                   vector: np.ndarray | None) -> Candidate | None:
    """Runs off the event loop (index search, embedding too when no batcher is given);
    skips work whose caller already gave up."""
    if time.monotonic() > deadline or rt.cache is None:
        return None
    return rt.cache.consider(creq, threshold=controls.threshold, vector=vector,
                             max_wrong_rate=controls.max_wrong_rate)


async def lookup(rt: Runtime, creq: CacheRequest, controls: Controls) -> Hit | Candidate | None:
    """The exact hit, else the semantic candidate with the policy's verdict (not yet
    served), within the time budget; any failure is a miss.

    The embedding goes through the micro-batcher, so concurrent lookups share forward
    passes; the index search then runs on the batcher's thread right after a pass that
    embedded this request alone, else on the lookup thread (never on the event loop).
    """
    cache = rt.cache
    assert cache is not None
    budget = rt.settings.lookup_timeout
    try:
        hit = cache.lookup_exact(creq)
        if hit is not None or not creq.semantic_text:
            return hit
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + budget
        text = creq.semantic_text

        async def semantic() -> Candidate | None:
            search = functools.partial(_search_before, deadline, rt, creq, controls)
            if rt.batcher is None:
                return await loop.run_in_executor(rt.lookup_pool, search, None)
            return await rt.batcher.embed_then(text, search, rt.lookup_pool)

        return await asyncio.wait_for(semantic(), budget)
    except asyncio.TimeoutError:
        rt.counters.lookup_timeouts += 1
        log.warning("lookup over its %.0f ms budget; forwarding uncached", budget * 1000)
    except Exception as exc:  # fail open: the cache never breaks a working upstream
        rt.counters.lookup_failures += 1
        log.warning("lookup failed (%s: %s); forwarding uncached", type(exc).__name__, exc)
    return None


# ------------------------------------------------------------------------ replay
def _fresh(body: dict[str, Any], endpoint: str) -> dict[str, Any]:
    if endpoint == EMBEDDINGS:
        return body
    prefix = "chatcmpl-" if endpoint == CHAT else "cmpl-"
    return {**body, "id": prefix + "sc" + uuid.uuid4().hex[:22], "created": int(time.time())}


async def respond_with_answer(
    request: web.Request, creq: CacheRequest, req_body: Mapping[str, Any],
    answer: dict[str, Any], headers: dict[str, str],
) -> web.StreamResponse:
    """Send a complete stored/shared answer, as JSON or as a replayed SSE stream."""
    body = _fresh(answer, creq.endpoint)
    if creq.stream and creq.endpoint != EMBEDDINGS:
        include_usage = bool((req_body.get("stream_options") or {}).get("include_usage"))
        resp = web.StreamResponse(headers={**headers, "Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache"})
        await resp.prepare(request)
        for event in replay_events(body, chat=creq.endpoint == CHAT, include_usage=include_usage):
            await resp.write(event)
        await resp.write_eof()
        return resp
    return web.json_response(body, headers=headers, dumps=_dumps)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def hit_headers(hit: Hit) -> dict[str, str]:
    return {STATUS: "hit", "X-Semcache-Match": hit.match,
            "X-Semcache-Similarity": f"{hit.similarity:.4f}",
            "X-Semcache-Entry": str(hit.entry_id), "X-Semcache-Age": str(int(hit.age()))}


# ------------------------------------------------------------------------ handler
async def cached_endpoint(request: web.Request) -> web.StreamResponse:
    """POST /v1/chat/completions, /v1/completions, /v1/embeddings."""
    rt = request.app[RUNTIME]
    rt.counters.requests += 1
    t0 = time.perf_counter()
    raw = await read_body(request, rt.settings.max_body_bytes)
    body = parse_json(raw)
    controls = Controls.from_headers(request.headers, rt.settings)
    cache = rt.cache
    if cache is None:  # still loading (or failed to load): plain proxy
        rt.counters.bypasses += 1
        return await forward(request, rt, raw, None, body, controls, None, "bypass", t0)
    namespace = cache.namespace(controls.namespace, request.headers.get("Authorization"))
    creq = CacheRequest.from_body(request.path, body, namespace=namespace)
    cacheable = creq.n == 1
    if not cacheable:
        rt.counters.bypasses += 1
        return await forward(request, rt, raw, creq, body, controls, None, "bypass", t0)
    if not controls.no_cache:
        started = time.perf_counter()
        found = await lookup(rt, creq, controls)  # embeddings: exact only
        accounting.on_lookup(rt, creq.endpoint, time.perf_counter() - started)
        shadowed = rt.shadow.covers(namespace)
        extra: dict[str, str] = {}
        probe: quality.Probe | None = None
        hit: Hit | None = found if isinstance(found, Hit) else None
        if isinstance(found, Candidate):
            decision = await quality.decide(rt, creq, found, own_rule=controls.own_rule,
                                            shadowed=shadowed)
            extra, probe = decision.headers, decision.probe
            if decision.serve:
                hit = cache.serve(found)
        elif shadowed:
            rt.shadow.looked_up(namespace, "exact" if hit is not None else None)
            extra = {"X-Semcache-Shadow": "would-hit" if hit is not None else "would-miss"}
            hit = None  # a shadowed namespace is always answered upstream
        if hit is not None:
            if hit.match == "exact":
                rt.counters.hits_exact += 1
            else:
                rt.counters.hits_semantic += 1
            answer = hit.json()
            accounting.on_hit(rt, creq, body, answer, hit.match, hit.similarity, hit.entry_id,
                              found.observation if isinstance(found, Candidate) else None)
            headers = {**hit_headers(hit), **extra, "Server-Timing": _timing(t0)}
            return await respond_with_answer(request, creq, body, answer, headers)
        pending = None if shadowed else rt.coalescer.pending(creq.exact)
        if pending is not None:
            shared = await asyncio.shield(pending)
            if shared is not None:
                rt.counters.hits_coalesced += 1
                accounting.on_hit(rt, creq, body, shared, "coalesced", 1.0, None)
                return await respond_with_answer(
                    request, creq, body, shared,
                    {STATUS: "hit", "X-Semcache-Match": "exact", "X-Semcache-Similarity": "1.0000",
                     "X-Semcache-Coalesced": "1", "X-Semcache-Age": "0",
                     "Server-Timing": _timing(t0)})
        flight = None if shadowed else rt.coalescer.begin(creq.exact)
        rt.counters.misses += 1
        try:
            return await forward(request, rt, raw, creq, body, controls, flight, "miss", t0,
                                 extra=extra, probe=probe)
        finally:
            if flight is not None:
                flight.publish(None)
                if not flight.held:
                    flight.finish()
    rt.counters.bypasses += 1
    return await forward(request, rt, raw, creq, body, controls, None, "bypass", t0)


def _timing(t0: float, upstream_start: float | None = None) -> str:
    """``Server-Timing`` value: time spent in semcache (and waiting for the upstream), ms."""
    now = time.perf_counter()
    if upstream_start is None:
        return f"cache;dur={(now - t0) * 1000:.3f}"
    return (f"cache;dur={(upstream_start - t0) * 1000:.3f}, "
            f"upstream;dur={(now - upstream_start) * 1000:.3f}")


async def forward(
    request: web.Request, rt: Runtime, raw: bytes, creq: CacheRequest | None,
    body: Any, controls: Controls, flight: Flight | None, status: str, t0: float, *,
    extra: Mapping[str, str] | None = None, probe: quality.Probe | None = None,
) -> web.StreamResponse:
    """Send the request upstream and relay the answer; store it when admissible, and
    judge ``probe`` (a candidate not served) against it.  ``extra``: headers to add.

    ``Server-Timing`` tells the time before the upstream call (semcache's overhead) and
    until the upstream's response headers arrived.
    """
    charge = accounting.Charge(rt, request, creq, body)
    charge.begin(status)  # a namespace over its budget gets 429 here
    wants_stream = bool(isinstance(body, dict) and body.get("stream"))
    upstream_start = time.perf_counter()
    upstream_resp = await rt.upstream.send(
        "POST", request.path, query=request.query_string, headers=request.headers, data=raw,
        streaming=wants_stream, identity=True)
    timing = _timing(t0, upstream_start)
    try:
        if upstream_resp.status >= 400:
            rt.counters.upstream_errors += 1
        ctype = upstream_resp.headers.get("Content-Type", "")
        headers = response_headers(upstream_resp.headers)
        headers.update(extra or {})
        headers[STATUS] = status
        headers["Server-Timing"] = timing
        if wants_stream and upstream_resp.status == 200 and "text/event-stream" in ctype:
            return await _relay_stream(request, rt, upstream_resp, creq, controls, flight, headers,
                                       charge, probe)
        try:
            data = await upstream_resp.read()
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            if isinstance(exc, asyncio.TimeoutError):
                raise UpstreamTimeoutError(f"upstream timed out sending {request.path}") from exc
            raise UpstreamError(f"upstream broke off its answer to {request.path}: "
                                f"{type(exc).__name__}") from exc
        resp = web.Response(body=data, status=upstream_resp.status,
                            reason=upstream_resp.reason, headers=headers)
        answer = None
        if upstream_resp.status == 200 and not upstream_resp.headers.get("Content-Encoding"):
            try:
                answer = json.loads(data)
            except ValueError:
                answer = None
        # accounting waits until aiohttp has written ``resp`` (the handler's task yields
        # only then): it is off the client's latency, and done before the next request
        asyncio.get_running_loop().call_soon(charge.settle, upstream_resp.status, answer)
        quality.judge(rt, probe, upstream_resp.status, answer)
        if creq is not None and not controls.no_store:
            _admit(rt, creq, upstream_resp.status, answer, controls, flight)
        return resp
    finally:
        upstream_resp.release()


async def _relay_stream(
    request: web.Request, rt: Runtime, upstream_resp: aiohttp.ClientResponse,
    creq: CacheRequest | None, controls: Controls, flight: Flight | None,
    headers: Any, charge: accounting.Charge, probe: quality.Probe | None,
) -> web.StreamResponse:
    """Relay SSE bytes as they arrive while assembling; store only a complete stream.

    A client that goes away mid-answer stops the relay and closes the upstream connection
    (routers that abort on disconnect then stop generating); nothing is stored unless the
    stream had already completed, as when a client hangs up right after ``[DONE]``.
    """
    out = web.StreamResponse(status=200, headers=headers)
    await out.prepare(request)
    assembler = StreamAssembler(chat=request.path == CHAT)
    client_gone = False
    try:
        async for chunk in upstream_resp.content.iter_any():
            assembler.feed(chunk)
            if not await _send(out, chunk):
                client_gone = True
                upstream_resp.close()  # drop the connection: no reading a dead answer
                break
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        # the upstream broke mid-answer: nothing is stored and the client sees the
        # stream break as it would without the cache
        log.warning("upstream stream for %s broke: %s", request.path, type(exc).__name__)
        rt.counters.upstream_errors += 1
        charge.settle(200, assembler.body())  # what arrived was billed all the same
        if request.transport is not None:
            request.transport.close()
        return out
    charge.settle(200, assembler.body())
    if not client_gone and not await _send(out, None):
        client_gone = True
    if client_gone:
        log.info("client left %s before the end of the stream", request.path)
    answer = assembler.body() if assembler.complete else None
    quality.judge(rt, probe, 200 if assembler.complete else 599, answer)
    if creq is not None and not controls.no_store:
        _admit(rt, creq, 200 if assembler.complete else 599, answer, controls, flight)
    return out


async def _send(out: web.StreamResponse, data: bytes | None) -> bool:
    """Write ``data`` (None: end the body) to the client; False when the client is gone."""
    try:
        if data is None:
            await out.write_eof()
        else:
            await out.write(data)
    except ConnectionResetError:  # aiohttp's ClientConnectionResetError included
        return False
    return True


def _admit(rt: Runtime, creq: CacheRequest, status: int, answer: Any, controls: Controls,
           flight: Flight | None) -> None:
    """Share an admissible answer with coalesced followers now, and store it in the
    background once the response has gone out (the store thread would otherwise compete
    with writing it for the interpreter)."""
    why = admission.refusal(creq.endpoint, status, answer, rt.settings)
    if why is not None:
        rt.counters.store_refusals += 1
        log.debug("not storing %s answer: %s", creq.endpoint, why)
        return
    if flight is not None:
        flight.publish(answer)
    cache = rt.cache
    if cache is None:
        return
    task = asyncio.get_running_loop().create_task(
        _store(rt, functools.partial(cache.store, creq, answer, ttl=controls.ttl)))
    rt.track(task)
    if flight is not None:
        flight.hold_until(task)  # identical requests keep waiting on the flight until stored

    def done(fut: asyncio.Future[Any]) -> None:
        exc = fut.exception() if not fut.cancelled() else None
        if exc is None:
            rt.counters.stores += 1
        elif isinstance(exc, InvalidRequestError):  # e.g. larger than max_bytes
            rt.counters.store_refusals += 1
            log.info("not storing %s answer: %s", creq.endpoint, exc)
        else:
            rt.counters.store_failures += 1
            log.warning("storing an answer failed (%s: %s)", type(exc).__name__, exc)

    task.add_done_callback(done)


async def _store(rt: Runtime, store: Callable[[], Any]) -> None:
    """``store()`` on the store thread.  A new task's first step runs after the task that
    made it yields, which for a handler is after aiohttp wrote its response."""
    await asyncio.get_running_loop().run_in_executor(rt.store_pool, store)


# ------------------------------------------------------------------ passthrough
async def passthrough(request: web.Request) -> web.StreamResponse:
    """Any other /v1/* request: forwarded verbatim, streamed both ways, never cached."""
    rt = request.app[RUNTIME]
    data = request.content.iter_any() if request.body_exists else None
    upstream_resp = await rt.upstream.send(
        request.method, request.path, query=request.query_string, headers=request.headers,
        data=data, streaming=True, identity=False)
    try:
        out = web.StreamResponse(status=upstream_resp.status, reason=upstream_resp.reason,
                                 headers=response_headers(upstream_resp.headers))
        await out.prepare(request)
        try:
            async for chunk in upstream_resp.content.iter_any():
                await out.write(chunk)
        except (aiohttp.ClientError, asyncio.TimeoutError):
            if request.transport is not None:
                request.transport.close()
            return out
        await out.write_eof()
        return out
    finally:
        upstream_resp.release()
