"""Answer quality on the request path: shadow mode, exploration, the verifier, and the
judging of upstream answers into the adaptive policy's outcomes (:mod:`semcache.policy`).

For a semantic candidate (:class:`~semcache.cache.Candidate`) the proxy asks
:func:`decide`, which returns whether to serve it and, when the request goes upstream
anyway, a :class:`Probe`: after the upstream answered, :func:`judge` compares its answer
with the candidate's stored one (:mod:`semcache.judge`) and records the outcome.

* shadowed namespace (``shadow`` setting): never served; would-be hits are counted and
  every candidate is judged (weight 1);
* a candidate the policy would serve is, with probability ``explore_rate``, sent upstream
  instead (``X-Semcache-Explored: 1``; weight ``1 / explore_rate``);
* a refused candidate marked borderline goes to the verifier when one is configured
  (``X-Semcache-Verified: 1`` when it approves); otherwise it is judged (weight 1).

Exploration never applies to requests that set their own rule (``X-Semcache-Threshold``
or ``X-Semcache-Max-Wrong-Rate``) and stops while learning is off.  Event-loop confined
except :func:`judge`'s work, which runs on the learning thread.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
from dataclasses import dataclass, field
from typing import Any

from .cache import Candidate, SemanticCache
from .judge import answer_text, equivalent
from .keys import CacheRequest
from .policy import Outcome
from .web_runtime import Runtime

__all__ = ["Probe", "Decision", "decide", "judge", "quality_headers"]

log = logging.getLogger("semcache.web")


@dataclass(frozen=True, slots=True)
class Probe:
    """A candidate not served whose request goes upstream: judged against the answer."""

    candidate: Candidate
    source: str  # "miss", "explore" or "shadow"
    weight: float
    namespace: str
    endpoint: str


@dataclass
class Decision:
    """Serve the candidate or not; ``probe`` to judge after the upstream answered;
    ``headers`` to add to the response either way."""

    serve: bool
    probe: Probe | None = None
    headers: dict[str, str] = field(default_factory=dict)


def quality_headers(cand: Candidate) -> dict[str, str]:
    """What the response says about the policy's view of a candidate."""
    out: dict[str, str] = {}
    if cand.verdict.confidence is not None:
        out["X-Semcache-Confidence"] = f"{cand.verdict.confidence:.4f}"
    if cand.verdict.score is not None and math.isfinite(cand.verdict.score):
        out["X-Semcache-Score"] = f"{cand.verdict.score:.6f}"  # what the confidence is read from
    if cand.guard is not None:
        out["X-Semcache-Guard"] = cand.guard.split(":")[0]
    return out


async def decide(rt: Runtime, creq: CacheRequest, cand: Candidate, *, own_rule: bool,
                 shadowed: bool) -> Decision:
    """Whether to serve ``cand`` for ``creq`` (module doc).  ``own_rule``: the request set
    its threshold or wrong-rate bound; ``shadowed``: its namespace is in shadow mode."""
    cache = rt.cache
    assert cache is not None
    headers = quality_headers(cand)
    if shadowed:
        rt.shadow.looked_up(creq.namespace, "semantic" if cand.verdict.serve else None)
        headers["X-Semcache-Shadow"] = "would-hit" if cand.verdict.serve else "would-miss"
        return Decision(False, Probe(cand, "shadow", 1.0, creq.namespace, creq.endpoint), headers)
    rate = rt.settings.explore_rate
    if cand.verdict.serve:
        if rate > 0 and not own_rule and cache.policy.learning and random.random() < rate:
            rt.counters.explored += 1
            headers["X-Semcache-Explored"] = "1"
            return Decision(False, Probe(cand, "explore", 1.0 / rate, creq.namespace,
                                         creq.endpoint), headers)
        return Decision(True, None, headers)
    if cand.verdict.borderline and rt.verifier is not None:
        approved = await rt.verifier.approve(creq.semantic_text or "", cand.record.text or "",
                                             cand.similarity)
        headers["X-Semcache-Verified"] = "1" if approved else "0"
        if approved:
            return Decision(True, None, headers)
    if not cache.policy.learning:  # nothing would learn from the judgement: skip its cost
        return Decision(False, None, headers)
    return Decision(False, Probe(cand, "miss", 1.0, creq.namespace, creq.endpoint), headers)


JUDGE_BACKLOG = 64  # probes waiting to be judged; more are dropped (counted) under load


def judge(rt: Runtime, probe: Probe | None, status: int, answer: Any) -> None:
    """Compare the upstream's ``answer`` with the probe's stored answer in the background
    and record the outcome (nothing for an error status or an answer that is not JSON).

    Judging embeds both answers (one forward pass, on the learning thread: never in the
    lookups' batches).  When :data:`JUDGE_BACKLOG` probes already wait, the probe is
    dropped: which probes are dropped depends on load, not on their content, so the
    outcomes stay a fair sample."""
    cache = rt.cache
    if probe is None or cache is None or status != 200 or not isinstance(answer, dict):
        return
    if rt.counters.judging >= JUDGE_BACKLOG:
        rt.counters.judge_dropped += 1
        return
    rt.counters.judging += 1
    loop = asyncio.get_running_loop()
    task = loop.run_in_executor(rt.learn_pool, _judge, cache, probe, answer,
                                rt.settings.answer_equivalence)

    def done(fut: asyncio.Future[bool | None]) -> None:
        rt.counters.judging -= 1
        exc = fut.exception() if not fut.cancelled() else None
        if exc is not None:  # a judge that fails teaches nothing; the request is done
            log.warning("judging a cached answer failed (%s: %s)", type(exc).__name__, exc)
            return
        correct = fut.result() if not fut.cancelled() else None
        if correct is None:
            return
        rt.metrics.outcomes.labels(probe.source, "right" if correct else "wrong").inc()
        if probe.source == "shadow" and probe.candidate.verdict.serve:
            rt.shadow.judged(probe.namespace, correct)

    task.add_done_callback(done)
    rt.track(task)


def _judge(cache: SemanticCache, probe: Probe, answer: dict[str, Any],
           threshold: float) -> bool | None:
    """On the learning thread: the verdict (None: nothing to compare), recorded as an
    outcome of the policy."""
    a = answer_text(json.loads(probe.candidate.record.body), probe.endpoint)
    b = answer_text(answer, probe.endpoint)
    if not a or not b:
        return None
    correct = equivalent(a, b, cache.embedder.embed, threshold)
    cand = probe.candidate
    cache.policy.record(Outcome(cand.observation, correct, probe.weight, probe.source,
                                cand.entry_id))
    return correct
