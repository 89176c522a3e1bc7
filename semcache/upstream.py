"""The client side: talking to the upstream model router.

One :class:`Upstream` per server holds one ``aiohttp.ClientSession`` (connection pool).
Requests are forwarded with the client's headers minus hop-by-hop headers and semcache's
own ``X-Semcache-*`` controls; ``Authorization`` is passed through untouched and never
logged.  Hop-by-hop means the fixed list of :data:`HOP_BY_HOP` *and* every header the
message names in its ``Connection`` header (RFC 9110 §7.6.1), in both directions.
Connection failures become :class:`UpstreamError` (502) and time-outs
:class:`UpstreamTimeoutError` (504), so the one error middleware answers them in the
OpenAI error shape.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, Mapping
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from multidict import CIMultiDict

from .errors import UpstreamError, UpstreamTimeoutError

__all__ = ["Upstream", "HOP_BY_HOP", "response_headers", "connection_options"]

HOP_BY_HOP = frozenset(h.lower() for h in (
    "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "TE", "Trailer",
    "Trailers", "Transfer-Encoding", "Upgrade", "Host", "Content-Length",
))


def connection_options(headers: Mapping[str, str]) -> frozenset[str]:
    """The lower-cased header names listed in ``headers``' ``Connection`` field(s)
    (``Connection: close, X-Hop`` -> ``{"close", "x-hop"}``): per RFC 9110 §7.6.1 a proxy
    must not forward the headers they name.  Repeated ``Connection`` fields all count."""
    getall = getattr(headers, "getall", None)
    values = (getall("Connection", []) if getall is not None else
              [v for k, v in headers.items() if k.lower() == "connection"])
    return frozenset(token.strip().lower() for value in values for token in value.split(",")
                     if token.strip())


def _hop_by_hop(headers: Mapping[str, str]) -> frozenset[str]:
    return HOP_BY_HOP | connection_options(headers)


def response_headers(headers: Mapping[str, str], *, drop_encoding: bool = False) -> CIMultiDict[str]:
    """Upstream response headers fit to relay: hop-by-hop removed, including those the
    response names in ``Connection`` (and the body encoding when the proxy re-serialises
    the body)."""
    out: CIMultiDict[str] = CIMultiDict()
    hop = _hop_by_hop(headers)
    for key, value in headers.items():
        low = key.lower()
        if low in hop or (drop_encoding and low == "content-encoding"):
            continue
        out.add(key, value)
    return out


class Upstream:
    """The upstream router at ``base_url`` (``https://api.openai.com`` or ``.../v1``)."""

    def __init__(self, base_url: str, *, connect_timeout: float, timeout: float) -> None:
        parts = urlsplit(base_url.rstrip("/"))
        self._origin = f"{parts.scheme}://{parts.netloc}"
        prefix = parts.path
        # "/v1/..." requests against a base that already ends in /v1 must not double it
        self._prefix = prefix[: -len("/v1")] if prefix.endswith("/v1") else prefix
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        # no cookie jar: a cookie the upstream sets for one caller is relayed to that
        # caller, never kept and sent on behalf of the next (another tenant, perhaps)
        self._session = aiohttp.ClientSession(
            auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar(),
            connector=aiohttp.TCPConnector(limit=256, ttl_dns_cache=300),
            timeout=aiohttp.ClientTimeout(total=None, connect=self.connect_timeout),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def url(self, path: str, query: str = "") -> str:
        return f"{self._origin}{self._prefix}{path}" + (f"?{query}" if query else "")

    @staticmethod
    def forward_headers(headers: Mapping[str, str], *, identity: bool) -> CIMultiDict[str]:
        """Client headers to send upstream: hop-by-hop removed, including those the
        request names in ``Connection``.  ``identity`` asks for an uncompressed body (the
        cached endpoints parse it)."""
        out: CIMultiDict[str] = CIMultiDict()
        hop = _hop_by_hop(headers)
        for key, value in headers.items():
            low = key.lower()
            if low in hop or low.startswith("x-semcache-"):
                continue
            if identity and low == "accept-encoding":
                continue
            out.add(key, value)
        if identity:
            out["Accept-Encoding"] = "identity"
        return out

    async def send(
        self, method: str, path: str, *, query: str = "", headers: Mapping[str, str],
        data: bytes | AsyncIterable[bytes] | None, streaming: bool, identity: bool,
    ) -> aiohttp.ClientResponse:
        """Open the upstream response (headers read, body not yet).  The caller must
        release it.  ``streaming`` bounds the wait per read instead of for the whole body."""
        assert self._session is not None, "Upstream.start() was not awaited"
        timeout = (aiohttp.ClientTimeout(total=None, connect=self.connect_timeout,
                                         sock_read=self.timeout) if streaming else
                   aiohttp.ClientTimeout(total=self.timeout, connect=self.connect_timeout))
        kwargs: dict[str, Any] = {"headers": self.forward_headers(headers, identity=identity),
                                  "data": data, "timeout": timeout, "allow_redirects": False}
        try:
            return await self._session.request(method, self.url(path, query), **kwargs)
        except (asyncio.TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise UpstreamTimeoutError(
                f"upstream {self._origin} did not answer {method} {path} in time") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamError(
                f"upstream {self._origin} unreachable for {method} {path}: "
                f"{type(exc).__name__}") from exc
