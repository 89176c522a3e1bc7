"""``semcache bench quality``: the static threshold against the adaptive policy, one run.

Per workload, in its own sidecar (real HTTP, the ``openai`` SDK, the fake upstream
answering by label; :mod:`semcache.bench_replay`):

1. **warm-up, in shadow mode** — the workload's *dev* pairs are replayed with every
   namespace shadowed: nothing is served, every candidate above ``policy_floor`` is judged
   against the upstream's answer, and the policy records the outcomes, exactly as a
   sidecar warming up on live traffic would.  The pairs go in chunks of ``chunk`` (each
   chunk its own namespace: its anchors stored, then its queries), so every candidate is
   the best match among as many entries as the test cache holds.  Then the policy is
   refitted (``POST /semcache/policy``), learning stops and shadowing ends.
2. **test pass** — the *test* anchors are stored, and every test query is sent once with
   ``X-Semcache-Threshold: policy_floor`` and ``X-Semcache-Max-Wrong-Rate: 1``, so the
   sidecar serves its best candidate and says, in headers, its similarity, the policy's
   confidence and the guard's objection.  Any rule is then scored from that one pass (as
   the savings benchmark's sweep is): a static threshold serves ``similarity >= t``; with
   the guard, only where the guard did not object; the adaptive policy at error bound
   ``d`` serves ``confidence >= 1 - d`` (before it has evidence, the static rule).

Reported: precision at recall 0.3 ... 0.7 for the three rules; the adaptive policy's
measured wrong-hit rate at each bound; the default settings' precision and recall.  The
fake upstream's answers are deterministic, so the judge compares texts exactly
(``answer_equivalence = 1``).  meancache's conversations are split by their first
question as pairs are (:func:`~semcache.bench_workloads.builtin_workload`); its dev
conversations warm up in one namespace (a "pair" there is a conversation).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from .bench_replay import BenchClient, Outcome, Servers
from .bench_report import replace_block
from .bench_workloads import Workload, builtin_pairs, builtin_workload, pairs_workload
from .embedding import Embedder
from .settings import Settings

__all__ = ["QualityConfig", "run_quality", "Curve", "precision_at_recall"]

RECALLS = (0.3, 0.4, 0.5, 0.6, 0.7)
DELTAS = (0.01, 0.02, 0.05, 0.10, 0.20)


@dataclass
class QualityConfig:
    """What one ``semcache bench quality`` run does (flags of the same names)."""

    data: Path = Path("../shared/data")
    workloads: Sequence[str] = ("qqp", "langcache", "meancache")
    limit: int | None = 3000  # test pairs per workload
    dev_limit: int | None = None  # dev pairs for the warm-up (None: all)
    chunk: int = 3000
    out: Path = Path("bench/results")
    readme: Path | None = None
    concurrency: int = 8
    progress: bool = True
    command: str = ""


@dataclass
class Curve:
    """One rule's precision at each recall of :data:`RECALLS` (None: not reached)."""

    rule: str
    precision: dict[float, float | None]


@dataclass
class QualityReport:
    name: str
    dev_pairs: int
    outcomes: int
    scorer: str
    queries: int
    positives: int
    curves: list[Curve]
    bounds: list[dict[str, Any]]
    defaults: dict[str, Any]
    seconds: float
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        d = self.__dict__.copy()
        d["curves"] = [{"rule": c.rule, "precision": {str(k): v for k, v in c.precision.items()}}
                       for c in self.curves]
        return d


# --------------------------------------------------------------------- scoring
Score = Callable[[Outcome], float]


def precision_at_recall(outcomes: Sequence[Outcome], score: Score,
                        recalls: Sequence[float] = RECALLS) -> dict[float, float | None]:
    """For each recall r, the best precision of any cut ``score >= s`` whose recall
    (correct hits / positive queries) reaches r.  Only hits can be served; ties in the
    score are served together."""
    positives = sum(o.positive for o in outcomes)
    served = sorted(((score(o), o.correct) for o in outcomes if o.hit), key=lambda t: -t[0])
    points: list[tuple[float, float]] = []  # (recall, precision) at every distinct cut
    hits = right = 0
    for i, (s, ok) in enumerate(served):
        if s == -math.inf:
            break
        hits += 1
        right += ok
        if i + 1 == len(served) or served[i + 1][0] != s:
            points.append((right / positives if positives else 0.0, right / hits))
    return {r: max((p for rec, p in points if rec >= r - 1e-12), default=None) for r in recalls}


