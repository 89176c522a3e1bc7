"""Prices and upstream speed of the model tiers the savings benchmark reports against.

Three default tiers, list prices in US dollars per million tokens (mid-2025 public price
lists, rounded; override them with ``--prices FILE``):

* ``small`` — a sub-1B distilled model: $0.10 in / $0.10 out;
* ``7b`` — a 7B-class open model on a hosted router: $0.20 in / $0.20 out;
* ``frontier`` — a frontier model (GPT-4o class): $2.50 in / $10.00 out.

Each tier also has a latency model used for "latency saved" (the fake upstream answers in
about a millisecond, so an upstream's time has to be modeled): ``ttft_s`` seconds to the
first token plus ``completion_tokens / tokens_per_s``.

A prices file is JSON: ``{"tiers": {"name": {"input_per_m": 0.1, "output_per_m": 0.1,
"ttft_s": 0.1, "tokens_per_s": 300}, ...}}``; it replaces the default table (tiers are
reported in file order).  Missing latency fields fall back to 0.3 s and 100 tokens/s.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError

__all__ = ["Tier", "DEFAULT_TIERS", "load_tiers", "cost", "upstream_seconds"]


@dataclass(frozen=True)
class Tier:
    """One model tier: US dollars per million input/output tokens, and its speed."""

    name: str
    input_per_m: float
    output_per_m: float
    ttft_s: float = 0.3
    tokens_per_s: float = 100.0


DEFAULT_TIERS: tuple[Tier, ...] = (
    Tier("small", 0.10, 0.10, ttft_s=0.10, tokens_per_s=300.0),
    Tier("7b", 0.20, 0.20, ttft_s=0.20, tokens_per_s=120.0),
    Tier("frontier", 2.50, 10.00, ttft_s=0.50, tokens_per_s=60.0),
)


def cost(tier: Tier, prompt_tokens: int, completion_tokens: int) -> float:
    """US dollars ``tier`` bills for one call of that many tokens."""
    return (prompt_tokens * tier.input_per_m + completion_tokens * tier.output_per_m) / 1e6


def upstream_seconds(tier: Tier, completion_tokens: int) -> float:
    """Modeled wall time of one non-streamed upstream call (first token + generation)."""
    return tier.ttft_s + completion_tokens / tier.tokens_per_s


def load_tiers(path: Path | None) -> tuple[Tier, ...]:
    """The tiers of a prices file (module doc), or the defaults when ``path`` is None.

    Raises :class:`ConfigError` naming the file and the tier/field that is wrong.
    """
    if path is None:
        return DEFAULT_TIERS
    try:
        doc: Any = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError("prices", str(path), f"cannot read a JSON prices file ({exc})") from None
    tiers = doc.get("tiers") if isinstance(doc, dict) else None
    if not isinstance(tiers, dict) or not tiers:
        raise ConfigError("prices", str(path), 'expected {"tiers": {"name": {...}, ...}}')
    out: list[Tier] = []
    for name, spec in tiers.items():
        if not isinstance(spec, dict):
            raise ConfigError(f"prices.tiers.{name}", spec, "must be an object")
        values: dict[str, float] = {}
        for key, default in (("input_per_m", None), ("output_per_m", None), ("ttft_s", 0.3),
                             ("tokens_per_s", 100.0)):
            raw = spec.get(key, default)
            if isinstance(raw, bool) or not isinstance(raw, (int, float)) or raw < 0:
                raise ConfigError(f"prices.tiers.{name}.{key}", raw, "must be a number >= 0")
            values[key] = float(raw)
        if values["tokens_per_s"] <= 0:
            raise ConfigError(f"prices.tiers.{name}.tokens_per_s", values["tokens_per_s"],
                              "must be positive")
        out.append(Tier(str(name), **values))
    return tuple(out)
