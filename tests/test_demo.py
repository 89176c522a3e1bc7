"""The README's first main job: ``python -m semcache demo`` on the real model."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from semcache.demo import QUESTIONS
from tests.conftest import OnnxExport

ROW = re.compile(r"^(?P<decision>HIT|MISS(?: \(guard: (?P<why>[^)]+)\))?)\s+(?P<match>exact|semantic|-)"
                 r"\s+(?P<sim>\d\.\d{3}|-)\s+(?P<kind>exact repeat|paraphrase|near-miss)\s+"
                 r"(?P<question>.+?)(?: -> .*|  \(nearest: .*)?  \(\d+\.\d ms\)$")


def test_demo_hits_paraphrases_and_misses_near_misses(onnx_export: OnnxExport) -> None:
    """On the default backend; the session's export stands in for the one the first run
    on a fresh machine makes (test_embedding_onnx checks that one)."""
    env = dict(os.environ, SEMCACHE_EMBEDDING_CACHE_DIR=str(onnx_export.cache_dir))
    out = subprocess.run([sys.executable, "-m", "semcache", "demo"], capture_output=True,
                         text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert "@onnx-int8" in lines[0]
    threshold = float(lines[0].rsplit("threshold ", 1)[1])
    rows = [line for line in lines if line.startswith(("HIT", "MISS"))]
    parsed = [ROW.match(r) for r in rows]
    assert all(parsed), [r for r, m in zip(rows, parsed, strict=True) if m is None]
    seen = {m["question"]: m for m in parsed if m}
    assert {q: m["kind"] for q, m in seen.items()} == dict(QUESTIONS) and len(rows) == len(QUESTIONS)
    for question, kind in QUESTIONS:
        m = seen[question]
        assert m["sim"] != "-", m.group(0)  # misses print the nearest entry's similarity too
        sim = float(m["sim"])
        if kind == "exact repeat":
            assert (m["decision"], m["match"], sim) == ("HIT", "exact", 1.0), m.group(0)
        elif kind == "paraphrase":
            assert (m["decision"], m["match"]) == ("HIT", "semantic"), m.group(0)
            assert threshold <= sim < 1.0, m.group(0)
        else:
            assert m["decision"].startswith("MISS") and m["match"] == "-", m.group(0)
            # a plain miss is under the threshold; above it, only the guard refuses
            assert (sim >= threshold) == (m["why"] is not None), m.group(0)
    guarded = seen["download TensorFlow 2.13 wheels"]
    assert guarded["decision"] == "MISS (guard: numbers differ)", guarded.group(0)
    assert "(nearest: download TensorFlow 2.12 wheels)" in guarded.group(0)
