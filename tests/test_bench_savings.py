"""The savings benchmark on small slices: through the real sidecar, fake upstream and model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from semcache import Settings
from semcache.bench_metrics import at_threshold, exact_only, no_cache, score, sweep
from semcache.bench_prices import DEFAULT_TIERS, Tier, cost, load_tiers, upstream_seconds
from semcache.bench_replay import PASS_LANE, Outcome, Replay, replay, running
from semcache.bench_report import BEGIN, END, markdown_table, plot, replace_block
from semcache.bench_savings import SavingsConfig, run_savings
from semcache.bench_workloads import (
    Pair,
    Workload,
    WorkloadError,
    builtin_workload,
    is_test_pair,
    pairs_workload,
    read_log,
    read_pairs,
)
from semcache.embedding import SentenceTransformerEmbedder
from semcache.errors import ConfigError
from semcache.fake_upstream import answer_by_label, answer_text, count_tokens, label_answer
from tests.conftest import DATA, OnnxExport, data_file, langcache_pairs

TIERS = DEFAULT_TIERS


def _pairs(label: int, n: int) -> list[Pair]:
    return [Pair(a, b, y) for a, b, y in langcache_pairs() if y == label][:n]


async def _replay(wl: Workload, embedder: SentenceTransformerEmbedder, floor: float,
                  settings: Settings | None = None, **kw: object) -> Replay:
    async with running(settings, embedder, floor) as servers:
        rep = await replay(wl, servers, floor=floor, **kw)  # type: ignore[arg-type]
        assert servers.upstream_calls == rep.upstream_calls
        return rep


# ------------------------------------------------------------------ must-hold items
async def test_exact_repeats_replay_as_all_hits_and_no_wrong_hits(
        embedder: SentenceTransformerEmbedder) -> None:
    pairs = [Pair(p.a, p.a, 1) for p in _pairs(1, 15)]
    rep = await _replay(pairs_workload("repeats", pairs), embedder, 0.5)
    assert rep.queries == 15 and rep.loads == 15
    assert rep.upstream_calls == 15  # only the anchors went upstream
    assert rep.usage_mismatches == 0  # the fake billed exactly what the metrics count
    for m in (exact_only(rep, TIERS), at_threshold(rep, 0.99, TIERS), at_threshold(rep, 0.5, TIERS)):
        assert (m.hits, m.hit_rate, m.recall, m.wrong_hits, m.precision) == (15, 1.0, 1.0, 0, 1.0)
    assert all(o.match == "exact" and o.similarity == 1.0 for o in rep.lanes[PASS_LANE])
    assert no_cache(rep, TIERS).hits == 0


async def test_log_where_every_request_repeats_hits_every_repeat(
        embedder: SentenceTransformerEmbedder, tmp_path: Path) -> None:
    texts = [p.a for p in _pairs(1, 6)]
    lines = [{"messages": [{"role": "user", "content": t}], "model": "m", "tenant": "t1"}
             for t in texts]
    log = tmp_path / "repeats.jsonl"
    log.write_text("\n".join(json.dumps(x) for x in lines + lines) + "\n")
    wl = read_log(log)
    rep = await _replay(wl, embedder, 0.5, thresholds=[0.9])
    assert set(rep.lanes) == {"exact", "0.90"}
    for m in (exact_only(rep, TIERS), at_threshold(rep, 0.9, TIERS)):
        assert m.requests == 12 and m.positives == 6
        assert m.hits == 6 and m.correct_hits == 6 and m.wrong_hits == 0 and m.recall == 1.0
    assert [o.hit for o in rep.lanes["exact"]] == [False] * 6 + [True] * 6


async def test_pure_hard_negatives_at_a_strict_threshold_give_no_wrong_hits(
        embedder: SentenceTransformerEmbedder) -> None:
    wl = pairs_workload("negatives", _pairs(0, 20))
    strict = await _replay(wl, embedder, 0.99)  # the sidecar itself asked at 0.99
    m = at_threshold(strict, 0.99, TIERS)
    assert m.positives == 0 and m.wrong_hits == 0 and m.precision == 1.0
    # the check has teeth: the same negatives at a permissive threshold, with the near-miss
    # guard off, are served wrongly ...
    loose = await _replay(wl, embedder, 0.5, Settings(near_miss_guard=False))
    assert at_threshold(loose, 0.5, TIERS).wrong_hits >= 12
    assert at_threshold(loose, 0.90, TIERS).wrong_hits >= 1
    assert at_threshold(loose, 0.99, TIERS).wrong_hits == 0
    # ... and the guard refuses most of them even at that threshold
    guarded = await _replay(wl, embedder, 0.5)
    assert at_threshold(guarded, 0.5, TIERS).wrong_hits < at_threshold(loose, 0.5, TIERS).wrong_hits


async def test_meancache_follow_ups_are_never_served_across_conversations(
        embedder: SentenceTransformerEmbedder) -> None:
    """The two-turn workload: duplicates in the same conversation may hit; the same
    follow-up after another conversation, or without one, must not — at any threshold."""
    wl = builtin_workload("meancache", DATA, limit=25)
    assert len(wl.loads) == 50 and len(wl.queries) == 100
    assert sum(r.positive for r in wl.queries) == 50
    rep = await _replay(wl, embedder, 0.5)
    outcomes = rep.lanes[PASS_LANE]
    # queries come in fours: u0 duplicate, follow-up duplicate (same conversation),
    # follow-up after another conversation, follow-up alone
    for k in (2, 3):
        assert not [o for o in outcomes[k::4] if o.hit and not o.correct and o.match == "exact"]
    across = [o for o in outcomes[2::4] if o.hit]
    assert all(o.correct for o in across)  # no follow-up is answered from another context
    # at the default threshold no context-dependent query is served wrongly (a first
    # question's paraphrase may match another conversation's equivalent first question,
    # which the per-item labels count as wrong: not a context leak)
    follow_ups = [o for k in (1, 2, 3) for o in outcomes[k::4]]
    assert not [o for o in follow_ups if o.hit and not o.correct and (o.similarity or 0) >= 0.85]
    assert at_threshold(rep, 0.85, TIERS).correct_hits >= 5  # and it does hit


def test_gptcache_pairs_split_like_the_others() -> None:
    dev = builtin_workload("gptcache", DATA, split="dev")
    test = builtin_workload("gptcache", DATA, split="test")
    dev_anchors = {r.text for r in dev.loads}
    assert dev.queries and test.queries and not dev_anchors & {r.text for r in test.loads}
    assert all(is_test_pair(r.text) for r in test.loads)


def test_token_and_money_arithmetic_matches_hand_computed_values() -> None:
    tier = Tier("t", input_per_m=1.0, output_per_m=2.0, ttft_s=0.5, tokens_per_s=100.0)

    def o(status: str, correct: bool, ptok: int, ctok: int, sim: float | None) -> Outcome:
        return Outcome(status, "semantic" if status == "hit" else None, sim, 1, correct, True,
                       0.01, ptok, ctok)

    outcomes = [o("hit", True, 10, 100, 0.95), o("hit", False, 20, 200, 0.91),
                o("miss", True, 30, 300, None), o("hit", True, 40, 400, 0.85)]
    rep = Replay("w", "pairs", 0.5, {PASS_LANE: outcomes})
    m = at_threshold(rep, 0.90, [tier])
    assert (m.requests, m.hits, m.correct_hits, m.wrong_hits, m.positives) == (4, 2, 1, 1, 4)
    assert (m.hit_rate, m.precision, m.recall, m.wrong_per_1k) == (0.5, 0.5, 0.25, 250.0)
    assert (m.prompt_tokens_saved, m.completion_tokens_saved, m.tokens_saved) == (30, 300, 330)
    # 30 prompt tokens at $1/M + 300 completion tokens at $2/M
    assert m.money_saved["t"] == pytest.approx(630e-6)
    assert m.money_saved_correct["t"] == pytest.approx(210e-6)
    # no cache: 100 prompt tokens at $1/M + 1000 completion tokens at $2/M
    assert m.spend["t"] == pytest.approx(2100e-6) and m.saved_share("t") == pytest.approx(0.3)
    assert m.per_million_requests("t") == pytest.approx(157.5)
    # modeled upstream time of the two hits (0.5 + 100/100, 0.5 + 200/100) - 4 lookups of 10 ms
    assert m.latency_saved_s["t"] == pytest.approx(1.5 + 2.5 - 0.04)
    assert at_threshold(rep, 0.5, [tier]).hits == 3
    assert no_cache(rep, [tier]).money_saved["t"] == 0.0
    # the default frontier tier: $2.50 in, $10 out per million tokens
    frontier = {t.name: t for t in DEFAULT_TIERS}["frontier"]
    assert cost(frontier, 1000, 250) == pytest.approx(0.0025 + 0.0025)
    assert upstream_seconds(frontier, 120) == pytest.approx(0.5 + 2.0)
    assert score("x", None, outcomes, lambda _: True, [tier]).tokens_saved == 1100


@pytest.mark.parametrize("line, reason", [
    ('{"messages": [{"role": "user", "content": "hi"}], "model": "m"', "not valid JSON"),
    ('["not", "an", "object"]', "expected a JSON object"),
    ('{"model": "m"}', "'messages' must be a non-empty array"),
    ('{"messages": [], "model": "m"}', "'messages' must be a non-empty array"),
    ('{"messages": [{"content": "hi"}], "model": "m"}', "messages[0] must be an object"),
    ('{"messages": [{"role": "system", "content": "be brief"}], "model": "m"}', "no user turn"),
    ('{"messages": [{"role": "user", "content": 7}], "model": "m"}', "messages[0].content"),
    ('{"messages": [{"role": "user", "content": "hi"}]}', "'model' must be"),
    ('{"messages": [{"role": "user", "content": "hi"}], "model": "m", "label": true}', "'label'"),
    ('{"messages": [{"role": "user", "content": "hi"}], "model": "m", "tenant": ""}', "'tenant'"),
    ('{"messages": [{"role": "user", "content": "hi"}], "model": "m", "timestamp": "soon"}',
     "'timestamp'"),
    ('{"messages": [{"role": "user", "content": "hi"}], "model": "m", "params": {"stream": true}}',
     "'params'"),
    ('{"messages": [{"role": "user", "content": "hi"}], "model": "m", "answer": "x"}',
     "unknown key(s) ['answer']"),
])
def test_user_log_rejects_malformed_lines_with_the_line_number(
        tmp_path: Path, line: str, reason: str) -> None:
    good = '{"messages": [{"role": "user", "content": "hello"}], "model": "m"}'
    log = tmp_path / "traffic.jsonl"
    log.write_text(f"# a comment\n{good}\n\n{line}\n{good}\n")
    with pytest.raises(WorkloadError) as info:
        read_log(log)
    assert f"{log}:4: " in str(info.value) and reason in str(info.value)
    assert isinstance(info.value, ValueError)


def test_user_log_labels_order_and_positives(tmp_path: Path) -> None:
    def line(text: str, **kw: object) -> str:
        return json.dumps({"messages": [{"role": "user", "content": text}], "model": "m", **kw})

    log = tmp_path / "t.jsonl"
    log.write_text("\n".join([
        line("reset my password", label="pw", timestamp="2024-06-01T10:00:05Z"),
        line("how do I reset my password", label="pw", timestamp=1717236000.0),
        line("how do I reset my password", label="pw", tenant="other", timestamp=1717236010),
        line("what is my balance", timestamp=1717236001),
        line("what is my balance", timestamp=1717236002),
    ]) + "\n")
    wl = read_log(log)
    assert wl.kind == "log" and wl.name == "t"
    assert [r.text for r in wl.queries] == ["how do I reset my password", "what is my balance",
                                            "what is my balance", "reset my password",
                                            "how do I reset my password"]
    assert [r.positive for r in wl.queries] == [False, False, True, True, False]
    labels = [r.label for r in wl.queries]
    assert labels[0] == labels[3] == labels[4] == "l:pw" and labels[1] == labels[2] != "l:pw"


def test_pair_files_are_read_with_line_numbers(tmp_path: Path) -> None:
    bad = tmp_path / "pairs.csv"
    bad.write_text('sentence1,sentence2,label\n"a","b",1\n"a","c",2\n')
    with pytest.raises(WorkloadError, match=r"pairs.csv:3: label must be 0 or 1"):
        read_pairs(bad)
    assert len(read_pairs(data_file("gptcache", "mock_data.json"))) == 999


def test_labels_connect_identical_texts_and_duplicate_pairs() -> None:
    wl = pairs_workload("w", [Pair("q1", "q1 again", 1), Pair("q2", "q1 again", 0),
                              Pair("q3", "q4", 0), Pair("q3", "q5", 1)])
    load, query = wl.loads, wl.queries
    assert load[2].label == load[3].label  # identical anchors: one entry, one answer
    assert query[0].label == query[1].label == load[0].label  # identical query text
    assert query[2].label not in {r.label for r in load} and query[3].label == load[3].label


def test_fake_upstream_answers_by_label_with_realistic_lengths() -> None:
    a = answer_by_label("x", {"metadata": {"label": "L1"}})
    assert a == answer_by_label("other text", {"metadata": {"label": "L1"}}) == label_answer("L1")
    assert a != label_answer("L2")
    assert answer_by_label("x", {}) == answer_text("x")
    lengths = [count_tokens(label_answer(f"label-{i}")) for i in range(200)]
    assert min(lengths) >= 100 and max(lengths) <= 300 and len(set(lengths)) > 50


def test_price_files_override_the_tiers(tmp_path: Path) -> None:
    prices = Path(__file__).resolve().parent.parent / "bench" / "prices.example.json"
    assert load_tiers(prices) == DEFAULT_TIERS
    custom = tmp_path / "p.json"
    custom.write_text('{"tiers": {"mine": {"input_per_m": 1, "output_per_m": 3}}}')
    assert load_tiers(custom) == (Tier("mine", 1.0, 3.0),)
    custom.write_text('{"tiers": {"mine": {"input_per_m": -1, "output_per_m": 3}}}')
    with pytest.raises(ConfigError, match="prices.tiers.mine.input_per_m"):
        load_tiers(custom)


# ------------------------------------------------------------------ the one-pass sweep
async def test_one_pass_sweep_equals_replaying_at_each_threshold(
        embedder: SentenceTransformerEmbedder) -> None:
    pairs = [p for a, b, y in langcache_pairs()[:40] for p in [Pair(a, b, y)]]
    wl = pairs_workload("mixed", pairs)
    async with running(None, embedder, 0.5) as servers:
        one = await replay(wl, servers, floor=0.5)
        for t in (0.8, 0.9):
            real = await replay(wl, servers, floor=t)  # queries sent at X-Semcache-Threshold t
            scored = [o.hit and (o.match == "exact" or (o.similarity or 0) >= t)
                      for o in one.lanes[PASS_LANE]]
            assert scored == [o.hit for o in real.lanes[PASS_LANE]]
            served_one = [o.answer for o, s in zip(one.lanes[PASS_LANE], scored, strict=True) if s]
            assert served_one == [o.answer for o in real.lanes[PASS_LANE] if o.hit]
            m_one, m_real = at_threshold(one, t, TIERS), at_threshold(real, t, TIERS)
            assert (m_one.hits, m_one.correct_hits) == (m_real.hits, m_real.correct_hits)
    assert [m.threshold for m in sweep(one, [0.4, 0.5, 0.7], TIERS)] == [0.5, 0.7]


# ------------------------------------------------------------------ the whole command
def test_savings_run_writes_table_plots_and_readme(
        embedder: SentenceTransformerEmbedder, tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{BEGIN}\nPREVIOUS-NUMBERS\n{END}\n\ntail\n")
    cfg = SavingsConfig(data=DATA, workloads=["langcache"], limit=12, calibration_limit=40,
                        target_precision=0.8, out=tmp_path / "results", plots=tmp_path / "docs",
                        readme=readme, progress=False, command="semcache bench savings ...")
    out = tmp_path / "stdout.txt"
    with out.open("w") as f:
        reports = run_savings(cfg, Settings(), embedder=embedder, out=f)
    (rep,) = reports
    assert [m.policy for m in rep.rows][:2] == ["no cache", "exact only"]
    assert rep.rows[-1].policy.startswith("calibrated threshold ")
    assert [m.threshold for m in rep.rows[2:-1]] == [0.80, 0.85, 0.90, 0.95][: len(rep.rows) - 3]
    doc = json.loads((tmp_path / "results" / "savings.json").read_text())
    assert doc["workloads"][0]["threshold_how"] == "calibrated"
    assert doc["workloads"][0]["queries"] == 12 and doc["workloads"][0]["usage_mismatches"] == 0
    text = readme.read_text()
    assert "PREVIOUS-NUMBERS" not in text and text.endswith(f"{END}\n\ntail\n")
    assert "| langcache test, 12 pairs | exact only |" in text
    assert "![savings-precision-hit-rate](docs/savings-precision-hit-rate.png)" in text
    for png in ("savings-precision-hit-rate.png", "savings-money-wrong-hits.png"):
        assert (tmp_path / "docs" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_pieces_without_a_server(tmp_path: Path) -> None:
    outcomes = [Outcome("hit", "exact", 1.0, 1, True, True, 0.001, 10, 100),
                Outcome("miss", None, None, None, True, False, 0.01, 10, 100)]
    rep = Replay("w", "pairs", 0.5, {PASS_LANE: outcomes})
    from semcache.bench_report import WorkloadReport

    wr = WorkloadReport("w", "w test", [no_cache(rep, TIERS), exact_only(rep, TIERS)],
                        sweep(rep, [0.5, 0.9], TIERS), exact=exact_only(rep, TIERS))
    table = markdown_table([wr], TIERS)
    assert "| w test | exact only | 50.0% | 100.0% | 1.000 | 0.0 | 1 | 110 |" in table
    assert len(plot([wr], TIERS[-1], tmp_path)) == 2
    with pytest.raises(ValueError, match="savings:begin"):
        (tmp_path / "R.md").write_text("no block")
        replace_block(tmp_path / "R.md", "x")


def test_cli_bench_savings_on_a_user_log(embedder: SentenceTransformerEmbedder, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    import semcache.bench_savings
    from semcache.cli import main

    monkeypatch.setattr(semcache.bench_savings, "load_embedder", lambda *a, **k: embedder)
    para = [p for p in _pairs(1, 3)]
    rows = [{"messages": [{"role": "user", "content": t}], "model": "m", "label": f"q{i}"}
            for i, p in enumerate(para) for t in (p.a, p.b, p.a)]
    log = tmp_path / "mine.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code = main(["bench", "savings", "--log", str(log), "--fixed-threshold", "0.9",
                 "--static", "0.8", "--out", str(tmp_path / "out"), "--no-progress"])
    assert code == 0
    out = capsys.readouterr().out
    assert "| mine (log, 9 requests) | exact only | 33.3% |" in out
    assert "| mine (log, 9 requests) | chosen threshold 0.900 |" in out
    doc = json.loads((tmp_path / "out" / "savings.json").read_text())
    assert doc["command"].startswith("semcache bench savings --log")
    (wl,) = doc["workloads"]
    assert wl["kind"] == "log" and wl["queries"] == 9 and wl["threshold_how"] == "given"


def test_cli_bench_savings_takes_a_tier_price_file_and_the_sidecars_backend(
        onnx_export: OnnxExport, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--prices`` is the benchmark's tier table (not the sidecar's per-model ``prices``
    setting), and the backend, exports and guard are flags like the sidecar's."""
    from semcache.cli import main

    tiers = tmp_path / "tiers.json"
    tiers.write_text('{"tiers": {"mine": {"input_per_m": 1000, "output_per_m": 3000, '
                     '"ttft_s": 1, "tokens_per_s": 50}}}')
    text = "How do I reset my router password?"
    log = tmp_path / "tiny.jsonl"
    log.write_text("".join(json.dumps({"messages": [{"role": "user", "content": text}],
                                       "model": "m", "label": "router"}) + "\n"
                           for _ in range(2)))
    out_dir = tmp_path / "out"
    env = tmp_path / "sidecar.env"  # the sidecar's env file: its guard setting applies
    env.write_text("SEMCACHE_NEAR_MISS_GUARD=off\n")
    code = main(["bench", "savings", "--log", str(log), "--prices", str(tiers),
                 "--fixed-threshold", "0.9", "--static", "0.8", "--out", str(out_dir),
                 "--no-progress", "--embedding-backend", "onnx-int8",
                 "--embedding-cache-dir", str(onnx_export.cache_dir),
                 "--data-dir", str(tmp_path / "sidecar"), "--env-file", str(env)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "bench: embedding with sentence-transformers/all-MiniLM-L6-v2@onnx-int8, " \
           "near-miss guard off" in out
    assert "$ saved per 1M req (mine)" in out and "small" not in out and "frontier" not in out
    doc = json.loads((out_dir / "savings.json").read_text())
    assert doc["embedder"].endswith("@onnx-int8")
    assert doc["tiers"] == [{"name": "mine", "input_per_m": 1000.0, "output_per_m": 3000.0,
                             "ttft_s": 1.0, "tokens_per_s": 50.0}]
    (wl,) = doc["workloads"]
    exact = next(r for r in wl["rows"] if r["policy"] == "exact only")
    assert exact["hits"] == 1 and exact["completion_tokens_saved"] >= 100
    # the one repeat saved its tokens at the file's prices, not the built-in ones
    assert exact["money_saved"] == {"mine": pytest.approx(
        (exact["prompt_tokens_saved"] * 1000 + exact["completion_tokens_saved"] * 3000) / 1e6)}
    assert "| tiny (log, 2 requests) | exact only | 50.0% |" in out
