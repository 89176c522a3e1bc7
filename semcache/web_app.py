"""The sidecar application: routes, lifecycle, ``semcache serve``.

Lifecycle (``cleanup_ctx``): the upstream client starts first and the server listens at
once; the embedding model loads and the index is rebuilt in the background, and until
then requests are forwarded uncached (``X-Semcache-Status: bypass``) and ``/readyz``
answers 503.  A maintenance task persists hit counts and the spend ledger and sweeps
expired entries, persists the adaptive policy's outcomes and refits it (on its own
thread) when enough new ones arrived.  On shutdown (SIGTERM/SIGINT) in-flight requests drain, background
stores finish, the ledger is flushed, LMDB is closed cleanly, and the process exits 0.

The operator API and ``/metrics`` are in :mod:`semcache.web_admin`; an app refuses to be
built for a non-loopback ``host`` without an admin token (:func:`check_exposure`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from .cache import SemanticCache
from .embedding import Embedder
from .ledger import Ledger
from .pricing import load_prices
from .settings import Settings
from .shadow import Shadow
from .upstream import Upstream
from .verifier import load_verifier
from .web_admin import add_routes as add_operator_routes
from .web_admin import check_exposure
from .web_middlewares import error_middleware, error_response
from .web_proxy import cached_endpoint, passthrough
from .web_runtime import RUNTIME, Runtime

__all__ = ["make_app", "serve", "MAINTENANCE_INTERVAL"]

log = logging.getLogger("semcache.web")

MAINTENANCE_INTERVAL = 10.0  # seconds between hit-count/ledger flushes and expiry sweeps
DRAIN_TIMEOUT = 30.0


def make_app(
    settings: Settings, *, embedder: Embedder | None = None, cache: SemanticCache | None = None,
) -> web.Application:
    """The sidecar as an aiohttp application.

    ``embedder`` replaces the configured embedding backend (tests share one loaded model);
    ``cache`` hands in an already open cache, which the app then owns and closes.
    Raises :class:`ConfigError` for a non-loopback ``host`` without an admin token and
    for an unreadable price file.
    """
    check_exposure(settings)
    app = web.Application(middlewares=[error_middleware],
                          client_max_size=settings.max_body_bytes)
    app[RUNTIME] = Runtime(
        settings=settings, upstream=Upstream(
            settings.upstream, connect_timeout=settings.upstream_connect_timeout,
            timeout=settings.upstream_timeout),
        ledger=Ledger(load_prices(settings.prices)), shadow=Shadow(settings.shadow),
        verifier=load_verifier(settings.verifier, model=settings.verifier_model,
                               api_key=settings.verifier_api_key, timeout=settings.verifier_timeout))
    app.cleanup_ctx.append(_lifecycle(embedder, cache))
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"):
        app.router.add_post(path, cached_endpoint)
    app.router.add_route("*", "/v1/{tail:.*}", passthrough)
    add_operator_routes(app)
    return app


def _lifecycle(embedder: Embedder | None, cache: SemanticCache | None):  # type: ignore[no-untyped-def]
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        rt = app[RUNTIME]
        await rt.upstream.start()
        loop = asyncio.get_running_loop()
        if cache is not None:
            rt.ledger.attach(cache.store_db)
            rt.batcher = cache.batcher()
            rt.cache = cache
            loader: asyncio.Future[Any] | None = None
        else:
            loader = loop.run_in_executor(rt.lookup_pool, _open_cache, rt, embedder)
        maintenance = asyncio.create_task(_maintain(rt))
        try:
            yield
        finally:
            maintenance.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await maintenance
            if loader is not None:
                with contextlib.suppress(Exception):
                    await loader
            await rt.drain(DRAIN_TIMEOUT)
            if rt.batcher is not None:
                rt.batcher.close()
            if rt.cache is not None:
                try:
                    await loop.run_in_executor(rt.store_pool, rt.ledger.flush)
                except Exception as exc:
                    log.error("the spend ledger could not be saved: %s: %s", type(exc).__name__, exc)
                await loop.run_in_executor(rt.store_pool, rt.cache.close)
            rt.lookup_pool.shutdown(wait=True)
            rt.store_pool.shutdown(wait=True)
            rt.learn_pool.shutdown(wait=True)
            if rt.verifier is not None:
                await rt.verifier.close()
            await rt.upstream.close()

    return ctx


def _open_cache(rt: Runtime, embedder: Embedder | None) -> None:
    """Load the model, rebuild the index and warm the model up (on the lookup thread).

    The first forward passes of a fresh process are several times slower than later ones
    (kernel selection per input shape); running them here keeps them out of the first
    requests' lookup budget.  Ready is only declared after that.
    """
    try:
        cache = SemanticCache(rt.settings, embedder)
        for words in (1, 4, 8, 16, 32, 64):
            cache.embedder.embed([" ".join(["warm"] * words)])
        rt.ledger.attach(cache.store_db)
        rt.batcher = cache.batcher()
        rt.cache = cache
        log.info("cache ready: %d entries from %s", len(rt.cache), rt.settings.data_dir)
    except Exception as exc:
        rt.load_error = f"{type(exc).__name__}: {exc}"
        log.error("cache failed to open; serving uncached: %s", rt.load_error)


async def _maintain(rt: Runtime) -> None:
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(MAINTENANCE_INTERVAL)
        cache = rt.cache
        if cache is None:
            continue
        try:
            await loop.run_in_executor(rt.store_pool, cache.flush_hits)
            await loop.run_in_executor(rt.store_pool, rt.ledger.flush)
            await loop.run_in_executor(rt.store_pool, cache.sweep)
            await loop.run_in_executor(rt.store_pool, cache.policy.flush)
        except Exception as exc:
            log.warning("maintenance failed: %s: %s", type(exc).__name__, exc)
        if cache.policy.due() and time.time() - rt.last_refit >= rt.settings.policy_refit_interval:
            rt.last_refit = time.time()
            refit = loop.run_in_executor(rt.learn_pool, cache.policy.refit)
            refit.add_done_callback(_log_failure("refitting the policy"))
            rt.track(refit)


def _log_failure(what: str):  # type: ignore[no-untyped-def]
    def done(fut: asyncio.Future[Any]) -> None:
        exc = fut.exception() if not fut.cancelled() else None
        if exc is not None:
            log.warning("%s failed: %s: %s", what, type(exc).__name__, exc)
    return done


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the process serves HTTP."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Readiness: model loaded and index built (200), else 503 with the reason."""
    rt = request.app[RUNTIME]
    if rt.cache is not None:
        return web.json_response({"status": "ready", "entries": len(rt.cache),
                                  "embedder": rt.cache.embedder.name})
    if rt.load_error:
        return error_response(503, f"cache failed to open: {rt.load_error}", "server_error",
                              "cache_unavailable")
    return error_response(503, "loading the embedding model and index", "server_error",
                          "not_ready")


def serve(settings: Settings, *, embedder: Embedder | None = None) -> None:
    """Run the sidecar until SIGTERM/SIGINT; returns after a clean shutdown."""
    log.info("semcache listening on http://%s:%d, upstream %s, data %s", settings.host,
             settings.port, settings.upstream, settings.data_dir)
    web.run_app(make_app(settings, embedder=embedder), host=settings.host, port=settings.port,
                shutdown_timeout=DRAIN_TIMEOUT, print=None, access_log=log,
                access_log_format='%a "%r" %s %b %Tfs "%{X-Semcache-Status}o"',
                handle_signals=True)
