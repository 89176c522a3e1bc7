"""The operator surface through the real server: /metrics, the operator API, the spend
ledger and budgets, export/import, the client library and the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from semcache import (
    AsyncClient,
    AuthError,
    Client,
    ConfigError,
    InvalidRequestError,
    NotFoundError,
    Settings,
    async_openai_client,
    openai_client,
)
from semcache.budgets import parse_budgets
from semcache.cli import main
from semcache.web_app import make_app
from tests.conftest import Fake, SidecarFactory

TOKEN = "admin-7f3c9e"
CHAT = "/v1/chat/completions"
Q = "What is the capital of France?"
PARA = "what's the capital city of france"  # 0.866 with Q
LOOSE = {"X-Semcache-Threshold": "0.85"}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(ops: Client) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(ops.metrics()):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def sample(m: Samples, name: str, **labels: str) -> float:
    return m.get((name, frozenset(labels.items())), 0.0)


def ask(c: openai.OpenAI, text: str, **kw: Any) -> tuple[dict[str, str], str]:
    raw = c.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": text}], **kw)
    return dict(raw.headers), raw.parse().choices[0].message.content or ""


def ask_stream(c: openai.OpenAI, text: str, **kw: Any) -> str:
    stream = c.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": text}], stream=True, **kw)
    return "".join((ch.choices[0].delta.content or "") for ch in stream if ch.choices)


# ------------------------------------------------------------------------ metrics
def test_metrics_parse_and_their_counters_move_with_requests(
        start_sidecar: SidecarFactory, fake: Fake) -> None:
    sc = start_sidecar(admin_token=TOKEN)
    ops = Client(sc.url, TOKEN)
    before = scrape(ops)
    assert sample(before, "semcache_ready") == 1 and sample(before, "semcache_entries") == 0
    c = openai_client(sc.url, "sk-m", namespace="team-m", max_retries=0)
    ask(c, Q)
    sc.wait_stores()
    ask(c, Q)
    assert ask(c, PARA, extra_headers=LOOSE)[0]["x-semcache-match"] == "semantic"
    with pytest.raises(openai.InternalServerError):
        ask(c, "An upstream failure", extra_headers={"X-Fake-Fault": "500"})
    after = scrape(ops)

    def moved(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert moved("semcache_requests_total", endpoint=CHAT, status="miss", match="none") == 2
    assert moved("semcache_requests_total", endpoint=CHAT, status="hit", match="exact") == 1
    assert moved("semcache_requests_total", endpoint=CHAT, status="hit", match="semantic") == 1
    assert moved("semcache_lookup_seconds_count", endpoint=CHAT) == 4
    assert moved("semcache_hit_similarity_count") == 1
    assert 0.85 <= moved("semcache_hit_similarity_sum") < 1.0
    assert moved("semcache_upstream_errors_total") == 1
    ns = {"namespace": "ns:team-m", "model": "gpt-4o-mini"}
    prompt = sample(after, "semcache_upstream_tokens_total", **ns, type="prompt")
    completion = sample(after, "semcache_upstream_tokens_total", **ns, type="completion")
    assert prompt > 0 and completion > 0
    assert sample(after, "semcache_saved_tokens_total", **ns, type="completion") == 2 * completion
    spent = sample(after, "semcache_spent_usd_total", **ns)
    assert spent > 0 and sample(after, "semcache_saved_usd_total", **ns) == pytest.approx(2 * spent)
    assert sample(after, "semcache_hits_total", **ns) == 2
    assert sample(after, "semcache_upstream_calls_total", **ns) == 1
    assert sample(after, "semcache_entries") == 1 and sample(after, "semcache_payload_bytes") > 0
    assert sample(after, "semcache_store_file_bytes") > 0
    # n=2 is not cached (a bypass); a store past max_entries evicts
    ask(c, "Two answers please", n=2)
    assert moved_now(ops, before, "semcache_requests_total", endpoint=CHAT, status="bypass",
                     match="none") == 1
    kinds = {f.name: f.type for f in text_string_to_metric_families(ops.metrics())}
    assert kinds["semcache_requests"] == "counter" and kinds["semcache_lookup_seconds"] == "histogram"
    assert kinds["semcache_entries"] == "gauge" and kinds["semcache_evictions"] == "counter"


def moved_now(ops: Client, before: Samples, name: str, **labels: str) -> float:
    return sample(scrape(ops), name, **labels) - sample(before, name, **labels)


def test_evictions_and_store_refusals_show_in_metrics(start_sidecar: SidecarFactory,
                                                       fake: Fake) -> None:
    sc = start_sidecar(admin_token=TOKEN, max_entries=2)
    ops = Client(sc.url, TOKEN)
    before = scrape(ops)
    c = openai_client(sc.url, "sk-ev", max_retries=0)
    for text in ("first question about cats", "second question about dogs",
                 "third question about fish"):
        ask(c, text)
        sc.wait_stores()
    assert moved_now(ops, before, "semcache_evictions_total") >= 1
    assert sample(scrape(ops), "semcache_entries") <= 2
    with pytest.raises(openai.InternalServerError):
        ask(c, "an upstream failure", extra_headers={"X-Fake-Fault": "500"})
    assert moved_now(ops, before, "semcache_store_refusals_total") == 1  # a 500 is not stored


# ---------------------------------------------------------------------- exposure
ROUTES = [("GET", "/semcache/stats"), ("GET", "/semcache/entries"), ("GET", "/semcache/entries/1"),
          ("DELETE", "/semcache/entries/1"), ("POST", "/semcache/invalidate"),
          ("POST", "/semcache/feedback"), ("GET", "/semcache/feedback"),
          ("GET", "/semcache/export"), ("POST", "/semcache/import"), ("GET", "/metrics"),
          ("GET", "/semcache/policy"), ("POST", "/semcache/policy"), ("GET", "/semcache/shadow"),
          ("POST", "/semcache/shadow")]


async def test_operator_calls_without_the_token_get_401_and_with_it_succeed(
        start_sidecar: SidecarFactory) -> None:
    sc = start_sidecar(admin_token=TOKEN)
    wrong = [{}, {"Authorization": "Bearer nope"}, {"Authorization": f"Bearer {TOKEN}x"},
             {"Authorization": f"Basic {TOKEN}"}, {"Authorization": "Bearer"}]
    async with aiohttp.ClientSession() as s:
        for method, path in ROUTES:
            for headers in wrong:
                async with s.request(method, sc.url + path, headers=headers, json={}) as r:
                    err = (await r.json())["error"]
                    assert r.status == 401, (method, path, headers)
                    assert err["type"] == "authentication_error" and "token" in err["message"]
                    assert r.headers["WWW-Authenticate"].startswith("Bearer")
            async with s.request(method, sc.url + path, json={},
                                 headers={"Authorization": f"Bearer {TOKEN}"}) as r:
                # past the gate: 200, or a 400/404 about the call itself
                assert r.status in (200, 400, 404), (method, path, r.status)
        for probe in ("/healthz", "/readyz"):  # probes stay open
            async with s.get(sc.url + probe) as r:
                assert r.status == 200
    with pytest.raises(AuthError, match="Bearer"):
        Client(sc.url).stats()
    with pytest.raises(AuthError, match="not valid"):
        Client(sc.url, "guess").stats()
    assert Client(sc.url, TOKEN).stats().ready


def test_a_non_loopback_address_without_a_token_refuses_to_start(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = Settings(data_dir=tmp_path / "d")
    for host in ("0.0.0.0", "::", "192.0.2.10", "sidecar.internal"):
        with pytest.raises(ConfigError, match="needs an admin token"):
            make_app(base.replace(host=host))
    for host in ("127.0.0.1", "127.0.0.2", "localhost", "::1"):
        make_app(base.replace(host=host))
    make_app(base.replace(host="0.0.0.0", admin_token=TOKEN))
    assert main(["serve", "--host", "0.0.0.0", "--admin-token", "", "--data-dir",
                 str(tmp_path / "d")]) == 2
    assert "SEMCACHE_ADMIN_TOKEN" in capsys.readouterr().err


# ---------------------------------------------------------------------- feedback
def test_feedback_on_a_wrong_hit_removes_it_and_is_counted(
        start_sidecar: SidecarFactory, fake: Fake) -> None:
    sc = start_sidecar(admin_token=TOKEN)
    ops = Client(sc.url, TOKEN)
    c = openai_client(sc.url, "sk-f", namespace="team-f", max_retries=0)
    ask(c, Q)
    sc.wait_stores()
    h, _ = ask(c, PARA, extra_headers=LOOSE)
    assert h["x-semcache-status"] == "hit" and h["x-semcache-match"] == "semantic"
    entry = int(h["x-semcache-entry"])
    event = ops.feedback(entry, correct=False)
    assert event.deleted and event.namespace == "ns:team-f" and event.model == "gpt-4o-mini"
    assert event.match == "semantic"
    assert event.similarity == pytest.approx(float(h["x-semcache-similarity"]), abs=1e-4)
    with pytest.raises(NotFoundError, match=f"entry {entry} not found"):
        ops.entry(entry)
    assert ask(c, PARA, extra_headers=LOOSE)[0]["x-semcache-status"] == "miss"
    # the exact key went with it (and the paraphrase just stored may not answer it)
    assert ask(c, Q, extra_headers={"X-Semcache-Threshold": "0.99"})[0]["x-semcache-status"] == "miss"
    assert fake.stats.total(CHAT) == 3
    sc.wait_stores()
    h, _ = ask(c, Q)
    right = ops.feedback(int(h["x-semcache-entry"]), correct=True, similarity=1.0)
    assert not right.deleted and right.match == "exact"
    assert ask(c, Q)[0]["x-semcache-status"] == "hit"  # a right verdict keeps the entry
    stats = ops.stats("team-f")
    assert (stats.feedback_wrong, stats.feedback_correct) == (1, 1)
    assert [(e.entry_id, e.correct) for e in ops.feedback_events("team-f")] == [
        (entry, False), (right.entry_id, True)]
    m = scrape(ops)
    labels = {"namespace": "ns:team-f", "model": "gpt-4o-mini"}
    assert sample(m, "semcache_feedback_total", **labels, verdict="wrong") == 1
    assert sample(m, "semcache_feedback_total", **labels, verdict="correct") == 1
    with pytest.raises(NotFoundError):
        ops.feedback(10_000, correct=False)
    with pytest.raises(InvalidRequestError, match="correct"):
        ops._call("POST", "/semcache/feedback", {"entry_id": entry, "correct": "no"})


# --------------------------------------------------------------- ledger, budgets
def test_the_ledger_survives_a_restart(start_sidecar: SidecarFactory, fake: Fake,
                                       tmp_path: Path) -> None:
    data = tmp_path / "ledger-data"
    first = start_sidecar(admin_token=TOKEN, data_dir=data)
    c = openai_client(first.url, "sk-l", namespace="team-l", max_retries=0)
    ask(c, Q)
    first.wait_stores()
    ask(c, Q)
    ask_stream(c, "Stream me an answer")  # no usage asked for: estimated
    ask_stream(c, "Stream me another", stream_options={"include_usage": True})
    before = Client(first.url, TOKEN).stats("team-l")
    [row] = before.rows
    assert (row.requests, row.hits, row.upstream_calls, row.estimated_calls) == (4, 1, 3, 1)
    assert row.prompt_tokens > 0 and row.saved_completion_tokens > 0 and row.spent_usd > 0
    first.server.stop()  # clean shutdown: the ledger is flushed

    second = start_sidecar(admin_token=TOKEN, data_dir=data)
    ops = Client(second.url, TOKEN)
    after = ops.stats("team-l")
    assert after.rows == before.rows and after.totals == before.totals
    labels = {"namespace": "ns:team-l", "model": "gpt-4o-mini"}
    assert sample(scrape(ops), "semcache_saved_usd_total", **labels) == pytest.approx(row.saved_usd)
    c2 = openai_client(second.url, "sk-l", namespace="team-l", max_retries=0)
    assert ask(c2, Q)[0]["x-semcache-status"] == "hit"
    assert ops.stats("team-l").rows[0].hits == 2  # counting goes on from the persisted totals


def test_a_namespace_over_its_budget_gets_429_while_another_is_served(
        start_sidecar: SidecarFactory, fake: Fake) -> None:
    sc = start_sidecar(admin_token=TOKEN, budgets=parse_budgets("team-a=1, team-c=$0.000001"))
    a = openai_client(sc.url, "sk-a", namespace="team-a")  # SDK retries on: it must not retry
    b = openai_client(sc.url, "sk-b", namespace="team-b", max_retries=0)
    _, first = ask(a, Q)  # nothing used yet: served, and now over the 1-token budget
    sc.wait_stores()
    with pytest.raises(openai.RateLimitError) as info:
        ask(a, "A different question")
    err = info.value
    assert err.status_code == 429 and isinstance(err.body, dict)
    assert err.body["code"] == "budget_exceeded" and err.body["type"] == "insufficient_quota"
    assert "'ns:team-a' is over its daily budget of 1 tokens" in err.body["message"]
    assert int(err.response.headers["Retry-After"]) > 0
    h, again = ask(a, Q)  # hits never count against the budget
    assert again == first and h["x-semcache-status"] == "hit"
    h, _ = ask(b, "A different question")  # another namespace is served
    assert h["x-semcache-status"] == "miss"
    assert fake.stats.total(CHAT) == 2  # the refused request never reached the upstream
    c = openai_client(sc.url, "sk-c", namespace="team-c", max_retries=0)
    ask(c, "Money budget question")
    with pytest.raises(openai.RateLimitError, match=r"daily budget of \$1e-06"):
        ask(c, "Money budget question", extra_headers={"Cache-Control": "no-cache"})
    ops = Client(sc.url, TOKEN)
    budgets = {(x.namespace, x.kind): x for x in ops.stats().budgets}
    assert budgets[("ns:team-a", "tokens")].exceeded and budgets[("ns:team-c", "usd")].exceeded
    assert ("ns:team-b", "tokens") not in budgets
    m = scrape(ops)
    assert sample(m, "semcache_requests_total", endpoint=CHAT, status="refused", match="none") == 2
    assert sample(m, "semcache_budget_refusals_total", namespace="ns:team-a",
                  model="gpt-4o-mini") == 1


# ----------------------------------------------------------------- export/import
def test_export_then_import_into_an_empty_sidecar_reproduces_the_hits(
        start_sidecar: SidecarFactory, fake: Fake, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    src = start_sidecar(admin_token=TOKEN, data_dir=tmp_path / "src")
    named = openai_client(src.url, "sk-x", namespace="team-x", max_retries=0)
    keyed = openai_client(src.url, "sk-keyed", max_retries=0)  # namespace from the API key
    answers = {}
    for client, text in ((named, Q), (named, "How do I reverse a string in Python?"), (keyed, Q)):
        answers[(id(client), text)] = ask(client, text)[1]
    vector = named.embeddings.create(model="emb", input="hello world").data[0].embedding
    src.wait_stores()
    dump = tmp_path / "dump.jsonl"
    assert main(["export", "--url", src.url, "--admin-token", TOKEN, "-o", str(dump),
                 "--progress"]) == 0
    err = capsys.readouterr().err
    assert "4/4" in err and f"exported 4 entries to {dump}" in err  # the tqdm bar, then a summary
    lines = dump.read_text().splitlines()
    assert json.loads(lines[0])["count"] == 4 and len(lines) == 5
    assert "sk-keyed" not in dump.read_text() and "sk-x" not in dump.read_text()

    dst = start_sidecar(admin_token=TOKEN, data_dir=tmp_path / "dst")
    calls = fake.stats.total()
    assert main(["import", "--url", dst.url, "--admin-token", TOKEN, str(dump),
                 "--batch-size", "2"]) == 0  # the CLI, in batches of two
    assert ("imported 4 of 4 entries (0 expired, 0 of API-key namespaces skipped, "
            "namespace salt adopted)") in capsys.readouterr().out
    named2 = openai_client(dst.url, "sk-x", namespace="team-x", max_retries=0)
    keyed2 = openai_client(dst.url, "sk-keyed", max_retries=0)
    for (cid, text), expected in answers.items():
        client = named2 if cid == id(named) else keyed2
        h, got = ask(client, text)
        assert (h["x-semcache-status"], h["x-semcache-match"], got) == ("hit", "exact", expected)
    h, got = ask(named2, PARA, extra_headers=LOOSE)  # re-embedded here: paraphrases hit too
    assert (h["x-semcache-match"], got) == ("semantic", answers[(id(named), Q)])
    raw = named2.embeddings.with_raw_response.create(model="emb", input="hello world")
    assert raw.headers["x-semcache-status"] == "hit" and raw.parse().data[0].embedding == vector
    assert fake.stats.total() == calls  # every answer came from the import


def test_import_refuses_malformed_lines_naming_the_line(
        start_sidecar: SidecarFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sc = start_sidecar(admin_token=TOKEN)
    ops = Client(sc.url, TOKEN)
    good = {"namespace": "ns:t", "endpoint": CHAT, "model": "m", "scope": "ab" * 32,
            "exact": "cd" * 32, "text": "hello", "response": {"choices": []}, "usage": None,
            "created": 1.0, "expires": None}
    bad = {**good, "exact": "xyz"}
    dump = tmp_path / "bad.jsonl"
    dump.write_text(json.dumps(good) + "\n\n" + json.dumps(bad) + "\n")
    with pytest.raises(InvalidRequestError, match="line 3: exact"):
        ops.import_file(dump)
    assert main(["import", str(dump), "--url", sc.url, "--admin-token", TOKEN]) == 2
    assert "line 3: exact" in capsys.readouterr().err
    with pytest.raises(InvalidRequestError, match="line 41: json"):
        ops.import_lines(json.dumps(good) + "\nnot json\n", first_line=40)
    assert ops.stats().cache["entries"] == 0  # type: ignore[index]  # nothing half-imported


# ------------------------------------------------------------------ invalidation
def test_invalidate_by_query_text_and_threshold_stays_in_its_namespace(
        start_sidecar: SidecarFactory) -> None:
    sc = start_sidecar(admin_token=TOKEN)
    ops = Client(sc.url, TOKEN)
    a = openai_client(sc.url, "sk-1", namespace="team-a", max_retries=0)
    b = openai_client(sc.url, "sk-2", namespace="team-b", max_retries=0)
    ask(a, Q)
    ask(a, Q, temperature=0.3)  # another scope, same text
    ask(a, "How do I reverse a string in Python?")
    ask(b, Q)
    sc.wait_stores()
    preview = ops.invalidate(namespace="team-a", query=PARA, threshold=0.8, dry_run=True)
    assert preview.dry_run and preview.matched == 2 and len(ops.entries("team-a").entries) == 3
    assert all(e.similarity is not None and e.similarity >= 0.8 for e in preview.entries)
    done = ops.invalidate(namespace="team-a", query=PARA, threshold=0.8)
    assert done.deleted == 2 and sorted(done.ids) == sorted(preview.ids)
    assert [e.text for e in ops.entries("team-a").entries] == ["How do I reverse a string in Python?"]
    assert ask(b, Q)[0]["x-semcache-status"] == "hit"  # team-b untouched
    assert ask(a, Q)[0]["x-semcache-status"] == "miss"
    with pytest.raises(InvalidRequestError, match="name what to invalidate"):
        ops.invalidate()
    with pytest.raises(InvalidRequestError, match="threshold"):
        ops.invalidate(namespace="team-a", query="x", threshold=1.5)


# ----------------------------------------------------------------- client library
def test_the_sync_client_round_trips_every_call(start_sidecar: SidecarFactory) -> None:
    sc = start_sidecar(admin_token=TOKEN)
    ops = Client(sc.url, TOKEN)
    assert ops.healthz() == {"status": "ok"} and ops.readyz()["status"] == "ready"
    llm = openai_client(sc.url, "sk-rt", namespace="round-trip", max_retries=0)
    texts = ["What is the capital of France?", "How do I reverse a string in Python?",
             "Which planet is the largest?", "Who wrote War and Peace?",
             "What is the boiling point of water at sea level?"]
    for text in texts:
        ask(llm, text)
    sc.wait_stores()
    h, _ = ask(llm, texts[0])
    first_page = ops.entries("round-trip", limit=2)
    assert [e.text for e in first_page.entries] == texts[:2] and first_page.next_after is not None
    assert [e.text for e in ops.iter_entries("ns:round-trip", page_size=2)] == texts
    assert ops.entries("someone-else").entries == []
    entry = ops.entry(int(h["x-semcache-entry"]))
    assert entry.namespace == "ns:round-trip" and entry.hits == 1 and entry.response is not None
    assert entry.response["choices"][0]["message"]["content"].startswith("Answer ")
    ops.delete_entry(entry.id)
    with pytest.raises(NotFoundError):
        ops.delete_entry(entry.id)
    gone = ops.invalidate(entry_ids=[first_page.entries[1].id])
    assert gone.ids == [first_page.entries[1].id]
    stats = ops.stats("round-trip")
    assert stats.namespace == "ns:round-trip" and stats.rows[0].upstream_calls == 5
    assert stats.cache is not None and stats.cache["entries"] == 3
    assert stats.settings["admin_token"] == "***"
    exported = list(ops.export_lines("round-trip"))
    assert len(exported) == 4 and json.loads(exported[0])["namespace"] == "ns:round-trip"
    wiped = ops.invalidate(namespace="round-trip")
    assert wiped.deleted == 3
    result = ops.import_lines("".join(exported))
    assert result.imported == 3 and not result.salt_adopted
    assert ask(llm, texts[4])[0]["x-semcache-status"] == "hit"
    ops.feedback(int(ask(llm, texts[4])[0]["x-semcache-entry"]), correct=True)
    assert [e.correct for e in ops.feedback_events()] == [True]
    assert "semcache_requests_total" in ops.metrics()
    assert ops.invalidate(all=True).deleted == 3


async def test_the_async_client_round_trips_every_call(start_sidecar: SidecarFactory,
                                                       tmp_path: Path) -> None:
    sc = start_sidecar(admin_token=TOKEN)
    llm = async_openai_client(sc.url, "sk-as", namespace="async-ns", max_retries=0)
    texts = ["Who painted the Mona Lisa?", "How many legs does a spider have?",
             "What is the speed of light?"]
    for text in texts:
        await llm.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": text}])
    await llm.close()
    import asyncio

    await asyncio.get_running_loop().run_in_executor(None, sc.wait_stores)
    async with AsyncClient(sc.url, TOKEN) as ops:
        assert (await ops.healthz())["status"] == "ok" and (await ops.readyz())["status"] == "ready"
        stats = await ops.stats("async-ns")
        assert stats.rows[0].upstream_calls == 3 and stats.totals["requests"] == 3
        page = await ops.entries("async-ns", limit=2)
        assert len(page.entries) == 2 and page.next_after is not None
        listed = [e async for e in ops.iter_entries("async-ns", page_size=1)]
        assert [e.text for e in listed] == texts
        full = await ops.entry(listed[0].id)
        assert full.response is not None
        event = await ops.feedback(listed[0].id, correct=False)
        assert event.deleted and [e.entry_id for e in await ops.feedback_events()] == [listed[0].id]
        await ops.delete_entry(listed[1].id)
        with pytest.raises(NotFoundError):
            await ops.entry(listed[1].id)
        exported = [line async for line in ops.export_lines()]
        assert len(exported) == 2
        dump = tmp_path / "one.jsonl"
        dump.write_text("".join(exported))
        assert (await ops.invalidate(namespace="async-ns", dry_run=True)).matched == 1
        assert (await ops.invalidate(entry_id=listed[2].id)).deleted == 1
        assert (await ops.import_file(dump)).imported == 1
        assert (await ops.import_lines("".join(exported))).imported == 1  # replaced, same key
        assert len((await ops.entries()).entries) == 1
        assert "semcache_entries" in await ops.metrics()
    async with AsyncClient(sc.url) as anonymous:
        with pytest.raises(AuthError):
            await anonymous.stats()


def test_cli_stats_and_invalidate(start_sidecar: SidecarFactory,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    sc = start_sidecar(admin_token=TOKEN)
    llm = openai_client(sc.url, "sk-cli", namespace="cli", max_retries=0)
    ask(llm, Q)
    sc.wait_stores()
    ask(llm, Q)
    capsys.readouterr()
    assert main(["stats", "--url", sc.url, "--admin-token", TOKEN]) == 0
    out = capsys.readouterr().out
    assert "entries 1" in out and "hits 1 (50.0%)" in out and "ns:cli" in out
    assert main(["stats", "--url", sc.url, "--admin-token", TOKEN, "--json", "--namespace", "cli"]) == 0
    assert json.loads(capsys.readouterr().out)["ledger"]["totals"]["hits"] == 1
    assert main(["invalidate", "--url", sc.url, "--admin-token", TOKEN, "--namespace", "cli",
                 "--query", PARA, "--min-similarity", "0.8", "--dry-run"]) == 0
    assert "would drop 1 entries" in capsys.readouterr().out
    assert main(["invalidate", "--url", sc.url, "--admin-token", TOKEN, "--namespace", "cli"]) == 0
    assert "dropped 1 entries" in capsys.readouterr().out
    assert main(["stats", "--url", sc.url, "--admin-token", ""]) == 2  # no token
    assert "admin token" in capsys.readouterr().err
