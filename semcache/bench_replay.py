"""Replaying a workload through the real sidecar, over HTTP, with the ``openai`` SDK.

The sidecar (:func:`semcache.web_app.make_app`) and the fake upstream answering by label
(:func:`semcache.fake_upstream.answer_by_label`) run in this process on 127.0.0.1 with
``web.AppRunner``; the client is ``openai.AsyncOpenAI`` pointed at the sidecar, so every
request takes the production path: HTTP parsing, keys, exact lookup, embedding, index
search, replay of the stored JSON, and the SDK parsing the answer.

What is recorded per query is an :class:`Outcome`: the ``X-Semcache-*`` headers, whether
the answer served equals the answer the upstream gives for the request's label, the
client-side latency, and the tokens the upstream bills (or would have billed) for it.

**One pass scores a whole threshold sweep (pairs workloads).**  The anchors are stored
first (``Cache-Control: no-cache``: never served from the cache, always stored).  Each
query is then sent once with ``X-Semcache-Threshold: floor`` (the benchmark's sidecar is
started with ``threshold_floor = floor``) and ``Cache-Control: no-store``, so the cache's
content is the same for every query.  The cache serves the *most similar* entry of the
scope when its similarity reaches the threshold (an exact scan, or FAISS ``IndexFlatIP``,
both exact), and an exact-text match before any of them.  So for any threshold
``t >= floor``, the sidecar run at ``t`` would serve exactly the recorded entry when the
recorded similarity is ``>= t`` and nothing otherwise: the whole sweep, and the
exact-only baseline (``X-Semcache-Match: exact``), are scored from that one pass without
replaying anything again.

**Logs are replayed in lanes.**  In a log every miss is stored, so what the cache holds
depends on the threshold and the one-pass argument does not hold.  Each threshold (and
the exact-only baseline) gets its own namespace, a *lane*; each request is sent to every
lane before the next request, so the embedding is computed once and the other lanes get
it from the cache's vector memo.  Background stores are awaited after each request, so
the replay is deterministic.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from .bench_workloads import BenchRequest, Workload
from .embedding import Embedder
from .fake_upstream import (
    LABEL_KEY,
    STATS,
    FakeConfig,
    answer_by_label,
    count_tokens,
    label_answer,
    make_fake_app,
    prompt_tokens,
)
from .settings import Settings
from .web_app import make_app
from .web_runtime import RUNTIME, Runtime

__all__ = ["Outcome", "Replay", "replay", "EXACT_LANE", "PASS_LANE", "Servers", "BenchClient"]

EXACT_LANE = "exact"
PASS_LANE = "pass"


@dataclass(frozen=True)
class Outcome:
    """The sidecar's answer to one query request.

    ``similarity`` is 1.0 for exact hits and None for misses; ``correct`` says whether
    the text served equals what the upstream answers for the request's label (always
    True for a miss, which the upstream itself answered).  ``prompt_tokens`` and
    ``completion_tokens`` are what the upstream bills for this request when it goes
    upstream (the fake's counter; checked against the real ``usage`` of every miss).
    ``latency_s`` is the client-side wall time of the HTTP call; ``answer`` a short
    digest of the text served (to compare runs whose entry ids differ).
    """

    status: str
    match: str | None
    similarity: float | None
    entry: int | None
    correct: bool
    positive: bool
    latency_s: float
    prompt_tokens: int
    completion_tokens: int
    answer: str = ""
    confidence: float | None = None  # X-Semcache-Confidence (the adaptive policy's)
    guard: str | None = None  # X-Semcache-Guard: the near-miss guard's objection
    score: float | None = None  # X-Semcache-Score: the policy's scorer (its ranking)

    @property
    def hit(self) -> bool:
        return self.status == "hit"


@dataclass
class Replay:
    """All outcomes of one workload: ``lanes[name][i]`` is the i-th query's outcome.

    Pairs workloads have the one lane ``pass`` (sent at ``floor``); logs have a lane per
    threshold (named ``f"{t:.2f}"``) plus ``exact``.
    """

    workload: str
    kind: str
    floor: float
    lanes: dict[str, list[Outcome]]
    loads: int = 0
    upstream_calls: int = 0
    usage_mismatches: int = 0
    lookup_timeouts: int = 0
    lookup_failures: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def queries(self) -> int:
        return len(next(iter(self.lanes.values()), []))


def lane_name(threshold: float) -> str:
    return f"{threshold:.2f}"


class Servers:
    """The fake upstream and the sidecar, running on this event loop (use ``async with``).

    ``settings`` are the sidecar's (``upstream`` is replaced by the fake's URL);
    ``embedder`` is shared with the caller (the model is loaded once).
    """

    def __init__(self, settings: Settings, embedder: Embedder | None = None) -> None:
        self.settings = settings
        self.embedder = embedder
        self.fake_app = make_fake_app(FakeConfig(answer_for=answer_by_label))
        self._runners: list[web.AppRunner] = []
        self.url = ""
        self.runtime: Runtime | None = None

    async def _start(self, app: web.Application) -> int:
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=5)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self._runners.append(runner)
        server: Any = site._server
        assert server is not None and server.sockets
        return int(server.sockets[0].getsockname()[1])

    async def __aenter__(self) -> Servers:
        fake_port = await self._start(self.fake_app)
        app = make_app(self.settings.replace(upstream=f"http://127.0.0.1:{fake_port}"),
                       embedder=self.embedder)
        port = await self._start(app)
        self.url = f"http://127.0.0.1:{port}"
        self.runtime = rt = app[RUNTIME]
        deadline = time.monotonic() + 300
        while rt.cache is None and rt.load_error is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if rt.cache is None:
            await self.__aexit__()
            raise RuntimeError(f"the sidecar's cache did not open: {rt.load_error}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()

    async def stores_done(self) -> None:
        """Wait until the sidecar's background stores are committed."""
        assert self.runtime is not None
        while self.runtime.background:
            await asyncio.sleep(0.002)

    @property
    def upstream_calls(self) -> int:
        return self.fake_app[STATS].total("/v1/chat/completions")


