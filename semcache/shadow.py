"""Shadow mode: measure what the cache would serve before trusting it.

For the namespaces named by the ``shadow`` setting (``team-a``, an internal name such as
``key:...``, or ``*`` for all), every request is answered by the upstream.  The cache
still looks up, decides and stores as usual, and records what it *would* have served;
when a would-be answer exists, it is compared with the upstream's
(:mod:`semcache.judge`), so the report gives the would-be hit rate and the would-be
wrong-hit rate per namespace.  Every compared semantic candidate is also an outcome the
adaptive policy learns from (weight 1), which makes shadow mode the way to warm a new
sidecar up without serving a single wrong answer.

Event-loop confined (not thread-safe); counts are since the process started.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from typing import Any

__all__ = ["Shadow", "ShadowCounts"]


@dataclass
class ShadowCounts:
    """Per namespace: requests looked up, would-be hits (exact / semantic), and of the
    would-be hits compared with the upstream's answer, how many were wrong."""

    requests: int = 0
    would_hit_exact: int = 0
    would_hit_semantic: int = 0
    judged: int = 0
    wrong: int = 0

    def as_dict(self) -> dict[str, Any]:
        hits = self.would_hit_exact + self.would_hit_semantic
        out = asdict(self)
        out["would_hit_rate"] = hits / self.requests if self.requests else 0.0
        out["would_be_wrong_rate"] = self.wrong / self.judged if self.judged else 0.0
        return out


class Shadow:
    """Which namespaces are shadowed, and what the cache would have done for them."""

    def __init__(self, namespaces: Iterable[str] = ()) -> None:
        self.counts: dict[str, ShadowCounts] = {}
        self.everything = False
        self.names: frozenset[str] = frozenset()
        self.set(namespaces)

    def set(self, namespaces: Iterable[str]) -> None:
        """Shadow exactly ``namespaces`` from now on (``X-Semcache-Namespace`` values or
        internal names; ``*``: all).  Counts so far are kept."""
        names = {n.strip() for n in namespaces if n.strip()}
        self.everything = "*" in names
        self.names = frozenset(names - {"*"}) | {f"ns:{n}" for n in names - {"*"}}

    def __bool__(self) -> bool:
        return self.everything or bool(self.names)

    def covers(self, namespace: str) -> bool:
        return self.everything or namespace in self.names

    def _of(self, namespace: str) -> ShadowCounts:
        return self.counts.setdefault(namespace, ShadowCounts())

    def looked_up(self, namespace: str, would_hit: str | None) -> None:
        """One shadowed request; ``would_hit`` is ``exact``, ``semantic`` or None."""
        c = self._of(namespace)
        c.requests += 1
        if would_hit == "exact":
            c.would_hit_exact += 1
        elif would_hit == "semantic":
            c.would_hit_semantic += 1

    def judged(self, namespace: str, correct: bool) -> None:
        """A would-be hit compared with the upstream's answer."""
        c = self._of(namespace)
        c.judged += 1
        c.wrong += not correct

    def report(self, namespace: str | None = None) -> dict[str, Any]:
        chosen = {ns: c for ns, c in sorted(self.counts.items())
                  if namespace is None or ns == namespace}
        total = ShadowCounts(*(sum(getattr(c, f.name) for c in chosen.values())
                               for f in fields(ShadowCounts)))
        rows = {ns: c.as_dict() for ns, c in chosen.items()}
        return {"namespaces": rows, "total": total.as_dict(),
                "shadowed": sorted(self.names) if not self.everything else ["*"]}
