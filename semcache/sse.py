"""Server-sent events in the OpenAI chunk format: parse, assemble, replay.

:class:`StreamAssembler` is fed the upstream's raw SSE bytes as they arrive and builds
the complete answer (``chat.completion`` or ``text_completion``) the stream stands for.
:func:`replay_events` turns a complete answer back into chunk events ending in
``data: [DONE]``.  Both are pure (no I/O), so the proxy can relay bytes unchanged while
assembling on the side.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

__all__ = ["StreamAssembler", "replay_events", "DONE"]

DONE = b"data: [DONE]\n\n"


class StreamAssembler:
    """Accumulates one upstream stream.  ``complete`` is True only after ``[DONE]`` was
    seen following at least one chunk; ``body()`` is then the assembled answer."""

    def __init__(self, chat: bool) -> None:
        self.chat = chat
        self._buf = b""
        self.complete = False
        self.broken = False
        self._meta: dict[str, Any] = {}
        self._choices: dict[int, dict[str, Any]] = {}
        self._usage: dict[str, Any] | None = None
        self._chunks = 0

    def feed(self, data: bytes) -> None:
        """Consume raw bytes (any split); malformed events mark the stream broken."""
        self._buf += data
        while True:
            # events end with a blank line; tolerate \r\n
            idx = self._buf.find(b"\n\n")
            idx_r = self._buf.find(b"\r\n\r\n")
            if idx_r >= 0 and (idx < 0 or idx_r < idx):
                event, self._buf = self._buf[:idx_r], self._buf[idx_r + 4:]
            elif idx >= 0:
                event, self._buf = self._buf[:idx], self._buf[idx + 2:]
            else:
                return
            self._event(event)

    def _event(self, event: bytes) -> None:
        data_lines = [line[5:].strip() for line in event.splitlines() if line.startswith(b"data:")]
        if not data_lines:
            return  # comments / keep-alives
        payload = b"\n".join(data_lines)
        if payload == b"[DONE]":
            self.complete = self._chunks > 0 and not self.broken
            return
        try:
            chunk = json.loads(payload)
        except ValueError:
            self.broken = True
            return
        if not isinstance(chunk, dict):
            self.broken = True
            return
        if "error" in chunk:
            self.broken = True
            return
        self._chunks += 1
        for key in ("id", "created", "model", "system_fingerprint"):
            if chunk.get(key) is not None:
                self._meta.setdefault(key, chunk[key])
        if isinstance(chunk.get("usage"), dict):
            self._usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            self._choice(choice)

    def _choice(self, choice: dict[str, Any]) -> None:
        index = int(choice.get("index", 0))
        acc = self._choices.setdefault(index, {"content": [], "tool_calls": {}, "role": None,
                                               "finish_reason": None, "refusal": []})
        if choice.get("finish_reason") is not None:
            acc["finish_reason"] = choice["finish_reason"]
        if not self.chat:
            acc["content"].append(choice.get("text") or "")
            return
        delta = choice.get("delta") or {}
        if delta.get("role"):
            acc["role"] = delta["role"]
        if delta.get("content"):
            acc["content"].append(delta["content"])
        if delta.get("refusal"):
            acc["refusal"].append(delta["refusal"])
        for call in delta.get("tool_calls") or []:
            slot = acc["tool_calls"].setdefault(
                int(call.get("index", 0)),
                {"id": None, "type": "function", "function": {"name": "", "arguments": ""}})
            if call.get("id"):
                slot["id"] = call["id"]
            if call.get("type"):
                slot["type"] = call["type"]
            fn = call.get("function") or {}
            slot["function"]["name"] += fn.get("name") or ""
            slot["function"]["arguments"] += fn.get("arguments") or ""

    def body(self) -> dict[str, Any]:
        """The answer the stream stands for, as a non-stream response document."""
        choices = []
        for index in sorted(self._choices):
            acc = self._choices[index]
            text = "".join(acc["content"])
            if self.chat:
                message: dict[str, Any] = {"role": acc["role"] or "assistant",
                                           "content": text if text or not acc["tool_calls"] else None}
                if acc["tool_calls"]:
                    message["tool_calls"] = [acc["tool_calls"][i] for i in sorted(acc["tool_calls"])]
                if acc["refusal"]:
                    message["refusal"] = "".join(acc["refusal"])
                choices.append({"index": index, "message": message, "logprobs": None,
                                "finish_reason": acc["finish_reason"]})
            else:
                choices.append({"index": index, "text": text, "logprobs": None,
                                "finish_reason": acc["finish_reason"]})
        doc: dict[str, Any] = {
            "id": self._meta.get("id"), "object": "chat.completion" if self.chat else "text_completion",
            "created": self._meta.get("created"), "model": self._meta.get("model"),
            "choices": choices,
        }
        if self._meta.get("system_fingerprint"):
            doc["system_fingerprint"] = self._meta["system_fingerprint"]
        if self._usage is not None:
            doc["usage"] = self._usage
        return doc


def _event(doc: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(doc, separators=(",", ":")).encode("utf-8") + b"\n\n"


def replay_events(body: dict[str, Any], *, chat: bool, include_usage: bool,
                  piece_chars: int = 0) -> Iterator[bytes]:
    """SSE events for a complete answer ``body``: role, content, finish, usage, ``[DONE]``.

    ``piece_chars`` > 0 splits content into pieces of that many characters (0: one piece).
    ``body`` must already carry the id/created the client should see.
    """
    obj = "chat.completion.chunk" if chat else "text_completion"
    head = {"id": body.get("id"), "object": obj, "created": body.get("created"),
            "model": body.get("model")}
    if body.get("system_fingerprint"):
        head["system_fingerprint"] = body["system_fingerprint"]
    for choice in body.get("choices") or []:
        index = choice.get("index", 0)
        if chat:
            message = choice.get("message") or {}
            text = message.get("content") or ""
            yield _event({**head, "choices": [{"index": index, "delta": {
                "role": message.get("role", "assistant"), "content": ""},
                "logprobs": None, "finish_reason": None}]})
        else:
            text = choice.get("text") or ""
        step = piece_chars if piece_chars > 0 else max(1, len(text))
        for start in range(0, len(text), step):
            piece = text[start:start + step]
            part = ({"index": index, "delta": {"content": piece}, "logprobs": None,
                     "finish_reason": None} if chat else
                    {"index": index, "text": piece, "logprobs": None, "finish_reason": None})
            yield _event({**head, "choices": [part]})
        if chat and (choice.get("message") or {}).get("tool_calls"):
            calls = [{"index": i, **call} for i, call in enumerate(choice["message"]["tool_calls"])]
            yield _event({**head, "choices": [{"index": index, "delta": {"tool_calls": calls},
                                               "logprobs": None, "finish_reason": None}]})
        final = ({"index": index, "delta": {}, "logprobs": None,
                  "finish_reason": choice.get("finish_reason")} if chat else
                 {"index": index, "text": "", "logprobs": None,
                  "finish_reason": choice.get("finish_reason")})
        yield _event({**head, "choices": [final]})
    if include_usage and body.get("usage") is not None:
        yield _event({**head, "choices": [], "usage": body["usage"]})
    yield DONE
