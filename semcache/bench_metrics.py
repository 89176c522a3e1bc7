"""Scoring replay outcomes: hits, wrong hits, tokens, money and latency saved, per policy.

A *policy* decides which recorded outcomes count as served from the cache:

* ``no cache`` — none: every request goes upstream (the spend the others are measured
  against);
* ``exact only`` — exact-text hits only (``X-Semcache-Match: exact``);
* ``threshold t`` — what the sidecar serves at similarity threshold ``t`` (for pairs, the
  one-pass outcomes with similarity ``>= t``; see :mod:`semcache.bench_replay`).  The
  similarity header has four decimals, so a similarity less than 0.00005 below ``t`` may
  be counted at ``t``.

Definitions (over the *query* requests; a pairs workload's anchor loads are every
policy's common set-up and are not counted):

* hit rate = hits / requests; recall = correct hits / positive requests (those whose
  correct answer is in the cache); precision = correct hits / hits (1.0 with no hits);
  wrong hits per 1,000 requests = 1000 * wrong hits / requests;
* upstream calls avoided = hits (each hit is one call not made);
* tokens saved = the prompt + completion tokens the upstream would have billed for the
  hit requests; money saved per tier = those tokens at the tier's prices
  (:mod:`semcache.bench_prices`); wrong hits save money too — that is why they are
  reported beside it;
* latency saved per tier = the modeled upstream time of the hit requests
  (:func:`~semcache.bench_prices.upstream_seconds`) minus the measured cost of the cache:
  the client-side time of every request for semantic policies (each pays a lookup; a
  miss's time here even includes the fake upstream's millisecond, so this is
  conservative), of the exact hits for exact-only (an exact miss costs microseconds).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .bench_prices import Tier, cost, upstream_seconds
from .bench_replay import EXACT_LANE, PASS_LANE, Outcome, Replay, lane_name

__all__ = ["Metrics", "score", "no_cache", "exact_only", "at_threshold", "sweep"]


@dataclass(frozen=True)
class Metrics:
    """The numbers of one policy on one workload (module doc for the definitions)."""

    policy: str
    threshold: float | None
    requests: int
    positives: int
    hits: int
    correct_hits: int
    prompt_tokens_saved: int
    completion_tokens_saved: int
    money_saved: dict[str, float] = field(default_factory=dict)
    money_saved_correct: dict[str, float] = field(default_factory=dict)
    spend: dict[str, float] = field(default_factory=dict)
    latency_saved_s: dict[str, float] = field(default_factory=dict)
    cache_seconds: float = 0.0

    @property
    def wrong_hits(self) -> int:
        return self.hits - self.correct_hits

    @property
    def hit_rate(self) -> float:
        return self.hits / self.requests if self.requests else 0.0

    @property
    def recall(self) -> float:
        return self.correct_hits / self.positives if self.positives else 0.0

    @property
    def precision(self) -> float:
        return self.correct_hits / self.hits if self.hits else 1.0

    @property
    def wrong_per_1k(self) -> float:
        return 1000.0 * self.wrong_hits / self.requests if self.requests else 0.0

    @property
    def calls_avoided(self) -> int:
        return self.hits

    @property
    def tokens_saved(self) -> int:
        return self.prompt_tokens_saved + self.completion_tokens_saved

    def saved_share(self, tier: str) -> float:
        """Fraction of the no-cache spend saved at ``tier``'s prices."""
        spend = self.spend.get(tier, 0.0)
        return self.money_saved.get(tier, 0.0) / spend if spend else 0.0

    def per_million_requests(self, tier: str) -> float:
        """Money saved at ``tier`` scaled to one million requests of this workload."""
        return self.money_saved.get(tier, 0.0) * 1e6 / self.requests if self.requests else 0.0

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for name in ("wrong_hits", "hit_rate", "recall", "precision", "wrong_per_1k",
                     "calls_avoided", "tokens_saved"):
            out[name] = getattr(self, name)
        return out


