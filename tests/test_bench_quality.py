"""The answer-quality benchmark: its scoring arithmetic, and one small run end to end
through the real sidecar (warm-up in shadow mode, refit, test pass, report)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from semcache.bench_quality import QualityConfig, precision_at_recall, run_quality
from semcache.bench_replay import Outcome
from semcache.embedding import SentenceTransformerEmbedder
from semcache.settings import Settings
from tests.conftest import DATA


def _o(sim: float | None, correct: bool, positive: bool, *, guard: str | None = None,
       confidence: float | None = None) -> Outcome:
    return Outcome(status="hit" if sim is not None else "miss", match="semantic" if sim else None,
                   similarity=sim, entry=1, correct=correct, positive=positive, latency_s=0.0,
                   prompt_tokens=1, completion_tokens=1, confidence=confidence, guard=guard)


def test_precision_at_recall_takes_the_best_cut_reaching_each_recall() -> None:
    outs = [_o(0.99, True, True), _o(0.95, False, False), _o(0.93, True, True),
            _o(0.90, True, True), _o(0.85, False, True), _o(None, True, True)]
    # 5 positives: cuts give (recall, precision) (0.2, 1), (0.2, .5), (0.4, .67), (0.6, .75),
    # (0.6, .6); at recall r, the best precision of any cut reaching r
    p = precision_at_recall(outs, lambda o: o.similarity or -math.inf, (0.2, 0.4, 0.6, 0.8))
    assert p == {0.2: 1.0, 0.4: 0.75, 0.6: 0.75, 0.8: None}
    p = precision_at_recall(outs[:3], lambda o: o.similarity or -math.inf, (1.0,))
    assert p[1.0] == pytest.approx(2 / 3)  # both positives need the wrong 0.95 hit too
    # the guard's objection removes the wrong 0.95 hit: precision rises at every recall
    outs[1] = _o(0.95, False, False, guard="numbers differ")
    g = precision_at_recall(outs, lambda o: -math.inf if o.guard else o.similarity or -math.inf,
                            (0.4, 0.6))
    assert g[0.4] == 1.0 and g[0.6] == 1.0
    # ties are served together
    tied = [_o(0.9, True, True), _o(0.9, False, False)]
    assert precision_at_recall(tied, lambda o: 1.0, (0.5, 1.0)) == {0.5: 0.5, 1.0: 0.5}


def test_quality_bench_end_to_end_on_langcache(embedder: SentenceTransformerEmbedder,
                                               tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("x\n<!-- quality:begin -->\nPREVIOUS-RUN\n<!-- quality:end -->\ny\n")
    cfg = QualityConfig(data=DATA, workloads=["langcache"], limit=80, out=tmp_path / "out",
                        readme=readme, concurrency=4, progress=False, command="test")
    (rep,) = run_quality(cfg, Settings(), embedder=embedder)
    assert rep.dev_pairs > 400 and rep.outcomes > 200  # judged in shadow mode, every one
    assert rep.queries == 80 and 0 < rep.positives <= 80
    doc = json.loads((tmp_path / "out" / "quality.json").read_text())
    (wl,) = doc["workloads"]
    assert [c["rule"] for c in wl["curves"]] == [
        "static (no guard)", "static + guard", "adaptive (by max_wrong_rate)",
        "adaptive scorer (by score)"]
    hits = [b["hits"] for b in wl["bounds"]]
    assert hits == sorted(hits) and hits[-1] > 0  # a looser bound never serves less
    # the default rule is the static one until the policy is active, then the bound's
    assert wl["defaults"]["policy"]["hits"] == wl["bounds"][2]["hits"]
    text = readme.read_text()
    assert "PREVIOUS-RUN" not in text and text.endswith("y\n")
    assert "| langcache | adaptive (by max_wrong_rate) |" in text
