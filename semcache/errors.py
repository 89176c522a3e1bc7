"""The one error tree of semcache.

Every error semcache raises on purpose is a :class:`SemcacheError`.  Subclasses also
inherit the builtin that best matches them (``ValueError``, ``OSError``...), so callers
that already catch builtins keep working.  Messages name the offending field and value.

Each class carries the HTTP status and OpenAI error ``type`` the web layer answers with;
exactly one middleware turns these into responses.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "SemcacheError",
    "ConfigError",
    "InvalidRequestError",
    "PayloadTooLargeError",
    "StoreError",
    "StoreFullError",
    "EmbedderMismatchError",
    "EmbeddingError",
    "UpstreamError",
    "UpstreamTimeoutError",
    "AuthError",
]


def _show(value: Any, limit: int = 80) -> str:
    """Short, printable rendering of a bad value for an error message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class SemcacheError(Exception):
    """Root of every error semcache raises deliberately."""

    status: int = 500
    error_type: str = "semcache_error"
    code: str | None = None


class ConfigError(SemcacheError, ValueError):
    """A setting has a value semcache cannot use."""

    status = 500
    error_type = "configuration_error"

    def __init__(self, name: str, value: Any, reason: str) -> None:
        self.name = name
        self.value = value
        super().__init__(f"setting {name}={_show(value)}: {reason}")


class InvalidRequestError(SemcacheError, ValueError):
    """The client's request is malformed; ``field`` names the offending part."""

    status = 400
    error_type = "invalid_request_error"

    def __init__(self, field: str, value: Any, reason: str, *, code: str | None = None) -> None:
        self.field = field
        self.value = value
        self.code = code or "invalid_value"
        super().__init__(f"{field}: {reason} (got {_show(value)})")


class PayloadTooLargeError(InvalidRequestError):
    """The request body exceeds the configured limit."""

    status = 413

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            "body", f"{size} bytes", f"request body exceeds the limit of {limit} bytes",
            code="payload_too_large",
        )


class StoreError(SemcacheError, OSError):
    """The LMDB store cannot be opened, read or written."""

    error_type = "store_error"


class StoreFullError(StoreError):
    """The store reached its configured map size or the disk is full; nothing was lost."""


class EmbedderMismatchError(StoreError, ValueError):
    """The store was built by another embedding model/backend than the one configured."""

    def __init__(self, stored: str, configured: str, path: str) -> None:
        self.stored = stored
        self.configured = configured
        super().__init__(
            f"store at {path} was built with embedding model {stored!r}, "
            f"but the configured embedding model is {configured!r}; "
            "use the original model or a new --data-dir"
        )


class EmbeddingError(SemcacheError, RuntimeError):
    """The embedding backend failed or could not be loaded."""

    error_type = "embedding_error"


class UpstreamError(SemcacheError, ConnectionError):
    """The upstream model router could not be reached or broke the response."""

    status = 502
    error_type = "upstream_error"
    code = "bad_gateway"


class UpstreamTimeoutError(UpstreamError, TimeoutError):
    """The upstream did not answer within the configured timeout."""

    status = 504
    code = "upstream_timeout"


class AuthError(SemcacheError, PermissionError):
    """The operator API was called without a valid admin token."""

    status = 401
    error_type = "authentication_error"
    code = "invalid_admin_token"