# exact repeats are served by every rule (same scope, same text): they score above all
def _static(o: Outcome) -> float:
    if o.match == "exact":
        return math.inf
    return o.similarity if o.similarity is not None else -math.inf


def _guarded(o: Outcome) -> float:
    return -math.inf if o.guard and o.match != "exact" else _static(o)


def _adaptive(o: Outcome) -> float:
    if o.match == "exact":
        return math.inf
    return o.confidence if o.confidence is not None else -math.inf


def _ranked(o: Outcome) -> float:
    """The adaptive policy's scorer itself (the confidence is a monotone step function of
    it: these are the cuts a finer calibration, from more outcomes, would offer)."""
    if o.match == "exact":
        return math.inf
    return o.score if o.confidence is not None and o.score is not None else -math.inf


def _served(outcomes: Sequence[Outcome], rule: Callable[[Outcome], bool]) -> dict[str, Any]:
    positives = sum(o.positive for o in outcomes)
    hits = [o for o in outcomes if o.hit and rule(o)]
    right = sum(o.correct for o in hits)
    lo, hi = _wilson(len(hits) - right, len(hits))
    return {"hits": len(hits), "correct_hits": right, "wrong_hits": len(hits) - right,
            "wrong_rate_ci95": [lo, hi],
            "hit_rate": len(hits) / len(outcomes) if outcomes else 0.0,
            "recall": right / positives if positives else 0.0,
            "precision": right / len(hits) if hits else 1.0,
            "wrong_rate": (len(hits) - right) / len(hits) if hits else 0.0}


def _confident(level: float) -> Callable[[Outcome], bool]:
    """Semantic hits confident enough for ``level`` (the bound's rows: semantic only)."""
    return lambda o: o.match == "semantic" and o.confidence is not None and o.confidence >= level


def _wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Two-sided 95% Wilson interval of a rate k / n (the test set's own sampling noise)."""
    if n == 0:
        return 0.0, 1.0
    p, z2 = k / n, z * z
    centre, half = p + z2 / (2 * n), z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, (centre - half) / (1 + z2 / n)), min(1.0, (centre + half) / (1 + z2 / n))


def _default_rule(settings: Settings) -> Callable[[Outcome], bool]:
    """What the sidecar at ``settings`` serves: confident enough for the bound once the
    policy has evidence, else the static threshold and the guard."""
    def rule(o: Outcome) -> bool:
        if o.match == "exact":
            return True
        if o.confidence is not None:
            return o.confidence >= 1.0 - settings.max_wrong_rate
        return o.similarity is not None and o.similarity >= settings.threshold and not o.guard
    return rule


# ---------------------------------------------------------------------- replay
@contextlib.asynccontextmanager
async def _sidecar(settings: Settings, embedder: Embedder | None) -> AsyncIterator[Servers]:
    with tempfile.TemporaryDirectory(prefix="semcache-quality-") as tmp:
        cfg = settings.replace(
            data_dir=Path(tmp) / "store", sync=False, ttl=None, policy="adaptive",
            threshold_floor=min(settings.policy_floor, settings.threshold_floor),
            lookup_timeout=max(settings.lookup_timeout, 30.0), explore_rate=0.0,
            answer_equivalence=1.0, max_wrong_rate_ceiling=1.0, shadow=("*",),
            policy_refit_interval=1e9, policy_outcomes=max(settings.policy_outcomes, 100_000),
            admin_token=None, host="127.0.0.1")
        async with Servers(cfg, embedder) as servers:
            yield servers


async def _send_all(client: BenchClient, workload: Workload, lane: str, headers: dict[str, str],
                    phase: str, bar: Any) -> list[Outcome]:
    reqs = workload.loads if phase == "load" else workload.queries

    async def one(r: Any) -> Outcome:
        o = await client.send(r, lane, headers)
        bar.update(1)
        return o

    return list(await asyncio.gather(*(one(r) for r in reqs)))


