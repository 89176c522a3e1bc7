"""Price table, budgets and the spend ledger as plain objects (no server)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from semcache import ConfigError, Settings
from semcache.budgets import check_budget, parse_budgets
from semcache.errors import BudgetExceededError
from semcache.ledger import Ledger, seconds_to_utc_midnight, utc_day
from semcache.pricing import PriceTable, cost, load_prices, price
from semcache.store import Store
from tests.conftest import Clock


def test_prices_resolve_dated_and_prefixed_model_names() -> None:
    assert price("gpt-4o-mini") == (0.15, 0.60)
    assert price("gpt-4o-mini-2024-07-18") == (0.15, 0.60)  # longest prefix wins over gpt-4o
    assert price("openai/gpt-4o") == (2.50, 10.00)
    assert price("GPT-4O") == (2.50, 10.00)
    assert price("gpt-4.5-preview") == (0.0, 0.0)  # unknown: never an invented price
    assert price("some-local-llama") == (0.0, 0.0)
    assert cost("gpt-4o-mini", 1_000_000, 1_000_000) == pytest.approx(0.75)
    assert cost("gpt-4o", 1000, 500) == pytest.approx((1000 * 2.5 + 500 * 10) / 1e6)


def test_price_override_files_json_and_toml(tmp_path: Path) -> None:
    js = tmp_path / "prices.json"
    js.write_text(json.dumps({"my-model": {"prompt": 1, "completion": 2}, "gpt-4o": [5, 20],
                              "*": [0.5, 0.5]}))
    table = load_prices(js)
    assert table.price("my-model-v2") == (1.0, 2.0) and table.price("gpt-4o") == (5.0, 20.0)
    assert table.price("gpt-4o-mini") == (0.15, 0.60)  # defaults kept
    assert table.price("unknown") == (0.5, 0.5)
    toml = tmp_path / "prices.toml"
    toml.write_text('[models]\n"fake-model" = { prompt = 3.0, completion = 4.0 }\n')
    assert load_prices(toml).cost("fake-model", 1e6, 1e6) == pytest.approx(7.0)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"m": {"prompt": -1}}))
    with pytest.raises(ConfigError, match="non-negative"):
        load_prices(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_prices(tmp_path / "missing.json")
    with pytest.raises(ConfigError, match="prices"):
        PriceTable({"m": (1.0, float("nan"))})


def test_budget_setting_parses_tokens_money_and_defaults() -> None:
    budgets = parse_budgets("team-a=200k, team-b=$5, key:abc=1m, *=50000, team-b=1000tokens")
    as_text = sorted(str(b) for b in budgets)
    assert as_text == ["*=50000", "key:abc=1000000", "ns:team-a=200000", "ns:team-b=$5",
                       "ns:team-b=1000"]
    s = Settings.load(environ={"SEMCACHE_BUDGETS": "team-a=10"})
    assert s.budgets == parse_budgets("ns:team-a=10") and s.public()["budgets"] == ["ns:team-a=10"]
    with pytest.raises(ConfigError, match="SEMCACHE_BUDGETS"):
        Settings.load(environ={"SEMCACHE_BUDGETS": "team-a=lots"})
    with pytest.raises(ConfigError, match="namespace=200000"):
        Settings.load(environ={"SEMCACHE_BUDGETS": "team-a"})


def test_budgets_bind_per_namespace_and_reset_at_utc_midnight() -> None:
    clock = Clock(1_700_000_000.0)
    ledger = Ledger(clock=clock)
    budgets = parse_budgets("team-a=100, *=$0.01")
    ledger.upstream("ns:team-a", "gpt-4o", 60, 50)  # 110 tokens
    ledger.hit("ns:team-a", "gpt-4o", 1000, 1000)  # hits never count
    with pytest.raises(BudgetExceededError, match=r"'ns:team-a' is over its daily budget of 100 tokens") as info:
        check_budget(budgets, ledger, "ns:team-a")
    assert info.value.status == 429 and info.value.retry_after == seconds_to_utc_midnight(clock.now)
    assert info.value.response_headers()["X-Should-Retry"] == "false"
    check_budget(budgets, ledger, "ns:team-b")  # the default money budget is not used up
    ledger.upstream("ns:team-b", "gpt-4o", 4000, 0)  # $0.01
    with pytest.raises(BudgetExceededError, match=r"\$0.01 \(the default budget '\*'\)"):
        check_budget(budgets, ledger, "ns:team-b")
    clock.now += seconds_to_utc_midnight(clock.now) + 1  # a new UTC day
    assert utc_day(clock.now) != utc_day(clock.now - 2)
    check_budget(budgets, ledger, "ns:team-a")
    check_budget(budgets, ledger, "ns:team-b")


def test_ledger_flushes_only_deltas_and_reloads_from_lmdb(tmp_path: Path) -> None:
    clock = Clock(1_700_000_000.0)
    with Store(tmp_path / "s", embedder="e", dim=4, sync=False) as store:
        first = Ledger(clock=clock)
        first.upstream("ns:a", "gpt-4o-mini", 100, 50)  # counted before the store is attached
        first.attach(store)
        first.hit("ns:a", "gpt-4o-mini", 100, 50)
        first.feedback("ns:a", "gpt-4o-mini", correct=False)
        assert first.flush() == 2 and first.flush() == 0  # a total row and a day row
        first.upstream("ns:a", "gpt-4o-mini", 10, 5, estimated=True)
        first.flush()
        second = Ledger(clock=clock)
        second.attach(store)
        [row] = second.rows()
        assert (row.requests, row.hits, row.upstream_calls) == (3, 1, 2)
        assert (row.prompt_tokens, row.completion_tokens, row.estimated_calls) == (110, 55, 1)
        assert (row.saved_prompt_tokens, row.saved_completion_tokens, row.wrong_hits) == (100, 50, 1)
        assert row.spent_usd == pytest.approx(cost("gpt-4o-mini", 110, 55))
        assert row.saved_usd == pytest.approx(cost("gpt-4o-mini", 100, 50))
        assert second.day_usage("ns:a") == (165, pytest.approx(row.spent_usd))
        assert second.totals()["hits"] == 1 and second.totals("ns:other")["hits"] == 0
