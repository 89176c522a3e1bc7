"""Answer equivalence: was a cached answer as good as the one the upstream just gave?

This is how the adaptive policy learns without labels: when a request with a candidate
goes upstream anyway (the candidate was refused, the request was explored, or the
namespace is in shadow mode), the upstream's fresh answer is compared with the
candidate's stored answer.  Equivalent answers make the candidate a right match, others
a wrong one (:mod:`semcache.policy`).

Two answers are equivalent when their texts are equal after normalising case and
whitespace (tool calls compared as canonical JSON), or else when the near-miss guard
finds no conflict between them (answers that differ in a number, a direction, a name
or a version are not the same answer, however close their embeddings) and the cosine
of their embeddings reaches ``answer_equivalence`` (1.0: only equal texts count).  The embedding
test is approximate: two samples of one question at a high temperature may differ more
than that, which counts the match wrong and makes the policy stricter — the safe side.
Only the first :data:`JUDGED_CHARS` characters are embedded (the model truncates long
texts anyway; this bounds the cost).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from .guard import conflict
from .keys import CHAT, COMPLETIONS

__all__ = ["answer_text", "same_text", "equivalent", "JUDGED_CHARS"]

JUDGED_CHARS = 1000


def answer_text(answer: Mapping[str, Any], endpoint: str) -> str:
    """The text of an answer's first choice (chat content plus canonical tool calls, or
    the completion text); empty when the answer has none."""
    choices = answer.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], Mapping):
        return ""
    first = choices[0]
    if endpoint == COMPLETIONS:
        text = first.get("text")
        return text if isinstance(text, str) else ""
    if endpoint != CHAT:
        return ""
    message = first.get("message")
    if not isinstance(message, Mapping):
        return ""
    content = message.get("content")
    parts = [content if isinstance(content, str) else ""]
    calls = message.get("tool_calls")
    if calls:
        stripped = [{k: v for k, v in c.items() if k != "id"} for c in calls if isinstance(c, Mapping)]
        parts.append(json.dumps(stripped, sort_keys=True, separators=(",", ":")))
    return "\n".join(p for p in parts if p)


def same_text(a: str, b: str) -> bool:
    """Equal after lower-casing and collapsing whitespace."""
    return " ".join(a.lower().split()) == " ".join(b.lower().split())


def equivalent(a: str, b: str, embed: Callable[[Sequence[str]], np.ndarray],
               threshold: float) -> bool:
    """Whether answers ``a`` and ``b`` say the same (module doc).  ``embed`` gives the
    unit vectors of texts (an :class:`~semcache.embedding.Embedder`'s ``embed``); it is
    only called, once for both, when the texts differ and ``threshold`` is below 1.
    Raises what ``embed`` raises."""
    if same_text(a, b):
        return True
    if threshold >= 1.0 or not a.strip() or not b.strip():
        return False
    a, b = a[:JUDGED_CHARS], b[:JUDGED_CHARS]
    if conflict(a, b) is not None:  # close in meaning but other numbers, order, names...
        return False
    va, vb = embed([a, b])
    return float(np.dot(va, vb)) >= threshold
