"""The sidecar's live state, shared by its handlers under one typed app key.

:class:`Runtime` holds the settings, the cache (``None`` until the model is loaded and
the index built: requests meanwhile go upstream uncached), the upstream client, the
coalescer, the executors that keep blocking work off the event loop, the background
store tasks that shutdown waits for, and the operator surface: Prometheus metrics, the
spend ledger and the feedback log.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .batching import MicroBatcher
from .cache import SemanticCache
from .coalesce import Coalescer
from .feedback import FeedbackLog
from .ledger import Ledger
from .metrics import Metrics
from .settings import Settings
from .shadow import Shadow
from .upstream import Upstream
from .verifier import Verifier

__all__ = ["Runtime", "RUNTIME", "Counters"]

log = logging.getLogger("semcache.web")


@dataclass
class Counters:
    """Plain counters of what the sidecar did (the operator surface exports them)."""

    requests: int = 0
    hits_exact: int = 0
    hits_semantic: int = 0
    hits_coalesced: int = 0
    misses: int = 0
    bypasses: int = 0
    stores: int = 0
    store_refusals: int = 0
    store_failures: int = 0
    lookup_failures: int = 0
    lookup_timeouts: int = 0
    upstream_errors: int = 0
    explored: int = 0
    judging: int = 0  # probes waiting for the judge (web_quality)
    judge_dropped: int = 0


@dataclass
class Runtime:
    """Everything a request handler needs.  Event-loop confined except the executors."""

    settings: Settings
    upstream: Upstream
    cache: SemanticCache | None = None
    # concurrent lookups share forward passes through it (created with the cache)
    batcher: MicroBatcher | None = None
    load_error: str | None = None
    coalescer: Coalescer = field(default_factory=Coalescer)
    counters: Counters = field(default_factory=Counters)
    # index searches (and model loading at start); forward passes run on the batcher's thread
    lookup_pool: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="semcache-lookup"))
    # stores (embedding from the memo + LMDB commit), off the response path
    store_pool: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="semcache-store"))
    background: set[asyncio.Future[Any]] = field(default_factory=set)
    metrics: Metrics = field(default_factory=Metrics)
    ledger: Ledger = field(default_factory=Ledger)
    feedback: FeedbackLog = field(default_factory=FeedbackLog)
    # answer quality (web_quality): shadowed namespaces, the optional verifier, and the
    # thread the adaptive policy refits on (seconds of CPU, never on the lookup thread)
    shadow: Shadow = field(default_factory=Shadow)
    verifier: Verifier | None = None
    learn_pool: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="semcache-learn",
                                                   initializer=_background_priority))
    last_refit: float = field(default_factory=time.time)  # the first refit waits an interval

    @property
    def ready(self) -> bool:
        return self.cache is not None

    def track(self, fut: asyncio.Future[Any]) -> None:
        """Keep a background task alive until done; shutdown waits for these."""
        self.background.add(fut)
        fut.add_done_callback(self.background.discard)

    async def drain(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for background stores to finish."""
        if self.background:
            done, pending = await asyncio.wait(list(self.background), timeout=timeout)
            if pending:
                log.warning("%d background stores still running at shutdown", len(pending))


def _background_priority() -> None:
    """Judging and refitting yield the CPU to lookups: the learning thread runs at nice
    10 (Linux applies a thread's own niceness; elsewhere this does nothing)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    except (AttributeError, OSError):
        pass


RUNTIME: web.AppKey[Runtime] = web.AppKey("semcache_runtime", Runtime)
