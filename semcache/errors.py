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
    "NotFoundError",
    "BudgetExceededError",
    "NotReadyError",
    "error_from_response",
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

    def response_headers(self) -> dict[str, str]:
        """Extra HTTP headers the error response carries (``Retry-After``...)."""
        return {}


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

    def response_headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="semcache"'}


class NotFoundError(SemcacheError, LookupError):
    """The operator API was asked about an entry (or other object) that does not exist."""

    status = 404
    error_type = "not_found_error"
    code = "not_found"


class BudgetExceededError(SemcacheError):
    """A namespace used up its daily budget; requests that need the upstream are refused
    (429) until the UTC day ends.  ``retry_after`` is seconds until then."""

    status = 429
    error_type = "insufficient_quota"
    code = "budget_exceeded"

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        self.retry_after = retry_after
        super().__init__(message)

    def response_headers(self) -> dict[str, str]:
        headers = {"X-Should-Retry": "false"}  # the openai SDK would otherwise retry a 429
        if self.retry_after is not None:
            headers["Retry-After"] = str(max(1, int(self.retry_after + 0.999)))
        return headers


class NotReadyError(SemcacheError):
    """The cache is still loading (or failed to load); the operator call needs it."""

    status = 503
    error_type = "server_error"
    code = "not_ready"


_BY_STATUS: dict[int, type[SemcacheError]] = {
    400: InvalidRequestError, 401: AuthError, 403: AuthError, 404: NotFoundError,
    413: PayloadTooLargeError, 429: BudgetExceededError, 502: UpstreamError,
    503: NotReadyError, 504: UpstreamTimeoutError,
}


def error_from_response(status: int, payload: Any) -> SemcacheError:
    """The error a semcache server answered with (the reverse of the error middleware).

    ``payload`` is the decoded JSON body (``{"error": {"message", "type", "code",
    "param"}}``) or anything else for a body that was not ours.  The instance is of the
    class matching ``status`` (401 :class:`AuthError`, 404 :class:`NotFoundError`, 400
    :class:`InvalidRequestError`...), carries the server's message verbatim, and has
    ``status``, ``error_type``, ``code`` and ``param`` set from the response.
    """
    err = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(err, dict):
        message = str(err.get("message") or f"HTTP {status}")
        etype, code, param = err.get("type"), err.get("code"), err.get("param")
    else:
        message, etype, code, param = f"HTTP {status}: {_show(payload, 200)}", None, None, None
    cls = _BY_STATUS.get(status, SemcacheError)
    exc = cls.__new__(cls)  # the server's message as is, without re-formatting it
    Exception.__init__(exc, message)
    exc.status = status
    exc.error_type = str(etype or cls.error_type)
    exc.code = str(code) if code is not None else cls.code
    if isinstance(exc, InvalidRequestError):
        exc.field = str(param) if param is not None else "request"
        exc.value = None
    if isinstance(exc, BudgetExceededError):
        exc.retry_after = None
    return exc
