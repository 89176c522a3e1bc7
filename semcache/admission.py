"""Admission: which upstream answers may be stored (DESIGN §3).

Only complete, successful, single-choice answers are stored: HTTP 200, a parseable
body of the endpoint's shape, exactly one choice whose finish reason is ``stop``
(``tool_calls`` and ``length`` only when the operator allows them).  Errors, partial or
aborted streams and multi-choice answers are never stored.
"""

from __future__ import annotations

from typing import Any

from .keys import CHAT, COMPLETIONS, EMBEDDINGS
from .settings import Settings

__all__ = ["refusal"]


def refusal(endpoint: str, status: int, body: Any, settings: Settings) -> str | None:
    """Why the answer must not be stored, or None when it may be."""
    if status != 200:
        return f"status {status}"
    if not isinstance(body, dict):
        return "body is not a JSON object"
    if "error" in body:
        return "body carries an error"
    if endpoint == EMBEDDINGS:
        data = body.get("data")
        return None if isinstance(data, list) and data else "no embedding data"
    choices = body.get("choices")
    if not isinstance(choices, list) or len(choices) != 1 or not isinstance(choices[0], dict):
        return "not exactly one choice"
    choice = choices[0]
    finish = choice.get("finish_reason")
    allowed = {"stop"}
    if settings.cache_tool_calls:
        allowed.add("tool_calls")
    if settings.cache_truncated:
        allowed.add("length")
    if finish not in allowed:
        return f"finish_reason {finish!r}"
    if endpoint == CHAT:
        message = choice.get("message")
        if not isinstance(message, dict):
            return "no message"
        if message.get("content") is None and not message.get("tool_calls"):
            return "empty message"
    elif endpoint == COMPLETIONS and not isinstance(choice.get("text"), str):
        return "no text"
    return None
