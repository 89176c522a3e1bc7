"""The README's first main job: ``python -m semcache demo`` on the real model."""

from __future__ import annotations

import subprocess
import sys


def test_demo_hits_paraphrases_and_misses_near_misses() -> None:
    out = subprocess.run([sys.executable, "-m", "semcache", "demo"], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith(("HIT", "MISS"))]
    assert any(r.startswith("HIT      semantic") and "paraphrase" in r for r in rows)
    assert all(r.startswith("MISS") for r in rows if "near-miss" in r)
    assert all(r.startswith("HIT") for r in rows if "exact repeat" in r)
    assert len(rows) == 8
