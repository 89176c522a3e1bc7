"""The README's first main job: ``python -m semcache demo`` on the real model."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import OnnxExport


def test_demo_hits_paraphrases_and_misses_near_misses(onnx_export: OnnxExport) -> None:
    """On the default backend; the session's export stands in for the one the first run
    on a fresh machine makes (test_embedding_onnx checks that one)."""
    env = dict(os.environ, SEMCACHE_EMBEDDING_CACHE_DIR=str(onnx_export.cache_dir))
    out = subprocess.run([sys.executable, "-m", "semcache", "demo"], capture_output=True,
                         text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "@onnx-int8" in out.stdout.splitlines()[0]
    rows = [line for line in out.stdout.splitlines() if line.startswith(("HIT", "MISS"))]
    assert any(r.startswith("HIT      semantic") and "paraphrase" in r for r in rows)
    assert all(r.startswith("MISS") for r in rows if "near-miss" in r)
    assert all(r.startswith("HIT") for r in rows if "exact repeat" in r)
    assert len(rows) == 8