async def _operator(servers: Servers, method: str, path: str, body: Any = None) -> Any:
    import aiohttp

    async with aiohttp.ClientSession() as s, s.request(method, servers.url + path, json=body) as r:
        if r.status != 200:
            raise RuntimeError(f"{method} {path}: HTTP {r.status}: {await r.text()}")
        return await r.json()


async def _run_one(name: str, cfg: QualityConfig, settings: Settings, embedder: Embedder | None,
                   out: TextIO) -> QualityReport:
    from tqdm import tqdm

    started = time.perf_counter()
    test = builtin_workload(name, cfg.data, split="test", limit=cfg.limit)
    if name == "meancache":  # conversations, not pairs: the dev split warms up in one piece
        dev = builtin_workload(name, cfg.data, split="dev", limit=cfg.dev_limit)
        chunks, dev_count = [dev], len(dev.loads) // 2
    else:
        pairs = builtin_pairs(name, cfg.data, split="dev", limit=cfg.dev_limit)[0]
        chunks = [pairs_workload(name, pairs[k:k + cfg.chunk])
                  for k in range(0, len(pairs), cfg.chunk)]
        dev_count = len(pairs)
    notes: list[str] = []
    async with _sidecar(settings, embedder) as servers:
        run = f"quality-{name}-{int(time.time())}"
        client = BenchClient(servers.url, run, cfg.concurrency)
        try:
            total = sum(len(c.requests) for c in chunks) + len(test.requests)
            with tqdm(total=total, desc=name, unit="req", disable=not cfg.progress,
                      leave=False, dynamic_ncols=True) as bar:
                for k, chunk in enumerate(chunks):
                    lane = f"warm{k}"
                    await _send_all(client, chunk, lane, {"Cache-Control": "no-cache"}, "load", bar)
                    await servers.stores_done()
                    await _send_all(client, chunk, lane, {"Cache-Control": "no-store"}, "query", bar)
                    await servers.stores_done()  # the judging of the chunk's candidates
                state = await _operator(servers, "POST", "/semcache/policy",
                                        {"refit": True, "learning": False})
                await _operator(servers, "POST", "/semcache/shadow", {"namespaces": []})
                print(f"{name}: warm-up on {dev_count:,} dev pairs in shadow mode: "
                      f"{state['outcomes']:,} outcomes, scorer {state['model']['scorer']}, "
                      f"active {state['active']}", file=out, flush=True)
                await _send_all(client, test, "test", {"Cache-Control": "no-cache"}, "load", bar)
                await servers.stores_done()
                floor = min(settings.policy_floor, settings.threshold)
                outcomes = await _send_all(client, test, "test", {
                    "Cache-Control": "no-store", "X-Semcache-Threshold": repr(floor),
                    "X-Semcache-Max-Wrong-Rate": "1"}, "query", bar)
        finally:
            await client.close()
        rt = servers.runtime
        assert rt is not None
        if rt.counters.judge_dropped:
            notes.append(f"{rt.counters.judge_dropped} candidates were not judged (judge behind)")
        if rt.counters.lookup_timeouts or rt.counters.lookup_failures:
            notes.append(f"{rt.counters.lookup_timeouts} lookup timeouts, "
                         f"{rt.counters.lookup_failures} lookup failures")
    curves = [Curve("static (no guard)", precision_at_recall(outcomes, _static)),
              Curve("static + guard", precision_at_recall(outcomes, _guarded)),
              Curve("adaptive (by max_wrong_rate)", precision_at_recall(outcomes, _adaptive)),
              Curve("adaptive scorer (by score)", precision_at_recall(outcomes, _ranked))]
    bounds = [{"max_wrong_rate": d, **_served(outcomes, _confident(1.0 - d))} for d in DELTAS]
    defaults = {
        "static": _served(outcomes, lambda o: o.match == "exact" or (
            o.similarity is not None and o.similarity >= settings.threshold and not o.guard)),
        "policy": _served(outcomes, _default_rule(settings)),
        "threshold": settings.threshold, "max_wrong_rate": settings.max_wrong_rate}
    return QualityReport(name, dev_count, int(state["outcomes"]), str(state["model"]["scorer"]),
                         len(outcomes), sum(o.positive for o in outcomes), curves, bounds, defaults,
                         time.perf_counter() - started, notes)


