"""Daily budgets per namespace: tokens or US dollars spent upstream per UTC day.

A budget is declared as ``namespace=limit`` in the ``budgets`` setting, several separated
by commas::

    team-a=200000, team-b=$5, team-b=1m, *=50000

* a plain number (``k``/``m`` suffixes allowed) is a token budget (prompt + completion
  tokens bought upstream), ``$X`` or ``Xusd`` a money budget;
* the namespace is the ``X-Semcache-Namespace`` value, or an internal name
  (``ns:team-a``, ``key:<hmac>`` as shown by ``/semcache/stats``, ``anonymous``);
* ``*`` applies to every namespace that has no budget of that kind of its own.

A request is refused (429, :class:`BudgetExceededError`) when it would go upstream and
its namespace already used its budget today; the refusal names the budget.  Cache hits
are always served and never count against a budget.  The check is "already at or over",
so the request that crosses the limit is still answered (its cost is unknown until the
upstream answers).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .errors import BudgetExceededError
from .keys import internal_namespace
from .ledger import Ledger, seconds_to_utc_midnight

__all__ = ["Budget", "parse_budgets", "check_budget", "budget_status"]

TOKENS = "tokens"
USD = "usd"


@dataclass(frozen=True)
class Budget:
    """One daily limit: ``namespace`` (internal form, or ``*``), ``kind`` (``tokens`` or
    ``usd``) and ``limit`` (tokens, or US dollars) per UTC day."""

    namespace: str
    kind: str
    limit: float

    def __str__(self) -> str:
        amount = f"${self.limit:g}" if self.kind == USD else f"{int(self.limit)}"
        return f"{self.namespace}={amount}"

    def describe(self) -> str:
        if self.kind == USD:
            return f"${self.limit:.2f}" if self.limit >= 0.01 else f"${self.limit:g}"
        return f"{int(self.limit)} tokens"


def _amount(text: str) -> tuple[str, float]:
    t = text.strip().lower().replace("_", "")
    if t.startswith("$") or t.endswith("usd"):
        kind, number = USD, t.removeprefix("$").removesuffix("usd").strip()
        value = float(number)
    else:
        kind = TOKENS
        t = t.removesuffix("tokens").removesuffix("tok").strip()
        mult = {"k": 1_000, "m": 1_000_000}.get(t[-1:], 1)
        value = float(t[:-1] if mult != 1 else t) * mult
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"budget amount {text!r} must be a non-negative number")
    return kind, value


def parse_budgets(text: str) -> tuple[Budget, ...]:
    """Budgets from ``ns=limit, ns2=$limit, ...`` (empty text: none).

    Raises ``ValueError`` naming the bad item (the settings layer turns it into a
    :class:`ConfigError` naming the flag or variable).
    """
    out: dict[tuple[str, str], Budget] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, amount = item.rpartition("=")
        name = name.strip()
        if not sep or not name:
            raise ValueError(f"budget {item!r} must look like namespace=200000 or namespace=$5")
        try:
            kind, limit = _amount(amount)
        except ValueError as exc:
            raise ValueError(f"budget {item!r}: {exc}") from None
        ns = "*" if name == "*" else internal_namespace(name)
        out[(ns, kind)] = Budget(ns, kind, limit)  # the last one given for a pair wins
    return tuple(out.values())


def applicable(budgets: Iterable[Budget], namespace: str) -> list[Budget]:
    """The budgets that bind ``namespace``: its own, else the ``*`` one, per kind."""
    own = {b.kind: b for b in budgets if b.namespace == namespace}
    for b in budgets:
        if b.namespace == "*" and b.kind not in own:
            own[b.kind] = b
    return [own[k] for k in sorted(own)]


def check_budget(budgets: tuple[Budget, ...], ledger: Ledger, namespace: str) -> None:
    """Raise :class:`BudgetExceededError` if ``namespace`` used up a budget today."""
    if not budgets:
        return
    binding = applicable(budgets, namespace)
    if not binding:
        return
    now = ledger.clock()
    tokens, usd = ledger.day_usage(namespace, now)
    for budget in binding:
        used = usd if budget.kind == USD else tokens
        if used >= budget.limit:
            spent = f"${used:.4f}" if budget.kind == USD else f"{int(used)} tokens"
            scope = " (the default budget '*')" if budget.namespace == "*" else ""
            raise BudgetExceededError(
                f"namespace {namespace!r} is over its daily budget of {budget.describe()}"
                f"{scope}: {spent} spent upstream today (UTC); requests that need the upstream "
                "are refused until 00:00 UTC, cache hits are still served",
                retry_after=seconds_to_utc_midnight(now))


def budget_status(budgets: tuple[Budget, ...], ledger: Ledger,
                  namespaces: Iterable[str]) -> list[dict[str, Any]]:
    """Today's use of every declared budget: the named namespaces, and ``*`` for each of
    ``namespaces`` that it binds."""
    out: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    candidates = sorted({b.namespace for b in budgets if b.namespace != "*"} | set(namespaces))
    for ns in candidates:
        tokens, usd = ledger.day_usage(ns)
        for budget in applicable(budgets, ns):
            if (ns, budget.kind) in seen:
                continue
            seen.add((ns, budget.kind))
            used = usd if budget.kind == USD else tokens
            out.append({"namespace": ns, "kind": budget.kind, "limit": budget.limit,
                        "used": used, "remaining": max(0.0, budget.limit - used),
                        "exceeded": used >= budget.limit, "default": budget.namespace == "*"})
    return out
