"""The JSONL export format: entries out of one sidecar and into another.

An export is UTF-8 JSON Lines.  The first line is a header::

    {"semcache_export": 1, "embedder": "...", "dim": 384, "salt": "<hex>",
     "exported_at": 1700000000.0, "count": 1234, "namespace": null}

and every other line one entry::

    {"id": 7, "namespace": "ns:team-a", "endpoint": "/v1/chat/completions",
     "model": "gpt-4o-mini", "scope": "<64 hex>", "exact": "<64 hex>",
     "text": "What is the capital of France?", "response": {...}, "usage": {...},
     "created": 1700000000.0, "expires": 1700604800.0, "hits": 3}

Everything needed to re-create the entry is there and nothing else: no vector (vectors
belong to one embedding model; an import re-embeds ``text`` with the importing sidecar's
model) and no credential (namespaces derived from API keys are salted HMACs).  The
header's ``salt`` lets an import into an *empty* sidecar adopt the namespace salt, so
requests with the same API keys find their entries again; the salt reveals no key.

:func:`parse_line` validates one line and raises :class:`InvalidRequestError` naming the
line number and field; the CLI checks a whole file with it before sending anything, and
the server checks again.  Pure functions, no I/O.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from .errors import InvalidRequestError
from .keys import ENDPOINTS
from .store import EntryMeta, EntryRecord

__all__ = ["FORMAT", "ExportHeader", "header_line", "entry_line", "parse_line", "ImportedEntry"]

FORMAT = 1
_DIGEST_HEX = 64


@dataclass(frozen=True)
class ExportHeader:
    """The first line of an export."""

    format: int
    embedder: str | None
    dim: int | None
    salt: bytes | None
    exported_at: float | None
    count: int | None
    namespace: str | None


@dataclass(frozen=True)
class ImportedEntry:
    """One parsed entry line: the record to restore, its line number and old id."""

    record: EntryRecord
    line: int
    source_id: int | None


def header_line(*, embedder: str, dim: int, salt: bytes, exported_at: float, count: int | None,
                namespace: str | None) -> str:
    """The header line (with its newline).  ``count`` is the number of live entries when
    the export began (None for an export of one namespace: unknown without a scan)."""
    return json.dumps({"semcache_export": FORMAT, "embedder": embedder, "dim": dim,
                       "salt": salt.hex(), "exported_at": exported_at, "count": count,
                       "namespace": namespace}, separators=(",", ":")) + "\n"


def entry_line(entry_id: int, record: EntryRecord, meta: EntryMeta | None) -> str:
    """One entry as a line (with its newline)."""
    try:
        response: Any = json.loads(record.body)
    except ValueError:  # not expected: only JSON answers are admitted
        response = record.body.decode("utf-8", "replace")
    return json.dumps({
        "id": entry_id, "namespace": record.namespace, "endpoint": record.endpoint,
        "model": record.model, "scope": record.scope.hex(), "exact": record.exact.hex(),
        "text": record.text, "response": response, "usage": record.usage,
        "created": record.created, "expires": record.expires,
        "hits": meta.hits if meta is not None else 0,
    }, separators=(",", ":"), ensure_ascii=False) + "\n"


def _bad(line: int, field: str, value: Any, reason: str) -> InvalidRequestError:
    return InvalidRequestError(f"line {line}: {field}", value, reason, code="invalid_import_line")


def _digest(doc: dict[str, Any], key: str, line: int) -> bytes:
    value = doc.get(key)
    if not isinstance(value, str) or len(value) != _DIGEST_HEX:
        raise _bad(line, key, value, f"must be {_DIGEST_HEX} hex digits")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise _bad(line, key, value, f"must be {_DIGEST_HEX} hex digits") from None


def _time(doc: dict[str, Any], key: str, line: int, *, optional: bool) -> float | None:
    value = doc.get(key)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _bad(line, key, value, "must be seconds since the epoch" + (" or null" if optional else ""))
    return float(value)


def parse_line(text: str, line: int) -> ImportedEntry | ExportHeader | None:
    """Parse line number ``line`` (1-based) of an export; None for a blank line.

    Raises :class:`InvalidRequestError` (``field`` = ``line N: <field>``) for a line that
    is not JSON or lacks/mistypes a field.
    """
    if not text.strip():
        return None
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise _bad(line, "json", text[:40], f"is not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise _bad(line, "json", type(doc).__name__, "must be a JSON object")
    if "semcache_export" in doc:
        if doc["semcache_export"] != FORMAT:
            raise _bad(line, "semcache_export", doc["semcache_export"],
                       f"this semcache reads export format {FORMAT}")
        salt = doc.get("salt")
        try:
            salt_bytes = bytes.fromhex(salt) if isinstance(salt, str) and salt else None
        except ValueError:
            raise _bad(line, "salt", salt, "must be hex") from None
        dim, count = doc.get("dim"), doc.get("count")
        return ExportHeader(FORMAT, doc.get("embedder"), dim if isinstance(dim, int) else None,
                            salt_bytes, _time(doc, "exported_at", line, optional=True),
                            count if isinstance(count, int) else None, doc.get("namespace"))
    namespace = doc.get("namespace")
    if not isinstance(namespace, str) or not namespace or not namespace.isprintable():
        raise _bad(line, "namespace", namespace, "must be a non-empty printable string")
    endpoint = doc.get("endpoint")
    if endpoint not in ENDPOINTS:
        raise _bad(line, "endpoint", endpoint, f"must be one of {', '.join(ENDPOINTS)}")
    model = doc.get("model")
    if not isinstance(model, str) or not model:
        raise _bad(line, "model", model, "must be a non-empty string")
    scope, exact = _digest(doc, "scope", line), _digest(doc, "exact", line)
    sem_text = doc.get("text")
    if sem_text is not None and not isinstance(sem_text, str):
        raise _bad(line, "text", sem_text, "must be a string or null")
    response = doc.get("response")
    if not isinstance(response, dict):
        raise _bad(line, "response", response, "must be the stored JSON answer (an object)")
    usage = doc.get("usage")
    if usage is not None and not isinstance(usage, dict):
        raise _bad(line, "usage", usage, "must be an object or null")
    created = _time(doc, "created", line, optional=False)
    expires = _time(doc, "expires", line, optional=True)
    assert created is not None
    source_id = doc.get("id")
    body = json.dumps(response, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    record = EntryRecord(scope=scope, exact=exact, namespace=namespace, endpoint=endpoint,
                         model=model, text=sem_text or None, body=body, usage=usage,
                         created=created, expires=expires)
    return ImportedEntry(record, line, source_id if isinstance(source_id, int) else None)
