"""Calibration: the lowest threshold reaching the target precision on dev, reported on test."""

from __future__ import annotations

from pathlib import Path

import pytest

from semcache import Settings
from semcache.bench_workloads import Pair, is_test_pair, read_pairs
from semcache.calibrate import Scored, calibrate, evaluate, pick_threshold, score_pairs
from semcache.cli import main
from semcache.embedding import SentenceTransformerEmbedder
from semcache.settings import read_env_file
from tests.conftest import data_file


def test_pick_threshold_is_the_lowest_reaching_the_target() -> None:
    scored = [Scored(0.99, True, True), Scored(0.95, True, True), Scored(0.93, False, False),
              Scored(0.91, True, True), Scored(0.86, False, False), Scored(0.70, False, True)]
    assert pick_threshold(scored, 1.0) == 0.935  # above the wrong 0.93
    assert pick_threshold(scored, 0.75) == 0.865  # 3 right of 4 hits
    assert pick_threshold(scored, 0.6) == 0.705  # 3 of 5
    assert pick_threshold([Scored(0.99, False, False)], 0.5) is None
    ev = evaluate(scored, 0.9)
    assert (ev.hits, ev.correct, ev.positives, ev.precision, ev.recall) == (4, 3, 4, 0.75, 0.75)
    assert ev.wrong_per_1k == pytest.approx(1000 / 6)


def test_score_pairs_follows_the_cache_protocol(embedder: SentenceTransformerEmbedder) -> None:
    pairs = [Pair("What is the capital of France?", "what's the capital city of france", 1),
             Pair("python sort list ascending", "python reverse sort list", 0),
             Pair("How do I boil an egg?", "What is the capital of France?", 0)]
    s = score_pairs(pairs, embedder)
    assert s[0].correct and s[0].positive and 0.8 < s[0].similarity < 1.0
    assert not s[1].correct and not s[1].positive
    assert s[2].similarity == 1.0 and s[2].correct  # identical text: the same question


def test_calibrate_picks_on_dev_and_reports_on_test(embedder: SentenceTransformerEmbedder) -> None:
    path = data_file("langcache", "chatgpt.csv")
    pairs = read_pairs(path)
    assert 0 < sum(is_test_pair(p.a) for p in pairs) < len(pairs)
    cal = calibrate([path], 0.85, embedder, limit=40)
    assert cal.threshold is not None and cal.dev is not None and cal.test is not None
    assert cal.dev_pairs == cal.test_pairs == 40
    assert cal.dev.precision >= 0.85 and cal.dev.hits > 0
    lower = evaluate(score_pairs([p for p in pairs if not is_test_pair(p.a)][:40], embedder),
                     round(cal.threshold - 0.005, 3))
    assert lower.precision < 0.85 or lower.hits == 0  # the lowest such threshold
    assert "test: 40 pairs, precision" in cal.summary()
    with pytest.raises(ValueError, match="target precision"):
        calibrate([path], 1.5, embedder)


def test_calibrate_command_writes_the_threshold_the_sidecar_loads(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    env = tmp_path / "semcache.env"
    env.write_text("# tuned\nSEMCACHE_THRESHOLD=0.5\nSEMCACHE_TTL=3600\n")
    code = main(["calibrate", "--pairs", str(data_file("langcache", "chatgpt.csv")),
                 "--target-precision", "0.8", "--limit", "30", "--write-env", str(env),
                 "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0 and "threshold 0." in out and "wrote SEMCACHE_THRESHOLD=" in out
    chosen = float(out.split("threshold ")[1].split()[0])
    assert read_env_file(env) == {"SEMCACHE_THRESHOLD": f"{chosen:.3f}", "SEMCACHE_TTL": "3600"}
    assert env.read_text().startswith("# tuned\nSEMCACHE_THRESHOLD=")
    assert Settings.load({"env_file": str(env)}, {}).threshold == pytest.approx(chosen)
