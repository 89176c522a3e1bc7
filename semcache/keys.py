"""Cache keys: what must match exactly, what may match by meaning.

A :class:`CacheRequest` is the parsed, validated form of one OpenAI-style request body.
It carries three keys (DESIGN §1):

* ``scope`` — 32-byte digest of everything that must be *identical* for two requests to
  share an answer: namespace, endpoint, every body parameter that can change the output
  (unknown ones included), system prompts, the whole conversation around the last user
  turn, and any non-text parts (images, audio) of that turn.
* ``exact`` — 32-byte digest of the scope plus the last user turn's text, for exact repeats.
* ``semantic_text`` — the text of the last user turn only; what gets embedded.  ``None``
  when the request may only be served by exact match (embeddings, batched prompts).

Digests are SHA-256 over canonical JSON (sorted keys, no spaces, integral floats written
as integers), so they are the same across processes, Python versions and dict orders.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import InvalidRequestError

__all__ = [
    "CacheRequest",
    "ENDPOINTS",
    "canonical_json",
    "derive_namespace",
    "internal_namespace",
    "NAMESPACE_HEADER",
]

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
EMBEDDINGS = "/v1/embeddings"
ENDPOINTS = (CHAT, COMPLETIONS, EMBEDDINGS)

NAMESPACE_HEADER = "X-Semcache-Namespace"
_MAX_NAMESPACE = 128

# Body keys that change how an answer is delivered or billed, never what it says.
# Everything else, including keys unknown to us, is part of the scope.
_DELIVERY_ONLY = frozenset({"stream", "stream_options", "user", "metadata", "store"})


def _normalise(value: Any) -> Any:
    """Make JSON values canonical: integral floats become ints (``1.0`` == ``1``)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, Mapping):
        return {str(k): _normalise(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_normalise(v) for v in value]
    return value


def canonical_json(value: Any) -> bytes:
    """Deterministic UTF-8 JSON of ``value``: sorted keys, compact, normalised numbers."""
    return json.dumps(
        _normalise(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False,
        allow_nan=False,
    ).encode("utf-8")


def _digest(*parts: bytes) -> bytes:
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.digest()


def derive_namespace(
    explicit: str | None, authorization: str | None, salt: bytes, *, from_key: bool = True
) -> str:
    """The tenant namespace of a request.

    ``explicit`` (the ``X-Semcache-Namespace`` header) wins when given.  Otherwise, when
    ``from_key`` is on, a salted HMAC of the ``Authorization`` header value, so two API
    keys never share entries and the key itself is never stored; requests without a key
    share the namespace ``anonymous``.  Raises :class:`InvalidRequestError` for a
    namespace that is empty, too long or has control characters.
    """
    if explicit is not None:
        ns = explicit.strip()
        if not ns or len(ns) > _MAX_NAMESPACE or not ns.isprintable():
            raise InvalidRequestError(
                NAMESPACE_HEADER, explicit,
                f"must be 1-{_MAX_NAMESPACE} printable characters",
            )
        return "ns:" + ns
    if from_key and authorization:
        mac = hmac.new(salt, authorization.strip().encode("utf-8"), hashlib.sha256)
        return "key:" + mac.hexdigest()[:32]
    return "anonymous"


def internal_namespace(name: str) -> str:
    """The internal form of a namespace an operator names.

    ``ns:team-a``, ``key:<hmac>`` and ``anonymous`` are internal already; any other name
    is what a client sends in ``X-Semcache-Namespace`` (``team-a`` -> ``ns:team-a``).
    Raises :class:`InvalidRequestError` for a name that no request could carry.
    """
    name = name.strip()
    if name == "anonymous" or name.startswith(("ns:", "key:")):
        return name
    return derive_namespace(name, None, b"")


@dataclass(frozen=True, slots=True)
class CacheRequest:
    """One request as the cache sees it.  Build with :meth:`from_body`; immutable."""

    namespace: str
    endpoint: str
    model: str
    scope: bytes
    exact: bytes
    semantic_text: str | None
    stream: bool
    n: int

    @classmethod
    def from_body(cls, endpoint: str, body: Any, *, namespace: str = "anonymous") -> CacheRequest:
        """Validate an OpenAI request ``body`` for ``endpoint`` and compute its keys.

        Raises :class:`InvalidRequestError` naming the field for a body that is not an
        object, lacks ``model``/``messages``/``prompt``/``input``, or has wrong types.
        """
        if endpoint not in ENDPOINTS:
            raise InvalidRequestError("endpoint", endpoint, f"not one of {', '.join(ENDPOINTS)}")
        if not isinstance(body, Mapping):
            raise InvalidRequestError("body", type(body).__name__, "must be a JSON object")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise InvalidRequestError("model", model, "must be a non-empty string")
        stream = body.get("stream", False)
        if not isinstance(stream, bool) and stream is not None:
            raise InvalidRequestError("stream", stream, "must be a boolean")
        n = body.get("n", 1)
        if n is None:
            n = 1
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise InvalidRequestError("n", n, "must be a positive integer")

        text: str | None
        if endpoint == CHAT:
            context, turn, text = _split_chat(body.get("messages"))
            main_key = "messages"
        elif endpoint == COMPLETIONS:
            context, turn, text = _split_prompt(body.get("prompt"))
            main_key = "prompt"
        else:
            inp = body.get("input")
            if inp is None or inp == "" or inp == []:
                raise InvalidRequestError("input", inp, "is required")
            context, turn, text = None, inp, None
            main_key = "input"

        params = {k: v for k, v in body.items() if k != main_key and k not in _DELIVERY_ONLY}
        try:
            scope_doc = canonical_json(
                {"v": 1, "ns": namespace, "ep": endpoint, "params": params, "context": context}
            )
            turn_doc = canonical_json(turn)
        except (TypeError, ValueError) as exc:
            raise InvalidRequestError(
                "body", "non-JSON value", f"cannot be canonicalised: {exc}") from None
        scope = _digest(scope_doc)
        exact = _digest(scope, turn_doc)
        return cls(
            namespace=namespace, endpoint=endpoint, model=model, scope=scope, exact=exact,
            semantic_text=text if text and n == 1 else None, stream=bool(stream), n=n,
        )


def _text_of(content: Any, where: str) -> tuple[str, list[Any]]:
    """Split message content into its text and its non-text parts."""
    if content is None:
        return "", []
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        raise InvalidRequestError(where, content, "must be a string, an array of parts or null")
    texts: list[str] = []
    others: list[Any] = []
    for i, part in enumerate(content):
        if not isinstance(part, Mapping) or not isinstance(part.get("type"), str):
            raise InvalidRequestError(f"{where}[{i}]", part, "must be an object with a 'type'")
        if part["type"] == "text":
            if not isinstance(part.get("text"), str):
                raise InvalidRequestError(f"{where}[{i}].text", part.get("text"), "must be a string")
            texts.append(part["text"])
        else:
            others.append(part)
    return "\n".join(texts), others


def _split_chat(messages: Any) -> tuple[Any, Any, str]:
    """(context, last-user-turn document, last-user-turn text) of a chat request.

    The context is the whole conversation with the last user turn's text blanked out, so
    system prompts, earlier turns, later tool/assistant messages, the turn's position and
    its non-text parts all land in the scope.
    """
    if not isinstance(messages, list) or not messages:
        raise InvalidRequestError("messages", messages, "must be a non-empty array")
    last_user = -1
    for i, msg in enumerate(messages):
        if not isinstance(msg, Mapping):
            raise InvalidRequestError(f"messages[{i}]", msg, "must be an object")
        role = msg.get("role")
        if not isinstance(role, str) or not role:
            raise InvalidRequestError(f"messages[{i}].role", role, "must be a non-empty string")
        _text_of(msg.get("content"), f"messages[{i}].content")  # validates every message
        if role == "user":
            last_user = i
    if last_user < 0:
        return messages, None, ""
    turn = messages[last_user]
    text, others = _text_of(turn.get("content"), f"messages[{last_user}].content")
    blanked = {k: v for k, v in turn.items() if k != "content"}
    blanked["content_parts"] = others
    context = list(messages)
    context[last_user] = {"__last_user_turn__": blanked}
    return context, text, text.strip()


def _split_prompt(prompt: Any) -> tuple[Any, Any, str | None]:
    """(context, prompt document, semantic text) of a legacy completions request."""
    if isinstance(prompt, str):
        if not prompt:
            raise InvalidRequestError("prompt", prompt, "must not be empty")
        return None, prompt, prompt.strip()
    if isinstance(prompt, list) and prompt:
        if len(prompt) == 1 and isinstance(prompt[0], str) and prompt[0]:
            return None, prompt, prompt[0].strip()
        # batched prompts and token arrays: exact match only
        return None, prompt, None
    raise InvalidRequestError("prompt", prompt, "must be a non-empty string or array")
