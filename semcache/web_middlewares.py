"""The one place errors become HTTP responses.

Every error that reaches the client is JSON in the OpenAI error shape
``{"error": {"message", "type", "param", "code"}}``.  :class:`SemcacheError` subclasses
carry their own status and type; aiohttp's HTTP exceptions (404, 405, 413...) are
reshaped; anything unexpected is logged and answered 500 without internals.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from .errors import InvalidRequestError, SemcacheError

__all__ = ["error_middleware", "error_response"]

log = logging.getLogger("semcache.web")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(status: int, message: str, etype: str, code: str | None = None,
                   param: str | None = None) -> web.Response:
    return web.json_response(
        {"error": {"message": message, "type": etype, "param": param, "code": code}},
        status=status)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except SemcacheError as exc:
        param = exc.field if isinstance(exc, InvalidRequestError) else None
        if exc.status >= 500:
            log.warning("%s %s failed: %s", request.method, request.path, exc)
        return error_response(exc.status, str(exc), exc.error_type, exc.code, param)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        etype = "invalid_request_error" if exc.status < 500 else "server_error"
        return error_response(exc.status, f"{request.method} {request.path}: {exc.reason}",
                              etype, str(exc.status))
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return error_response(500, "internal error in semcache", "server_error", "internal_error")
