"""A small OpenAI-compatible model router for tests, demos and benchmarks.

It answers ``/v1/chat/completions``, ``/v1/completions`` (both with ``stream``),
``/v1/embeddings`` and ``/v1/models`` deterministically: the same request text gives the
same answer, different texts give different answers, and ``usage`` counts tokens the way
a real router would (about four characters a token).  It counts the calls it receives so
tests can tell cache hits from upstream calls.

Behaviour can be steered per request with headers (or for every request with
:class:`FakeConfig`):

* ``X-Fake-Latency: <seconds>`` — wait before answering;
* ``X-Fake-Fault: <kind>`` — ``500``/``429``/``503`` (error status in the OpenAI error
  shape), ``break`` (a stream that stops mid-way without ``[DONE]``, or a non-stream body
  cut short), ``hang`` (never answers), ``length`` (finish reason ``length``),
  ``tool_calls`` (finish reason ``tool_calls``), ``garbage`` (200 with a non-JSON body);
* ``X-Fake-Answer: <text>`` — answer this text instead of the derived one.

``answer_for`` decides the answer text; benchmarks replace it (e.g. answers by label).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

__all__ = ["FakeConfig", "FakeStats", "make_fake_app", "answer_text", "count_tokens", "STATS"]


def count_tokens(text: str) -> int:
    """Rough token count of ``text`` (4 characters a token, at least 1)."""
    return max(1, (len(text) + 3) // 4)


def answer_text(prompt: str) -> str:
    """The default deterministic answer for a prompt."""
    tag = hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:12]
    return f"Answer {tag}: a deterministic reply to {prompt[:60]!r}."


@dataclass
class FakeConfig:
    """Defaults applied to every request (headers override per request)."""

    latency: float = 0.0
    fault: str | None = None
    answer_for: Callable[[str, dict[str, Any]], str] = lambda prompt, body: answer_text(prompt)
    chunk_chars: int = 12
    chunk_delay: float = 0.0


@dataclass
class FakeStats:
    """Calls received, by path; and the Authorization values seen (for leak tests)."""

    calls: Counter[str] = field(default_factory=Counter)
    bodies: list[dict[str, Any]] = field(default_factory=list)
    authorizations: list[str | None] = field(default_factory=list)

    def total(self, path: str | None = None) -> int:
        return self.calls[path] if path else sum(self.calls.values())

    def reset(self) -> None:
        self.calls.clear()
        self.bodies.clear()
        self.authorizations.clear()


STATS: web.AppKey[FakeStats] = web.AppKey("fake_stats", FakeStats)
CONFIG: web.AppKey[FakeConfig] = web.AppKey("fake_config", FakeConfig)


def _error(status: int, message: str, etype: str) -> web.Response:
    return web.json_response({"error": {"message": message, "type": etype, "code": str(status)}},
                             status=status)


def _prompt_of(path: str, body: dict[str, Any]) -> str:
    if path.endswith("/chat/completions"):
        messages = body.get("messages") or []
        for msg in reversed(messages):
            if isinstance(msg, dict) and msg.get("role") == "user":
                content = msg.get("content")
                if isinstance(content, list):
                    return "\n".join(p.get("text", "") for p in content if isinstance(p, dict))
                return str(content or "")
        return ""
    prompt = body.get("prompt", "")
    return prompt if isinstance(prompt, str) else json.dumps(prompt)


def _context_tokens(body: dict[str, Any]) -> int:
    if "messages" in body:
        return sum(count_tokens(json.dumps(m.get("content", ""))) + 4
                   for m in body["messages"] if isinstance(m, dict))
    return count_tokens(_prompt_of("/v1/completions", body))


async def _completion(request: web.Request) -> web.StreamResponse:
    app, path = request.app, request.path
    stats, cfg = app[STATS], app[CONFIG]
    stats.calls[path] += 1
    stats.authorizations.append(request.headers.get("Authorization"))
    try:
        body = await request.json()
    except json.JSONDecodeError:
        return _error(400, "body is not JSON", "invalid_request_error")
    stats.bodies.append(body)
    fault = request.headers.get("X-Fake-Fault", cfg.fault or "")
    latency = float(request.headers.get("X-Fake-Latency", cfg.latency))
    if latency > 0:
        await asyncio.sleep(latency)
    if fault == "hang":
        await asyncio.sleep(3600)
    if fault in ("500", "429", "503"):
        return _error(int(fault), f"fake upstream fault {fault}", "server_error"
                      if fault != "429" else "rate_limit_error")
    if fault == "garbage":
        return web.Response(text="<html>not json</html>", content_type="text/html")

    chat = path.endswith("/chat/completions")
    prompt = _prompt_of(path, body)
    text = request.headers.get("X-Fake-Answer") or cfg.answer_for(prompt, body)
    model = str(body.get("model", "fake-model"))
    finish = {"length": "length", "tool_calls": "tool_calls"}.get(fault, "stop")
    tool_calls = None
    if finish == "tool_calls":
        tool_calls = [{"id": "call_" + hashlib.sha256(text.encode()).hexdigest()[:8],
                       "type": "function",
                       "function": {"name": "lookup", "arguments": json.dumps({"q": prompt})}}]
    usage = {"prompt_tokens": _context_tokens(body), "completion_tokens": count_tokens(text)}
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    ident = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
    created = int(time.time())
    n = int(body.get("n") or 1)

    if not body.get("stream"):
        if chat:
            message: dict[str, Any] = {"role": "assistant", "content": None if tool_calls else text}
            if tool_calls:
                message["tool_calls"] = tool_calls
            choices = [{"index": i, "message": message, "logprobs": None, "finish_reason": finish}
                       for i in range(n)]
        else:
            choices = [{"index": i, "text": text, "logprobs": None, "finish_reason": finish}
                       for i in range(n)]
        doc = {"id": ident, "object": "chat.completion" if chat else "text_completion",
               "created": created, "model": model, "choices": choices, "usage": usage,
               "system_fingerprint": "fp_fake"}
        raw = json.dumps(doc).encode()
        if fault == "break":
            resp = web.StreamResponse(headers={"Content-Type": "application/json",
                                               "Content-Length": str(len(raw))})
            await resp.prepare(request)
            await resp.write(raw[: len(raw) // 2])
            assert request.transport is not None
            request.transport.close()
            return resp
        return web.Response(body=raw, content_type="application/json")

    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                       "Cache-Control": "no-cache"})
    await resp.prepare(request)
    obj = "chat.completion.chunk" if chat else "text_completion"

    async def send(choice: dict[str, Any], extra: dict[str, Any] | None = None) -> None:
        doc = {"id": ident, "object": obj, "created": created, "model": model,
               "system_fingerprint": "fp_fake", "choices": [choice], **(extra or {})}
        await resp.write(b"data: " + json.dumps(doc).encode() + b"\n\n")

    pieces = [text[i:i + cfg.chunk_chars] for i in range(0, len(text), cfg.chunk_chars)] or [""]
    if chat:
        await send({"index": 0, "delta": {"role": "assistant", "content": ""},
                    "finish_reason": None})
    for k, piece in enumerate(pieces):
        if fault == "break" and k >= max(1, len(pieces) // 2):
            assert request.transport is not None
            request.transport.close()  # the router dies mid-answer
            return resp
        if tool_calls and chat:
            break
        delta = {"content": piece} if chat else None
        await send({"index": 0, "delta": delta, "finish_reason": None} if chat else
                   {"index": 0, "text": piece, "logprobs": None, "finish_reason": None})
        if cfg.chunk_delay:
            await asyncio.sleep(cfg.chunk_delay)
    if tool_calls and chat:
        call = tool_calls[0]
        await send({"index": 0, "delta": {"tool_calls": [{"index": 0, **call}]},
                    "finish_reason": None})
    final = ({"index": 0, "delta": {}, "finish_reason": finish} if chat else
             {"index": 0, "text": "", "logprobs": None, "finish_reason": finish})
    await send(final)
    if (body.get("stream_options") or {}).get("include_usage"):
        doc = {"id": ident, "object": obj, "created": created, "model": model, "choices": [],
               "usage": usage}
        await resp.write(b"data: " + json.dumps(doc).encode() + b"\n\n")
    await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp


async def _embeddings(request: web.Request) -> web.Response:
    stats = request.app[STATS]
    stats.calls[request.path] += 1
    stats.authorizations.append(request.headers.get("Authorization"))
    body = await request.json()
    stats.bodies.append(body)
    inputs = body.get("input")
    items = inputs if isinstance(inputs, list) else [inputs]
    data = []
    for i, item in enumerate(items):
        seed = hashlib.sha256(json.dumps(item).encode()).digest()
        data.append({"object": "embedding", "index": i,
                     "embedding": [round((b - 128) / 128, 4) for b in seed[:8]]})
    tokens = sum(count_tokens(json.dumps(x)) for x in items)
    return web.json_response({"object": "list", "data": data, "model": body.get("model"),
                              "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


async def _models(request: web.Request) -> web.Response:
    request.app[STATS].calls[request.path] += 1
    return web.json_response({"object": "list", "data": [
        {"id": "fake-model", "object": "model", "created": 1700000000, "owned_by": "semcache"},
        {"id": "gpt-4o-mini", "object": "model", "created": 1700000000, "owned_by": "semcache"},
    ]})


async def _echo(request: web.Request) -> web.StreamResponse:
    """Any other /v1/* path: echo method, path, query, headers and body (passthrough tests)."""
    request.app[STATS].calls[request.path] += 1
    body = await request.read()
    resp = web.StreamResponse(status=201 if request.method == "POST" else 200,
                              headers={"Content-Type": "application/json",
                                       "X-Fake-Echo": "1"})
    await resp.prepare(request)
    doc = {"method": request.method, "path": request.path, "query": request.query_string,
           "headers": {k: v for k, v in request.headers.items()},
           "body": body.decode("utf-8", "replace")}
    raw = json.dumps(doc).encode()
    for i in range(0, len(raw), 64):  # several chunks: the proxy must stream them through
        await resp.write(raw[i:i + 64])
    await resp.write_eof()
    return resp


def make_fake_app(config: FakeConfig | None = None) -> web.Application:
    """The fake router as an aiohttp application; its counters are ``app[STATS]``."""
    app = web.Application(client_max_size=64 << 20)
    app[STATS] = FakeStats()
    app[CONFIG] = config or FakeConfig()
    app.router.add_post("/v1/chat/completions", _completion)
    app.router.add_post("/v1/completions", _completion)
    app.router.add_post("/v1/embeddings", _embeddings)
    app.router.add_get("/v1/models", _models)
    app.router.add_route("*", "/v1/{tail:.*}", _echo)
    return app


def run_fake(host: str = "127.0.0.1", port: int = 4000, latency: float = 0.0) -> None:
    """Serve the fake router until interrupted (``semcache fake-upstream``)."""
    web.run_app(make_fake_app(FakeConfig(latency=latency)), host=host, port=port,
                print=lambda *a: None, access_log=None)