@contextlib.asynccontextmanager
async def running(settings: Settings | None, embedder: Embedder | None, floor: float,
                  ) -> AsyncIterator[Servers]:
    """Servers with a fresh store in a temporary directory (``settings`` may be None)."""
    with tempfile.TemporaryDirectory(prefix="semcache-bench-") as tmp:
        base = settings or Settings()
        # the static rule only: what a threshold does, with no learning or exploration
        # changing decisions during the replay (bench_quality measures the adaptive policy)
        bench = base.replace(data_dir=Path(tmp) / "store", sync=False, threshold_floor=floor,
                             lookup_timeout=max(base.lookup_timeout, 30.0), ttl=None,
                             policy="static", explore_rate=0.0)
        async with Servers(bench, embedder) as servers:
            yield servers


class BenchClient:
    """The ``openai`` SDK against the sidecar, one namespace per run, tenant and lane."""

    def __init__(self, url: str, run: str, concurrency: int) -> None:
        import openai

        self.sdk = openai.AsyncOpenAI(base_url=url + "/v1", api_key="sk-semcache-bench",
                                      max_retries=0, timeout=300.0)
        self.run = run
        self.gate = asyncio.Semaphore(concurrency)

    async def send(self, r: BenchRequest, lane: str, headers: dict[str, str]) -> Outcome:
        extra = {"X-Semcache-Namespace": f"{self.run}:{r.tenant}:{lane}"[:128], **headers}
        body = {"model": r.model, "messages": list(r.messages)}
        expected = label_answer(r.label)
        ptok, ctok = prompt_tokens(body), count_tokens(expected)
        async with self.gate:
            t0 = time.perf_counter()
            raw = await self.sdk.chat.completions.with_raw_response.create(
                model=r.model, messages=list(r.messages),  # type: ignore[arg-type]
                metadata={LABEL_KEY: r.label}, extra_headers=extra,
                extra_body=dict(r.params) or None)
            completion = raw.parse()
            elapsed = time.perf_counter() - t0
        h = raw.headers
        status = h.get("x-semcache-status", "bypass")
        sim = h.get("x-semcache-similarity")
        entry = h.get("x-semcache-entry")
        served = completion.choices[0].message.content or ""
        usage = completion.usage
        mismatch = (status != "hit" and usage is not None
                    and (usage.prompt_tokens, usage.completion_tokens) != (ptok, ctok))
        return Outcome(status=status, match=h.get("x-semcache-match") if status == "hit" else None,
                       similarity=float(sim) if sim and status == "hit" else None,
                       entry=int(entry) if entry else None, correct=served == expected,
                       positive=r.positive, latency_s=elapsed, prompt_tokens=ptok,
                       completion_tokens=ctok if not mismatch else -1,
                       answer=hashlib.sha256(served.encode("utf-8")).hexdigest()[:16],
                       confidence=(float(h["x-semcache-confidence"])
                                   if h.get("x-semcache-confidence") else None),
                       guard=h.get("x-semcache-guard"),
                       score=float(h["x-semcache-score"]) if h.get("x-semcache-score") else None)

    async def close(self) -> None:
        await self.sdk.close()


