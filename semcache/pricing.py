"""Model prices: what a model call costs, for the spend ledger (and the savings benchmark).

A :class:`PriceTable` maps model names to ``(prompt, completion)`` prices in US dollars
per million tokens.  Lookup is forgiving the way routers name models: an exact name
first, then the same name without a provider prefix (``openai/gpt-4o`` -> ``gpt-4o``),
then the longest known prefix (``gpt-4o-mini-2024-07-18`` -> ``gpt-4o-mini``), then the
``"*"`` entry (default: free, so an unknown model is never charged an invented price;
operators price it with an override file).

Override files are JSON or TOML (chosen by the ``.toml`` suffix), a mapping from model
name to either ``{"prompt": 0.15, "completion": 0.6}`` or ``[0.15, 0.6]``; a top-level
``"models"`` table is accepted too.  Entries are merged over the defaults.

The module-level :func:`price` and :func:`cost` use the default table; the sidecar builds
its own table from the ``prices`` setting.  Pure and thread-safe (tables are immutable
after construction).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import ConfigError

__all__ = ["PriceTable", "DEFAULT_PRICES", "price", "cost", "load_prices"]

# US dollars per million tokens (prompt, completion): public list prices of the
# providers, standard tier, no caching or batch discounts.
DEFAULT_PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4-turbo": (10.00, 30.00),
    "gpt-4": (30.00, 60.00),
    "gpt-3.5-turbo": (0.50, 1.50),
    "o1": (15.00, 60.00),
    "o1-mini": (1.10, 4.40),
    "o3": (2.00, 8.00),
    "o3-mini": (1.10, 4.40),
    "o4-mini": (1.10, 4.40),
    "claude-3-5-sonnet": (3.00, 15.00),
    "claude-3-7-sonnet": (3.00, 15.00),
    "claude-sonnet-4": (3.00, 15.00),
    "claude-3-5-haiku": (0.80, 4.00),
    "claude-3-haiku": (0.25, 1.25),
    "claude-3-opus": (15.00, 75.00),
    "claude-opus-4": (15.00, 75.00),
    "text-embedding-3-small": (0.02, 0.0),
    "text-embedding-3-large": (0.13, 0.0),
    "text-embedding-ada-002": (0.10, 0.0),
    "*": (0.0, 0.0),
}


_SEPARATORS = ("-", ":", "@", "_")


class PriceTable:
    """Immutable model -> (prompt, completion) prices in USD per million tokens."""

    def __init__(self, prices: Mapping[str, tuple[float, float]] | None = None) -> None:
        table: dict[str, tuple[float, float]] = {}
        for model, pair in (DEFAULT_PRICES if prices is None else prices).items():
            _check(model, pair, "prices")
            table[model.strip().lower()] = (float(pair[0]), float(pair[1]))
        table.setdefault("*", (0.0, 0.0))
        self._table = table
        # longest prefixes first, so gpt-4o-mini wins over gpt-4o for gpt-4o-mini-2024-07-18
        self._prefixes = sorted((m for m in table if m != "*"), key=len, reverse=True)
        self._memo: dict[str, tuple[float, float]] = {}

    def __contains__(self, model: str) -> bool:
        return model in self._table

    def items(self) -> list[tuple[str, tuple[float, float]]]:
        return sorted(self._table.items())

    def merged(self, overrides: Mapping[str, tuple[float, float]]) -> PriceTable:
        """A new table with ``overrides`` on top of this one."""
        return PriceTable({**self._table, **overrides})

    def price(self, model: str) -> tuple[float, float]:
        """``(prompt_per_mtok, completion_per_mtok)`` in USD for ``model``."""
        found = self._memo.get(model)
        if found is not None:
            return found
        found = self._resolve(model)
        if len(self._memo) < 4096:
            self._memo[model] = found
        return found

    def _resolve(self, model: str) -> tuple[float, float]:
        name = model.strip().lower()
        candidates = [name]
        if "/" in name:
            candidates.append(name.rsplit("/", 1)[1])
        for cand in candidates:
            if cand in self._table:
                return self._table[cand]
        for cand in candidates:
            for prefix in self._prefixes:
                # a dated or tagged variant: the prefix followed by a separator
                if cand.startswith(prefix) and cand[len(prefix):len(prefix) + 1] in _SEPARATORS:
                    return self._table[prefix]
        return self._table["*"]

    def cost(self, model: str, prompt_tokens: float, completion_tokens: float) -> float:
        """US dollars for ``prompt_tokens`` in and ``completion_tokens`` out of ``model``."""
        p, c = self.price(model)
        return (prompt_tokens * p + completion_tokens * c) / 1_000_000


def _check(model: Any, pair: Any, source: str) -> None:
    if not isinstance(model, str) or not model:
        raise ConfigError(source, model, "model names must be non-empty strings")
    if (not isinstance(pair, tuple) or len(pair) != 2
            or not all(isinstance(x, (int, float)) and not isinstance(x, bool)
                       and math.isfinite(x) and x >= 0 for x in pair)):
        raise ConfigError(source, {model: pair},
                          "a price is two non-negative numbers: USD per million prompt and "
                          "completion tokens")


def _pair(model: str, value: Any, source: str) -> tuple[float, float]:
    if isinstance(value, Mapping):
        unknown = set(value) - {"prompt", "completion"}
        if unknown or "prompt" not in value:
            raise ConfigError(source, {model: value},
                              "expected {\"prompt\": <usd/Mtok>, \"completion\": <usd/Mtok>}")
        pair = (value["prompt"], value.get("completion", 0.0))
    elif isinstance(value, (list, tuple)) and len(value) == 2:
        pair = (value[0], value[1])
    else:
        raise ConfigError(source, {model: value},
                          "expected {\"prompt\": x, \"completion\": y} or [x, y] (USD per million tokens)")
    _check(model, pair, source)
    return float(pair[0]), float(pair[1])


def load_prices(path: str | Path | None) -> PriceTable:
    """The default table, with the overrides of the JSON/TOML file at ``path`` (if any).

    Raises :class:`ConfigError` naming the file and the bad entry.
    """
    if path is None:
        return PriceTable()
    file = Path(path)
    source = f"prices ({file})"
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("prices", str(file), f"cannot read: {exc}") from None
    try:
        if file.suffix.lower() == ".toml":
            import tomllib

            doc: Any = tomllib.loads(text)
        else:
            doc = json.loads(text)
    except ValueError as exc:
        raise ConfigError("prices", str(file), f"does not parse: {exc}") from None
    if isinstance(doc, Mapping) and isinstance(doc.get("models"), Mapping):
        doc = doc["models"]
    if not isinstance(doc, Mapping):
        raise ConfigError("prices", str(file), "must hold a mapping of model -> price")
    overrides = {str(model).strip().lower(): _pair(str(model), value, source)
                 for model, value in doc.items()}
    return PriceTable().merged(overrides)


_DEFAULT = PriceTable()


def price(model: str) -> tuple[float, float]:
    """``(prompt_per_mtok, completion_per_mtok)`` in USD from the default table."""
    return _DEFAULT.price(model)


def cost(model: str, prompt_tokens: float, completion_tokens: float) -> float:
    """US dollars for a call of ``model`` by the default table."""
    return _DEFAULT.cost(model, prompt_tokens, completion_tokens)
