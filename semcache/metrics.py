"""Prometheus metrics of one sidecar (``GET /metrics``), with ``prometheus-client``.

Each app has its own :class:`CollectorRegistry` (several sidecars may live in one
process, e.g. in tests).  Two kinds of metric:

* counted on the request path (event loop): ``semcache_requests_total{endpoint, status,
  match}``, ``semcache_lookup_seconds{endpoint}``, ``semcache_hit_similarity``,
  ``semcache_policy_outcomes_total{source, verdict}`` (candidates judged for the policy);
* read at scrape time from the live state (:class:`State`): the spend ledger (tokens and
  dollars spent and saved, hits, upstream calls, feedback, budget refusals by namespace
  and model; these come from the persisted ledger, so they do not reset on restart),
  cache size (entries, bytes, scopes, evictions, expirations), the sidecar's plain
  counters (upstream errors, lookup failures/timeouts, stores...), budgets, readiness.

``status`` is ``hit``, ``miss``, ``bypass`` or ``refused`` (a budget said no); ``match``
is ``exact``, ``semantic``, ``coalesced`` (shared with a concurrent identical miss) or
``none``.  Namespaces are labelled in their internal form (``ns:team-a``, ``key:<hmac>``,
``anonymous``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from .ledger import LedgerRow

__all__ = ["Metrics", "State"]

LOOKUP_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                  0.25, 0.5, 1.0)
SIMILARITY_BUCKETS = (0.8, 0.82, 0.84, 0.86, 0.88, 0.9, 0.92, 0.94, 0.96, 0.98, 0.99, 1.0)


@dataclass
class State:
    """What the scrape-time collector reads (built by the web layer per scrape)."""

    ready: bool
    embedder: str = ""
    cache: dict[str, Any] | None = None
    store: dict[str, Any] | None = None
    counters: dict[str, int] = field(default_factory=dict)
    ledger: list[LedgerRow] = field(default_factory=list)
    budgets: list[dict[str, Any]] = field(default_factory=list)


# Counters of web_runtime.Counters exported as-is: name -> help
_PLAIN = {
    "upstream_errors": "upstream answers with an error status or broken streams",
    "lookup_failures": "lookups that raised (the request went upstream uncached)",
    "lookup_timeouts": "lookups over their time budget (the request went upstream uncached)",
    "stores": "answers stored",
    "store_refusals": "upstream answers not admitted to the cache",
    "store_failures": "stores that failed",
    "explored": "would-be semantic hits sent upstream to learn from (explore_rate)",
    "judge_dropped": "candidates not judged because the judge was behind (load)",
}


class _StateCollector(Collector):
    def __init__(self, state: Callable[[], State]) -> None:
        self._state = state

    def collect(self) -> Iterator[Metric]:
        s = self._state()
        yield GaugeMetricFamily("semcache_ready", "1 when the model is loaded and the index built",
                                value=1.0 if s.ready else 0.0)
        for name, help_ in _PLAIN.items():
            yield CounterMetricFamily(f"semcache_{name}", help_, value=s.counters.get(name, 0))
        yield from self._cache(s)
        yield from self._ledger(s.ledger)
        used = GaugeMetricFamily("semcache_budget_used", "budget used today (UTC), tokens or USD",
                                 labels=["namespace", "kind"])
        limit = GaugeMetricFamily("semcache_budget_limit", "daily budget, tokens or USD",
                                  labels=["namespace", "kind"])
        for b in s.budgets:
            used.add_metric([b["namespace"], b["kind"]], b["used"])
            limit.add_metric([b["namespace"], b["kind"]], b["limit"])
        yield used
        yield limit

    @staticmethod
    def _cache(s: State) -> Iterator[Metric]:
        c = s.cache or {}
        st = s.store or {}
        yield GaugeMetricFamily("semcache_entries", "live cache entries", value=c.get("entries", 0))
        yield GaugeMetricFamily("semcache_scopes", "scopes with at least one indexed entry",
                                value=c.get("scopes", 0))
        yield GaugeMetricFamily("semcache_payload_bytes", "stored payload bytes (what max_bytes caps)",
                                value=c.get("payload_bytes", 0))
        yield GaugeMetricFamily("semcache_store_file_bytes", "size of the LMDB file",
                                value=st.get("file_bytes", 0))
        yield CounterMetricFamily("semcache_evictions", "entries evicted by the caps",
                                  value=c.get("evictions", 0))
        yield CounterMetricFamily("semcache_expirations", "entries removed at the end of their TTL",
                                  value=c.get("expirations", 0))

    @staticmethod
    def _ledger(rows: list[LedgerRow]) -> Iterator[Metric]:
        ns_model = ["namespace", "model"]
        up_tok = CounterMetricFamily("semcache_upstream_tokens", "tokens bought upstream",
                                     labels=ns_model + ["type"])
        saved_tok = CounterMetricFamily("semcache_saved_tokens", "tokens answered from the cache",
                                        labels=ns_model + ["type"])
        spent = CounterMetricFamily("semcache_spent_usd", "US dollars spent upstream (price table)",
                                    labels=ns_model)
        saved = CounterMetricFamily("semcache_saved_usd", "US dollars saved by cache hits",
                                    labels=ns_model)
        hits = CounterMetricFamily("semcache_hits", "requests answered from the cache", labels=ns_model)
        calls = CounterMetricFamily("semcache_upstream_calls", "requests answered by the upstream",
                                    labels=ns_model)
        estimated = CounterMetricFamily(
            "semcache_estimated_usage", "calls/hits whose tokens were estimated from text length",
            labels=ns_model + ["kind"])
        feedback = CounterMetricFamily("semcache_feedback", "verdicts on served hits",
                                       labels=ns_model + ["verdict"])
        refusals = CounterMetricFamily("semcache_budget_refusals", "requests refused by a budget",
                                       labels=ns_model)
        for r in rows:
            lab = [r.namespace, r.model]
            up_tok.add_metric(lab + ["prompt"], r.prompt_tokens)
            up_tok.add_metric(lab + ["completion"], r.completion_tokens)
            saved_tok.add_metric(lab + ["prompt"], r.saved_prompt_tokens)
            saved_tok.add_metric(lab + ["completion"], r.saved_completion_tokens)
            spent.add_metric(lab, r.spent_usd)
            saved.add_metric(lab, r.saved_usd)
            hits.add_metric(lab, r.hits)
            calls.add_metric(lab, r.upstream_calls)
            estimated.add_metric(lab + ["upstream"], r.estimated_calls)
            estimated.add_metric(lab + ["hit"], r.estimated_hits)
            feedback.add_metric(lab + ["wrong"], r.wrong_hits)
            feedback.add_metric(lab + ["correct"], r.correct_hits)
            refusals.add_metric(lab, r.budget_refusals)
        yield from (up_tok, saved_tok, spent, saved, hits, calls, estimated, feedback, refusals)


class Metrics:
    """The registry of one sidecar and its request-path instruments.

    The instruments are thread-safe (prometheus-client locks); the web layer uses them on
    the event loop.  :meth:`bind` installs the scrape-time collector.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.requests = Counter(
            "semcache_requests", "requests to the cached endpoints by outcome",
            ["endpoint", "status", "match"], registry=self.registry)
        self.lookup_seconds = Histogram(
            "semcache_lookup_seconds", "time to decide hit or miss (exact + semantic lookup)",
            ["endpoint"], buckets=LOOKUP_BUCKETS, registry=self.registry)
        self.similarity = Histogram(
            "semcache_hit_similarity", "cosine similarity of served semantic hits",
            buckets=SIMILARITY_BUCKETS, registry=self.registry)
        self.outcomes = Counter(
            "semcache_policy_outcomes", "semantic candidates judged against the upstream's answer "
            "(source: miss, explore, shadow, feedback)", ["source", "verdict"], registry=self.registry)
        self._bound = False

    def bind(self, state: Callable[[], State]) -> None:
        """Read ``state()`` at every scrape (once per registry)."""
        if not self._bound:
            self.registry.register(_StateCollector(state))
            self._bound = True

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """The exposition for an ``Accept`` header: ``(body, content type)``."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type