# ---------------------------------------------------------------------- report
def _p(v: float | None) -> str:
    return "—" if v is None else f"{v:.3f}"


def markdown(reports: Sequence[QualityReport], cfg: QualityConfig, embedder_name: str) -> str:
    lines = [f"Produced by `{cfg.command}`." if cfg.command else "", "",
             f"Embedding model {embedder_name}. Precision at each recall (test split; the "
             "adaptive policy learned only from the dev split, in shadow mode):", "",
             "| workload | rule | " + " | ".join(f"P@R{r:.1f}" for r in RECALLS) + " |",
             "|---|---|" + "---:|" * len(RECALLS)]
    for rep in reports:
        for c in rep.curves:
            lines.append(f"| {rep.name} | {c.rule} | "
                         + " | ".join(_p(c.precision[r]) for r in RECALLS) + " |")
    lines += ["", "The error bound: the adaptive policy's measured wrong-hit rate among served "
              "semantic hits at each `max_wrong_rate` δ, with the 95% interval of that "
              "measurement on the test set and the recall kept:", "",
              "| workload | dev pairs | outcomes | scorer | " + " | ".join(
                  f"δ={d:g}" for d in DELTAS) + " |", "|---|---:|---:|---|" + "---:|" * len(DELTAS)]
    for rep in reports:
        cells = [f"{b['wrong_rate']:.3f} [{b['wrong_rate_ci95'][0]:.2f}, "
                 f"{b['wrong_rate_ci95'][1]:.2f}] R {b['recall']:.2f}" if b["hits"] else "no hits"
                 for b in rep.bounds]
        lines.append(f"| {rep.name} | {rep.dev_pairs:,} | {rep.outcomes:,} | {rep.scorer} | "
                     + " | ".join(cells) + " |")
    lines += ["", "At the default settings (threshold 0.85 + guard until the policy has "
              "evidence, then `max_wrong_rate` 0.05):", "",
              "| workload | queries | rule | hit rate | recall | precision | wrong hits |",
              "|---|---:|---|---:|---:|---:|---:|"]
    for rep in reports:
        for rule in ("static", "policy"):
            d = rep.defaults[rule]
            label = "static 0.85 + guard" if rule == "static" else "defaults (adaptive)"
            lines.append(f"| {rep.name} | {rep.queries:,} | {label} | {d['hit_rate']:.3f} | "
                         f"{d['recall']:.3f} | {d['precision']:.3f} | {d['wrong_hits']} |")
    for rep in reports:
        for note in rep.notes:
            lines.append(f"\nNote ({rep.name}): {note}")
    return "\n".join(lines).strip()


def run_quality(cfg: QualityConfig, settings: Settings, *, embedder: Embedder | None = None,
                out: TextIO | None = None) -> list[QualityReport]:
    """Run the benchmark (module doc); writes ``quality.json`` and ``quality.md`` to
    ``cfg.out`` and, with ``cfg.readme``, the README's quality block."""
    import sys

    out = out or sys.stdout
    reports = []
    for name in cfg.workloads:
        print(f"{name}: starting", file=out, flush=True)
        reports.append(asyncio.run(_run_one(name, cfg, settings, embedder, out)))
    name = embedder.name if embedder is not None else settings.embedding_model
    body = markdown(reports, cfg, name)
    cfg.out.mkdir(parents=True, exist_ok=True)
    (cfg.out / "quality.json").write_text(json.dumps(
        {"command": cfg.command, "embedder": name, "recalls": RECALLS,
         "workloads": [r.as_dict() for r in reports]}, indent=1), encoding="utf-8")
    (cfg.out / "quality.md").write_text(body + "\n", encoding="utf-8")
    if cfg.readme is not None:
        replace_block(cfg.readme, body, "quality")
    print(body, file=out)
    return reports