def score(policy: str, threshold: float | None, outcomes: Sequence[Outcome],
          served: Callable[[Outcome], bool], tiers: Sequence[Tier], *,
          overhead: Callable[[Outcome], float] = lambda o: 0.0) -> Metrics:
    """Metrics of ``outcomes`` when ``served(o)`` says which were answered by the cache.

    ``overhead(o)`` is the time the cache cost that request (seconds).
    """
    hits = correct = ptok = ctok = 0
    saved = dict.fromkeys((t.name for t in tiers), 0.0)
    saved_ok = dict.fromkeys(saved, 0.0)
    spend = dict.fromkeys(saved, 0.0)
    modeled = dict.fromkeys(saved, 0.0)
    cache_s = 0.0
    for o in outcomes:
        for t in tiers:
            spend[t.name] += cost(t, o.prompt_tokens, o.completion_tokens)
        cache_s += overhead(o)
        if not served(o):
            continue
        hits += 1
        correct += o.correct
        ptok += o.prompt_tokens
        ctok += o.completion_tokens
        for t in tiers:
            c = cost(t, o.prompt_tokens, o.completion_tokens)
            saved[t.name] += c
            if o.correct:
                saved_ok[t.name] += c
            modeled[t.name] += upstream_seconds(t, o.completion_tokens)
    return Metrics(policy, threshold, len(outcomes), sum(o.positive for o in outcomes), hits,
                   correct, ptok, ctok, saved, saved_ok, spend,
                   {k: v - cache_s for k, v in modeled.items()}, cache_s)


def no_cache(replay: Replay, tiers: Sequence[Tier]) -> Metrics:
    """Every request goes upstream."""
    return score("no cache", None, _lane(replay, None), lambda o: False, tiers)


def exact_only(replay: Replay, tiers: Sequence[Tier]) -> Metrics:
    """Only exact-text hits are served (a semantic hit at threshold 1.0 counts as a miss)."""
    def exact(o: Outcome) -> bool:
        return o.hit and o.match == "exact"

    return score("exact only", 1.0, _lane(replay, EXACT_LANE), exact, tiers,
                 overhead=lambda o: o.latency_s if exact(o) else 0.0)


def at_threshold(replay: Replay, threshold: float, tiers: Sequence[Tier], *,
                 policy: str | None = None) -> Metrics:
    """What the sidecar serves at ``threshold`` (pairs: from the one pass; logs: its lane)."""
    name = policy or f"threshold {threshold:.2f}"
    if replay.kind == "pairs":
        if threshold < replay.floor - 1e-9:
            raise ValueError(f"threshold {threshold} is below the replay's floor {replay.floor}")
        return score(name, threshold, replay.lanes[PASS_LANE],
                     lambda o: o.hit and (o.match == "exact" or (o.similarity or 0.0) >= threshold),
                     tiers, overhead=lambda o: o.latency_s)
    lane = lane_name(threshold)
    if lane not in replay.lanes:
        raise ValueError(f"the log was not replayed at threshold {lane} "
                         f"(lanes: {', '.join(replay.lanes)})")
    return score(name, threshold, replay.lanes[lane], lambda o: o.hit, tiers,
                 overhead=lambda o: o.latency_s)


def sweep(replay: Replay, thresholds: Sequence[float], tiers: Sequence[Tier]) -> list[Metrics]:
    """:func:`at_threshold` for each threshold the replay can score."""
    if replay.kind == "pairs":
        usable = [t for t in thresholds if t >= replay.floor - 1e-9]
    else:
        usable = [t for t in thresholds if lane_name(t) in replay.lanes]
    return [at_threshold(replay, t, tiers) for t in usable]


def _lane(replay: Replay, prefer: str | None) -> list[Outcome]:
    if replay.kind == "pairs":
        return replay.lanes[PASS_LANE]
    if prefer and prefer in replay.lanes:
        return replay.lanes[prefer]
    return next(iter(replay.lanes.values()))