def _bar(total: int, desc: str, progress: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="req", disable=not progress, leave=False,
                dynamic_ncols=True)


async def replay(
    workload: Workload, servers: Servers, *, floor: float, thresholds: Sequence[float] = (),
    concurrency: int = 4, progress: bool = False,
) -> Replay:
    """Replay ``workload`` through ``servers`` (see the module doc for the two shapes).

    ``floor`` is the one-pass threshold of a pairs workload; ``thresholds`` are the lanes
    of a log.  Raises whatever the SDK raises for a failed HTTP call: the benchmark does
    not guess around a broken run.
    """
    assert servers.runtime is not None
    run = f"bench-{workload.name}-{uuid.uuid4().hex[:8]}"
    client = BenchClient(servers.url, run, concurrency)
    counters = servers.runtime.counters
    timeouts0, failures0 = counters.lookup_timeouts, counters.lookup_failures
    calls0 = servers.upstream_calls
    started = time.perf_counter()
    try:
        if workload.kind == "pairs":
            lanes = await _replay_pairs(workload, servers, client, floor, progress)
        else:
            lanes = await _replay_log(workload, servers, client, thresholds, progress)
    finally:
        await client.close()
    result = Replay(workload.name, workload.kind, floor, lanes, loads=len(workload.loads),
                    upstream_calls=servers.upstream_calls - calls0,
                    lookup_timeouts=counters.lookup_timeouts - timeouts0,
                    lookup_failures=counters.lookup_failures - failures0,
                    seconds=time.perf_counter() - started)
    bad = [o for lane in lanes.values() for o in lane if o.completion_tokens < 0]
    result.usage_mismatches = len(bad)
    if bad:
        result.notes.append(f"{len(bad)} upstream answers billed other tokens than expected")
    return result


async def _gather_in_order(coros: Sequence[Any], bar: Any) -> list[Outcome]:
    async def one(c: Any) -> Outcome:
        out: Outcome = await c
        bar.update(1)
        return out

    return list(await asyncio.gather(*(one(c) for c in coros)))


async def _replay_pairs(workload: Workload, servers: Servers, client: BenchClient, floor: float,
                        progress: bool) -> dict[str, list[Outcome]]:
    with _bar(len(workload.loads), f"{workload.name}: load", progress) as bar:
        await _gather_in_order([client.send(r, PASS_LANE, {"Cache-Control": "no-cache"})
                                for r in workload.loads], bar)
    await servers.stores_done()
    headers = {"Cache-Control": "no-store", "X-Semcache-Threshold": repr(floor)}
    with _bar(len(workload.queries), f"{workload.name}: query", progress) as bar:
        outcomes = await _gather_in_order([client.send(r, PASS_LANE, headers)
                                           for r in workload.queries], bar)
    return {PASS_LANE: outcomes}


async def _replay_log(workload: Workload, servers: Servers, client: BenchClient,
                      thresholds: Sequence[float], progress: bool) -> dict[str, list[Outcome]]:
    lanes: dict[str, dict[str, str]] = {EXACT_LANE: {"X-Semcache-Threshold": "1.0"}}
    for t in sorted(set(thresholds)):
        lanes[lane_name(t)] = {"X-Semcache-Threshold": repr(t)}
    out: dict[str, list[Outcome]] = {name: [] for name in lanes}
    queries = workload.queries
    with _bar(len(queries), f"{workload.name}: replay", progress) as bar:
        for r in queries:
            results = await asyncio.gather(*(client.send(r, name, h) for name, h in lanes.items()))
            for name, outcome in zip(lanes, results, strict=True):
                out[name].append(outcome)
            await servers.stores_done()
            bar.update(1)
    return out
