"""What the proxy tells the operator surface: one call per event on the request path.

The proxy (:mod:`semcache.web_proxy`) calls :func:`on_lookup` after a lookup,
:func:`on_hit` when it answers from the cache, and for requests that go upstream makes a
:class:`Charge`: :meth:`Charge.begin` refuses a namespace over its budget (429) and
counts the request, :meth:`Charge.settle` counts the upstream's answer.  They update
the Prometheus instruments, the spend ledger (in memory; flushed by the maintenance
task) and the feedback log's memory of served hits.  Event-loop only; no I/O.

Tokens come from the answer's ``usage``.  When there is none (a stream whose client did
not ask for ``stream_options.include_usage``, or a stored answer from such a stream)
they are estimated at four characters a token from the request's messages and the
answer's text, and counted as estimated.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from .budgets import check_budget
from .errors import BudgetExceededError, InvalidRequestError
from .features import Observation
from .feedback import ServedHit
from .keys import EMBEDDINGS, NAMESPACE_HEADER, CacheRequest, derive_namespace
from .web_runtime import Runtime

__all__ = ["on_lookup", "on_hit", "Charge", "estimate_tokens"]


def estimate_tokens(text: str) -> int:
    """Rough token count of ``text``: four characters a token (0 for no text)."""
    return (len(text) + 3) // 4


def _prompt_text(body: Any) -> str:
    if not isinstance(body, Mapping):
        return ""
    if "messages" in body and isinstance(body["messages"], list):
        return "".join(json.dumps(m.get("content", ""), ensure_ascii=False) + "    "
                       for m in body["messages"] if isinstance(m, Mapping))
    for key in ("prompt", "input"):
        value = body.get(key)
        if isinstance(value, str):
            return value
        if value is not None:
            return json.dumps(value, ensure_ascii=False)
    return ""


def _answer_text(answer: Mapping[str, Any]) -> str:
    parts: list[str] = []
    for choice in answer.get("choices") or []:
        if not isinstance(choice, Mapping):
            continue
        message = choice.get("message")
        if isinstance(message, Mapping):
            parts.append(str(message.get("content") or ""))
            if message.get("tool_calls"):
                parts.append(json.dumps(message["tool_calls"], ensure_ascii=False))
        else:
            parts.append(str(choice.get("text") or ""))
    return "".join(parts)


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def usage_of(body: Any, answer: Mapping[str, Any], endpoint: str) -> tuple[int, int, bool]:
    """``(prompt_tokens, completion_tokens, estimated)`` of an answer to request ``body``."""
    usage = answer.get("usage")
    if isinstance(usage, Mapping) and ("prompt_tokens" in usage or "completion_tokens" in usage):
        return _int(usage.get("prompt_tokens")), _int(usage.get("completion_tokens")), False
    completion = 0 if endpoint == EMBEDDINGS else estimate_tokens(_answer_text(answer))
    return estimate_tokens(_prompt_text(body)), completion, True


def on_lookup(rt: Runtime, endpoint: str, seconds: float) -> None:
    """A lookup (exact, then semantic) took ``seconds``."""
    rt.metrics.lookup_seconds.labels(endpoint).observe(seconds)


def on_hit(rt: Runtime, creq: CacheRequest, body: Any, answer: Mapping[str, Any], match: str,
           similarity: float, entry_id: int | None, observation: Observation | None = None) -> None:
    """A request answered from the cache (``match``: exact, semantic or coalesced);
    ``observation`` is the semantic candidate's (feedback on the hit teaches the policy)."""
    rt.metrics.requests.labels(creq.endpoint, "hit", match).inc()
    if match == "semantic":
        rt.metrics.similarity.observe(float(similarity))
    prompt, completion, estimated = usage_of(body, answer, creq.endpoint)
    rt.ledger.hit(creq.namespace, creq.model, prompt, completion, estimated=estimated)
    if entry_id is not None:
        rt.feedback.remember(entry_id, ServedHit(creq.namespace, creq.model, match,
                                                 float(similarity), time.time(), observation))


class Charge:
    """Accounting of one request that goes upstream (a miss or a bypass)."""

    def __init__(self, rt: Runtime, request: web.Request, creq: CacheRequest | None,
                 body: Any) -> None:
        self.rt = rt
        self.endpoint = request.path
        self.body = body
        self.settled = False
        if creq is not None:
            self.namespace: str | None = creq.namespace
            self.model = creq.model
        else:  # the cache is still loading: only an explicit namespace is known
            self.namespace = _explicit_namespace(request)
            model = body.get("model") if isinstance(body, Mapping) else None
            self.model = model if isinstance(model, str) and model else "unknown"

    def begin(self, status: str) -> None:
        """Count the request as ``status`` (miss/bypass); raises
        :class:`BudgetExceededError` (429) when its namespace is over a daily budget."""
        rt = self.rt
        if self.namespace is not None and rt.settings.budgets:
            try:
                check_budget(rt.settings.budgets, rt.ledger, self.namespace)
            except BudgetExceededError:
                rt.metrics.requests.labels(self.endpoint, "refused", "none").inc()
                rt.ledger.refused(self.namespace, self.model)
                raise
        rt.metrics.requests.labels(self.endpoint, status, "none").inc()

    def settle(self, status: int, answer: Any) -> None:
        """Count the upstream's answer (once): tokens and price when ``answer`` is a
        JSON object (complete or, for a broken stream, what arrived), else an error."""
        if self.settled or self.namespace is None:
            return
        self.settled = True
        if isinstance(answer, Mapping) and status < 400:
            prompt, completion, estimated = usage_of(self.body, answer, self.endpoint)
            self.rt.ledger.upstream(self.namespace, self.model, prompt, completion,
                                    estimated=estimated)
        elif status >= 400:
            self.rt.ledger.upstream_error(self.namespace, self.model)
        else:  # a 200 whose body is not JSON: billed, but by how much is unknown
            self.rt.ledger.upstream(self.namespace, self.model, estimate_tokens(_prompt_text(self.body)),
                                    0, estimated=True)


def _explicit_namespace(request: web.Request) -> str | None:
    explicit = request.headers.get(NAMESPACE_HEADER)
    if explicit is None:
        return None
    try:
        return derive_namespace(explicit, None, b"")
    except InvalidRequestError:
        return None
